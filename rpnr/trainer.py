"""The training loop of both stages (DESIGN.md sections 3-5): per epoch, pseudo labels,
memories, training iterations, evaluation and checkpoints.

Stage "baseline" (stage 1): DBSCAN labels per modality, CMhcl memories, L_ir + L_rgb.
Stage "rpnr" (stage 2): adds NPC label calibration, OT prototype matching, the hybrid
memory, the alternating cross-modality terms and the neighbour relation loss.
One code path serves SYSU-MM01, RegDB and LLCM; the differences are settings.

Under torchrun (section 8) every rank runs the same loop: clustering features are
extracted in shards, pseudo labels are computed on rank 0 and shared, each rank
trains on its slice of every global batch, and rank 0 alone evaluates and writes
(``rpnr.distributed``). One process is the group of size 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from rpnr import protocols
from rpnr.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from rpnr.data.augment import IterationDraws, rgb_rows
from rpnr.data.prepared import ImageSet, check_prepared, load_train
from rpnr.data.sampler import BatchStream, RandomMultipleGallerySampler
from rpnr.distributed import SINGLE, ProcessGroup
from rpnr.evaluation import extract_features_uint8
from rpnr.files import remove_temporaries, sha256_file
from rpnr.matching import hybrid_centers, match_clusters
from rpnr.memory import ClusterMemory
from rpnr.models import build_model, load_weights
from rpnr.pseudo_labels import calibrate_labels, cluster_centers, cluster_features
from rpnr.rank_list import write_rank_list
from rpnr.results import side_by_side
from rpnr.rng import capture_rng_state, restore_rng_state, seed_everything
from rpnr.run_folder import BEST, CHECKPOINT, OUTPUTS, RunFolder, device_name, provenance, write_run_json
from rpnr.run_log import RunLog
from rpnr.training import stage1_loss, stage2_loss

FORMAT_VERSION = 1
TEST_JSON = "test.json"
RANKS_PNG = "ranks.png"
STAGES = ("baseline", "rpnr")
DATASETS = ("sysu", "regdb", "llcm")
# LLCM has no release recipe: SYSU's settings (DESIGN.md section 9)
EPS = {"sysu": 0.6, "regdb": 0.3, "llcm": 0.6}
ITERS = {"sysu": 200, "regdb": 100, "llcm": 200}
# NPC prototype members: the release's train_sysu.py keeps heapq.nlargest(20, ...), train_regdb.py nlargest(5, ...)
TOP_K = {"sysu": 20, "regdb": 5, "llcm": 20}
TRIALED = ("regdb",)  # datasets trained per trial (a model per trial); the others test on ten galleries
MODALITY_NAMES = {"rgb": "visible", "ir": "infrared"}
# settings that change what a run computes: a resumed run must keep them (DESIGN.md section 10)
COMPUTED = ("trial", "height", "width", "batch_size", "rgb_batch_size", "num_instances", "iters", "lr", "weight_decay",
            "step_size", "gamma", "eps", "k1", "k2", "min_samples", "momentum", "temp", "top_k", "ot_reg", "w_cross",
            "w_hybrid", "w_nrl", "sigma", "delta", "seed", "amp", "bn_splits", "feature_precision")
CURRENT = ("data_dir", "logs_dir", "resume", "overwrite", "device")  # a resumed run takes these from the command


class TrainingError(RuntimeError):
    """A run cannot go on (degenerate pseudo labels, unusable checkpoint); the message is one line."""


class PseudoLabelError(TrainingError):
    """An epoch's pseudo labels cannot fill a batch (too few clusters)."""


@dataclass
class TrainConfig:
    """Every setting of a run (plain values; stored as the checkpoint's "args")."""

    dataset: str
    stage: str
    data_dir: str
    logs_dir: str
    trial: int = 1
    height: int = 288
    width: int = 144
    batch_size: int = 128
    rgb_batch_size: int = 64
    num_instances: int = 16
    iters: int = 200
    epochs: int = 50
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    step_size: int = 20
    gamma: float = 0.1
    eps: float = 0.6
    k1: int = 30
    k2: int = 6
    min_samples: int = 4
    momentum: float = 0.1
    temp: float = 0.05
    top_k: int = 20
    ot_reg: float = 5.0
    w_cross: float = 0.25
    w_hybrid: float = 0.5
    w_nrl: float = 10.0
    sigma: float = 1.0
    delta: float = 1.0
    imagenet: str | None = None
    baseline: str | None = None
    resume: bool = False
    overwrite: bool = False  # a fresh run replaces the outputs of an earlier run in logs_dir
    device: str = "cpu"
    seed: int | None = 1
    workers: int = 4
    feature_batch_size: int = 256
    test_trials: int = 10
    amp: bool = True  # bf16 autocast in the CUDA training step (the release trains in fp32)
    bn_splits: int = 2  # batch-norm slices of the training forward (2 = the release's two-GPU DataParallel)
    feature_precision: str = "tf32"  # clustering-feature arithmetic on CUDA: fp32 | tf32 | bf16


@dataclass
class ModalityLabels:
    """One modality's pseudo labels of an epoch."""

    cluster: np.ndarray  # int64 [N] DBSCAN labels (-1 = outlier)
    train: np.ndarray  # int64 [N] training labels (NPC-calibrated in stage 2)
    centers: Tensor  # [K, 2048] cluster means of the DBSCAN labels
    relabeled: int  # samples whose label NPC changed
    purity: float  # fraction of labelled samples agreeing with their cluster's majority identity

    @property
    def num_clusters(self) -> int:
        return int(self.centers.size(0))

    @property
    def num_outliers(self) -> int:
        return int((self.cluster < 0).sum())


