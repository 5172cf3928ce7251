"""Neighbour Relation Learning loss (RPNR, section 3.4; the release's RCLoss)."""

from __future__ import annotations

import torch
from torch import Tensor


def neighbor_relation_loss(emb: Tensor, target: Tensor, sigma: float = 1.0, delta: float = 1.0) -> Tensor:
    """Relaxed contrastive loss between a batch's distances D (of ``emb``) and its neighbour weights W (from
    ``target``, without gradient), as DESIGN.md section 5 defines it (L_NRL)."""
    n = emb.size(0)
    dist = torch.cdist(emb, emb)  # [N, N]
    dist = dist / dist.mean(1, keepdim=True)
    with torch.no_grad():
        w = torch.exp(-torch.cdist(target, target).pow(2) / sigma)  # [N, N]
        off_diag = 1.0 - torch.eye(n, device=emb.device, dtype=w.dtype)
        pos_weight = w * off_diag
        neg_weight = (1.0 - w) * off_diag
    pull = torch.relu(dist).pow(2) * pos_weight
    push = torch.relu(delta - dist).pow(2) * neg_weight
    return (pull.sum() + push.sum()) / (n * (n - 1))
