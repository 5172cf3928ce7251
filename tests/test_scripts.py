"""The training shell scripts end to end at tiny settings: RegDB trials in parallel lanes (GPUS) with
the mean summary of best and last models, and run_train_llcm.sh through run_train_sysu.sh."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from rpnr.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = {"IMAGENET": "none", "DEVICE": "cpu", "HEIGHT": "32", "WIDTH": "16", "BATCH": "8", "INSTANCES": "4",
        "ITERS": "2", "EPOCHS": "1", "EPS": "0.6", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
        "EXTRA": "--k1 10 --k2 3 --workers 1 --feature-batch-size 64 --test-trials 2"}


def _script(name: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **TINY, "S1_DIR": str(tmp_path / "s1"), "S2_DIR": str(tmp_path / "s2"), **env}
    return subprocess.run(["bash", str(REPO / name)], env=env, capture_output=True, text=True, timeout=600)


def test_regdb_trials_in_parallel_lanes_and_the_mean_summary(tiny_regdb, tmp_path):
    done = _script("run_train_regdb.sh", tmp_path, DATA_DIR=str(tiny_regdb), TRIALS="1 2 3", GPUS="0 1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "GPU 0: trials 1 3" in done.stdout and "GPU 1: trials 2" in done.stdout
    lane0 = (tmp_path / "s2" / "gpu0.out").read_text()
    assert "'trial': 1" in lane0 and "'trial': 3" in lane0 and "'trial': 2" not in lane0
    tests = [json.loads((tmp_path / "s2" / str(t) / "test.json").read_text()) for t in (1, 2, 3)]
    summary = json.loads((tmp_path / "s2" / "summary.json").read_text())
    assert summary["best"]["epoch"] == [1, 1, 1] and summary["last"]["epoch"] == [1, 1, 1]
    mean = sum(t["last"]["thermal_to_visible"]["mAP"] for t in tests) / 3
    assert abs(summary["last"]["thermal_to_visible"]["mAP"] - mean) < 1e-9
    assert "final test, mean of 3 runs" in (tmp_path / "s2" / "summary.txt").read_text()


def test_llcm_script_runs_the_sysu_script_with_llcm(tiny_llcm, tmp_path):
    done = _script("run_train_llcm.sh", tmp_path, DATA_DIR=str(tiny_llcm))
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads((tmp_path / "s2" / "metrics.json").read_text())
    assert records[0]["world_size"] == 1 and records[0]["bn_splits"] == 2
    summary = json.loads((tmp_path / "s2" / "summary.json").read_text())
    assert set(summary["best"]) == {"epoch", "checkpoint", "visible_to_infrared", "infrared_to_visible"}
    assert "visible_to_infrared  Rank-1" in done.stdout
    for logs, stage in ((tmp_path / "s1", "baseline"), (tmp_path / "s2", "rpnr")):
        best = load_checkpoint(logs / "model_best.pth.tar")
        assert best["dataset"] == "llcm" and best["stage"] == stage and (logs / "ranks.png").is_file()
        assert 0 <= json.loads((logs / "metrics.json").read_text())[0]["rank1"] <= 100
    args = load_checkpoint(tmp_path / "s2" / "checkpoint.pth.tar")["args"]
    assert args["baseline"] == str(tmp_path / "s1" / "model_best.pth.tar")
    assert args["rgb_batch_size"] == 8 and args["top_k"] == 20  # SYSU's stage-2 batch and NPC settings
    again = _script("run_train_llcm.sh", tmp_path, DATA_DIR=str(tiny_llcm))  # the same folders again
    assert again.returncode != 0 and f"logs folder {tmp_path / 's1'} holds the outputs of an earlier run" in \
        again.stderr and "--resume" in again.stderr and "--overwrite" in again.stderr