def default_rgb_batch(dataset: str, stage: str, batch_size: int) -> int:
    """RGB images per batch (each seen in two views): stage 2 on SYSU (and LLCM) uses ``batch_size``,
    the others half."""
    return batch_size if stage == "rpnr" and dataset in ("sysu", "llcm") else batch_size // 2


def default_logs_dir(dataset: str, stage: str, trial: int) -> str:
    """Where a stage writes by default; stage 2 reads stage 1's model_best from there."""
    base = f"baseline/{dataset}_s1" if stage == "baseline" else f"logs/{dataset}_s2"
    return f"{base}/{trial}" if dataset in TRIALED else base


def default_baseline(dataset: str, trial: int) -> str:
    """Default stage-1 checkpoint that stage 2 starts from."""
    return f"{default_logs_dir(dataset, 'baseline', trial)}/{BEST}"


# ----------------------------------------------------------------------------- pseudo labels
def label_purity(labels: np.ndarray, pids: np.ndarray) -> float:
    """Fraction of non-outliers whose ground-truth identity is the majority one of their cluster."""
    keep = labels >= 0
    if not keep.any():
        return 0.0
    pairs = np.stack([labels[keep], np.asarray(pids)[keep]], 1)  # [n, 2]
    uniq, counts = np.unique(pairs, axis=0, return_counts=True)
    majority = {}
    for (label, _), count in zip(uniq.tolist(), counts.tolist()):
        majority[label] = max(majority.get(label, 0), count)
    return float(sum(majority.values()) / keep.sum())


def modality_labels(features: Tensor, pids: np.ndarray, eps: float, k1: int, k2: int, min_samples: int,
                    calibrate: bool, top_k: int) -> ModalityLabels:
    """DBSCAN on the k-reciprocal Jaccard distance, cluster centres, and NPC when ``calibrate``."""
    cluster = np.asarray(cluster_features(features, eps, k1, k2, min_samples), dtype=np.int64)
    centers = cluster_centers(features, cluster)  # [K, 2048]
    train = np.asarray(calibrate_labels(features, cluster, top_k), dtype=np.int64) if calibrate else cluster
    relabeled = int((train != cluster).sum())
    return ModalityLabels(cluster=cluster, train=train, centers=centers, relabeled=relabeled,
                          purity=label_purity(train, pids))


