"""Cluster memories (ClusterContrast CM and the hard/mean "CMhcl" variant of ADCA/RPNR).

The memory rows are updated inside autograd's backward, as in the release: an
update therefore happens when autograd reaches the loss term that used the
memory, i.e. in the REVERSE of the order in which the terms were computed
(DESIGN.md section 4). Every term that uses a memory updates it, cross-modal
terms included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, autograd, nn

HARD_MARGIN = 0.2  # relu(CE(mean) - r) in CMhcl


class _MemoryCM(autograd.Function):
    """scores = x . M^T; backward updates M[y] per sample in batch order."""

    @staticmethod
    def forward(ctx, inputs: Tensor, targets: Tensor, features: Tensor, momentum: float) -> Tensor:
        ctx.features = features
        ctx.momentum = momentum
        ctx.save_for_backward(inputs, targets)
        return inputs.mm(features.t())  # [B, K]

    @staticmethod
    def backward(ctx, grad_outputs: Tensor):
        inputs, targets = ctx.saved_tensors
        features, m = ctx.features, ctx.momentum
        grad_inputs = grad_outputs.mm(features) if ctx.needs_input_grad[0] else None
        inputs = inputs.to(features.dtype)
        for x, y in zip(inputs, targets.tolist()):
            features[y] = m * features[y] + (1.0 - m) * x
            features[y] /= features[y].norm()
        return grad_inputs, None, None, None


class _MemoryHCL(autograd.Function):
    """scores = x . M^T over [mean rows; hard rows]; backward updates both halves per class."""

    @staticmethod
    def forward(ctx, inputs: Tensor, targets: Tensor, features: Tensor, momentum: float) -> Tensor:
        ctx.features = features
        ctx.momentum = momentum
        ctx.save_for_backward(inputs, targets)
        return inputs.mm(features.t())  # [B, 2K]

    @staticmethod
    def backward(ctx, grad_outputs: Tensor):
        inputs, targets = ctx.saved_tensors
        features, m = ctx.features, ctx.momentum
        num = features.size(0) // 2
        grad_inputs = grad_outputs.mm(features) if ctx.needs_input_grad[0] else None
        inputs = inputs.to(features.dtype)
        classes, inverse = torch.unique(targets, return_inverse=True)
        for c_idx, c in enumerate(classes.tolist()):
            members = inputs[inverse == c_idx]  # [n_c, d], batch order
            # hard sample: lowest similarity to the mean row BEFORE this update (release order)
            hard = members[torch.argmin(members @ features[c])]
            features[c] = features[c] * m + (1.0 - m) * members.mean(0)
            features[c] /= features[c].norm()
            features[c + num] = features[c + num] * m + (1.0 - m) * hard
            features[c + num] /= features[c + num].norm()
        return grad_inputs, None, None, None


class ClusterMemory(nn.Module):
    """Memory of cluster prototypes with a contrastive (cross-entropy) loss.

    mode "CM": K rows; loss = CE(x . M^T / temp).
    mode "CMhcl": 2K rows (mean half, then hard half);
    loss = 0.5 * (CE(hard) + relu(CE(mean) - 0.2)).
    ``x`` is the L2-normalised input. ``features`` is a buffer and may be assigned.
    """

    def __init__(self, num_features: int, num_clusters: int, temp: float = 0.05, momentum: float = 0.2,
                 mode: str = "CM"):
        super().__init__()
        if mode not in ("CM", "CMhcl"):
            raise ValueError(f"ClusterMemory mode must be 'CM' or 'CMhcl', got {mode!r}")
        self.num_features = num_features
        self.num_clusters = num_clusters
        self.temp = temp
        self.momentum = momentum
        self.mode = mode
        rows = num_clusters if mode == "CM" else 2 * num_clusters
        self.register_buffer("features", torch.zeros(rows, num_features))

    @classmethod
    def from_centers(cls, centers: Tensor, temp: float = 0.05, momentum: float = 0.2,
                     mode: str = "CMhcl") -> ClusterMemory:
        """A memory initialised with the L2-normalised centres (repeated twice for CMhcl)."""
        k, d = centers.shape
        mem = cls(d, k, temp=temp, momentum=momentum, mode=mode)
        init = centers.float() if mode == "CM" else centers.float().repeat(2, 1)
        mem.features = F.normalize(init, dim=1).to(centers.device)
        return mem

    def forward(self, inputs: Tensor, targets: Tensor) -> Tensor:
        inputs = F.normalize(inputs.float(), dim=1)  # [B, d]
        targets = targets.to(inputs.device).long()
        if self.mode == "CM":
            scores = _MemoryCM.apply(inputs, targets, self.features, self.momentum) / self.temp
            return F.cross_entropy(scores, targets)
        scores = _MemoryHCL.apply(inputs, targets, self.features, self.momentum) / self.temp  # [B, 2K]
        mean, hard = torch.chunk(scores, 2, dim=1)
        return 0.5 * (F.cross_entropy(hard, targets) + torch.relu(F.cross_entropy(mean, targets) - HARD_MARGIN))
