"""Benchmark stage-2 training iterations: the project's path against a plain baseline loop.

Random uint8 images, the AGW model (random init), stage-2 loss with random pseudo labels and CMhcl
memories, Adam. Variants, all measured in this one run:
  baseline     per-sample CPU augmentation (torchvision on PIL images), float32 NCHW
  project      uint8 batch moved to the device, batched augmentation (rpnr.data.augment), float32 NCHW
  project+amp  as project, with bf16 autocast and channels_last (CUDA only, as the trainer does)

    python bench/bench_train.py          # real size: 288x144, IR 128 + RGB 2x128 per iteration
    python bench/bench_train.py --batch 16 --height 144 --width 72 --iters 3   # small, for CPU
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rpnr.data.augment import ERASE_FILL, GREY_WEIGHTS, PAD, apply_view, draw_view  # noqa: E402
from rpnr.evaluation import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from rpnr.memory import ClusterMemory  # noqa: E402
from rpnr.models import build_model  # noqa: E402
from rpnr.training import stage2_loss  # noqa: E402

FEAT_DIM = 2048


def baseline_transform(height: int, width: int) -> T.Compose:
    """The release-style per-image pipeline up to random erasing (PIL in, normalised tensor out)."""
    return T.Compose(
        [
            T.Pad(PAD),
            T.RandomCrop((height, width)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            T.RandomErasing(p=0.5, scale=(0.02, 0.4), ratio=(0.3, 1 / 0.3), value=list(ERASE_FILL)),
        ]
    )


def baseline_batch(images: np.ndarray, transform: T.Compose, view: str, rng: np.random.Generator) -> torch.Tensor:
    """Per-sample CPU augmentation of uint8 [B, H, W, 3] -> float [B, 3, H, W] for view "rgb1"|"rgb2"|"ir"."""
    out = []
    for img in images:
        x = transform(Image.fromarray(img))  # [3, H, W]
        if view == "rgb2":
            x = x[rng.integers(3)].expand(3, -1, -1).clone()
        elif view == "ir":
            choice = rng.integers(4)
            if choice < 3:
                x = x[choice].expand(3, -1, -1).clone()
            elif rng.random() < 0.5:
                w = GREY_WEIGHTS
                x = (w[0] * x[0] + w[1] * x[1] + w[2] * x[2]).expand(3, -1, -1).clone()
        out.append(x)
    return torch.stack(out, 0)


def make_memories(k_rgb: int, k_ir: int, device: torch.device) -> dict[str, ClusterMemory]:
    """Stage-2 CMhcl memories (momentum 0.1, temp 0.05) from random centres."""
    return {
        "rgb": ClusterMemory.from_centers(torch.randn(k_rgb, FEAT_DIM, device=device), 0.05, 0.1, "CMhcl"),
        "ir": ClusterMemory.from_centers(torch.randn(k_ir, FEAT_DIM, device=device), 0.05, 0.1, "CMhcl"),
        "hybrid": ClusterMemory.from_centers(torch.randn(k_ir, FEAT_DIM, device=device), 0.05, 0.1, "CMhcl"),
    }


def random_labels(batch: int, num_instances: int, num_clusters: int) -> torch.Tensor:
    """Pseudo labels of a P x K batch: batch / num_instances clusters, num_instances images each. [batch]"""
    ids = torch.randperm(num_clusters)[: max(1, batch // num_instances)]
    return ids.repeat_interleave(num_instances)[:batch]


def make_batch(
    name: str,
    pool: np.ndarray,
    rgb_idx: np.ndarray,
    ir_idx: np.ndarray,
    transform: T.Compose,
    rng: np.random.Generator,
    height: int,
    width: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented (x_rgb [2B_rgb, 3, H, W] = both views, x_ir [B, 3, H, W]) on the device for one variant."""
    if name == "baseline":
        view1 = baseline_batch(pool[rgb_idx], transform, "rgb1", rng)
        view2 = baseline_batch(pool[rgb_idx], transform, "rgb2", rng)
        x_rgb = torch.cat([view1, view2]).to(device)
        x_ir = baseline_batch(pool[ir_idx], transform, "ir", rng).to(device)
        return x_rgb, x_ir
    rgb, ir = torch.from_numpy(pool[rgb_idx]).to(device), torch.from_numpy(pool[ir_idx]).to(device)
    x_rgb = torch.cat([apply_view(rgb, draw_view(len(rgb), height, width, channel), height, width)
                       for channel in ("none", "exchange")])  # [view 1; view 2]
    x_ir = apply_view(ir, draw_view(len(ir), height, width, "adaptive_grey"), height, width)
    if name == "project+amp":
        x_rgb = x_rgb.contiguous(memory_format=torch.channels_last)
        x_ir = x_ir.contiguous(memory_format=torch.channels_last)
    return x_rgb, x_ir


