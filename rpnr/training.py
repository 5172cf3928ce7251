"""Per-iteration objectives of stage 1 (baseline) and stage 2 (RPNR), DESIGN.md section 5."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from rpnr.losses import neighbor_relation_loss
from rpnr.memory import ClusterMemory


def _lookup(mapping, labels: Tensor) -> Tensor:
    """Map cluster labels through a partner array (r2i / i2r): [B] -> [B] long."""
    table = torch.as_tensor(mapping, dtype=torch.long, device=labels.device)  # an array or a tensor
    return table[labels.long()]


def stage1_loss(f_rgb: Tensor, f_ir: Tensor, y_rgb: Tensor, y_ir: Tensor,
                memories: Mapping[str, ClusterMemory]) -> tuple[Tensor, dict]:
    """Baseline objective L_ir + L_rgb, per-modality memories (release order: IR first): :func:`stage2_loss`
    without its stage-2 terms."""
    return stage2_loss(f_rgb, f_ir, y_rgb, y_ir, memories, None, None, 0, cross=False, hybrid=False, nrl=False)


def stage2_loss(f_rgb: Tensor, f_ir: Tensor, y_rgb: Tensor, y_ir: Tensor,
                memories: Mapping[str, ClusterMemory], r2i, i2r, epoch: int,
                w_cross: float = 0.25, w_hybrid: float = 0.5, w_nrl: float = 10.0,
                sigma: float = 1.0, delta: float = 1.0, cross: bool = True, hybrid: bool = True,
                nrl: bool = True) -> tuple[Tensor, dict]:
    """RPNR objective: L_ir + L_rgb + w_cross L_cross + w_hybrid L_hyb + w_nrl L_NRL (DESIGN.md section 5), terms
    in the release's order (memory updates: :mod:`rpnr.memory`); ``y_rgb`` covers both RGB views. The paper's
    ablations (``cross``, ``hybrid``, ``nrl`` False) leave terms out entirely: no memory update, no ``parts`` key.
    ``parts`` holds floats (reading them waits for the device; the trainer keeps :func:`stage2_terms`' tensors)."""
    total, parts = stage2_terms(f_rgb, f_ir, y_rgb, y_ir, memories, r2i, i2r, epoch, w_cross, w_hybrid, w_nrl, sigma,
                                delta, cross, hybrid, nrl)
    return total, {name: value.item() for name, value in parts.items()}


def stage2_terms(f_rgb: Tensor, f_ir: Tensor, y_rgb: Tensor, y_ir: Tensor, memories: Mapping[str, ClusterMemory],
                 r2i, i2r, epoch: int, w_cross: float = 0.25, w_hybrid: float = 0.5, w_nrl: float = 10.0,
                 sigma: float = 1.0, delta: float = 1.0, cross: bool = True, hybrid: bool = True, nrl: bool = True):
    """:func:`stage2_loss` with its terms as tensors on the device (0-dim, with their graph)."""
    parts = {"ir": memories["ir"](f_ir, y_ir), "rgb": memories["rgb"](f_rgb, y_rgb)}  # IR first, as the release
    total = parts["ir"] + parts["rgb"]
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
    return total, parts
