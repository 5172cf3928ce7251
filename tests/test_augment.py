"""Batched training augmentation against the release's per-image transforms (DESIGN.md section 5)."""

import math
import random

import numpy as np
import torch
from PIL import Image

from rpnr.data.augment import (
    ERASE_FILL,
    IterationDraws,
    ViewDraws,
    _adaptive_grey_with,
    _copy_channel,
    _crop_with,
    _draw_crop,
    _draw_erasing,
    _erase_with,
    apply_view,
    draw_view,
    rgb_rows,
)
from rpnr.evaluation import IMAGENET_MEAN, IMAGENET_STD, uint8_to_normalized


def _images(b=6, h=24, w=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, h, w, 3), dtype=torch.uint8, generator=g)


def _official_erase_fraction(h, w, rng):
    """The release's ChannelRandomErasing (probability 1): erased fraction of one image."""
    for _ in range(100):
        target = rng.uniform(0.02, 0.4) * h * w
        aspect = rng.uniform(0.3, 1 / 0.3)
        eh = int(round(math.sqrt(target * aspect)))
        ew = int(round(math.sqrt(target / aspect)))
        if ew < w and eh < h:
            return eh * ew / (h * w)
    return 0.0


def test_pad_crop_flip_is_a_window_of_the_padded_image():
    torch.manual_seed(0)
    x = _images(b=40, h=8, w=6)
    out = _crop_with(x, *_draw_crop(40, 3, 0.5), 3)
    padded = torch.zeros(40, 14, 12, 3, dtype=torch.uint8)
    padded[:, 3:11, 3:9] = x
    offsets, flips = set(), 0
    for i in range(40):
        found = [(t, l, f) for t in range(7) for l in range(7) for f in (0, 1)
                 if torch.equal(out[i], padded[i, t:t + 8, l:l + 6].flip(1) if f else padded[i, t:t + 8, l:l + 6])]
        assert found, f"sample {i} is not a crop of the padded image"
        offsets.add(found[0][:2])
        flips += found[0][2]
    assert len(offsets) > 15  # offsets spread over the 7 x 7 range
    assert 8 <= flips <= 32  # p = 0.5


def test_uint8_to_normalized_matches_torchvision():
    from torchvision import transforms as T

    x = _images(b=1)
    ref = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(Image.fromarray(x[0].numpy()))
    assert torch.allclose(uint8_to_normalized(x)[0], ref, atol=1e-6)


def test_random_erasing_rectangles_and_statistics():
    torch.manual_seed(0)
    n, h, w = 4000, 24, 12
    x = torch.zeros(n, 3, h, w)
    out = _erase_with(x, *_draw_erasing(n, h, w, 1.0))
    erased = out[:, 0] != 0  # [n, h, w]
    for c in range(3):  # every channel filled with its own value, on the same box
        assert torch.equal(out[:, c] != 0, erased)
        assert torch.all(out[:, c][erased] == torch.tensor(ERASE_FILL[c]))
    rows, cols = erased.any(2), erased.any(1)
    boxes = rows.sum(1) * cols.sum(1)  # a full rectangle: area = height x width of its extent
    assert torch.equal(boxes, erased.sum((1, 2)))
    assert torch.all(rows.sum(1) < h) and torch.all(cols.sum(1) < w)
    rng = random.Random(0)
    ref = np.array([_official_erase_fraction(h, w, rng) for _ in range(n)])
    frac = erased.float().mean((1, 2)).numpy()
    assert abs(frac.mean() - ref.mean()) < 0.01
    assert abs(np.quantile(frac, 0.9) - np.quantile(ref, 0.9)) < 0.03
    # probability 0.5: about half the images untouched
    half = _erase_with(torch.zeros(n, 3, h, w), *_draw_erasing(n, h, w, 0.5))
    untouched = (half == 0).all(3).all(2).all(1).float().mean().item()
    assert 0.46 < untouched < 0.54


def test_channel_exchange_copies_one_channel():
    torch.manual_seed(0)
    x = torch.arange(3.0).view(1, 3, 1, 1).expand(3000, 3, 4, 2).contiguous()  # channel c holds value c
    out = _copy_channel(x, draw_view(3000, 4, 2, "exchange").channel)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    counts = np.bincount(out[:, 0, 0, 0].long().numpy(), minlength=3) / 3000
    assert np.all(np.abs(counts - 1 / 3) < 0.04)


