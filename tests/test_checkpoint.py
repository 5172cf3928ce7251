"""Checkpoint I/O: official-layout round trip, refusal of pickled code, damaged files, atomic saves."""

import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch
from conftest import load_test_script, official_checkpoint_state, official_keys, our_key

from rpnr.common.checkpoints import load_checkpoint, missing_checkpoint_line, save_checkpoint
from rpnr.common.errors import CheckpointError, DamagedCheckpointError, UnsafeCheckpointError
from rpnr.models import build_model, convert_official_state_dict, load_weights

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


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


def _embeddings(model):
    x = torch.randn(2, 3, 32, 16, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        return model.embed(x, "visible"), model.embed(x, "infrared")


def test_official_layout_round_trip(tmp_path):
    source = _perturbed_model(1)
    sd = official_checkpoint_state(source)
    assert len(sd) == 1025 and sd["module.classifier.weight"].shape == (1000, 2048)
    assert any(k.startswith("module.NL_3.2.W.1.") for k in sd)
    assert any(k.startswith("module.visible_module.visible.layer4.") for k in sd)
    assert "module.base_resnet.base.conv1.weight" in sd  # unused by the release's forward, still saved
    assert not any(k.startswith("module.base_resnet.base.fc.") for k in sd)  # its ResNets hold no fc
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


def test_convert_official_state_dict_maps_every_frozen_key_our_model_needs():
    model = _perturbed_model(3)
    ours = model.state_dict()
    official = official_checkpoint_state(model)
    converted = convert_official_state_dict(official)
    assert set(converted) == set(ours)  # the release's unused keys dropped, none of ours missing
    for name, _ in official_keys():
        key = our_key(name)
        if key is not None:
            assert converted[key] is official[name], name  # the frozen key's tensor, under our key
            assert torch.equal(converted[key], ours[key]), name
    # the same mapping without DataParallel's "module." prefix
    bare = convert_official_state_dict({k[len("module."):]: v for k, v in official.items()})
    assert set(bare) == set(ours)


@pytest.mark.parametrize("name", ["module.NL_3.2.W.1.running_var", "module.thermal_module.thermal.bn1.weight",
                                  "module.base_resnet.base.layer4.2.conv3.weight", "module.bottleneck.weight"])
def test_official_state_dict_missing_a_needed_key_is_refused(tmp_path, name):
    model = _perturbed_model(4)
    sd = official_checkpoint_state(model)
    del sd[name]
    path = tmp_path / "official.pth"
    torch.save({"state_dict": sd, "epoch": 1}, path)
    with pytest.raises(CheckpointError, match=f"does not fit the AGW model: 1 missing keys \\(e.g. "
                                              f"{our_key(name).replace('.', '[.]')}\\)"):
        load_weights(build_model(), path)
    sd = official_checkpoint_state(model)
    del sd["module.visible_module.visible.layer1.0.conv1.weight"]  # a key of the release our model does not use
    torch.save({"state_dict": sd}, path)
    load_weights(build_model(), path)


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


# ----------------------------------------------------------------------------- damaged vs unsafe files


class _Plain:
    """A harmless custom class: still outside the allow-list, so a checkpoint holding one is unsafe."""


def _good_state():
    return {"model": {"w": torch.arange(600.0).reshape(20, 30), "b": torch.ones(7)}, "epoch": 2}


def _assert_refused(path, kind, *words):
    """``load_checkpoint(path)`` raises ``kind`` with a one-line message containing ``words`` and no
    advice to load with weights_only=False."""
    with pytest.raises(kind) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    assert "weights_only" not in message and "Weights only" not in message, message
    for word in words:
        assert word in message, (word, message)
    return message


def _truncated(src, n, dst):
    dst.write_bytes(src.read_bytes()[:n])
    return dst


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated_checkpoints_are_damaged(tmp_path, legacy):
    whole = tmp_path / "whole.pth"
    torch.save(_good_state(), whole, _use_new_zipfile_serialization=not legacy)
    assert torch.equal(load_checkpoint(whole)["model"]["b"], torch.ones(7))
    size = whole.stat().st_size
    cuts = sorted({1, 3, 10, 40, 100, 300, size // 3, size // 2, size - 100, size - 22, size - 1})
    assert len(cuts) >= 10 and cuts[-1] == size - 1
    for n in cuts:
        path = _truncated(whole, n, tmp_path / f"cut_{n}.pth")
        _assert_refused(path, DamagedCheckpointError, "damaged checkpoint", str(path))


def test_random_bytes_and_empty_file_are_damaged(tmp_path):
    noise = tmp_path / "noise.pth"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    message = _assert_refused(noise, DamagedCheckpointError, "damaged checkpoint")
    assert "not a PyTorch checkpoint" in message
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    assert "empty" in _assert_refused(empty, DamagedCheckpointError, "damaged checkpoint")
    plain_pickle = tmp_path / "plain.pkl"  # a pickle, but not a torch.save file
    plain_pickle.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=2))
    assert "not a PyTorch checkpoint" in _assert_refused(plain_pickle, DamagedCheckpointError)


def test_corrupted_zip_member_is_damaged_not_unsafe(tmp_path):
    whole = tmp_path / "whole.pth"
    torch.save(_good_state(), whole)
    data = bytearray(whole.read_bytes())
    with zipfile.ZipFile(whole) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data.pkl"))
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len  # first byte of data.pkl (stored, not deflated)
    data[start + 5] ^= 0x5A  # a flipped byte: torch's own error is a weights-only unpickling refusal
    bad = tmp_path / "flipped.pth"
    bad.write_bytes(bytes(data))
    with pytest.raises(pickle.UnpicklingError):
        torch.load(bad, weights_only=True)
    assert "checksum" in _assert_refused(bad, DamagedCheckpointError, "damaged checkpoint")

    missing = tmp_path / "missing_record.pth"  # intact zip, pickle complete, a tensor record absent
    with zipfile.ZipFile(whole) as src, zipfile.ZipFile(missing, "w") as dst:
        for name in src.namelist():
            if not name.endswith("data/0"):
                dst.writestr(name, src.read(name))
    assert "data/0" in _assert_refused(missing, DamagedCheckpointError, "damaged checkpoint")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_custom_object_is_unsafe_and_never_run(tmp_path, legacy):
    plain = tmp_path / "plain_object.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "extra": _Plain()}, plain, _use_new_zipfile_serialization=not legacy)
    _assert_refused(plain, UnsafeCheckpointError, "unsafe checkpoint", "_Plain", "could run code")

    target = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pth"
    torch.save({"x": _Payload(target)}, evil, _use_new_zipfile_serialization=not legacy)
    _assert_refused(evil, UnsafeCheckpointError, "unsafe checkpoint")
    assert not target.exists()


def test_test_script_reports_damaged_and_unsafe_in_one_line(prepared_sysu, tmp_path, capsys):
    script = load_test_script()
    whole = tmp_path / "model.pth"
    save_checkpoint({"model": build_model().state_dict(), "epoch": 1}, whole)
    truncated = _truncated(whole, whole.stat().st_size // 2, tmp_path / "truncated.pth")
    noise = tmp_path / "noise.pth"
    noise.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model": build_model().state_dict(), "extra": _Plain()}, unsafe)
    for path, word in ((truncated, "damaged"), (noise, "damaged"), (unsafe, "unsafe")):
        capsys.readouterr()
        status = script.main(["--device", "cpu", "--dataset", "sysu", "--data-dir", str(prepared_sysu),
                              "--checkpoint", str(path), "--trials", "1"])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert status == 1 and len(lines) == 1, err
        assert lines[0].startswith(f"test.py: error: {word} checkpoint ") and str(path) in lines[0], lines[0]
        assert "weights_only" not in err


# ----------------------------------------------------------------------------- a folder given as a checkpoint


def test_a_folder_as_checkpoint_names_the_file_expected_inside(tmp_path):
    run = tmp_path / "logs" / "sysu_s2"
    run.mkdir(parents=True)
    empty = f"{run} is a folder, not a checkpoint file, and {run / 'model_best.pth.tar'} is not there; pass the " \
            f"checkpoint file itself"
    assert missing_checkpoint_line(run) == empty
    save_checkpoint({"model": {"w": torch.ones(2)}, "epoch": 1}, run / "model_best.pth.tar")
    line = f"{run} is a folder, not a checkpoint file; pass {run / 'model_best.pth.tar'}"
    assert missing_checkpoint_line(run) == missing_checkpoint_line(str(run)) == line
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(run)
    assert str(caught.value) == line
    assert missing_checkpoint_line(run / "none.pth") == f"checkpoint not found: {run / 'none.pth'}"
    with pytest.raises(CheckpointError, match="^checkpoint not found: "):
        load_checkpoint(run / "none.pth")
    assert load_checkpoint(run / "model_best.pth.tar")["epoch"] == 1  # the file it names loads


def test_test_script_names_the_checkpoint_inside_a_run_folder(prepared_sysu, prepared_regdb, tmp_path, capsys):
    script = load_test_script()
    run = tmp_path / "sysu_s2"
    run.mkdir()
    save_checkpoint({"model": build_model().state_dict(), "epoch": 1}, run / "model_best.pth.tar")
    per_trial = tmp_path / "regdb_s2"
    (per_trial / "1").mkdir(parents=True)  # a run folder per trial, no model in it yet
    for args, line in (
            (("--dataset", "sysu", "--data-dir", prepared_sysu, "--checkpoint", run),
             f"{run} is a folder, not a checkpoint file; pass {run / 'model_best.pth.tar'}"),
            (("--dataset", "regdb", "--data-dir", prepared_regdb, "--checkpoint", per_trial / "{trial}"),
             f"{per_trial / '1'} is a folder, not a checkpoint file, and {per_trial / '1' / 'model_best.pth.tar'} is "
             f"not there; pass the checkpoint file itself (trial 1)")):
        capsys.readouterr()
        status = script.main(["--device", "cpu", *map(str, args)])
        out, err = capsys.readouterr()
        assert status == 1 and out == "" and err.strip().splitlines() == [f"test.py: error: {line}"], err
