"""Training augmentation batched on the device: the release's pipelines (DESIGN.md sections 5, 8)."""
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rpnr.evaluation import uint8_to_normalized

PAD = 10
ERASE_PROB = 0.5
ERASE_AREA = (0.02, 0.4)
ERASE_ASPECT = 0.3  # aspect ratio drawn from U(0.3, 1 / 0.3)
ERASE_ATTEMPTS = 100
ERASE_FILL = (0.4914, 0.4822, 0.4465)  # per channel, written into the NORMALISED tensor (release)
GREY_WEIGHTS = (0.2989, 0.5870, 0.1140)


def _randint(low: int | Tensor, high: int | Tensor, size: int) -> Tensor:
    """Uniform integers in [low, high] (inclusive, like ``random.randint``): [size] long."""
    u = torch.rand(size, dtype=torch.float64)
    span = torch.as_tensor(high, dtype=torch.float64) - torch.as_tensor(low, dtype=torch.float64) + 1
    return (torch.as_tensor(low, dtype=torch.float64) + torch.floor(u * span)).long()


@dataclass
class ViewDraws:
    """The random parameters of one training view for a batch of B images (CPU tensors [B])."""

    top: Tensor  # long, crop offset in the padded image
    left: Tensor  # long
    flip: Tensor  # bool, horizontal flip
    erase: Tensor  # bool, one rectangle erased
    erase_top: Tensor  # long
    erase_left: Tensor  # long
    erase_h: Tensor  # long
    erase_w: Tensor  # long
    channel: Tensor | None = None  # long: channel copied into all three (exchange 0..2; adaptive grey 0..3)
    grey: Tensor | None = None  # bool: adaptive grey converts (when channel == 3)

    def rows(self, index) -> "ViewDraws":
        """The draws of the rows ``index`` (slice, int array or bool mask)."""
        index = torch.as_tensor(index) if isinstance(index, np.ndarray) else index
        return ViewDraws(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
                            for f in fields(self)})


def _draw_crop(b: int, pad: int, flip_prob: float) -> tuple[Tensor, Tensor, Tensor]:
    return _randint(0, 2 * pad, b), _randint(0, 2 * pad, b), torch.rand(b) < flip_prob  # top, left, flip: [B] each


def _draw_erasing(b: int, h: int, w: int, prob: float) -> tuple[Tensor, ...]:
    """(apply, top, left, eh, ew), each [B]: the first of up to 100 (area, aspect) draws that fits."""
    apply = torch.rand(b) < prob  # [B]
    area = torch.empty(b, ERASE_ATTEMPTS, dtype=torch.float64).uniform_(*ERASE_AREA) * (h * w)  # [B, 100]
    aspect = torch.empty(b, ERASE_ATTEMPTS, dtype=torch.float64).uniform_(ERASE_ASPECT, 1 / ERASE_ASPECT)
    eh = torch.round(torch.sqrt(area * aspect)).long()  # [B, 100]; Python round and torch.round: half to even
    ew = torch.round(torch.sqrt(area / aspect)).long()  # [B, 100]
    fits = (ew < w) & (eh < h)  # [B, 100]
    first = torch.argmax(fits.int(), dim=1)  # [B] first attempt that fits
    rows = torch.arange(b)
    apply &= fits[rows, first]
    eh, ew = eh[rows, first], ew[rows, first]  # [B]
    return apply, _randint(0, h - eh, b), _randint(0, w - ew, b), eh, ew  # top, left drawn after the size: [B]


def draw_view(batch: int, height: int, width: int, channel: str = "none") -> ViewDraws:
    """One view's parameters for ``batch`` images; ``channel``: "none" (RGB view 1), "exchange" (2), "adaptive_grey"."""
    draws = ViewDraws(*_draw_crop(batch, PAD, 0.5), *_draw_erasing(batch, height, width, ERASE_PROB))
    if channel == "exchange":
        draws.channel = torch.randint(0, 3, (batch,))  # [B]
    elif channel == "adaptive_grey":
        draws.channel = torch.randint(0, 4, (batch,))  # [B]
        draws.grey = (draws.channel == 3) & (torch.rand(batch) < 0.5)  # [B]
    elif channel != "none":
        raise ValueError(f"channel must be 'none', 'exchange' or 'adaptive_grey', got {channel!r}")
    return draws


def resize_uint8(images: Tensor, height: int, width: int) -> Tensor:
    """uint8 [B, h, w, 3] -> uint8 [B, height, width, 3], bicubic; a no-op at the prepared size."""
    if images.shape[1:3] == (height, width):
        return images
    x = images.permute(0, 3, 1, 2).float()  # [B, 3, h, w]
    x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def _crop_with(images: Tensor, top: Tensor, left: Tensor, flip: Tensor, pad: int) -> Tensor:
    b, h, w, _ = images.shape
    device = images.device
    padded = images.new_zeros((b, h + 2 * pad, w + 2 * pad, 3))  # [B, H+2p, W+2p, 3]
    padded[:, pad:pad + h, pad:pad + w] = images
    cols = torch.arange(w).expand(b, w)  # [B, W]
    cols = torch.where(flip[:, None], w - 1 - cols, cols)  # flip after the crop = read columns backwards
    rows = (top[:, None] + torch.arange(h)).to(device)  # [B, H]
    cols = (left[:, None] + cols).to(device)  # [B, W]
    batch = torch.arange(b, device=device)[:, None, None]  # [B, 1, 1]
    return padded[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, 3]


