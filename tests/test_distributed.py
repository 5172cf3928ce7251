"""torchrun with 2 gloo processes on the CPU trains the same model as one process with --bn-splits 2
(DESIGN.md section 8): same pseudo labels, losses and weights, one set of outputs, world_size in the
records; clear one-line errors for launches that cannot work."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tqdm import tqdm

from rpnr.common.checkpoints import load_checkpoint
from rpnr.common.errors import DistributedError, UsageError
from rpnr.data.prepare import write_prepared
from rpnr.data.synthetic import write_sysu
from rpnr.data.sysu import plan_sysu
from rpnr.engine.distributed import ProcessGroup, resolve_device
from rpnr.engine.settings import build_config, build_parser

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = {"checkpoint.pth.tar", "model_best.pth.tar", "log.txt", "metrics.json", "curves.png", "test.json",
           "ranks.png", "run.json", ".lock"}
TINY = ["--dataset", "sysu", "--height", "32", "--width", "16", "--batch-size", "8", "--num-instances", "4",
        "--iters", "3", "--k1", "10", "--k2", "3", "--eps", "0.6", "--workers", "1", "--feature-batch-size", "16",
        "--device", "cpu", "--seed", "3", "--test-trials", "1"]


@pytest.fixture(scope="module")
def tiny_sysu(tmp_path_factory) -> Path:
    """Synthetic SYSU-MM01 (12 training ids, ~3 images per camera) prepared at 32x16."""
    base = tmp_path_factory.mktemp("tiny_sysu")
    write_sysu(base / "raw", train_ids=10, val_ids=2, test_ids=6, per_camera=3, height=64, width=32, seed=0)
    write_prepared(plan_sysu(str(base / "raw")), base / "prepared", 32, 16, workers=2)
    return base / "prepared"


def _train(data: Path, logs: Path, *extra: str, nproc: int = 1) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd = [*(launcher if nproc > 1 else [sys.executable]), str(REPO / "train.py"), *TINY, "--data-dir", str(data),
           "--logs-dir", str(logs), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    logs.parent.mkdir(parents=True, exist_ok=True)  # the working folder: nothing of a run lands in the checkout
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=logs.parent)


def _ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stderr[-3000:]


def _records(logs: Path) -> list[dict]:
    return json.loads((logs / "metrics.json").read_text())


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}/") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def _assert_same_run(one: Path, two: Path, epochs: int) -> None:
    """Same clusters, outliers, losses, metrics and weights every epoch: bit-identical on the CPU."""
    assert {p.name for p in two.iterdir()} == OUTPUTS  # one set of outputs, no per-rank copies
    rec_one, rec_two = _records(one), _records(two)
    assert [r["epoch"] for r in rec_two] == list(range(1, epochs + 1))
    assert [r["world_size"] for r in rec_one] == [1] * epochs and [r["world_size"] for r in rec_two] == [2] * epochs
    for a, b in zip(rec_one, rec_two):
        for key in ("clusters_rgb", "clusters_ir", "outliers_rgb", "outliers_ir", "relabeled_rgb", "relabeled_ir",
                    "purity_rgb", "purity_ir", "bn_splits"):
            assert a[key] == b[key], key
        for key in (k for k in a if k.startswith("loss_")):
            assert b[key] == a[key], key
        for key in ("rank1", "mAP", "mINP"):
            assert b[key] == a[key], key
    w_one = load_checkpoint(one / "checkpoint.pth.tar")["model"]
    w_two = load_checkpoint(two / "checkpoint.pth.tar")["model"]
    assert w_one.keys() == w_two.keys()
    for key in w_one:
        assert torch.equal(w_two[key], w_one[key]), key
    test_one, test_two = (_flat(json.loads((d / "test.json").read_text())) for d in (one, two))
    assert {k: v for k, v in test_two.items() if "checkpoint" not in k} == \
        {k: v for k, v in test_one.items() if "checkpoint" not in k}  # the final test: every metric, exactly
    runs = [json.loads((d / "run.json").read_text()) for d in (one, two)]
    assert [r["device"]["world_size"] for r in runs] == [1, 2] and len(runs[1]["device"]["names"]) == 2
    log = (two / "log.txt").read_text()
    assert log.count(f"epoch {epochs}/{epochs}: Rank-1") == 1 and "2 process(es), batch norm in 2 slice(s)" in log


def test_two_processes_equal_one_process_with_two_bn_splits(tiny_sysu, tmp_path, train_script, capsys, one_thread):
    one, two = tmp_path / "one", tmp_path / "two"

    def train_here(logs: Path, *extra: str) -> tuple[int, str]:  # one process: train.py in this one
        capsys.readouterr()
        status = train_script.main([*TINY, "--data-dir", str(tiny_sysu), "--logs-dir", str(logs), *extra])
        return status, capsys.readouterr().err

    assert train_here(one / "s1", "--stage", "baseline", "--no-imagenet", "--epochs", "1", "--bn-splits", "2")[0] == 0
    _ok(_train(tiny_sysu, two / "s1", "--stage", "baseline", "--no-imagenet", "--epochs", "1", nproc=2))
    _assert_same_run(one / "s1", two / "s1", epochs=1)
    assert load_checkpoint(two / "s1" / "checkpoint.pth.tar")["world_size"] == 2

    # stage 2 from each run's stage-1 model; the two-process run stops after epoch 1 and resumes
    assert train_here(one / "s2", "--stage", "rpnr", "--epochs", "2", "--baseline",
                      str(one / "s1" / "model_best.pth.tar"))[0] == 0  # one process: --bn-splits defaults to 2
    s2 = ["--stage", "rpnr", "--baseline", str(two / "s1" / "model_best.pth.tar")]
    _ok(_train(tiny_sysu, two / "s2", *s2, "--epochs", "1", nproc=2))
    _ok(_train(tiny_sysu, two / "s2", *s2, "--epochs", "2", "--resume", "--low-memory", nproc=2))
    _assert_same_run(one / "s2", two / "s2", epochs=2)
    log = (two / "s2" / "log.txt").read_text()
    assert "resuming from" in log and "note: --low-memory changes nothing with one batch-norm slice per process" in log

    # a two-process run resumes only with two processes
    status, err = train_here(two / "s1", "--stage", "baseline", "--epochs", "2", "--resume")
    assert status == 1
    assert err.strip().splitlines()[-1:] == [
        f"error: {two / 's1' / 'checkpoint.pth.tar'} was written by a run of 2 process(es); resume it with the "
        f"same number (torchrun --nproc_per_node 2), not 1"]


def test_torchrun_errors_are_one_line(tiny_sysu, tmp_path):
    res = _train(tiny_sysu, tmp_path / "logs", "--stage", "baseline", "--no-imagenet", "--epochs", "1", "--eps",
                 "1e-6", nproc=2)
    assert res.returncode != 0
    ours = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1 and ours[0].startswith(
        "error: epoch 1: infrared pseudo labels have 0 clusters (69 outliers, eps 1e-06)"), res.stderr[-2000:]
    assert "train.py\", line" not in res.stderr and "rpnr/" not in res.stderr  # no traceback of ours (torchrun
    # itself reports the failed worker after our line)
    assert not (tmp_path / "logs" / "checkpoint.pth.tar").exists()


@pytest.mark.parametrize("extra, message", [
    (["--bn-splits", "3"], "--bn-splits 3 is not a multiple of the 2 processes torchrun started"),
    (["--bn-splits", "4", "--batch-size", "6", "--rgb-batch-size", "4", "--num-instances", "2"],
     "--bn-splits 4 must divide the infrared batch (6) and the two-view visible batch (8)"),
    (["--device", "cuda:1"], "--device cuda:1: under torchrun pass --device cuda" if torch.cuda.is_available()
     else "--device cuda:1: CUDA is not available on this machine"),
])
def test_launches_that_cannot_work(tiny_sysu, extra, message):
    argv = [*TINY, "--stage", "baseline", "--no-imagenet", "--data-dir", str(tiny_sysu), *extra]
    with pytest.raises(UsageError, match=re.escape(message)):
        build_config(vars(build_parser().parse_args(argv)), world=2)
    assert build_config(vars(build_parser().parse_args(argv[:-len(extra)])), world=2).bn_splits == 2


def test_cuda_with_fewer_gpus_than_processes(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda", world=4, local_rank=1, local_world=2, torchrun=True) == "cuda:1"
    assert resolve_device("cpu", world=4, local_rank=1, local_world=2, torchrun=True) == "cpu"
    assert resolve_device("cuda:1", world=1, local_rank=0, local_world=1, torchrun=True) == "cuda:1"
    with pytest.raises(DistributedError, match=r"4 processes per machine, but this machine has 2 CUDA device\(s\)"):
        resolve_device("cuda", world=4, local_rank=3, local_world=4, torchrun=True)
    with pytest.raises(DistributedError, match="pass --device cuda"):
        resolve_device("cuda:0", world=2, local_rank=0, local_world=2, torchrun=True)
    # one process without torchrun: the name as given, checked against the machine
    assert resolve_device("cuda") == "cuda" and resolve_device("cuda:1") == "cuda:1" and resolve_device(None) == "cuda"
    with pytest.raises(DistributedError, match=r"--device cuda:2: only 2 CUDA device\(s\)"):
        resolve_device("cuda:2")


def test_device_names_checked_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert resolve_device(None) == "cpu" and resolve_device("cpu") == "cpu"
    assert resolve_device("cpu", world=2, local_rank=1, local_world=2, torchrun=True) == "cpu"
    with pytest.raises(DistributedError, match="--device cuda: CUDA is not available on this machine"):
        resolve_device("cuda")
    with pytest.raises(DistributedError, match=r"--device 'gpu' is not a device \(use cpu, cuda or cuda:N\)"):
        resolve_device("gpu")
    with pytest.raises(DistributedError, match=r"--device 'mps': use cpu, cuda or cuda:N"):
        resolve_device("mps")


def test_check_same_names_the_rank_that_differs(monkeypatch):
    group = ProcessGroup(rank=0, world_size=3, joined=True)
    assert ProcessGroup().gather_objects("x") == ["x"]  # one process: its own object
    ProcessGroup().check_same(7, "never differs")
    monkeypatch.setattr(ProcessGroup, "gather_objects", lambda self, obj: [obj, obj, obj])
    group.check_same(7, "the batches")  # every rank agrees: no error
    monkeypatch.setattr(ProcessGroup, "gather_objects", lambda self, obj: [obj, obj, obj + 1])
    with pytest.raises(DistributedError, match=r"^the batches \(rank 2 differs from rank 0\); every process"):
        group.check_same(7, "the batches")


def test_progress_bar_only_on_rank_zero():
    out = io.StringIO()
    with tqdm(range(3), file=out) as plain:  # tqdm's own settings (TQDM_DISABLE) decide on rank 0
        with ProcessGroup(rank=0, world_size=2).progress(range(3), file=out) as bar:
            assert bar.disable == plain.disable
    with ProcessGroup(rank=1, world_size=2).progress(range(3), file=out) as bar:
        assert bar.disable is True
        assert list(bar) == [0, 1, 2]  # still iterates, silently


@pytest.mark.parametrize("world, count, expected", [
    (1, 7, [range(0, 7)]),
    (2, 7, [range(0, 4), range(4, 7)]),
    (3, 7, [range(0, 3), range(3, 5), range(5, 7)]),
    (4, 2, [range(0, 1), range(1, 2), range(2, 2), range(2, 2)]),
])
def test_shards_cover_every_item_once(world, count, expected):
    shards = [ProcessGroup(rank=r, world_size=world).shard(count) for r in range(world)]
    assert shards == expected


def test_batch_positions_split_the_global_batch():
    parts = [ProcessGroup(rank=r, world_size=4).batch_positions(16).tolist() for r in range(4)]
    assert parts == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    with pytest.raises(Exception, match="cannot be split over 4 processes"):
        ProcessGroup(rank=0, world_size=4).batch_positions(10)
