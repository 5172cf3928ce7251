"""Reading raw image files into uint8 HWC arrays, resized as the official loaders do."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image
from tqdm import tqdm

# Official loaders: training/clustering images go through T.Resize(interpolation=3) = bicubic;
# the test loader resizes the raw image with Image.ANTIALIAS, which is Lanczos.
RESAMPLE = {"bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}

_CHUNK = 256


class RawDataError(Exception):
    """The raw dataset is missing, incomplete or holds an unreadable file (one-line message)."""


def read_image(path: str | os.PathLike, height: int, width: int, resample: str) -> np.ndarray:
    """One image file -> uint8 [height, width, 3] (RGB, resized with ``resample``)."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB").resize((width, height), RESAMPLE[resample]), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
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
