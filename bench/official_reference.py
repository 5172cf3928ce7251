"""Slow loop transcription of the official RPNR algorithms: the yardstick for the fast package code.

Every function follows the official release step by step (per-row Python loops, dense numpy
matrices, the release's faiss k-NN and sklearn DBSCAN), written from the description in DESIGN.md
sections 3, 5 and 6; the OT plan (a plain Sinkhorn-Knopp loop) and the NRL loss (a loop over pairs)
are written out instead of calling POT or the tensor expressions the package uses.
It is meant for fidelity tests and benchmark baselines at small sizes, never for training.
"""

from __future__ import annotations

import heapq

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import DBSCAN
from sklearn.metrics.pairwise import cosine_similarity

__all__ = [
    "jaccard_official",
    "dbscan_official",
    "centers_official",
    "npc_prototypes_official",
    "calibrate_official",
    "match_official",
    "sinkhorn_plan_official",
    "hybrid_official",
    "eval_sysu_official",
    "eval_regdb_official",
    "nrl_official",
]


def _k_reciprocal(initial_rank: np.ndarray, i: int, k: int) -> np.ndarray:
    """Members of i's first k+1 neighbours that also hold i among their first k+1 neighbours."""
    forward = initial_rank[i, : k + 1]  # only k1 columns exist: for k = k1 this is all of them
    backward = initial_rank[forward, : k + 1]
    rows = np.where(backward == i)[0]
    return forward[rows]


def jaccard_official(features: torch.Tensor, k1: int = 30, k2: int = 6) -> np.ndarray:
    """k-reciprocal Jaccard distance [N, N] float32, computed as the official per-row loops do."""
    features = features.detach().float().cpu()  # [N, d]
    n = features.size(0)
    x = np.ascontiguousarray(features.numpy())
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    _, initial_rank = index.search(x, k1)  # [N, k1], self included
    k_half = int(np.around(k1 / 2))

    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        r_i = _k_reciprocal(initial_rank, i, k1)
        expanded = r_i
        for c in r_i:
            r_half = _k_reciprocal(initial_rank, c, k_half)
            if len(np.intersect1d(r_half, r_i)) > 2 / 3 * len(r_half):
                expanded = np.append(expanded, r_half)
        expanded = np.unique(expanded)
        dist = 2 - 2 * torch.mm(features[i].unsqueeze(0), features[expanded].t())  # [1, |E|]
        v[i, expanded] = F.softmax(-dist, dim=1).view(-1).numpy()

    if k2 != 1:
        v_qe = np.zeros_like(v, dtype=np.float32)
        for i in range(n):
            v_qe[i, :] = np.mean(v[initial_rank[i, :k2], :], axis=0)
        v = v_qe

    inv_index = [np.where(v[:, c] != 0)[0] for c in range(n)]
    jaccard = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        temp_min = np.zeros((1, n), dtype=np.float32)
        nonzero = np.where(v[i, :] != 0)[0]
        for c in nonzero:
            rows = inv_index[c]
            temp_min[0, rows] = temp_min[0, rows] + np.minimum(v[i, c], v[rows, c])
        jaccard[i] = 1 - temp_min / (2 - temp_min)
    jaccard[jaccard < 0] = 0
    return jaccard.astype(np.float32)


def dbscan_official(dist: np.ndarray, eps: float, min_samples: int = 4) -> np.ndarray:
    """DBSCAN on a precomputed distance matrix; -1 marks outliers."""
    cluster = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed", n_jobs=-1)
    return cluster.fit_predict(dist)


