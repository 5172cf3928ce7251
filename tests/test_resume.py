"""kill -9 in the middle of epoch 2, --resume, and the same results as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from rpnr.common.checkpoints import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "regdb", "--stage", "baseline", "--no-imagenet", "--height", "32", "--width", "16",
        "--batch-size", "8", "--num-instances", "4", "--iters", "2", "--epochs", "2", "--k1", "10", "--k2", "3",
        "--eps", "0.6", "--workers", "1", "--feature-batch-size", "64", "--device", "cpu", "--seed", "7",
        "--test-trials", "1"]


def _cmd(data: Path, logs: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), *TINY, "--data-dir", str(data), "--logs-dir", str(logs), *extra]


def _env() -> dict:
    # one thread: on a busy 2-core machine two spinning OpenMP threads per process cost 5x
    return {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def _without_times(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in records]


def test_kill_and_resume_matches_uninterrupted_run(tiny_regdb, tmp_path, train_script, capsys, one_thread):
    full, cut = tmp_path / "full", tmp_path / "cut"

    def train(logs: Path, *extra: str) -> tuple[int, str]:  # train.py in this process: (status, stderr)
        capsys.readouterr()
        status = train_script.main([*TINY, "--data-dir", str(tiny_regdb), "--logs-dir", str(logs), *extra])
        return status, capsys.readouterr().err

    status, err = train(full)
    assert status == 0, err

    proc = subprocess.Popen(_cmd(tiny_regdb, cut), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=tmp_path)
    ckpt = cut / "checkpoint.pth.tar"
    deadline = time.monotonic() + 600
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # mid-epoch 2: epoch 1's checkpoint was just renamed into place
    proc.wait()
    assert load_checkpoint(ckpt)["epoch"] == 1
    assert not (cut / "test.json").exists()
    (cut / ".checkpoint.pth.tar.x1y2.tmp").write_bytes(b"half-written")  # as a kill inside a save leaves it
    with open(cut / "log.txt", "a") as fh:  # lines of the unfinished epoch 2
        fh.write("epoch 2/2: Rank-1 99.00% mAP 99.00% mINP 99.00% (best Rank-1 99.00%)\n")

    status, err = train(cut, "--resume", "--lr", "1e-3")
    assert status == 1 and err.strip().splitlines() == [
        f"error: {ckpt} was trained with other settings, so resuming would compute something else: --lr 0.00035 -> "
        f"0.001 (leave these flags out to resume with the saved values, or start afresh with --overwrite)"]
    status, err = train(cut, "--resume")
    assert status == 0, err

    assert sorted(p.name for p in cut.iterdir()) == sorted(p.name for p in full.iterdir())
    rec_full = json.loads((full / "metrics.json").read_text())
    rec_cut = json.loads((cut / "metrics.json").read_text())
    assert [r["epoch"] for r in rec_cut] == [1, 2]
    assert _without_times(rec_cut) == _without_times(rec_full)
    tests = [json.loads((d / "test.json").read_text()) for d in (cut, full)]
    for test in tests:  # the files' paths and hashes differ (logs_dir is in the checkpoint); the results may not
        for column in test.values():
            assert column.pop("checkpoint")["path"].startswith(str(cut if test is tests[0] else full))
    assert tests[0] == tests[1]
    a, b = load_checkpoint(full / "checkpoint.pth.tar"), load_checkpoint(cut / "checkpoint.pth.tar")
    assert a["epoch"] == b["epoch"] == 2
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    log = (cut / "log.txt").read_text()
    assert "resuming from" in log and "after epoch 1" in log and log.count("epoch 1/2: Rank-1") == 1
    assert log.count("epoch 2/2: Rank-1") == 1 and "99.00%" not in log  # cut back to the checkpoint's epoch
    run = json.loads((cut / "run.json").read_text())
    assert len(run["resumed"]) == 1 and "--resume" in run["resumed"][0]["command"]
    assert {**run["args"], "resume": True} == run["resumed"][0]["args"]  # the saved settings, continued

