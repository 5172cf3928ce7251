"""One logs folder, one run (DESIGN.md section 10): lock, run.json, checkpoint format, resume."""

import dataclasses
import fcntl
import json
import os
import platform
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path

import torch

from rpnr.common.checkpoints import load_checkpoint, save_checkpoint
from rpnr.common.errors import RunFolderError, TrainingError, UsageError
from rpnr.common.files import BEST, CHECKPOINT, RUN_FILES, RUN_JSON, make_folder, write_json
from rpnr.engine.distributed import ProcessGroup
from rpnr.engine.settings import TrainConfig, flag_name, setting_defaults

OUTPUTS = RUN_FILES  # every output of a run; --overwrite removes these and nothing else
# 2: "args" holds every setting of the run; 1 (older) may lack settings added since (e.g. the ablation switches)
FORMAT_VERSION = 2
CURRENT = ("data_dir", "logs_dir", "resume", "overwrite", "device", "check")  # a resumed run takes these as given
STARTED_FROM = ("imagenet", "baseline")  # a resumed run keeps the saved ones: the weights it started from
# settings that change what a run computes: a resumed run must keep them (DESIGN.md section 10)
COMPUTED = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in {
    *CURRENT, *STARTED_FROM, "dataset", "stage", "epochs", "workers", "feature_batch_size", "test_trials",
    "low_memory"})
VERSIONED = ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "POT")


class RunFolder:
    """A run's logs folder, locked (``fcntl.flock`` on ``.lock``) from :meth:`lock` until :meth:`release`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = None

    def lock(self) -> None:
        """Create the folder and take its lock, or a :class:`RunFolderError` naming the other run's pid."""
        make_folder(self.path)
        handle = open(self.path / ".lock", "a+")  # noqa: SIM115 - held open for the run's lifetime
        if not self._try_lock(handle):
            raise self._in_use(handle)
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock = handle

    @staticmethod
    def _try_lock(handle) -> bool:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _in_use(self, handle) -> RunFolderError:
        handle.seek(0)
        pid = handle.read().strip() or "unknown"
        handle.close()
        return RunFolderError(f"logs folder {self.path} is in use by another run (pid {pid}); wait for it to end or "
                              f"choose another --logs-dir")

    def in_use(self) -> bool:
        """Whether a live run holds the lock (probed read-only)."""
        if not (self.path / ".lock").is_file():
            return False
        with open(self.path / ".lock") as handle:
            return not self._try_lock(handle)  # the probe's lock goes with the handle

    def release(self) -> None:
        """Let go of the lock (``.lock`` stays: removing it would race with a run opening it)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def outputs(self) -> list[str]:
        return [name for name in OUTPUTS if (self.path / name).exists()]

    def check_usable(self, resume: bool, overwrite: bool, keep: str | None = None, data: str | None = None) -> None:
        """Every check of the folder, nothing written: not a file nor prepared data nor inside ``data``, not in use, no
        earlier outputs unless ``resume`` or ``overwrite`` (which may not remove ``keep``, stage 2's start)."""
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"--logs-dir {self.path} is a file, not a folder; choose another --logs-dir")
        if (self.path / "manifest.json").is_file():
            raise RunFolderError(f"--logs-dir {self.path} is a prepared data folder; choose another folder for the "
                                 f"run's outputs")
        if data is not None and (Path(data) / "manifest.json").is_file() and \
                Path(data).resolve() in self.path.resolve().parents:
            raise RunFolderError(f"--logs-dir {self.path} lies inside --data-dir {data}, the prepared data the run "
                                 f"reads; choose another folder for the run's outputs")
        if self.in_use():
            with open(self.path / ".lock") as handle:
                raise self._in_use(handle)
        found = self.outputs()
        if resume or not found:
            return
        if not overwrite:
            resumable = CHECKPOINT in found
            raise RunFolderError(
                f"logs folder {self.path} holds the outputs of an earlier run ({', '.join(found)}): " + (
                    "pass --resume to continue it, or --overwrite to start afresh (removes them)" if resumable else
                    "it wrote no checkpoint, so there is nothing to resume; pass --overwrite to start afresh "
                    "(removes them)"))
        if keep is not None and Path(keep).resolve() in {(self.path / name).resolve() for name in found}:
            raise RunFolderError(f"--overwrite would remove {keep}, the stage-1 model this run starts from; "
                                 f"choose another --logs-dir")

    def clear(self) -> None:
        """Remove an earlier run's outputs, only those."""
        for name in self.outputs():
            (self.path / name).unlink()

    def write_run_json(self, record: dict, resumed: bool) -> None:
        """``run.json`` of a fresh run, or ``record`` appended under ``"resumed"``."""
        path = self.path / RUN_JSON
        first = json.loads(path.read_text()) if resumed and path.is_file() else None
        if isinstance(first, dict):
            record = {**first, "resumed": [*first.get("resumed", []), record]}
        write_json(path, record)


def best_state(model_state: dict, best: dict, args: dict) -> dict:
    """The contents of model_best.pth.tar (``best``: the epoch, Rank-1 and mAP)."""
    return {"model": model_state, "epoch": best["epoch"], "rank1": best["rank1"], "mAP": best["mAP"], "args": args,
            "stage": args["stage"], "dataset": args["dataset"]}


