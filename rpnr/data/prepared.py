"""Prepared datasets: uint8 image arrays at a fixed size, with identity, camera and source path.

Layout of a prepared folder (all ``.npy``; images are loaded memory-mapped):

- ``manifest.json``: dataset, height, width, format version, source folder, creation
  time, per-set counts, the statistics table rows and ``published_check`` (the counts
  compared with the dataset's published statistics, :mod:`rpnr.data.published`);
- per image set ``<set>_images.npy`` (uint8 [N, H, W, 3]), ``<set>_pids.npy``,
  ``<set>_cams.npy`` (int64 [N]) and ``<set>_paths.npy`` (str [N], relative to the raw root);
- index arrays (int64) that select the rows of a set for a trial.

SYSU-MM01 sets: ``train_rgb``, ``train_ir`` (bicubic), ``query`` and ``gallery`` (Lanczos;
``gallery`` holds the union of the galleries of trials 0-9 of both modes once), with
``gallery_index_{mode}_{trial}`` giving each official gallery in its official order.
RegDB sets: ``{visible,thermal}_train`` (bicubic) and ``{visible,thermal}_test`` (Lanczos),
with ``trial{t}_{train,test}_{visible,thermal}_{index,labels}`` for t = 1..10 (labels as in
the ``idx`` files).
LLCM sets: ``train_rgb``, ``train_ir`` (bicubic; the images of ``idx/train_vis.txt`` and
``idx/train_nir.txt`` sorted by path, the release's clustering order), ``test_visible`` and
``test_infrared`` (Lanczos; every test image of the modality in the official query order), with
``gallery_index_{visible,infrared}_{trial}`` giving the official gallery of each modality and
trial 0-9 (rows of that modality's test set).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rpnr.data.published import compare_published
from rpnr.data.raw_images import RESAMPLE, write_image_array
from rpnr.files import fsync_folder, human_size, make_folder, os_error_line, write_json

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATASETS = ("sysu", "regdb", "llcm")
SYSU_MODES = ("all", "indoor")
SYSU_TRIALS = tuple(range(10))
REGDB_TRIALS = tuple(range(1, 11))
LLCM_MODALITIES = ("visible", "infrared")
LLCM_TRIALS = tuple(range(10))
PREPARE_SCRIPT = {"sysu": "prepare_sysu.py", "regdb": "prepare_regdb.py", "llcm": "prepare_llcm.py"}


class PreparedDataError(Exception):
    """A prepared folder is missing, incomplete, of the other dataset or of another size."""


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
                        cams=np.asarray(self.cams[index], dtype=np.int64),
                        paths=self.paths[index])


# ----------------------------------------------------------------------------- writing


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


def _view_stats(split: str, modality: str, pids: np.ndarray, cams: np.ndarray) -> dict:
    return {"split": split, "modality": modality, "ids": int(len(np.unique(pids))), "images": int(len(pids)),
            "cameras": [int(c) for c in np.unique(cams)]}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _recover_killed_runs(out: Path) -> None:
    """Clean up after prepare runs that were killed: remove their ``OUT.tmp-<pid>`` folders, and their
    ``OUT.old-<pid>`` folders (the previous output, moved aside for the final rename), which go back to
    ``OUT`` when a kill between the two renames left no ``OUT``."""
    for leftover in sorted(out.parent.glob(f"{out.name}.tmp-*")) + sorted(out.parent.glob(f"{out.name}.old-*")):
        suffix = leftover.name.rsplit("-", 1)[-1]
        if not suffix.isdigit() or int(suffix) == os.getpid() or _pid_alive(int(suffix)):
            continue
        if leftover.name.startswith(f"{out.name}.old-") and not out.exists():
            os.replace(leftover, out)
        else:
            shutil.rmtree(leftover, ignore_errors=True)


def _prepared_by_us(folder: Path) -> bool:
    """Whether ``folder`` holds a ``manifest.json`` that this project wrote (format version and dataset)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format_version") == FORMAT_VERSION \
        and isinstance(manifest.get("dataset"), str)


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
    if not _prepared_by_us(out):
        raise PreparedDataError(f"output folder {out} is not empty and was not prepared by this project (no "
                                f"{MANIFEST} of ours); it is left alone: choose a new or empty --output-dir")
    if not overwrite:
        raise PreparedDataError(f"output folder {out} already holds prepared data (pass --overwrite to replace it)")


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
    """Read, resize and write every set of ``plan`` into ``output_dir``; returns the manifest.

    Refused untouched (:class:`PreparedDataError`): an output folder that is the raw folder or holds
    it, a non-empty folder this project did not prepare, a prepared one without ``overwrite``, and a
    file system without room for the arrays. Everything goes to ``OUT.tmp-<pid>`` first and is
    renamed to ``OUT`` at the end; an error, a full disk or Ctrl-C removes the temporary folder, so
    nothing half-written is left, and leftovers of earlier killed runs are cleaned up first.
    """
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
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        exc.filename = exc.filename or str(out)
        raise PreparedDataError(f"{os_error_line(exc)} (nothing was written)") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _write_arrays(plan: PreparePlan, folder: Path, height: int, width: int, workers: int | None) -> dict:
    """Every set's images, pids, cams and paths, the index arrays and the manifest, into ``folder``."""
    sets_info = {}
    for spec in plan.sets:
        if spec.resample not in RESAMPLE:
            raise ValueError(f"unknown resample {spec.resample!r}")
        write_image_array(folder / f"{spec.name}_images.npy", [os.path.join(plan.root, p) for p in spec.paths],
                          height, width, spec.resample, desc=f"{spec.name} ({spec.resample})", workers=workers)
        np.save(folder / f"{spec.name}_pids.npy", np.asarray(spec.pids, dtype=np.int64))
        np.save(folder / f"{spec.name}_cams.npy", np.asarray(spec.cams, dtype=np.int64))
        np.save(folder / f"{spec.name}_paths.npy", np.asarray(spec.paths, dtype=str))
        sets_info[spec.name] = {"count": len(spec.paths), "resample": spec.resample}
    for name, arr in plan.arrays.items():
        np.save(folder / f"{name}.npy", np.asarray(arr, dtype=np.int64))
    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset": plan.dataset,
        "height": int(height),
        "width": int(width),
        "source": str(Path(plan.root).absolute()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sets": sets_info,
        "arrays": sorted(plan.arrays),
        "stats": [_view_stats(*view) for view in plan.views],
        "published_check": compare_published(plan.dataset, plan.figures),
        **plan.info,
    }
    write_json(folder / MANIFEST, manifest)
    return manifest


