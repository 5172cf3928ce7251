"""Neighbour Relation Learning loss (RPNR, section 3.4; the release's RCLoss)."""

import torch
from torch import Tensor


def neighbor_relation_loss(emb: Tensor, target: Tensor, sigma: float = 1.0, delta: float = 1.0) -> Tensor:
    """L_NRL (DESIGN.md section 5): relaxed contrastive loss of ``emb``'s distances against ``target``'s weights."""
    n = emb.size(0)
    dist = torch.cdist(emb, emb)  # [N, N]
    dist = dist / dist.mean(1, keepdim=True)
    with torch.no_grad():
        w = torch.exp(-torch.cdist(target, target).pow(2) / sigma)  # [N, N]
        off_diag = 1.0 - torch.eye(n, device=emb.device, dtype=w.dtype)
    pull = torch.relu(dist).pow(2) * (w * off_diag)
    push = torch.relu(delta - dist).pow(2) * ((1.0 - w) * off_diag)
    return (pull.sum() + push.sum()) / (n * (n - 1))
