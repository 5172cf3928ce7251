#!/usr/bin/env python
"""Train RPNR: stage 1 (``--stage baseline``) or stage 2 (``--stage rpnr``) on prepared SYSU-MM01, RegDB or LLCM.

Every hyperparameter defaults to the official value for the dataset and stage
(DESIGN.md sections 3-5). Examples:

    python train.py --dataset sysu --stage baseline --data-dir data/sysu_prepared --imagenet resnet50.pth
    python train.py --dataset sysu --stage rpnr --data-dir data/sysu_prepared
    python train.py --dataset regdb --trial 3 --stage baseline --data-dir data/regdb --imagenet r50.pth
    python train.py --dataset llcm --stage baseline --data-dir data/llcm --imagenet r50.pth   # SYSU settings
    python train.py ... --resume        # continue from <logs-dir>/checkpoint.pth.tar
    torchrun --nproc_per_node 4 train.py --dataset sysu --stage rpnr ...   # one process per GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys

import torch

from rpnr import distributed
from rpnr.checkpoint import CheckpointError
from rpnr.data.prepared import PreparedDataError
from rpnr.distributed import DistributedError
from rpnr.evaluation import PRECISIONS
from rpnr.files import os_error_line
from rpnr.models import IMAGENET_HINT
from rpnr.run_folder import RunFolderError
from rpnr.trainer import (
    DATASETS,
    EPS,
    ITERS,
    STAGES,
    TOP_K,
    TrainConfig,
    TrainingError,
    default_baseline,
    default_logs_dir,
    default_rgb_batch,
    run,
)


class UsageError(Exception):
    """A flag value that cannot work; the message is one line."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 1."""

    def error(self, message: str):
        self.exit(1, f"error: {message} (see {self.prog} --help)\n")


def parse_args(argv=None) -> argparse.Namespace:
    return _parser().parse_args(argv)


def named_settings(argv=None) -> frozenset[str]:
    """The settings the command line names (a resumed run keeps the checkpoint's others)."""
    parser = _parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return frozenset({"no_amp": "amp"}.get(k, k) for k in vars(parser.parse_args(argv)))


