"""train.py --dataset llcm: stage 1 and stage 2 on a tiny synthetic LLCM tree, SYSU's settings by default."""

from __future__ import annotations

import json
from pathlib import Path

from rpnr.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "llcm", "--height", "32", "--width", "16", "--batch-size", "8", "--num-instances", "4",
        "--iters", "3", "--epochs", "2", "--k1", "10", "--k2", "3", "--eps", "0.6", "--workers", "1",
        "--feature-batch-size", "64", "--device", "cpu", "--seed", "3", "--test-trials", "2"]
DIRECTIONS = {"visible_to_infrared", "infrared_to_visible"}


def test_llcm_stage1_then_stage2(tiny_llcm, train_script, tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    assert train_script.main([*TINY, "--stage", "baseline", "--data-dir", str(tiny_llcm), "--no-imagenet"]) == 0, \
        capsys.readouterr().err
    s1 = tmp_path / "baseline" / "llcm_s1"  # one model for all trials, as SYSU
    assert train_script.main([*TINY, "--stage", "rpnr", "--data-dir", str(tiny_llcm)]) == 0, capsys.readouterr().err
    s2 = tmp_path / "logs" / "llcm_s2"
    for logs, stage in ((s1, "baseline"), (s2, "rpnr")):
        records = json.loads((logs / "metrics.json").read_text())
        assert [r["epoch"] for r in records] == [1, 2]
        assert all(0 <= r["rank1"] <= 100 and 0 < r["mAP"] <= 100 for r in records)
        test = json.loads((logs / "test.json").read_text())
        assert test["last"]["epoch"] == 2 and set(test["best"]) == {"epoch", "checkpoint"} | DIRECTIONS
        best = load_checkpoint(logs / "model_best.pth.tar")
        assert best["dataset"] == "llcm" and best["stage"] == stage and test["best"]["epoch"] == best["epoch"]
        # the per-epoch test is visible to infrared on the gallery of trial 0: the final test's trial 0
        assert (logs / "ranks.png").is_file()
    args = load_checkpoint(s2 / "checkpoint.pth.tar")["args"]
    assert args["baseline"] == "baseline/llcm_s1/model_best.pth.tar"
    assert args["rgb_batch_size"] == 8 and args["top_k"] == 20  # SYSU's stage-2 batch and NPC settings


def test_llcm_defaults_are_sysu_settings(train_script, tiny_llcm):
    base = ["--dataset", "llcm", "--data-dir", str(tiny_llcm), "--no-imagenet", "--device", "cpu"]
    s1 = train_script.build_config(train_script.parse_args([*base, "--stage", "baseline"]))
    s2 = train_script.build_config(train_script.parse_args([*base, "--stage", "rpnr", "--resume"]))
    assert (s1.eps, s1.iters, s1.batch_size, s1.rgb_batch_size, s1.top_k) == (0.6, 200, 128, 64, 20)
    assert (s2.rgb_batch_size, s2.logs_dir, s2.baseline) == (128, "logs/llcm_s2", "baseline/llcm_s1/model_best.pth.tar")
