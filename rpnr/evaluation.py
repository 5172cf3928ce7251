"""Test features and the cross-modality re-ID metrics (torchreid-style signatures).

``eval_sysu`` and ``eval_regdb`` reproduce the AGW/RPNR release's protocol and ``eval_llcm``
the LLCM (DEEN) release's, vectorised over queries.
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


_QUERY_CHUNK = 1024  # queries ranked at once (bounds the [Q, G] temporaries of a large test set)


def _ap_and_inp(matches: np.ndarray, keep: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AP and INP (float64 [Qv]) of the valid rows of ranked [Q, G] match/keep masks.

    Removed (not kept) gallery entries are squeezed out of each ranking.
    """
    m = matches[valid].astype(np.float64)  # [Qv, G], already zero where not kept
    kept_rank = keep[valid].cumsum(1).astype(np.float64)  # rank among kept entries, 1-based
    hits = m.cumsum(1)  # [Qv, G]
    ap = (hits / np.maximum(kept_rank, 1.0) * m).sum(1) / m.sum(1)  # [Qv]
    last = m.shape[1] - 1 - np.argmax(m[:, ::-1], axis=1)  # index of the last positive
    rows = np.arange(len(last))
    inp = hits[rows, last] / kept_rank[rows, last]  # [Qv]
    return ap, inp


def _first_position_cmc(ranked_pids: np.ndarray, keep: np.ndarray, matches: np.ndarray, valid: np.ndarray,
                        max_rank: int) -> np.ndarray:
    """Per-query first-position CMC rows, float32 [Q, max_rank] (zero rows for invalid queries).

    A query is matched at rank r if its identity is among the first r DISTINCT kept gallery
    identities (the release's ``np.unique(..., return_index=True)`` CMC).
    """
    rows = np.zeros((len(ranked_pids), max_rank), dtype=np.float32)
    first_hit = np.argmax(matches, axis=1)  # position of the first match (valid rows)
    for q in np.nonzero(valid)[0]:
        # distinct identities strictly before the first hit among kept entries
        before = ranked_pids[q, :first_hit[q]][keep[q, :first_hit[q]]]
        rank = len(np.unique(before))
        if rank < max_rank:
            rows[q, rank:] = 1.0
    return rows


def _eval_first_position(distmat: np.ndarray, q_pids, g_pids, q_camids, g_camids, dropped: Callable,
                         max_rank: int) -> tuple[np.ndarray, float, float]:
    """(cmc [max_rank] float32, mAP, mINP) with first-position CMC, ignoring the gallery entries
    ``dropped(q_pids [Q, 1], q_camids [Q, 1], ranked_pids [Q, G], ranked_cams [Q, G]) -> bool [Q, G]``.

    The CMC rows of all queries are summed (those without a kept match add zeros) and divided by the
    number of queries with a kept match; mAP and mINP are means over those queries (the release's
    eval_sysu / eval_llcm). Queries are ranked in chunks; each row is sorted on its own, as the release.
    """
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    cmc_sum = np.zeros(max_rank, dtype=np.float32)
    aps, inps = [], []
    for start in range(0, num_q, _QUERY_CHUNK):
        rows = slice(start, start + _QUERY_CHUNK)
        indices = np.argsort(distmat[rows], axis=1)  # default kind, as the release (tie order)
        ranked_pids, ranked_cams = g_pids[indices], g_camids[indices]  # [Qc, G]
        keep = ~dropped(q_pids[rows, None], q_camids[rows, None], ranked_pids, ranked_cams)  # [Qc, G]
        matches = (ranked_pids == q_pids[rows, None]) & keep
        valid = matches.any(1)
        cmc_sum += _first_position_cmc(ranked_pids, keep, matches, valid, max_rank).sum(0)
        ap, inp = _ap_and_inp(matches, keep, valid)
        aps.append(ap)
        inps.append(inp)
    num_valid = sum(len(ap) for ap in aps)
    if num_valid == 0:
        raise ValueError("Error: all query identities do not appear in gallery")
    cmc = cmc_sum / np.float32(num_valid)
    return cmc.astype(np.float32), float(np.mean(np.concatenate(aps))), float(np.mean(np.concatenate(inps)))


def sysu_ignored(q_pids, q_cams, g_pids, g_cams) -> np.ndarray:
    """SYSU-MM01's gallery rule (broadcast bool): camera 2 (indoor RGB) is ignored for queries of
    camera 3 (indoor IR), the same room. The pids are not used (may be None)."""
    return (q_cams == 3) & (g_cams == 2)


def llcm_ignored(q_pids, q_cams, g_pids, g_cams) -> np.ndarray:
    """LLCM's gallery rule (broadcast bool): images of the query's identity taken by the query's camera."""
    if q_pids is None or g_pids is None:
        raise ValueError("the same-identity-and-camera rule needs the query and gallery pids")
    return (g_pids == q_pids) & (g_cams == q_cams)


def eval_sysu(distmat: np.ndarray, q_pids, g_pids, q_camids, g_camids,
              max_rank: int = 20) -> tuple[np.ndarray, float, float]:
    """SYSU-MM01 metrics: (cmc [max_rank] float32, mAP, mINP).

    Gallery images of camera 2 are ignored for queries of camera 3. CMC follows the
    release: each gallery identity counts once, at its first position; the rows of
    queries without any match are summed too, but the sum is divided by the number of
    valid queries (official quirk).
    """
    return _eval_first_position(distmat, q_pids, g_pids, q_camids, g_camids, sysu_ignored, max_rank)


def eval_llcm(distmat: np.ndarray, q_pids, g_pids, q_camids, g_camids,
              max_rank: int = 20) -> tuple[np.ndarray, float, float]:
    """LLCM metrics as the LLCM release's ``eval_llcm``: (cmc [max_rank] float32, mAP, mINP).

    Gallery images of the query's identity AND camera are ignored (camera k is one physical
    camera in both modalities). As ``eval_sysu``: first-position CMC (each gallery identity
    counts once) summed over all queries and divided by the number of queries whose identity
    remains in the gallery; mAP and mINP over those queries. Where fewer than ``max_rank``
    distinct identities remain (the release's curves would then be ragged) the curve keeps its
    last value.
    """
    return _eval_first_position(distmat, q_pids, g_pids, q_camids, g_camids, llcm_ignored, max_rank)


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
    ap, inp = _ap_and_inp(matches, np.ones_like(matches), valid)
    return cmc.astype(np.float32), float(np.mean(ap)), float(np.mean(inp))


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
