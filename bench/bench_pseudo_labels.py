"""Benchmark the pseudo-label step (Jaccard + DBSCAN + centres + NPC) against one dense X @ X.T.

Timings of all paths run in one process with the same thread count; the peak resident-memory growth
of each path is measured in a fresh subprocess. The official loop transcription
(bench/official_reference.py) runs only at a small N, where its labels are also checked against the API.

    python bench/bench_pseudo_labels.py --n 11909 22258 --ref-n 3000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PATHS = ("mm", "api", "fast", "ref")


def synthetic_reid_features(
    n: int,
    d: int = 2048,
    num_ids: int | None = None,
    seed: int = 0,
    tightness: tuple[float, float] = (0.6, 1.4),
    shared: float = 0.35,
    camera_weight: float = 0.5,
    outlier_frac: float = 0.05,
    flip_noise: float = 0.6,
) -> tuple[torch.Tensor, np.ndarray]:
    """Clustered features shaped like flip-averaged re-ID embeddings: (features [n, d] float32, pids [n]).

    Each identity has a centre sharing a common direction with all others (inter-class cosine ~0.15),
    two camera sub-centres and its own spread (intra-class cosine ~0.45); a fraction of the images are
    identity-less outliers (pid -1). A feature is the mean of two unit vectors (an image and its
    perturbed "flip"), not re-normalised, so norms are just below 1. Rows are shuffled.
    """
    rng = np.random.default_rng(seed)
    num_ids = num_ids or max(1, round(n / 30))
    common = rng.standard_normal(d).astype(np.float32)
    common /= np.linalg.norm(common)
    own = rng.standard_normal((num_ids, d)).astype(np.float32)
    own /= np.linalg.norm(own, axis=1, keepdims=True)
    centres = np.sqrt(shared) * common + np.sqrt(1 - shared) * own  # [I, d]
    sizes = rng.multinomial(n, rng.dirichlet(np.full(num_ids, 8.0)))
    pids = np.repeat(np.arange(num_ids), sizes)  # [n]
    cams = rng.integers(0, 2, n)
    cam_dirs = (rng.standard_normal((num_ids, 2, d)) / np.sqrt(d)).astype(np.float32)  # [I, 2, d]
    spread = rng.uniform(tightness[0], tightness[1], num_ids).astype(np.float32)
    outlier = rng.random(n) < outlier_frac
    pids[outlier] = -1

    feats = np.empty((n, d), dtype=np.float32)
    chunk = 4096
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))
        p, o = pids[sl], outlier[sl]
        noise = (rng.standard_normal((len(p), d)) / np.sqrt(d)).astype(np.float32)
        x = centres[p] + camera_weight * cam_dirs[p, cams[sl]] + spread[p, None] * noise  # [c, d]
        x[o] = np.sqrt(shared) * common + 1.2 * noise[o]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        flip = x + flip_noise * (rng.standard_normal((len(p), d)) / np.sqrt(d)).astype(np.float32)
        flip /= np.linalg.norm(flip, axis=1, keepdims=True)
        feats[sl] = (x + flip) / 2
    perm = rng.permutation(n)
    return torch.from_numpy(feats[perm]), pids[perm]


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Relabel clusters by order of first occurrence (outliers stay -1), so partitions compare with ==."""
    labels = np.asarray(labels)
    out = np.full(labels.shape, -1, dtype=np.int64)
    mapping: dict[int, int] = {}
    for i, label in enumerate(labels.tolist()):
        if label == -1:
            continue
        if label not in mapping:
            mapping[label] = len(mapping)
        out[i] = mapping[label]
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_path(name: str, features: torch.Tensor, eps: float, k1: int, k2: int) -> dict:
    """Run one path on ``features``; returns {"labels", "calibrated"} numpy arrays (empty for "mm")."""
    if name == "mm":
        sim = features @ features.t()  # [N, N]
        _sync(features.device)
        del sim
        return {}
    if name == "ref":
        from bench import official_reference as ref

        dist = ref.jaccard_official(features.cpu(), k1=k1, k2=k2)
        labels = ref.dbscan_official(dist, eps)
        ref.centers_official(features.cpu(), labels)
        return {"labels": labels, "calibrated": ref.calibrate_official(features.cpu(), labels)}

    from rpnr import pseudo_labels as pl

    if name == "api":
        dist = pl.jaccard_distance(features, k1=k1, k2=k2)
        labels = pl.dbscan(dist, eps)
        del dist
    elif name == "fast":
        labels = pl.cluster_features(features, eps, k1=k1, k2=k2)
    else:
        raise ValueError(f"unknown path {name!r} (choose from {PATHS})")
    pl.cluster_centers(features, labels)
    calibrated = pl.calibrate_labels(features, labels)
    _sync(features.device)
    return {"labels": np.asarray(labels), "calibrated": np.asarray(calibrated)}


