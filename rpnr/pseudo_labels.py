"""Pseudo labels (DESIGN.md section 3): the release's k-reciprocal Jaccard distance, DBSCAN, centres and NPC."""

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.cluster import DBSCAN
from torch import Tensor

_KNN_BLOCK = 2048  # rows per block of the kNN; bounds the temporary memory
_PAIR_BUDGET = 8_000_000  # pairs materialised at once in the min-sum accumulation (~50 bytes each)


def knn(features: Tensor, k: int) -> Tensor:
    """Exact k nearest neighbours by squared L2, self included: [N, d] -> [N, k] int64, nearest first."""
    return _knn_with_gram(features, k)[0]


def _knn_with_gram(features: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(indices [N, k] int64, dot products [N, k] float32) of the k nearest neighbours by (squared distance, index)."""
    x = features.float()
    n = x.size(0)
    k = min(k, n)
    sq = (x * x).sum(1)  # [N]
    best_key = torch.full((n, k), torch.iinfo(torch.int64).max, dtype=torch.long, device=x.device)
    best_dot = torch.zeros((n, k), device=x.device)
    starts = list(range(0, n, _KNN_BLOCK))
    for bi, s0 in enumerate(starts):
        e0 = min(s0 + _KNN_BLOCK, n)
        for s1 in starts[bi:]:
            e1 = min(s1 + _KNN_BLOCK, n)
            gram = x[s0:e0] @ x[s1:e1].T  # [B0, B1]
            d = sq[s0:e0, None] + sq[None, s1:e1] - 2 * gram  # squared L2
            _merge_topk(best_key, best_dot, s0, e0, d, gram, s1)
            if s1 != s0:
                _merge_topk(best_key, best_dot, s1, e1, d.T, gram.T, s0)  # the Gram matrix is symmetric
    return best_key & 0xFFFFFFFF, best_dot


def _merge_topk(best_key: Tensor, best_dot: Tensor, r0: int, r1: int, d: Tensor, gram: Tensor, c0: int) -> None:
    k = best_key.size(1)
    # int64 keys that sort as (d, column index): float32 bits made monotonic, the index in the low 32 bits
    bits = d.contiguous().view(torch.int32).long()  # [B, C]
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # signed, monotonic in d
    keys = (bits << 32) | torch.arange(c0, c0 + d.size(1), device=d.device)
    cand_key, cand_pos = torch.topk(keys, min(k, d.size(1)), dim=1, largest=False)  # [B, kk]
    all_key = torch.cat([best_key[r0:r1], cand_key], 1)
    all_dot = torch.cat([best_dot[r0:r1], torch.gather(gram, 1, cand_pos)], 1)
    top_key, pos = torch.topk(all_key, k, dim=1, largest=False, sorted=True)
    best_key[r0:r1] = top_key
    best_dot[r0:r1] = torch.gather(all_dot, 1, pos)


def _reciprocal_mask(rank: Tensor, k: int) -> Tensor:
    """mask[i, j]: rank[i, j] (j < k) has i among its own first k neighbours. [N, k] bool."""
    fwd = rank[:, :k]  # [N, k]
    mask = torch.empty(fwd.shape, dtype=torch.bool, device=rank.device)
    ids = torch.arange(rank.size(0), device=rank.device)
    step = max(1, 4_000_000 // (k * k))
    for s in range(0, rank.size(0), step):
        back = fwd[fwd[s:s + step]]  # [b, k, k]
        mask[s:s + step] = (back == ids[s:s + step, None, None]).any(-1)
    return mask


def _expanded_pairs(rank: Tensor, k1: int) -> tuple[Tensor, Tensor]:
    """(rows, cols) of the expanded k-reciprocal sets E(i), sorted by (row, col), unique."""
    n = rank.size(0)
    k1 = min(k1, rank.size(1))
    kh = min(int(np.around(k1 / 2)) + 1, rank.size(1))  # the release's k_reciprocal_neigh(.., k1/2) keeps k+1
    r_mask = _reciprocal_mask(rank, k1)  # [N, k1]
    h_mask = _reciprocal_mask(rank, kh)  # [N, kh]
    r_pad = torch.where(r_mask, rank[:, :k1], torch.full_like(rank[:, :k1], -1))  # R(i), -1 = none
    h_pad = torch.where(h_mask, rank[:, :kh], torch.full_like(rank[:, :kh], -1))  # R_half(i)
    h_size = h_mask.sum(1)  # [N]
    keys = []  # row * n + col of each block's pairs, sorted and unique
    step = max(1, 3_000_000 // (k1 * kh * k1))
    for s in range(0, n, step):
        e = min(s + step, n)
        r_blk = r_pad[s:e]  # [b, k1]
        cand = r_blk.clamp(min=0)
        hc = h_pad[cand]  # [b, k1, kh]   R_half of each candidate
        inside = (hc[..., None] == r_blk[:, None, None, :]).any(-1) & (hc >= 0)  # [b, k1, kh]
        # |R_half(c) n R(i)| > 2/3 |R_half(c)|, for real candidates only
        accept = (r_blk >= 0) & (inside.sum(-1).double() > (2.0 / 3.0) * h_size[cand].double())  # [b, k1]
        grid = torch.arange(s, e, device=rank.device)[:, None].expand(-1, k1)  # [b, k1] row of each candidate
        rows_cat = torch.cat([grid.reshape(-1), grid[accept][:, None].expand(-1, kh).reshape(-1)])
        cols_cat = torch.cat([r_blk.reshape(-1), hc[accept].reshape(-1)])
        keep = cols_cat >= 0
        keys.append(torch.unique(rows_cat[keep] * n + cols_cat[keep]))
    key = torch.cat(keys)
    return key // n, key % n


class _SparseRows:
    """A sparse N x N matrix in CSR form (sorted columns) with a CSC view."""

    def __init__(self, rows: Tensor, cols: Tensor, vals: Tensor, n: int):
        self.n, self.rows, self.cols, self.vals = n, rows, cols, vals
        counts = torch.bincount(rows, minlength=n)
        self.indptr = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])  # [N + 1]
        order = torch.argsort(cols * n + rows)  # column-major
        self.c_rows, self.c_vals = rows[order], vals[order]
        self.c_counts = torch.bincount(cols, minlength=n)
        self.c_indptr = torch.cat([self.c_counts.new_zeros(1), torch.cumsum(self.c_counts, 0)])  # [N + 1]


def _pair_dots(x: Tensor, rank: Tensor, gram: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """f_i.f_j of the (row, col) pairs: the kNN's products where j is among i's neighbours, computed otherwise."""
    n = rank.size(0)
    key_sorted, order = torch.sort((torch.arange(n, device=x.device)[:, None] * n + rank).reshape(-1))  # [N*k]
    key = rows * n + cols
    pos = torch.searchsorted(key_sorted, key).clamp_(max=key_sorted.numel() - 1)
    found = key_sorted[pos] == key
    dots = torch.empty(key.numel(), device=x.device)
    dots[found] = gram.reshape(-1)[order[pos[found]]]
    miss = torch.nonzero(~found).view(-1)
    step = max(1, 8_000_000 // x.size(1))
    for s in range(0, miss.numel(), step):
        m = miss[s:s + step]
        dots[m] = (x[rows[m]] * x[cols[m]]).sum(1)
    return dots


def _encoding(features: Tensor, k1: int, k2: int) -> _SparseRows:
    """V (softmax over each expanded set of -(2 - 2 f_i.f_j)), then query expansion over k2 neighbours."""
    x = _prepare(features)
    n = x.size(0)
    rank, gram = _knn_with_gram(x, k1)
    rows, cols = _expanded_pairs(rank, k1)
    ex = torch.exp(-(2 - 2 * _pair_dots(x, rank, gram, rows, cols)))  # exponent in [-4, 0]: no max shift needed
    denom = torch.zeros(n, device=x.device).index_add_(0, rows, ex)
    vals = ex / denom[rows]  # softmax within each row
    k2 = min(k2, rank.size(1))
    if k2 != 1:
        # V_qe[i] = mean of V rows of i's k2 nearest neighbours
        counts = torch.bincount(rows, minlength=n)
        indptr = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])  # [N + 1]
        src = rank[:, :k2].reshape(-1)  # [N*k2] neighbour rows
        dst = torch.arange(n, device=x.device).repeat_interleave(k2)
        lens = counts[src]
        dst_e = dst.repeat_interleave(lens)
        start = indptr[src].repeat_interleave(lens)
        offs = torch.arange(dst_e.numel(), device=x.device) - (torch.cumsum(lens, 0) - lens).repeat_interleave(lens)
        ent = start + offs
        key = dst_e * n + cols[ent]
        ukey, inv = torch.unique(key, return_inverse=True)
        summed = torch.zeros(ukey.numel(), device=x.device).index_add_(0, inv, vals[ent])
        rows, cols, vals = ukey // n, ukey % n, summed / k2
        nz = vals != 0
        rows, cols, vals = rows[nz], cols[nz], vals[nz]
    return _SparseRows(rows, cols, vals, n)


def _min_sum_blocks(v: _SparseRows, out: np.ndarray | None = None) -> Iterator[tuple[int, int, Tensor]]:
    """(r0, r1, s) row blocks of s[i - r0, j] = sum_c min(V[i, c], V[j, c]); views of ``out``'s rows on the CPU."""
    n, dev = v.n, v.vals.device
    per_entry = v.c_counts[v.cols]  # [nnz] pairs of each CSR entry: the size of its column
    per_row = torch.zeros(n, dtype=torch.long, device=dev).index_add_(0, v.rows, per_entry).cpu().numpy()
    max_rows = max(1, min(n, _PAIR_BUDGET // max(1, n)))
    r0 = 0
    while r0 < n:
        r1 = r0 + 1
        budget = int(per_row[r0])
        while r1 < n and r1 - r0 < max_rows and budget + per_row[r1] <= _PAIR_BUDGET:
            budget += int(per_row[r1])
            r1 += 1
        e0, e1 = int(v.indptr[r0]), int(v.indptr[r1])
        if out is not None and dev.type == "cpu":
            s = torch.from_numpy(out[r0:r1]).view(-1).zero_()
        else:
            s = torch.zeros((r1 - r0) * n, device=dev)
        if e1 > e0:
            rows, cols, vals, lens = v.rows[e0:e1], v.cols[e0:e1], v.vals[e0:e1], per_entry[e0:e1]
            e_idx = torch.repeat_interleave(torch.arange(e1 - e0, device=dev), lens)
            offs = torch.arange(e_idx.numel(), device=dev) - (torch.cumsum(lens, 0) - lens)[e_idx]
            other = v.c_indptr[cols][e_idx] + offs  # index into the CSC arrays
            pair_val = torch.minimum(vals[e_idx], v.c_vals[other])
            target = (rows[e_idx] - r0) * n + v.c_rows[other]
            s.index_add_(0, target, pair_val)
        yield r0, r1, s.view(r1 - r0, n)
        r0 = r1


def _jaccard_from_min_sum(s: Tensor) -> Tensor:
    step = max(1, 4_000_000 // max(1, s.size(1)))
    for r in range(0, s.size(0), step):
        blk = s[r:r + step]
        torch.sub(1, blk / (2 - blk), out=blk)
        blk.clamp_(min=0)
    return s


def _prepare(features) -> Tensor:
    x = torch.as_tensor(features)
    if x.dim() != 2:
        raise ValueError(f"features must be [N, d], got shape {tuple(x.shape)}")
    return x.detach().float()


def jaccard_distance(features: Tensor, k1: int = 30, k2: int = 6) -> np.ndarray:
    """k-reciprocal Jaccard distance (Zhong et al. 2017) as the release computes it: [N, d] -> [N, N] float32;
    features are used as given (the flip-averaged embeddings are not re-normalised)."""
    v = _encoding(features, k1, k2)
    out = np.empty((v.n, v.n), dtype=np.float32)
    for r0, r1, s in _min_sum_blocks(v, out):
        d = _jaccard_from_min_sum(s)
        if d.device.type != "cpu":
            out[r0:r1] = d.cpu().numpy()
    return out


def _dbscan_blocks(blocks, n: int, eps: float, min_samples: int) -> np.ndarray:
    """sklearn's DBSCAN labels (int64) on the sparse graph of the pairs within ``eps`` of (r0, r1, dist) blocks."""
    indptr = [np.zeros(1, dtype=np.int64)]
    indices, data = [np.zeros(0, dtype=np.int64)], [np.zeros(0)]
    offset = 0
    for r0, r1, d in blocks:
        d = torch.as_tensor(d)
        rr, cc = torch.nonzero(d <= eps, as_tuple=True)
        counts = torch.bincount(rr, minlength=r1 - r0).cpu().numpy()
        indptr.append(offset + np.cumsum(counts))
        offset += int(counts.sum())
        indices.append(cc.cpu().numpy())
        data.append(d[rr, cc].cpu().numpy().astype(np.float64))
    graph = sp.csr_matrix((np.concatenate(data), np.concatenate(indices), np.concatenate(indptr)), shape=(n, n))
    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed", n_jobs=-1).fit_predict(graph).astype(np.int64)


def dbscan(dist: np.ndarray, eps: float, min_samples: int = 4) -> np.ndarray:
    """sklearn's DBSCAN labels on a precomputed distance matrix: [N] int64, -1 = outlier."""
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    dist = np.asarray(dist)
    n = dist.shape[0]
    step = max(1, 16_000_000 // max(1, n))
    blocks = ((r0, min(r0 + step, n), torch.from_numpy(dist[r0:r0 + step])) for r0 in range(0, n, step))
    return _dbscan_blocks(blocks, n, eps, min_samples)


def cluster_features(features: Tensor, eps: float, k1: int = 30, k2: int = 6, min_samples: int = 4) -> np.ndarray:
    """Labels of ``dbscan(jaccard_distance(features, k1, k2), eps, min_samples)`` without the dense matrix."""
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    v = _encoding(features, k1, k2)
    blocks = ((r0, r1, _jaccard_from_min_sum(s)) for r0, r1, s in _min_sum_blocks(v))
    return _dbscan_blocks(blocks, v.n, eps, min_samples)


def _labels(labels) -> tuple[np.ndarray, np.ndarray]:
    """(labels as int64 [N], the cluster ids in increasing order, outliers -1 left out)."""
    labels = np.asarray(labels).astype(np.int64)
    return labels, np.unique(labels[labels >= 0])


def cluster_centers(features: Tensor, labels) -> Tensor:
    """Mean feature of each cluster, rows in increasing label order (outliers ignored): [K, d]."""
    x = _prepare(features)
    labels, ids = _labels(labels)
    if ids.size == 0:
        return x.new_zeros((0, x.size(1)))
    keep = labels >= 0
    row_t = torch.as_tensor(np.searchsorted(ids, labels[keep]), device=x.device)
    sums = x.new_zeros((ids.size, x.size(1))).index_add_(0, row_t, x[torch.as_tensor(keep, device=x.device)])
    counts = torch.bincount(row_t, minlength=ids.size).to(x.dtype)
    return sums / counts[:, None]


def npc_prototypes(features: Tensor, labels, top_k: int = 20) -> Tensor:
    """NPC's density prototypes (DESIGN.md section 3 step 5): [K, d], rows in increasing label order; ties in density
    go to the earlier member in dataset order (the release's ``heapq.nlargest``)."""
    x = _prepare(features)
    labels, ids = _labels(labels)
    protos = x.new_zeros((ids.size, x.size(1)))
    order = np.argsort(labels, kind="stable")  # members grouped by label, dataset order inside
    bounds = np.searchsorted(labels[order], np.concatenate([ids, [np.iinfo(np.int64).max]]))
    normed = x / x.norm(dim=1, keepdim=True)
    for c in range(ids.size):
        members = torch.as_tensor(order[bounds[c]:bounds[c + 1]], device=x.device)
        f = normed[members]  # [n_c, d]
        rho = torch.sign(f @ f.T - 0.5).sum(1)  # [n_c]
        top = torch.as_tensor(np.argsort(-rho.cpu().numpy(), kind="stable")[:top_k], device=x.device)
        protos[c] = x[members[top]].mean(0)
    return protos


def calibrate_labels(features: Tensor, labels, top_k: int = 20) -> np.ndarray:
    """NPC: each non-outlier relabelled to the row of its most cosine-similar density prototype: [N] int64."""
    x = _prepare(features)
    labels, ids = _labels(labels)
    out = labels.copy()
    if ids.size == 0:
        return out
    protos = npc_prototypes(x, labels, top_k)
    protos_n = protos / protos.norm(dim=1, keepdim=True)  # [K, d]
    idx = np.nonzero(labels >= 0)[0]
    for chunk in np.split(idx, np.arange(8192, idx.size, 8192)):  # 8192 samples at a time
        sims = x[torch.as_tensor(chunk, device=x.device)] @ protos_n.T  # [b, K]; |f_i| does not change the argmax
        out[chunk] = sims.argmax(1).cpu().numpy()
    return out
