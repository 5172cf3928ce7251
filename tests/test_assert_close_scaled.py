"""conftest.assert_close_scaled: one tolerance per tensor, ``rel`` times its largest entry (or ``floor``)."""

import numpy as np
import pytest
import torch
from conftest import assert_close_scaled


def _gradient_like(seed: int = 0) -> torch.Tensor:
    """Entries from about 1e-3 to a few hundred, as a layer's gradient has."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(64, 32, generator=g) * torch.logspace(-3, 2.5, 32)


def test_summation_order_passes():
    x = torch.randn(16, 64, 32, generator=torch.Generator().manual_seed(1)) * 100
    forward, backward = x.sum(0), x.flip(0).sum(0)  # float32 sums in two orders
    assert not torch.equal(forward, backward)
    assert_close_scaled(forward, backward, name="sum")
    assert_close_scaled(backward.numpy(), forward.numpy())  # arrays too


@pytest.mark.parametrize("entry", [0, 2047])  # a large entry, a small one: both caught at 1e-4 of the largest
def test_one_wrong_entry_fails_and_is_named(entry):
    expected = _gradient_like()
    scale = expected.abs().max().item()
    wrong = expected.clone()
    wrong.view(-1)[entry] += 1e-4 * scale
    with pytest.raises(AssertionError, match=r"layer\.weight: max \|actual - expected\| = .* > 1e-05 \* .*1 of 2048 "
                                             r"entries off"):
        assert_close_scaled(wrong, expected, name="layer.weight")
    wrong.view(-1)[entry] = expected.view(-1)[entry] + 5e-6 * scale  # within the tolerance
    assert_close_scaled(wrong, expected, name="layer.weight")


def test_scale_is_the_expected_tensors_own_and_floor_raises_it():
    expected = torch.tensor([1e-3, -2e-3])
    with pytest.raises(AssertionError):  # 1e-7 off is 5e-5 of this tensor's largest entry
        assert_close_scaled(expected + 1e-7, expected)
    assert_close_scaled(expected + 1e-7, expected, floor=1.0)  # 1e-7 <= 1e-5 * 1.0
    with pytest.raises(AssertionError):
        assert_close_scaled(expected + 1e-4, expected, floor=1.0)
    zeros = torch.zeros(3)
    assert_close_scaled(zeros.clone(), zeros)
    with pytest.raises(AssertionError):  # an all-zero expectation is met by zeros only (without a floor)
        assert_close_scaled(torch.tensor([0.0, 1e-20, 0.0]), zeros)


def test_nan_shape_and_dtype_fail():
    expected = torch.ones(2, 3)
    for actual in (torch.full((2, 3), float("nan")), torch.ones(3, 2), torch.ones(2, 3, dtype=torch.float64)):
        with pytest.raises(AssertionError):
            assert_close_scaled(actual, expected)
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close_scaled(expected, np.full((2, 3), np.inf, dtype=np.float32))
