"""Test features (flip-averaged eval embeddings); re-exports :mod:`rpnr.metrics` (DESIGN.md sections 6 and 7)."""

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from rpnr.metrics import eval_llcm, eval_regdb, eval_sysu, llcm_ignored, sysu_ignored  # noqa: F401 - the public API
from rpnr.models.agw import l2_normalize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRECISIONS = ("fp32", "tf32", "bf16")


@contextlib.contextmanager
def feature_precision(precision: str, device: torch.device) -> Iterator[None]:
    """Arithmetic of an eval-mode forward on CUDA: "fp32", "tf32" (the release's PyTorch 1.8 default on Ampere and
    later) or "bf16" (autocast), cuDNN autotuning off (DESIGN.md section 3, "Precision"); the CPU computes in fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    cuda, cudnn, matmul = device.type == "cuda", torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark)
    cudnn.allow_tf32 = matmul.allow_tf32 = cuda and precision == "tf32"
    cudnn.benchmark = False
    try:
        with torch.autocast("cuda", torch.bfloat16) if cuda and precision == "bf16" else contextlib.nullcontext():
            yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark = saved


def _embed_batches(model: nn.Module, batches, modal: str, flip: bool, normalize: bool,
                   device: torch.device, progress: Callable | None = None, precision: str = "fp32") -> Tensor:
    out, was_training, fmt = [], model.training, torch.preserve_format
    if device.type == "cuda":  # in place (the same weights), outside inference mode: the model may train later
        model.to(memory_format=(fmt := torch.channels_last))
    model.eval()
    try:
        with torch.inference_mode(), feature_precision(precision, device):
            for x in batches:
                x = x.to(device, non_blocking=True, memory_format=fmt)
                e = model.embed(x, modal).float()  # [B, 2048], L2-normalised (eval mode)
                if flip:
                    e = (e + model.embed(torch.flip(x, dims=[3]), modal).float()) / 2
                    if normalize:
                        e = l2_normalize(e)
                out.append(e)
                if progress is not None:
                    progress(x.size(0))
    finally:
        model.train(was_training)
    return torch.cat(out, 0) if out else torch.zeros(0, 2048, device=device)


def extract_features(model: nn.Module, images: Tensor, modal: str, batch_size: int = 64,
                     flip: bool = True, normalize: bool = True) -> Tensor:
    """Eval embeddings of ImageNet-normalised images [N, 3, H, W] -> [N, 2048]; flip: (e(x) + e(flip(x))) / 2,
    L2-normalised unless ``normalize`` is False (clustering uses the unnormalised mean)."""
    return _embed_batches(model, images.split(batch_size), modal, flip, normalize, next(model.parameters()).device)


def uint8_to_normalized(batch: Tensor) -> Tensor:
    """uint8 [B, H, W, 3] -> ImageNet-normalised float [B, 3, H, W] on the batch's device."""
    x = batch.permute(0, 3, 1, 2).float().div_(255)  # [B, 3, H, W]
    mean, std = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    return (x - mean) / std


def extract_features_uint8(model: nn.Module, images: np.ndarray, modal: str, batch_size: int = 64,
                           flip: bool = True, normalize: bool = True, device: torch.device | str | None = None,
                           progress: Callable | None = None, precision: str = "fp32") -> Tensor:
    """:func:`extract_features` of uint8 images [N, H, W, 3] on ``device`` (default: the model's); ``progress(n)``
    after each batch of n."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    starts = range(0, len(images), batch_size)  # np.array copies: memory maps are read-only
    batches = (to_device(torch.from_numpy(np.array(images[i:i + batch_size])), device) for i in starts)
    batches = (uint8_to_normalized(b) for b in (_one_ahead(batches) if device.type == "cuda" else batches))
    return _embed_batches(model, batches, modal, flip, normalize, device, progress, precision)


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device``; on CUDA copied from pinned memory without waiting for the device (non_blocking)."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


def _one_ahead(items: Iterator) -> Iterator:
    """``items`` in order, each drawn before the previous one is handed out (a copy issued before its forward)."""
    pending = []
    for item in items:
        yield from pending
        pending = [item]
    yield from pending
