"""The training loop of both stages (DESIGN.md sections 3-5, 8, 10)."""

import dataclasses
import hashlib
import json
import os
import sys
import time

import torch
from torch import nn

from rpnr.common.checkpoints import load_checkpoint, missing_checkpoint_line, save_checkpoint
from rpnr.common.errors import TrainingError
from rpnr.common.files import BEST, CHECKPOINT, RUN_FILES, remove_temporaries, sha256_file
from rpnr.data.prepared import ImageSet, check_prepared, check_trial, load_side
from rpnr.data.registry import get_dataset
from rpnr.engine.batches import epoch_batches, prefetch
from rpnr.engine.distributed import SINGLE, ProcessGroup
from rpnr.engine.labels import EpochLabels, build_memories, compute_labels, extract_train_features
from rpnr.engine.protocol import evaluate_epoch, test_best_and_last
from rpnr.engine.rng import capture_rng_state, restore_rng_state, seed_everything
from rpnr.engine.run_folder import (
    FORMAT_VERSION,
    RunFolder,
    best_state,
    check_resumable,
    provenance,
    reconcile_best,
    resumed_config,
    saved_settings,
)
from rpnr.engine.run_log import RunLog
from rpnr.engine.settings import TrainConfig, recipe, resolve_device, settings_notes
from rpnr.engine.step import read_terms, train_step
from rpnr.models import Trained, build_model, imagenet_file, load_trained, load_weights
from rpnr.training import TERMS, loss_weights


@dataclasses.dataclass
class RunState:
    """Everything a run holds between epochs."""

    cfg: TrainConfig
    group: ProcessGroup
    net: nn.Module  # the AGW model (eval, checkpoints)
    model: nn.Module  # what the training step calls: ``net``, or ``net`` in DistributedDataParallel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_rgb: ImageSet
    train_ir: ImageSet
    folder: RunFolder
    data_id: str  # identity of the prepared data (checked on resume)
    start: dict | None  # stage 2's stage-1 checkpoint: path, sha256, recipe (None: resumed, stage 1)
    log: RunLog | None = None
    resumed: dict | None = None  # the checkpoint a resumed run continues, until restored
    notes: list[str] = dataclasses.field(default_factory=list)  # printed once the folder is claimed
    best_note: str | None = None  # model_best to rewrite from the resumed checkpoint (reconcile_best)
    start_epoch: int = 0
    best: dict = dataclasses.field(default_factory=lambda: {"epoch": 0, "rank1": -1.0, "mAP": 0.0})

    @property
    def device(self) -> torch.device:
        return torch.device(self.cfg.device)

    @property
    def args(self) -> dict:
        return dataclasses.asdict(self.cfg)


def _stage1_model(cfg: TrainConfig) -> Trained:
    """The model stage 2 starts from: of this dataset and trial, not a stage-2 model (another size: a warning)."""
    ds = get_dataset(cfg.dataset)
    start = load_trained(cfg.baseline, "cpu", cfg.dataset, cfg.trial if ds.model_per_trial else None,
                         display=ds.display, stage1=True)
    start.check_size(cfg.data_dir, (cfg.height, cfg.width))
    return start


def load_train(root: str | os.PathLike, dataset: str, trial: int = 1) -> tuple[ImageSet, ImageSet]:
    """The training sets ``(visible, infrared)`` of ``trial`` in the release's clustering order."""
    ds = get_dataset(dataset)
    if ds.model_per_trial:
        check_trial(ds.trials, trial, ds.display)
    sets = [load_side(root, side, trial) for side in ds.train]
    return tuple(s.subset(ds.train_order(s.pids, s.paths)) for s in sets) if ds.train_order else tuple(sets)


