"""The two-stream AGW ResNet-50 (Ye et al., TPAMI 2021) of the RPNR release, DESIGN.md section 2."""

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torchvision.models import resnet50

FEATURE_DIM = 2048
NL2_INDICES = (2, 3)  # the last 2 blocks of layer2 (0-based)
NL3_INDICES = (3, 4, 5)  # the last 3 blocks of layer3


class NonLocalBlock(nn.Module):
    """Non-local block of the AGW release with its quirks (DESIGN.md section 2): ONE inner channel, ``theta . phi / N``
    without softmax, output BatchNorm at zero; submodule names match the release."""

    def __init__(self, in_channels: int, reduc_ratio: int = 2):
        super().__init__()
        self.inter_channels = reduc_ratio // reduc_ratio  # = 1 (official quirk)
        self.g = nn.Sequential(nn.Conv2d(in_channels, self.inter_channels, 1))
        self.W = nn.Sequential(nn.Conv2d(self.inter_channels, in_channels, 1), nn.BatchNorm2d(in_channels))
        nn.init.constant_(self.W[1].weight, 0.0)
        nn.init.constant_(self.W[1].bias, 0.0)
        self.theta = nn.Conv2d(in_channels, self.inter_channels, 1)
        self.phi = nn.Conv2d(in_channels, self.inter_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b = x.size(0)
        g_x = self.g(x).view(b, self.inter_channels, -1).permute(0, 2, 1)  # [B, HW, c]
        theta_x = self.theta(x).view(b, self.inter_channels, -1).permute(0, 2, 1)  # [B, HW, c]
        phi_x = self.phi(x).view(b, self.inter_channels, -1)  # [B, c, HW]
        f = torch.matmul(theta_x, phi_x) / phi_x.size(-1)  # [B, HW, HW]
        y = torch.matmul(f, g_x).permute(0, 2, 1).contiguous().view(b, self.inter_channels, *x.shape[2:])
        return self.W(y) + x


class Stem(nn.Module):
    """conv1 -> bn1 -> relu -> maxpool of a ResNet-50."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


def gem_pool(x: Tensor, p: float = 3.0) -> Tensor:
    """Generalised-mean pooling over the spatial map: ``(mean(x**p) + 1e-12) ** (1/p)``."""
    x = x.reshape(*x.shape[:2], -1)  # [B, C, HW]
    return (torch.mean(x**p, dim=-1) + 1e-12) ** (1.0 / p)  # [B, C]


def l2_normalize(x: Tensor) -> Tensor:
    """Row-wise L2 normalisation as the release's ``Normalize`` module (no epsilon)."""
    return x.div(x.pow(2).sum(1, keepdim=True).pow(0.5))


class AGW(nn.Module):
    """Two-stream AGW: ``model(x_rgb, x_ir)`` -> ``(f_rgb, f_ir)`` of one joint batch (L2-normalised in eval mode);
    ``bn_splits`` G (assignable) reproduces the release's ``nn.DataParallel`` on G GPUs (DESIGN.md section 2)."""

    def __init__(self, bn_splits: int = 1):
        super().__init__()
        self.num_features = FEATURE_DIM
        self.bn_splits = bn_splits
        self.visible_stem = Stem()
        self.infrared_stem = Stem()
        trunk = resnet50()
        trunk.layer4[0].conv2.stride = (1, 1)  # last stride 1, as the release's resnet50(last_conv_stride=1)
        trunk.layer4[0].downsample[0].stride = (1, 1)
        self.layer1, self.layer2, self.layer3, self.layer4 = trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4
        self.nl2 = nn.ModuleList([NonLocalBlock(512) for _ in NL2_INDICES])
        self.nl3 = nn.ModuleList([NonLocalBlock(1024) for _ in NL3_INDICES])
        self.bottleneck = nn.BatchNorm1d(FEATURE_DIM)
        nn.init.normal_(self.bottleneck.weight, 1.0, 0.01)
        nn.init.zeros_(self.bottleneck.bias)
        self.bottleneck.bias.requires_grad_(False)  # no shift (release)

    def stem(self, x: Tensor, modal: str) -> Tensor:
        if modal == "visible":
            return self.visible_stem(x)
        if modal == "infrared":
            return self.infrared_stem(x)
        raise ValueError(f"modal must be 'visible' or 'infrared', got {modal!r}")

    def shared(self, x: Tensor) -> Tensor:
        """Shared layers, pooling and BN neck: [B, 64, h, w] -> [B, 2048] (not normalised)."""
        x = self.layer1(x)
        x = _run_with_non_local(self.layer2, self.nl2, NL2_INDICES, x)
        x = _run_with_non_local(self.layer3, self.nl3, NL3_INDICES, x)
        x = self.layer4(x)
        return self.bottleneck(gem_pool(x))

    def embed(self, x: Tensor, modal: str) -> Tensor:
        """One modality: [B, 3, H, W] -> [B, 2048]; L2-normalised in eval mode."""
        feat = self.shared(self.stem(x, modal))
        return feat if self.training else l2_normalize(feat)

    def forward(self, x_rgb: Tensor, x_ir: Tensor, slice_index: int | None = None) -> tuple[Tensor, Tensor]:
        """(f_rgb, f_ir) of the joint batch; in training mode with ``slice_index`` j, of slice j only, without any
        running-statistics update (the low-memory step's recomputation, DESIGN.md section 11)."""
        if not self.training or (self.bn_splits <= 1 and slice_index is None):
            return self._joint(x_rgb, x_ir)
        pieces_rgb, pieces_ir = x_rgb.chunk(self.bn_splits), x_ir.chunk(self.bn_splits)
        if len(pieces_rgb) != len(pieces_ir):
            raise ValueError(f"bn_splits {self.bn_splits} cuts {x_rgb.size(0)} visible and {x_ir.size(0)} "
                             f"infrared images into {len(pieces_rgb)} and {len(pieces_ir)} slices; "
                             f"both batches need the same number of slices")
        if slice_index is not None:
            with discarded_running_stats(self):
                return self._joint(pieces_rgb[slice_index], pieces_ir[slice_index])
        outputs = [self._joint(pieces_rgb[0], pieces_ir[0])]  # slice 0 keeps its running-statistics update
        with discarded_running_stats(self):  # the other replicas' buffer updates are lost (DataParallel)
            outputs += [self._joint(r, i) for r, i in zip(pieces_rgb[1:], pieces_ir[1:])]
        return tuple(torch.cat(f, 0) for f in zip(*outputs))  # [B_rgb, 2048], [B_ir, 2048], batch order restored

    def _joint(self, x_rgb: Tensor, x_ir: Tensor) -> tuple[Tensor, Tensor]:
        n_rgb = x_rgb.size(0)
        feat = self.shared(torch.cat((self.visible_stem(x_rgb), self.infrared_stem(x_ir)), 0))  # [B_rgb + B_ir, 2048]
        feat = feat if self.training else l2_normalize(feat)
        return feat[:n_rgb], feat[n_rgb:]


@contextlib.contextmanager
def discarded_running_stats(module: nn.Module) -> Iterator[None]:
    """Inside, ``module``'s batch norms update swapped-in copies of their running statistics (old graphs stay valid)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    kept = [(m.running_mean, m.running_var, m.num_batches_tracked) for m in norms]
    for m, (mean, var, count) in zip(norms, kept):
        m.running_mean, m.running_var, m.num_batches_tracked = mean.clone(), var.clone(), count.clone()
    try:
        yield
    finally:
        for m, (mean, var, count) in zip(norms, kept):
            m.running_mean, m.running_var, m.num_batches_tracked = mean, var, count


def _run_with_non_local(layer: nn.Sequential, blocks: nn.ModuleList, indices, x: Tensor) -> Tensor:
    after = dict(zip(indices, blocks))  # layer block index -> the non-local block that follows it
    for i, block in enumerate(layer):
        x = block(x)
        if i in after:
            x = after[i](x)
    return x


__all__ = ["AGW", "NonLocalBlock", "Stem", "discarded_running_stats", "gem_pool", "l2_normalize"]
