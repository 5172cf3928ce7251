"""ImageNet weights through torchvision's cache (never the network here) and the paper's ablation switches."""

from __future__ import annotations

import json
import types
import urllib.error

import numpy as np
import pytest
import torch
import torchvision

from rpnr.common.checkpoints import save_checkpoint
from rpnr.common.errors import UsageError
from rpnr.engine import labels as epoch_labels
from rpnr.engine import step
from rpnr.engine.settings import build_config, build_parser
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


def test_stage2_without_npc_records_null_and_logs_the_modules_off(tiny_regdb, tmp_path, train_script, capsys,
                                                                   one_thread):
    baseline = tmp_path / "s1.pth.tar"
    save_checkpoint({"model": build_model().state_dict(), "dataset": "regdb", "args": {"trial": 1}}, baseline)
    logs = tmp_path / "s2"
    status = train_script.main([*SMALL, "--stage", "rpnr", "--data-dir", str(tiny_regdb), "--baseline",
                                str(baseline), "--logs-dir", str(logs), "--no-npc", "--no-mhl"])
    assert status == 0, capsys.readouterr().err
    record = json.loads((logs / "metrics.json").read_text())[0]
    assert record["relabeled_rgb"] is None and record["relabeled_ir"] is None  # NPC did not run: null, not 0
    assert record["loss_hybrid"] is None and all(isinstance(record[f"loss_{k}"], float) for k in
                                                 ("ir", "rgb", "cross", "nrl", "total"))
    log = (logs / "log.txt").read_text()
    assert log.count("modules off: NPC, MHL (--no-npc --no-mhl); the others run\n") == 1
    assert "NPC relabelled" not in log and " hybrid " not in log


# every switch through train.py's configuration: what the labels, the memories and the objective then compute
SWITCHES = {None: ("npc", "otpm", "mhl", "nrl"), "--no-npc": ("otpm", "mhl", "nrl"),
            "--no-nrl": ("npc", "otpm", "mhl"), "--no-mhl": ("npc", "otpm", "nrl"), "--no-otpm": ("npc", "nrl")}


@pytest.mark.parametrize("switch", list(SWITCHES))
def test_each_ablation_switch_turns_off_its_module_only(switch, tmp_path, monkeypatch):
    baseline = tmp_path / "s1.pth.tar"
    baseline.write_bytes(b"")  # the configuration only checks that it exists
    argv = [*SMALL, "--stage", "rpnr", "--data-dir", str(tmp_path), "--baseline", str(baseline), "--top-k", "4",
            *([switch] if switch else [])]
    cfg = build_config(vars(build_parser().parse_args(argv)))
    on = SWITCHES[switch]
    assert [m.lower() for m in cfg.ablation.off()] == [m for m in ("npc", "otpm", "mhl", "nrl") if m not in on]

    torch.manual_seed(0)
    feats = torch.cat([torch.eye(16)[c] * 5 + 0.3 * torch.randn(8, 16) for c in range(3)])  # [24, 16], 3 groups
    dbscan = np.repeat([0, 1, 2], 8)
    dbscan[8] = 0  # a member of group 1 that DBSCAN put into cluster 0: NPC moves it back
    monkeypatch.setattr(epoch_labels, "cluster_features", lambda *args, **kwargs: dbscan.copy())
    images = types.SimpleNamespace(pids=np.repeat([0, 1, 2], 8))
    labels = epoch_labels.compute_labels(feats, feats, images, images, cfg, epoch=1)
    if "npc" in on:
        assert labels.rgb.relabeled == labels.ir.relabeled == 1 and labels.rgb.train[8] == 1  # the control acts
    else:
        assert labels.rgb.relabeled is None and labels.ir.relabeled is None and labels.rgb.train[8] == 0
    assert (labels.r2i is not None) == ("otpm" in on)
    memories = epoch_labels.build_memories(labels, cfg.temp, cfg.momentum, hybrid=cfg.ablation.mhl)
    assert ("hybrid" in memories) == ("mhl" in on)
    batch = types.SimpleNamespace(rows_ir=np.arange(0, 24, 3), rows_rgb=np.arange(0, 24, 6))
    f_rgb, f_ir = feats[np.r_[batch.rows_rgb, batch.rows_rgb]], feats[batch.rows_ir]  # [8, 16] two views, [8, 16]
    _, parts = step._objective(f_rgb.clone().requires_grad_(), f_ir.clone().requires_grad_(), cfg, batch, labels,
                               memories, 1, 1)
    terms = {"otpm": "cross", "mhl": "hybrid", "nrl": "nrl"}
    assert list(parts) == ["ir", "rgb", *(terms[m] for m in ("otpm", "mhl", "nrl") if m in on), "total"]