def _load_data(cfg: TrainConfig) -> tuple[ImageSet, ImageSet, str]:
    """The training sets, checked, and the data's identity (its manifest's hash without path and creation time)."""
    manifest = check_prepared(cfg.data_dir, cfg.dataset, cfg.height, cfg.width)
    train_rgb, train_ir = load_train(cfg.data_dir, cfg.dataset, cfg.trial)
    for name, images in (("visible", train_rgb), ("infrared", train_ir)):
        if len(images) <= cfg.k1:
            raise TrainingError(f"--k1 {cfg.k1} needs more {name} training images than the {len(images)} "
                                f"in {cfg.data_dir}; pass a smaller --k1")
    content = json.dumps({k: v for k, v in manifest.items() if k not in ("created", "source")}, sort_keys=True)
    return train_rgb, train_ir, hashlib.sha256(content.encode()).hexdigest()[:16]


def _claim_folder(folder: RunFolder, cfg: TrainConfig, record: dict, notes: list[str]) -> None:
    """Rank 0, the lock held: an earlier run's outputs removed (``--overwrite``), run.json written, notes printed."""
    if cfg.overwrite and not cfg.resume:
        folder.clear()
    remove_temporaries(folder.path, RUN_FILES)
    folder.write_run_json(record, resumed=cfg.resume)
    for note in notes:
        print(note, file=sys.stderr)


def check_run(cfg: TrainConfig, group: ProcessGroup, given: frozenset[str] = frozenset()) -> RunState:
    """Every check of a run, nothing written (a refused run leaves no trace): its state, the folder not yet locked.
    ``given``: the settings the command line names (:func:`rpnr.engine.settings.named_settings`)."""
    cfg = dataclasses.replace(cfg, device=resolve_device(cfg.device, group.world_size))
    folder = RunFolder(cfg.logs_dir)
    group.from_main(folder.check_usable, cfg.resume, cfg.overwrite, keep=cfg.baseline, data=cfg.data_dir)
    ckpt_path, ckpt = folder.path / CHECKPOINT, None
    if cfg.resume:
        if not ckpt_path.is_file():
            earlier = folder.outputs()
            raise TrainingError(f"nothing to resume: {ckpt_path} does not exist" + (
                f" (the folder holds {', '.join(earlier)} of a run that wrote no checkpoint: start afresh with "
                f"--overwrite)" if earlier else " (start the run without --resume)"))
        ckpt = load_checkpoint(ckpt_path)
        cfg = resumed_config(cfg, saved_settings(ckpt), given, ckpt_path)
    elif cfg.imagenet:  # where the weights are (torchvision's cache resolved), before anything heavier
        cfg = dataclasses.replace(cfg, imagenet=imagenet_file(cfg.imagenet))
    elif cfg.stage == "rpnr" and not os.path.isfile(cfg.baseline):
        raise TrainingError(f"stage-1 {missing_checkpoint_line(cfg.baseline)} (run train.py --stage baseline first, or "
                            f"pass --baseline PATH)")
    train_rgb, train_ir, data_id = _load_data(cfg)
    notes, best_note = settings_notes(cfg, given), None
    if ckpt is not None:
        check_resumable(ckpt, ckpt_path, cfg, group.world_size, data_id)
        best_note = group.from_main(reconcile_best, folder.path, ckpt, write=False)
    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    start, stage1 = None, _stage1_model(cfg) if cfg.stage == "rpnr" and ckpt is None else None
    if stage1 is not None:  # run.json records what stage 2 started from (report.py groups by it)
        notes += stage1.notes
        start = {"path": cfg.baseline, "sha256": sha256_file(cfg.baseline),
                 "recipe": recipe(stage1.record) if stage1.dataset else None}
    net = stage1.model if stage1 else build_model("agw", pretrained=cfg.imagenet if ckpt is None else None)
    net = net.to(device, memory_format=torch.channels_last) if device.type == "cuda" else net
    net.bn_splits = cfg.bn_splits // group.world_size  # this rank's slices of the global batch
    params = [p for p in net.parameters() if p.requires_grad]  # the frozen BN-neck bias is left out
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda" or None)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    return RunState(cfg=cfg, group=group, net=net, model=group.wrap(net, device), optimizer=optimizer,
                    scheduler=scheduler, train_rgb=train_rgb, train_ir=train_ir, folder=folder, data_id=data_id,
                    start=start, resumed=ckpt, notes=[*notes, *([f"note: {best_note}"] if best_note else [])],
                    best_note=best_note)


