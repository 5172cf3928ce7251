"""Issue 24's speed parts that the CPU can check: the loss terms read from the device every N iterations (the same
stop message, first non-finite iteration and epoch means as when every iteration was read), fused Adam's state
dict across optimizers, the device-copy helpers and the --compile setting. (The vectorised CMhcl update:
tests/test_memory.py; a compiled step against the eager one: bench/check_cuda.py, since compiling ResNet-50 on the
CPU takes minutes.)"""

from __future__ import annotations

import copy
import math
import types

import numpy as np
import pytest
import torch

from rpnr.common.errors import TrainingError
from rpnr.engine import loop as trainer
from rpnr.engine.distributed import SINGLE
from rpnr.engine.settings import TrainConfig, build_parser, recipe
from rpnr.engine.step import read_terms
from rpnr.evaluation import _one_ahead, to_device

NAMES = ["ir", "rgb", "cross", "hybrid", "nrl", "total"]


def _old_check(parts: dict, epoch: int, iteration: int) -> str | None:
    """The message the per-iteration check (before issue 24) raised for one iteration's float terms."""
    if all(math.isfinite(v) for v in parts.values()):
        return None
    terms = ", ".join(f"{k} {v:.4g}" for k, v in parts.items())
    kept = f"checkpoint of epoch {epoch} intact" if epoch else "no checkpoint was written"
    return f"epoch {epoch + 1}, iteration {iteration}: the loss is not finite ({terms}); lower --lr; {kept}"


def _scripted_terms(iters: int, bad: int | None, seed: int = 0) -> torch.Tensor:
    """[iters, 6] float32 loss terms (the last one the total); row ``bad`` - 1 onwards NaN in "ir" (as after a
    divergence), and an infinite "nrl" one row later."""
    g = torch.Generator().manual_seed(seed)
    terms = torch.rand(iters, len(NAMES), generator=g) * 5
    if bad is not None:
        terms[bad - 1:, 0] = float("nan")
        terms[bad:, 4] = float("inf")
    return terms


@pytest.mark.parametrize("epoch", [0, 3])
def test_read_terms_raises_the_old_message_for_the_first_non_finite_iteration(epoch):
    terms = _scripted_terms(9, bad=6)
    with pytest.raises(TrainingError) as info:
        read_terms(terms[3:], NAMES, epoch, 4)  # iterations 4..9
    rows = terms.tolist()
    want = _old_check(dict(zip(NAMES, rows[5])), epoch, 6)
    assert str(info.value) == want and "ir nan" in want and "lower --lr" in want
    assert read_terms(terms[:5], NAMES, epoch, 1) == rows[:5]  # finite: the floats, as .item() gave them


class _FakeRun:
    """What :func:`rpnr.engine.loop.train_epoch` reads of a run, with a scripted ``train_step``."""

    def __init__(self, iters: int, compile_: bool = False):
        self.cfg = TrainConfig(dataset="sysu", stage="rpnr", data_dir="-", logs_dir="-", iters=iters, workers=0,
                               device="cpu", compile=compile_)
        images = np.zeros((4, 2, 2, 3), np.uint8)
        self.train_rgb = self.train_ir = types.SimpleNamespace(images=images)
        self.group, self.device, self.optimizer = SINGLE, torch.device("cpu"), None
        self.net = self.model = torch.nn.Linear(1, 1)


def _train_epoch(monkeypatch, run: _FakeRun, terms: torch.Tensor, epoch: int = 0, stepped: list | None = None):
    """train_epoch with scripted loss terms; ``stepped`` collects the iterations train_step ran."""
    batch = types.SimpleNamespace(load_ir=lambda: np.arange(2), load_rgb=lambda: np.arange(2))
    monkeypatch.setattr(trainer, "epoch_batches", lambda *args: [batch] * run.cfg.iters)
    stepped = [] if stepped is None else stepped

    def step(model, optimizer, group, cfg, batch, images, labels, memories, epoch, iteration):
        stepped.append(iteration)
        return dict(zip(NAMES, terms[iteration - 1].clone()))  # 0-dim tensors, "total" last

    monkeypatch.setattr(trainer, "train_step", step)
    return trainer.train_epoch(run, None, {}, epoch)


def test_train_epoch_reads_every_ten_iterations_and_keeps_the_epoch_means(monkeypatch):
    terms = _scripted_terms(23, bad=None)
    reads = []
    monkeypatch.setattr(trainer, "read_terms", lambda t, *a: reads.append(len(t)) or read_terms(t, *a))
    stepped = []
    result = _train_epoch(monkeypatch, _FakeRun(23), terms, stepped=stepped)
    assert stepped == list(range(1, 24)) and reads == [10, 10, 3]  # one host read per 10 iterations and the end
    steps = [dict(zip(NAMES, (t.item() for t in row))) for row in terms]  # what each iteration's .item() gave
    means = {key: sum(parts[key] for parts in steps) / 23 for key in NAMES}  # the old formula
    assert result == means  # bit for bit


