"""Identity-balanced batches over pseudo-labelled samples: the release's sampler (DESIGN.md sec. 5)."""

import random

import numpy as np
import torch


class RandomMultipleGallerySampler:
    """Positions into a source of (pseudo label, camera) pairs by identity (DESIGN.md section 5); labels < 0 never."""

    def __init__(self, labels, cams, num_instances: int = 4):
        labels, cams = np.asarray(labels), np.asarray(cams)
        if labels.shape != cams.shape:
            raise ValueError(f"labels and cams differ in length: {labels.shape} vs {cams.shape}")
        if num_instances < 1:
            raise ValueError(f"num_instances must be positive, got {num_instances}")
        self.num_instances = num_instances
        self.pid_index: dict[int, list[int]] = {}
        self.pid_cam: dict[int, list[int]] = {}
        self.cams = cams.tolist()
        for index, (pid, cam) in enumerate(zip(labels.tolist(), self.cams)):
            if pid < 0:
                continue
            self.pid_index.setdefault(pid, []).append(index)
            self.pid_cam.setdefault(pid, []).append(cam)
        self.pids = list(self.pid_index)  # order of first appearance, as the release's dict

    @property
    def num_identities(self) -> int:
        return len(self.pids)

    def pass_length(self) -> int:
        """Number of positions one pass yields (a single-sample identity yields only its anchor)."""
        return sum(self.num_instances if len(idx) > 1 else 1 for idx in self.pid_index.values())

    def __len__(self) -> int:
        return len(self.pids) * self.num_instances

    def __iter__(self):
        ret: list[int] = []
        for kid in torch.randperm(len(self.pids)).tolist():
            pid = self.pids[kid]
            index = self.pid_index[pid]
            anchor = random.choice(index)
            ret.append(anchor)
            # the release's No_index: positions of the other cameras' samples, else of the other samples
            candidates = ([i for i, cam in enumerate(self.pid_cam[pid]) if cam != self.cams[anchor]]
                          or [i for i, k in enumerate(index) if k != anchor])
            if not candidates:
                continue
            replace = len(candidates) < self.num_instances
            # global legacy numpy stream, as the release (its state is saved in checkpoints)
            picks = np.random.choice(candidates, size=self.num_instances - 1, replace=replace)  # noqa: NPY002
            ret.extend(index[k] for k in picks.tolist())
        return iter(ret)


class BatchStream:
    """Endless fixed-size batches of sampler positions: the release's ``IterLoader`` over a ``drop_last`` DataLoader."""

    def __init__(self, sampler: RandomMultipleGallerySampler, batch_size: int):
        if sampler.pass_length() < batch_size:
            raise ValueError(f"one pass of the sampler yields {sampler.pass_length()} samples, "
                             f"fewer than a batch of {batch_size}")
        self.sampler, self.batch_size = sampler, batch_size
        self._batches: list[np.ndarray] = []

    def next(self) -> np.ndarray:
        """The next batch: int64 positions [batch_size] into the sampler's data source."""
        if not self._batches:  # a new pass
            flat = np.fromiter(iter(self.sampler), dtype=np.int64)
            n = len(flat) // self.batch_size
            self._batches = list(flat[: n * self.batch_size].reshape(n, self.batch_size))[::-1]
        return self._batches.pop()

    def take(self, count: int) -> list[np.ndarray]:
        """The next ``count`` batches."""
        return [self.next() for _ in range(count)]
