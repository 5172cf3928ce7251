"""stage1_loss / stage2_loss: parts, weights, odd/even memories and the backward update order."""

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close_scaled, hcl_reference_loss, hcl_reference_update

from rpnr.losses import neighbor_relation_loss
from rpnr.memory import ClusterMemory
from rpnr.training import TERMS, TermInputs, objective, stage2_loss

D, K_RGB, K_IR = 8, 3, 4
R2I = np.array([2, 0, 3])  # RGB cluster -> IR cluster
I2R = np.array([1, 1, 0, 2])  # IR cluster -> RGB cluster



def stage1_loss(f_rgb, f_ir, y_rgb, y_ir, memories):
    """Stage 1's objective: stage 2's without its stage-2 terms."""
    return stage2_loss(f_rgb, f_ir, y_rgb, y_ir, memories, None, None, 0, cross=False, hybrid=False, nrl=False)


def stage2_terms(f_rgb, f_ir, y_rgb, y_ir, memories, r2i, i2r, epoch):
    """The trainer's objective (rpnr.training.objective) with the default weights: its terms as tensors."""
    settings = types.SimpleNamespace(w_cross=0.25, w_hybrid=0.5, w_nrl=10.0, sigma=1.0, delta=1.0)
    return objective(TermInputs(f_rgb, f_ir, y_rgb, y_ir, memories, r2i, i2r, epoch, settings), list(TERMS))

def _setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    c_rgb, c_ir = torch.randn(K_RGB, D, generator=g), torch.randn(K_IR, D, generator=g)
    hybrid = (c_ir + c_rgb[torch.as_tensor(I2R)]) / 2
    memories = {
        "rgb": ClusterMemory.from_centers(c_rgb, temp=0.05, momentum=0.1, mode="CMhcl"),
        "ir": ClusterMemory.from_centers(c_ir, temp=0.05, momentum=0.1, mode="CMhcl"),
        "hybrid": ClusterMemory.from_centers(hybrid, temp=0.05, momentum=0.1, mode="CMhcl"),
    }
    f_rgb = torch.randn(8, D, generator=g).requires_grad_()  # both RGB views
    f_ir = torch.randn(6, D, generator=g).requires_grad_()
    y_rgb = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    y_ir = torch.tensor([0, 1, 1, 2, 3, 3])
    return memories, f_rgb, f_ir, y_rgb, y_ir


def _terms(epoch, f_rgb, f_ir, y_rgb, y_ir):
    """(name, memory, features, labels) of the memory terms in the release's computation order."""
    if epoch % 2 == 1:
        cross = ("rgb", f_ir, torch.as_tensor(I2R)[y_ir])
        hybrid = ("hybrid", f_ir, y_ir)
    else:
        cross = ("ir", f_rgb, torch.as_tensor(R2I)[y_rgb])
        hybrid = ("hybrid", f_rgb, torch.as_tensor(R2I)[y_rgb])
    return [("ir", ("ir", f_ir, y_ir)), ("rgb", ("rgb", f_rgb, y_rgb)), ("cross", cross), ("hybrid", hybrid)]


@pytest.mark.parametrize("epoch", [1, 2])
def test_stage2_parts_and_total(epoch):
    memories, f_rgb, f_ir, y_rgb, y_ir = _setup()
    rows = {k: m.features.clone() for k, m in memories.items()}
    total, parts = stage2_loss(f_rgb, f_ir, y_rgb, y_ir, memories, R2I, I2R, epoch)
    assert set(parts) == {"ir", "rgb", "cross", "hybrid", "nrl"}
    assert all(isinstance(v, float) for v in parts.values())
    # every part from the memories as they were before the step
    for name, (mem, feats, labels) in _terms(epoch, f_rgb.detach(), f_ir.detach(), y_rgb, y_ir):
        assert parts[name] == pytest.approx(hcl_reference_loss(rows[mem], feats, labels).item(), rel=1e-5)
    nrl = (neighbor_relation_loss(f_rgb.detach(), f_rgb.detach())
           + neighbor_relation_loss(f_ir.detach(), f_ir.detach()))
    assert parts["nrl"] == pytest.approx(nrl.item(), rel=1e-5)
    expected = parts["ir"] + parts["rgb"] + 0.25 * parts["cross"] + 0.5 * parts["hybrid"] + 10 * parts["nrl"]
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_odd_and_even_epochs_use_different_memories():
    _, f_rgb, f_ir, y_rgb, y_ir = _setup()
    memories_odd, _, _, _, _ = _setup()
    memories_even, _, _, _, _ = _setup()
    _, odd = stage2_loss(f_rgb, f_ir, y_rgb, y_ir, memories_odd, R2I, I2R, epoch=3)
    _, even = stage2_loss(f_rgb, f_ir, y_rgb, y_ir, memories_even, R2I, I2R, epoch=4)
    assert odd["ir"] == pytest.approx(even["ir"]) and odd["rgb"] == pytest.approx(even["rgb"])
    assert abs(odd["cross"] - even["cross"]) > 1e-3
    assert abs(odd["hybrid"] - even["hybrid"]) > 1e-3


def _expected_memories(rows, terms, order):
    rows = {k: v.clone() for k, v in rows.items()}
    by_name = dict(terms)
    for name in order:
        mem, feats, labels = by_name[name]
        rows[mem] = hcl_reference_update(rows[mem], feats, labels, 0.1)
    return rows