def format_stats(manifest: dict) -> str:
    """The statistics table (ids, images, cameras per split and modality) of a manifest."""
    rows = [("split", "modality", "ids", "images", "cameras")]
    for s in manifest["stats"]:
        rows.append((s["split"], s["modality"], str(s["ids"]), str(s["images"]),
                     ",".join(str(c) for c in s["cameras"])))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [f"{manifest['dataset']} prepared at {manifest['height']}x{manifest['width']} (HxW)"]
    for k, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- reading


def read_manifest(root: str | os.PathLike) -> dict:
    """The manifest of a prepared folder (``{"dataset", "height", "width", ...}``)."""
    root = Path(root)
    if not root.is_dir():
        raise PreparedDataError(f"prepared data folder not found: {root}")
    path = root / MANIFEST
    if not path.is_file():
        raise PreparedDataError(f"{root} is not a prepared dataset (no {MANIFEST}; run prepare_sysu.py, "
                                f"prepare_regdb.py or prepare_llcm.py first)")
    try:
        with open(path) as fh:
            manifest = json.load(fh)
    except (OSError, ValueError) as exc:
        raise PreparedDataError(f"cannot read {path}: {' '.join(str(exc).split())}") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise PreparedDataError(f"{path} is not a prepared-data manifest of format version {FORMAT_VERSION} "
                                f"(prepare the data again)")
    return manifest


def check_prepared(root: str | os.PathLike, dataset: str, height: int | None = None,
                   width: int | None = None) -> dict:
    """The manifest, after checking that ``root`` is a complete prepared ``dataset`` of that size."""
    if dataset not in DATASETS:
        raise PreparedDataError(f"unknown dataset {dataset!r} (choose from {', '.join(DATASETS)})")
    manifest = read_manifest(root)
    if manifest.get("dataset") != dataset:
        raise PreparedDataError(f"{root} holds prepared {manifest.get('dataset')} data, not {dataset} "
                                f"(run {PREPARE_SCRIPT[dataset]})")
    size = (manifest.get("height"), manifest.get("width"))
    if (height is not None and height != size[0]) or (width is not None and width != size[1]):
        raise PreparedDataError(f"{root} was prepared at {size[0]}x{size[1]} (HxW), not {height or size[0]}x"
                                f"{width or size[1]}; prepare it again with --height/--width or pass the "
                                f"matching size")
    for name, shape, kind in _expected_arrays(manifest):
        _check_array(Path(root) / name, shape, kind)
    return manifest


def _expected_arrays(manifest: dict) -> list[tuple[str, tuple, str]]:
    """(file name, shape, dtype kind) of every array a manifest names: images uint8 [count, H, W, 3],
    pids and cams int64 [count], paths str [count], index arrays int64 (1-D)."""
    size = (manifest.get("height"), manifest.get("width"), 3)
    expected = []
    for name, info in manifest.get("sets", {}).items():
        count = info.get("count") if isinstance(info, dict) else None
        expected += [(f"{name}_images.npy", (count, *size), "u1"), (f"{name}_pids.npy", (count,), "i8"),
                     (f"{name}_cams.npy", (count,), "i8"), (f"{name}_paths.npy", (count,), "U")]
    return expected + [(f"{name}.npy", (None,), "i8") for name in manifest.get("arrays", [])]


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


def _load_npy(root: Path, name: str, mmap: bool = False) -> np.ndarray:
    path = root / f"{name}.npy"
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise PreparedDataError(f"cannot read {path}: {' '.join(str(exc).split())}") from None


