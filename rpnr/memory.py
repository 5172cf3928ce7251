"""Cluster memories (ClusterContrast CM, ADCA/RPNR's hard/mean CMhcl) updated inside backward (DESIGN.md section 4)."""

import torch
import torch.nn.functional as F
from torch import Tensor, autograd, nn

HARD_MARGIN = 0.2  # relu(CE(mean) - r) in CMhcl


class _Memory(autograd.Function):
    """scores = x . M^T; backward updates M per sample in batch order (CM) or per class (CMhcl, :func:`_hcl_update`)."""

    @staticmethod
    def forward(ctx, inputs: Tensor, targets: Tensor, features: Tensor, momentum: float, hcl: bool) -> Tensor:
        ctx.features, ctx.momentum, ctx.hcl = features, momentum, hcl
        ctx.save_for_backward(inputs, targets)
        return inputs.mm(features.t())  # [B, K] (CM) or [B, 2K] (CMhcl)

    @staticmethod
    def backward(ctx, grad_outputs: Tensor):
        inputs, targets = ctx.saved_tensors
        features, m = ctx.features, ctx.momentum
        grad_inputs = grad_outputs.mm(features) if ctx.needs_input_grad[0] else None
        inputs = inputs.to(features.dtype)
        if ctx.hcl:
            _hcl_update(inputs, targets, features, m)
        else:
            for row, x in zip(targets.tolist(), inputs):  # CM: per sample in batch order (a row may recur)
                features[row] = m * features[row] + (1.0 - m) * x
                features[row] /= features[row].norm()
        return grad_inputs, None, None, None, None


def _hcl_update(inputs: Tensor, targets: Tensor, features: Tensor, m: float) -> None:
    """CMhcl's update of the batch's classes at once; the hard member (the first in batch order) is the least similar
    to the mean row as it was BEFORE this update (release order)."""
    same = targets[:, None] == targets[None, :]  # [B, B]: same class
    first = same.int().argmax(1)  # [B] each sample's first classmate: its values are written for the whole class
    mean = same.to(inputs.dtype) @ inputs / same.sum(1, keepdim=True)  # [B, d] the class mean
    hard = inputs[(features[targets] @ inputs.t()).masked_fill(~same, float("inf")).argmin(1)]  # [B, d]
    rows = torch.cat((targets, targets + features.size(0) // 2))  # [2B] mean rows, hard rows (repeated per member)
    new = m * features[rows] + (1.0 - m) * torch.cat((mean, hard))  # [2B, d]
    features[rows] = (new / new.norm(dim=1, keepdim=True))[torch.cat((first, first + len(first)))]


class ClusterMemory(nn.Module):
    """Cluster prototypes (an assignable ``features`` buffer) with a contrastive loss: "CM" (K rows) or "CMhcl" (2K)."""

    def __init__(self, num_features: int, num_clusters: int, temp: float = 0.05, momentum: float = 0.2,
                 mode: str = "CM"):
        super().__init__()
        if mode not in ("CM", "CMhcl"):
            raise ValueError(f"ClusterMemory mode must be 'CM' or 'CMhcl', got {mode!r}")
        self.num_features, self.num_clusters = num_features, num_clusters
        self.temp, self.momentum, self.mode = temp, momentum, mode
        self.register_buffer("features", torch.zeros(num_clusters if mode == "CM" else 2 * num_clusters, num_features))

    @classmethod
    def from_centers(cls, centers: Tensor, temp: float = 0.05, momentum: float = 0.2,
                     mode: str = "CMhcl") -> "ClusterMemory":
        """A memory initialised with the L2-normalised centres (repeated twice for CMhcl)."""
        k, d = centers.shape
        mem = cls(d, k, temp=temp, momentum=momentum, mode=mode)
        init = centers.float() if mode == "CM" else centers.float().repeat(2, 1)
        mem.features = F.normalize(init, dim=1).to(centers.device)
        return mem

    def forward(self, inputs: Tensor, targets: Tensor) -> Tensor:
        inputs = F.normalize(inputs.float(), dim=1)  # [B, d]
        targets = targets.to(inputs.device).long()
        scores = _Memory.apply(inputs, targets, self.features, self.momentum, self.mode == "CMhcl") / self.temp
        if self.mode == "CM":
            return F.cross_entropy(scores, targets)  # scores [B, K]
        mean, hard = torch.chunk(scores, 2, dim=1)  # [B, 2K] -> [B, K] each
        return 0.5 * (F.cross_entropy(hard, targets) + torch.relu(F.cross_entropy(mean, targets) - HARD_MARGIN))
