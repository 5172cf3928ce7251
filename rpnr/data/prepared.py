"""Prepared datasets: uint8 image arrays at a fixed size, with identity, camera and source path; the files of a
prepared folder: DESIGN.md section 1, "Preparation". Which sets and index arrays a dataset writes is its plan's
(``rpnr/data/<name>.py``); the registry entry's sides (:class:`rpnr.datasets.Side`) name the rows each trial
reads (:func:`load_side`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rpnr.data.published import compare_published
from rpnr.data.raw_images import write_image_array
from rpnr.datasets import Side, get_dataset
from rpnr.errors import DamagedManifestError, PreparedDataError
from rpnr.files import fsync_folder, human_size, make_folder, os_error_line, sha256_file, write_json

# 2: the manifest records the SHA-256 of every array but the images ("checksums"); 1 (still read, with a note):
# no checksums
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
_NOTED: set[str] = set()  # prepared folders of format 1 whose note was printed in this process


@dataclass
class ImageSet:
    """One split of one modality."""

    images: np.ndarray  # uint8 [N, H, W, 3] (memory-mapped when it is a whole stored set)
    pids: np.ndarray  # int64 [N] identity labels (ground truth, diagnostics and evaluation only)
    cams: np.ndarray  # int64 [N] camera ids
    paths: np.ndarray  # str [N] source paths relative to the raw root

    def __len__(self) -> int:
        return len(self.pids)

    def subset(self, index: np.ndarray, pids: np.ndarray | None = None) -> ImageSet:
        """The rows ``index`` (images read into memory); ``pids`` replaces the identity labels."""
        index = np.asarray(index, dtype=np.int64)
        return ImageSet(images=np.ascontiguousarray(self.images[index]),
                        pids=np.asarray(self.pids[index] if pids is None else pids, dtype=np.int64),
                        cams=np.asarray(self.cams[index], dtype=np.int64), paths=self.paths[index])


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
    """Everything a prepared folder holds, computed from a raw dataset before any image is read."""

    dataset: str
    root: str
    sets: list[SetSpec]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    # rows of the statistics table: (split, modality, pids, cams)
    views: list[tuple[str, str, np.ndarray, np.ndarray]] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    # figure name -> every value observed (per trial / per identity), named as in rpnr.data.published
    figures: dict[str, list[int]] = field(default_factory=dict)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def _recover_killed_runs(out: Path) -> None:
    """Remove the ``OUT.tmp-<pid>`` and ``OUT.old-<pid>`` folders of killed prepare runs; an ``OUT.old-<pid>``
    goes back to ``OUT`` when a kill between the two renames left no ``OUT`` (DESIGN.md section 10)."""
    for leftover in sorted(out.parent.glob(f"{out.name}.tmp-*")) + sorted(out.parent.glob(f"{out.name}.old-*")):
        suffix = leftover.name.rsplit("-", 1)[-1]
        if not suffix.isdigit() or int(suffix) == os.getpid() or _pid_alive(int(suffix)):
            continue
        if leftover.name.startswith(f"{out.name}.old-") and not out.exists():
            os.replace(leftover, out)
        else:
            shutil.rmtree(leftover, ignore_errors=True)


def _check_output_dir(out: Path, raw: Path, overwrite: bool) -> None:
    """Refuse an output folder that is the raw folder or holds it, a non-empty folder that this project
    did not prepare (even with ``overwrite``), and a prepared one without ``overwrite`` (DESIGN.md section 10)."""
    if out.resolve() == raw.resolve() or out.resolve() in raw.resolve().parents:
        raise PreparedDataError(f"--output-dir {out} is the raw dataset folder or holds it ({raw}); nothing was "
                                f"touched: choose an output folder outside the raw dataset")
    if out.exists() and not out.is_dir():
        raise PreparedDataError(f"output path {out} exists and is not a folder; choose another --output-dir")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not _prepared_here(out):
        raise PreparedDataError(f"output folder {out} is not empty and was not prepared by this project (no "
                                f"{MANIFEST} of ours); it is left alone: choose a new or empty --output-dir")
    if not overwrite:
        raise PreparedDataError(f"output folder {out} already holds prepared data (pass --overwrite to replace it)")


def _prepared_here(out: Path) -> bool:
    """Whether ``out`` was prepared by this project: its manifest.json records a format version and a dataset,
    or it is damaged (what :func:`check_prepared` tells to prepare again with ``--overwrite``) in a folder that
    holds nothing but that manifest and the ``.npy`` arrays prepare writes, image arrays among them."""
    path = out / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        manifest = None
    if isinstance(manifest, dict) and isinstance(manifest.get("format_version"), int) and \
            isinstance(manifest.get("dataset"), str):
        return True
    if not path.is_file():
        return False
    entries = list(out.iterdir())
    return all(p.name == MANIFEST or (p.suffix == ".npy" and p.is_file() and not p.is_symlink()) for p in entries) \
        and any(p.name.endswith("_images.npy") for p in entries)


def _check_free_space(plan: PreparePlan, folder: Path, height: int, width: int) -> None:
    """Refuse to start when the arrays (their size is known up front) do not fit on the file system."""
    images = sum(len(spec.paths) for spec in plan.sets)
    need = images * (height * width * 3 + 3 * 8 + 256) + sum(8 * len(a) for a in plan.arrays.values()) + (1 << 20)
    free = shutil.disk_usage(folder).free
    if need > free:
        raise PreparedDataError(f"not enough space for the prepared arrays: they need about {human_size(need)}, "
                                f"{human_size(free)} free on {folder}")


def write_prepared(plan: PreparePlan, output_dir: str | os.PathLike, height: int, width: int,
                   overwrite: bool = False, workers: int | None = None) -> dict:
    """Read, resize and write every set of ``plan`` into ``output_dir``; returns the manifest. Refusals
    (:class:`PreparedDataError`) and the ``OUT.tmp-<pid>`` folder renamed at the end: DESIGN.md section 10."""
    if height <= 0 or width <= 0:
        raise PreparedDataError(f"image size must be positive, got {height}x{width}")
    out = Path(output_dir).absolute()
    _check_output_dir(out, Path(plan.root), overwrite)
    make_folder(out.parent)
    _recover_killed_runs(out)
    _check_free_space(plan, out.parent, height, width)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        manifest = _write_arrays(plan, tmp, height, width, workers)
        if out.exists():
            old = out.parent / f"{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        fsync_folder(out.parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(exc, OSError):
            raise
        exc.filename = exc.filename or str(out)
        raise PreparedDataError(f"{os_error_line(exc)} (nothing was written)") from None
    return manifest


def _write_arrays(plan: PreparePlan, folder: Path, height: int, width: int, workers: int | None) -> dict:
    """Every set's images, pids, cams and paths, the index arrays and the manifest, into ``folder``."""
    sets_info = {}
    for spec in plan.sets:
        write_image_array(folder / f"{spec.name}_images.npy", [os.path.join(plan.root, p) for p in spec.paths],
                          height, width, spec.resample, desc=f"{spec.name} ({spec.resample})", workers=workers)
        np.save(folder / f"{spec.name}_pids.npy", np.asarray(spec.pids, dtype=np.int64))
        np.save(folder / f"{spec.name}_cams.npy", np.asarray(spec.cams, dtype=np.int64))
        np.save(folder / f"{spec.name}_paths.npy", np.asarray(spec.paths, dtype=str))
        sets_info[spec.name] = {"count": len(spec.paths), "resample": spec.resample}
    for name, arr in plan.arrays.items():
        np.save(folder / f"{name}.npy", np.asarray(arr, dtype=np.int64))
    checksums = {name: sha256_file(folder / name) for name in _small_arrays(sets_info, plan.arrays)}
    manifest = {"format_version": FORMAT_VERSION, "dataset": plan.dataset, "height": int(height), "width": int(width),
                "source": str(Path(plan.root).absolute()), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "sets": sets_info, "arrays": sorted(plan.arrays), "checksums": checksums, "stats": [
                    {"split": split, "modality": modality, "ids": len(np.unique(pids)), "images": len(pids),
                     "cameras": np.unique(cams).tolist()} for split, modality, pids, cams in plan.views],
                "published_check": compare_published(plan.dataset, plan.figures), **plan.info}
    write_json(folder / MANIFEST, manifest)
    return manifest


