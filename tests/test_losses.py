"""Neighbour relation loss: a 3-point case by hand and its gradient path."""

import math

import pytest
import torch
from conftest import assert_close_scaled

from rpnr.losses import neighbor_relation_loss


def test_three_points_by_hand():
    # emb: p0 = (0, 0), p1 = (3, 0), p2 = (0, 4): distances d01 = 3, d02 = 4, d12 = 5.
    # Row means INCLUDING the zero diagonal: 7/3, 8/3, 3 ->
    #   D01 = 9/7, D02 = 12/7, D10 = 9/8, D12 = 15/8, D20 = 4/3, D21 = 5/3.
    # target: t0 = (0, 0), t1 = (1, 0), t2 = (0, 0): squared distances 1, 0, 1 ->
    #   W01 = W10 = W12 = W21 = e^-1, W02 = W20 = 1 (sigma = 1).
    # delta = 1.5: relu(1.5 - D) = 3/14 (01), 3/8 (10), 1/6 (20), 0 elsewhere.
    # terms W D^2 + (1 - W) relu(delta - D)^2, summed over i != j, divided by N (N - 1) = 6.
    e1 = math.exp(-1)
    terms = [
        e1 * (9 / 7) ** 2 + (1 - e1) * (3 / 14) ** 2,
        1.0 * (12 / 7) ** 2,
        e1 * (9 / 8) ** 2 + (1 - e1) * (3 / 8) ** 2,
        e1 * (15 / 8) ** 2,
        1.0 * (4 / 3) ** 2 + 0.0 * (1 / 6) ** 2,
        e1 * (5 / 3) ** 2,
    ]
    expected = sum(terms) / 6  # = 1.3705682
    emb = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    target = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    loss = neighbor_relation_loss(emb, target, sigma=1.0, delta=1.5)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(1.3705682, rel=1e-6)


def test_sigma_scales_the_weights():
    # delta = 1 removes every push term here (all D > 1); sigma = 2 halves the exponents.
    e = math.exp(-0.5)
    expected = (e * (9 / 7) ** 2 + (12 / 7) ** 2 + e * (9 / 8) ** 2 + e * (15 / 8) ** 2 + (4 / 3) ** 2
                + e * (5 / 3) ** 2) / 6
    emb = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    target = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    loss = neighbor_relation_loss(emb, target, sigma=2.0, delta=1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_weights_carry_no_gradient():
    torch.manual_seed(0)
    x = torch.randn(6, 12, requires_grad=True)
    neighbor_relation_loss(x, x, sigma=1.0, delta=1.0).backward()  # target shares the graph
    y = x.detach().clone().requires_grad_()
    neighbor_relation_loss(y, y.detach(), sigma=1.0, delta=1.0).backward()
    assert_close_scaled(x.grad, y.grad, name="gradient")
    assert x.grad.abs().sum() > 0


def test_loss_invariant_to_global_scale_of_embedding_but_not_of_target():
    # D is divided by its row means, so scaling emb leaves the loss unchanged; W uses the raw target.
    torch.manual_seed(1)
    emb, target = torch.randn(5, 8), torch.randn(5, 8) * 0.3
    base = neighbor_relation_loss(emb, target).item()
    assert neighbor_relation_loss(emb * 7.0, target).item() == pytest.approx(base, rel=1e-5)
    assert neighbor_relation_loss(emb, target * 3.0).item() != pytest.approx(base, rel=1e-3)