def reconcile_best(folder: str | os.PathLike, ckpt: dict, write: bool = True) -> str | None:
    """model_best made to agree with the checkpoint's best epoch after a kill between the two writes: the note
    (``write=False``: only checked); any other disagreement is a :class:`RunFolderError`."""
    best, path = ckpt.get("best"), Path(folder) / BEST
    held = int(load_checkpoint(path)["epoch"]) if best is not None and path.is_file() else None
    if best is None or held == best["epoch"]:  # no best: written before the best epoch was recorded
        return None
    if best["epoch"] == ckpt["epoch"] and (held is None or held < best["epoch"]):
        if write:
            save_checkpoint(best_state(ckpt["model"], best, ckpt["args"]), path)
        return f"{BEST} rewritten from {CHECKPOINT}: the run stopped between the two writes of epoch {best['epoch']}"
    holds = "is missing" if held is None else f"holds epoch {held}"
    raise RunFolderError(f"{path} {holds} but {Path(folder) / CHECKPOINT} names epoch {best['epoch']} as the best; "
                         f"restore the run's files or start afresh with --overwrite")


def _git(code_root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(code_root), *args], capture_output=True, text=True, timeout=30,
                          check=True).stdout.strip()


def git_state(code_root: Path) -> dict | None:
    """``{"commit", "dirty"}`` of the checkout at ``code_root``; None outside one."""
    try:
        if Path(_git(code_root, "rev-parse", "--show-toplevel")).resolve() != code_root.resolve():
            return None
        return {"commit": _git(code_root, "rev-parse", "HEAD"),
                "dirty": bool(_git(code_root, "status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(command: list[str], args: dict, device: torch.device, group: ProcessGroup) -> dict:
    """What produced a run (run.json): command, settings, code, versions, devices, host, start time."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "command": list(command), "args": args, "git": git_state(Path(__file__).resolve().parents[2]),
        "versions": {"python": platform.python_version(), **{p: metadata.version(p) for p in VERSIONED},
                     "cuda": torch.version.cuda, "cudnn": cudnn},
        "device": {"type": device.type, "names": group.gather_objects(name), "world_size": group.world_size,
                   "count": torch.cuda.device_count() if device.type == "cuda" else 1},
        "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def check_resumable(ckpt: dict, path: Path, cfg: TrainConfig, world_size: int, data_id: str) -> None:
    """Refuse a checkpoint of another kind, dataset, stage, process count or prepared data."""
    if ckpt.get("format_version") not in (1, FORMAT_VERSION) or "optimizer" not in ckpt:
        raise TrainingError(f"{path} is not a training checkpoint of this project (cannot resume from it)")
    if (ckpt.get("stage"), ckpt.get("dataset")) != (cfg.stage, cfg.dataset):
        raise TrainingError(f"{path} is a {ckpt.get('dataset')} {ckpt.get('stage')} checkpoint; "
                            f"cannot resume it as {cfg.dataset} {cfg.stage}")
    saved_world = int(ckpt.get("world_size", 1))
    if saved_world != world_size:
        raise TrainingError(f"{path} was written by a run of {saved_world} process(es); resume it with the same "
                            f"number (torchrun --nproc_per_node {saved_world}), not {world_size}")
    if ckpt.get("data_id", data_id) != data_id:
        raise TrainingError(f"{path} was trained on other prepared data than --data-dir {cfg.data_dir} "
                            f"(--data-dir {ckpt.get('args', {}).get('data_dir')} -> {cfg.data_dir}); pass the "
                            f"folder it was trained on")
    if int(ckpt["epoch"]) > cfg.epochs:
        raise TrainingError(f"{path} already holds {ckpt['epoch']} epochs, more than --epochs {cfg.epochs}")


def saved_settings(ckpt: dict) -> dict:
    """A checkpoint's settings; one it does not record (added since) counts as its default."""
    return {**setting_defaults(), **ckpt.get("args", {})}


def resumed_config(cfg: TrainConfig, saved: dict, given: frozenset[str], path: Path) -> TrainConfig:
    """A resumed run's settings: the saved ones but :data:`CURRENT` and the flags given; a given setting of
    :data:`COMPUTED` that differs is a :class:`UsageError` listing ``--flag saved -> given``."""
    show = {"amp": lambda v: not v}  # --no-amp: shown as the flag's value
    differ = [f"{flag_name(k)} {show.get(k, str)(saved[k])} -> {show.get(k, str)(getattr(cfg, k))}"
              for k in COMPUTED if k in given and k in saved and saved[k] != getattr(cfg, k)]
    if differ:
        raise UsageError(f"{path} was trained with other settings, so resuming would compute something else: "
                         f"{', '.join(differ)} (leave these flags out to resume with the saved values, or start "
                         f"afresh with --overwrite)")
    known = {f.name for f in dataclasses.fields(TrainConfig)} - set(CURRENT) - (set(given) - set(STARTED_FROM))
    return dataclasses.replace(cfg, **{k: v for k, v in saved.items() if k in known})
