"""Training augmentation, batched on the device (DESIGN.md section 5).

Same steps and distributions as the release's per-image torchvision pipelines:
resize, pad 10, random crop, horizontal flip, to tensor, ImageNet normalisation,
``ChannelRandomErasing`` on the normalised tensor, then ``ChannelExchange(gray=2)``
for the second RGB view or ``ChannelAdapGray(0.5)`` for infrared images.
Images stay uint8 until they are on the device; every sample draws its own random
parameters from the global torch generator (CPU), so runs are reproducible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rpnr.evaluation import IMAGENET_MEAN, IMAGENET_STD

PAD = 10
ERASE_PROB = 0.5
ERASE_AREA = (0.02, 0.4)
ERASE_ASPECT = 0.3  # aspect ratio drawn from U(0.3, 1 / 0.3)
ERASE_ATTEMPTS = 100
ERASE_FILL = (0.4914, 0.4822, 0.4465)  # per channel, written into the NORMALISED tensor (release)
GREY_WEIGHTS = (0.2989, 0.5870, 0.1140)


def _randint(low: int | Tensor, high: int | Tensor, size: int) -> Tensor:
    """Uniform integers in [low, high] (inclusive, like ``random.randint``), per sample: [size] long."""
    u = torch.rand(size, dtype=torch.float64)
    span = torch.as_tensor(high, dtype=torch.float64) - torch.as_tensor(low, dtype=torch.float64) + 1
    return (torch.as_tensor(low, dtype=torch.float64) + torch.floor(u * span)).long()


def resize_uint8(images: Tensor, height: int, width: int) -> Tensor:
    """uint8 [B, h, w, 3] -> uint8 [B, height, width, 3], bicubic; a no-op at the prepared size."""
    if images.shape[1:3] == (height, width):
        return images
    x = images.permute(0, 3, 1, 2).float()  # [B, 3, h, w]
    x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def pad_crop_flip(images: Tensor, pad: int = PAD, flip_prob: float = 0.5) -> Tensor:
    """Zero-pad by ``pad``, random crop back to the input size, random horizontal flip.

    uint8 [B, H, W, 3] -> uint8 [B, H, W, 3]; crop offsets uniform in [0, 2 * pad].
    """
    b, h, w, _ = images.shape
    device = images.device
    top = _randint(0, 2 * pad, b)  # [B]
    left = _randint(0, 2 * pad, b)  # [B]
    flip = torch.rand(b) < flip_prob  # [B]
    padded = images.new_zeros((b, h + 2 * pad, w + 2 * pad, 3))  # [B, H+2p, W+2p, 3]
    padded[:, pad:pad + h, pad:pad + w] = images
    cols = torch.arange(w).expand(b, w)  # [B, W]
    cols = torch.where(flip[:, None], w - 1 - cols, cols)  # flip after the crop = read columns backwards
    rows = (top[:, None] + torch.arange(h)).to(device)  # [B, H]
    cols = (left[:, None] + cols).to(device)  # [B, W]
    batch = torch.arange(b, device=device)[:, None, None]  # [B, 1, 1]
    return padded[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, 3]


def to_normalized(images: Tensor) -> Tensor:
    """uint8 [B, H, W, 3] -> ImageNet-normalised float [B, 3, H, W]."""
    x = images.permute(0, 3, 1, 2).float().div_(255)  # [B, 3, H, W]
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def random_erasing(x: Tensor, prob: float = ERASE_PROB) -> Tensor:
    """The release's ``ChannelRandomErasing`` on normalised images [B, 3, H, W] (in place, returned).

    With probability ``prob`` a sample gets one rectangle filled with ``ERASE_FILL``:
    the first of up to 100 drawn (area, aspect) pairs whose box fits strictly inside.
    """
    b, _, h, w = x.shape
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
    top = _randint(0, h - eh, b)  # [B]
    left = _randint(0, w - ew, b)  # [B]
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


def _grey(x: Tensor) -> Tensor:
    """0.2989 R + 0.5870 G + 0.1140 B in all three channels: [B, 3, H, W]."""
    weights = torch.tensor(GREY_WEIGHTS, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True).expand_as(x).contiguous()


def channel_exchange(x: Tensor) -> Tensor:
    """The release's ``ChannelExchange(gray=2)``: copy R, G or B (uniform) into all channels."""
    return _copy_channel(x, torch.randint(0, 3, (x.size(0),)))


def channel_adaptive_gray(x: Tensor, prob: float = 0.5) -> Tensor:
    """The release's ``ChannelAdapGray(0.5)``: uniform over {R, G, B, grey}; R/G/B copy that
    channel into all three; grey converts with probability ``prob``, else leaves the image."""
    b = x.size(0)
    choice = torch.randint(0, 4, (b,))  # [B]
    to_grey = (choice == 3) & (torch.rand(b) < prob)  # [B]
    copied = _copy_channel(x, choice.clamp(max=2))
    out = torch.where((choice < 3).to(x.device)[:, None, None, None], copied, x)
    return torch.where(to_grey.to(x.device)[:, None, None, None], _grey(x), out)


def base_view(images: Tensor, height: int, width: int) -> Tensor:
    """Resize, pad/crop/flip, normalise and random-erase uint8 [B, h, w, 3] -> float [B, 3, height, width]."""
    x = pad_crop_flip(resize_uint8(images, height, width))
    return random_erasing(to_normalized(x))


def rgb_views(images: Tensor, height: int, width: int) -> Tensor:
    """Both RGB views of a uint8 batch [B, h, w, 3] -> [2B, 3, H, W] = [view 1; view 2].

    Each view has its own crop/flip/erasing (the release runs two transform pipelines
    on the same image); view 2 then gets ``channel_exchange``.
    """
    view1 = base_view(images, height, width)  # [B, 3, H, W]
    view2 = channel_exchange(base_view(images, height, width))  # [B, 3, H, W]
    return torch.cat((view1, view2), 0)


def ir_view(images: Tensor, height: int, width: int) -> Tensor:
    """Infrared training view of a uint8 batch [B, h, w, 3] -> [B, 3, H, W]."""
    return channel_adaptive_gray(base_view(images, height, width))