def test_train_epoch_stops_at_the_read_naming_the_first_non_finite_iteration(monkeypatch):
    terms = _scripted_terms(23, bad=14)
    with pytest.raises(TrainingError) as info:
        _train_epoch(monkeypatch, _FakeRun(23), terms, epoch=2)
    assert str(info.value) == _old_check(dict(zip(NAMES, terms[13].tolist())), 2, 14)
    assert str(info.value).startswith("epoch 3, iteration 14: the loss is not finite (ir nan, rgb ")
    terms = _scripted_terms(5, bad=5)  # fewer iterations than a read period: read at the end
    with pytest.raises(TrainingError, match="^epoch 1, iteration 5: "):
        _train_epoch(monkeypatch, _FakeRun(5), terms)


def test_train_epoch_steps_at_most_nine_more_times_before_the_stop(monkeypatch):
    terms = _scripted_terms(30, bad=12)
    reads, stepped = [], []
    monkeypatch.setattr(trainer, "read_terms", lambda t, *a: reads.append(len(t)) or read_terms(t, *a))
    with pytest.raises(TrainingError, match="iteration 12: "):
        _train_epoch(monkeypatch, _FakeRun(30), terms, stepped=stepped)
    assert reads == [10, 10] and stepped == list(range(1, 21))  # 8 steps after the bad one; none after the read


def test_compile_setting(monkeypatch):
    assert TrainConfig(dataset="sysu", stage="rpnr", data_dir="-").compile is False
    args = build_parser().parse_args(["-d", "sysu", "--stage", "rpnr", "--data-dir", "-", "--compile"])
    assert args.compile is True and "compile" in recipe({}) and recipe({})["compile"] is False
    help_text = " ".join(build_parser().format_help().split())
    assert "--compile torch.compile the model (off by default until measured on a GPU)" in help_text
    run = _FakeRun(3, compile_=True)
    calls = []
    monkeypatch.setattr(run.net, "compile", lambda: calls.append(1) or setattr(run.net, "_compiled_call_impl", 1))
    for _ in range(2):
        _train_epoch(monkeypatch, run, _scripted_terms(3, bad=None))
    assert calls == [1]  # compiled once, in place, for the whole run
    plain = _FakeRun(3)
    monkeypatch.setattr(plain.net, "compile", lambda: pytest.fail("compiled without --compile"))
    _train_epoch(monkeypatch, plain, _scripted_terms(3, bad=None))


def _adam_steps(opt: torch.optim.Optimizer, params: list, seed: int, n: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()


@pytest.mark.parametrize("saved_fused", [True, None])
def test_adam_state_dicts_load_across_fused_and_not(saved_fused):
    """Fused Adam (the trainer's on CUDA) and the default one (elsewhere) load each other's state dicts and go
    on to the same weights (float rounding); the saved ``fused`` flag comes with the state (a resumed run keeps
    the optimizer it was saved with)."""
    torch.manual_seed(0)
    start = [torch.randn(6, 4), torch.randn(4)]
    a = [torch.nn.Parameter(t.clone()) for t in start]
    saved = torch.optim.Adam(a, lr=1e-2, weight_decay=5e-4, fused=saved_fused)
    _adam_steps(saved, a, seed=1)
    state = copy.deepcopy(saved.state_dict())
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    loaded = torch.optim.Adam(b, lr=1e-2, weight_decay=5e-4, fused=None if saved_fused else True)
    loaded.load_state_dict(state)
    assert loaded.param_groups[0]["fused"] == saved_fused
    assert int(loaded.state[b[0]]["step"]) == 3
    loaded.param_groups[0]["fused"] = None if saved_fused else True  # the other implementation, same state
    _adam_steps(saved, a, seed=2)
    _adam_steps(loaded, b, seed=2)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)


def test_device_copy_helpers_on_the_cpu():
    t = torch.arange(5)
    assert to_device(t, torch.device("cpu")) is t  # the CPU path is unchanged: no copy, no pinning
    drawn = []

    def items():
        for i in range(4):
            drawn.append(i)
            yield i

    seen = []
    for item in _one_ahead(items()):
        seen.append((item, list(drawn)))
    # each item handed out after the next one was drawn (its copy issued before this one's forward)
    assert seen == [(0, [0, 1]), (1, [0, 1, 2]), (2, [0, 1, 2, 3]), (3, [0, 1, 2, 3])]
    assert list(_one_ahead(iter([]))) == []