def check_line(s: RunState) -> str:
    """What ``train.py --check`` prints when every check passed: the notes, then one line."""
    cfg, start = s.cfg, s.cfg.baseline if s.cfg.stage == "rpnr" else s.cfg.imagenet or "random weights"
    removes = " (--overwrite removes the earlier outputs)" if s.folder.outputs() else ""
    what = f"resumes {s.folder.path / CHECKPOINT} after epoch {s.resumed['epoch']}" if s.resumed else \
        f"starts afresh in {s.folder.path}{removes}, from {start}"
    return "\n".join([*s.notes, f"check passed: {cfg.dataset} {cfg.stage} {what}; {len(s.train_rgb)} visible and "
                                 f"{len(s.train_ir)} infrared training images in {cfg.data_dir}; nothing was written"])


def open_run(cfg: TrainConfig, group: ProcessGroup, given: frozenset[str] = frozenset(),
             command: list[str] | None = None) -> RunState:
    """:func:`check_run`, then the folder locked (released on any error) and the run started or resumed."""
    s = check_run(cfg, group, given)
    cfg, ckpt = s.cfg, s.resumed
    group.from_main(s.folder.lock)  # rank 0 holds the lock; the others share its verdict
    try:
        record = {**provenance(command or sys.argv, s.args, s.device, group), "data_id": s.data_id, "start": s.start}
        if s.best_note:  # check_run found model_best one epoch behind: rewrite it now that the folder is ours
            group.from_main(reconcile_best, s.folder.path, ckpt)
        group.from_main(_claim_folder, s.folder, cfg, record, s.notes)
        if ckpt is not None:
            _restore(s, ckpt)
        else:
            s.log = RunLog(s.folder.path, enabled=group.is_main, loss_weights=loss_weights(cfg, s.cfg.terms))
            s.log.print(f"{cfg.dataset} {cfg.stage}: {len(s.train_rgb)} visible and {len(s.train_ir)} infrared "
                        f"training images; {group.world_size} process(es), batch norm in {cfg.bn_splits} slice(s); "
                        f"args {s.args}")
        s.log.print(cfg.ablation.describe(cfg.stage))
        if cfg.low_memory and s.net.bn_splits == 1:
            s.log.print(f"note: --low-memory changes nothing with one batch-norm slice per process (--bn-splits "
                        f"{cfg.bn_splits} over {group.world_size} process(es)); the one-graph step runs")
    except BaseException:
        s.folder.release()
        raise
    s.resumed = None  # restored; not kept in memory for the whole run
    return s


def _restore(s: RunState, ckpt: dict) -> None:
    """A resumed run's model, optimizer, scheduler, best epoch, log and random streams."""
    load_weights(s.net, s.folder.path / CHECKPOINT, ckpt)  # the checkpoint open_run read
    s.optimizer.load_state_dict(ckpt["optimizer"])
    s.scheduler.load_state_dict(ckpt["scheduler"])
    s.start_epoch = int(ckpt["epoch"])
    s.best = dict(ckpt.get("best") or {"epoch": 0, "rank1": float(ckpt["best_rank1"]), "mAP": 0.0})
    s.log = RunLog(s.folder.path, resume_epoch=s.start_epoch, enabled=s.group.is_main, log_bytes=ckpt.get("log_bytes"),
                   loss_weights=loss_weights(s.cfg, s.cfg.terms))
    s.log.print(f"resuming from {s.folder.path / CHECKPOINT} after epoch {s.start_epoch} "
                f"(best Rank-1 {s.best['rank1']:.2f}%)")
    restore_rng_state(ckpt["rng"])  # the resumed epoch sees the random stream of the uninterrupted run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the phase times below measure the GPU work