def _parser() -> argparse.ArgumentParser:
    p = _Parser(description="Train RPNR stage 1 (baseline) or stage 2 (rpnr).",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", "-d", required=True, choices=DATASETS)
    p.add_argument("--stage", required=True, choices=STAGES,
                   help="baseline = stage 1 (ImageNet start); rpnr = stage 2 (starts from --baseline)")
    p.add_argument("--data-dir", required=True,
                   help="prepared dataset folder (prepare_sysu.py / prepare_regdb.py / prepare_llcm.py)")
    p.add_argument("--logs-dir", default=None,
                   help="output folder; default baseline/<dataset>_s1 (stage 1) or logs/<dataset>_s2, "
                        "plus /<trial> for RegDB; '{trial}' is replaced by --trial")
    p.add_argument("--trial", type=int, default=1, help="RegDB trial 1..10")
    p.add_argument("--height", type=int, default=288)
    p.add_argument("--width", type=int, default=144)
    g = p.add_argument_group("sampling and optimisation")
    g.add_argument("--batch-size", "-b", type=int, default=128, help="infrared images per batch")
    g.add_argument("--rgb-batch-size", type=int, default=None,
                   help="visible images per batch, each in two views (default: batch-size for SYSU and LLCM stage 2, "
                        "else batch-size / 2)")
    g.add_argument("--num-instances", type=int, default=16, help="images per pseudo identity in a batch")
    g.add_argument("--iters", type=int, default=None,
                   help="iterations per epoch (default 200 SYSU and LLCM, 100 RegDB)")
    g.add_argument("--epochs", type=int, default=50)
    g.add_argument("--lr", type=float, default=3.5e-4)
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument("--step-size", type=int, default=20, help="StepLR period in epochs")
    g.add_argument("--gamma", type=float, default=0.1, help="StepLR factor")
    g = p.add_argument_group("pseudo labels and memories")
    g.add_argument("--eps", type=float, default=None, help="DBSCAN eps (default 0.6 SYSU and LLCM, 0.3 RegDB)")
    g.add_argument("--k1", type=int, default=30)
    g.add_argument("--k2", type=int, default=6)
    g.add_argument("--momentum", type=float, default=0.1, help="memory update momentum")
    g.add_argument("--temp", type=float, default=0.05, help="memory temperature")
    g.add_argument("--top-k", type=int, default=None,
                   help="NPC prototype members (stage 2; default 20 SYSU and LLCM, 5 RegDB, as the release)")
    g.add_argument("--ot-reg", type=float, default=5.0, help="Sinkhorn entropic regularisation (stage 2)")
    g.add_argument("--w-cross", type=float, default=0.25, help="cross-modality memory term weight (stage 2)")
    g.add_argument("--w-hybrid", type=float, default=0.5, help="hybrid memory term weight (stage 2)")
    g.add_argument("--w-nrl", type=float, default=10.0, help="neighbour relation loss weight (stage 2)")
    g.add_argument("--sigma", type=float, default=1.0, help="NRL kernel width (stage 2)")
    g.add_argument("--delta", type=float, default=1.0, help="NRL margin (stage 2)")
    g = p.add_argument_group("initialisation, resuming and running")
    g.add_argument("--imagenet", default=None, help="local torchvision ResNet-50 ImageNet weights (stage 1)")
    g.add_argument("--no-imagenet", action="store_true", help="stage 1 from random weights")
    g.add_argument("--baseline", default=None,
                   help="stage-1 checkpoint for stage 2 (default baseline/<dataset>_s1/model_best.pth.tar, "
                        "baseline/regdb_s1/<trial>/model_best.pth.tar for RegDB)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --logs-dir from its checkpoint.pth.tar, with its saved settings")
    g.add_argument("--overwrite", action="store_true",
                   help="start afresh in a --logs-dir that holds an earlier run: its outputs are removed first")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--workers", type=int, default=4, help="threads that read training batches ahead")
    g.add_argument("--feature-batch-size", type=int, default=256, help="batch size of feature extraction")
    g.add_argument("--test-trials", type=int, default=10, help="galleries in the final test (SYSU, LLCM)")
    g.add_argument("--no-amp", action="store_true",
                   help="train in float32 on CUDA (default: bf16 autocast; the release trains in float32)")
    g.add_argument("--bn-splits", type=int, default=None,
                   help="batch norm normalises each of this many slices of the training batch on its own, as the "
                        "release's nn.DataParallel on that many GPUs (default: 2 = the release; under torchrun "
                        "the number of processes; 1 = the whole batch)")
    g.add_argument("--feature-precision", choices=PRECISIONS, default="tf32",
                   help="arithmetic of the clustering features on CUDA (tf32 = what the release's PyTorch 1.8 "
                        "did on Ampere and later GPUs); test embeddings are always float32")
    return p


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def _check_bn_splits(splits: int, world: int, batch: int, rgb_batch: int) -> None:
    """--bn-splits against the process count and the batch sizes (one-line UsageError)."""
    _require(splits >= 1, f"--bn-splits must be a positive integer, got {splits}")
    _require(splits % world == 0, f"--bn-splits {splits} is not a multiple of the {world} processes torchrun "
                                  f"started (each process runs --bn-splits / processes of the slices)")
    if world > 1:
        _require(batch % splits == 0 and (2 * rgb_batch) % splits == 0,
                 f"--bn-splits {splits} must divide the infrared batch ({batch}) and the two-view visible batch "
                 f"({2 * rgb_batch}) when torchrun runs {world} processes")
    chunks = [len(torch.empty(n).chunk(splits)) for n in (batch, 2 * rgb_batch)]
    _require(chunks[0] == chunks[1], f"--bn-splits {splits} cuts the infrared batch ({batch}) into {chunks[0]} "
                                     f"slices but the two-view visible batch ({2 * rgb_batch}) into {chunks[1]}")


def build_config(args: argparse.Namespace, world: int = 1) -> TrainConfig:
    """Fill the dataset/stage defaults, check every value, and return the run's settings.

    ``world``: the number of processes torchrun started (1 without torchrun).
    """
    rgb_batch = args.rgb_batch_size
    if rgb_batch is None:
        rgb_batch = default_rgb_batch(args.dataset, args.stage, args.batch_size)
    eps = EPS[args.dataset] if args.eps is None else args.eps
    iters = ITERS[args.dataset] if args.iters is None else args.iters
    top_k = TOP_K[args.dataset] if args.top_k is None else args.top_k
    for flag, value in (("--batch-size", args.batch_size), ("--num-instances", args.num_instances),
                        ("--iters", iters), ("--epochs", args.epochs), ("--step-size", args.step_size),
                        ("--k1", args.k1), ("--k2", args.k2), ("--top-k", top_k),
                        ("--feature-batch-size", args.feature_batch_size)):
        _require(value >= 1, f"{flag} must be a positive integer, got {value}")
    _require(args.batch_size % args.num_instances == 0,
             f"--batch-size {args.batch_size} is not divisible by --num-instances {args.num_instances}")
    _require(rgb_batch >= args.num_instances and rgb_batch % args.num_instances == 0,
             f"the visible batch ({rgb_batch} images) must be a positive multiple of --num-instances "
             f"{args.num_instances}; set --rgb-batch-size or --batch-size")
    _require(eps > 0, f"--eps must be positive, got {eps}")
    for flag, value in (("--lr", args.lr), ("--temp", args.temp), ("--gamma", args.gamma),
                        ("--ot-reg", args.ot_reg), ("--sigma", args.sigma)):
        _require(value > 0, f"{flag} must be positive, got {value}")
    for flag, value in (("--weight-decay", args.weight_decay), ("--w-cross", args.w_cross),
                        ("--w-hybrid", args.w_hybrid), ("--w-nrl", args.w_nrl), ("--delta", args.delta),
                        ("--workers", args.workers)):
        _require(value >= 0, f"{flag} must not be negative, got {value}")
    _require(0 <= args.momentum < 1, f"--momentum must be in [0, 1), got {args.momentum}")
    _require(args.k2 <= args.k1, f"--k2 ({args.k2}) must not exceed --k1 ({args.k1})")
    _require(args.height >= 16 and args.width >= 16,
             f"--height/--width must be at least 16 pixels, got {args.height}x{args.width}")
    _require(1 <= args.test_trials <= 10, f"--test-trials must be in 1..10, got {args.test_trials}")
    _require(not (args.resume and args.overwrite), "pass either --resume (continue the run) or --overwrite (start "
                                                   "afresh), not both")
    if args.dataset == "regdb":
        _require(1 <= args.trial <= 10, f"--trial must be in 1..10 for RegDB, got {args.trial}")
    bn_splits = args.bn_splits if args.bn_splits is not None else (world if world > 1 else 2)
    _check_bn_splits(bn_splits, world, args.batch_size, rgb_batch)
    device = _check_device(args.device, world)

    logs_dir = args.logs_dir or default_logs_dir(args.dataset, args.stage, args.trial)
    logs_dir = logs_dir.replace("{trial}", str(args.trial))
    imagenet, baseline = None, None
    if args.stage == "baseline" and not args.resume:
        _require(not (args.imagenet and args.no_imagenet),
                 "pass either --imagenet or --no-imagenet, not both")
        if not args.no_imagenet:
            _require(args.imagenet is not None, f"stage 1 starts from ImageNet weights: {IMAGENET_HINT}")
            _require(os.path.isfile(args.imagenet),
                     f"ImageNet weights not found at {args.imagenet}: {IMAGENET_HINT}")
            imagenet = args.imagenet
    if args.stage == "rpnr":
        baseline = args.baseline or default_baseline(args.dataset, args.trial)
        baseline = baseline.replace("{trial}", str(args.trial))
        if not args.resume:
            _require(os.path.isfile(baseline),
                     f"stage-1 checkpoint not found: {baseline} (run train.py --stage baseline first, "
                     f"or pass --baseline PATH)")
    return TrainConfig(
        dataset=args.dataset, stage=args.stage, data_dir=args.data_dir, logs_dir=logs_dir, trial=args.trial,
        height=args.height, width=args.width, batch_size=args.batch_size, rgb_batch_size=rgb_batch,
        num_instances=args.num_instances, iters=iters, epochs=args.epochs, lr=args.lr,
        weight_decay=args.weight_decay, step_size=args.step_size, gamma=args.gamma, eps=eps, k1=args.k1,
        k2=args.k2, momentum=args.momentum, temp=args.temp, top_k=top_k, ot_reg=args.ot_reg,
        w_cross=args.w_cross, w_hybrid=args.w_hybrid, w_nrl=args.w_nrl, sigma=args.sigma, delta=args.delta,
        imagenet=imagenet, baseline=baseline, resume=args.resume, device=device, seed=args.seed,
        workers=args.workers, feature_batch_size=args.feature_batch_size, test_trials=args.test_trials,
        amp=not args.no_amp, bn_splits=bn_splits, feature_precision=args.feature_precision,
        overwrite=args.overwrite,
    )


def _check_device(name: str, world: int = 1) -> str:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        _require(torch.cuda.is_available(), f"--device {name}: CUDA is not available on this machine")
        _require(device.index is None or device.index < torch.cuda.device_count(),
                 f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
        _require(world == 1 or device.index is None,
                 f"--device {name}: under torchrun pass --device cuda (process k of a machine takes cuda:k)")
    else:
        _require(device.type == "cpu", f"--device {name!r}: use cpu, cuda or cuda:N")
    return str(device)


def main(argv=None) -> int:
    args = parse_args(argv)
    world, rank = distributed.launched_processes()[:2]
    group, cfg = distributed.SINGLE, None
    try:
        cfg = build_config(args, world)
        group, device = distributed.start(cfg.device)
        run(dataclasses.replace(cfg, device=device), group, named_settings(argv),
            ["train.py", *(sys.argv[1:] if argv is None else argv)])
    except (UsageError, TrainingError, PreparedDataError, CheckpointError, DistributedError,
            RunFolderError) as exc:
        if rank == 0:  # every rank meets the same error; one line is enough
            print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if rank == 0:
            kept = cfg is not None and os.path.isfile(os.path.join(cfg.logs_dir, "checkpoint.pth.tar"))
            print(f"error: {os_error_line(exc)}" + (" (the last checkpoint is intact)" if kept else ""),
                  file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if rank == 0:
            kept = cfg is not None and os.path.isfile(os.path.join(cfg.logs_dir, "checkpoint.pth.tar"))
            print("interrupted; " + ("continue with --resume" if kept else "no checkpoint was written yet (start "
                                     "again with --overwrite)"), file=sys.stderr)
        return 130
    finally:
        distributed.stop(group)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM (kill, torchrun) ends like Ctrl-C
    sys.exit(main())
