"""One logs folder, one run (DESIGN.md section 10): the lock, refusing an earlier run's outputs, --overwrite,
resuming with the saved settings, model_best after a kill, non-finite training, run.json and file modes."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rpnr.common import checkpoints as checkpoint_module
from rpnr.common.checkpoints import load_checkpoint, save_checkpoint
from rpnr.common.errors import CheckpointError, RunFolderError, TrainingError, UsageError
from rpnr.engine.loop import check_finite_weights
from rpnr.engine.run_folder import OUTPUTS, RunFolder, reconcile_best, resumed_config, saved_settings
from rpnr.engine.settings import TrainConfig
from rpnr.models import build_model, load_weights

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--dataset", "regdb", "--stage", "baseline", "--no-imagenet", "--height", "32", "--width", "16",
         "--batch-size", "8", "--num-instances", "4", "--iters", "1", "--epochs", "1", "--k1", "10", "--k2", "3",
         "--eps", "0.6", "--workers", "0", "--device", "cpu", "--seed", "3", "--test-trials", "1"]


@pytest.fixture
def train(capsys, train_script, tiny_regdb, one_thread):
    """train(logs, *flags) -> (exit status, last stderr line, stdout) of train.py's main() on tiny RegDB."""

    def run(logs, *flags):
        capsys.readouterr()
        status = train_script.main([*SMALL, "--data-dir", str(tiny_regdb), "--logs-dir", str(logs), *map(str, flags)])
        out = capsys.readouterr()
        lines = out.err.replace("\r", "\n").strip().splitlines()
        assert "Traceback" not in out.err
        return status, lines[-1] if lines else "", out.out

    return run


