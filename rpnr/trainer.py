"""The training loop of both stages (DESIGN.md sections 3-5): per epoch, pseudo labels,
memories, training iterations, evaluation and checkpoints.

Stage "baseline" (stage 1): DBSCAN labels per modality, CMhcl memories, L_ir + L_rgb.
Stage "rpnr" (stage 2): adds NPC label calibration, OT prototype matching, the hybrid
memory, the alternating cross-modality terms and the neighbour relation loss.
One code path serves SYSU-MM01 and RegDB; the differences are settings.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from rpnr.data.augment import ir_view, rgb_views
from rpnr.data.prepared import ImageSet, check_prepared, load_train
from rpnr.data.sampler import BatchStream, RandomMultipleGallerySampler
from rpnr.evaluation import extract_features_uint8
from rpnr.matching import hybrid_centers, match_clusters
from rpnr.memory import ClusterMemory
from rpnr.models import build_model, load_weights
from rpnr.pseudo_labels import calibrate_labels, cluster_centers, cluster_features
from rpnr.rng import capture_rng_state, restore_rng_state, seed_everything
from rpnr.run_log import RunLog
from rpnr.training import stage1_loss, stage2_loss

FORMAT_VERSION = 1
CHECKPOINT = "checkpoint.pth.tar"
BEST = "model_best.pth.tar"
TEST_JSON = "test.json"
STAGES = ("baseline", "rpnr")
DATASETS = ("sysu", "regdb")
EPS = {"sysu": 0.6, "regdb": 0.3}
ITERS = {"sysu": 200, "regdb": 100}
# NPC prototype members: the release's train_sysu.py keeps heapq.nlargest(20, ...), train_regdb.py nlargest(5, ...)
TOP_K = {"sysu": 20, "regdb": 5}
MODALITY_NAMES = {"rgb": "visible", "ir": "infrared"}


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
    device: str = "cpu"
    seed: int | None = 1
    workers: int = 4
    feature_batch_size: int = 256
    test_trials: int = 10
    amp: bool = True  # bf16 autocast in the CUDA training step (the release trains in fp32)


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
    """RGB images per batch (each seen in two views): stage 2 SYSU uses ``batch_size``, the others half."""
    return batch_size if (dataset, stage) == ("sysu", "rpnr") else batch_size // 2


def default_logs_dir(dataset: str, stage: str, trial: int) -> str:
    """Where a stage writes by default; stage 2 reads stage 1's model_best from there."""
    base = f"baseline/{dataset}_s1" if stage == "baseline" else f"logs/{dataset}_s2"
    return f"{base}/{trial}" if dataset == "regdb" else base


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- one epoch
def extract_train_features(model: nn.Module, images: np.ndarray, modal: str, batch_size: int,
                           device: torch.device, desc: str) -> Tensor:
    """Clustering features: flip-averaged eval embeddings, NOT re-normalised (release): [N, 2048] float32.

    Computed in float32 also on CUDA (no bf16 autocast): clustering is sensitive to small
    feature changes, and the release extracts in float32.
    """
    with tqdm(total=len(images), desc=desc, unit="img", leave=False) as bar:
        feats = extract_features_uint8(model, images, modal, batch_size=batch_size, flip=True,
                                       normalize=False, device=device, progress=bar.update)
    return feats.float()


