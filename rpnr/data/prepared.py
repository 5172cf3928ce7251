"""Prepared folders (DESIGN.md sections 1, 10): their specification, read back against the manifest."""

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rpnr.common.errors import DamagedManifestError, PreparedDataError
from rpnr.common.files import MANIFEST, sha256_file

# 2: the manifest records the SHA-256 of every array but the images; 1 (still read, with a note): no checksums
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_NOTED: set[str] = set()  # format-1 folders whose note was printed in this process


@dataclass
class ImageSet:
    """One split of one modality."""

    images: np.ndarray  # uint8 [N, H, W, 3] (memory-mapped when it is a whole stored set)
    pids: np.ndarray  # int64 [N] identity labels (ground truth: diagnostics and evaluation only)
    cams: np.ndarray  # int64 [N] camera ids
    paths: np.ndarray  # str [N] source paths relative to the raw root

    def __len__(self) -> int:
        return len(self.pids)

    def subset(self, index: np.ndarray, pids: np.ndarray | None = None) -> "ImageSet":
        """The rows ``index`` (images read into memory); ``pids`` replaces the identity labels."""
        index = np.asarray(index, dtype=np.int64)
        return ImageSet(np.ascontiguousarray(self.images[index]),
                        np.asarray(self.pids[index] if pids is None else pids, dtype=np.int64),
                        np.asarray(self.cams[index], dtype=np.int64), self.paths[index])


@dataclass(frozen=True)
class Side:
    """Rows of a prepared image set: one side of a test setting, or one modality's training images."""

    set: str  # prepared image set, e.g. "query"
    modal: str  # the stem its images go through: "visible" | "infrared"
    index: str | None = None  # index array of the rows of trial {trial}; None: every row of the set
    labels: str | None = None  # identity labels of trial {trial}; None: the set's own pids

    def arrays(self, trial: int) -> tuple[str | None, str | None]:
        return tuple(None if name is None else name.format(trial=trial) for name in (self.index, self.labels))


@dataclass(frozen=True)
class Setting:
    """A test setting: queries against a gallery, scored by ``metric(distmat, q_pids, g_pids, q_cams, g_cams) ->
    (cmc, mAP, mINP)``; ``ignored(q_pids, q_cams, g_pids, g_cams) -> bool``: the gallery images it skips."""

    name: str  # key in results, e.g. "all", "visible_to_thermal"
    title: str  # e.g. "SYSU-MM01 all-search"
    label: str  # in result lines, e.g. "(all-search)", "Visible to Thermal"
    query: Side
    gallery: Side
    metric: Callable
    ignored: Callable | None = None
    about: str = ""  # what a variant computes (test.py's help)


@dataclass
class SetSpec:
    """An image set to write: raw files (relative to the raw root) and how to resize them."""

    name: str
    paths: list[str]
    pids: np.ndarray
    cams: np.ndarray
    resample: str  # "bicubic" (training) or "lanczos" (query/gallery/test)


@dataclass
class PreparePlan:
    """Everything a prepared folder will hold, computed from a raw dataset before any image is read."""

    dataset: str
    root: str
    sets: list[SetSpec]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    views: list[tuple[str, str, np.ndarray, np.ndarray]] = field(default_factory=list)  # (split, modality, pids, cams)
    info: dict = field(default_factory=dict)
    figures: dict[str, list[int]] = field(default_factory=dict)  # figure -> values counted (rpnr.data.published)


def small_arrays(sets, arrays) -> list[str]:
    """The files the manifest's checksums cover: each set's pids, cams and paths, and the index arrays."""
    return [f"{name}_{part}.npy" for name in sets for part in ("pids", "cams", "paths")] + \
        [f"{name}.npy" for name in sorted(arrays)]


def _again(root: str | os.PathLike, script: str) -> str:
    return f"prepare the data again ({script} --data-dir <raw dataset> --output-dir {root} --overwrite)"