def test_channel_adaptive_gray_frequencies():
    torch.manual_seed(0)
    n = 8000
    base = torch.tensor([1.0, 2.0, 4.0]).view(1, 3, 1, 1).expand(n, 3, 2, 2).contiguous()
    draws = draw_view(n, 2, 2, "adaptive_grey")
    out = _adaptive_grey_with(base, draws.channel, draws.grey)
    grey = 0.2989 * 1 + 0.5870 * 2 + 0.1140 * 4
    first = out[:, :, 0, 0]  # [n, 3]
    freq = {
        "r": (first == 1.0).all(1).float().mean().item(),
        "g": (first == 2.0).all(1).float().mean().item(),
        "b": (first == 4.0).all(1).float().mean().item(),
        "grey": torch.isclose(first, torch.tensor(grey)).all(1).float().mean().item(),
        "kept": (first == torch.tensor([1.0, 2.0, 4.0])).all(1).float().mean().item(),
    }
    expected = {"r": 0.25, "g": 0.25, "b": 0.25, "grey": 0.125, "kept": 0.125}
    for key, value in expected.items():
        assert abs(freq[key] - value) < 0.025, (key, freq[key])
    assert abs(sum(freq.values()) - 1.0) < 1e-6


def _rgb_views(draws1, draws2, x, h, w):
    """Both RGB views of the whole batch, [view 1; view 2], from the given draws."""
    return torch.cat([apply_view(x, draws1, h, w), apply_view(x, draws2, h, w)])


def _same_draws(a: ViewDraws, b: ViewDraws) -> bool:
    """Every field of ``a`` equals the one of ``b`` (both None or equal tensors)."""
    for name in ViewDraws.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if (x is None) != (y is None) or (x is not None and not torch.equal(x, y)):
            return False
    return True


def test_views_shapes_and_independence():
    torch.manual_seed(0)
    x = _images(b=5, h=40, w=20)
    views = _rgb_views(draw_view(5, 40, 20, "none"), draw_view(5, 40, 20, "exchange"), x, 40, 20)
    assert views.shape == (10, 3, 40, 20) and views.dtype == torch.float32
    v1, v2 = views[:5], views[5:]
    assert torch.equal(v2[:, 0], v2[:, 1]) and torch.equal(v2[:, 1], v2[:, 2])  # view 2: one channel copied
    assert not all(torch.equal(v1[i, 0], v2[i, 0]) for i in range(5))  # independent crops/flips/erasing
    ir = apply_view(x, draw_view(5, 40, 20, "adaptive_grey"), 40, 20)
    assert ir.shape == (5, 3, 40, 20)
    # any size works (no hard-coded crop size); another target size resizes first
    small = _rgb_views(draw_view(5, 32, 16, "none"), draw_view(5, 32, 16, "exchange"), x, 32, 16)
    assert small.shape == (10, 3, 32, 16)


def test_iteration_draws_apply_any_slice_as_the_whole_batch():
    """A torchrun rank draws the whole batch's parameters and applies its slice: the same pixels."""
    x_ir, x_rgb = _images(b=6, h=40, w=20, seed=1), _images(b=4, h=40, w=20, seed=2)
    torch.manual_seed(5)  # one-process order of the draws: infrared, RGB view 1, RGB view 2
    one_process = (draw_view(6, 40, 20, "adaptive_grey"), draw_view(4, 40, 20, "none"),
                   draw_view(4, 40, 20, "exchange"))
    torch.manual_seed(5)
    draws = IterationDraws.draw(6, 4, 40, 20)  # same stream order: infrared, RGB view 1, RGB view 2
    assert _same_draws(draws.ir, one_process[0])
    assert _same_draws(draws.rgb1, one_process[1]) and _same_draws(draws.rgb2, one_process[2])
    assert draws.ir.grey is not None and draws.rgb1.channel is None and draws.rgb2.grey is None
    ir_whole = apply_view(x_ir, draws.ir, 40, 20)
    rgb_whole = _rgb_views(draws.rgb1, draws.rgb2, x_rgb, 40, 20)
    assert torch.equal(draws.ir_views(x_ir, np.arange(6), 40, 20), ir_whole)
    assert torch.equal(draws.rgb_views(x_rgb, np.arange(8), 40, 20), rgb_whole)
    for part in (np.arange(0, 3), np.arange(3, 6)):
        assert torch.equal(draws.ir_views(x_ir[part], part, 40, 20), ir_whole[part])
    for part in (np.arange(0, 4), np.arange(4, 8), np.arange(2, 5), np.arange(6, 8)):
        rows = rgb_rows(part, 4)
        assert torch.equal(draws.rgb_views(x_rgb[rows], part, 40, 20), rgb_whole[part])
    assert rgb_rows(np.arange(2, 6), 4).tolist() == [0, 1, 2, 3] and rgb_rows(np.arange(4, 6), 4).tolist() == [0, 1]