def build_memories(rgb: ModalityLabels, ir: ModalityLabels, stage: str, temp: float, momentum: float,
                   ot_reg: float) -> tuple[dict, np.ndarray | None, np.ndarray | None]:
    """The epoch's CMhcl memories and, in stage 2, the OT partners ``(memories, r2i, i2r)``."""
    memories = {"rgb": ClusterMemory.from_centers(rgb.centers, temp, momentum, "CMhcl"),
                "ir": ClusterMemory.from_centers(ir.centers, temp, momentum, "CMhcl")}
    if stage == "baseline":
        return memories, None, None
    r2i, i2r = match_clusters(rgb.centers, ir.centers, reg=ot_reg)
    present = np.zeros(ir.num_clusters, dtype=bool)
    present[np.unique(ir.train[ir.train >= 0])] = True
    # quirk (release): hybrid rows of IR clusters left empty by calibration stay zero
    hybrid = hybrid_centers(rgb.centers, ir.centers, i2r, present=present)  # [K_ir, 2048]
    memories["hybrid"] = ClusterMemory.from_centers(hybrid, temp, momentum, "CMhcl")
    return memories, r2i, i2r


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, train_rgb: ImageSet, train_ir: ImageSet,
                labels_rgb: ModalityLabels, labels_ir: ModalityLabels, memories: dict, r2i, i2r,
                cfg: TrainConfig, epoch: int, device: torch.device) -> dict:
    """``cfg.iters`` iterations; returns the mean of each loss term (and "total")."""
    stream_ir, rows_ir = make_stream(labels_ir.train, train_ir.cams, cfg.batch_size, cfg.num_instances,
                                     "ir", epoch + 1)
    stream_rgb, rows_rgb = make_stream(labels_rgb.train, train_rgb.cams, cfg.rgb_batch_size,
                                       cfg.num_instances, "rgb", epoch + 1)
    stream_ir.new_epoch()
    stream_rgb.new_epoch()
    batches_ir = [rows_ir[p] for p in stream_ir.take(cfg.iters)]  # dataset rows per iteration
    batches_rgb = [rows_rgb[p] for p in stream_rgb.take(cfg.iters)]
    pin = device.type == "cuda"
    channels_last = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    loaded = zip(_prefetch(train_ir.images, batches_ir, cfg.workers, pin),
                 _prefetch(train_rgb.images, batches_rgb, cfg.workers, pin))
    model.train()
    sums: dict[str, float] = {}
    bar = tqdm(zip(loaded, batches_ir, batches_rgb), total=cfg.iters, desc=f"epoch {epoch + 1} train",
               unit="it", leave=False)
    for (img_ir, img_rgb), b_ir, b_rgb in bar:
        y_ir = torch.from_numpy(labels_ir.train[b_ir]).to(device)  # [B_ir]
        y = torch.from_numpy(labels_rgb.train[b_rgb]).to(device)  # [B_rgb]
        y_rgb = torch.cat((y, y), 0)  # [2 B_rgb]: labels of view 1 then view 2
        x_ir = ir_view(img_ir.to(device, non_blocking=True), cfg.height, cfg.width)  # [B_ir, 3, H, W]
        x_rgb = rgb_views(img_rgb.to(device, non_blocking=True), cfg.height, cfg.width)  # [2 B_rgb, 3, H, W]
        x_ir = x_ir.contiguous(memory_format=channels_last)
        x_rgb = x_rgb.contiguous(memory_format=channels_last)
        with _autocast(device, cfg.amp):
            f_rgb, f_ir = model(x_rgb, x_ir)  # [2 B_rgb, 2048], [B_ir, 2048]
        f_rgb, f_ir = f_rgb.float(), f_ir.float()
        if cfg.stage == "baseline":
            total, parts = stage1_loss(f_rgb, f_ir, y_rgb, y_ir, memories)
        else:
            total, parts = stage2_loss(f_rgb, f_ir, y_rgb, y_ir, memories, r2i, i2r, epoch,
                                       w_cross=cfg.w_cross, w_hybrid=cfg.w_hybrid, w_nrl=cfg.w_nrl,
                                       sigma=cfg.sigma, delta=cfg.delta)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        parts = {**parts, "total": total.item()}
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + value
        bar.set_postfix(loss=f"{parts['total']:.3f}")
    bar.close()
    return {key: value / cfg.iters for key, value in sums.items()}


def evaluate_epoch(model: nn.Module, dataset: str, data_dir: str, trial: int, device: torch.device,
                   batch_size: int) -> dict:
    """Per-epoch test: SYSU all-search on gallery trial 0, RegDB visible-to-thermal on ``trial``.

    Returns {"rank1", "mAP", "mINP"} in percent.
    """
    if dataset == "sysu":
        res = protocols.evaluate_sysu(model, data_dir, mode="all", trials=[0], device=device,
                                      batch_size=batch_size)
    else:
        res = protocols.evaluate_regdb(model, data_dir, trial=trial, direction="visible_to_thermal",
                                       device=device, batch_size=batch_size)
    return {key: value for key, value in protocols.to_percent(res).items() if key in ("rank1", "mAP", "mINP")}


def final_test(model: nn.Module, dataset: str, data_dir: str, trial: int, trials: int, device: torch.device,
               batch_size: int) -> dict:
    """Full test of the (best) model: SYSU all and indoor over ``trials`` galleries; RegDB both
    directions of ``trial``. {setting: {"rank1", "rank5", "rank10", "rank20", "mAP", "mINP"}} in percent."""
    out = {}
    if dataset == "sysu":
        for mode in ("all", "indoor"):
            res = protocols.evaluate_sysu(model, data_dir, mode=mode, trials=range(trials), device=device,
                                          batch_size=batch_size)
            out[mode] = protocols.to_percent(res)
    else:
        both = protocols.evaluate_regdb_directions(model, data_dir, trial=trial, device=device,
                                                   batch_size=batch_size)  # each test image embedded once
        for direction, res in both.items():
            out[direction] = protocols.to_percent(res)
    return out