def format_stats(manifest: dict) -> str:
    """The statistics table (ids, images, cameras per split and modality) of a manifest."""
    rows = [("split", "modality", "ids", "images", "cameras")] + [
        (s["split"], s["modality"], str(s["ids"]), str(s["images"]), ",".join(str(c) for c in s["cameras"]))
        for s in manifest["stats"]]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([f"{manifest['dataset']} prepared at {manifest['height']}x{manifest['width']} (HxW)", *lines])


def _small_arrays(sets, arrays) -> list[str]:
    """The file names of every array but the images: each set's pids, cams and paths, and the index arrays
    (what the manifest's "checksums" cover)."""
    return [f"{name}_{part}.npy" for name in sets for part in ("pids", "cams", "paths")] + \
        [f"{name}.npy" for name in sorted(arrays)]


def _again(root: str | os.PathLike, script: str) -> str:
    """The advice that ends every refusal of a damaged prepared folder."""
    return f"prepare the data again ({script} --data-dir <raw dataset> --output-dir {root} --overwrite)"


def _json_problem(text: str, exc: ValueError) -> str:
    """Why ``text`` (which ``json.loads`` refused with ``exc``) is not a manifest, in a few words."""
    body = text.strip()
    if not body:
        return "empty"
    if body[0] in "{[" and body[-1] != {"{": "}", "[": "]"}[body[0]]:  # an object or list that never closes
        return "truncated: the JSON text ends early"
    return f"not valid JSON: {' '.join(str(exc).split())}"


