"""Batch-norm groups (``bn_splits``): the release's two-GPU ``nn.DataParallel`` forward on one device.

The reference is built by hand as DataParallel runs it: one replica per slice (a copy of the
model with the same parameters), each running the plain joint forward on its slice; outputs
concatenated; the original keeps replica 0's running statistics; parameter gradients are the
sum of the replicas' gradients.
"""

import copy

import pytest
import torch
from conftest import assert_close_scaled
from torch import nn

from rpnr.models import build_model
from rpnr.models.agw import discarded_running_stats


def _images(n, seed):
    return torch.randn(n, 3, 32, 16, generator=torch.Generator().manual_seed(seed))


def _batch_norms(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _buffers(model):
    return {k: v.clone() for k, v in model.named_buffers() if "running" in k or "num_batches" in k}


def _objective(f_rgb, f_ir):
    """A loss that weighs every output row differently (so a wrong row order shows)."""
    w_rgb = torch.linspace(0.5, 1.5, f_rgb.size(0))[:, None]
    w_ir = torch.linspace(-1.0, 1.0, f_ir.size(0))[:, None]
    return (w_rgb * f_rgb).pow(2).mean() + (w_ir * f_ir).sum() / f_ir.numel() + (f_rgb[:, :7] @ f_ir[:, :7].T).mean()


def _data_parallel_reference(model, x_rgb, x_ir, splits):
    """(f_rgb, f_ir, buffers after, gradients) as nn.DataParallel over ``splits`` devices computes them."""
    replicas = [copy.deepcopy(model) for _ in range(splits)]
    outs = [rep(r, i) for rep, r, i in zip(replicas, x_rgb.chunk(splits), x_ir.chunk(splits))]
    f_rgb = torch.cat([o[0] for o in outs])
    f_ir = torch.cat([o[1] for o in outs])
    _objective(f_rgb, f_ir).backward()
    grads = {}
    for rep in replicas:
        for name, p in rep.named_parameters():
            if p.grad is not None:
                grads[name] = grads.get(name, 0) + p.grad
    return f_rgb.detach(), f_ir.detach(), _buffers(replicas[0]), grads


@pytest.fixture(scope="module")
def trained_model():
    torch.manual_seed(0)
    model = build_model("agw", pretrained=None, bn_splits=1)
    with torch.no_grad():  # non-trivial running statistics and BN affine parameters
        for bn in _batch_norms(model):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
            bn.num_batches_tracked.fill_(5)
            if bn.affine:
                bn.weight.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("splits, n_rgb, n_ir", [(2, 4, 4), (3, 5, 6)])
def test_split_forward_matches_data_parallel(trained_model, splits, n_rgb, n_ir, one_thread):
    x_rgb, x_ir = _images(n_rgb, 1), _images(n_ir, 2)
    ref_rgb, ref_ir, ref_buffers, ref_grads = _data_parallel_reference(trained_model, x_rgb, x_ir, splits)

    model = copy.deepcopy(trained_model).train()
    model.bn_splits = splits
    f_rgb, f_ir = model(x_rgb, x_ir)
    _objective(f_rgb, f_ir).backward()

    # float32 sums in another order: each tensor to 1e-5 of its largest entry (conftest.assert_close_scaled)
    assert_close_scaled(f_rgb, ref_rgb, name="f_rgb")
    assert_close_scaled(f_ir, ref_ir, name="f_ir")
    buffers = _buffers(model)
    assert buffers.keys() == ref_buffers.keys()
    for name, value in buffers.items():  # slice 0's update only
        assert_close_scaled(value, ref_buffers[name], name=name)
    assert int(model.bottleneck.num_batches_tracked) == 6  # one update kept, not ``splits``
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == ref_grads.keys() and len(grads) > 100
    assert not [n for n, g in grads.items() if not g.abs().max() > 0]  # every branch compared (non-local too)
    floor = 1e-3 * max(g.abs().max().item() for g in ref_grads.values())  # W.0.bias feeds a BN: noise gradient
    for name, grad in grads.items():
        assert_close_scaled(grad, ref_grads[name], floor=floor, name=name)


def test_split_forward_differs_from_whole_batch(trained_model, one_thread):
    """Per-slice statistics change the training features (the point of bn_splits)."""
    x_rgb, x_ir = _images(4, 3), _images(4, 4)
    model = copy.deepcopy(trained_model).train()
    with torch.no_grad():
        whole = model(x_rgb, x_ir)
        model.bn_splits = 2
        split = model(x_rgb, x_ir)
    assert (whole[0] - split[0]).abs().max() > 1e-3
    assert (whole[1] - split[1]).abs().max() > 1e-3


def test_eval_mode_and_state_dict_do_not_depend_on_splits(one_thread):
    torch.manual_seed(1)
    one = build_model("agw").eval()
    two = build_model("agw", bn_splits=2)
    assert two.bn_splits == 2
    assert two.state_dict().keys() == one.state_dict().keys()
    two.load_state_dict(one.state_dict())
    two.eval()
    x_rgb, x_ir = _images(3, 5), _images(2, 6)
    with torch.no_grad():
        a, b = one(x_rgb, x_ir), two(x_rgb, x_ir)
    assert torch.isfinite(a[0]).all() and torch.isfinite(a[1]).all()
    torch.testing.assert_close(a[0], b[0], atol=0, rtol=0)
    torch.testing.assert_close(a[1], b[1], atol=0, rtol=0)


def test_discarded_running_stats_restores_the_original_buffers(trained_model):
    model = copy.deepcopy(trained_model).train()
    before = _buffers(model)
    with torch.no_grad(), discarded_running_stats(model):
        model(_images(2, 7), _images(2, 8))
        assert any(not torch.equal(v, before[k]) for k, v in _buffers(model).items())  # copies were updated
    after = _buffers(model)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_bad_splits_are_refused():
    with pytest.raises(ValueError, match="bn_splits must be a positive integer"):
        build_model("agw", bn_splits=0)
    model = build_model("agw", bn_splits=4).train()
    with pytest.raises(ValueError, match="same number of slices"):
        model(_images(8, 1), _images(3, 2))  # chunk(4): 4 visible slices, 3 infrared slices