@pytest.mark.parametrize("epoch", [1, 2])
def test_memory_updates_in_reverse_order(epoch):
    memories, f_rgb, f_ir, y_rgb, y_ir = _setup(seed=epoch)
    rows = {k: m.features.clone() for k, m in memories.items()}
    total, _ = stage2_loss(f_rgb, f_ir, y_rgb, y_ir, memories, R2I, I2R, epoch)
    total.backward()
    terms = _terms(epoch, f_rgb.detach(), f_ir.detach(), y_rgb, y_ir)
    # autograd runs the memory updates in the reverse of the computation order
    expected = _expected_memories(rows, terms, ["hybrid", "cross", "rgb", "ir"])
    for k in ("rgb", "ir", "hybrid"):
        assert_close_scaled(memories[k].features, expected[k], name=k)
        torch.testing.assert_close(memories[k].features.norm(dim=1), torch.ones(rows[k].shape[0]))
    # the order matters for the memory that serves two terms (odd: RGB, even: IR)
    shared = "rgb" if epoch % 2 == 1 else "ir"
    forward = _expected_memories(rows, terms, ["ir", "rgb", "cross", "hybrid"])
    assert (forward[shared] - expected[shared]).abs().max() > 1e-4
    assert f_rgb.grad is not None and f_ir.grad is not None


def test_stage1_loss():
    memories, f_rgb, f_ir, y_rgb, y_ir = _setup(seed=5)
    memories = {"rgb": memories["rgb"], "ir": memories["ir"]}
    rows = {k: m.features.clone() for k, m in memories.items()}
    total, parts = stage1_loss(f_rgb, f_ir, y_rgb, y_ir, memories)
    assert set(parts) == {"ir", "rgb"}
    assert parts["ir"] == pytest.approx(hcl_reference_loss(rows["ir"], f_ir.detach(), y_ir).item(), rel=1e-5)
    assert parts["rgb"] == pytest.approx(hcl_reference_loss(rows["rgb"], f_rgb.detach(), y_rgb).item(), rel=1e-5)
    assert total.item() == pytest.approx(parts["ir"] + parts["rgb"], rel=1e-6)
    total.backward()
    assert_close_scaled(memories["ir"].features, hcl_reference_update(rows["ir"], f_ir.detach(), y_ir, 0.1))
    assert_close_scaled(memories["rgb"].features, hcl_reference_update(rows["rgb"], f_rgb.detach(), y_rgb, 0.1))


def _hcl_loss_straight_through(fwd_rows, bwd_rows, inputs, targets, temp=0.05):
    """CMhcl loss whose value uses the forward-time memory and whose gradient uses the backward-time one."""
    k = fwd_rows.shape[0] // 2
    xn = F.normalize(inputs, dim=1)
    new = xn @ bwd_rows.t()
    scores = (xn.detach() @ fwd_rows.t() + new - new.detach()) / temp  # [B, 2K]
    return 0.5 * (F.cross_entropy(scores[:, k:], targets) + torch.relu(F.cross_entropy(scores[:, :k], targets) - 0.2))


@pytest.mark.parametrize("epoch", [1, 2])
def test_gradients_use_memories_as_updated_by_later_terms(epoch):
    memories, f_rgb, f_ir, y_rgb, y_ir = _setup(seed=6)
    rows = {k: m.features.clone() for k, m in memories.items()}
    total, _ = stage2_loss(f_rgb, f_ir, y_rgb, y_ir, memories, R2I, I2R, epoch)
    total.backward()

    x_rgb = f_rgb.detach().clone().requires_grad_()
    x_ir = f_ir.detach().clone().requires_grad_()
    terms = _terms(epoch, x_rgb, x_ir, y_rgb, y_ir)
    weights = {"ir": 1.0, "rgb": 1.0, "cross": 0.25, "hybrid": 0.5}
    current = {k: v.clone() for k, v in rows.items()}
    ref = 10.0 * (neighbor_relation_loss(x_rgb, x_rgb.detach()) + neighbor_relation_loss(x_ir, x_ir.detach()))
    for name, (mem, feats, labels) in reversed(terms):  # backward order: hybrid, cross, rgb, ir
        ref = ref + weights[name] * _hcl_loss_straight_through(rows[mem], current[mem], feats, labels)
        current[mem] = hcl_reference_update(current[mem], feats.detach(), labels, 0.1)
    ref.backward()
    assert_close_scaled(f_rgb.grad, x_rgb.grad, name="visible gradient")
    assert_close_scaled(f_ir.grad, x_ir.grad, name="infrared gradient")


@pytest.mark.parametrize("epoch", [1, 2])
def test_stage2_terms_are_stage2_loss_as_tensors(epoch):
    """The trainer's tensor terms (read later, no host synchronisation) are the public API's floats, bit for bit,
    with the same total, gradients and memory updates."""
    runs = []
    for fn in (stage2_loss, stage2_terms):
        memories, f_rgb, f_ir, y_rgb, y_ir = _setup(seed=7)
        total, parts = fn(f_rgb, f_ir, y_rgb, y_ir, memories, R2I, I2R, epoch)
        total.backward()
        runs.append((total.item(), parts, f_rgb.grad, f_ir.grad, {k: m.features for k, m in memories.items()}))
    (t0, p0, gr0, gi0, m0), (t1, p1, gr1, gi1, m1) = runs
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in p1.values())
    assert t0 == t1 and p0 == {k: v.item() for k, v in p1.items()}
    assert torch.equal(gr0, gr1) and torch.equal(gi0, gi1) and all(torch.equal(m0[k], m1[k]) for k in m0)
    _, on_device = stage2_terms(f_rgb.detach(), f_ir.detach(), y_rgb, y_ir, _setup(seed=7)[0], torch.as_tensor(R2I),
                                torch.as_tensor(I2R), epoch)  # partners given as tensors, as the trainer does
    assert {k: v.item() for k, v in on_device.items()} == pytest.approx(p0, rel=1e-6)
