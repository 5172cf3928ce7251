"""Batched training augmentation against the release's per-image transforms (DESIGN.md section 5)."""

import math
import random

import numpy as np
import torch
from PIL import Image

from rpnr.data.augment import (
    ERASE_FILL,
    IterationDraws,
    channel_adaptive_gray,
    channel_exchange,
    ir_view,
    pad_crop_flip,
    random_erasing,
    rgb_rows,
    rgb_views,
    to_normalized,
)
from rpnr.evaluation import IMAGENET_MEAN, IMAGENET_STD


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
    out = pad_crop_flip(x, pad=3)
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


def test_to_normalized_matches_torchvision():
    from torchvision import transforms as T

    x = _images(b=1)
    ref = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(Image.fromarray(x[0].numpy()))
    assert torch.allclose(to_normalized(x)[0], ref, atol=1e-6)


def test_random_erasing_rectangles_and_statistics():
    torch.manual_seed(0)
    n, h, w = 4000, 24, 12
    x = torch.zeros(n, 3, h, w)
    out = random_erasing(x, prob=1.0)
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
    half = random_erasing(torch.zeros(n, 3, h, w), prob=0.5)
    untouched = (half == 0).all(3).all(2).all(1).float().mean().item()
    assert 0.46 < untouched < 0.54


def test_channel_exchange_copies_one_channel():
    torch.manual_seed(0)
    x = torch.arange(3.0).view(1, 3, 1, 1).expand(3000, 3, 4, 2).contiguous()  # channel c holds value c
    out = channel_exchange(x)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    counts = np.bincount(out[:, 0, 0, 0].long().numpy(), minlength=3) / 3000
    assert np.all(np.abs(counts - 1 / 3) < 0.04)


def test_channel_adaptive_gray_frequencies():
    torch.manual_seed(0)
    n = 8000
    base = torch.tensor([1.0, 2.0, 4.0]).view(1, 3, 1, 1).expand(n, 3, 2, 2).contiguous()
    out = channel_adaptive_gray(base)
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


def test_views_shapes_and_independence():
    torch.manual_seed(0)
    x = _images(b=5, h=40, w=20)
    views = rgb_views(x, 40, 20)
    assert views.shape == (10, 3, 40, 20) and views.dtype == torch.float32
    v1, v2 = views[:5], views[5:]
    assert torch.equal(v2[:, 0], v2[:, 1]) and torch.equal(v2[:, 1], v2[:, 2])  # view 2: one channel copied
    assert not all(torch.equal(v1[i, 0], v2[i, 0]) for i in range(5))  # independent crops/flips/erasing
    ir = ir_view(x, 40, 20)
    assert ir.shape == (5, 3, 40, 20)
    # any size works (no hard-coded crop size); another target size resizes first
    assert rgb_views(x, 32, 16).shape == (10, 3, 32, 16)


def test_iteration_draws_apply_any_slice_as_the_whole_batch():
    """A torchrun rank draws the whole batch's parameters and applies its slice: the same pixels."""
    x_ir, x_rgb = _images(b=6, h=40, w=20, seed=1), _images(b=4, h=40, w=20, seed=2)
    torch.manual_seed(5)
    ir_whole, rgb_whole = ir_view(x_ir, 40, 20), rgb_views(x_rgb, 40, 20)  # the one-process functions
    torch.manual_seed(5)
    draws = IterationDraws.draw(6, 4, 40, 20)  # same stream order: infrared, RGB view 1, RGB view 2
    assert torch.equal(draws.ir_views(x_ir, np.arange(6), 40, 20), ir_whole)
    assert torch.equal(draws.rgb_views(x_rgb, np.arange(8), 40, 20), rgb_whole)
    for part in (np.arange(0, 3), np.arange(3, 6)):
        assert torch.equal(draws.ir_views(x_ir[part], part, 40, 20), ir_whole[part])
    for part in (np.arange(0, 4), np.arange(4, 8), np.arange(2, 5), np.arange(6, 8)):
        rows = rgb_rows(part, 4)
        assert torch.equal(draws.rgb_views(x_rgb[rows], part, 40, 20), rgb_whole[part])
    assert rgb_rows(np.arange(2, 6), 4).tolist() == [0, 1, 2, 3] and rgb_rows(np.arange(4, 6), 4).tolist() == [0, 1]