def epoch_labels(s: RunState, epoch: int, times: dict) -> tuple[EpochLabels, dict]:
    """Clustering features (sharded over ranks), pseudo labels computed on rank 0 and shared, the memories."""
    cfg = s.cfg
    t0 = time.perf_counter()
    s.group.broadcast_buffers(s.net)  # rank 0's running statistics (section 8) before any eval forward
    feats = [extract_train_features(s.net, images.images, modal, cfg.feature_batch_size, s.device,
                                     f"epoch {epoch + 1} {modal} features", s.group, cfg.feature_precision)
             for images, modal in ((s.train_rgb, "visible"), (s.train_ir, "infrared"))]
    _sync(s.device)
    times["time_features"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    labels = s.group.from_main(compute_labels, *feats, s.train_rgb, s.train_ir, cfg, epoch).to(s.device)
    s.group.sync_random_state()
    memories = build_memories(labels, cfg.temp, cfg.momentum, hybrid=any("hybrid" in t.needs for t in s.cfg.terms))
    times["time_clustering"] = time.perf_counter() - t0
    return labels, memories


def train_epoch(s: RunState, labels: EpochLabels, memories: dict, epoch: int, read_every: int = 10) -> dict:
    """``cfg.iters`` iterations: the mean of each loss term (None for one left out) and "total". The terms are read
    every ``read_every`` iterations (DESIGN.md section 10, "Non-finite")."""
    cfg = s.cfg
    batches = epoch_batches(labels, s.train_rgb, s.train_ir, cfg, epoch, s.group)
    pin = s.device.type == "cuda"
    loaded = zip(prefetch(s.train_ir.images, [b.load_ir() for b in batches], cfg.workers, pin),
                 prefetch(s.train_rgb.images, [b.load_rgb() for b in batches], cfg.workers, pin))
    if cfg.compile and getattr(s.net, "_compiled_call_impl", None) is None:
        s.net.compile()  # once, in place: the same parameters and state dict (DDP calls the compiled module)
    s.model.train()
    steps, rows = [], []  # each iteration's terms on the device; those read so far, as floats
    bar = s.group.progress(zip(loaded, batches), total=cfg.iters, desc=f"epoch {epoch + 1} train", unit="it",
                           leave=False)
    for iteration, (images, batch) in enumerate(bar, 1):
        parts = train_step(s.model, s.optimizer, s.group, cfg, batch, images, labels, memories, epoch, iteration)
        steps.append(torch.stack(list(parts.values())))  # [terms], "total" last
        if iteration % read_every == 0 or iteration == cfg.iters:
            rows += read_terms(torch.stack(steps[len(rows):]), list(parts), epoch, len(rows) + 1)
            bar.set_postfix(loss=f"{rows[-1][-1]:.3f}")
    bar.close()
    means = {key: sum(row[j] for row in rows) / cfg.iters for j, key in enumerate(parts)}
    return {**{term.name: means.get(term.name) for term in TERMS}, "total": means["total"]}


def check_finite_weights(net: nn.Module, epoch: int) -> None:
    """A weight or running statistic that is not finite stops the run (it is never saved)."""
    bad = [k for k, v in net.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        kept = f"checkpoint of epoch {epoch - 1} intact" if epoch > 1 else "no checkpoint was written"
        raise TrainingError(f"epoch {epoch}: the model's weights are not finite ({bad[0]}); lower --lr; {kept}")


def run_epoch(s: RunState, epoch: int) -> None:
    """One epoch: pseudo labels, memories, iterations, evaluation, log and checkpoints."""
    cfg, times = s.cfg, {}
    try:
        labels, memories = epoch_labels(s, epoch, times)
        t0 = time.perf_counter()
        losses = train_epoch(s, labels, memories, epoch)
        lr = s.optimizer.param_groups[0]["lr"]
        s.scheduler.step()
        _sync(s.device)
        times["time_training"] = time.perf_counter() - t0
        check_finite_weights(s.net, epoch + 1)
    except TrainingError as exc:
        s.log.note(f"error: {exc}")
        raise
    t0 = time.perf_counter()
    result = s.group.from_main(evaluate_epoch, s.net, cfg, s.device)
    times["time_evaluation"] = time.perf_counter() - t0
    finish_epoch(s, epoch + 1, labels, losses, result, lr, times)


def _epoch_lines(epoch: int, cfg: TrainConfig, labels: EpochLabels, losses: dict, result: dict, best: float,
                 times: dict) -> list[str]:
    head = f"epoch {epoch}/{cfg.epochs}"
    rgb, ir = labels.rgb, labels.ir
    lines = [f"{head}: clusters visible {rgb.num_clusters} (outliers {rgb.num_outliers}), "
             f"infrared {ir.num_clusters} (outliers {ir.num_outliers}), eps {cfg.eps:g}; "
             f"purity visible {rgb.purity:.3f}, infrared {ir.purity:.3f}; ARI visible {rgb.ari:.3f}, infrared "
             f"{ir.ari:.3f}; NMI visible {rgb.nmi:.3f}, infrared {ir.nmi:.3f}"]
    if cfg.ablation.npc:
        lines.append(f"{head}: NPC relabelled visible {rgb.relabeled}, infrared {ir.relabeled}")
    return lines + [f"{head}: loss " + " ".join(f"{k} {v:.5g}" for k, v in losses.items() if v is not None),
                    f"{head}: Rank-1 {result['rank1']:.2f}% mAP {result['mAP']:.2f}% mINP {result['mINP']:.2f}% "
                    f"(best Rank-1 {best:.2f}%)",
                    f"{head}: seconds " + ", ".join(f"{k[len('time_'):]} {v:.1f}" for k, v in times.items())]


def finish_epoch(s: RunState, done: int, labels: EpochLabels, losses: dict, result: dict, lr: float,
                 times: dict) -> None:
    """The epoch's log lines and metrics record, then (rank 0) the checkpoint and, when it improved, model_best: the
    order :func:`rpnr.engine.run_folder.reconcile_best` relies on."""
    cfg = s.cfg
    improved = result["rank1"] > s.best["rank1"]
    if improved:
        s.best = {"epoch": done, "rank1": result["rank1"], "mAP": result["mAP"]}
    for line in _epoch_lines(done, cfg, labels, losses, result, s.best["rank1"], times):
        s.log.print(line)
    s.log.add_record({
        "epoch": done, **result, "best_rank1": s.best["rank1"], "lr": lr, "world_size": s.group.world_size,
        "bn_splits": cfg.bn_splits, "clusters_rgb": labels.rgb.num_clusters, "clusters_ir": labels.ir.num_clusters,
        "outliers_rgb": labels.rgb.num_outliers, "outliers_ir": labels.ir.num_outliers,
        "relabeled_rgb": labels.rgb.relabeled, "relabeled_ir": labels.ir.relabeled,  # None: NPC off
        **{f"{q}_{m}": getattr(getattr(labels, m), q) for q in ("purity", "ari", "nmi") for m in ("rgb", "ir")},
        **{f"loss_{k}": v for k, v in losses.items()}, **times})
    if s.group.is_main:  # rank 0 writes
        model_state, folder = s.net.state_dict(), s.folder.path
        save_checkpoint({
            "model": model_state, "optimizer": s.optimizer.state_dict(), "scheduler": s.scheduler.state_dict(),
            "epoch": done, "best_rank1": s.best["rank1"], "best": s.best, "rng": capture_rng_state(), "args": s.args,
            "stage": cfg.stage, "dataset": cfg.dataset, "world_size": s.group.world_size, "data_id": s.data_id,
            "log_bytes": s.log.size(), "format_version": FORMAT_VERSION}, folder / CHECKPOINT)
        if improved:
            save_checkpoint(best_state(model_state, s.best, s.args), folder / BEST)


def run(cfg: TrainConfig, group: ProcessGroup = SINGLE, given: frozenset[str] = frozenset(),
        command: list[str] | None = None) -> dict:
    """Train ``cfg.epochs`` epochs (resuming when ``cfg.resume``), then test the best and the last model; the run's
    files in ``cfg.logs_dir`` (rank 0 writes), held locked; returns ``{"best": ..., "last": ...}`` (every rank)."""
    s = open_run(cfg, group, given, command)
    try:
        for epoch in range(s.start_epoch, s.cfg.epochs):
            run_epoch(s, epoch)
        return s.group.from_main(test_best_and_last, s.net, s.cfg, s.log, s.device)
    finally:
        s.folder.release()