def centers_official(features: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """Mean feature of every cluster (label != -1), rows in sorted label order. -> [K, d]"""
    members: dict[int, list[torch.Tensor]] = {}
    for i, label in enumerate(labels):
        if label == -1:
            continue
        members.setdefault(int(label), []).append(features[i])
    return torch.stack([torch.stack(members[k], dim=0).mean(0) for k in sorted(members)], dim=0)


def npc_prototypes_official(features: torch.Tensor, labels: np.ndarray, top_k: int = 20) -> torch.Tensor:
    """Density prototypes of the calibration, one per cluster in label order. -> [K, d]"""
    features = features.detach().float().cpu()
    labels = np.asarray(labels)
    clusters = sorted(int(c) for c in np.unique(labels) if c != -1)
    prototypes = []
    for cluster_id in clusters:
        idx = np.where(labels == cluster_id)[0]  # members in dataset order
        feat = torch.stack([features[j] for j in idx], dim=0)  # [M, d]
        feat_np = feat.numpy()
        normalized = feat_np / np.linalg.norm(feat_np, axis=1, keepdims=True)
        sim = cosine_similarity(normalized)  # [M, M]
        rho = [np.sign(sim[j] - 0.5).sum() for j in range(len(idx))]
        top = heapq.nlargest(top_k, range(len(rho)), key=rho.__getitem__)  # ties: earlier member first
        prototypes.append(torch.stack([feat[j] for j in top], dim=0).mean(0))
    return torch.stack(prototypes, dim=0)


def calibrate_official(features: torch.Tensor, labels: np.ndarray, top_k: int = 20) -> np.ndarray:
    """Noisy pseudo-label calibration: relabel each non-outlier to its most similar density prototype."""
    features = features.detach().float().cpu()
    labels = np.asarray(labels)
    protos = npc_prototypes_official(features, labels, top_k).numpy()  # [K, d]
    proto_norm = np.linalg.norm(protos, axis=1)  # [K]

    new_labels = labels.copy()
    for i in range(len(labels)):
        if labels[i] == -1:
            continue
        f_i = features[i].numpy()
        sims = np.dot(f_i, protos.T) / (np.linalg.norm(f_i) * proto_norm)
        new_labels[i] = np.argmax(sims)
    return new_labels


def sinkhorn_plan_official(
    centers_rgb: torch.Tensor, centers_ir: torch.Tensor, reg: float = 5.0
) -> np.ndarray:
    """Entropic OT plan between normalised RGB and IR centres. -> [K_rgb, K_ir] float64

    The release (train_sysu.py, OTPM) builds the cost 1 / exp(cos) in float32 and calls POT's
    ``ot.sinkhorn(a, b, M, reg=5, numItermax=5000, stopThr=1e-5)`` with uniform marginals. Here the same
    plan diag(u) K diag(v), K = exp(-M / reg), comes from a plain Sinkhorn-Knopp loop run to a much
    tighter marginal error (1e-9), so it differs from the release's plan by its early stop only.
    """
    c_rgb = F.normalize(centers_rgb.detach().float().cpu(), dim=1)  # [K_rgb, d]
    c_ir = F.normalize(centers_ir.detach().float().cpu(), dim=1)  # [K_ir, d]
    cost = (1 / torch.exp(torch.mm(c_rgb, c_ir.t()))).numpy().astype(np.float64)  # [K_rgb, K_ir], float32 values
    n_rgb, n_ir = cost.shape
    a = np.full(n_rgb, 1.0 / n_rgb)
    b = np.full(n_ir, 1.0 / n_ir)
    kernel = np.exp(-cost / reg)  # [K_rgb, K_ir]
    u = np.full(n_rgb, 1.0 / n_rgb)
    v = np.full(n_ir, 1.0 / n_ir)
    plan = u[:, None] * kernel * v[None, :]
    for _ in range(100_000):
        v = b / (kernel.T @ u)  # columns sum to b
        u = a / (kernel @ v)  # rows sum to a
        plan = u[:, None] * kernel * v[None, :]
        error = max(np.abs(plan.sum(1) - a).max(), np.abs(plan.sum(0) - b).max())
        if error < 1e-9:
            break
    return plan


def match_official(
    centers_rgb: torch.Tensor, centers_ir: torch.Tensor, reg: float = 5.0
) -> tuple[np.ndarray, np.ndarray]:
    """Optimal-transport prototype matching: (r2i [K_rgb], i2r [K_ir]) from the Sinkhorn plan."""
    plan = sinkhorn_plan_official(centers_rgb, centers_ir, reg)
    return np.argmax(plan, axis=1).astype(np.int64), np.argmax(plan, axis=0).astype(np.int64)


def hybrid_official(
    centers_rgb: torch.Tensor, centers_ir: torch.Tensor, i2r: np.ndarray, calibrated_ir_labels: np.ndarray
) -> torch.Tensor:
    """Hybrid memory rows (c_ir[i] + c_rgb[i2r[i]]) / 2 for IR clusters that still carry a sample."""
    hybrid = torch.zeros_like(centers_ir)  # [K_ir, d]
    for i in np.unique(calibrated_ir_labels):
        if i == -1:
            continue
        # official quirk: clusters left empty by the calibration keep a zero row
        hybrid[i] = torch.stack([centers_ir[i], centers_rgb[i2r[i]]], dim=0).mean(0)
    return hybrid


def _average_precision(orig_cmc: np.ndarray) -> float:
    num_rel = orig_cmc.sum()
    tmp_cmc = orig_cmc.cumsum()
    tmp_cmc = np.asarray([x / (i + 1.0) for i, x in enumerate(tmp_cmc)]) * orig_cmc
    return tmp_cmc.sum() / num_rel


def eval_sysu_official(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 20,
) -> tuple[np.ndarray, float, float]:
    """SYSU-MM01 protocol: (new CMC [max_rank] float32, mAP, mINP) with the per-query official loop."""
    return _eval_first_position_official(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, "sysu")


def eval_llcm_official(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 20,
) -> tuple[np.ndarray, float, float]:
    """The LLCM release's eval_llcm (ZYK100/LLCM DEEN/eval_metrics.py): as SYSU, but a query skips the
    gallery images of its own identity taken by its own camera."""
    return _eval_first_position_official(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, "llcm")


def _eval_first_position_official(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int,
                                  removal: str) -> tuple[np.ndarray, float, float]:
    num_q, num_g = distmat.shape
    if num_g < max_rank:
        max_rank = num_g
    indices = np.argsort(distmat, axis=1)
    pred_label = g_pids[indices]
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)

    new_all_cmc, all_ap, all_inp = [], [], []
    num_valid_q = 0.0
    for q_idx in range(num_q):
        q_pid = q_pids[q_idx]
        q_camid = q_camids[q_idx]
        order = indices[q_idx]
        if removal == "sysu":
            remove = (q_camid == 3) & (g_camids[order] == 2)  # camera-3 queries skip camera-2 gallery
        else:
            remove = (g_pids[order] == q_pid) & (g_camids[order] == q_camid)  # same identity and camera
        keep = np.invert(remove)

        # official CMC: every gallery identity counts once, at its first position
        new_cmc = pred_label[q_idx][keep]
        first = np.unique(new_cmc, return_index=True)[1]
        new_cmc = np.asarray([new_cmc[j] for j in sorted(first)])
        new_match = (new_cmc == q_pid).astype(np.int32)
        new_all_cmc.append(new_match.cumsum()[:max_rank])

        orig_cmc = matches[q_idx][keep]
        if not np.any(orig_cmc):
            continue
        cmc = orig_cmc.cumsum()
        pos_max_idx = np.max(np.where(orig_cmc == 1))
        all_inp.append(cmc[pos_max_idx] / (pos_max_idx + 1.0))
        num_valid_q += 1.0
        all_ap.append(_average_precision(orig_cmc))

    assert num_valid_q > 0, "no query appears in the gallery"
    # quirk: the rows of all queries are summed but divided by the number of valid queries
    new_all_cmc = np.asarray(new_all_cmc).astype(np.float32).sum(0) / num_valid_q
    return new_all_cmc[:max_rank].astype(np.float32), float(np.mean(all_ap)), float(np.mean(all_inp))


