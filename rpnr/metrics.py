"""The re-ID metrics of the AGW/RPNR and LLCM releases, vectorised over queries (DESIGN.md sections 6 and 7)."""

from collections.abc import Callable

import numpy as np

_QUERY_CHUNK = 1024  # queries ranked at once (bounds the [Q, G] temporaries of a large test set)


def _ap_and_inp(matches: np.ndarray, keep: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AP and INP (float64 [Qv]) of the valid rows of ranked [Q, G] masks, the entries not kept squeezed out."""
    m = matches[valid].astype(np.float64)  # [Qv, G], already zero where not kept
    kept_rank = keep[valid].cumsum(1).astype(np.float64)  # rank among kept entries, 1-based
    hits = m.cumsum(1)  # [Qv, G]
    ap = (hits / np.maximum(kept_rank, 1.0) * m).sum(1) / m.sum(1)  # [Qv]
    last = m.shape[1] - 1 - np.argmax(m[:, ::-1], axis=1)  # index of the last positive
    rows = np.arange(len(last))
    return ap, hits[rows, last] / kept_rank[rows, last]  # [Qv] each


def _first_position_cmc(ranked_pids: np.ndarray, keep: np.ndarray, matches: np.ndarray, valid: np.ndarray,
                        max_rank: int) -> np.ndarray:
    """Per-query CMC rows, float32 [Q, max_rank]: matched at rank r if among the first r DISTINCT kept identities."""
    rows = np.zeros((len(ranked_pids), max_rank), dtype=np.float32)
    first_hit = np.argmax(matches, axis=1)  # position of the first match (valid rows)
    for q in np.nonzero(valid)[0]:
        rank = len(np.unique(ranked_pids[q, :first_hit[q]][keep[q, :first_hit[q]]]))  # distinct kept ids before it
        if rank < max_rank:
            rows[q, rank:] = 1.0
    return rows


def _eval_first_position(distmat: np.ndarray, q_pids, g_pids, q_camids, g_camids, dropped: Callable,
                         max_rank: int) -> tuple[np.ndarray, float, float]:
    """(cmc, mAP, mINP) with first-position CMC, without the entries ``dropped(q_pids, q_camids, pids, cams)`` marks."""
    distmat, q_pids, g_pids, q_camids, g_camids = (np.asarray(a) for a in (distmat, q_pids, g_pids, q_camids, g_camids))
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    cmc_sum = np.zeros(max_rank, dtype=np.float32)
    aps, inps = np.zeros(0), np.zeros(0)  # float64 [Qv] of the valid queries
    for start in range(0, num_q, _QUERY_CHUNK):
        rows = slice(start, start + _QUERY_CHUNK)
        indices = np.argsort(distmat[rows], axis=1)  # default kind, as the release (tie order)
        ranked_pids, ranked_cams = g_pids[indices], g_camids[indices]  # [Qc, G]
        keep = ~dropped(q_pids[rows, None], q_camids[rows, None], ranked_pids, ranked_cams)  # [Qc, G]
        matches = (ranked_pids == q_pids[rows, None]) & keep
        valid = matches.any(1)
        cmc_sum += _first_position_cmc(ranked_pids, keep, matches, valid, max_rank).sum(0)
        ap, inp = _ap_and_inp(matches, keep, valid)
        aps, inps = np.concatenate([aps, ap]), np.concatenate([inps, inp])
    if len(aps) == 0:
        raise ValueError("Error: all query identities do not appear in gallery")
    return (cmc_sum / np.float32(len(aps))).astype(np.float32), float(np.mean(aps)), float(np.mean(inps))


def sysu_ignored(q_pids, q_cams, g_pids, g_cams) -> np.ndarray:
    """SYSU-MM01's gallery rule: camera 2 (indoor RGB) is ignored for queries of camera 3 (pids unused)."""
    return (q_cams == 3) & (g_cams == 2)


def llcm_ignored(q_pids, q_cams, g_pids, g_cams) -> np.ndarray:
    """LLCM's gallery rule: images of the query's identity taken by the query's camera are ignored."""
    if q_pids is None or g_pids is None:
        raise ValueError("the same-identity-and-camera rule needs the query and gallery pids")
    return (g_pids == q_pids) & (g_cams == q_cams)


def eval_sysu(distmat: np.ndarray, q_pids, g_pids, q_camids, g_camids,
              max_rank: int = 20) -> tuple[np.ndarray, float, float]:
    """SYSU-MM01 metrics (cmc [max_rank] float32, mAP, mINP); CMC divided by the valid queries (official quirk)."""
    return _eval_first_position(distmat, q_pids, g_pids, q_camids, g_camids, sysu_ignored, max_rank)


def eval_llcm(distmat: np.ndarray, q_pids, g_pids, q_camids, g_camids,
              max_rank: int = 20) -> tuple[np.ndarray, float, float]:
    """LLCM metrics (cmc, mAP, mINP) as the LLCM release's; where fewer than ``max_rank`` distinct identities remain,
    the curve keeps its last value (the release's would be ragged), DESIGN.md section 9."""
    return _eval_first_position(distmat, q_pids, g_pids, q_camids, g_camids, llcm_ignored, max_rank)


def eval_regdb(distmat: np.ndarray, q_pids, g_pids, max_rank: int = 20) -> tuple[np.ndarray, float, float]:
    """RegDB metrics (standard CMC clipped at 1, mAP, mINP): (cmc [max_rank] float32, mAP, mINP)."""
    distmat, q_pids, g_pids = np.asarray(distmat), np.asarray(q_pids), np.asarray(g_pids)
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