def _json_problem(text: str, exc: ValueError) -> str:
    body = text.strip()
    if not body:
        return "empty"
    if body[0] in "{[" and body[-1] != {"{": "}", "[": "]"}[body[0]]:  # an object or list that never closes
        return "truncated: the JSON text ends early"
    return f"not valid JSON: {' '.join(str(exc).split())}"


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _file_name(name) -> bool:
    return isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def _manifest_problem(manifest) -> str:
    """What makes parsed JSON unreadable as a manifest ("" when nothing)."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    version = manifest.get("format_version")
    if "format_version" not in manifest:
        return "no format_version"
    if version not in READABLE_VERSIONS:
        return f"format_version {version!r}, which this code does not read (it reads {READABLE_VERSIONS})"
    if not isinstance(manifest.get("dataset"), str):
        return "no dataset name"
    bad = next((key for key in ("height", "width") if not _count(manifest.get(key)) or manifest[key] <= 0), None)
    if bad:
        return f"no valid {bad}"
    sets, arrays = manifest.get("sets"), manifest.get("arrays")
    if not isinstance(sets, dict) or not sets:
        return "no sets"
    for name, info in sets.items():
        count = info.get("count") if isinstance(info, dict) else None
        if not _count(count) or count < 0 or not _file_name(name):
            return f"set {name!r} has no valid count"
    if not isinstance(arrays, list) or not all(_file_name(a) for a in arrays):
        return "no valid list of arrays"
    checksums = manifest.get("checksums")
    if version >= 2 and not isinstance(checksums, dict):
        return "no checksums"
    for name in small_arrays(sets, arrays) if version >= 2 else []:
        digest = checksums.get(name)
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            return f"no valid checksum of {name}"
    return ""


def read_manifest(root: str | os.PathLike, script: str = "prepare_<dataset>.py") -> dict:
    """The manifest of a prepared folder; a damaged one is :class:`DamagedManifestError` naming ``script``."""
    path = Path(root) / MANIFEST
    if not Path(root).is_dir():
        raise PreparedDataError(f"prepared data folder not found: {root}")
    if not path.is_file():
        raise PreparedDataError(f"{root} is not a prepared dataset (no {MANIFEST}; run {script} first)")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise PreparedDataError(f"cannot read {path}: {' '.join((exc.strerror or str(exc)).split())}") from None
    except UnicodeDecodeError:
        raise DamagedManifestError(f"{path} is damaged (not UTF-8 text): {_again(root, script)}") from None
    try:
        manifest = json.loads(text)
        problem = _manifest_problem(manifest)
    except ValueError as exc:
        manifest, problem = None, _json_problem(text, exc)
    if problem:
        raise DamagedManifestError(f"{path} is damaged ({problem}): {_again(root, script)}")
    return manifest


def check_prepared(root: str | os.PathLike, dataset: str, height: int | None = None,
                   width: int | None = None) -> dict:
    """The manifest of ``root``, checked to be a complete prepared ``dataset`` of that size (DESIGN.md section 10)."""
    script = f"prepare_{dataset}.py"
    manifest = read_manifest(root, script)
    if manifest["dataset"] != dataset:
        raise PreparedDataError(f"{root} holds prepared {manifest['dataset']} data, not {dataset} (run {script})")
    size = (manifest["height"], manifest["width"])
    if (height is not None and height != size[0]) or (width is not None and width != size[1]):
        raise PreparedDataError(f"{root} was prepared at {size[0]}x{size[1]} (HxW), not {height or size[0]}x"
                                f"{width or size[1]}; prepare it again with --height/--width or pass the "
                                f"matching size")
    checksums = manifest.get("checksums", {})
    for name, shape, kind in _expected_arrays(manifest):
        path = Path(root) / name
        _check_array(path, shape, kind)
        if name in checksums and sha256_file(path) != checksums[name]:
            raise PreparedDataError(f"{path} does not match the checksum {MANIFEST} recorded when it was prepared "
                                    f"(replaced or damaged?); {_again(root, script)}")
    if manifest["format_version"] < 2 and str(Path(root).resolve()) not in _NOTED:
        _NOTED.add(str(Path(root).resolve()))
        print(f"note: {root} was prepared before checksums were recorded ({MANIFEST} format "
              f"{manifest['format_version']}): its label and index arrays are not verified; to have them verified, "
              f"{_again(root, script)}", file=sys.stderr)
    return manifest


def _expected_arrays(manifest: dict) -> list[tuple[str, tuple, str]]:
    size, expected = (manifest["height"], manifest["width"], 3), []
    for name, info in manifest["sets"].items():
        n = info["count"]
        expected += [(f"{name}_images.npy", (n, *size), "u1"), (f"{name}_pids.npy", (n,), "i8"),
                     (f"{name}_cams.npy", (n,), "i8"), (f"{name}_paths.npy", (n,), "U")]
    return expected + [(f"{name}.npy", (None,), "i8") for name in manifest["arrays"]]


def _check_array(path: Path, shape: tuple, kind: str) -> None:
    if not path.is_file():
        raise PreparedDataError(f"{path.parent} is incomplete: missing {path.name} (prepare it again)")
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            found, _, dtype = read(fh)
            data_bytes = path.stat().st_size - fh.tell()
    except (OSError, ValueError) as exc:
        raise PreparedDataError(f"cannot read {path}: {' '.join(str(exc).split())} (prepare the data again)") from None
    dtype_ok = dtype.kind == "U" if kind == "U" else dtype == np.dtype(kind)
    if not dtype_ok or len(found) != len(shape) or any(want not in (None, got) for want, got in zip(shape, found)):
        wanted = "x".join("N" if n is None else str(n) for n in shape)
        raise PreparedDataError(f"{path} holds {dtype} [{'x'.join(map(str, found))}] but {MANIFEST} says "
                                f"{'str' if kind == 'U' else np.dtype(kind)} [{wanted}] (prepare the data again)")
    if data_bytes < int(np.prod(found)) * dtype.itemsize:
        raise PreparedDataError(f"{path} is truncated ({data_bytes} of {int(np.prod(found)) * dtype.itemsize} "
                                f"data bytes; prepare the data again)")


def load_array(root: str | os.PathLike, name: str, mmap: bool = False) -> np.ndarray:
    """A stored array (e.g. ``gallery_index_all_0``); memory-mapped with ``mmap``."""
    path = Path(root) / f"{name}.npy"
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise PreparedDataError(f"cannot read {path}: {' '.join(str(exc).split())}") from None


def load_set(root: str | os.PathLike, name: str) -> ImageSet:
    """A whole stored image set (images memory-mapped)."""
    return ImageSet(*(load_array(root, f"{name}_{part}", part == "images") for part in ("images", "pids", "cams",
                                                                                         "paths")))


def load_side(root: str | os.PathLike, side: Side, trial: int) -> ImageSet:
    """The images of ``side`` in ``trial``: the whole set, or the rows of its index array, with its labels if any."""
    base = load_set(root, side.set)
    index, labels = side.arrays(trial)
    if index is None:
        return base
    return base.subset(load_array(root, index), pids=None if labels is None else load_array(root, labels))


def check_trial(trials: tuple[int, ...], trial: int, what: str) -> None:
    if trial not in trials:
        raise PreparedDataError(f"{what} trial must be in {trials[0]}..{trials[-1]}, got {trial}")
