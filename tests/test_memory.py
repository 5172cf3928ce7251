"""ClusterMemory (CM and CMhcl): loss values, update rules, hard-sample choice, gradient timing."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TEMP, assert_close_scaled, hcl_reference_loss, hcl_reference_update

from rpnr.memory import ClusterMemory


def cm_reference_update(features, inputs, targets, m):
    """CM update, per sample in batch order, on a copy: M[y] <- normalise(m M[y] + (1-m) x)."""
    features = features.clone()
    for x, y in zip(F.normalize(inputs, dim=1), targets.tolist()):
        row = m * features[y] + (1 - m) * x
        features[y] = row / row.norm()
    return features


def _random_memory(mode, k=4, d=8, momentum=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g)
    return ClusterMemory.from_centers(centers, temp=TEMP, momentum=momentum, mode=mode), centers


def test_from_centers_normalised_and_repeated():
    mem, centers = _random_memory("CMhcl", k=3, d=8)
    assert mem.features.shape == (6, 8)
    expected = F.normalize(centers, dim=1)
    assert_close_scaled(mem.features[:3], expected)
    assert_close_scaled(mem.features[3:], expected)
    mem_cm, centers = _random_memory("CM", k=3, d=8)
    assert mem_cm.features.shape == (3, 8)
    assert_close_scaled(mem_cm.features, F.normalize(centers, dim=1))


def test_cm_loss_by_hand():
    # d = 2, two rows e1, e2; x = (3, 4) -> normalised (0.6, 0.8); target 1
    # scores = (0.6, 0.8) / 0.05 = (12, 16); CE = log(e^12 + e^16) - 16 = log(1 + e^-4)
    mem = ClusterMemory(2, 2, temp=TEMP, momentum=0.5, mode="CM")
    mem.features = torch.eye(2)
    x = torch.tensor([[3.0, 4.0]], requires_grad=True)
    loss = mem(x, torch.tensor([1]))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-4)), rel=1e-5)
    loss.backward()
    # update: 0.5 * (0, 1) + 0.5 * (0.6, 0.8) = (0.3, 0.9) -> / sqrt(0.9)
    torch.testing.assert_close(mem.features[1], torch.tensor([0.3, 0.9]) / math.sqrt(0.9))
    torch.testing.assert_close(mem.features[0], torch.tensor([1.0, 0.0]))


def test_cm_update_per_sample_in_batch_order():
    mem, _ = _random_memory("CM", k=3, d=8, momentum=0.3)
    before = mem.features.clone()
    torch.manual_seed(1)
    x = (torch.randn(6, 8) * torch.rand(6, 1) * 5).requires_grad_()  # various norms
    y = torch.tensor([0, 2, 0, 0, 1, 2])
    loss = mem(x, y)
    expected_loss = F.cross_entropy(F.normalize(x.detach(), dim=1) @ before.t() / TEMP, y)
    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-5)
    loss.backward()
    assert_close_scaled(mem.features, cm_reference_update(before, x.detach(), y, 0.3))
    torch.testing.assert_close(mem.features.norm(dim=1), torch.ones(3))


def test_hcl_loss_value_and_margin():
    mem, centers = _random_memory("CMhcl", k=4, d=8)
    torch.manual_seed(2)
    x = torch.randn(8, 8)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    loss = mem(x, y)
    assert loss.item() == pytest.approx(hcl_reference_loss(mem.features, x, y).item(), rel=1e-5)
    # hand case, d = 2, both halves e1, e2; x = (3, 4) -> (0.6, 0.8); scores in each half = (12, 16)
    # target 1: CE = log(1 + e^-4) = 0.0181 < 0.2 -> relu term 0, loss = 0.5 * log(1 + e^-4)
    # target 0: CE = log(1 + e^4) = 4.0181 -> loss = 0.5 * (CE + CE - 0.2)
    mem2 = ClusterMemory(2, 2, temp=TEMP, momentum=0.2, mode="CMhcl")
    mem2.features = torch.eye(2).repeat(2, 1)
    x2 = torch.tensor([[3.0, 4.0]])
    assert mem2(x2, torch.tensor([1])).item() == pytest.approx(0.5 * math.log(1 + math.exp(-4)), rel=1e-5)
    ce = math.log(1 + math.exp(4))
    assert mem2(x2, torch.tensor([0])).item() == pytest.approx(0.5 * (ce + ce - 0.2), rel=1e-5)


def test_hcl_update_and_hard_sample_choice():
    # d = 8, class 0 has three members; its mean row before the update is e0. Cosines to e0:
    # a 0.8, b 0.6 (b has norm 10), c 0.9 -> the hard sample is b (lowest cosine). On raw inputs
    # the dots would be a 0.8, b 6.0, c 0.9 (-> a), and the most similar would be c.
    d = 8
    mem = ClusterMemory(d, 2, temp=TEMP, momentum=0.2, mode="CMhcl")
    init = torch.zeros(4, d)
    init[0, 0] = init[2, 0] = 1.0  # class 0: mean row and hard row e0
    init[1, 1] = init[3, 1] = 1.0  # class 1: e1
    mem.features = init.clone()
    a = torch.zeros(d)
    a[0], a[2] = 0.8, 0.6
    b = torch.zeros(d)
    b[0], b[3] = 6.0, 8.0  # norm 10, cosine 0.6
    c = torch.zeros(d)
    c[0], c[4] = 0.9, math.sqrt(1 - 0.81)
    e = torch.zeros(d)
    e[1], e[5] = 0.5, 0.5
    x = torch.stack([a, e, b, c]).requires_grad_()
    y = torch.tensor([0, 1, 0, 0])
    mem(x, y).backward()
    xn = F.normalize(x.detach(), dim=1)
    mean0 = 0.2 * init[0] + 0.8 * (xn[0] + xn[2] + xn[3]) / 3
    hard0 = 0.2 * init[2] + 0.8 * xn[2]  # b is the hard sample
    mean1 = 0.2 * init[1] + 0.8 * xn[1]
    hard1 = 0.2 * init[3] + 0.8 * xn[1]
    expected = torch.stack([mean0 / mean0.norm(), mean1 / mean1.norm(), hard0 / hard0.norm(),
                            hard1 / hard1.norm()])
    torch.testing.assert_close(mem.features, expected)


def test_hcl_random_update_matches_reference_and_rows_unit_norm():
    mem, _ = _random_memory("CMhcl", k=5, d=12, momentum=0.1, seed=3)
    torch.manual_seed(4)
    for _ in range(3):
        before = mem.features.clone()
        x = (torch.randn(10, 12) * (torch.rand(10, 1) * 4 + 0.1)).requires_grad_()
        y = torch.randint(0, 4, (10,))  # class 4 absent: its rows must stay
        mem(x, y).backward()
        assert_close_scaled(mem.features, hcl_reference_update(before, x.detach(), y, 0.1))
        torch.testing.assert_close(mem.features.norm(dim=1), torch.ones(10))
        assert torch.equal(mem.features[[4, 9]], before[[4, 9]])  # untouched


@pytest.mark.parametrize("mode", ["CM", "CMhcl"])
def test_gradient_uses_memory_at_backward_time(mode):
    mem, _ = _random_memory(mode, k=3, d=8, seed=5)
    torch.manual_seed(6)
    x = torch.randn(4, 8, requires_grad=True)
    y = torch.tensor([0, 1, 2, 1])
    before = mem.features.clone()
    loss = mem(x, y)
    replacement = F.normalize(torch.randn_like(mem.features), dim=1)
    mem.features.copy_(replacement)  # as another term's update would, before this term's backward
    loss.backward()
    # expected: softmax from the forward scores (old memory), but d scores / d x = the memory as it
    # is now; the straight-through sum keeps the value of the old scores and the gradient of the new
    x_ref = x.detach().clone().requires_grad_()
    xn = F.normalize(x_ref, dim=1)
    new_scores = xn @ replacement.t()
    scores = xn.detach() @ before.t() + new_scores - new_scores.detach()  # value: old; gradient: new
    if mode == "CM":
        ref = F.cross_entropy(scores / TEMP, y)
    else:
        k = before.shape[0] // 2
        ref = 0.5 * (F.cross_entropy(scores[:, k:] / TEMP, y)
                     + torch.relu(F.cross_entropy(scores[:, :k] / TEMP, y) - 0.2))
    ref.backward()
    assert_close_scaled(x.grad, x_ref.grad, name="gradient")
    # and it differs from the gradient with the forward-time memory
    x_old = x.detach().clone().requires_grad_()
    old_scores = F.normalize(x_old, dim=1) @ before.t()
    if mode == "CM":
        F.cross_entropy(old_scores / TEMP, y).backward()
    else:
        hcl_reference_loss(before, x_old, y).backward()
    assert not torch.allclose(x_old.grad, x.grad, atol=1e-3)


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_hcl_update_equals_the_per_class_loop(seed):
    from rpnr.memory import _hcl_update

    g = torch.Generator().manual_seed(seed)
    k, d, b = 9, 32, 48
    features = F.normalize(torch.randn(2 * k, d, generator=g), dim=1)
    inputs = F.normalize(torch.randn(b, d, generator=g), dim=1)
    targets = torch.randint(0, k - 2, (b,), generator=g)  # repeated classes; classes k-2, k-1 absent
    targets[:4] = 0  # a class of several members, two of them the same sample: the first is the hard one on a tie
    inputs[3] = inputs[1]
    targets[targets == k - 3] = 1
    targets[5] = k - 3  # a class of one member
    want, got = hcl_reference_update(features, inputs, targets, 0.1), features.clone()  # the per-class loop
    _hcl_update(inputs, targets, got, 0.1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    untouched = [c for c in range(k) if c not in targets.tolist()]
    assert untouched and torch.equal(got[untouched], features[untouched])
    assert torch.equal(got[[c + k for c in untouched]], features[[c + k for c in untouched]])


def test_hcl_update_picks_the_first_of_tied_hard_samples():
    from rpnr.memory import _hcl_update

    features = torch.eye(4)  # K = 2: mean rows e0, e1; hard rows e2, e3
    x = F.normalize(torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0]]), dim=1)
    targets = torch.tensor([0, 0, 0])  # every member has cosine 0.707 with e0: a three-way tie -> sample 0
    got = features.clone()
    _hcl_update(x, targets, got, 0.5)
    hard = 0.5 * features[2] + 0.5 * x[0]
    torch.testing.assert_close(got[2], hard / hard.norm())
    assert torch.equal(got[[1, 3]], features[[1, 3]])
