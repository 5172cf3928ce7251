"""The training shell scripts end to end at tiny settings: RegDB trials in parallel lanes (GPUS) with
the mean summary of best and last models, and run_train_llcm.sh through run_train_sysu.sh then test_llcm.sh, run
from another folder with relative paths, and NPROC > 1 checking each stage with the real train.py --check before a
(stand-in) torchrun. tests/test_script_settings.py covers the scripts' command lines (settings block, warnings,
RESUME, the check before torchrun) with a stand-in python."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

from rpnr.common.checkpoints import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = {"IMAGENET": "none", "DEVICE": "cpu", "HEIGHT": "32", "WIDTH": "16", "BATCH": "8", "INSTANCES": "4",
        "ITERS": "2", "EPOCHS": "1", "EPS": "0.6", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
        "EXTRA": "--k1 10 --k2 3 --workers 1 --feature-batch-size 64 --test-trials 2"}


def _script(name: str, tmp_path: Path, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **TINY, "S1_DIR": str(tmp_path / "s1"), "S2_DIR": str(tmp_path / "s2"), **env}
    return subprocess.run(["bash", str(REPO / name)], env=env, capture_output=True, text=True, timeout=600, cwd=cwd)


def _summary_rows(path: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    """The scripts' summary.csv (report.py --csv) by (test setting, model, metric)."""
    with open(path, newline="") as fh:
        return {(r["test_setting"], r["model"], r["metric"]): r for r in csv.DictReader(fh)}


def test_regdb_trials_in_parallel_lanes_and_the_mean_summary(tiny_regdb, tmp_path):
    done = _script("run_train_regdb.sh", tmp_path, DATA_DIR=str(tiny_regdb), TRIALS="1 2 3", GPUS="0 1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "GPU 0: trials 1 3" in done.stdout and "GPU 1: trials 2" in done.stdout
    lane0 = (tmp_path / "s2" / "gpu0.out").read_text()
    assert "'trial': 1" in lane0 and "'trial': 3" in lane0 and "'trial': 2" not in lane0
    tests = [json.loads((tmp_path / "s2" / str(t) / "test.json").read_text()) for t in (1, 2, 3)]
    rows = _summary_rows(tmp_path / "s2" / "summary.csv")
    mean = sum(t["last"]["thermal_to_visible"]["mAP"] for t in tests) / 3
    row = rows[("thermal_to_visible", "last", "mAP")]
    assert row["dataset"] == "regdb" and row["stage"] == "rpnr" and row["runs"] == "3"
    assert abs(float(row["mean"]) - mean) < 1e-4
    assert "RegDB stage 2 (rpnr): 3 run(s)" in (tmp_path / "s2" / "summary.txt").read_text()


def test_llcm_script_from_another_folder_with_relative_paths(tiny_llcm, tmp_path):
    """run_train_llcm.sh (through run_train_sysu.sh) and test_llcm.sh run from tmp_path: the relative DATA_DIR,
    S1_DIR, S2_DIR, CHECKPOINT and OUT_DIR are read and written there, nothing inside the repository."""
    runs = f"runs_{tmp_path.name}"  # a name no other test uses, to tell whether it appeared in the repository
    data = os.path.relpath(tiny_llcm, tmp_path)
    dirs = {"DATA_DIR": data, "S1_DIR": f"{runs}/s1", "S2_DIR": f"{runs}/s2"}
    done = _script("run_train_llcm.sh", tmp_path, cwd=tmp_path, **dirs)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(f"settings: DATASET=llcm DATA_DIR={data} ")
    s1, s2 = tmp_path / runs / "s1", tmp_path / runs / "s2"
    records = json.loads((s2 / "metrics.json").read_text())
    assert records[0]["world_size"] == 1 and records[0]["bn_splits"] == 2
    rows = _summary_rows(s2 / "summary.csv")
    assert {setting for setting, _, _ in rows} == {"visible_to_infrared", "infrared_to_visible"}
    assert {row["dataset"] for row in rows.values()} == {"llcm"}
    assert "visible_to_infrared  Rank-1" in done.stdout and "visible_to_infrared  Rank-1" in \
        (s2 / "summary.txt").read_text()
    for logs, stage in ((s1, "baseline"), (s2, "rpnr")):
        best = load_checkpoint(logs / "model_best.pth.tar")
        assert best["dataset"] == "llcm" and best["stage"] == stage and (logs / "ranks.png").is_file()
        assert 0 <= json.loads((logs / "metrics.json").read_text())[0]["rank1"] <= 100
    args = load_checkpoint(s2 / "checkpoint.pth.tar")["args"]
    assert Path(tmp_path, args["baseline"]).resolve() == (s1 / "model_best.pth.tar").resolve()
    assert args["rgb_batch_size"] == 8 and args["top_k"] == 20  # SYSU's stage-2 batch and NPC settings
    tested = _script("test_llcm.sh", tmp_path, cwd=tmp_path, DATA_DIR=data, OUT_DIR=f"{runs}/test",
                     CHECKPOINT=f"{runs}/s2/model_best.pth.tar")
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert tested.stdout.startswith(f"settings: DATA_DIR={data}")
    assert f" CHECKPOINT={runs}/s2/model_best.pth.tar " in tested.stdout
    assert json.loads((tmp_path / runs / "test" / "llcm.json").read_text())
    assert (tmp_path / runs / "test" / "llcm.log").read_text()
    assert not (REPO / runs).exists()
    again = _script("run_train_llcm.sh", tmp_path, cwd=tmp_path, **dirs)  # the same folders again
    assert again.returncode != 0 and f"logs folder {runs}/s1 holds the outputs of an earlier run" in \
        again.stderr and "--resume" in again.stderr and "--overwrite" in again.stderr


def test_nproc_checks_each_stage_with_plain_python_before_torchrun(tiny_regdb, tmp_path):
    """NPROC=2 with the real train.py --check and a stand-in torchrun that records its call and trains nothing:
    stage 1's check passes and torchrun starts; stage 2's check then finds no stage-1 model and the script stops
    with train.py's one error line last, before a second torchrun. A wrong BN_SPLITS stops before the first."""
    fake = tmp_path / "bin" / "torchrun"
    fake.parent.mkdir()
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {tmp_path / "torchrun.calls"}\n')
    fake.chmod(0o755)
    env = {"DATA_DIR": str(tiny_regdb), "TRIALS": "1", "NPROC": "2", "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    done = _script("run_train_regdb.sh", tmp_path, **env)
    assert done.returncode == 1
    calls = (tmp_path / "torchrun.calls").read_text().splitlines()
    assert len(calls) == 1 and "--stage baseline" in calls[0] and calls[0].endswith("--no-imagenet")
    assert "check passed" in done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(tmp_path / "s1" / "1" / "model_best.pth.tar") in last, last
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2" / "1").exists()  # the checks write nothing
    done = _script("run_train_regdb.sh", tmp_path, BN_SPLITS="3", **env)
    assert done.returncode == 1 and len((tmp_path / "torchrun.calls").read_text().splitlines()) == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: --bn-splits 3 is not a multiple of the 2 ")
