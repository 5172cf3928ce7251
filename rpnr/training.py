"""Per-iteration objectives of stage 1 (baseline) and stage 2 (RPNR), DESIGN.md section 5."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from rpnr.losses import neighbor_relation_loss
from rpnr.memory import ClusterMemory


def _lookup(mapping, labels: Tensor) -> Tensor:
    """Map cluster labels through a partner array (r2i / i2r): [B] -> [B] long."""
    table = torch.as_tensor(np.asarray(mapping), dtype=torch.long, device=labels.device)
    return table[labels.long()]


def stage1_loss(f_rgb: Tensor, f_ir: Tensor, y_rgb: Tensor, y_ir: Tensor,
                memories: Mapping[str, ClusterMemory]) -> tuple[Tensor, dict]:
    """Baseline objective: L_ir + L_rgb with per-modality memories (release order: IR first)."""
    loss_ir = memories["ir"](f_ir, y_ir)
    loss_rgb = memories["rgb"](f_rgb, y_rgb)
    total = loss_ir + loss_rgb
    return total, {"ir": loss_ir.item(), "rgb": loss_rgb.item()}


def stage2_loss(f_rgb: Tensor, f_ir: Tensor, y_rgb: Tensor, y_ir: Tensor,
                memories: Mapping[str, ClusterMemory], r2i, i2r, epoch: int,
                w_cross: float = 0.25, w_hybrid: float = 0.5, w_nrl: float = 10.0,
                sigma: float = 1.0, delta: float = 1.0, cross: bool = True, hybrid: bool = True,
                nrl: bool = True) -> tuple[Tensor, dict]:
    """RPNR objective: L_ir + L_rgb + w_cross L_cross + w_hybrid L_hyb + w_nrl L_NRL.

    ``y_rgb`` covers both RGB views. Odd epochs: IR features against the RGB memory
    (labels i2r[y_ir]) and the hybrid memory (y_ir); even epochs: RGB features against
    the IR memory and the hybrid memory (labels r2i[y_rgb]). The terms are computed in
    the release's order (ir, rgb, cross, hybrid, NRL), so ``total.backward()`` updates
    the memories in its reverse order (hybrid, cross, rgb, ir), as the release does.
    The paper's ablations leave terms out entirely (``cross``, ``hybrid``, ``nrl`` False; a left-out
    memory term updates no memory), and ``parts`` then lacks them.
    """
    loss_ir = memories["ir"](f_ir, y_ir)
    loss_rgb = memories["rgb"](f_rgb, y_rgb)
    total, parts = loss_ir + loss_rgb, {"ir": loss_ir, "rgb": loss_rgb}
    odd = epoch % 2 == 1
    feats, targets = (f_ir, y_ir) if odd else (f_rgb, _lookup(r2i, y_rgb) if cross or hybrid else None)
    if cross:
        parts["cross"] = memories["rgb"](f_ir, _lookup(i2r, y_ir)) if odd else memories["ir"](f_rgb, targets)
        total = total + w_cross * parts["cross"]
    if hybrid:
        parts["hybrid"] = memories["hybrid"](feats, targets)
        total = total + w_hybrid * parts["hybrid"]
    if nrl:
        parts["nrl"] = (neighbor_relation_loss(f_rgb, f_rgb.detach(), sigma, delta)
                        + neighbor_relation_loss(f_ir, f_ir.detach(), sigma, delta))
        total = total + w_nrl * parts["nrl"]
    return total, {name: value.item() for name, value in parts.items()}