# ----------------------------------------------------------------------------- the run
def _init_model(cfg: TrainConfig, device: torch.device, initialise: bool) -> nn.Module:
    """Stage 1: ImageNet trunk (or random); stage 2: the stage-1 model (own or release layout).
    ``initialise=False`` (resuming) builds the bare model."""
    if cfg.stage == "baseline":
        model = build_model("agw", pretrained=cfg.imagenet if initialise else None)
    else:
        model = build_model("agw")
    if cfg.stage == "rpnr" and initialise:
        if not Path(cfg.baseline).is_file():
            raise TrainingError(f"stage-1 checkpoint not found: {cfg.baseline} (run train.py --stage "
                                f"baseline first or pass --baseline PATH)")
        load_weights(model, cfg.baseline)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, object]:
    params = [p for p in model.parameters() if p.requires_grad]  # the frozen BN-neck bias is left out
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    return optimizer, scheduler


def _load_resume(path: Path, cfg: TrainConfig, model: nn.Module, optimizer, scheduler) -> dict:
    """Restore model, optimizer and scheduler from ``checkpoint.pth.tar``; returns the checkpoint."""
    ckpt = load_checkpoint(path)
    if ckpt.get("format_version") != FORMAT_VERSION or "optimizer" not in ckpt:
        raise TrainingError(f"{path} is not a training checkpoint of this project (cannot resume from it)")
    for key in ("stage", "dataset"):
        if ckpt.get(key) != getattr(cfg, key):
            raise TrainingError(f"{path} is a {ckpt.get('dataset')} {ckpt.get('stage')} checkpoint; "
                                f"cannot resume it as {cfg.dataset} {cfg.stage}")
    if cfg.dataset == "regdb" and ckpt.get("args", {}).get("trial") != cfg.trial:
        raise TrainingError(f"{path} was trained on RegDB trial {ckpt.get('args', {}).get('trial')}, "
                            f"not --trial {cfg.trial}")
    if int(ckpt["epoch"]) > cfg.epochs:
        raise TrainingError(f"{path} already holds {ckpt['epoch']} epochs, more than --epochs {cfg.epochs}")
    load_weights(model, path)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    return ckpt


def _epoch_lines(epoch: int, cfg: TrainConfig, rgb: ModalityLabels, ir: ModalityLabels, losses: dict,
                 result: dict, best: float, times: dict) -> list[str]:
    head = f"epoch {epoch}/{cfg.epochs}"
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


def _remove_stale_temporaries(logs_dir: Path) -> None:
    """Temporary files a killed run may leave behind from its atomic writes."""
    for name in (CHECKPOINT, BEST, TEST_JSON, "metrics.json", "curves.png"):
        for tmp in logs_dir.glob(f".{name}.*"):
            tmp.unlink(missing_ok=True)


