"""Checkpoint I/O: atomic writes and loading that never runs pickled code."""

import io
import os
import pickle
import pickletools
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from rpnr.common.errors import CheckpointError, DamagedCheckpointError, UnsafeCheckpointError
from rpnr.common.files import BEST, atomic_write

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a legacy (non-zip) torch.save stream
_LEGACY_PICKLES = 5  # before the storage bytes: magic, protocol, system info, object, storage keys
_ZIP_MAGIC = b"PK\x03\x04"


def _safe_globals() -> list:
    """Extra types that official release checkpoints hold (numpy scalars in 'best_mAP')."""
    allowed: list = [np.dtype, np.ndarray]
    core = getattr(np, "_core", None) or getattr(np, "core", None)
    multiarray = getattr(core, "multiarray", None)
    allowed += [fn for fn in (getattr(multiarray, name, None) for name in ("scalar", "_reconstruct")) if fn is not None]
    for scalar in (np.float64, np.float32, np.int64, np.int32, np.bool_):
        allowed += [scalar, type(np.dtype(scalar))]
    return allowed


def _pickle_ops(stream: io.BytesIO) -> list:
    try:
        return list(pickletools.genops(stream))
    except Exception:  # noqa: BLE001 - any parse failure means a broken pickle
        return []


def _zip_problem(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()  # reads every member and checks its CRC
            pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            data = archive.read(pickles[0]) if pickles and bad_member is None else b""
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        return "the zip archive is truncated or corrupted"
    if bad_member is not None:
        return f"the zip archive is corrupted (member {bad_member} fails its checksum)"
    if not pickles:
        return "a zip archive without data.pkl, not a PyTorch checkpoint"
    if not _pickle_ops(io.BytesIO(data)):
        return f"its {pickles[0]} is truncated or corrupted"
    return ""


def _structure_problem(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(len(_ZIP_MAGIC))
    if not head:
        return "the file is empty"
    if head == _ZIP_MAGIC:
        return _zip_problem(path)
    if len(head) < len(_ZIP_MAGIC) and _ZIP_MAGIC.startswith(head):
        return "the file is truncated (it ends inside the zip header)"
    data = path.read_bytes()  # a legacy (non-zip) torch.save stream
    stream = io.BytesIO(data)
    if not any(arg == _LEGACY_MAGIC for _, arg, _ in _pickle_ops(stream)):
        if any(pickle.dumps(_LEGACY_MAGIC, protocol=p).startswith(data) for p in range(2, pickle.HIGHEST_PROTOCOL + 1)):
            return "the file is truncated (it ends inside the torch.save header)"
        return "not a PyTorch checkpoint file (neither a zip archive nor a torch.save stream)"
    for _ in range(_LEGACY_PICKLES - 1):
        if not _pickle_ops(stream):
            return "the torch.save stream is truncated or corrupted"
    return ""


def _refusal(path: Path, exc: Exception) -> CheckpointError:
    """One-line error for a file that ``torch.load`` rejected (never PyTorch's advice of ``weights_only=False``)."""
    try:
        problem = _structure_problem(path)
    except OSError as err:
        return CheckpointError(f"cannot read checkpoint {path}: {err.strerror or err}")
    if problem:
        return DamagedCheckpointError(f"damaged checkpoint {path}: {problem}")
    if isinstance(exc, pickle.UnpicklingError):  # a complete pickle that the restricted unpickler refused
        found = re.search(r"GLOBAL ([\w.]+) was not an allowed global", str(exc))
        what = f"references {found.group(1)}, which is" if found else "holds an object that is"
        return UnsafeCheckpointError(f"unsafe checkpoint {path}: it {what} not a tensor, number, string or container "
                                     f"type; unpickling it could run code, so it is not loaded")
    reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    reason = reason.split(". ")[0].rstrip(".")  # torch's first sentence; the rest is generic advice
    if "weights_only" in reason:
        reason = type(exc).__name__
    return DamagedCheckpointError(f"damaged checkpoint {path}: its data cannot be read ({reason})")


def missing_checkpoint_line(path: str | os.PathLike) -> str:
    """Why ``path``, not a file, cannot be loaded: not found, or a folder (naming the model_best.pth.tar inside)."""
    if not os.path.isdir(path):
        return f"checkpoint not found: {path}"
    inside = os.path.join(path, BEST)
    if os.path.isfile(inside):
        return f"{path} is a folder, not a checkpoint file; pass {inside}"
    return f"{path} is a folder, not a checkpoint file, and {inside} is not there; pass the checkpoint file itself"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint's dictionary, loaded with ``torch.load(weights_only=True)`` (and a few numpy scalar types); a file
    that could run code raises :class:`UnsafeCheckpointError` unrun, a damaged one :class:`DamagedCheckpointError`."""
    if not os.path.isfile(path):
        raise CheckpointError(missing_checkpoint_line(path))
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for broken files; all are diagnosed here
        raise _refusal(path, exc) from None
    if isinstance(obj, Mapping):
        return dict(obj)
    raise CheckpointError(f"{path} does not hold a dictionary (got {type(obj).__name__})")


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` atomically, serialised in memory first (a full disk: ENOSPC, not PyTorch's zip-writer error)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, buffer.getbuffer())