def eval_regdb_official(
    distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, max_rank: int = 20
) -> tuple[np.ndarray, float, float]:
    """RegDB protocol: (standard CMC [max_rank] float32, mAP, mINP), no gallery removal."""
    num_q, num_g = distmat.shape
    if num_g < max_rank:
        max_rank = num_g
    indices = np.argsort(distmat, axis=1)
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)

    all_cmc, all_ap, all_inp = [], [], []
    num_valid_q = 0.0
    for q_idx in range(num_q):
        raw_cmc = matches[q_idx]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        pos_max_idx = np.max(np.where(raw_cmc == 1))
        all_inp.append(cmc[pos_max_idx] / (pos_max_idx + 1.0))
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        num_valid_q += 1.0
        all_ap.append(_average_precision(raw_cmc))

    assert num_valid_q > 0, "no query appears in the gallery"
    all_cmc = np.asarray(all_cmc).astype(np.float32).sum(0) / num_valid_q
    return all_cmc[:max_rank].astype(np.float32), float(np.mean(all_ap)), float(np.mean(all_inp))


def nrl_official(
    s_emb: torch.Tensor, t_emb: torch.Tensor, sigma: float = 1.0, delta: float = 1.0
) -> torch.Tensor:
    """Neighbour relation loss (the release's RCLoss) of a batch against the relations of a target batch,
    pair by pair.

    d_ij = ||s_i - s_j|| (d_ii = 0), D_ij = d_ij / mean_j d_ij (the row mean over all N entries, the
    diagonal zero included, as the release's ``S_dist.mean(1)`` of the cdist matrix); W_ij =
    exp(-||t_i - t_j||^2 / sigma) from the target without gradient. The loss sums, over the pairs
    i != j, W_ij relu(D_ij)^2 + (1 - W_ij) relu(delta - D_ij)^2 and divides by N (N - 1).
    """
    n = s_emb.size(0)
    zero = s_emb.new_zeros(())
    dist = [[zero if i == j else torch.sqrt(((s_emb[i] - s_emb[j]) ** 2).sum()) for j in range(n)]
            for i in range(n)]
    row_mean = [sum(dist[i]) / n for i in range(n)]
    target = t_emb.detach()
    total = zero
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            with torch.no_grad():
                w = torch.exp(-((target[i] - target[j]) ** 2).sum() / sigma)
            d = dist[i][j] / row_mean[i]
            total = total + w * F.relu(d) ** 2 + (1 - w) * F.relu(delta - d) ** 2
    return total / (n * (n - 1))
