"""Checkpoint I/O: atomic writes and loading that never runs pickled code."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, unsafe or of the wrong layout."""


def _safe_globals() -> list:
    """Extra types that official release checkpoints contain (numpy scalars in 'best_mAP')."""
    allowed: list = [np.dtype, np.ndarray]
    core = getattr(np, "_core", None) or getattr(np, "core", None)
    multiarray = getattr(core, "multiarray", None)
    for name in ("scalar", "_reconstruct"):
        fn = getattr(multiarray, name, None)
        if fn is not None:
            allowed.append(fn)
    for scalar in (np.float64, np.float32, np.int64, np.int32, np.bool_):
        allowed.append(scalar)
        allowed.append(type(np.dtype(scalar)))
    return allowed


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``torch.load(weights_only=True)``.

    Only tensors, containers, numbers, strings and a few numpy scalar types are
    accepted; a file that would unpickle any other object (and so could run code)
    raises :class:`CheckpointError` without running it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every unpickling failure is reported the same way
        msg = str(exc).strip().splitlines()
        reason = next((line for line in msg if "Unsupported global" in line), msg[0] if msg else repr(exc))
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain weights checkpoint ({reason.strip()})"
        ) from None
    if isinstance(obj, Mapping):
        return dict(obj)
    raise CheckpointError(f"{path} does not hold a dictionary (got {type(obj).__name__})")


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` atomically: temporary file in the same folder, fsync, rename.

    A process killed at any moment leaves either the previous file or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
