"""Test features and the cross-modality re-ID metrics (torchreid-style signatures).

``eval_sysu`` and ``eval_regdb`` reproduce the AGW/RPNR release's protocol,
vectorised over queries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from rpnr.models.agw import l2_normalize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _ap_and_inp(matches: np.ndarray, keep: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """mAP and mINP over the valid rows of ranked [Q, G] match/keep masks.

    Removed (not kept) gallery entries are squeezed out of each ranking.
    """
    m = matches[valid].astype(np.float64)  # [Qv, G], already zero where not kept
    kept_rank = keep[valid].cumsum(1).astype(np.float64)  # rank among kept entries, 1-based
    hits = m.cumsum(1)  # [Qv, G]
    ap = (hits / np.maximum(kept_rank, 1.0) * m).sum(1) / m.sum(1)
    last = m.shape[1] - 1 - np.argmax(m[:, ::-1], axis=1)  # index of the last positive
    rows = np.arange(len(last))
    inp = hits[rows, last] / kept_rank[rows, last]
    return float(np.mean(ap)), float(np.mean(inp))


def eval_sysu(distmat: np.ndarray, q_pids, g_pids, q_camids, g_camids,
              max_rank: int = 20) -> tuple[np.ndarray, float, float]:
    """SYSU-MM01 metrics: (cmc [max_rank] float32, mAP, mINP).

    Gallery images of camera 2 are ignored for queries of camera 3. CMC follows the
    release: each gallery identity counts once, at its first position; the rows of
    queries without any match are summed too, but the sum is divided by the number of
    valid queries (official quirk).
    """
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    indices = np.argsort(distmat, axis=1)  # default kind, as the release (tie order)
    ranked_pids = g_pids[indices]  # [Q, G]
    keep = ~((q_camids[:, None] == 3) & (g_camids[indices] == 2))  # [Q, G]
    matches = (ranked_pids == q_pids[:, None]) & keep
    valid = matches.any(1)
    if not valid.any():
        raise ValueError("Error: all query identities do not appear in gallery")

    # first-position CMC: a query is matched at rank r if its identity is among the
    # first r DISTINCT kept gallery identities.
    new_cmc = np.zeros((num_q, max_rank), dtype=np.float32)
    first_hit = np.argmax(matches, axis=1)  # position of the first match (valid rows)
    for q in np.nonzero(valid)[0]:
        # number of distinct identities strictly before the first hit among kept entries
        before = ranked_pids[q, :first_hit[q]][keep[q, :first_hit[q]]]
        rank = len(np.unique(before))
        if rank < max_rank:
            new_cmc[q, rank:] = 1.0
    cmc = new_cmc.sum(0) / np.float32(valid.sum())

    # mAP / mINP over the kept entries of each valid query
    m_ap, m_inp = _ap_and_inp(matches, keep, valid)
    return cmc.astype(np.float32), m_ap, m_inp


def eval_regdb(distmat: np.ndarray, q_pids, g_pids, max_rank: int = 20) -> tuple[np.ndarray, float, float]:
    """RegDB metrics (standard CMC clipped at 1, mAP, mINP): (cmc [max_rank] float32, mAP, mINP)."""
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    indices = np.argsort(distmat, axis=1)
    matches = g_pids[indices] == q_pids[:, None]  # [Q, G]
    valid = matches.any(1)
    if not valid.any():
        raise ValueError("Error: all query identities do not appear in gallery")
    cmc = (matches[valid, :max_rank].cumsum(1) > 0).astype(np.float32).sum(0) / np.float32(valid.sum())
    m_ap, m_inp = _ap_and_inp(matches, np.ones_like(matches), valid)
    return cmc.astype(np.float32), m_ap, m_inp


def _flip(x: Tensor) -> Tensor:
    return torch.flip(x, dims=[3])


PRECISIONS = ("fp32", "tf32", "bf16")


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """Plain float32 convolutions and matmuls on CUDA (TF32 off) for the duration.

    With TF32 the eval embedding of a ResNet-50 drifts ~1e-2 (relative, centred) from
    the float32 result; plain float32 stays within ~3e-5 (bench/check_cuda.py, H200).
    cuDNN autotuning is off as well: in float32 it costs 5-15 s per new batch shape
    (measured on an H200) for no gain in extraction speed.
    """
    with _cuda_math(allow_tf32=False):
        yield


@contextlib.contextmanager
def _cuda_math(allow_tf32: bool) -> Iterator[None]:
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
    if device.type != "cuda" or precision == "fp32":
        with strict_fp32():
            yield
    elif precision == "tf32":
        with _cuda_math(allow_tf32=True):
            yield
    else:
        with _cuda_math(allow_tf32=False), torch.autocast("cuda", dtype=torch.bfloat16):
            yield


@torch.inference_mode()
def _embed_batches(model: nn.Module, batches, modal: str, flip: bool, normalize: bool,
                   device: torch.device, progress: Callable | None = None, precision: str = "fp32") -> Tensor:
    out = []
    with feature_precision(precision, device):
        for x in batches:
            x = x.to(device, non_blocking=True)
            e = model.embed(x, modal).float()  # [B, 2048], L2-normalised (eval mode)
            if flip:
                e = (e + model.embed(_flip(x), modal).float()) / 2
                if normalize:
                    e = l2_normalize(e)
            out.append(e)
            if progress is not None:
                progress(x.size(0))
    return torch.cat(out, 0) if out else torch.zeros(0, 2048, device=device)


def extract_features(model: nn.Module, images: Tensor, modal: str, batch_size: int = 64,
                     flip: bool = True, normalize: bool = True) -> Tensor:
    """Eval embeddings of ImageNet-normalised images [N, 3, H, W] -> [N, 2048] (on the model's device).

    flip=False: the plain eval embedding; flip=True: (e(x) + e(flip(x))) / 2,
    L2-normalised unless ``normalize`` is False (clustering uses the unnormalised mean).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        feats = _embed_batches(model, images.split(batch_size), modal, flip, normalize, device)
    finally:
        model.train(was_training)
    return feats


def uint8_to_normalized(batch: Tensor) -> Tensor:
    """uint8 [B, H, W, 3] -> ImageNet-normalised float [B, 3, H, W] on the batch's device."""
    x = batch.permute(0, 3, 1, 2).float().div_(255)  # [B, 3, H, W]
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _uint8_batches(images: np.ndarray, batch_size: int, device: torch.device):
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.array(images[start:start + batch_size]))  # copy: memory maps are read-only
        yield uint8_to_normalized(chunk.to(device, non_blocking=True))


def extract_features_uint8(model: nn.Module, images: np.ndarray, modal: str, batch_size: int = 64,
                           flip: bool = True, normalize: bool = True, device: torch.device | str | None = None,
                           progress: Callable | None = None, precision: str = "fp32") -> Tensor:
    """Eval embeddings of uint8 HWC images [N, H, W, 3] (e.g. a memory-mapped prepared array).

    Images stay uint8 until they reach the device. Returns [N, 2048] float32 on the device.
    ``progress(n)`` is called after each batch with its size. ``precision``: see
    :func:`feature_precision` (test embeddings keep the default plain float32).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        feats = _embed_batches(model, _uint8_batches(images, batch_size, device), modal, flip, normalize,
                               device, progress, precision)
    finally:
        model.train(was_training)
    return feats
