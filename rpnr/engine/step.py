"""One training iteration (DESIGN.md sections 2, 5, 8 and 11)."""

import contextlib
import ctypes
import math

import torch
from torch import Tensor, nn

from rpnr.common.errors import TrainingError
from rpnr.data.augment import IterationDraws
from rpnr.engine.batches import IterationBatch
from rpnr.engine.distributed import ProcessGroup
from rpnr.engine.labels import EpochLabels
from rpnr.engine.settings import TrainConfig
from rpnr.evaluation import to_device
from rpnr.training import TermInputs, objective


def _autocast(device: torch.device, enabled: bool = True):
    """bfloat16 autocast on CUDA when enabled; nothing on the CPU."""
    return torch.autocast("cuda", torch.bfloat16) if enabled and device.type == "cuda" else contextlib.nullcontext()


def _objective(f_rgb: Tensor, f_ir: Tensor, cfg: TrainConfig, batch: IterationBatch, labels: EpochLabels,
               memories: dict, epoch: int, iteration: int) -> tuple[Tensor, dict]:
    """The objective of the whole batch's features (every rank: the same) and its terms (and "total") as detached
    device tensors, checked when read (:func:`read_terms`; ``iteration`` is not needed here)."""
    y_ir, y, r2i, i2r = (None if a is None else to_device(torch.as_tensor(a), f_ir.device) for a in (
        labels.ir.train[batch.rows_ir], labels.rgb.train[batch.rows_rgb], labels.r2i, labels.i2r))  # [B_ir], [B_rgb]
    y_rgb = torch.cat((y, y), 0)  # [2 B_rgb]: labels of view 1 then view 2
    total, parts = objective(TermInputs(f_rgb, f_ir, y_rgb, y_ir, memories, r2i, i2r, epoch, cfg), cfg.terms)
    return total, {**{name: value.detach() for name, value in parts.items()}, "total": total.detach()}


def read_terms(terms: Tensor, names: list[str], epoch: int, first: int) -> list[list[float]]:
    """The loss terms of iterations ``first``, ``first`` + 1, ... ([n, len(names)] on the device) as floats, one
    host synchronisation; the first iteration with a term that is not finite is a :class:`TrainingError`."""
    rows = terms.tolist()
    for iteration, row in enumerate(rows, first):
        if not all(math.isfinite(v) for v in row):
            parts = ", ".join(f"{k} {v:.4g}" for k, v in zip(names, row))
            kept = f"checkpoint of epoch {epoch} intact" if epoch else "no checkpoint was written"
            raise TrainingError(f"epoch {epoch + 1}, iteration {iteration}: the loss is not finite ({parts}); "
                                f"lower --lr; {kept}")
    return rows


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, group: ProcessGroup, cfg: TrainConfig,
               batch: IterationBatch, images: tuple[Tensor, Tensor], labels: EpochLabels, memories: dict, epoch: int,
               iteration: int) -> dict:
    """One iteration on the global batch (``images``: this rank's uint8 infrared and visible rows): the loss terms
    (and "total") as 0-dim device tensors, unread (no host synchronisation; :func:`read_terms` checks them)."""
    device = torch.device(cfg.device)
    # the whole batch's draws from the shared stream; this rank applies its slice (section 8)
    draws = IterationDraws.draw(len(batch.rows_ir), len(batch.rows_rgb), cfg.height, cfg.width)
    channels_last = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    x_ir = draws.ir_views(images[0].to(device, non_blocking=True), batch.pos_ir, cfg.height, cfg.width)
    x_rgb = draws.rgb_views(images[1].to(device, non_blocking=True), batch.pos_rgb, cfg.height, cfg.width)
    x_rgb, x_ir = x_rgb.contiguous(memory_format=channels_last), x_ir.contiguous(memory_format=channels_last)
    inputs = (cfg, batch, labels, memories, epoch, iteration)
    optimizer.zero_grad(set_to_none=True)
    if cfg.low_memory and getattr(model, "module", model).bn_splits > 1:
        parts = _low_memory_backward(model, group, device, cfg.amp, x_rgb, x_ir, inputs)
    else:
        with _autocast(device, cfg.amp):
            f_rgb, f_ir = model(x_rgb, x_ir)  # this rank's slice
        total, parts = _objective(group.gather_with_grad(f_rgb.float()),  # [2 B_rgb, 2048], the whole batch
                                  group.gather_with_grad(f_ir.float()), *inputs)  # [B_ir, 2048]
        total.backward()  # memories updated identically on every rank; DDP averages the gradients
    optimizer.step()
    return parts


def _low_memory_backward(model: nn.Module, group: ProcessGroup, device: torch.device, amp: bool, x_rgb: Tensor,
                         x_ir: Tensor, inputs: tuple) -> dict:
    """The one-graph step's gradients and memory updates, one batch-norm slice of activations at a time, as
    DESIGN.md section 11 says (steps 1-3; DDP synchronises on the last slice only)."""
    with torch.no_grad(), _autocast(device, amp):
        f_rgb, f_ir = model(x_rgb, x_ir)  # no graph; slice 0 updates the running statistics
    leaf_rgb = f_rgb.float().detach().requires_grad_()  # [2 B_rgb / W, 2048]
    leaf_ir = f_ir.float().detach().requires_grad_()  # [B_ir / W, 2048]
    total, parts = _objective(group.gather_with_grad(leaf_rgb), group.gather_with_grad(leaf_ir), *inputs)
    total.backward()  # the features' gradient; the memories updated here, once
    splits = getattr(model, "module", model).bn_splits
    rows = [[len(c) for c in torch.arange(len(x)).chunk(splits)] for x in (x_rgb, x_ir)]  # rows of each slice
    grads = list(zip(leaf_rgb.grad.split(rows[0]), leaf_ir.grad.split(rows[1])))
    for j, (grad_rgb, grad_ir) in enumerate(grads):
        if device.type == "cpu" and hasattr(ctypes.pythonapi, "malloc_trim"):  # glibc (Linux) keeps freed blocks:
            ctypes.pythonapi.malloc_trim(0)  # hand them back, so that the CPU peak is one slice's (section 11)
        with contextlib.nullcontext() if j == len(grads) - 1 or not hasattr(model, "no_sync") else model.no_sync():
            with _autocast(device, amp):
                s_rgb, s_ir = model(x_rgb, x_ir, slice_index=j)  # slice j, running statistics untouched
            torch.autograd.backward([s_rgb.float(), s_ir.float()], [grad_rgb, grad_ir])
    return parts