def run(cfg: TrainConfig) -> dict:
    """Train ``cfg.epochs`` epochs (resuming when ``cfg.resume``), then test the best model.

    Writes checkpoint.pth.tar, model_best.pth.tar, log.txt, metrics.json, curves.png and
    test.json into ``cfg.logs_dir``; returns the final test results.
    """
    device = torch.device(cfg.device)
    check_prepared(cfg.data_dir, cfg.dataset, cfg.height, cfg.width)
    train_rgb, train_ir = load_train(cfg.data_dir, cfg.dataset, trial=cfg.trial)
    for name, images in (("visible", train_rgb), ("infrared", train_ir)):
        if len(images) <= cfg.k1:
            raise TrainingError(f"--k1 {cfg.k1} needs more {name} training images than the {len(images)} "
                                f"in {cfg.data_dir}; pass a smaller --k1")
    logs_dir = Path(cfg.logs_dir)
    logs_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(logs_dir)
    ckpt_path = logs_dir / CHECKPOINT
    if cfg.resume and not ckpt_path.is_file():
        raise TrainingError(f"nothing to resume: {ckpt_path} does not exist")
    if cfg.seed is not None:
        seed_everything(cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    model = _init_model(cfg, device, initialise=not cfg.resume)
    optimizer, scheduler = _make_optimizer(model, cfg)
    start_epoch, best_rank1, rng_state = 0, -1.0, None
    if cfg.resume:
        ckpt = _load_resume(ckpt_path, cfg, model, optimizer, scheduler)
        start_epoch, best_rank1, rng_state = int(ckpt["epoch"]), float(ckpt["best_rank1"]), ckpt["rng"]
    log = RunLog(logs_dir, resume_epoch=start_epoch if cfg.resume else None)
    args = dataclasses.asdict(cfg)
    if cfg.resume:
        log.print(f"resuming from {ckpt_path} after epoch {start_epoch} (best Rank-1 {best_rank1:.2f}%)")
    else:
        log.print(f"{cfg.dataset} {cfg.stage}: {len(train_rgb)} visible and {len(train_ir)} infrared "
                  f"training images; args {args}")
    if rng_state is not None:
        restore_rng_state(rng_state)  # the resumed epoch sees the random stream of the uninterrupted run

    for epoch in range(start_epoch, cfg.epochs):
        times = {}
        t0 = time.perf_counter()
        feats_rgb = extract_train_features(model, train_rgb.images, "visible", cfg.feature_batch_size, device,
                                           f"epoch {epoch + 1} visible features")
        feats_ir = extract_train_features(model, train_ir.images, "infrared", cfg.feature_batch_size, device,
                                          f"epoch {epoch + 1} infrared features")
        _sync(device)
        times["time_features"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        calibrate = cfg.stage == "rpnr"
        labels_rgb = modality_labels(feats_rgb, train_rgb.pids, cfg.eps, cfg.k1, cfg.k2, cfg.min_samples,
                                     calibrate, cfg.top_k)
        labels_ir = modality_labels(feats_ir, train_ir.pids, cfg.eps, cfg.k1, cfg.k2, cfg.min_samples,
                                    calibrate, cfg.top_k)
        del feats_rgb, feats_ir
        try:
            check_labels(labels_ir, "ir", epoch + 1, cfg.eps, cfg.batch_size, cfg.num_instances)
            check_labels(labels_rgb, "rgb", epoch + 1, cfg.eps, cfg.rgb_batch_size, cfg.num_instances)
            memories, r2i, i2r = build_memories(labels_rgb, labels_ir, cfg.stage, cfg.temp, cfg.momentum,
                                                cfg.ot_reg)
            times["time_clustering"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            losses = train_epoch(model, optimizer, train_rgb, train_ir, labels_rgb, labels_ir, memories, r2i,
                                 i2r, cfg, epoch, device)
        except PseudoLabelError as exc:
            log.note(f"error: {exc}")
            raise
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        _sync(device)
        times["time_training"] = time.perf_counter() - t0
        del memories

        t0 = time.perf_counter()
        result = evaluate_epoch(model, cfg.dataset, cfg.data_dir, cfg.trial, device, cfg.feature_batch_size)
        times["time_evaluation"] = time.perf_counter() - t0

        done = epoch + 1
        if result["rank1"] > best_rank1:
            best_rank1 = result["rank1"]
            save_checkpoint({"model": model.state_dict(), "epoch": done, "rank1": result["rank1"],
                             "mAP": result["mAP"], "args": args, "stage": cfg.stage, "dataset": cfg.dataset},
                            logs_dir / BEST)
        for line in _epoch_lines(done, cfg, labels_rgb, labels_ir, losses, result, best_rank1,
                                 {k[len("time_"):]: v for k, v in times.items()}):
            log.print(line)
        record = {"epoch": done, **result, "best_rank1": best_rank1, "lr": lr,
                  "clusters_rgb": labels_rgb.num_clusters, "clusters_ir": labels_ir.num_clusters,
                  "outliers_rgb": labels_rgb.num_outliers, "outliers_ir": labels_ir.num_outliers,
                  "relabeled_rgb": labels_rgb.relabeled if calibrate else None,
                  "relabeled_ir": labels_ir.relabeled if calibrate else None,
                  "purity_rgb": labels_rgb.purity, "purity_ir": labels_ir.purity,
                  **{f"loss_{k}": v for k, v in losses.items()}, **times}
        log.add_record(record)
        save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "epoch": done, "best_rank1": best_rank1,
                         "rng": capture_rng_state(), "args": args, "stage": cfg.stage, "dataset": cfg.dataset,
                         "format_version": FORMAT_VERSION}, ckpt_path)

    return _test_best(model, cfg, device, log)


def _test_best(model: nn.Module, cfg: TrainConfig, device: torch.device, log: RunLog) -> dict:
    """Load model_best (official quirk: selected on the test set) and run the full test; write test.json."""
    best_path = Path(cfg.logs_dir) / BEST
    try:
        load_weights(model, best_path)
    except CheckpointError as exc:
        raise TrainingError(str(exc)) from None
    best = load_checkpoint(best_path)
    log.print(f"best model: epoch {best['epoch']}, Rank-1 {best['rank1']:.2f}% (selected on the test set, "
              f"as the official release does)")
    results = final_test(model, cfg.dataset, cfg.data_dir, cfg.trial, cfg.test_trials, device,
                         cfg.feature_batch_size)
    for setting, res in results.items():
        log.print(f"test {cfg.dataset} {setting}: " + " ".join(f"{k} {v:.2f}%" for k, v in res.items()))
    log.write_json(TEST_JSON, {"epoch": int(best["epoch"]), **results})
    return results
