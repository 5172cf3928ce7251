"""One full-size stage-2 (RPNR) epoch on synthetic SYSU-MM01, seconds per phase (issue 10 item 5).

Builds a synthetic raw SYSU tree of about the real size (395 training identities, ~22k visible and
~12k infrared training images; written small and prepared at 288x144), takes a random-initialised
model as the stage-1 checkpoint, and runs the trainer's own epoch (``rpnr.engine.loop.run_epoch``):
clustering features, pseudo labels, 200 training iterations, the per-epoch test. Printed: seconds of
each phase, training iterations per second, and the clustering-feature extraction in plain float32
measured in the same run (the ratio shows what ``--feature-precision`` buys).

    python bench/bench_epoch.py --device cuda                       # real size (goal: <= 45 s, >= 6 it/s)
    python bench/bench_epoch.py --device cuda --feature-precision fp32 --bn-splits 1
    python bench/bench_epoch.py --device cpu --small                 # a dry run of the script on the CPU

The synthetic data is kept in --data (re-used by later runs). A random model gives few clusters
per identity; when the paper's eps leaves too few to fill a batch, larger/smaller eps are tried.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rpnr.common.checkpoints import save_checkpoint  # noqa: E402
from rpnr.common.errors import PseudoLabelError  # noqa: E402
from rpnr.data.prepare import write_prepared  # noqa: E402
from rpnr.data.synthetic import write_sysu  # noqa: E402
from rpnr.data.sysu import plan_sysu  # noqa: E402
from rpnr.engine.distributed import SINGLE  # noqa: E402
from rpnr.engine.labels import extract_train_features  # noqa: E402
from rpnr.engine.loop import open_run, run_epoch  # noqa: E402
from rpnr.engine.settings import TrainConfig  # noqa: E402
from rpnr.models import build_model  # noqa: E402

FULL = {"train_ids": 316, "val_ids": 79, "test_ids": 96, "per_camera": 18, "height": 96, "width": 48}
SMALL = {"train_ids": 12, "val_ids": 4, "test_ids": 6, "per_camera": 3, "height": 64, "width": 32}
GOAL_EPOCH_S, GOAL_IT_S = 45.0, 6.0  # issue 10: one H100-class GPU, --bn-splits 2


def prepared_sysu(data: Path, small: bool, height: int, width: int) -> Path:
    """A prepared synthetic SYSU folder under ``data`` (written once, re-used afterwards)."""
    out = data / f"prepared_{height}x{width}"
    if (out / "manifest.json").is_file():
        return out
    raw = data / "raw"
    if not raw.is_dir():
        t0 = time.perf_counter()
        write_sysu(raw, **(SMALL if small else FULL), seed=0)
        print(f"wrote the synthetic raw tree in {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    write_prepared(plan_sysu(str(raw)), out, height, width)
    print(f"prepared it at {height}x{width} in {time.perf_counter() - t0:.0f} s")
    return out


def config(args: argparse.Namespace, data: Path, logs: Path, baseline: Path, eps: float) -> TrainConfig:
    batch, instances, k1, k2 = (16, 4, 10, 3) if args.small else (128, 16, 30, 6)
    return TrainConfig(dataset="sysu", stage="rpnr", data_dir=str(data), logs_dir=str(logs), height=args.height,
                       k1=k1, k2=k2,
                       width=args.width, batch_size=batch, rgb_batch_size=batch, num_instances=instances,
                       iters=args.iters, epochs=1, eps=eps, baseline=str(baseline), device=args.device, seed=1,
                       workers=args.workers, test_trials=1, amp=not args.no_amp, bn_splits=args.bn_splits,
                       feature_precision=args.feature_precision, low_memory=args.low_memory, overwrite=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", default="/tmp/rpnr_bench_epoch", help="folder for the synthetic data and logs")
    p.add_argument("--small", action="store_true", help="a tiny dataset and batch (dry run on the CPU)")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--iters", type=int, default=None, help="training iterations (default 200; --small 2)")
    p.add_argument("--bn-splits", type=int, default=2)
    p.add_argument("--feature-precision", choices=("fp32", "tf32", "bf16"), default="tf32")
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--low-memory", action="store_true", help="the exact low-memory step (DESIGN.md section 11)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--json", default=None, help="write the record of the epoch to this file")
    args = p.parse_args(argv)
    args.height = args.height or (64 if args.small else 288)
    args.width = args.width or (32 if args.small else 144)
    args.iters = args.iters or (2 if args.small else 200)
    data = Path(args.data)
    prepared = prepared_sysu(data, args.small, args.height, args.width)
    baseline = data / "random_stage1.pth.tar"
    torch.manual_seed(0)
    save_checkpoint({"model": build_model("agw").state_dict()}, baseline)

    for eps in (0.6, 0.5, 0.4, 0.3, 0.2, 0.7, 0.1):
        state = open_run(config(args, prepared, data / "logs", baseline, eps), group=SINGLE)
        try:
            run_epoch(state, 0)
            break
        except PseudoLabelError as exc:
            state.folder.release()
            print(f"eps {eps}: {exc}")
    else:
        return 1
    record = state.log.records[-1]
    ir_times = {precision: time_ir_features(state, precision) for precision in (args.feature_precision, "fp32")}
    report(args, state, record, eps, ir_times)
    if args.json:
        Path(args.json).write_text(json.dumps({**record, "time_features_ir": ir_times}, indent=1))
    return 0


def time_ir_features(state, precision: str) -> float:
    """Seconds to extract the infrared clustering features once more in ``precision``."""
    t0 = time.perf_counter()
    extract_train_features(state.net, state.train_ir.images, "infrared", state.cfg.feature_batch_size,
                           state.device, f"{precision} features", precision=precision)
    if state.device.type == "cuda":
        torch.cuda.synchronize(state.device)
    return time.perf_counter() - t0


def report(args: argparse.Namespace, state, record: dict, eps: float, ir_times: dict) -> None:
    """Seconds per phase, iterations per second, the float32 extraction ratio and the goals."""
    n_rgb, n_ir = len(state.train_rgb), len(state.train_ir)
    phases = {k[len("time_"):]: v for k, v in record.items() if k.startswith("time_")}
    total = sum(phases.values())
    device = torch.cuda.get_device_name(state.device) if state.device.type == "cuda" else "cpu"
    print(f"device {device}; {n_rgb} visible + {n_ir} infrared training images at {args.height}x{args.width}; "
          f"eps {eps}; bn_splits {args.bn_splits}{' --low-memory' if args.low_memory else ''}; "
          f"features {args.feature_precision}; "
          f"{'bf16 autocast' if not args.no_amp else 'fp32'} training")
    print(f"clusters visible {record['clusters_rgb']}, infrared {record['clusters_ir']}")
    for name, seconds in phases.items():
        print(f"  {name:<11} {seconds:7.1f} s")
    print(f"  {'epoch':<11} {total:7.1f} s")
    rate = args.iters / phases["training"]
    print(f"training: {rate:.2f} it/s ({args.iters} iterations)")
    if state.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(state.device) / 2**30
        print(f"peak GPU memory allocated: {peak:.1f} GiB (batch {state.cfg.batch_size} infrared + "
              f"2 x {state.cfg.rgb_batch_size} visible)")
    chosen, fp32 = ir_times[args.feature_precision], ir_times["fp32"]
    print(f"infrared clustering features again: {args.feature_precision} {chosen:.1f} s, plain fp32 {fp32:.1f} s, "
          f"ratio {chosen / fp32:.2f}")
    if not args.small and state.device.type == "cuda":
        print(f"goal epoch <= {GOAL_EPOCH_S:.0f} s: {'met' if total <= GOAL_EPOCH_S else 'NOT met'}; "
              f"goal training >= {GOAL_IT_S:.0f} it/s: {'met' if rate >= GOAL_IT_S else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