def timed(name: str, features: torch.Tensor, eps: float, k1: int, k2: int) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds of this process) of one run of a path, and its outputs."""
    _sync(features.device)
    start, cpu_start = time.perf_counter(), time.process_time()
    out = run_path(name, features, eps, k1, k2)
    return time.perf_counter() - start, time.process_time() - cpu_start, out


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class RssSampler(threading.Thread):
    """Background thread that records the highest resident set size seen every ``interval`` seconds."""

    def __init__(self, interval: float = 0.01):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = _rss_bytes()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, _rss_bytes())
        return self.peak


def measure_memory_worker(name: str, n: int, d: int, seed: int, eps: float, k1: int, k2: int, device: str) -> dict:
    """In this (fresh) process: peak RSS growth in bytes of one path over the resident features."""
    features, _ = synthetic_reid_features(n, d, seed=seed)
    features = features.to(device)
    if name != "ref":  # warm-up on a slice so imports and thread pools are not counted
        run_path(name, features[: min(n, 1000)], eps, k1, k2)
    else:
        import bench.official_reference  # noqa: F401
    gc.collect()
    try:  # reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        hwm_ok = True
    except OSError:
        hwm_ok = False
    before = _rss_bytes()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    gpu_before = torch.cuda.memory_allocated() if device.startswith("cuda") else 0
    sampler = RssSampler()
    sampler.start()
    run_path(name, features, eps, k1, k2)
    peak = sampler.stop()
    if hwm_ok:
        peak = max(peak, _hwm_bytes())
    gpu_peak = torch.cuda.max_memory_allocated() - gpu_before if device.startswith("cuda") else 0
    return {"rss_growth": peak - before, "gpu_growth": gpu_peak, "hwm": hwm_ok}


def measure_memory(
    name: str, n: int, d: int, seed: int, eps: float, k1: int, k2: int, device: str, threads: int
) -> dict:
    """Peak RSS growth of one path, measured in a fresh subprocess."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        name,
        "--n",
        str(n),
        "--d",
        str(d),
        "--seed",
        str(seed),
        "--eps",
        str(eps),
        "--k1",
        str(k1),
        "--k2",
        str(k2),
        "--device",
        device,
        "--threads",
        str(threads),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker {name} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label vectors describe the same clusters and outliers (up to renaming)."""
    return bool(np.array_equal(canonical_labels(a), canonical_labels(b)))


def bench_size(n: int, paths: list[str], args: argparse.Namespace) -> dict:
    """Time (and optionally measure memory of) the given paths at one N; returns a result record."""
    device = torch.device(args.device)
    features, _ = synthetic_reid_features(n, args.d, seed=args.seed)
    features = features.to(device)
    for name in paths:  # warm-up on a slice: first-call costs (imports, allocator, thread pools) are not timed
        if name != "ref":
            run_path(name, features[: min(n, 1000)], args.eps, args.k1, args.k2)
    rec: dict = {
        "n": n,
        "d": args.d,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "time_s": {},
        "cpu_s": {},
        "loadavg_before": os.getloadavg()[0],
    }
    outputs = {}
    for _ in range(args.repeats):  # interleaved, so a burst of load on a shared machine hits every path
        for name in paths:
            seconds, cpu_seconds, out = timed(name, features, args.eps, args.k1, args.k2)
            rec["time_s"][name] = min(seconds, rec["time_s"].get(name, float("inf")))
            rec["cpu_s"][name] = min(cpu_seconds, rec["cpu_s"].get(name, float("inf")))
            outputs[name] = out
            print(f"  N={n:6d} {name:4s} {seconds:8.2f} s wall {cpu_seconds:8.2f} s CPU", flush=True)
    rec["loadavg_after"] = os.getloadavg()[0]
    for name in paths:
        if name != "mm":
            rec[f"ratio_{name}"] = rec["time_s"][name] / rec["time_s"]["mm"]
            rec[f"cpu_ratio_{name}"] = rec["cpu_s"][name] / rec["cpu_s"]["mm"]
    first = next((p for p in paths if p != "mm"), None)
    if first is not None:
        labels = outputs[first]["labels"]
        rec["clusters"] = int(labels.max() + 1)
        rec["outliers"] = int((labels == -1).sum())
        for name in paths:
            if name not in ("mm", first):
                rec[f"labels_equal_{first}_{name}"] = same_partition(labels, outputs[name]["labels"])
                rec[f"calibrated_equal_{first}_{name}"] = same_partition(
                    outputs[first]["calibrated"], outputs[name]["calibrated"]
                )
    if args.memory:
        rec["rss_growth_gb"] = {}
        for name in paths:
            mem = measure_memory(name, n, args.d, args.seed, args.eps, args.k1, args.k2, args.device, args.threads)
            rec["rss_growth_gb"][name] = mem["rss_growth"] / 1e9
            if mem["gpu_growth"]:
                rec.setdefault("gpu_growth_gb", {})[name] = mem["gpu_growth"] / 1e9
            print(f"  N={n:6d} {name:4s} peak RSS growth {mem['rss_growth'] / 1e9:6.2f} GB", flush=True)
    return rec


def print_summary(records: list[dict]) -> None:
    """One table row per N: best wall times, ratios to X @ X.T (wall, and CPU time), memory, label checks."""
    print("\n     N     d  t_mm(s)  t_api/t_mm  t_fast/t_mm  t_ref/t_mm   (CPU-time ratios)    K   outl  load")
    for rec in records:
        walls = " ".join(
            f"{rec[f'ratio_{p}']:11.2f}" if f"ratio_{p}" in rec else f"{'-':>11s}" for p in ("api", "fast", "ref")
        )
        cpus = " ".join(
            f"{rec[f'cpu_ratio_{p}']:5.2f}" if f"cpu_ratio_{p}" in rec else f"{'-':>5s}" for p in ("api", "fast", "ref")
        )
        print(
            f"{rec['n']:6d} {rec['d']:5d} {rec['time_s']['mm']:8.2f} {walls}   ({cpus}) "
            f"{rec.get('clusters', 0):5d} {rec.get('outliers', 0):6d} "
            f"{rec['loadavg_before']:.1f}/{rec['loadavg_after']:.1f}"
        )
        mem = rec.get("rss_growth_gb", {})
        if mem:
            print("       peak RSS growth GB: " + ", ".join(f"{p} {v:.2f}" for p, v in mem.items()))
        for key, value in rec.items():
            if key.startswith(("labels_equal", "calibrated_equal")):
                print(f"       {key}: {value}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[11909, 22258], help="sizes timed for mm/api/fast")
    parser.add_argument("--ref-n", type=int, default=3000, help="size at which the loop reference runs (0: skip)")
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--eps", type=float, default=0.6)
    parser.add_argument("--k1", type=int, default=30)
    parser.add_argument("--k2", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="runs per path; the best time is kept")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the memory subprocesses")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--worker", choices=PATHS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda requested but no CUDA device is available", file=sys.stderr)
        return 1
    if min(args.n) < 2 * args.k1 or (args.ref_n and args.ref_n < 2 * args.k1):
        print(f"error: every N must be at least 2 * k1 = {2 * args.k1}", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)

    if args.worker is not None:
        mem = measure_memory_worker(args.worker, args.n[0], args.d, args.seed, args.eps, args.k1, args.k2, args.device)
        print(json.dumps(mem))
        return 0

    try:
        import rpnr.pseudo_labels  # noqa: F401
    except ImportError as err:
        print(f"error: rpnr.pseudo_labels is not importable ({err})", file=sys.stderr)
        return 1
    print(
        f"device {args.device}, torch threads {torch.get_num_threads()}, d {args.d}, eps {args.eps}, "
        f"k1 {args.k1}, k2 {args.k2}"
    )
    records = []
    if args.ref_n:
        records.append(bench_size(args.ref_n, ["mm", "api", "fast", "ref"], args))
    for n in args.n:
        records.append(bench_size(n, ["mm", "api", "fast"], args))
    print_summary(records)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
