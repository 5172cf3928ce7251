"""A trained model on your own images (DESIGN.md section 13): FeatureExtractor, image files, ONNX."""

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from tqdm import tqdm

from rpnr.common.command import require_positive
from rpnr.common.errors import RawDataError, UsageError
from rpnr.data.raw import load_image
from rpnr.engine.settings import resolve_device
from rpnr.evaluation import extract_features_uint8, uint8_to_normalized
from rpnr.models import l2_normalize, load_trained

SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
MODALITIES = {"visible": "visible", "infrared": "infrared", "thermal": "infrared", "nir": "infrared"}


def stem_of(modality: str) -> str:
    """The stem ("visible" or "infrared") of a modality name, aliases ``thermal`` and ``nir`` included."""
    stem = MODALITIES.get(str(modality).lower())
    if stem is None:
        raise UsageError(f"unknown modality {modality!r}: use visible or infrared (aliases thermal, nir)")
    return stem


class FeatureExtractor:
    """``FeatureExtractor(checkpoint)(images, modality)``: float32 [N, 2048] test embeddings on the CPU of image files,
    PIL images or uint8 arrays of any size; the size is the checkpoint's (``height``/``width`` that contradict it
    are refused) or, for one that records none (the release's), ``height`` and ``width``."""

    def __init__(self, checkpoint: str | os.PathLike, device: str | None = None, batch_size: int = 64,
                 height: int | None = None, width: int | None = None):
        require_positive(("batch_size", batch_size), *(("height", v) for v in [height] if v is not None),
                         *(("width", v) for v in [width] if v is not None))
        self.device, self.batch_size = torch.device(resolve_device(device)), batch_size
        trained = load_trained(checkpoint, self.device, size=(height, width))
        if trained.size is None:
            raise UsageError(f"{checkpoint} records no image size (a release checkpoint?): pass height and width")
        self.model, (self.height, self.width) = trained.model, trained.size

    def __call__(self, images, modality: str, progress: Callable | None = None) -> torch.Tensor:
        """Embeddings of ``images`` (a list, or one image); ``progress(n)`` after each batch of n images."""
        one = isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)) and getattr(images, "ndim", 3) == 3
        if not one and not isinstance(images, (list, tuple, np.ndarray)):
            raise UsageError(f"images must be a file path, a PIL image, a uint8 [H, W, 3] array or a list of them, "
                             f"got {type(images).__name__}")
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


def image_files(path: str | os.PathLike, exclude: str | os.PathLike | None = None) -> list[Path]:
    """The image files of a folder (recursively, sorted; the other files named, anything under ``exclude`` left
    out) or of a list file (one path a line, relative to it; UTF-8 with or without a BOM, any line ends)."""
    where = Path(path)
    if where.is_dir():
        skip = os.path.realpath(exclude) + os.sep if exclude is not None else None
        files = sorted(p for p in where.rglob("*") if p.is_file() and not (
            skip and (os.path.realpath(p) + os.sep).startswith(skip)))
        for other in (p for p in files if p.suffix.lower() not in SUFFIXES):
            print(f"skipped: {other} (not an image)")
        files = [p for p in files if p.suffix.lower() in SUFFIXES]
    elif where.is_file():
        try:
            lines = where.read_text(encoding="utf-8-sig").splitlines()
        except UnicodeDecodeError:
            raise UsageError(f"{path} is neither a folder nor a text file listing image paths") from None
        files = [where.parent / line.strip() for line in lines if line.strip()]
    else:
        raise UsageError(f"{path} not found")
    if not files:
        raise UsageError(f"no images in {path} (looked for {' '.join(SUFFIXES)} files)")
    return files


def embed_files(extractor: FeatureExtractor, files: list[Path], stem: str, what: str) -> tuple[list[Path], np.ndarray]:
    """(the readable files, their embeddings float32 [n, 2048]); each file that cannot be read named and skipped."""
    kept, feats = [], []
    with tqdm(total=len(files), desc=what, unit="img", dynamic_ncols=True, disable=None) as bar:
        for start in range(0, len(files), extractor.batch_size):
            arrays = []
            for path in files[start:start + extractor.batch_size]:
                try:
                    arrays.append(load_image(path, extractor.height, extractor.width))
                    kept.append(path)
                except RawDataError as exc:
                    reason = str(exc).replace(f"cannot read image {path}: ", "") if path.is_file() else "not found"
                    tqdm.write(f"skipped: {path} ({reason})")
            feats += [extractor(arrays, stem).numpy()] if arrays else []
            bar.update(len(files[start:start + extractor.batch_size]))
    if not kept:
        raise UsageError(f"none of the {what} images can be read")
    return kept, np.concatenate(feats)


class Stream(nn.Module):
    """One modality of ``model`` (eval mode): uint8 [N, H, W, 3] -> the test embedding [N, 2048] (export.py)."""

    def __init__(self, model: nn.Module, stem: str):
        super().__init__()
        self.model, self.stem = model.eval(), stem

    def forward(self, images: Tensor) -> Tensor:
        x = uint8_to_normalized(images)  # [N, 3, H, W], as the test pipeline
        return l2_normalize((self.model.embed(x, self.stem) + self.model.embed(torch.flip(x, dims=[3]), self.stem)) / 2)


def onnx_bytes(extractor: FeatureExtractor, modality: str) -> bytes:
    """The ONNX model of ``modality``'s stream (torch.export-based exporter, dynamic batch size)."""
    stream = Stream(extractor.model, stem_of(modality)).eval()
    example = torch.zeros(2, extractor.height, extractor.width, 3, dtype=torch.uint8)
    program = torch.onnx.export(stream, (example,), input_names=["images"], output_names=["embeddings"],
                                dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False)
    return program.model_proto.SerializeToString()


def largest_difference(model: bytes, extractor: FeatureExtractor, modality: str, batch_sizes=(1, 3)) -> float:
    """max |onnxruntime - FeatureExtractor| over random uint8 images at each of ``batch_sizes``."""
    import onnxruntime  # only export.py needs it

    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    rng, worst = np.random.default_rng(0), 0.0
    for n in batch_sizes:
        images = rng.integers(0, 256, (n, extractor.height, extractor.width, 3), dtype=np.uint8)
        out = session.run(["embeddings"], {"images": images})[0]  # [n, 2048]
        worst = max(worst, float(np.abs(out - extractor(list(images), modality).numpy()).max()))
    return worst
