"""The batches of an epoch, the same on every rank, read ahead by threads (DESIGN.md sections 5, 8)."""

import hashlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from rpnr.common.errors import PseudoLabelError
from rpnr.data.augment import rgb_rows
from rpnr.data.prepared import ImageSet
from rpnr.data.sampler import BatchStream, RandomMultipleGallerySampler
from rpnr.engine.distributed import ProcessGroup
from rpnr.engine.labels import MODALITY_NAMES, EpochLabels
from rpnr.engine.settings import TrainConfig


def make_stream(labels: np.ndarray, cams: np.ndarray, batch_size: int, num_instances: int, modality: str,
                epoch: int) -> tuple[BatchStream, np.ndarray]:
    """Batches over the non-outliers (dataset order) and the dataset index of each sampler position."""
    index = np.nonzero(labels >= 0)[0]  # [n] dataset rows of the data source
    sampler = RandomMultipleGallerySampler(labels[index], np.asarray(cams)[index], num_instances)
    if sampler.pass_length() < batch_size:
        raise PseudoLabelError(f"epoch {epoch}: {MODALITY_NAMES[modality]} pseudo labels give only "
                               f"{sampler.pass_length()} samples per pass ({sampler.num_identities} identities), "
                               f"fewer than a batch of {batch_size} - try a larger --eps or a smaller --batch-size")
    return BatchStream(sampler, batch_size), index


def _load_batch(images: np.ndarray, rows: np.ndarray, pin: bool) -> Tensor:
    """uint8 [B, H, W, 3] CPU tensor of the given dataset rows (read from the memory map)."""
    batch = torch.from_numpy(np.ascontiguousarray(images[rows]))
    return batch.pin_memory() if pin else batch


def prefetch(images: np.ndarray, batches: list[np.ndarray], workers: int, pin: bool) -> Iterator[Tensor]:
    """Loaded batches in order; ``workers`` threads read ahead (0: read in the loop)."""
    if workers <= 0:
        yield from (_load_batch(images, rows, pin) for rows in batches)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for rows in batches:
            pending.append(pool.submit(_load_batch, images, rows, pin))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@dataclass
class IterationBatch:
    """One iteration's global batch (dataset rows) and this rank's positions in it."""

    rows_ir: np.ndarray  # [B_ir] dataset rows of the infrared batch
    rows_rgb: np.ndarray  # [B_rgb] dataset rows of the visible images (each seen in two views)
    pos_ir: np.ndarray  # this rank's positions in the infrared batch
    pos_rgb: np.ndarray  # this rank's positions in the two-view batch [view 1; view 2] of 2 B_rgb

    def load_ir(self) -> np.ndarray:
        """Dataset rows this rank reads for its infrared slice."""
        return self.rows_ir[self.pos_ir]

    def load_rgb(self) -> np.ndarray:
        """Dataset rows this rank reads for its visible slice (each image once)."""
        return self.rows_rgb[rgb_rows(self.pos_rgb, len(self.rows_rgb))]


def epoch_batches(labels: EpochLabels, train_rgb: ImageSet, train_ir: ImageSet, cfg: TrainConfig, epoch: int,
                  group: ProcessGroup) -> list[IterationBatch]:
    """The epoch's ``cfg.iters`` global batches (the same on every rank) and this rank's share of each."""
    stream_ir, rows_ir = make_stream(labels.ir.train, train_ir.cams, cfg.batch_size, cfg.num_instances, "ir", epoch + 1)
    stream_rgb, rows_rgb = make_stream(labels.rgb.train, train_rgb.cams, cfg.rgb_batch_size,
                                       cfg.num_instances, "rgb", epoch + 1)
    pos_ir = group.batch_positions(cfg.batch_size)
    pos_rgb = group.batch_positions(2 * cfg.rgb_batch_size)
    batches = [IterationBatch(rows_ir[p_ir], rows_rgb[p_rgb], pos_ir, pos_rgb)
               for p_ir, p_rgb in zip(stream_ir.take(cfg.iters), stream_rgb.take(cfg.iters))]
    digest = hashlib.blake2b(digest_size=8)
    for array in [labels.ir.train, labels.rgb.train, *(a for b in batches for a in (b.rows_ir, b.rows_rgb))]:
        digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    group.check_same(int.from_bytes(digest.digest(), "little"), f"epoch {epoch + 1}: the processes drew "
                     f"different batches or labels")  # section 10: never train on different batches
    return batches
