"""train.py: bad input ends in one clear line on stderr and exit status 1, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rpnr.common.checkpoints import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--height", "32", "--width", "16", "--batch-size", "8", "--num-instances", "4", "--iters", "2",
         "--epochs", "1", "--k1", "10", "--k2", "3", "--workers", "0", "--device", "cpu"]


@pytest.fixture
def fails(capsys, train_script, tmp_path, monkeypatch):
    """fails(*argv): run train.py's main(); assert exit status 1 and one 'error: ...' line, the last
    on stderr (progress bars may come before it); return that line. It runs in ``tmp_path`` (a default
    --logs-dir lands there, never in the checkout), with an empty torch cache of its own (``TORCH_HOME``)."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def run(*argv) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            sys.exit(train_script.main([str(a) for a in argv]))
        err = capsys.readouterr().err.strip()
        assert info.value.code == 1, err
        lines = err.replace("\r", "\n").splitlines()
        assert lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1, err
        assert "Traceback" not in err
        return lines[-1]

    return run


@pytest.mark.parametrize("extra, message", [
    (["--eps", "-0.5"], "--eps must be positive, got -0.5"),
    (["--batch-size", "10"], "--batch-size 10 is not divisible by --num-instances 4"),
    (["--num-instances", "0"], "--num-instances must be a positive integer"),
    (["--rgb-batch-size", "6"], "must be a positive multiple of --num-instances 4"),
    (["--momentum", "1.5"], "--momentum must be in [0, 1)"),
    (["--k2", "20"], "--k2 (20) must not exceed --k1 (10)"),
    (["--trial", "11"], "--trial must be in 1..10"),
    (["--lr", "0"], "--lr must be positive"),
    (["--eps", "abc"], "invalid float value: 'abc'"),
    (["--device", "tpu"], "--device"),
    (["--bn-splits", "0"], "--bn-splits must be a positive integer, got 0"),
    (["--bn-splits", "3", "--batch-size", "4", "--rgb-batch-size", "4"],
     "--bn-splits 3 cuts the infrared batch (4) into 2 slices but the two-view visible batch (8) into 3"),
    (["--feature-precision", "fp16"], "invalid choice: 'fp16'"),
])
def test_nonsense_flag_values(fails, capsys, tmp_path, extra, message):
    err = fails("--dataset", "regdb", "--stage", "baseline", "--no-imagenet", "--data-dir", tmp_path,
                "--logs-dir", tmp_path / "logs", *SMALL, *extra)
    assert message in err
    assert not (tmp_path / "logs").exists() and not any((tmp_path / "cwd").iterdir())


def test_missing_imagenet_weights(fails, capsys, tmp_path):
    """--imagenet torchvision (the default) with an empty torch cache and no network (conftest); a file in the
    cache is taken as it is (the weights are read later, after the data checks)."""
    logs = ["--logs-dir", tmp_path / "logs"]
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    err = fails("--dataset", "regdb", "--stage", "baseline", "--data-dir", tmp_path, *logs, *SMALL)
    assert err.startswith("error: torchvision's ImageNet ResNet-50 weights are not in torch's cache and cannot be "
                          "downloaded (the tests run without the network")
    assert f"put resnet50-0676ba61.pth (https://download.pytorch.org/models/resnet50-0676ba61.pth) into {cache}" in err
    assert "--imagenet PATH" in err and "--no-imagenet" in err
    assert not (cache / "resnet50-0676ba61.pth").exists()
    err = fails("--dataset", "regdb", "--stage", "baseline", "--data-dir", tmp_path, *logs, *SMALL,
                "--imagenet", tmp_path / "r50.pth")
    assert "r50.pth" in err and "not found" in err
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "resnet50-0676ba61.pth").write_bytes(b"not read before the data checks")  # a "cached" file
    err = fails("--dataset", "regdb", "--stage", "baseline", "--data-dir", tmp_path / "nowhere", *logs, *SMALL)
    assert err == f"error: prepared data folder not found: {tmp_path / 'nowhere'}"
    assert not (tmp_path / "logs").exists()


def test_bad_data_dirs(fails, capsys, tmp_path, tiny_regdb):
    err = fails("--dataset", "regdb", "--stage", "baseline", "--no-imagenet", "--data-dir",
                tmp_path / "nowhere", "--logs-dir", tmp_path / "logs", *SMALL)
    assert "nowhere" in err and "not found" in err
    err = fails("--dataset", "sysu", "--stage", "baseline", "--no-imagenet", "--data-dir", tiny_regdb,
                "--logs-dir", tmp_path / "logs", *SMALL)
    assert "regdb" in err and "not sysu" in err
    err = fails("--dataset", "regdb", "--stage", "baseline", "--no-imagenet", "--data-dir", tiny_regdb,
                "--logs-dir", tmp_path / "logs", *SMALL, "--height", "64", "--width", "32")
    assert "32x16" in err and "64x32" in err


def test_bad_checkpoints(fails, capsys, tmp_path, tiny_regdb):
    err = fails("--dataset", "regdb", "--stage", "rpnr", "--trial", "3", "--data-dir", tiny_regdb,
                "--logs-dir", tmp_path / "s2", "--baseline", f"{tmp_path}/{{trial}}/model_best.pth.tar", *SMALL)
    assert f"{tmp_path}/3/model_best.pth.tar" in err and "--stage baseline" in err
    wrong = tmp_path / "wrong.pth.tar"
    save_checkpoint({"model": {"encoder.weight": torch.zeros(2, 2), "layer1.0.conv1.weight": torch.zeros(1)}},
                    wrong)
    err = fails("--dataset", "regdb", "--stage", "rpnr", "--data-dir", tiny_regdb,
                "--logs-dir", tmp_path / "s2", "--baseline", wrong, *SMALL)
    assert "missing keys" in err and "unexpected keys (e.g. encoder.weight)" in err
    err = fails("--dataset", "regdb", "--stage", "baseline", "--no-imagenet", "--data-dir", tiny_regdb,
                "--logs-dir", tmp_path / "empty", "--resume", *SMALL)
    assert "nothing to resume" in err


def test_degenerate_pseudo_labels_stop_with_a_hint(fails, capsys, tmp_path, tiny_regdb, one_thread):
    logs = tmp_path / "logs"
    err = fails("--dataset", "regdb", "--stage", "baseline", "--no-imagenet", "--data-dir", tiny_regdb,
                "--logs-dir", logs, *SMALL, "--eps", "0.001")
    assert err.startswith("error: epoch 1: infrared pseudo labels have 1 clusters (43 outliers, eps 0.001)")
    assert "need at least 2 for a batch of 8 with 4 instances - try a larger --eps" in err
    assert err in (logs / "log.txt").read_text()
    assert not (logs / "checkpoint.pth.tar").exists() and not (logs / "metrics.json").exists()


def test_command_line_prints_no_traceback(tmp_path):
    """The real command: a wrong --data-dir (after every flag check passed)."""
    res = subprocess.run([sys.executable, str(REPO / "train.py"), "--dataset", "sysu", "--stage", "baseline",
                          "--no-imagenet", "--data-dir", str(tmp_path / "missing"), "--logs-dir",
                          str(tmp_path / "logs"), "--device", "cpu"], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [f"error: prepared data folder not found: {tmp_path / 'missing'}"]
    assert res.stdout == ""  # the error goes to stderr only
    assert not (tmp_path / "logs").exists()