def _manifest_problem(manifest) -> str:
    """What makes ``manifest`` (parsed JSON) unreadable as a manifest of a readable format ("" when nothing)."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    version = manifest.get("format_version")
    if "format_version" not in manifest:
        return "no format_version"
    if version not in READABLE_VERSIONS:
        return f"format_version {version!r}, which this code does not read (it reads {READABLE_VERSIONS})"
    if not isinstance(manifest.get("dataset"), str):
        return "no dataset name"
    for key in ("height", "width"):
        if not isinstance(manifest.get(key), int) or isinstance(manifest[key], bool) or manifest[key] <= 0:
            return f"no valid {key}"
    sets, arrays = manifest.get("sets"), manifest.get("arrays")
    if not isinstance(sets, dict) or not sets:
        return "no sets"
    for name, info in sets.items():
        count = info.get("count") if isinstance(info, dict) else None
        if not isinstance(count, int) or isinstance(count, bool) or count < 0 or not _file_name(name):
            return f"set {name!r} has no valid count"
    if not isinstance(arrays, list) or not all(isinstance(a, str) and _file_name(a) for a in arrays):
        return "no valid list of arrays"
    if version >= 2:
        checksums = manifest.get("checksums")
        if not isinstance(checksums, dict):
            return "no checksums"
        for name in _small_arrays(sets, arrays):
            digest = checksums.get(name)
            if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                return f"no valid checksum of {name}"
    return ""


def _file_name(name) -> bool:
    return isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def read_manifest(root: str | os.PathLike, script: str = "prepare_<dataset>.py") -> dict:
    """The manifest of a prepared folder (``{"dataset", "height", "width", ...}``); a damaged one (invalid or
    truncated JSON, not an object, keys missing) is :class:`DamagedManifestError`, whose line ends with the
    command to prepare the data again (``script``)."""
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
    except ValueError as exc:
        manifest, problem = None, _json_problem(text, exc)
    else:
        problem = _manifest_problem(manifest)
    if problem:
        raise DamagedManifestError(f"{path} is damaged ({problem}): {_again(root, script)}")
    return manifest


def check_prepared(root: str | os.PathLike, dataset: str, height: int | None = None,
                   width: int | None = None) -> dict:
    """The manifest, after checking that ``root`` is a complete prepared ``dataset`` of that size: every array it
    names has the recorded shape and dtype, and every array but the images the recorded SHA-256 (a folder of
    format 1 records none: one ``note:`` line per folder and process, on stderr)."""
    try:
        script = get_dataset(dataset).prepare_script
    except ValueError as exc:
        raise PreparedDataError(str(exc)) from None
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
    """(file name, shape, dtype kind) of every array a manifest names: images uint8 [count, H, W, 3],
    pids and cams int64 [count], paths str [count], index arrays int64 (1-D)."""
    size = (manifest["height"], manifest["width"], 3)
    expected = []
    for name, info in manifest["sets"].items():
        count = info["count"]
        expected += [(f"{name}_images.npy", (count, *size), "u1"), (f"{name}_pids.npy", (count,), "i8"),
                     (f"{name}_cams.npy", (count,), "i8"), (f"{name}_paths.npy", (count,), "U")]
    return expected + [(f"{name}.npy", (None,), "i8") for name in manifest["arrays"]]


def _check_array(path: Path, shape: tuple, kind: str) -> None:
    """Raise :class:`PreparedDataError` (one line naming the file) unless the ``.npy`` file ``path`` is
    complete and holds ``shape`` (``None``: any length) of dtype ``kind`` ("u1", "i8" or "U")."""
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
    shape_ok = len(found) == len(shape) and all(want is None or want == got for want, got in zip(shape, found))
    wanted = "x".join("N" if n is None else str(n) for n in shape)
    if not dtype_ok or not shape_ok:
        raise PreparedDataError(f"{path} holds {dtype} [{'x'.join(map(str, found))}] but {MANIFEST} says "
                                f"{'str' if kind == 'U' else np.dtype(kind)} [{wanted}] (prepare the data again)")
    if data_bytes < int(np.prod(found)) * dtype.itemsize:
        raise PreparedDataError(f"{path} is truncated ({data_bytes} of {int(np.prod(found)) * dtype.itemsize} "
                                f"data bytes; prepare the data again)")


def _load_npy(root: str | os.PathLike, name: str, mmap: bool = False) -> np.ndarray:
    path = Path(root) / f"{name}.npy"
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise PreparedDataError(f"cannot read {path}: {' '.join(str(exc).split())}") from None


def load_set(root: str | os.PathLike, name: str) -> ImageSet:
    """A whole stored image set (images memory-mapped)."""
    return ImageSet(images=_load_npy(root, f"{name}_images", mmap=True), pids=_load_npy(root, f"{name}_pids"),
                    cams=_load_npy(root, f"{name}_cams"), paths=_load_npy(root, f"{name}_paths"))


def load_array(root: str | os.PathLike, name: str) -> np.ndarray:
    """A stored index/label array (e.g. ``gallery_index_all_0``)."""
    return _load_npy(root, name)


def load_side(root: str | os.PathLike, side: Side, trial: int) -> ImageSet:
    """The images of ``side`` for ``trial``: the whole set (images memory-mapped), or the rows of its index
    array (read into memory), labelled by its label array when it has one."""
    base = load_set(root, side.set)
    index, labels = side.arrays(trial)
    if index is None:
        return base
    return base.subset(load_array(root, index), pids=None if labels is None else load_array(root, labels))


def load_train(root: str | os.PathLike, dataset: str, trial: int = 1) -> tuple[ImageSet, ImageSet]:
    """Training sets ``(visible, infrared)`` of ``trial`` in the release's clustering order (the dataset's
    ``train_order``, when it has one)."""
    check_prepared(root, dataset)
    ds = get_dataset(dataset)
    if ds.model_per_trial:
        check_trial(ds.trials, trial, ds.display)
    sets = [load_side(root, side, trial) for side in ds.train]
    if ds.train_order is not None:
        sets = [s.subset(ds.train_order(s.pids, s.paths)) for s in sets]
    return sets[0], sets[1]


def check_trial(trials: tuple[int, ...], trial: int, what: str) -> None:
    """Raise :class:`PreparedDataError` unless ``trial`` is one of ``trials``."""
    if trial not in trials:
        raise PreparedDataError(f"{what} trial must be in {trials[0]}..{trials[-1]}, got {trial}")
