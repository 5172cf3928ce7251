"""Where the time of one training iteration goes (issue 24): the parts of ``rpnr.engine.step.train_step``'s one-graph
step, timed one after the other on the device, with ratios against straightforward references.

Parts: augmentation (the uint8 rows to the device, the batched views, channels_last on CUDA), forward (bf16 autocast
on CUDA unless --no-amp), objective (the stage-2 terms, kept on the device), backward (the memory updates run in it)
and the optimizer step (Adam: fused on CUDA, as the trainer). CUDA events time each part on a GPU (the GPU time
between two points of the stream, not the host's); the CPU uses the wall clock. ``train_step`` itself is timed too
(host wall clock, synchronised after each iteration): its time should match the parts' sum.

References (same inputs): the CMhcl memory updates of one iteration, vectorised (``rpnr.memory._hcl_update``)
against the per-class loop they replaced; one iteration whose loss terms are read (``.item()``) right after the
objective, as before issue 24, against one that keeps them on the device; fused Adam against the default one.
--compile also times the torch.compile'd model (the first iterations compile: raise --warmup). --profile prints a
torch.profiler summary of two iterations (top ops; CPU and CUDA activity on a GPU).

Random uint8 images, random-init AGW, P x K pseudo labels (16 images per identity) over --k-rgb / --k-ir clusters.

    python bench/bench_step.py                              # CPU: 144x72, 32 IR + 2 x 16 RGB, 2 timed iterations
    python bench/bench_step.py --device cuda --profile      # the release's SYSU batch: 288x144, 128 IR + 2 x 128 RGB
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rpnr.data.augment import IterationDraws  # noqa: E402
from rpnr.engine.batches import IterationBatch  # noqa: E402
from rpnr.engine.distributed import SINGLE  # noqa: E402
from rpnr.engine.labels import EpochLabels, ModalityLabels, build_memories  # noqa: E402
from rpnr.engine.settings import TrainConfig  # noqa: E402
from rpnr.engine.step import _autocast, _objective, train_step  # noqa: E402
from rpnr.memory import _hcl_update  # noqa: E402
from rpnr.models import build_model  # noqa: E402

PARTS = ("augmentation", "forward", "objective", "backward", "optimizer")


def hcl_loop_update(inputs: torch.Tensor, targets: torch.Tensor, features: torch.Tensor, m: float) -> None:
    """The per-class CMhcl update before issue 24 (reference): a Python loop over the batch's classes."""
    num = features.size(0) // 2
    classes, inverse = torch.unique(targets, return_inverse=True)
    updates = []
    for c_idx, c in enumerate(classes.tolist()):
        members = inputs[inverse == c_idx]  # [n_c, d], batch order
        hard = members[torch.argmin(members @ features[c])]
        updates += [(c, members.mean(0)), (c + num, hard)]
    for row, x in updates:
        features[row] = m * features[row] + (1.0 - m) * x
        features[row] /= features[row].norm()


