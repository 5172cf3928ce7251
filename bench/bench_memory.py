"""Peak memory and time of one training iteration per flag set (issue 17): --bn-splits 1/2/4, with and without
--low-memory, fp32 and bf16 (bf16 autocast on CUDA only).

Each variant runs in its own subprocess (a fresh peak): CUDA reports the allocator's peak
(``torch.cuda.max_memory_allocated``), the CPU the process's peak resident set (``ru_maxrss``), a proxy.
The stage-2 step of the trainer (``rpnr.engine.step.train_step``) runs on random images and pseudo labels.

    python bench/bench_memory.py                                    # CPU proxy: 144x72, 64 IR + 2 x 32 RGB
    python bench/bench_memory.py --device cuda --height 288 --width 144 --ir 128 --rgb 128   # the release's SYSU batch
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rpnr.engine.batches import IterationBatch  # noqa: E402
from rpnr.engine.distributed import SINGLE  # noqa: E402
from rpnr.engine.labels import EpochLabels, ModalityLabels, build_memories  # noqa: E402
from rpnr.engine.settings import TrainConfig  # noqa: E402
from rpnr.engine.step import train_step  # noqa: E402
from rpnr.models import build_model  # noqa: E402

CLUSTERS = 64


def _labels(n: int) -> EpochLabels:
    sides = [ModalityLabels(cluster=np.arange(n) % CLUSTERS, train=np.arange(n) % CLUSTERS,
                            centers=torch.randn(CLUSTERS, 2048), relabeled=0, purity=1.0, ari=1.0, nmi=1.0)
             for _ in range(2)]
    partners = np.random.default_rng(0).permutation(CLUSTERS)
    return EpochLabels(sides[0], sides[1], r2i=partners, i2r=np.argsort(partners))


def child(args: argparse.Namespace) -> dict:
    """One variant: ``args.warmup`` iterations, then ``args.iters`` timed ones; peak memory and seconds/iteration."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = build_model(bn_splits=args.bn_splits).to(device).train()
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    cfg = TrainConfig(dataset="sysu", stage="rpnr", data_dir="-", logs_dir="-", height=args.height, width=args.width,
                      device=str(device), amp=args.precision == "bf16", low_memory=args.low_memory)
    n = max(args.ir, args.rgb) * 4
    labels = _labels(n)
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=3.5e-4)
    images = (torch.randint(0, 256, (args.ir, args.height, args.width, 3), dtype=torch.uint8),
              torch.randint(0, 256, (args.rgb, args.height, args.width, 3), dtype=torch.uint8))
    batch = IterationBatch(np.arange(args.ir), np.arange(args.rgb), np.arange(args.ir), np.arange(2 * args.rgb))
    seconds = []
    for k in range(args.warmup + args.iters):
        memories = build_memories(labels.to(device), 0.05, 0.1, hybrid=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_step(net, optimizer, SINGLE, cfg, batch, images, labels, memories, 1, k + 1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if k >= args.warmup:
            seconds.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_bytes": int(peak), "seconds_per_iteration": float(np.median(seconds))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--height", type=int, default=144)
    parser.add_argument("--width", type=int, default=72)
    parser.add_argument("--ir", type=int, default=64, help="infrared images per batch")
    parser.add_argument("--rgb", type=int, default=32, help="visible images per batch (each in two views)")
    parser.add_argument("--splits", default="1,2,4", help="--bn-splits values")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the table as JSON")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bn-splits", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--low-memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return 0
    precisions = ["fp32", "bf16"] if torch.device(args.device).type == "cuda" else ["fp32"]
    common = ["--device", args.device, "--height", str(args.height), "--width", str(args.width), "--ir", str(args.ir),
              "--rgb", str(args.rgb), "--warmup", str(args.warmup), "--iters", str(args.iters)]
    kind = "CUDA allocator peak" if precisions == ["fp32", "bf16"] else "CPU peak resident set (proxy)"
    print(f"{args.height}x{args.width}, {args.ir} infrared + 2 x {args.rgb} visible images, {kind}")
    print(f"{'precision':>9} {'bn-splits':>9} {'low-memory':>10} {'peak GB':>8} {'s/it':>7} {'memory':>7} {'time':>6}")
    rows = []
    for precision in precisions:
        for splits in (int(s) for s in args.splits.split(",")):
            default = None
            for low in (False, True):
                cmd = [sys.executable, __file__, "--child", *common, "--bn-splits", str(splits), "--precision",
                       precision, *(["--low-memory"] if low else [])]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    print(done.stderr[-2000:], file=sys.stderr)
                    return 1
                row = {"precision": precision, "bn_splits": splits, "low_memory": low,
                       **json.loads(done.stdout.strip().splitlines()[-1])}
                default = default or row
                rows.append(row)
                print(f"{precision:>9} {splits:>9} {'on' if low else 'off':>10} {row['peak_bytes'] / 1e9:8.2f} "
                      f"{row['seconds_per_iteration']:7.3f} {row['peak_bytes'] / default['peak_bytes']:7.2f}x "
                      f"{row['seconds_per_iteration'] / default['seconds_per_iteration']:5.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
