"""Raw images read and resized as the official loaders do, and what the raw layouts share (DESIGN 1)."""

import os
import random
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from rpnr.common.errors import RawDataError, UsageError

# the release's loaders: training/clustering images T.Resize(interpolation=3), test images Image.ANTIALIAS
RESAMPLE = {"bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}
_CHUNK = 256
_OPENING = threading.Lock()


def rgb_of(img: Image.Image) -> Image.Image:
    """``img`` in 8-bit RGB; 16-bit greyscale (thermal cameras) scaled from 0..65535, not clipped at 255."""
    if img.mode.startswith("I"):
        img = Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) / 257.0 + 0.5, 0, 255).astype(np.uint8))
    return img.convert("RGB")


def read_image(path: str | os.PathLike, height: int, width: int, resample: str) -> np.ndarray:
    """One image file -> uint8 [height, width, 3]; an unreadable or too large file is one line naming it."""
    try:
        with _OPENING, warnings.catch_warnings():  # Pillow's size warning as an error (threads take turns)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)  # the header only
        with img:
            return np.asarray(rgb_of(img).resize((width, height), RESAMPLE[resample]), dtype=np.uint8)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(path) as img:
                size = f"{img.width}x{img.height}"
        finally:
            Image.MAX_IMAGE_PIXELS = limit
        raise RawDataError(f"cannot read image {path}: it is {size} pixels, more than Pillow's limit of {limit:,} "
                           f"pixels against decompression bombs; resize it first") from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = (" ".join(str(exc).split()) or type(exc).__name__).replace(f" '{path}'", "").replace(f" {path}", "")
        raise RawDataError(f"cannot read image {path}: {reason}") from None


def load_image(image, height: int, width: int) -> np.ndarray:
    """A file path, PIL image or uint8 [H, W, 3] array -> uint8 [height, width, 3], as prepare reads a test image."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, height, width, "lanczos")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise UsageError(f"image arrays must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise UsageError(f"an image must be a file path, a PIL image or a uint8 array, got {type(image).__name__}")
    return np.asarray(rgb_of(image).resize((width, height), RESAMPLE["lanczos"]), dtype=np.uint8)


def write_image_array(path: str | os.PathLike, paths: Sequence[str], height: int, width: int, resample: str,
                      desc: str = "images", workers: int | None = None) -> None:
    """Decode ``paths`` into the ``.npy`` file ``path`` (uint8 [N, height, width, 3]), written sequentially."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": (len(paths), height, width, 3)}
    with open(path, "wb") as fh, ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool, \
            tqdm(total=len(paths), desc=desc, unit="img", dynamic_ncols=True, disable=None) as bar:
        np.lib.format.write_array_header_2_0(fh, header)
        for start in range(0, len(paths), _CHUNK):
            chunk = paths[start:start + _CHUNK]
            fh.write(np.stack(list(pool.map(lambda p: read_image(p, height, width, resample), chunk))).tobytes())
            bar.update(len(chunk))
        fh.flush()
        os.fsync(fh.fileno())


class Split(NamedTuple):
    """Image paths with their identity and camera ids."""

    paths: list[str]
    pids: np.ndarray  # int64 [N]
    cams: np.ndarray  # int64 [N]


def read_id_line(path: str, missing_hint: str) -> list[str]:
    """The ids of an id file's first line as 4-digit strings, in file order (the release's ``"%04d" % x``)."""
    if not os.path.isfile(path):
        raise RawDataError(f"missing {path} ({missing_hint})")
    lines = Path(path).read_text().splitlines()
    if not lines or not lines[0].strip():
        raise RawDataError(f"{path} is empty (expected one line of comma-separated ids)")
    try:
        return [f"{int(y):04d}" for y in lines[0].split(",")]
    except ValueError:
        raise RawDataError(f"{path}: first line is not a comma-separated list of integer ids") from None


def cam_split(paths: list[str], root: str | None = None) -> Split:
    """``paths`` ending in ``cam<k>/<pid>/<file>`` (relative to ``root`` when given), with their pids and cameras."""
    paths = paths if root is None else [os.path.relpath(p, root) for p in paths]
    folders = [p.split(os.sep)[-3:-1] for p in paths]
    return Split(paths, np.array([int(pid) for _, pid in folders], dtype=np.int64),
                 np.array([int(cam[3:]) for cam, _ in folders], dtype=np.int64))


def sorted_files(img_dir: str) -> list[str]:
    """``sorted(img_dir + '/' + name)`` over the folder's entries, as the release builds them."""
    return sorted([img_dir + "/" + name for name in os.listdir(img_dir)])


def _id_folders(root: str, folders: Sequence[str], ids: Sequence[str]) -> list[str]:
    dirs = [os.path.join(root, folder, pid) for pid in sorted(ids) for folder in folders]  # the release's order
    return [img_dir for img_dir in dirs if os.path.isdir(img_dir)]


def folder_images(root: str, folders: Sequence[str], ids: Sequence[str]) -> list[str]:
    """Every image of the ids' camera folders: the release's query order."""
    return [file for img_dir in _id_folders(root, folders, ids) for file in sorted_files(img_dir)]


def sample_folder_images(root: str, folders: Sequence[str], ids: Sequence[str], trial: int) -> list[str]:
    """One image per id and camera folder, ``random.Random(trial).choice``: the release's gallery of ``trial``."""
    rng, files = random.Random(trial), []
    for img_dir in _id_folders(root, folders, ids):
        candidates = sorted_files(img_dir)
        if not candidates:
            raise RawDataError(f"empty image folder {img_dir} (a gallery camera folder needs images)")
        files.append(rng.choice(candidates))
    return files


def read_path_labels(root: str, path: str, missing_hint: str) -> tuple[list[str], np.ndarray]:
    """``(relative paths, labels int64)`` of a ``<relative path> <label>`` list file; every image must exist."""
    if not os.path.isfile(path):
        raise RawDataError(f"missing {path} ({missing_hint})")
    paths, labels = [], []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            relative, label = fields
            labels.append(int(label))
        except ValueError:
            raise RawDataError(f"{path} line {number}: expected '<relative path> <label>', "
                               f"got {line.strip()!r}") from None
        if not os.path.isfile(os.path.join(root, relative)):
            raise RawDataError(f"image {os.path.join(root, relative)} listed in {path} line {number} does not exist")
        paths.append(relative)
    if not paths:
        raise RawDataError(f"{path} lists no images")
    return paths, np.array(labels, dtype=np.int64)
