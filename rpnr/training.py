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
                sigma: float = 1.0, delta: float = 1.0) -> tuple[Tensor, dict]:
    """RPNR objective: L_ir + L_rgb + w_cross L_cross + w_hybrid L_hyb + w_nrl L_NRL.

    ``y_rgb`` covers both RGB views. Odd epochs: IR features against the RGB memory
    (labels i2r[y_ir]) and the hybrid memory (y_ir); even epochs: RGB features against
    the IR memory and the hybrid memory (labels r2i[y_rgb]). The terms are computed in
    the release's order (ir, rgb, cross, hybrid, NRL), so ``total.backward()`` updates
    the memories in its reverse order (hybrid, cross, rgb, ir), as the release does.
    """
    loss_ir = memories["ir"](f_ir, y_ir)
    loss_rgb = memories["rgb"](f_rgb, y_rgb)
    if epoch % 2 == 1:
        loss_cross = memories["rgb"](f_ir, _lookup(i2r, y_ir))
        loss_hybrid = memories["hybrid"](f_ir, y_ir)
    else:
        rgb_to_ir = _lookup(r2i, y_rgb)
        loss_cross = memories["ir"](f_rgb, rgb_to_ir)
        loss_hybrid = memories["hybrid"](f_rgb, rgb_to_ir)
    total = loss_ir + loss_rgb + w_cross * loss_cross + w_hybrid * loss_hybrid
    loss_nrl = (neighbor_relation_loss(f_rgb, f_rgb.detach(), sigma, delta)
                + neighbor_relation_loss(f_ir, f_ir.detach(), sigma, delta))
    total = total + w_nrl * loss_nrl
    parts = {"ir": loss_ir.item(), "rgb": loss_rgb.item(), "cross": loss_cross.item(),
             "hybrid": loss_hybrid.item(), "nrl": loss_nrl.item()}
    return total, parts
