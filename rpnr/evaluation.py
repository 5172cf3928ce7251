"""Test features (eval embeddings, flip-averaged) and, re-exported from :mod:`rpnr.metrics`, the
cross-modality re-ID metrics ``eval_sysu``, ``eval_regdb`` and ``eval_llcm`` (DESIGN.md sections 6 and 7)."""

from __future__ import annotations

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
def _cuda_math(allow_tf32: bool) -> Iterator[None]:
    """TF32 convolutions and matmuls on CUDA on or off, and cuDNN autotuning off, for the duration; why (TF32
    drift, autotuning cost, measured by bench/check_cuda.py on an H200): DESIGN.md section 3, "Precision"."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark)
    cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark = allow_tf32, allow_tf32, False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark = saved


@contextlib.contextmanager
def feature_precision(precision: str, device: torch.device) -> Iterator[None]:
    """Arithmetic of an eval-mode forward on CUDA: "fp32" (plain float32), "tf32" (TF32 convolutions
    and matmuls: what the release's PyTorch 1.8 did by default on Ampere and later GPUs) or "bf16"
    (bfloat16 autocast). The CPU always computes in float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    cuda = device.type == "cuda"
    bf16 = torch.autocast("cuda", dtype=torch.bfloat16) if cuda and precision == "bf16" else contextlib.nullcontext()
    with _cuda_math(allow_tf32=cuda and precision == "tf32"), bf16:
        yield


@torch.inference_mode()
def _embed_batches(model: nn.Module, batches, modal: str, flip: bool, normalize: bool,
                   device: torch.device, progress: Callable | None = None, precision: str = "fp32") -> Tensor:
    """Eval embeddings of ImageNet-normalised batches [B, 3, H, W] -> [N, 2048] float32 on ``device`` (the model in
    eval mode meanwhile, its mode restored afterwards)."""
    out, was_training = [], model.training
    model.eval()
    try:
        with feature_precision(precision, device):
            for x in batches:
                x = x.to(device, non_blocking=True)
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
    """Eval embeddings of ImageNet-normalised images [N, 3, H, W] -> [N, 2048] (on the model's device); flip=True:
    (e(x) + e(flip(x))) / 2, L2-normalised unless ``normalize`` is False (clustering uses the unnormalised mean)."""
    return _embed_batches(model, images.split(batch_size), modal, flip, normalize, next(model.parameters()).device)


def uint8_to_normalized(batch: Tensor) -> Tensor:
    """uint8 [B, H, W, 3] -> ImageNet-normalised float [B, 3, H, W] on the batch's device."""
    x = batch.permute(0, 3, 1, 2).float().div_(255)  # [B, 3, H, W]
    mean, std = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    return (x - mean) / std


def extract_features_uint8(model: nn.Module, images: np.ndarray, modal: str, batch_size: int = 64,
                           flip: bool = True, normalize: bool = True, device: torch.device | str | None = None,
                           progress: Callable | None = None, precision: str = "fp32") -> Tensor:
    """:func:`extract_features` of uint8 HWC images [N, H, W, 3] (e.g. a memory-mapped prepared array), uint8 until
    they reach the device: [N, 2048] float32 on ``device`` (default: the model's). ``progress(n)`` is called after
    each batch with its size. ``precision``: see :func:`feature_precision` (test embeddings keep plain float32)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    batches = (uint8_to_normalized(torch.from_numpy(np.array(images[start:start + batch_size])).to(device))
               for start in range(0, len(images), batch_size))  # np.array copies: memory maps are read-only
    return _embed_batches(model, batches, modal, flip, normalize, device, progress, precision)