class Clock:
    """Marks between the parts of an iteration: CUDA events on a GPU, the wall clock on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        """Seconds between consecutive marks (synchronises on CUDA); resets the marks."""
        if self.cuda:
            torch.cuda.synchronize()
            out = [a.elapsed_time(b) / 1000 for a, b in zip(self.marks, self.marks[1:])]
        else:
            out = [b - a for a, b in zip(self.marks, self.marks[1:])]
        self.marks = []
        return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_labels(n: int, k_rgb: int, k_ir: int, num_instances: int, seed: int = 0) -> EpochLabels:
    """P x K pseudo labels: ``num_instances`` consecutive rows per cluster, random centres and OT partners."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    sides = []
    for k in (k_rgb, k_ir):
        train = (np.arange(n) // num_instances) % k  # [n]
        sides.append(ModalityLabels(cluster=train.copy(), train=train, centers=torch.randn(k, 2048, generator=g),
                                    relabeled=0, purity=1.0, ari=1.0, nmi=1.0))
    return EpochLabels(sides[0], sides[1], r2i=rng.integers(0, k_ir, k_rgb), i2r=rng.integers(0, k_rgb, k_ir))


class Setup:
    """Model, Adam, settings, labels, memories, images and the batch of one stage-2 iteration (``args``: this
    script's options; bench/check_cuda.py builds one too)."""

    def __init__(self, args: argparse.Namespace, compiled: bool = False):
        self.device = device = torch.device(args.device)
        torch.manual_seed(0)
        net = build_model(bn_splits=args.bn_splits).to(device).train()
        self.model = net.to(memory_format=torch.channels_last) if device.type == "cuda" else net
        if compiled:
            self.model.compile()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=3.5e-4, weight_decay=5e-4,
                                          fused=device.type == "cuda" or None)  # as rpnr.engine.loop.check_run
        self.cfg = TrainConfig(dataset="sysu", stage="rpnr", data_dir="-", logs_dir="-", height=args.height,
                               width=args.width, device=str(device), amp=args.amp, bn_splits=args.bn_splits)
        n = 4 * max(args.ir, args.rgb)
        self.labels = make_labels(n, args.k_rgb, args.k_ir, args.num_instances)
        self.memories = build_memories(self.labels.to(device), 0.05, 0.1, hybrid=True)
        g = torch.Generator().manual_seed(1)
        self.images = tuple(torch.randint(0, 256, (b, args.height, args.width, 3), dtype=torch.uint8, generator=g)
                            for b in (args.ir, args.rgb))
        if device.type == "cuda":
            self.images = tuple(t.pin_memory() for t in self.images)  # as rpnr.engine.batches.prefetch on CUDA
        self.batch = IterationBatch(np.arange(args.ir), np.arange(args.rgb), np.arange(args.ir),
                                    np.arange(2 * args.rgb))
        self.epoch = 1  # odd: the cross-modal terms use the RGB memory with the IR features

    def augment(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The augmentation part of ``train_step``: (x_rgb [2 B_rgb, 3, H, W], x_ir [B_ir, 3, H, W]) on the device."""
        cfg, device, batch = self.cfg, self.device, self.batch
        draws = IterationDraws.draw(len(batch.rows_ir), len(batch.rows_rgb), cfg.height, cfg.width)
        fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        x_ir = draws.ir_views(self.images[0].to(device, non_blocking=True), batch.pos_ir, cfg.height, cfg.width)
        x_rgb = draws.rgb_views(self.images[1].to(device, non_blocking=True), batch.pos_rgb, cfg.height, cfg.width)
        return x_rgb.contiguous(memory_format=fmt), x_ir.contiguous(memory_format=fmt)

    def train(self, x_rgb: torch.Tensor, x_ir: torch.Tensor, clock: Clock, iteration: int, read: bool = False) -> dict:
        """The rest of ``train_step``'s one-graph path, a clock mark after each part; ``read``: every loss term read
        (.item()) right after the objective, as the trainer did before issue 24."""
        self.optimizer.zero_grad(set_to_none=True)
        with _autocast(self.device, self.cfg.amp):
            f_rgb, f_ir = self.model(x_rgb, x_ir)
        clock.mark()
        total, parts = _objective(f_rgb.float(), f_ir.float(), self.cfg, self.batch, self.labels, self.memories,
                                  self.epoch, iteration)
        for value in parts.values() if read else ():
            value.item()  # the host waits for the device here
        clock.mark()
        total.backward()
        clock.mark()
        self.optimizer.step()
        clock.mark()
        return parts

    def parts(self, clock: Clock, iteration: int, read: bool = False) -> dict:
        """One iteration, ``train_step``'s one-graph path part by part (a mark before and after each)."""
        clock.mark()
        x_rgb, x_ir = self.augment()
        clock.mark()
        return self.train(x_rgb, x_ir, clock, iteration, read)

    def step(self, iteration: int) -> dict:
        """The trainer's own ``train_step``."""
        return train_step(self.model, self.optimizer, SINGLE, self.cfg, self.batch, self.images, self.labels,
                          self.memories, self.epoch, iteration)


def time_parts(setup: Setup, args: argparse.Namespace) -> tuple[dict, float, float]:
    """Median seconds of each part; median wall seconds of ``train_step`` and of a read-every-iteration step."""
    clock, per_part, whole, read = Clock(setup.device), [], [], []
    for k in range(args.warmup + args.iters):
        setup.parts(clock, k + 1)
        seconds = clock.seconds()
        sync(setup.device)
        t0 = time.perf_counter()
        setup.step(k + 1)
        sync(setup.device)
        t1 = time.perf_counter()
        setup.parts(Clock(setup.device), k + 1, read=True)
        sync(setup.device)
        t2 = time.perf_counter()
        if k >= args.warmup:
            per_part.append(seconds)
            whole.append(t1 - t0)
            read.append(t2 - t1)
    parts = {name: float(np.median([s[i] for s in per_part])) for i, name in enumerate(PARTS)}
    return parts, float(np.median(whole)), float(np.median(read))


def time_memory_updates(setup: Setup, args: argparse.Namespace, repeats: int = 5) -> tuple[float, float]:
    """Seconds of the four CMhcl updates of one odd-epoch stage-2 iteration (IR, RGB, cross = RGB memory with IR
    features, hybrid with IR features): vectorised and the per-class loop, the best of ``repeats``."""
    device, labels, batch = setup.device, setup.labels, setup.batch
    g = torch.Generator().manual_seed(2)
    x_ir = torch.nn.functional.normalize(torch.randn(args.ir, 2048, generator=g), dim=1).to(device)
    x_rgb = torch.nn.functional.normalize(torch.randn(2 * args.rgb, 2048, generator=g), dim=1).to(device)
    y_ir = torch.as_tensor(labels.ir.train[batch.rows_ir]).to(device)
    y = torch.as_tensor(labels.rgb.train[batch.rows_rgb])
    y_rgb = torch.cat((y, y)).to(device)
    i2r = torch.as_tensor(labels.i2r).to(device)
    mem = setup.memories
    calls = [(x_ir, y_ir, "ir"), (x_rgb, y_rgb, "rgb"), (x_ir, i2r[y_ir], "rgb"), (x_ir, y_ir, "hybrid")]
    best = {}
    for name, update in (("vectorised", _hcl_update), ("loop", hcl_loop_update)):
        features = {k: m.features.clone() for k, m in mem.items()}
        times = []
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            for x, y, key in reversed(calls):  # backward order
                update(x, y, features[key], 0.1)
            sync(device)
            times.append(time.perf_counter() - t0)
        best[name] = min(times)
    return best["vectorised"], best["loop"]


def time_adam(setup: Setup, repeats: int = 5) -> dict:
    """Seconds of one Adam step over the model's parameters: the default implementation and the fused one."""
    out = {}
    for name, fused in (("default", None), ("fused", True)):
        params = [torch.nn.Parameter(p.detach().clone()) for p in setup.params]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        try:
            opt = torch.optim.Adam(params, lr=3.5e-4, weight_decay=5e-4, fused=fused)
            opt.step()  # state created
        except RuntimeError as exc:  # fused Adam unsupported here
            out[name] = None
            print(f"note: {name} Adam: {exc}", file=sys.stderr)
            continue
        times = []
        for _ in range(repeats):
            sync(setup.device)
            t0 = time.perf_counter()
            opt.step()
            sync(setup.device)
            times.append(time.perf_counter() - t0)
        out[name] = min(times)
    return out


def profile(setup: Setup, top: int) -> None:
    """torch.profiler summary of two ``train_step`` calls: the ``top`` ops by device time (CPU time on the CPU)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = setup.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=activities) as prof:
        for k in range(2):
            setup.step(100 + k)
        sync(setup.device)
    averages = prof.key_averages()
    for key in (("self_device_time_total", "self_cuda_time_total") if cuda else ("self_cpu_time_total",)):
        try:
            print(averages.table(sort_by=key, row_limit=top))
            return
        except (AttributeError, KeyError, ValueError):
            continue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--height", type=int, default=None, help="default 288 on CUDA, 144 on the CPU")
    parser.add_argument("--width", type=int, default=None, help="default 144 on CUDA, 72 on the CPU")
    parser.add_argument("--ir", type=int, default=None, help="infrared images (default 128 on CUDA, 32 on the CPU)")
    parser.add_argument("--rgb", type=int, default=None, help="visible images, each in two views (128 / 16)")
    parser.add_argument("--num-instances", type=int, default=16)
    parser.add_argument("--k-rgb", type=int, default=500, help="visible clusters")
    parser.add_argument("--k-ir", type=int, default=400, help="infrared clusters")
    parser.add_argument("--bn-splits", type=int, default=2)
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="float32 on CUDA (default: bf16)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations (default 3 on CUDA, 1 on CPU)")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (default 10 on CUDA, 2 on CPU)")
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile'd model")
    parser.add_argument("--profile", action="store_true", help="torch.profiler summary of two iterations")
    parser.add_argument("--top", type=int, default=25, help="rows of the profiler summary")
    parser.add_argument("--json", default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_step.py: no CUDA device", file=sys.stderr)
        return 1
    cuda = device.type == "cuda"
    for name, gpu, cpu in (("height", 288, 144), ("width", 144, 72), ("ir", 128, 32), ("rgb", 128, 16),
                           ("warmup", 3, 1), ("iters", 10, 2)):
        if getattr(args, name) is None:
            setattr(args, name, gpu if cuda else cpu)
    what = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"{what}, torch {torch.__version__}; {args.height}x{args.width}, {args.ir} infrared + 2 x {args.rgb} "
          f"visible images, {args.num_instances} per identity, {args.k_rgb} / {args.k_ir} clusters, --bn-splits "
          f"{args.bn_splits}, {'bf16 autocast' if cuda and args.amp else 'float32'}; {args.iters} timed iterations "
          f"after {args.warmup} ({'CUDA events' if cuda else 'wall clock'})", flush=True)
    result: dict = {"device": what, "args": vars(args)}
    variants = [("eager", False)] + ([("compiled", True)] if args.compile else [])
    for label, compiled in variants:
        setup = Setup(args, compiled)
        parts, whole, read = time_parts(setup, args)
        total = sum(parts.values())
        print(f"\n{label}: one iteration, part by part (median s)\n\n| part | s/it | share |\n|---|---|---|")
        for name, seconds in parts.items():
            extra = " (incl. the memory updates)" if name == "backward" else ""
            print(f"| {name}{extra} | {seconds:.4f} | {100 * seconds / total:.0f} % |")
        print(f"| sum of the parts | {total:.4f} | |")
        print(f"| `train_step` (host wall clock, synchronised) | {whole:.4f} | {whole / total:.2f}x the sum |")
        result[label] = {"parts": parts, "sum": total, "train_step": whole, "terms_read_each_iteration": read}
    setup = Setup(args)
    vec, loop = time_memory_updates(setup, args)
    adam = time_adam(setup)
    eager = result["eager"]
    print("\nagainst straightforward references (host wall clock, synchronised)\n\n| part | now (s) | reference (s) "
          "| reference / now |\n|---|---|---|---|")
    print(f"| the 4 CMhcl memory updates of an iteration: vectorised / per-class loop | {vec:.5f} | {loop:.5f} | "
          f"{loop / vec:.1f}x |")
    kept, read = eager["train_step"], eager["terms_read_each_iteration"]
    print(f"| iteration: loss terms kept on the device / read each iteration (.item()) | {kept:.4f} | {read:.4f} | "
          f"{read / kept:.2f}x |")
    if adam.get("fused") and adam.get("default"):
        mark = " (the trainer's on CUDA)" if cuda else " (the trainer keeps the default on the CPU)"
        print(f"| Adam step: fused{mark} / default | {adam['fused']:.5f} | {adam['default']:.5f} | "
              f"{adam['default'] / adam['fused']:.2f}x |")
    if args.compile:
        comp = result["compiled"]
        print(f"| `train_step`: compiled model / eager | {comp['train_step']:.4f} | {eager['train_step']:.4f} | "
              f"{eager['train_step'] / comp['train_step']:.2f}x |")
    result.update(memory_updates={"vectorised": vec, "loop": loop}, adam=adam)
    if args.profile:
        print()
        profile(setup, args.top)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
