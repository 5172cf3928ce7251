"""Cross-modality cluster matching (DESIGN.md section 3.6): OTPM, the matchers by name, the hybrid centres."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def transport_plan(centers_rgb: Tensor, centers_ir: Tensor, reg: float = 5.0) -> np.ndarray:
    """Sinkhorn plan [K_rgb, K_ir] between the normalised centres, cost exp(-cos), uniform marginals."""
    rgb, ir = (F.normalize(c.detach().float().cpu(), dim=1) for c in (centers_rgb, centers_ir))
    cost = (1 / torch.mm(rgb, ir.T).exp()).numpy()  # [K_rgb, K_ir] the release's exp(-cos): 1 / exp(cos), float32
    import ot  # POT takes seconds to import: only stage 2 needs it
    a, b = (np.ones(k) / k for k in cost.shape)  # uniform marginals
    return ot.sinkhorn(a, b, cost, reg=reg, numItermax=5000, stopThr=1e-5)


def match_clusters(centers_rgb: Tensor, centers_ir: Tensor, reg: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """(r2i, i2r): the IR partner of each RGB cluster (plan row argmax) and the RGB partner of each IR cluster."""
    plan = transport_plan(centers_rgb, centers_ir, reg)
    return np.argmax(plan, axis=1).astype(np.int64), np.argmax(plan, axis=0).astype(np.int64)  # r2i, i2r


def hybrid_centers(centers_rgb: Tensor, centers_ir: Tensor, i2r, present=None) -> Tensor:
    """Hybrid memory centres: row i = (c_ir[i] + c_rgb[i2r[i]]) / 2; the release leaves zero the rows of IR clusters
    without a sample after calibration (``present``, bool [K_ir], default: all present)."""
    i2r = torch.as_tensor(np.asarray(i2r), dtype=torch.long, device=centers_ir.device)
    hybrid = torch.stack([centers_ir, centers_rgb.to(centers_ir.device)[i2r]], dim=0).mean(0)  # [K_ir, d]
    if present is not None:
        mask = torch.as_tensor(np.asarray(present), dtype=torch.bool, device=hybrid.device)
        hybrid = hybrid * mask[:, None].to(hybrid.dtype)
    return hybrid


def optimal_transport(centers_rgb: Tensor, centers_ir: Tensor, settings) -> tuple[np.ndarray, np.ndarray]:
    """OTPM with the run's ``ot_reg``: :func:`match_clusters`."""
    return match_clusters(centers_rgb, centers_ir, reg=settings.ot_reg)


# matcher(centers_rgb [K_rgb, d], centers_ir [K_ir, d], settings) -> (r2i [K_rgb], i2r [K_ir]): every cluster a partner
MATCHERS = {"ot": optimal_transport}
