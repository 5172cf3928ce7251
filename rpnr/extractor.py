"""A trained model on your own images (DESIGN.md section 13): ``FeatureExtractor(checkpoint)(images, modality)``,
the test embeddings of image files, PIL images or uint8 arrays of any size, each resized with Lanczos as prepare
resizes test images. ``stem_of`` reads a modality name; ``load_image`` reads and resizes one image."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from rpnr.checkpoint import load_checkpoint
from rpnr.data.raw_images import RESAMPLE, read_image
from rpnr.distributed import resolve_device
from rpnr.evaluation import extract_features_uint8
from rpnr.models import build_model, load_weights

MODALITIES = {"visible": "visible", "infrared": "infrared", "thermal": "infrared", "nir": "infrared"}


def stem_of(modality: str) -> str:
    """The stem ("visible" or "infrared") of a modality name, aliases ``thermal`` and ``nir`` included."""
    stem = MODALITIES.get(str(modality).lower())
    if stem is None:
        raise ValueError(f"unknown modality {modality!r}: use visible or infrared (aliases thermal, nir)")
    return stem


def load_image(image, height: int, width: int) -> np.ndarray:
    """A file path, PIL image or uint8 [H, W, 3] array -> uint8 [height, width, 3], as prepare reads a test
    image (RGB, Lanczos); an unreadable file raises :class:`rpnr.data.raw_images.RawDataError` naming it."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, height, width, "lanczos")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image arrays must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"an image must be a file path, a PIL image or a uint8 array, got {type(image).__name__}")
    return np.asarray(image.convert("RGB").resize((width, height), RESAMPLE["lanczos"]), dtype=np.uint8)


class FeatureExtractor:
    """``FeatureExtractor(checkpoint)(images, modality)`` -> float32 [N, 2048] test embeddings (flip average,
    L2-normalised, fp32) on the CPU. ``checkpoint``: any that test.py accepts; the image size is the one it was
    trained at, or ``height`` and ``width`` for a checkpoint that records none (the release's)."""

    def __init__(self, checkpoint: str | os.PathLike, device: str | None = None, batch_size: int = 64,
                 height: int | None = None, width: int | None = None):
        ckpt = load_checkpoint(checkpoint)
        saved = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
        self.model = build_model("agw")
        load_weights(self.model, checkpoint, ckpt)
        self.height, self.width = saved.get("height") or height, saved.get("width") or width
        if self.height is None or self.width is None:
            raise ValueError(f"{checkpoint} records no image size (a release checkpoint?): pass height and width")
        self.device, self.batch_size = torch.device(resolve_device(device)), batch_size
        self.model.to(self.device).eval()

    def __call__(self, images, modality: str, progress: Callable | None = None) -> torch.Tensor:
        """Embeddings of ``images`` (a list, or one image); ``progress(n)`` after each batch of n images."""
        one = isinstance(images, (str, os.PathLike, Image.Image)) or getattr(images, "ndim", 0) == 3
        lazy = _Resized(list([images] if one else images), self.height, self.width)
        return extract_features_uint8(self.model, lazy, stem_of(modality), self.batch_size, device=self.device,
                                      progress=progress).cpu()


class _Resized:
    """Images read and resized batch by batch (what :func:`extract_features_uint8` slices)."""

    def __init__(self, items: list, height: int, width: int):
        self.items, self.height, self.width = items, height, width

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, rows: slice) -> np.ndarray:
        return np.stack([load_image(item, self.height, self.width) for item in self.items[rows]])
