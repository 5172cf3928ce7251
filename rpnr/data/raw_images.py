"""Reading raw image files into uint8 HWC arrays, resized as the official loaders do."""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image
from tqdm import tqdm

from rpnr.errors import RawDataError

# Official loaders: training/clustering images go through T.Resize(interpolation=3) = bicubic;
# the test loader resizes the raw image with Image.ANTIALIAS, which is Lanczos.
RESAMPLE = {"bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}

_CHUNK = 256
_OPENING = threading.Lock()


def rgb_of(img: Image.Image) -> Image.Image:
    """``img`` in 8-bit RGB; 16-bit greyscale (what thermal cameras write) scaled from its 0..65535 range, where
    Pillow's own conversion would clip every value above 255."""
    if img.mode.startswith("I"):
        img = Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) / 257.0 + 0.5, 0, 255).astype(np.uint8))
    return img.convert("RGB")


def read_image(path: str | os.PathLike, height: int, width: int, resample: str) -> np.ndarray:
    """One image file -> uint8 [height, width, 3] (:func:`rgb_of`, resized with ``resample``)."""
    try:
        with _OPENING, warnings.catch_warnings():  # Pillow's size warning raised as an error (threads take turns)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)  # reads the header only
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


def write_image_array(path: str | os.PathLike, paths: Sequence[str], height: int, width: int, resample: str,
                      desc: str = "images", workers: int | None = None) -> None:
    """Decode ``paths`` (resized with ``resample``) into the ``.npy`` file ``path``: uint8 [N, height, width, 3]
    in the order of ``paths``, with a progress bar, on ``workers`` threads (PIL releases the GIL); written
    sequentially (no memory map), so a full disk is an ``OSError`` (ENOSPC), never a bus error."""
    if resample not in RESAMPLE:
        raise ValueError(f"resample must be one of {sorted(RESAMPLE)}, got {resample!r}")
    workers = workers or min(8, os.cpu_count() or 1)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": (len(paths), height, width, 3)}
    # the bar shows on terminals only (disable=None), so redirected logs and errors stay clean
    with open(path, "wb") as fh, ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(paths), desc=desc, unit="img", dynamic_ncols=True, disable=None) as bar:
        np.lib.format.write_array_header_2_0(fh, header)
        for start in range(0, len(paths), _CHUNK):
            chunk = paths[start:start + _CHUNK]
            arrays = pool.map(lambda p: read_image(p, height, width, resample), chunk)
            fh.write(np.stack(list(arrays)).tobytes())  # [c, H, W, 3]
            bar.update(len(chunk))
        fh.flush()
        os.fsync(fh.fileno())
