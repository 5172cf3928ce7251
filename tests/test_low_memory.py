"""--low-memory (DESIGN.md section 11): the same losses, memory updates, running statistics and gradients as
the one-graph step, one batch-norm slice of activations at a time."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_close_scaled

from rpnr.engine.batches import IterationBatch
from rpnr.engine.distributed import SINGLE
from rpnr.engine.labels import EpochLabels, ModalityLabels, build_memories
from rpnr.engine.settings import TrainConfig
from rpnr.engine.step import train_step
from rpnr.models import build_model
from rpnr.models.agw import NonLocalBlock

pytestmark = pytest.mark.usefixtures("one_thread_per_module")
REPO = Path(__file__).resolve().parents[1]
N, K = 40, 5  # training images per modality, clusters


class GradientRecorder:
    """An optimizer that keeps the gradients instead of stepping (``trainable``: the names of the parameters
    that require a gradient)."""

    def __init__(self, model):
        self.model, self.grads = model, {}
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)

    def step(self):
        self.grads = {n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None}


def _labels(seed: int) -> EpochLabels:
    g = torch.Generator().manual_seed(seed)
    sides = []
    for _ in range(2):
        train = np.arange(N) % K
        sides.append(ModalityLabels(cluster=train.copy(), train=train, centers=torch.randn(K, 2048, generator=g),
                                    relabeled=0, purity=1.0, ari=1.0, nmi=1.0))
    return EpochLabels(sides[0], sides[1], r2i=np.array([1, 0, 2, 4, 3]), i2r=np.array([2, 0, 1, 3, 4]))


def _run(low_memory: bool, stage: str, bn_splits: int, epoch: int):
    """(loss parts, gradients, memories, buffers and frozen parameters) after one step of one process."""
    net, cfg, labels, memories, images, batch = _inputs(low_memory, stage, bn_splits, epoch)
    recorder = GradientRecorder(net)
    torch.manual_seed(5)  # the augmentation draws
    parts = train_step(net, recorder, SINGLE, cfg, batch, images, labels, memories, epoch, 1)
    _assert_every_gradient_nonzero(recorder)
    # every other entry of the state dict: the buffers (running statistics) and the frozen neck bias
    buffers = {n: b.clone() for n, b in net.state_dict().items() if n not in recorder.trainable}
    assert {n for n, _ in net.named_buffers()} < buffers.keys()
    return parts, recorder.grads, {k: m.features.clone() for k, m in memories.items()}, buffers


def _assert_every_gradient_nonzero(recorder: GradientRecorder) -> None:
    """Every parameter that requires a gradient has one, not all zero: the comparisons cover every branch."""
    assert recorder.grads.keys() == recorder.trainable and len(recorder.trainable) > 200
    zero = sorted(n for n, g in recorder.grads.items() if not g.abs().max() > 0)
    assert not zero, f"{len(zero)} parameters without gradient, e.g. {zero[:5]}"


def _assert_same_step(got, want, what: str) -> None:
    """(loss parts, gradients, memories, buffers) of two runs of one step: the loss parts to 1e-6, each tensor
    to 1e-5 of its largest entry (conftest.assert_close_scaled), a gradient to at least 1e-8 of the model's
    largest gradient (the non-local blocks' ``W.0.bias`` feeds a batch norm: its gradient is float32 noise)."""
    assert got[0].keys() == want[0].keys()
    for key in want[0]:
        assert got[0][key] == pytest.approx(want[0][key], rel=1e-6, abs=1e-7), (what, key)
    assert got[1].keys() == want[1].keys()
    floor = 1e-3 * max(g.abs().max().item() for g in want[1].values())
    for name, grad in want[1].items():
        assert_close_scaled(got[1][name], grad, floor=floor, name=f"{what}: gradient {name}")
    assert got[2].keys() == want[2].keys()
    for name in want[2]:  # memories: updated once, in the same order
        assert_close_scaled(got[2][name], want[2][name], name=f"{what}: memory {name}")
    assert got[3].keys() == want[3].keys()
    for name, buf in want[3].items():  # running statistics: slice 0's update only; the frozen neck bias
        assert_close_scaled(got[3][name], buf, name=f"{what}: buffer {name}")


@pytest.mark.parametrize("stage, bn_splits, epoch", [("rpnr", 2, 1), ("rpnr", 3, 2), ("baseline", 2, 0)])
def test_low_memory_step_equals_the_one_graph_step(stage, bn_splits, epoch):
    one = _run(False, stage, bn_splits, epoch)
    low = _run(True, stage, bn_splits, epoch)
    _assert_same_step(low, one, f"low memory, {stage}, {bn_splits} slices")


def test_one_slice_per_process_runs_the_one_graph_step():
    one, low = _run(False, "rpnr", 1, 1), _run(True, "rpnr", 1, 1)
    assert one[0] == low[0]
    for i in (1, 2, 3):  # gradients, memories, buffers: bit-identical
        assert low[i].keys() == one[i].keys() and all(torch.equal(low[i][n], t) for n, t in one[i].items()), i


def test_slice_forward_recomputes_the_split_forward_without_touching_the_statistics():
    torch.manual_seed(0)
    net = build_model(bn_splits=3).train()
    x_rgb, x_ir = torch.randn(8, 3, 32, 16), torch.randn(7, 3, 32, 16)
    before = copy.deepcopy(net.state_dict())
    with torch.no_grad():
        pieces = [net(x_rgb, x_ir, slice_index=j) for j in range(3)]
        assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
        f_rgb, f_ir = net(x_rgb, x_ir)
    torch.testing.assert_close(torch.cat([p[0] for p in pieces]), f_rgb, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([p[1] for p in pieces]), f_ir, rtol=0, atol=0)


RANK_SCRIPT = """
import sys, numpy as np, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
from test_low_memory import GradientRecorder, _inputs
from rpnr.engine.batches import IterationBatch
from rpnr.data.augment import rgb_rows
from rpnr.engine.distributed import ProcessGroup
from rpnr.engine.step import train_step
dist.init_process_group("gloo")
group = ProcessGroup(rank=dist.get_rank(), world_size=2, joined=True)
net, cfg, labels, memories, images, batch = _inputs(True, "rpnr", 4, 1)
net.bn_splits = 2  # this rank's two slices of the global four
model = torch.nn.parallel.DistributedDataParallel(net)
pos_ir, pos_rgb = group.batch_positions(len(batch.rows_ir)), group.batch_positions(2 * len(batch.rows_rgb))
mine = IterationBatch(batch.rows_ir, batch.rows_rgb, pos_ir, pos_rgb)
recorder = GradientRecorder(net)
torch.manual_seed(5)
parts = train_step(model, recorder, group, cfg, mine, (images[0][pos_ir], images[1][rgb_rows(pos_rgb, 4)]), labels,
                   memories, 1, 1)
if group.is_main:
    torch.save({{"parts": parts, "grads": recorder.grads, "trainable": sorted(recorder.trainable),
                "memories": {{k: m.features for k, m in memories.items()}},
                "buffers": {{n: b for n, b in net.state_dict().items() if n not in recorder.trainable}}}}, {out!r})
dist.destroy_process_group()
"""


def _inputs(low_memory: bool, stage: str, bn_splits: int, epoch: int, b_ir: int = 8, b_rgb: int = 4):
    """A model, settings, labels, memories, images and a batch for one step, the same in every process."""
    torch.manual_seed(0)
    net = build_model(bn_splits=bn_splits).train()
    with torch.no_grad():  # AGW zero-initialises the non-local blocks' output batch norm, which leaves their
        g = torch.Generator().manual_seed(3)  # branches without gradient: a trained model's non-zero values
        for block in (m for m in net.modules() if isinstance(m, NonLocalBlock)):
            block.W[1].weight.copy_(torch.rand(block.W[1].weight.shape, generator=g) + 0.5)
            block.W[1].bias.copy_(torch.randn(block.W[1].bias.shape, generator=g) * 0.1)
    cfg = TrainConfig(dataset="sysu", stage=stage, data_dir="-", logs_dir="-", height=32, width=16, device="cpu",
                      amp=False, low_memory=low_memory)
    labels = _labels(1)
    memories = build_memories(labels, 0.05, 0.1, hybrid=stage == "rpnr")
    g = torch.Generator().manual_seed(2)
    images = (torch.randint(0, 256, (b_ir, 32, 16, 3), dtype=torch.uint8, generator=g),
              torch.randint(0, 256, (b_rgb, 32, 16, 3), dtype=torch.uint8, generator=g))
    batch = IterationBatch(np.arange(b_ir) * 3 % N, np.arange(b_rgb) * 7 % N, np.arange(b_ir), np.arange(2 * b_rgb))
    return net, cfg, labels, memories, images, batch


def test_low_memory_under_torchrun_equals_one_process(tmp_path):
    """Two gloo processes, two slices each (DDP no_sync for the first): the one-process one-graph gradients."""
    out = tmp_path / "rank0.pt"
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out)))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    got = torch.load(out, weights_only=True)
    want = _run(False, "rpnr", 4, 1)
    assert set(got["trainable"]) == got["grads"].keys()  # every gradient of rank 0, none all zero
    assert not [n for n, g in got["grads"].items() if not g.abs().max() > 0]
    _assert_same_step((got["parts"], got["grads"], got["memories"], got["buffers"]), want, "torchrun")