def _erase_with(x: Tensor, apply: Tensor, top: Tensor, left: Tensor, eh: Tensor, ew: Tensor) -> Tensor:
    _, _, h, w = x.shape
    top, left, eh, ew, apply = (t.to(x.device) for t in (top, left, eh, ew, apply))
    ys = torch.arange(h, device=x.device)[None, :]  # [1, H]
    xs = torch.arange(w, device=x.device)[None, :]  # [1, W]
    in_rows = (ys >= top[:, None]) & (ys < (top + eh)[:, None])  # [B, H]
    in_cols = (xs >= left[:, None]) & (xs < (left + ew)[:, None])  # [B, W]
    mask = in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None]  # [B, H, W]
    fill = torch.tensor(ERASE_FILL, device=x.device, dtype=x.dtype).view(1, 3, 1, 1).expand_as(x)
    return torch.where(mask[:, None], fill, x)


def _copy_channel(x: Tensor, channel: Tensor) -> Tensor:
    """Per sample, copy channel ``channel[i]`` into all three: [B, 3, H, W] -> [B, 3, H, W]."""
    index = channel.to(x.device).view(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:])  # [B, 1, H, W]
    return torch.gather(x, 1, index).expand_as(x).contiguous()


def _adaptive_grey_with(x: Tensor, choice: Tensor, to_grey: Tensor) -> Tensor:
    copied = _copy_channel(x, choice.clamp(max=2))
    out = torch.where((choice < 3).to(x.device)[:, None, None, None], copied, x)
    grey = (x * torch.tensor(GREY_WEIGHTS, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return torch.where(to_grey.to(x.device)[:, None, None, None], grey, out)  # grey: [B, 1, H, W] into all three


def apply_view(images: Tensor, draws: ViewDraws, height: int, width: int) -> Tensor:
    """One view with given draws: uint8 [B, h, w, 3] -> normalised float [B, 3, height, width]."""
    x = _crop_with(resize_uint8(images, height, width), draws.top, draws.left, draws.flip, PAD)
    x = _erase_with(uint8_to_normalized(x), draws.erase, draws.erase_top, draws.erase_left, draws.erase_h,
                    draws.erase_w)
    if draws.grey is not None:
        return _adaptive_grey_with(x, draws.channel, draws.grey)
    if draws.channel is not None:
        return _copy_channel(x, draws.channel)
    return x


@dataclass
class IterationDraws:
    """All augmentation draws of one training iteration: infrared view, RGB views 1 and 2."""

    ir: ViewDraws
    rgb1: ViewDraws
    rgb2: ViewDraws

    @classmethod
    def draw(cls, n_ir: int, n_rgb: int, height: int, width: int) -> "IterationDraws":
        """Draw in the trainer's order: infrared, then RGB view 1, then RGB view 2."""
        return cls(draw_view(n_ir, height, width, "adaptive_grey"), draw_view(n_rgb, height, width, "none"),
                   draw_view(n_rgb, height, width, "exchange"))

    def ir_views(self, images: Tensor, positions: np.ndarray, height: int, width: int) -> Tensor:
        """Infrared views of batch ``positions`` (``images`` holds those rows): [P, 3, H, W]."""
        return apply_view(images, self.ir.rows(positions), height, width)

    def rgb_views(self, images: Tensor, positions: np.ndarray, height: int, width: int) -> Tensor:
        """Positions of the two-view batch [view 1; view 2] of n RGB images: [P, 3, H, W]; ``images`` holds the
        rows :func:`rgb_rows` returns for ``positions`` (each once)."""
        n = self.rgb1.top.size(0)
        positions = np.asarray(positions)
        local = torch.from_numpy(np.searchsorted(rgb_rows(positions, n), positions % n))  # [P] row of ``images``
        first = torch.from_numpy(positions < n)  # [P] view 1 (positions are increasing: view 1 first)
        view1 = apply_view(images[local[first].to(images.device)], self.rgb1.rows(positions[positions < n]),
                           height, width)
        view2 = apply_view(images[local[~first].to(images.device)],
                           self.rgb2.rows(positions[positions >= n] - n), height, width)
        return torch.cat((view1, view2), 0)


def rgb_rows(positions: np.ndarray, n: int) -> np.ndarray:
    """Sorted distinct image rows behind ``positions`` of the two-view batch of ``n`` images."""
    return np.unique(np.asarray(positions) % n)