def _snapshot(folder) -> dict:
    """The files of ``folder`` and their contents (the run's own lock file left out)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


def test_a_second_run_into_a_folder_in_use_is_refused(train, tmp_path):
    logs = tmp_path / "logs"
    other = RunFolder(logs)
    other.lock()  # another run holds the folder
    try:
        status, err, _ = train(logs)
    finally:
        other.release()
    assert status == 1 and err == f"error: logs folder {logs} is in use by another run (pid {os.getpid()}); wait " \
                                  f"for it to end or choose another --logs-dir"
    assert [p.name for p in logs.iterdir()] == [".lock"]


def test_earlier_outputs_are_refused_and_overwrite_replaces_only_them(train, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "log.txt").write_text("an earlier run\n")
    (logs / "test.json").write_text("{}\n")
    (logs / "notes.txt").write_text("mine\n")
    before = _snapshot(logs)
    status, err, _ = train(logs)
    assert status == 1 and err.endswith("holds the outputs of an earlier run (log.txt, test.json): it wrote no "
                                        "checkpoint, so there is nothing to resume; pass --overwrite to start afresh "
                                        "(removes them)")
    status, err, _ = train(logs, "--overwrite", "--k1", "60")  # fails its checks: nothing may be removed yet
    assert status == 1 and "--k1 60" in err
    assert _snapshot(logs) == before
    status, err, _ = train(logs, "--overwrite", "--resume")
    assert status == 1 and "not both" in err

    old_umask = os.umask(0o022)
    try:
        status, err, _ = train(logs, "--overwrite")
    finally:
        os.umask(old_umask)
    assert status == 0, err
    assert (logs / "notes.txt").read_text() == "mine\n"
    assert "an earlier run" not in (logs / "log.txt").read_text()
    assert set(OUTPUTS) <= {p.name for p in logs.iterdir()}
    for name in OUTPUTS:  # readable by colleagues: 0o666 & ~umask
        assert stat.S_IMODE((logs / name).stat().st_mode) == 0o644, name

    run = json.loads((logs / "run.json").read_text())
    ckpt = load_checkpoint(logs / "checkpoint.pth.tar")
    assert run["args"] == ckpt["args"] and "--overwrite" in run["command"]
    assert set(run["versions"]) == {"python", "torch", "torchvision", "numpy", "scipy", "scikit-learn", "POT", "cuda",
                                    "cudnn"}
    assert run["versions"]["torch"] == torch.__version__.split("+")[0]
    assert run["device"]["type"] == "cpu" and run["device"]["world_size"] == 1 and len(run["device"]["names"]) == 1
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if git.returncode == 0:  # a checkout (CI's fresh clone included): the commit it is at
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip() != ""
        assert run["git"] == {"commit": git.stdout.strip(), "dirty": dirty}
    else:
        assert run["git"] is None
    assert run["host"] == socket.gethostname() and run["started"].startswith(time.strftime("%Y-%m-%d"))
    test = json.loads((logs / "test.json").read_text())
    for column, name in (("best", "model_best.pth.tar"), ("last", "checkpoint.pth.tar")):
        assert test[column]["checkpoint"] == {"path": str(logs / name), "sha256": _sha256(logs / name)}


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _tree(folder) -> set[str]:
    """Every path under ``folder``, hidden ones included."""
    return {str(p.relative_to(folder)) for p in Path(folder).rglob("*")}


def test_refused_runs_leave_no_folder_no_lock_and_no_file(train, tmp_path, tiny_regdb):
    data_before = _tree(tiny_regdb)
    logs = tmp_path / "new" / "logs"
    unprepared = tmp_path / "unprepared"
    unprepared.mkdir()
    for flags, told in (
            (("--stage", "rpnr", "--baseline", tmp_path / "absent.pth.tar"), "stage-1 checkpoint not found"),
            (("--stage", "rpnr", "--baseline", tmp_path), "is a folder, not a checkpoint file"),
            (("--resume",), "nothing to resume"),
            (("--k1", "500"), "--k1 500 needs more"),
            (("--data-dir", unprepared), "manifest.json")):
        status, err, _ = train(logs, *flags)
        assert status == 1 and told in err, err
        assert not (tmp_path / "new").exists(), flags
    status, _, _ = train(tiny_regdb)  # a prepared data folder as --logs-dir
    assert status == 1 and _tree(tiny_regdb) == data_before  # no .lock inside it
    assert _tree(unprepared) == set()


def test_check_flag_checks_everything_and_writes_nothing(train, tmp_path):
    logs = tmp_path / "logs"
    status, err, out = train(logs, "--check")
    assert status == 0, err
    assert out.strip().splitlines()[-1].startswith(f"check passed: regdb baseline starts afresh in {logs}, from "
                                                   f"random weights; ")
    assert out.strip().endswith("nothing was written") and not logs.exists()
    status, err, _ = train(logs, "--check", "--resume")
    assert status == 1 and "nothing to resume" in err and not logs.exists()


def test_a_run_that_failed_in_epoch_1_is_refused_naming_overwrite_and_the_lock_is_released(train, tmp_path):
    logs = tmp_path / "logs"
    status, err, _ = train(logs, "--eps", "1e-6")  # every sample an outlier: epoch 1 stops
    assert status == 1 and "pseudo labels have 0 clusters" in err and "try a larger --eps" in err
    assert {"log.txt", "run.json"} <= {p.name for p in logs.iterdir()}
    status, err, _ = train(logs)  # the same process: the failed run released its lock
    assert status == 1 and "it wrote no checkpoint, so there is nothing to resume; pass --overwrite" in err
    status, err, _ = train(logs, "--resume")
    assert status == 1 and "nothing to resume" in err and "start afresh with --overwrite" in err
    status, err, _ = train(logs, "--overwrite", "--iters", "1")
    assert status == 0, err


def test_an_older_checkpoint_cannot_change_the_recipe_on_resume(tmp_path):
    """A checkpoint written before a setting existed (any format): each absent setting counts as its default."""
    args = {k: v for k, v in TrainConfig(dataset="regdb", stage="rpnr", data_dir="d", logs_dir="l").__dict__.items()
            if k not in ("no_npc", "no_nrl", "no_mhl", "no_otpm", "low_memory", "check")}
    saved = saved_settings({"format_version": 1, "args": args})
    assert (saved["no_nrl"], saved["no_otpm"], saved["low_memory"]) == (False, False, False)
    assert saved_settings({"format_version": 2, "args": args}) == saved
    cfg = TrainConfig(dataset="regdb", stage="rpnr", data_dir="d", logs_dir="l", no_nrl=True, resume=True)
    with pytest.raises(UsageError, match=r"would compute something else: --no-nrl False -> True \("):
        resumed_config(cfg, saved, frozenset({"no_nrl", "resume"}), tmp_path / "checkpoint.pth.tar")


def test_resume_keeps_the_weights_the_run_started_from(tmp_path):
    saved = {**TrainConfig(dataset="regdb", stage="baseline", data_dir="d", logs_dir="l").__dict__,
             "imagenet": "/weights/resnet50.pth"}
    cfg = TrainConfig(dataset="regdb", stage="baseline", data_dir="d", logs_dir="l", imagenet="torchvision",
                      resume=True)
    resumed = resumed_config(cfg, saved, frozenset({"imagenet", "resume"}), tmp_path / "checkpoint.pth.tar")
    assert resumed.imagenet == "/weights/resnet50.pth"


def test_overwrite_never_removes_the_stage1_model_it_starts_from(train, tmp_path):
    logs = tmp_path / "s1"
    logs.mkdir()
    (logs / "model_best.pth.tar").write_bytes(b"stage 1")
    status, err, _ = train(logs, "--stage", "rpnr", "--baseline", logs / "model_best.pth.tar", "--overwrite")
    assert status == 1 and "--overwrite would remove" in err and "choose another --logs-dir" in err
    assert (logs / "model_best.pth.tar").read_bytes() == b"stage 1"


def test_logs_folder_under_a_file_is_one_line(train, tmp_path):
    (tmp_path / "file").write_text("x")
    status, err, _ = train(tmp_path / "file" / "logs")
    assert status == 1 and err == f"error: cannot write {tmp_path / 'file'}: a part of the path is a file, not a " \
                                  f"folder: choose another path"


def test_diverging_run_stops_and_saves_nothing(train, tmp_path):
    logs = tmp_path / "logs"
    status, err, _ = train(logs, "--lr", "1e6", "--iters", "3")
    assert status == 1 and err.startswith("error: epoch 1, iteration ") and "the loss is not finite (" in err
    assert "nan" in err and "lower --lr" in err
    assert not (logs / "checkpoint.pth.tar").exists() and not (logs / "model_best.pth.tar").exists()
    assert err[len("error: "):] in (logs / "log.txt").read_text()


def test_non_finite_weights_are_never_loaded(tmp_path):
    model = build_model()
    state = model.state_dict()
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "diverged.pth.tar"
    save_checkpoint({"model": state, "epoch": 3}, path)
    with pytest.raises(CheckpointError, match=r"not finite \(e.g. layer2.0.conv1.weight\)"):
        load_weights(build_model(), path)
    with pytest.raises(TrainingError, match="epoch 4: the model's weights are not finite"):
        model.load_state_dict(state)
        check_finite_weights(model, 4)


def test_resume_keeps_the_saved_settings_and_refuses_other_ones(tmp_path):
    cfg = TrainConfig(dataset="regdb", stage="baseline", data_dir="new/data", logs_dir="logs", lr=1e-3, eps=0.5,
                      amp=False, epochs=80, workers=2, resume=True)
    saved = {**TrainConfig(dataset="regdb", stage="baseline", data_dir="old/data", logs_dir="logs", eps=0.45,
                           epochs=40, workers=8, iters=7).__dict__, "unknown_old_key": 1}
    path = tmp_path / "checkpoint.pth.tar"
    with pytest.raises(UsageError) as info:
        resumed_config(cfg, saved, frozenset({"lr", "eps", "amp", "epochs"}), path)
    message = str(info.value)
    assert "--lr 0.00035 -> 0.001, --eps 0.45 -> 0.5, --no-amp False -> True" in message
    assert "--overwrite" in message and len(message.splitlines()) == 1
    resumed = resumed_config(cfg, saved, frozenset({"epochs", "workers"}), path)
    assert (resumed.lr, resumed.eps, resumed.iters, resumed.amp) == (3.5e-4, 0.45, 7, True)  # the saved values
    assert (resumed.epochs, resumed.workers, resumed.data_dir, resumed.resume) == (80, 2, "new/data", True)


def _run_files(folder, epoch: int, best_epoch: int, held: int | None) -> None:
    args = TrainConfig(dataset="regdb", stage="baseline", data_dir="d", logs_dir=str(folder)).__dict__
    model = {"w": torch.full((2,), float(epoch))}
    best = {"epoch": best_epoch, "rank1": 10.0, "mAP": 5.0}
    save_checkpoint({"model": model, "epoch": epoch, "best": best, "args": args}, folder / "checkpoint.pth.tar")
    if held is not None:
        save_checkpoint({"model": {"w": torch.zeros(2)}, "epoch": held}, folder / "model_best.pth.tar")


@pytest.mark.parametrize("held", [1, None])
def test_model_best_is_rewritten_after_a_kill_between_the_two_writes(tmp_path, held):
    _run_files(tmp_path, epoch=2, best_epoch=2, held=held)
    note = reconcile_best(tmp_path, load_checkpoint(tmp_path / "checkpoint.pth.tar"))
    assert note.startswith("model_best.pth.tar rewritten from checkpoint.pth.tar")
    best = load_checkpoint(tmp_path / "model_best.pth.tar")
    assert best["epoch"] == 2 and best["rank1"] == 10.0 and torch.equal(best["model"]["w"], torch.full((2,), 2.0))
    assert best["dataset"] == "regdb" and best["stage"] == "baseline"
    assert reconcile_best(tmp_path, load_checkpoint(tmp_path / "checkpoint.pth.tar")) is None


def test_model_best_that_disagrees_otherwise_is_one_line(tmp_path):
    _run_files(tmp_path, epoch=3, best_epoch=1, held=2)
    with pytest.raises(RunFolderError, match="holds epoch 2 but .* names epoch 1 as the best"):
        reconcile_best(tmp_path, load_checkpoint(tmp_path / "checkpoint.pth.tar"))


def test_full_disk_while_saving_keeps_the_previous_checkpoint(train, tmp_path, monkeypatch):
    logs = tmp_path / "logs"
    original, calls = checkpoint_module.atomic_write, []

    def full_disk_on_third_save(path, data):
        calls.append(path)
        if len(calls) == 3:  # epoch 2's checkpoint (epoch 1 wrote checkpoint and model_best)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        original(path, data)

    monkeypatch.setattr(checkpoint_module, "atomic_write", full_disk_on_third_save)
    status, err, _ = train(logs, "--epochs", "2")
    assert status == 1
    assert err == f"error: cannot write {logs / 'checkpoint.pth.tar'}: no space left on the device: free some " \
                  f"space (the last checkpoint is intact)"
    assert load_checkpoint(logs / "checkpoint.pth.tar")["epoch"] == 1
    assert not [p for p in logs.iterdir() if p.name.endswith(".tmp")]


def test_ranks_that_drew_different_batches_stop(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(
        "import os, torch.distributed as dist\n"
        "from rpnr.engine.distributed import DistributedError, ProcessGroup\n"
        "dist.init_process_group('gloo')\n"
        "group = ProcessGroup(rank=dist.get_rank(), world_size=dist.get_world_size(), joined=True)\n"
        "group.check_same(7, 'epoch 1: same batches')\n"
        "try:\n"
        "    group.check_same(7 + dist.get_rank(), 'epoch 2: the processes drew different batches')\n"
        "except DistributedError as exc:\n"
        "    print(f'rank {dist.get_rank()}: {exc}')\n"
        "dist.destroy_process_group()\n")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    for rank in (0, 1):
        assert f"rank {rank}: epoch 2: the processes drew different batches (rank 1 differs from rank 0)" in done.stdout


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def test_a_really_full_disk_is_one_line_and_leaves_no_temporary_file(train, tmp_path):
    """On a small tmpfs (where this machine lets the tests mount one): epoch 1's checkpoint (283 MB) fits,
    model_best does not."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "330M"):
        pytest.skip("mounting a tmpfs needs privileges this machine does not give")
    try:
        status, err, _ = train(disk / "logs")
        assert status == 1
        assert err == f"error: cannot write {disk / 'logs' / 'model_best.pth.tar'}: no space left on the device: " \
                      f"free some space (the last checkpoint is intact)"
        assert load_checkpoint(disk / "logs" / "checkpoint.pth.tar")["epoch"] == 1
        assert not [p for p in (disk / "logs").iterdir() if p.name.endswith(".tmp")]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_stage2_refuses_a_stage1_model_of_another_dataset_or_trial(train, tmp_path):
    for name, dataset, trial, stage, message in (
            ("sysu.pth", "sysu", 1, "baseline", "was trained on sysu, not regdb"),
            ("trial2.pth", "regdb", 2, "baseline", "was trained on RegDB trial 2, not trial 1"),
            ("s2.pth", "regdb", 1, "rpnr", "s2.pth is a stage-2 (rpnr) model; stage 2 starts from a stage-1 model: "
                                           "pass stage 1's model_best.pth.tar (train.py --stage baseline)")):
        save_checkpoint({"model": {}, "dataset": dataset, "stage": stage, "args": {"trial": trial, "stage": stage}},
                        tmp_path / name)
        status, err, _ = train(tmp_path / "s2", "--stage", "rpnr", "--baseline", tmp_path / name)
        assert status == 1 and message in err, err
        assert not (tmp_path / "s2").exists()


