"""Checkpoint I/O: official-layout round trip, refusal of pickled code, atomic saves."""

import numpy as np
import pytest
import torch
import torchvision

from rpnr.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from rpnr.models import build_model, load_weights

torch.set_num_threads(2)

# this project's module prefixes -> the official release's (DataParallel) prefixes
_OURS_TO_OFFICIAL = (
    ("visible_stem.", "module.visible_module.visible."),
    ("infrared_stem.", "module.thermal_module.thermal."),
    ("layer1.", "module.base_resnet.base.layer1."),
    ("layer2.", "module.base_resnet.base.layer2."),
    ("layer3.", "module.base_resnet.base.layer3."),
    ("layer4.", "module.base_resnet.base.layer4."),
    ("nl2.", "module.NL_2."),
    ("nl3.", "module.NL_3."),
    ("bottleneck.", "module.bottleneck."),
)


def _perturbed_model(seed):
    """A model whose non-local output BNs are active and whose BN running statistics are set from
    one training batch (so no layer keeps its initial values and eval activations stay finite)."""
    torch.manual_seed(seed)
    model = build_model()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if ".W.1." in name and name.endswith(("weight", "bias")):  # non-local BN starts at 0
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.25)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = None  # cumulative average: one batch sets the running statistics
        model.train()
        model(torch.randn(4, 3, 32, 16, generator=g), torch.randn(4, 3, 32, 16, generator=g))
    return model.eval()


def _official_state_dict(model):
    """The release's key layout (DataParallel prefixes, the unused layers of its three ResNet-50s)."""
    sd = {}
    for key, value in model.state_dict().items():
        for ours, official in _OURS_TO_OFFICIAL:
            if key.startswith(ours):
                sd[official + key[len(ours):]] = value.clone()
                break
        else:
            raise AssertionError(f"unmapped key {key}")
    # unused layers of the release (full ResNet-50s); their values must be ignored. Stride-0 views of
    # one number keep the file small while the shapes are the real ones.
    fill = torch.full((1,), 0.01)
    decoy = {k: fill.expand(v.shape) if v.is_floating_point() else v
             for k, v in torchvision.models.resnet50().state_dict().items()}
    for prefix, keep in (("module.visible_module.visible.", ("conv1.", "bn1.")),
                         ("module.thermal_module.thermal.", ("conv1.", "bn1.")),
                         ("module.base_resnet.base.", ("layer1.", "layer2.", "layer3.", "layer4."))):
        for key, value in decoy.items():
            if not key.startswith(keep):
                sd[prefix + key] = value
    sd["module.classifier.weight"] = torch.randn(1000, 2048)
    return sd


def _embeddings(model):
    x = torch.randn(2, 3, 32, 16, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        return model.embed(x, "visible"), model.embed(x, "infrared")


def test_official_layout_round_trip(tmp_path):
    source = _perturbed_model(1)
    sd = _official_state_dict(source)
    assert any(k.startswith("module.NL_3.2.W.1.") for k in sd)
    assert any(k.startswith("module.visible_module.visible.layer4.") for k in sd)
    assert any(k.startswith("module.base_resnet.base.fc.") for k in sd)
    path = tmp_path / "official.pth"
    torch.save({"state_dict": sd, "epoch": 3, "best_mAP": np.float64(0.5)}, path)

    ckpt = load_checkpoint(path)  # numpy scalars of the release's checkpoints are accepted
    assert ckpt["epoch"] == 3 and float(ckpt["best_mAP"]) == 0.5

    fresh = build_model().eval()
    before = _embeddings(fresh)
    load_weights(fresh, path)
    vis, ir = _embeddings(fresh)
    ref_vis, ref_ir = _embeddings(source)
    assert torch.isfinite(ref_vis).all() and (ref_vis - ref_ir).abs().max() > 1e-3
    assert (before[0] - ref_vis).abs().max() > 1e-3  # the fresh model really changed
    torch.testing.assert_close(vis, ref_vis, atol=0, rtol=0)
    torch.testing.assert_close(ir, ref_ir, atol=0, rtol=0)


def test_own_checkpoint_round_trip(tmp_path):
    source = _perturbed_model(2)
    path = tmp_path / "ckpt" / "model_best.pth"
    save_checkpoint({"state_dict": source.state_dict(), "epoch": 4}, path)
    fresh = build_model().eval()
    load_weights(fresh, path)
    for got, ref in zip(_embeddings(fresh), _embeddings(source)):
        assert torch.isfinite(ref).all()
        torch.testing.assert_close(got, ref, atol=0, rtol=0)


def test_wrong_layout_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    save_checkpoint({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(CheckpointError):
        load_weights(build_model(), path)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "missing.pth")


class _Payload:
    """Unpickling this object opens (creates) a file: what a malicious checkpoint would do."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return open, (self.target, "w")


def test_malicious_checkpoint_is_refused(tmp_path):
    control = tmp_path / "control.txt"
    torch.save({"x": _Payload(control)}, tmp_path / "control.pth")
    torch.load(tmp_path / "control.pth", weights_only=False)  # an unsafe load really runs the payload
    assert control.exists()

    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": _Payload(target)}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        load_weights(build_model(), path)
    assert not target.exists()


def test_save_checkpoint_atomic_and_clean(tmp_path):
    path = tmp_path / "state.pth"
    save_checkpoint({"epoch": 1, "w": torch.arange(3)}, path)
    save_checkpoint({"epoch": 2, "w": torch.arange(4)}, path)  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pth"]
    state = load_checkpoint(path)
    assert state["epoch"] == 2 and torch.equal(state["w"], torch.arange(4))
    # a state that cannot be serialised: error, no temporary file, previous file intact
    with pytest.raises(Exception):  # noqa: B017 - whatever pickling raises
        save_checkpoint({"epoch": 3, "f": lambda: None}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pth"]
    assert load_checkpoint(path)["epoch"] == 2
