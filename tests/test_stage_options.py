"""ImageNet weights through torchvision's cache (never the network here) and the paper's ablation switches."""

from __future__ import annotations

import json
import urllib.error

import numpy as np
import pytest
import torch
import torchvision

from rpnr.checkpoint import save_checkpoint
from rpnr.config import UsageError, build_config, build_parser
from rpnr.memory import ClusterMemory
from rpnr.models import build_model, imagenet_file
from rpnr.training import stage2_loss

SMALL = ["--dataset", "regdb", "--height", "32", "--width", "16", "--batch-size", "8", "--num-instances", "4",
         "--iters", "1", "--epochs", "1", "--k1", "10", "--k2", "3", "--eps", "0.6", "--workers", "0", "--device",
         "cpu", "--seed", "3", "--test-trials", "1"]


@pytest.fixture
def offline(monkeypatch):
    """No download may happen: torch.hub's downloader fails as it does without a network."""
    def no_network(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)


def test_torchvision_weights_come_from_the_cache(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    cached.parent.mkdir(parents=True)
    torch.manual_seed(4)
    state = torchvision.models.resnet50().state_dict()
    torch.save(state, cached)
    assert imagenet_file("torchvision") == str(cached)
    model = build_model(pretrained="torchvision")
    assert torch.equal(model.visible_stem.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.infrared_stem.bn1.running_var, state["bn1.running_var"])
    assert torch.equal(model.layer4[2].conv3.weight, state["layer4.2.conv3.weight"])


def test_empty_cache_offline_is_one_line_naming_the_file(tmp_path, monkeypatch, offline, train_script, capsys,
                                                         tiny_regdb):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    status = train_script.main([*SMALL, "--stage", "baseline", "--data-dir", str(tiny_regdb), "--logs-dir",
                                str(tmp_path / "logs")])  # --imagenet torchvision is the default
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1
    assert "resnet50-0676ba61.pth" in err[0] and str(tmp_path / "torch" / "hub" / "checkpoints") in err[0]
    assert "--imagenet PATH or --no-imagenet" in err[0] and not (tmp_path / "logs").exists()


def _memories(k: int = 3) -> dict:
    torch.manual_seed(0)
    return {name: ClusterMemory.from_centers(torch.randn(k, 8), 0.05, 0.1, "CMhcl") for name in ("rgb", "ir", "hybrid")}


@pytest.mark.parametrize("epoch", [1, 2])
def test_ablation_switches_leave_their_terms_out(epoch):
    torch.manual_seed(1)
    f_rgb, f_ir = torch.randn(8, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    y_rgb, y_ir = torch.tensor([0, 1, 2, 0, 0, 1, 2, 0]), torch.tensor([0, 1, 2, 1])
    r2i, i2r = np.array([1, 0, 2]), np.array([1, 0, 2])
    full_memories, memories = _memories(), _memories()
    total, parts = stage2_loss(f_rgb, f_ir, y_rgb, y_ir, full_memories, r2i, i2r, epoch)
    assert list(parts) == ["ir", "rgb", "cross", "hybrid", "nrl"]
    without, kept = stage2_loss(f_rgb, f_ir, y_rgb, y_ir, memories, None, None, epoch, cross=False, hybrid=False,
                                nrl=False)
    assert list(kept) == ["ir", "rgb"] and kept["ir"] == parts["ir"] and kept["rgb"] == parts["rgb"]
    assert without.item() == pytest.approx(parts["ir"] + parts["rgb"])
    without.backward()
    assert torch.equal(memories["hybrid"].features, _memories()["hybrid"].features)  # left out: never updated
    total.backward()
    assert not torch.equal(full_memories["hybrid"].features, _memories()["hybrid"].features)


def test_ablations_apply_to_stage_2_only(tiny_regdb):
    argv = [*SMALL, "--data-dir", str(tiny_regdb), "--no-imagenet", "--stage", "baseline", "--no-npc", "--no-otpm"]
    with pytest.raises(UsageError, match="--no-npc, --no-otpm: the ablations apply to stage 2"):
        build_config(vars(build_parser().parse_args(argv)))


def test_stage2_without_npc_relabels_nothing(tiny_regdb, tmp_path, train_script, capsys, one_thread):
    baseline = tmp_path / "s1.pth.tar"
    save_checkpoint({"model": build_model().state_dict(), "dataset": "regdb", "args": {"trial": 1}}, baseline)
    logs = tmp_path / "s2"
    status = train_script.main([*SMALL, "--stage", "rpnr", "--data-dir", str(tiny_regdb), "--baseline",
                                str(baseline), "--logs-dir", str(logs), "--no-npc", "--no-mhl"])
    assert status == 0, capsys.readouterr().err
    record = json.loads((logs / "metrics.json").read_text())[0]
    assert record["relabeled_rgb"] == 0 and record["relabeled_ir"] == 0
    assert {k for k in record if k.startswith("loss_")} == {"loss_ir", "loss_rgb", "loss_cross", "loss_nrl",
                                                           "loss_total"}
