"""train.py end to end on tiny synthetic RegDB data: stage 1, then stage 2 from stage 1's default output."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from rpnr.common.checkpoints import load_checkpoint
from rpnr.engine.run_log import PANELS, plot_curves
from rpnr.engine.settings import TrainConfig, build_config, build_parser, recipe
from rpnr.training import loss_weights

REPO = Path(__file__).resolve().parents[1]

# tiny settings: 32x16 images (the ResNet-50 forward is the cost), 8 ids x 6 images per modality for training
TINY = ["--dataset", "regdb", "--height", "32", "--width", "16", "--batch-size", "8", "--num-instances", "4",
        "--iters", "2", "--epochs", "2", "--k1", "10", "--k2", "3", "--eps", "0.6", "--workers", "1",
        "--feature-batch-size", "64", "--device", "cpu", "--seed", "3"]


def _finite(x) -> bool:
    return isinstance(x, float) and math.isfinite(x)


def _check_run(logs: Path, stage: str, loss_keys: tuple[str, ...]) -> list[dict]:
    for name in ("checkpoint.pth.tar", "model_best.pth.tar", "log.txt", "metrics.json", "curves.png", "test.json",
                 "ranks.png"):
        assert (logs / name).is_file(), name
    assert [p.name for p in logs.glob(".*")] == [".lock"], "temporary files left behind"
    records = json.loads((logs / "metrics.json").read_text())
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        for key in loss_keys:
            assert _finite(r[f"loss_{key}"]), (key, r)
        assert _finite(r["loss_total"])
        assert 0 <= r["rank1"] <= 100 and 0 < r["mAP"] <= 100 and 0 < r["mINP"] <= 100
        assert r["clusters_rgb"] >= 2 and r["clusters_ir"] >= 2  # at least one batch of identities each
        assert 0 <= r["outliers_rgb"] < 48 and 0 <= r["outliers_ir"] < 48  # 48 training images per modality
        assert 0 < r["purity_rgb"] <= 1 and 0 < r["purity_ir"] <= 1
        assert all(-1 <= r[f"ari_{m}"] <= 1 and 0 <= r[f"nmi_{m}"] <= 1 for m in ("rgb", "ir"))
        assert all(r[f"time_{p}"] > 0 for p in ("features", "clustering", "training", "evaluation"))
        assert r["lr"] == pytest.approx(3.5e-4)
    assert records[1]["best_rank1"] == max(r["rank1"] for r in records)

    ckpt = load_checkpoint(logs / "checkpoint.pth.tar")
    assert ckpt["epoch"] == 2 and ckpt["stage"] == stage and ckpt["dataset"] == "regdb"
    assert ckpt["format_version"] == 2 and ckpt["best_rank1"] == records[1]["best_rank1"]
    assert set(ckpt["rng"]) >= {"python", "numpy", "torch"}
    assert ckpt["scheduler"]["last_epoch"] == 2 and ckpt["optimizer"]["state"]
    assert all(v is None or isinstance(v, (str, int, float, bool)) for v in ckpt["args"].values())
    _check_curves(logs, records, TrainConfig(**ckpt["args"]))
    best = load_checkpoint(logs / "model_best.pth.tar")
    assert best["rank1"] == records[1]["best_rank1"]
    assert best["epoch"] == next(r["epoch"] for r in records if r["rank1"] == best["rank1"])

    log = (logs / "log.txt").read_text()
    assert "epoch 2/2: clusters visible" in log and "Rank-1" in log and "seconds features" in log
    assert f"best model: epoch {best['epoch']}, Rank-1" in log and "last model: epoch 2 (" in log
    test = json.loads((logs / "test.json").read_text())
    assert set(test) == {"best", "last"}
    assert test["best"]["epoch"] == best["epoch"] and test["last"]["epoch"] == 2
    # the per-epoch test is the final test's visible-to-thermal direction of the same trial
    assert test["best"]["visible_to_thermal"]["rank1"] == pytest.approx(best["rank1"])
    assert test["last"]["visible_to_thermal"]["rank1"] == pytest.approx(records[-1]["rank1"])
    assert test["last"]["visible_to_thermal"]["mAP"] == pytest.approx(records[-1]["mAP"])
    for column in ("best", "last"):
        assert set(test[column]) == {"epoch", "checkpoint", "visible_to_thermal", "thermal_to_visible"}
        result = test[column]["thermal_to_visible"]
        assert set(result) == {"rank1", "rank5", "rank10", "rank20", "mAP", "mINP", "per_trial"}
        assert result["per_trial"] == [{"trial": 1, **{k: v for k, v in result.items() if k != "per_trial"}}]
    assert Image.open(logs / "ranks.png").size[0] >= 11 * 32  # query + top 10 at least at the prepared width
    return records


def _check_curves(logs: Path, records: list[dict], cfg: TrainConfig) -> None:
    """curves.png is the figure of these records, whose loss panel draws the weighted terms summing to the total."""
    drawn = plot_curves(records, logs.parent / "curves_again.png", loss_weights(cfg, cfg.terms))
    assert (logs.parent / "curves_again.png").read_bytes() == (logs / "curves.png").read_bytes()
    assert list(drawn) == list(PANELS)
    assert drawn["evaluation (%)"] == {"Rank-1": [r["rank1"] for r in records], "mAP": [r["mAP"] for r in records],
                                       "mINP": [r["mINP"] for r in records]}
    assert drawn["pseudo-label quality (vs identities)"]["ARI infrared"] == [r["ari_ir"] for r in records]
    assert drawn["clusters"] == {"visible": [r["clusters_rgb"] for r in records],
                                 "infrared": [r["clusters_ir"] for r in records]}
    losses = drawn["losses, weighted (the terms sum to total)"]
    expected = ["ir", "rgb", "0.25 x cross", "0.5 x hybrid", "10 x nrl", "total"] if cfg.stage == "rpnr" else \
        ["ir", "rgb", "total"]
    assert list(losses) == expected
    for e in range(len(records)):
        assert sum(values[e] for label, values in losses.items() if label != "total") == pytest.approx(
            losses["total"][e], rel=1e-5)


def test_curves_draw_each_series_by_value(tmp_path):
    records = [{"epoch": 1, "rank1": 10.0, "loss_ir": 1.0, "loss_rgb": 2.0, "loss_cross": 4.0, "loss_hybrid": None,
                "loss_nrl": 0.1, "loss_total": 5.0, "lr": 1e-3},
               {"epoch": 2, "rank1": 12.0, "loss_ir": 0.5, "loss_rgb": 1.0, "loss_cross": 2.0, "loss_hybrid": None,
                "loss_nrl": 0.2, "loss_total": 4.0, "lr": 1e-4}]
    drawn = plot_curves(records, tmp_path / "c.png", {"ir": 1.0, "rgb": 1.0, "cross": 0.25, "hybrid": None,
                                                      "nrl": 10.0})
    assert drawn["losses, weighted (the terms sum to total)"] == {
        "ir": [1.0, 0.5], "rgb": [2.0, 1.0], "0.25 x cross": [1.0, 0.5], "10 x nrl": [1.0, 2.0], "total": [5.0, 4.0]}
    assert drawn["evaluation (%)"] == {"Rank-1": [10.0, 12.0]} and drawn["learning rate"] == {"lr": [1e-3, 1e-4]}
    assert drawn["pseudo-label quality (vs identities)"] == {} and Image.open(tmp_path / "c.png").size == (1120, 560)


def test_stage1_then_stage2(tiny_regdb, train_script, tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)  # default output folders are relative to the working directory
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # torchvision's weights from a filled cache
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    cached.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet50().state_dict(), cached)
    status = train_script.main([*TINY, "--stage", "baseline", "--data-dir", str(tiny_regdb)])
    assert status == 0, capsys.readouterr().err
    s1 = tmp_path / "baseline" / "regdb_s1" / "1"  # where stage 2 looks by default
    assert load_checkpoint(s1 / "checkpoint.pth.tar")["args"]["imagenet"] == str(cached)
    records1 = _check_run(s1, "baseline", ("ir", "rgb"))
    assert all(r["relabeled_rgb"] is None for r in records1)

    status = train_script.main([*TINY, "--stage", "rpnr", "--data-dir", str(tiny_regdb)])
    assert status == 0, capsys.readouterr().err
    s2 = tmp_path / "logs" / "regdb_s2" / "1"
    records2 = _check_run(s2, "rpnr", ("ir", "rgb", "cross", "hybrid", "nrl"))
    log2 = (s2 / "log.txt").read_text()
    for r in records2:  # NPC ran: its counts, as logged
        assert f"epoch {r['epoch']}/2: NPC relabelled visible {r['relabeled_rgb']}, infrared {r['relabeled_ir']}\n" \
            in log2 and 0 <= r["relabeled_rgb"] <= 48 - r["outliers_rgb"]
    args = load_checkpoint(s2 / "checkpoint.pth.tar")["args"]
    assert args["baseline"] == "baseline/regdb_s1/1/model_best.pth.tar"
    assert args["rgb_batch_size"] == 4 and args["eps"] == 0.6 and args["iters"] == 2
    assert "modules: NPC, OTPM, MHL and NRL all run (no --no-* switch)\n" in log2
    run1, run2 = (json.loads((s / "run.json").read_text()) for s in (s1, s2))  # what report.py groups by
    assert run1["data_id"] == run2["data_id"] == load_checkpoint(s2 / "checkpoint.pth.tar")["data_id"]
    assert run1["start"] is None and run2["start"] == {
        "path": "baseline/regdb_s1/1/model_best.pth.tar", "recipe": recipe(run1["args"]),
        "sha256": hashlib.sha256((s1 / "model_best.pth.tar").read_bytes()).hexdigest()}


def test_config_defaults_per_dataset_and_stage(tiny_regdb):
    """Official defaults fill in per dataset and stage from the registry; --eps and --no-amp reach the settings."""
    def config(*argv):
        return build_config(vars(build_parser().parse_args([*argv, "--data-dir", str(tiny_regdb), "--no-imagenet",
                                                            "--device", "cpu"])))

    sysu1 = config("--dataset", "sysu", "--stage", "baseline")
    assert (sysu1.eps, sysu1.iters, sysu1.batch_size, sysu1.rgb_batch_size, sysu1.amp) == (0.6, 200, 128, 64, True)
    assert (sysu1.top_k, sysu1.bn_splits, sysu1.imagenet) == (20, 2, None)
    assert sysu1.logs_dir == "baseline/sysu_s1"
    regdb1 = config("--dataset", "regdb", "--stage", "baseline", "--trial", "4", "--eps", "0.45", "--no-amp")
    assert (regdb1.eps, regdb1.iters, regdb1.amp, regdb1.top_k) == (0.45, 100, False, 5)  # release: nlargest(5)
    assert regdb1.logs_dir == "baseline/regdb_s1/4"
    llcm1 = config("--dataset", "llcm", "--stage", "baseline", "-b", "64")
    assert (llcm1.eps, llcm1.iters, llcm1.top_k, llcm1.rgb_batch_size) == (0.6, 200, 20, 32)


def test_help_shows_every_default_once():
    text = build_parser().format_help()
    assert "(default: None)" not in text and "default: SYSU-MM01 0.6, RegDB 0.3, LLCM 0.6" in " ".join(text.split())
    for flag in ("--lr", "--eps", "--iters", "--top-k", "--bn-splits", "--logs-dir", "--baseline", "--device"):
        assert flag in text