def load_set(root: str | os.PathLike, name: str) -> ImageSet:
    """A whole stored image set (images memory-mapped)."""
    root = Path(root)
    return ImageSet(images=_load_npy(root, f"{name}_images", mmap=True), pids=_load_npy(root, f"{name}_pids"),
                    cams=_load_npy(root, f"{name}_cams"), paths=_load_npy(root, f"{name}_paths"))


def load_array(root: str | os.PathLike, name: str) -> np.ndarray:
    """A stored index/label array (e.g. ``gallery_index_all_0``)."""
    return _load_npy(Path(root), name)


def _check_trial(trial: int, valid: tuple[int, ...], what: str) -> None:
    if trial not in valid:
        raise PreparedDataError(f"{what} trial must be in {valid[0]}..{valid[-1]}, got {trial}")


def regdb_trial(root: str | os.PathLike, split: str, modality: str, trial: int,
                release_order: bool = False) -> ImageSet:
    """The ``split`` ("train"|"test") images of ``modality`` ("visible"|"thermal") for a RegDB trial
    (pids = the idx-file labels; images read into memory), in the order of its idx file or, with
    ``release_order``, in the release's clustering order (:func:`release_train_order`)."""
    _check_trial(trial, REGDB_TRIALS, "RegDB")
    base = load_set(root, f"{modality}_{split}")
    index = load_array(root, f"trial{trial}_{split}_{modality}_index")
    labels = load_array(root, f"trial{trial}_{split}_{modality}_labels")
    if release_order:
        order = release_train_order(labels, base.paths[index])
        index, labels = index[order], labels[order]
    return base.subset(index, pids=labels)


def release_train_order(pids: np.ndarray, paths: np.ndarray) -> np.ndarray:
    """Row order in which the release clusters RegDB training images: [N] int64.

    The release copies each image to ``<label>_c1_<file name>`` and iterates over
    ``sorted(dataset.train)``, i.e. by that name as a string ("10_..." before "1_...").
    Its SYSU names ``<4-digit id>_c<cam>_<file>`` sort like the prepared order already.
    """
    names = [f"{pid}_c1_{os.path.basename(path)}" for pid, path in zip(np.asarray(pids).tolist(),
                                                                       np.asarray(paths).tolist())]
    return np.array(sorted(range(len(names)), key=names.__getitem__), dtype=np.int64)


def load_train(root: str | os.PathLike, dataset: str, trial: int = 1) -> tuple[ImageSet, ImageSet]:
    """Training sets ``(rgb, ir)`` in the release's clustering order; ``trial`` (1..10) only for RegDB.

    SYSU and LLCM images are memory-mapped; RegDB images are read into memory.
    """
    check_prepared(root, dataset)
    if dataset in ("sysu", "llcm"):
        return load_set(root, "train_rgb"), load_set(root, "train_ir")
    return (regdb_trial(root, "train", "visible", trial, release_order=True),
            regdb_trial(root, "train", "thermal", trial, release_order=True))


def sysu_gallery_index(root: str | os.PathLike, mode: str = "all", trial: int = 0) -> np.ndarray:
    """Rows of the stored ``gallery`` set that form the official gallery of ``mode``/``trial``."""
    if mode not in SYSU_MODES:
        raise PreparedDataError(f"SYSU mode must be 'all' or 'indoor', got {mode!r}")
    _check_trial(trial, SYSU_TRIALS, "SYSU gallery")
    return load_array(root, f"gallery_index_{mode}_{trial}")


def load_sysu_test(root: str | os.PathLike, mode: str = "all", trial: int = 0) -> tuple[ImageSet, ImageSet]:
    """``(query IR, gallery RGB of that trial)``; the query is memory-mapped."""
    check_prepared(root, "sysu")
    index = sysu_gallery_index(root, mode, trial)
    return load_set(root, "query"), load_set(root, "gallery").subset(index)


def load_regdb_test(root: str | os.PathLike, trial: int = 1) -> tuple[ImageSet, ImageSet]:
    """``(visible, thermal)`` test sets of a RegDB trial."""
    check_prepared(root, "regdb")
    return regdb_trial(root, "test", "visible", trial), regdb_trial(root, "test", "thermal", trial)


def _check_llcm_modality(modality: str) -> None:
    if modality not in LLCM_MODALITIES:
        raise PreparedDataError(f"LLCM modality must be 'visible' or 'infrared', got {modality!r}")


def llcm_gallery_index(root: str | os.PathLike, modality: str = "infrared", trial: int = 0) -> np.ndarray:
    """Rows of the stored ``test_<modality>`` set that form the official LLCM gallery of ``trial``
    (one image per test identity and camera, in the release's order): int64 [G]."""
    _check_llcm_modality(modality)
    _check_trial(trial, LLCM_TRIALS, "LLCM gallery")
    return load_array(root, f"gallery_index_{modality}_{trial}")


def load_llcm_test(root: str | os.PathLike, modality: str) -> ImageSet:
    """Every LLCM test image of ``modality`` ("visible"|"infrared") in the official query order
    (memory-mapped)."""
    _check_llcm_modality(modality)
    check_prepared(root, "llcm")
    return load_set(root, f"test_{modality}")