def check_labels(labels: ModalityLabels, modality: str, epoch: int, eps: float, batch_size: int,
                 num_instances: int) -> None:
    """Raise :class:`PseudoLabelError` when the labels cannot fill one batch of identities."""
    need = max(batch_size // num_instances, 1)
    identities = int(np.unique(labels.train[labels.train >= 0]).size)
    name = MODALITY_NAMES[modality]
    # mostly outliers: eps is too small; few clusters but few outliers: eps merges identities
    direction = "larger" if 2 * labels.num_outliers >= len(labels.cluster) else "smaller"
    hint = (f"need at least {need} for a batch of {batch_size} with {num_instances} instances - "
            f"try a {direction} --eps")
    if labels.num_clusters < need:
        raise PseudoLabelError(f"epoch {epoch}: {name} pseudo labels have {labels.num_clusters} clusters "
                               f"({labels.num_outliers} outliers, eps {eps:g}); {hint}")
    if identities < need:
        raise PseudoLabelError(f"epoch {epoch}: {name} pseudo labels keep {identities} identities after "
                               f"calibration ({labels.num_clusters} clusters, {labels.num_outliers} "
                               f"outliers, eps {eps:g}); {hint}")


def make_stream(labels: np.ndarray, cams: np.ndarray, batch_size: int, num_instances: int, modality: str,
                epoch: int) -> tuple[BatchStream, np.ndarray]:
    """Batches over the non-outliers (dataset order) and the dataset index of each sampler position."""
    index = np.nonzero(labels >= 0)[0]  # [n] dataset rows of the data source
    sampler = RandomMultipleGallerySampler(labels[index], np.asarray(cams)[index], num_instances)
    if sampler.pass_length() < batch_size:
        raise PseudoLabelError(
            f"epoch {epoch}: {MODALITY_NAMES[modality]} pseudo labels give only {sampler.pass_length()} "
            f"samples "
            f"per pass ({sampler.num_identities} identities), fewer than a batch of {batch_size} - "
            f"try a larger --eps or a smaller --batch-size"
        )
    return BatchStream(sampler, batch_size), index


# ----------------------------------------------------------------------------- batches
def _load_batch(images: np.ndarray, rows: np.ndarray, pin: bool) -> Tensor:
    """uint8 [B, H, W, 3] CPU tensor of the given dataset rows (read from the memory map)."""
    batch = torch.from_numpy(np.ascontiguousarray(images[rows]))
    return batch.pin_memory() if pin else batch


def _prefetch(images: np.ndarray, batches: list[np.ndarray], workers: int, pin: bool) -> Iterator[Tensor]:
    """Loaded batches in order; ``workers`` threads read ahead (0: read in the loop)."""
    if workers <= 0:
        for rows in batches:
            yield _load_batch(images, rows, pin)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        ahead = iter(batches)
        for rows in ahead:
            pending.append(pool.submit(_load_batch, images, rows, pin))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _autocast(device: torch.device, enabled: bool = True):
    """bfloat16 autocast on CUDA when enabled; nothing on the CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _progress(group: ProcessGroup, *args, **kwargs) -> tqdm:
    """A progress bar on rank 0 (tqdm's own settings, e.g. TQDM_DISABLE, apply); none on the other ranks."""
    return tqdm(*args, **kwargs) if group.is_main else tqdm(*args, **kwargs, disable=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- one epoch
@dataclass
class EpochLabels:
    """An epoch's pseudo labels of both modalities and, in stage 2, the OT partners."""

    rgb: ModalityLabels
    ir: ModalityLabels
    r2i: np.ndarray | None  # [K_rgb] IR partner of each RGB cluster (stage 2)
    i2r: np.ndarray | None  # [K_ir] RGB partner of each IR cluster (stage 2)

    def to(self, device: torch.device) -> EpochLabels:
        """The same labels with the cluster centres on ``device``."""
        return EpochLabels(dataclasses.replace(self.rgb, centers=self.rgb.centers.to(device)),
                           dataclasses.replace(self.ir, centers=self.ir.centers.to(device)), self.r2i, self.i2r)


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


@dataclass
class RunState:
    """Everything a run holds between epochs."""

    cfg: TrainConfig
    group: ProcessGroup
    device: torch.device
    net: nn.Module  # the AGW model (eval, checkpoints)
    model: nn.Module  # what the training step calls: ``net``, or ``net`` in DistributedDataParallel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_rgb: ImageSet
    train_ir: ImageSet
    log: RunLog
    args: dict
    folder: RunFolder
    data_id: str  # identity of the prepared data (checked on resume)
    start_epoch: int = 0
    best: dict = dataclasses.field(default_factory=lambda: {"epoch": 0, "rank1": -1.0, "mAP": 0.0})

    @property
    def best_rank1(self) -> float:
        return float(self.best["rank1"])

    @property
    def logs_dir(self) -> Path:
        return Path(self.cfg.logs_dir)


def extract_train_features(model: nn.Module, images: np.ndarray, modal: str, batch_size: int,
                           device: torch.device, desc: str, group: ProcessGroup = SINGLE,
                           precision: str = "fp32") -> Tensor:
    """Clustering features: flip-averaged eval embeddings, NOT re-normalised (release): [N, 2048] float32.

    Computed without bf16 autocast unless ``precision`` is "bf16" (clustering is sensitive
    to small feature changes). Under torchrun each rank embeds a contiguous share of the
    batches (the batches of one process, so every image sees the same batch) and the
    shares are gathered.
    """
    batches = group.shard(-(-len(images) // batch_size))
    part = images[batches.start * batch_size:batches.stop * batch_size]  # [N_rank, H, W, 3]
    with _progress(group, total=len(part), desc=desc, unit="img", leave=False) as bar:
        feats = extract_features_uint8(model, part, modal, batch_size=batch_size, flip=True, normalize=False,
                                       device=device, progress=bar.update, precision=precision)
    return group.gather_rows(feats.float())


def compute_labels(feats_rgb: Tensor, feats_ir: Tensor, train_rgb: ImageSet, train_ir: ImageSet,
                   cfg: TrainConfig, epoch: int) -> EpochLabels:
    """Pseudo labels of both modalities (NPC in stage 2), checked, with the OT partners; centres on the CPU."""
    calibrate = cfg.stage == "rpnr"
    rgb = modality_labels(feats_rgb, train_rgb.pids, cfg.eps, cfg.k1, cfg.k2, cfg.min_samples, calibrate,
                          cfg.top_k)
    ir = modality_labels(feats_ir, train_ir.pids, cfg.eps, cfg.k1, cfg.k2, cfg.min_samples, calibrate, cfg.top_k)
    check_labels(ir, "ir", epoch + 1, cfg.eps, cfg.batch_size, cfg.num_instances)
    check_labels(rgb, "rgb", epoch + 1, cfg.eps, cfg.rgb_batch_size, cfg.num_instances)
    r2i, i2r = match_clusters(rgb.centers, ir.centers, reg=cfg.ot_reg) if calibrate else (None, None)
    return EpochLabels(rgb, ir, r2i, i2r).to(torch.device("cpu"))


def build_memories(labels: EpochLabels, stage: str, temp: float, momentum: float) -> dict:
    """The epoch's CMhcl memories: "rgb", "ir" and, in stage 2, "hybrid"."""
    rgb, ir = labels.rgb, labels.ir
    memories = {"rgb": ClusterMemory.from_centers(rgb.centers, temp, momentum, "CMhcl"),
                "ir": ClusterMemory.from_centers(ir.centers, temp, momentum, "CMhcl")}
    if stage == "baseline":
        return memories
    present = np.zeros(ir.num_clusters, dtype=bool)
    present[np.unique(ir.train[ir.train >= 0])] = True
    # quirk (release): hybrid rows of IR clusters left empty by calibration stay zero
    hybrid = hybrid_centers(rgb.centers, ir.centers, labels.i2r, present=present)  # [K_ir, 2048]
    memories["hybrid"] = ClusterMemory.from_centers(hybrid, temp, momentum, "CMhcl")
    return memories


def epoch_batches(labels: EpochLabels, train_rgb: ImageSet, train_ir: ImageSet, cfg: TrainConfig, epoch: int,
                  group: ProcessGroup) -> list[IterationBatch]:
    """The epoch's ``cfg.iters`` global batches (the same on every rank) and this rank's share of each."""
    stream_ir, rows_ir = make_stream(labels.ir.train, train_ir.cams, cfg.batch_size, cfg.num_instances,
                                     "ir", epoch + 1)
    stream_rgb, rows_rgb = make_stream(labels.rgb.train, train_rgb.cams, cfg.rgb_batch_size,
                                       cfg.num_instances, "rgb", epoch + 1)
    stream_ir.new_epoch()
    stream_rgb.new_epoch()
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


def train_step(s: RunState, batch: IterationBatch, img_ir: Tensor, img_rgb: Tensor, labels: EpochLabels,
               memories: dict, epoch: int, iteration: int) -> dict:
    """One iteration on the global batch; returns the loss terms (and "total") as floats.

    A loss that is not finite stops the run before the optimizer step (:class:`TrainingError`).
    """
    cfg, device = s.cfg, s.device
    y_ir = torch.from_numpy(labels.ir.train[batch.rows_ir]).to(device)  # [B_ir]
    y = torch.from_numpy(labels.rgb.train[batch.rows_rgb]).to(device)  # [B_rgb]
    y_rgb = torch.cat((y, y), 0)  # [2 B_rgb]: labels of view 1 then view 2
    # the whole batch's draws from the shared stream; this rank applies its slice (section 8)
    draws = IterationDraws.draw(len(batch.rows_ir), len(batch.rows_rgb), cfg.height, cfg.width)
    x_ir = draws.ir_views(img_ir.to(device, non_blocking=True), batch.pos_ir, cfg.height, cfg.width)
    x_rgb = draws.rgb_views(img_rgb.to(device, non_blocking=True), batch.pos_rgb, cfg.height, cfg.width)
    channels_last = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    with _autocast(device, cfg.amp):
        f_rgb, f_ir = s.model(x_rgb.contiguous(memory_format=channels_last),
                              x_ir.contiguous(memory_format=channels_last))  # this rank's slice
    f_rgb = s.group.gather_with_grad(f_rgb.float())  # [2 B_rgb, 2048], the whole batch on every rank
    f_ir = s.group.gather_with_grad(f_ir.float())  # [B_ir, 2048]
    if cfg.stage == "baseline":
        total, parts = stage1_loss(f_rgb, f_ir, y_rgb, y_ir, memories)
    else:
        total, parts = stage2_loss(f_rgb, f_ir, y_rgb, y_ir, memories, labels.r2i, labels.i2r, epoch,
                                   w_cross=cfg.w_cross, w_hybrid=cfg.w_hybrid, w_nrl=cfg.w_nrl,
                                   sigma=cfg.sigma, delta=cfg.delta)
    parts["total"] = total.item()
    if not all(math.isfinite(v) for v in parts.values()):
        terms = ", ".join(f"{k} {v:.4g}" for k, v in parts.items())
        kept = f"checkpoint of epoch {epoch} intact" if epoch else "no checkpoint was written"
        raise TrainingError(f"epoch {epoch + 1}, iteration {iteration}: the loss is not finite ({terms}); "
                            f"lower --lr; {kept}")
    s.optimizer.zero_grad(set_to_none=True)
    total.backward()  # memories updated identically on every rank; DDP averages the gradients
    s.optimizer.step()
    return parts


def train_epoch(s: RunState, labels: EpochLabels, memories: dict, epoch: int) -> dict:
    """``cfg.iters`` iterations; returns the mean of each loss term (and "total")."""
    cfg = s.cfg
    batches = epoch_batches(labels, s.train_rgb, s.train_ir, cfg, epoch, s.group)
    pin = s.device.type == "cuda"
    loaded = zip(_prefetch(s.train_ir.images, [b.load_ir() for b in batches], cfg.workers, pin),
                 _prefetch(s.train_rgb.images, [b.load_rgb() for b in batches], cfg.workers, pin))
    s.model.train()
    sums: dict[str, float] = {}
    bar = _progress(s.group, zip(loaded, batches), total=cfg.iters, desc=f"epoch {epoch + 1} train", unit="it",
                    leave=False)
    for iteration, ((img_ir, img_rgb), batch) in enumerate(bar, 1):
        parts = train_step(s, batch, img_ir, img_rgb, labels, memories, epoch, iteration)
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + value
        bar.set_postfix(loss=f"{parts['total']:.3f}")
    bar.close()
    return {key: value / cfg.iters for key, value in sums.items()}


def evaluate_epoch(model: nn.Module, dataset: str, data_dir: str, trial: int, device: torch.device,
                   batch_size: int) -> dict:
    """Per-epoch test: SYSU all-search on gallery trial 0, RegDB visible-to-thermal on ``trial``,
    LLCM visible-to-infrared on gallery trial 0.

    Returns {"rank1", "mAP", "mINP"} in percent.
    """
    if dataset == "sysu":
        res = protocols.evaluate_sysu(model, data_dir, mode="all", trials=[0], device=device,
                                      batch_size=batch_size)
    elif dataset == "llcm":
        res = protocols.evaluate_llcm(model, data_dir, "visible_to_infrared", trials=[0], device=device,
                                      batch_size=batch_size)
    else:
        res = protocols.evaluate_regdb(model, data_dir, trial=trial, direction="visible_to_thermal",
                                       device=device, batch_size=batch_size)
    return {key: value for key, value in protocols.to_percent(res).items() if key in ("rank1", "mAP", "mINP")}


def final_test(model: nn.Module, dataset: str, data_dir: str, trial: int, trials: int, device: torch.device,
               batch_size: int) -> dict:
    """Full test of a model: SYSU all and indoor over ``trials`` galleries; RegDB both directions of
    ``trial``; LLCM both directions over ``trials`` galleries.
    {setting: {"rank1", "rank5", "rank10", "rank20", "mAP", "mINP"}} in percent."""
    if dataset == "sysu":
        results = {mode: protocols.evaluate_sysu(model, data_dir, mode=mode, trials=range(trials), device=device,
                                                 batch_size=batch_size) for mode in ("all", "indoor")}
    elif dataset == "llcm":
        results = protocols.evaluate_llcm_directions(model, data_dir, trials=range(trials), device=device,
                                                     batch_size=batch_size)  # each test image embedded once
    else:
        results = protocols.evaluate_regdb_directions(model, data_dir, trial=trial, device=device,
                                                      batch_size=batch_size)  # each test image embedded once
    return {setting: protocols.to_percent(res) for setting, res in results.items()}


# ----------------------------------------------------------------------------- the run
def _init_model(cfg: TrainConfig, device: torch.device, initialise: bool) -> nn.Module:
    """Stage 1: ImageNet trunk (or random); stage 2: the stage-1 model (own or release layout).
    ``initialise=False`` (resuming) builds the bare model."""
    if cfg.stage == "baseline":
        model = build_model("agw", pretrained=cfg.imagenet if initialise else None)
    else:
        model = build_model("agw")
    if cfg.stage == "rpnr" and initialise:
        load_weights(model, cfg.baseline)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def check_baseline(cfg: TrainConfig) -> str | None:
    """Refuse a stage-1 model of another dataset or (RegDB) another trial, whose training identities would be
    this trial's test identities; a note for a checkpoint that records neither (the official release's)."""
    if not Path(cfg.baseline).is_file():
        raise TrainingError(f"stage-1 checkpoint not found: {cfg.baseline} (run train.py --stage "
                            f"baseline first or pass --baseline PATH)")
    ckpt = load_checkpoint(cfg.baseline)
    saved = ckpt.get("args", {})
    if "dataset" not in ckpt:
        return f"{cfg.baseline} records no dataset or trial (an official release checkpoint?); used as given"
    if ckpt["dataset"] != cfg.dataset:
        raise TrainingError(f"--baseline {cfg.baseline} was trained on {ckpt['dataset']}, not {cfg.dataset}")
    if cfg.dataset in TRIALED and saved.get("trial", cfg.trial) != cfg.trial:
        raise TrainingError(f"--baseline {cfg.baseline} was trained on RegDB trial {saved['trial']}, not --trial "
                            f"{cfg.trial} (its training identities include this trial's test identities)")
    return None


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, object]:
    params = [p for p in model.parameters() if p.requires_grad]  # the frozen BN-neck bias is left out
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    return optimizer, scheduler


def _flag(name: str, value) -> str:
    """A setting as its command-line flag (``amp`` is spelled ``--no-amp``)."""
    return f"--no-amp {not value}" if name == "amp" else f"--{name.replace('_', '-')} {value}"


def resumed_config(cfg: TrainConfig, saved: dict, given: frozenset[str], path: Path) -> TrainConfig:
    """The settings of a resumed run: the checkpoint's, except the flags of ``CURRENT`` and the other
    flags the command gave (``given``); a given setting of ``COMPUTED`` that differs from the saved
    one is a :class:`TrainingError` listing ``--flag saved -> given`` for each."""
    differ = [f"{_flag(k, saved[k])} -> {_flag(k, getattr(cfg, k)).split(' ', 1)[1]}"
              for k in COMPUTED if k in given and k in saved and saved[k] != getattr(cfg, k)]
    if differ:
        raise TrainingError(f"{path} was trained with other settings, so resuming would compute something else: "
                            f"{', '.join(differ)} (leave these flags out to resume with the saved values, or start "
                            f"afresh with --overwrite)")
    known = {f.name for f in dataclasses.fields(TrainConfig)} - set(CURRENT) - set(given)
    return dataclasses.replace(cfg, **{k: v for k, v in saved.items() if k in known})


def _check_resumable(ckpt: dict, path: Path, cfg: TrainConfig, world_size: int, data_id: str) -> None:
    """The checkpoint belongs to this dataset, stage, process count and prepared data."""
    if ckpt.get("format_version") != FORMAT_VERSION or "optimizer" not in ckpt:
        raise TrainingError(f"{path} is not a training checkpoint of this project (cannot resume from it)")
    if (ckpt.get("stage"), ckpt.get("dataset")) != (cfg.stage, cfg.dataset):
        raise TrainingError(f"{path} is a {ckpt.get('dataset')} {ckpt.get('stage')} checkpoint; "
                            f"cannot resume it as {cfg.dataset} {cfg.stage}")
    saved_world = int(ckpt.get("world_size", 1))
    if saved_world != world_size:
        raise TrainingError(f"{path} was written by a run of {saved_world} process(es); resume it with the same "
                            f"number (torchrun --nproc_per_node {saved_world}), not {world_size}")
    if ckpt.get("data_id", data_id) != data_id:
        raise TrainingError(f"{path} was trained on other prepared data than --data-dir {cfg.data_dir} "
                            f"(--data-dir {ckpt.get('args', {}).get('data_dir')} -> {cfg.data_dir}); pass the "
                            f"folder it was trained on")
    if int(ckpt["epoch"]) > cfg.epochs:
        raise TrainingError(f"{path} already holds {ckpt['epoch']} epochs, more than --epochs {cfg.epochs}")


def _best_state(model_state: dict, best: dict, args: dict) -> dict:
    """The contents of model_best.pth.tar."""
    return {"model": model_state, "epoch": best["epoch"], "rank1": best["rank1"], "mAP": best["mAP"], "args": args,
            "stage": args["stage"], "dataset": args["dataset"]}


def reconcile_best(folder: Path, ckpt: dict) -> str | None:
    """Make model_best agree with the checkpoint's best epoch after a kill between the two writes.

    The checkpoint is written first: when it names its own epoch as the best one but model_best holds
    an older epoch (or none), model_best is rewritten from the checkpoint's model (the returned note
    says so). Any other disagreement is a :class:`TrainingError`.
    """
    best = ckpt.get("best")
    if best is None:  # written before the best epoch was recorded
        return None
    path = folder / BEST
    held = int(load_checkpoint(path)["epoch"]) if path.is_file() else None
    if held == best["epoch"]:
        return None
    if best["epoch"] == ckpt["epoch"] and (held is None or held < best["epoch"]):
        save_checkpoint(_best_state(ckpt["model"], best, ckpt["args"]), path)
        return f"{BEST} rewritten from {CHECKPOINT}: the run stopped between the two writes of epoch {best['epoch']}"
    raise TrainingError(f"{path} holds epoch {held} but {folder / CHECKPOINT} names epoch {best['epoch']} as the best; "
                        f"restore the run's files or start afresh with --overwrite")


def _epoch_lines(epoch: int, cfg: TrainConfig, labels: EpochLabels, losses: dict, result: dict, best: float,
                 times: dict) -> list[str]:
    head = f"epoch {epoch}/{cfg.epochs}"
    rgb, ir = labels.rgb, labels.ir
    lines = [f"{head}: clusters visible {rgb.num_clusters} (outliers {rgb.num_outliers}), "
             f"infrared {ir.num_clusters} (outliers {ir.num_outliers}), eps {cfg.eps:g}; "
             f"purity visible {rgb.purity:.3f}, infrared {ir.purity:.3f}"]
    if cfg.stage == "rpnr":
        lines.append(f"{head}: NPC relabelled visible {rgb.relabeled}, infrared {ir.relabeled}")
    lines.append(f"{head}: loss " + " ".join(f"{k} {v:.5g}" for k, v in losses.items()))
    lines.append(f"{head}: Rank-1 {result['rank1']:.2f}% mAP {result['mAP']:.2f}% mINP {result['mINP']:.2f}% "
                 f"(best Rank-1 {best:.2f}%)")
    lines.append(f"{head}: seconds " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    return lines


def _load_data(cfg: TrainConfig) -> tuple[ImageSet, ImageSet, str]:
    """The prepared training sets of both modalities, checked against the settings, and the data's identity."""
    manifest = check_prepared(cfg.data_dir, cfg.dataset, cfg.height, cfg.width)
    train_rgb, train_ir = load_train(cfg.data_dir, cfg.dataset, trial=cfg.trial)
    for name, images in (("visible", train_rgb), ("infrared", train_ir)):
        if len(images) <= cfg.k1:
            raise TrainingError(f"--k1 {cfg.k1} needs more {name} training images than the {len(images)} "
                                f"in {cfg.data_dir}; pass a smaller --k1")
    return train_rgb, train_ir, data_identity(manifest)


def _claim_folder(folder: RunFolder, cfg: TrainConfig, record: dict, notes: list[str]) -> None:
    """Rank 0, once every check passed: remove an earlier run's outputs (``--overwrite``), write run.json and
    print the notes."""
    if cfg.overwrite and not cfg.resume:
        folder.clear()
    remove_temporaries(folder.path, OUTPUTS)  # of writes a killed run left unfinished
    write_run_json(folder.path, record, resumed=cfg.resume)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def open_run(cfg: TrainConfig, group: ProcessGroup, given: frozenset[str] = frozenset(),
             command: list[str] | None = None) -> RunState:
    """Lock the logs folder, check everything, then start or resume the run: data, model, optimizer, log.

    ``given``: the settings the command line named (a resumed run keeps the checkpoint's others).
    Nothing in the folder changes before every check has passed.
    """
    device = torch.device(cfg.device)
    folder = RunFolder(cfg.logs_dir)
    group.from_main(folder.lock)  # rank 0 holds the lock; the others share its verdict
    group.from_main(folder.check_fresh, cfg.resume, cfg.overwrite, keep=cfg.baseline)
    ckpt_path = folder.path / CHECKPOINT
    ckpt = None
    if cfg.resume:
        if not ckpt_path.is_file():
            raise TrainingError(f"nothing to resume: {ckpt_path} does not exist")
        ckpt = load_checkpoint(ckpt_path)
        cfg = resumed_config(cfg, ckpt.get("args", {}), given, ckpt_path)
    train_rgb, train_ir, data_id = _load_data(cfg)
    if ckpt is not None:
        _check_resumable(ckpt, ckpt_path, cfg, group.world_size, data_id)
    if cfg.seed is not None:
        seed_everything(cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    notes = [check_baseline(cfg) if cfg.stage == "rpnr" and ckpt is None else None]
    net = _init_model(cfg, device, initialise=ckpt is None)
    net.bn_splits = cfg.bn_splits // group.world_size  # this rank's slices of the global batch
    optimizer, scheduler = _make_optimizer(net, cfg)
    args = dataclasses.asdict(cfg)
    names = group.gather_objects(device_name(device))
    record = provenance(command or sys.argv, args, device, names, group.world_size)
    notes.append(group.from_main(reconcile_best, folder.path, ckpt) if ckpt is not None else None)
    group.from_main(_claim_folder, folder, cfg, record, [n for n in notes if n])
    state = RunState(cfg=cfg, group=group, device=device, net=net, model=group.wrap(net, device),
                     optimizer=optimizer, scheduler=scheduler, train_rgb=train_rgb, train_ir=train_ir, log=None,
                     args=args, folder=folder, data_id=data_id)
    if ckpt is not None:
        _restore(state, ckpt)
    else:
        state.log = RunLog(folder.path, enabled=group.is_main)
        state.log.print(f"{cfg.dataset} {cfg.stage}: {len(train_rgb)} visible and {len(train_ir)} infrared "
                        f"training images; {group.world_size} process(es), batch norm in {cfg.bn_splits} slice(s); "
                        f"args {args}")
    return state


def _restore(s: RunState, ckpt: dict) -> None:
    """Model, optimizer, scheduler, best epoch, log and random streams of a resumed run."""
    load_weights(s.net, s.folder.path / CHECKPOINT)
    s.optimizer.load_state_dict(ckpt["optimizer"])
    s.scheduler.load_state_dict(ckpt["scheduler"])
    s.start_epoch = int(ckpt["epoch"])
    s.best = dict(ckpt.get("best") or {"epoch": 0, "rank1": float(ckpt["best_rank1"]), "mAP": 0.0})
    s.log = RunLog(s.folder.path, resume_epoch=s.start_epoch, enabled=s.group.is_main,
                   log_bytes=ckpt.get("log_bytes"))
    s.log.print(f"resuming from {s.folder.path / CHECKPOINT} after epoch {s.start_epoch} "
                f"(best Rank-1 {s.best_rank1:.2f}%)")
    restore_rng_state(ckpt["rng"])  # the resumed epoch sees the random stream of the uninterrupted run


def data_identity(manifest: dict) -> str:
    """A fingerprint of a prepared folder's manifest (where it lies and when it was written left out)."""
    content = {k: v for k, v in manifest.items() if k not in ("created", "source")}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def epoch_labels(s: RunState, epoch: int, times: dict) -> EpochLabels:
    """Clustering features (sharded over ranks), then pseudo labels computed on rank 0 and shared."""
    cfg = s.cfg
    t0 = time.perf_counter()
    s.group.broadcast_buffers(s.net)  # rank 0's running statistics (section 8) before any eval forward
    feats = [extract_train_features(s.net, images.images, modal, cfg.feature_batch_size, s.device,
                                     f"epoch {epoch + 1} {modal} features", s.group, cfg.feature_precision)
             for images, modal in ((s.train_rgb, "visible"), (s.train_ir, "infrared"))]
    _sync(s.device)
    times["time_features"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    labels = s.group.from_main(compute_labels, *feats, s.train_rgb, s.train_ir, cfg, epoch)
    s.group.sync_random_state()
    times["time_clustering"] = time.perf_counter() - t0
    return labels.to(s.device)


def run_epoch(s: RunState, epoch: int) -> None:
    """Pseudo labels, memories, ``cfg.iters`` iterations, evaluation, log and checkpoints of one epoch."""
    cfg, times = s.cfg, {}
    try:
        labels = epoch_labels(s, epoch, times)
        t0 = time.perf_counter()
        memories = build_memories(labels, cfg.stage, cfg.temp, cfg.momentum)
        times["time_clustering"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        losses = train_epoch(s, labels, memories, epoch)
    except TrainingError as exc:
        s.log.note(f"error: {exc}")
        raise
    lr = s.optimizer.param_groups[0]["lr"]
    s.scheduler.step()
    _sync(s.device)
    times["time_training"] = time.perf_counter() - t0
    del memories
    check_finite_weights(s.net, epoch + 1)
    t0 = time.perf_counter()
    result = s.group.from_main(evaluate_epoch, s.net, cfg.dataset, cfg.data_dir, cfg.trial, s.device,
                               cfg.feature_batch_size)
    times["time_evaluation"] = time.perf_counter() - t0
    finish_epoch(s, epoch + 1, labels, losses, result, lr, times)


def check_finite_weights(net: nn.Module, epoch: int) -> None:
    """Raise :class:`TrainingError` when a weight or running statistic is not finite (never saved)."""
    bad = next((k for k, v in net.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()),
               None)
    if bad is not None:
        kept = f"checkpoint of epoch {epoch - 1} intact" if epoch > 1 else "no checkpoint was written"
        raise TrainingError(f"epoch {epoch}: the model's weights are not finite ({bad}); lower --lr; {kept}")


def finish_epoch(s: RunState, done: int, labels: EpochLabels, losses: dict, result: dict, lr: float,
                 times: dict) -> None:
    """Log the epoch, add its metrics record, write the checkpoint, then model_best when the epoch improved
    (rank 0; this order is what :func:`reconcile_best` relies on)."""
    cfg = s.cfg
    improved = result["rank1"] > s.best_rank1
    if improved:
        s.best = {"epoch": done, "rank1": result["rank1"], "mAP": result["mAP"]}
    for line in _epoch_lines(done, cfg, labels, losses, result, s.best_rank1,
                             {k[len("time_"):]: v for k, v in times.items()}):
        s.log.print(line)
    calibrate = cfg.stage == "rpnr"
    s.log.add_record({
        "epoch": done, **result, "best_rank1": s.best_rank1, "lr": lr, "world_size": s.group.world_size,
        "bn_splits": cfg.bn_splits, "clusters_rgb": labels.rgb.num_clusters, "clusters_ir": labels.ir.num_clusters,
        "outliers_rgb": labels.rgb.num_outliers, "outliers_ir": labels.ir.num_outliers,
        "relabeled_rgb": labels.rgb.relabeled if calibrate else None,
        "relabeled_ir": labels.ir.relabeled if calibrate else None,
        "purity_rgb": labels.rgb.purity, "purity_ir": labels.ir.purity,
        **{f"loss_{k}": v for k, v in losses.items()}, **times})
    model_state = s.net.state_dict()
    s.group.on_main(save_checkpoint, {
        "model": model_state, "optimizer": s.optimizer.state_dict(), "scheduler": s.scheduler.state_dict(),
        "epoch": done, "best_rank1": s.best_rank1, "best": s.best, "rng": capture_rng_state(), "args": s.args,
        "stage": cfg.stage, "dataset": cfg.dataset, "world_size": s.group.world_size, "data_id": s.data_id,
        "log_bytes": s.log.size(), "format_version": FORMAT_VERSION}, s.logs_dir / CHECKPOINT)
    if improved:
        s.group.on_main(save_checkpoint, _best_state(model_state, s.best, s.args), s.logs_dir / BEST)


def run(cfg: TrainConfig, group: ProcessGroup = SINGLE, given: frozenset[str] = frozenset(),
        command: list[str] | None = None) -> dict:
    """Train ``cfg.epochs`` epochs (resuming when ``cfg.resume``), then test the best and the last model.

    Writes checkpoint.pth.tar, model_best.pth.tar, log.txt, metrics.json, curves.png, test.json,
    ranks.png and run.json into ``cfg.logs_dir`` (rank 0 only under torchrun), which it holds locked;
    returns the final test results ``{"best": ..., "last": ...}`` (on every rank).
    """
    state = open_run(cfg, group, given, command)
    try:
        for epoch in range(state.start_epoch, state.cfg.epochs):
            run_epoch(state, epoch)
        return test_best(state)
    finally:
        state.folder.release()


def _final_tests(s: RunState) -> tuple[float, dict]:
    """Full test of the last epoch's model (in memory) and of model_best (loaded), ranks.png of the best.

    Returns (Rank-1 that selected the best model, {"best": {"epoch", "checkpoint", settings...},
    "last": {...}}); "checkpoint" is ``{"path", "sha256"}`` of the file holding that model.
    """
    cfg = s.cfg
    run_test = functools.partial(final_test, dataset=cfg.dataset, data_dir=cfg.data_dir, trial=cfg.trial,
                                 trials=cfg.test_trials, device=s.device, batch_size=cfg.feature_batch_size)
    files = {name: {"path": str(s.logs_dir / name), "sha256": sha256_file(s.logs_dir / name)}
             for name in (CHECKPOINT, BEST)}
    tested = run_test(s.net)
    last = {"epoch": cfg.epochs, "checkpoint": files[CHECKPOINT], **tested}
    best_path = s.logs_dir / BEST
    try:
        load_weights(s.net, best_path)
    except CheckpointError as exc:
        raise TrainingError(str(exc)) from None
    best_ckpt = load_checkpoint(best_path)
    epoch = int(best_ckpt["epoch"])
    best = {"epoch": epoch, "checkpoint": files[BEST], **(tested if epoch == cfg.epochs else run_test(s.net))}
    write_rank_list(s.net, cfg.dataset, cfg.data_dir, s.logs_dir / RANKS_PNG,
                    trial=protocols.epoch_test_trial(cfg.dataset, cfg.trial), device=s.device,
                    batch_size=cfg.feature_batch_size)
    return float(best_ckpt["rank1"]), {"best": best, "last": last}


def test_best(s: RunState) -> dict:
    """Test model_best (official quirk: selected on the test set) beside the last epoch's model on rank 0;
    write test.json and ranks.png; returns ``{"best": ..., "last": ...}``."""
    rank1, results = s.group.from_main(_final_tests, s)
    s.log.print(f"best model: epoch {results['best']['epoch']}, Rank-1 {rank1:.2f}% (selected on the test set, "
                f"as the official release does)")
    s.log.print(f"last model: epoch {results['last']['epoch']} (the final epoch: no choice made on the test set)")
    for line in side_by_side(results, f"final test of {s.cfg.dataset} (percent)"):
        s.log.print(line)
    s.log.write_json(TEST_JSON, results)
    return results
