"""Writing outputs safely: checked before the work, written atomically (DESIGN.md sections 10 and 14)."""

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from rpnr.common.errors import RPNRError, UsageError

# a training run's files (DESIGN.md section 10); no command writes over them, --overwrite removes only these
CHECKPOINT, BEST, RUN_JSON, TEST_JSON = "checkpoint.pth.tar", "model_best.pth.tar", "run.json", "test.json"
RUN_FILES = (CHECKPOINT, BEST, "metrics.json", "log.txt", TEST_JSON, RUN_JSON, "curves.png", "ranks.png")
_RUN_MARKERS = (RUN_JSON, CHECKPOINT, BEST, "metrics.json")  # a folder holding one of these is a run's
MANIFEST = "manifest.json"  # a folder holding it is a prepared dataset

_ADVICE = {
    errno.ENOSPC: "no space left on the device: free some space", errno.EDQUOT: "disk quota exceeded: free some space",
    errno.EACCES: "permission denied: choose a folder you may write to", errno.ENOENT: "no such file or folder",
    errno.EPERM: "operation not permitted: choose a folder you may write to",
    errno.EROFS: "read-only file system: choose a writable folder", errno.EISDIR: "the path is a folder, not a file",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path"}


def os_error_line(exc: OSError, action: str = "write") -> str:
    """One line for an operating-system error: ``cannot <action> <path>: <reason and advice>``."""
    path = exc.filename if exc.filename is not None else "a file"
    reason = _ADVICE.get(exc.errno) or " ".join((exc.strerror or str(exc)).split()) or type(exc).__name__
    return f"cannot {action} {path}: {reason}"


def error_line(exc: Exception) -> str:
    """The one line a command prints for an error it stops on (whitespace folded)."""
    return os_error_line(exc) if isinstance(exc, OSError) and not isinstance(exc, RPNRError) else \
        " ".join(str(exc).split())


def is_run_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a training run's logs folder."""
    return any((Path(folder) / name).is_file() for name in _RUN_MARKERS)


def check_outputs(files: Iterable[tuple[str, str | os.PathLike]] = (),
                  folders: Iterable[tuple[str, str | os.PathLike]] = (),
                  inputs: Iterable[tuple[str, str | os.PathLike]] = ()) -> None:
    """The output rule (DESIGN.md section 14), before any work: a :class:`UsageError` naming the output as given."""
    inputs = list(inputs)
    read = {os.path.realpath(path): label for label, path in inputs if os.path.isfile(path)}
    data = [(label, os.path.realpath(path)) for label, path in inputs if os.path.isfile(Path(path) / MANIFEST)]
    seen: dict[str, str] = {}
    for label, path, folder in [(*o, True) for o in folders] + [(*o, False) for o in files]:
        target, real = Path(path), os.path.realpath(path)
        if folder and target.exists() and not target.is_dir():
            raise UsageError(f"{label} is a file; give a folder")
        if not folder and target.is_dir():
            raise UsageError(f"{label} is a folder; give a file name")
        if real in read:
            raise UsageError(f"{label} is {read[real]}, which this command reads; write elsewhere")
        if folder and is_run_folder(target):
            raise UsageError(f"{label} is a training run's logs folder; choose another folder")
        if not folder and target.name in RUN_FILES and is_run_folder(target.parent):
            raise UsageError(f"{label} is the training run's own {target.name}; write elsewhere")
        if inside := next((what for what, root in data if real == root or real.startswith(root + os.sep)), None):
            raise UsageError(f"{label} lies inside {inside}, a prepared data folder this command reads; write "
                             f"elsewhere")
        if real in seen:
            raise UsageError(f"{seen[real]} and {label} are the same file; give each its own")
        seen[real] = label
        _check_writable(label, target if folder else target.parent)


def _check_writable(label: str, folder: Path) -> None:
    where = next(p for p in (folder, *folder.parents) if p.exists())  # "." and "/" exist
    if not where.is_dir():
        raise UsageError(f"cannot write {label}: {where} is a file, not a folder")
    if not os.access(where, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {label}: no permission to write in {where} (or it is read-only)")
    try:  # what access() does not tell (root, special file systems): create a file and remove it
        fd, probe = tempfile.mkstemp(prefix=".rpnr-probe-", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"cannot write {label}: files cannot be created in {where} "
                         f"({_ADVICE.get(exc.errno) or exc.strerror})") from None


def make_folder(path: str | os.PathLike) -> Path:
    """``mkdir -p path``; a regular file in the way is ``NotADirectoryError`` naming that file."""
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(part))
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path: str | os.PathLike, data: bytes | memoryview | str) -> None:
    """Write ``data`` to ``path`` atomically, its folder created when missing (DESIGN.md section 10)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    umask, tmp = current_umask(), None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~umask)
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and (exc.filename is None or exc.filename == tmp or tmp is None):
            exc.filename = str(path)  # name the file being written, not its temporary
        raise


def current_umask() -> int:
    """The process's umask, from ``/proc/self/status`` where it can be (setting it races with other threads)."""
    with contextlib.suppress(OSError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make renames inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike, obj) -> None:
    """``obj`` as indented JSON, written atomically."""
    atomic_write(path, json.dumps(obj, indent=1) + "\n")


def remove_temporaries(folder: str | os.PathLike, names) -> None:
    """Remove the temporary files that a killed :func:`atomic_write` of ``names`` may have left in ``folder``."""
    for name in names:
        for tmp in Path(folder).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def human_size(n: float) -> str:
    """Bytes in GB, MB or kB (decimal), e.g. ``1.2 GB``."""
    for unit, size in (("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{max(n, 0) / 1e3:.1f} kB"
