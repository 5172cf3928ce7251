"""The torchrun process group of a run (DESIGN.md section 8); one process is the group of size 1."""

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, autograd, nn
from tqdm import tqdm

from rpnr.common.errors import DistributedError
from rpnr.engine.rng import capture_rng_state, restore_rng_state
from rpnr.engine.settings import resolve_device

T = TypeVar("T")
TIMEOUT = datetime.timedelta(hours=2)  # rank 0 alone runs clustering and tests while the others wait


def launched_processes() -> tuple[int, int, int, int]:
    """(world size, rank, local rank, local world size) from torchrun's environment; (1, 0, 0, 1) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")),
            int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))


class _GatherWithGrad(autograd.Function):
    """Concatenation of every rank's rows; the backward sums the ranks' gradients of this rank's rows."""

    @staticmethod
    def forward(ctx, local: Tensor, rank: int, world: int) -> Tensor:
        ctx.rank, ctx.rows = rank, local.size(0)
        pieces = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(pieces, local.contiguous())
        return torch.cat(pieces, 0)  # [world * rows, ...]

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows], None, None


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the run: rank ``rank`` of ``world_size``; ``joined``: a torch.distributed group
    exists (torchrun, also with one process)."""

    rank: int = 0
    world_size: int = 1
    joined: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (tensors inside on the CPU)."""
        if not self.joined:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def progress(self, *args, **kwargs) -> tqdm:
        """A progress bar on rank 0 (tqdm's settings apply), none on the others."""
        return tqdm(*args, **{**kwargs, "disable": True} if not self.is_main else kwargs)

    def gather_objects(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order."""
        if not self.joined:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def check_same(self, value: int, what: str) -> None:
        """A :class:`DistributedError` (``what``, the rank that differs) unless every rank passed ``value``."""
        values = self.gather_objects(value)
        differ = [rank for rank, v in enumerate(values) if v != values[0]]
        if differ:
            raise DistributedError(f"{what} (rank {differ[0]} differs from rank 0); every process must run the "
                                   f"same code on the same data")

    def from_main(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """``fn`` run on rank 0, its result on every rank; its exception raised on every rank (none waits)."""
        if not self.joined:
            return fn(*args, **kwargs)
        outcome: tuple[bool, object] = (True, None)
        if self.is_main:
            try:
                outcome = (True, fn(*args, **kwargs))
            except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
                outcome = (False, exc)
        ok, value = self.broadcast_object(outcome)
        if not ok:
            raise value
        return value

    def shard(self, count: int) -> range:
        """This rank's contiguous share of ``count`` items (the first ranks take one more when uneven)."""
        base, extra = divmod(count, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (self.rank < extra))

    def batch_positions(self, size: int) -> np.ndarray:
        """This rank's slice of a global batch of ``size``."""
        if size % self.world_size:
            raise DistributedError(f"a batch of {size} cannot be split over {self.world_size} processes")
        part = size // self.world_size
        return np.arange(self.rank * part, (self.rank + 1) * part)

    def gather_rows(self, local: Tensor) -> Tensor:
        """Every rank's rows in rank order (counts may differ; no gradient)."""
        if not self.joined:
            return local
        counts = self.gather_objects(local.size(0))
        padded = local.new_zeros((max(counts), *local.shape[1:]))  # [max rows, ...]
        padded[:local.size(0)] = local
        pieces = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(pieces, padded)
        return torch.cat([p[:n] for p, n in zip(pieces, counts)], 0)

    def gather_with_grad(self, local: Tensor) -> Tensor:
        """Every rank's rows (equal counts), gradients flowing back: after DDP's averaging the parameter gradient
        is the one-process gradient."""
        if not self.joined:
            return local
        return _GatherWithGrad.apply(local, self.rank, self.world_size)

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (batch-norm running statistics) on every rank."""
        if self.joined:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    def sync_random_state(self) -> None:
        """Rank 0's python, numpy and torch CPU generator states on every rank."""
        if self.joined:
            state = capture_rng_state()
            state.pop("cuda", None)
            restore_rng_state(self.broadcast_object(state))

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """``module`` in DistributedDataParallel (its broadcast of rank 0's buffers kept), itself for one process."""
        if not self.joined:
            return module
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)


SINGLE = ProcessGroup()


def start(device: str) -> tuple[ProcessGroup, str]:
    """Join torchrun's process group (NCCL on CUDA, gloo on the CPU) and pick this process's device; without
    torchrun the one-process group and ``device`` as given."""
    world, rank, local_rank, local_world = launched_processes()
    if "LOCAL_RANK" not in os.environ or "MASTER_ADDR" not in os.environ:  # not started by torchrun
        return SINGLE, device
    device = resolve_device(device, world, local_rank, local_world, torchrun=True)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=TIMEOUT)
    return ProcessGroup(rank=rank, world_size=world, joined=True), device


def stop(group: ProcessGroup) -> None:
    """Leave the process group, if one was joined."""
    if group.joined and dist.is_initialized():
        dist.destroy_process_group()