def test_logs_folder_may_not_be_the_prepared_data(train, tiny_regdb):
    before = _snapshot(tiny_regdb)
    status, err, _ = train(tiny_regdb)
    assert status == 1 and err == f"error: --logs-dir {tiny_regdb} is a prepared data folder; choose another " \
                                  f"folder for the run's outputs"
    assert _snapshot(tiny_regdb) == before and not (tiny_regdb / ".lock").exists()


def test_sigterm_ends_like_ctrl_c(tiny_regdb, tmp_path):
    logs = tmp_path / "logs"
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *SMALL, "--data-dir", str(tiny_regdb),
                             "--logs-dir", str(logs)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"})
    deadline = time.monotonic() + 300
    while not (logs / "run.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.terminate()
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "interrupted; no checkpoint was written yet (start again with --overwrite)"
    assert "Traceback" not in err


def test_check_with_torchruns_world_size_sees_a_run_of_that_many_processes(train, tmp_path, monkeypatch):
    """The scripts run ``WORLD_SIZE=N python train.py ... --check`` before torchrun: the check judges the run as N
    processes would (here: resuming a checkpoint that 2 processes wrote)."""
    logs = tmp_path / "logs"
    status, err, _ = train(logs)
    assert status == 0, err
    ckpt = load_checkpoint(logs / "checkpoint.pth.tar")
    save_checkpoint({**ckpt, "world_size": 2, "epoch": 1}, logs / "checkpoint.pth.tar")
    status, err, _ = train(logs, "--resume", "--epochs", "2", "--check")
    assert status == 1 and "was written by a run of 2 process(es)" in err
    monkeypatch.setenv("WORLD_SIZE", "2")
    status, err, out = train(logs, "--resume", "--epochs", "2", "--check")
    assert status == 0, err
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"check passed: regdb baseline resumes {logs / 'checkpoint.pth.tar'} after epoch 1;")