class Stage2Step:
    """Model, Adam and stage-2 memories with random pseudo labels; ``__call__`` runs one iteration."""

    def __init__(self, args: argparse.Namespace, device: torch.device, amp: bool, rng: np.random.Generator):
        self.model = build_model().to(device).train()
        if amp:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=3.5e-4, weight_decay=5e-4)
        self.memories = make_memories(args.k_rgb, args.k_ir, device)
        self.r2i = rng.integers(0, args.k_ir, args.k_rgb)
        self.i2r = rng.integers(0, args.k_rgb, args.k_ir)
        self.args, self.device, self.amp = args, device, amp

    def __call__(self, x_rgb: torch.Tensor, x_ir: torch.Tensor, epoch: int) -> float:
        args = self.args
        y_rgb_one = random_labels(args.rgb_batch, args.num_instances, args.k_rgb)
        y_rgb = torch.cat([y_rgb_one, y_rgb_one]).to(self.device)  # both views
        y_ir = random_labels(args.batch, args.num_instances, args.k_ir).to(self.device)
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()
        with ctx:
            f_rgb, f_ir = self.model(x_rgb, x_ir)  # [2B_rgb, 2048], [B, 2048]
        total, _ = stage2_loss(f_rgb.float(), f_ir.float(), y_rgb, y_ir, self.memories, self.r2i, self.i2r, epoch=epoch)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        return total.item()


def run_variant(name: str, args: argparse.Namespace, device: torch.device, pool: np.ndarray) -> dict:
    """Time ``args.iters`` iterations (after ``args.warmup``) of one variant; data only with --data-only."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    step = None if args.data_only else Stage2Step(args, device, name == "project+amp", rng)
    transform = baseline_transform(args.height, args.width)
    data_time = step_time = 0.0
    for it in tqdm(range(args.warmup + args.iters), desc=name, leave=False):
        t0 = time.perf_counter()
        rgb_idx = rng.integers(0, len(pool), args.rgb_batch)
        ir_idx = rng.integers(0, len(pool), args.batch)
        x_rgb, x_ir = make_batch(name, pool, rgb_idx, ir_idx, transform, rng, args.height, args.width, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t1 = time.perf_counter()
        if step is not None:
            step(x_rgb, x_ir, epoch=it)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        t2 = time.perf_counter()
        if it >= args.warmup:
            data_time += t1 - t0
            step_time += t2 - t1
    seconds = data_time + step_time
    images = args.iters * (args.batch + 2 * args.rgb_batch)
    rec = {
        "variant": name,
        "iters_per_s": args.iters / seconds,
        "images_per_s": images / seconds,
        "data_s_per_iter": data_time / args.iters,
        "step_s_per_iter": step_time / args.iters,
    }
    if device.type == "cuda":
        rec["peak_gpu_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        torch.cuda.reset_peak_memory_stats(device)
    return rec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128, help="IR images per iteration")
    parser.add_argument("--rgb-batch", type=int, default=None, help="RGB images (x2 views); default --batch")
    parser.add_argument("--num-instances", type=int, default=16)
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--height", type=int, default=288)
    parser.add_argument("--width", type=int, default=144)
    parser.add_argument("--k-rgb", type=int, default=500, help="RGB clusters (memory rows / 2)")
    parser.add_argument("--k-ir", type=int, default=400, help="IR clusters")
    parser.add_argument("--pool", type=int, default=512, help="distinct random images drawn from")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--data-only", action="store_true", help="time only the augmentation / transfer")
    parser.add_argument("--variants", nargs="+", default=None, help="subset of baseline project project+amp")
    args = parser.parse_args()
    args.rgb_batch = args.rgb_batch or args.batch
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda requested but no CUDA device is available", file=sys.stderr)
        return 1
    if min(args.batch, args.rgb_batch, args.iters, args.height, args.width) < 1 or args.warmup < 0:
        print("error: --batch, --rgb-batch, --iters, --height and --width must be positive", file=sys.stderr)
        return 1
    if args.batch < args.num_instances or args.rgb_batch < args.num_instances:
        print(f"error: batches must hold at least --num-instances={args.num_instances} images", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    variants = args.variants or (["baseline", "project"] + (["project+amp"] if device.type == "cuda" else []))
    unknown = set(variants) - {"baseline", "project", "project+amp"}
    if unknown or ("project+amp" in variants and device.type != "cuda"):
        print(
            f"error: unknown or CUDA-only variants requested: {sorted(unknown) or ['project+amp']}",
            file=sys.stderr,
        )
        return 1

    pool = np.random.default_rng(0).integers(0, 256, (args.pool, args.height, args.width, 3), dtype=np.uint8)
    print(
        f"device {device}, threads {torch.get_num_threads()}, {args.height}x{args.width}, IR {args.batch} + "
        f"RGB {args.rgb_batch}x2 per iteration, {args.iters} timed iterations (+{args.warmup} warm-up)"
        + (", data path only" if args.data_only else "")
    )
    records = []
    for name in variants:
        rec = run_variant(name, args, device, pool)
        records.append(rec)
        print(
            f"  {name:12s} {rec['iters_per_s']:8.3f} it/s {rec['images_per_s']:9.1f} img/s   "
            f"data {rec['data_s_per_iter']:.3f} s/it  step {rec['step_s_per_iter']:.3f} s/it",
            flush=True,
        )
    base = next((r for r in records if r["variant"] == "baseline"), None)
    if base is not None:
        for rec in records:
            if rec is not base:
                print(f"  {rec['variant']} / baseline: {rec['iters_per_s'] / base['iters_per_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
