"""CUDA paths against the CPU: the same library calls on both devices, compared number by number.

Run on a machine with a GPU (exit status 1 when a check fails):

    python bench/check_cuda.py            # N = 3,000 clustering features, 288x144 images

Checks: Jaccard distance, cluster_features, centres, NPC labels, OT matching (exact labels or
1e-4), one stage-2 step's loss terms, feature gradients and memories in an odd and an even epoch
(1e-4), eval embeddings in fp32 (1e-3 relative; TF32 convolutions), the bf16 train-mode forward
(finite, shapes), and uint8 feature extraction on the device. Issue 24: no host synchronisation
from the forward to the optimizer step (``torch.cuda.set_sync_debug_mode``), the vectorised CMhcl
update on the GPU against the per-class loop on the CPU (1e-5), a fused CUDA Adam state dict
loaded by a CPU Adam, the model still trainable after an extraction converted it to
channels_last; with --compile (or --only-compile, minutes: compilation) a torch.compile'd
model's stage-2 step against the eager one (float32, TF32 off: loss terms 1e-4 relative,
gradients 1e-3 of the largest one; a CPU dry run at 64x32: loss terms 1.4e-4, features 2e-4).

    python bench/check_cuda.py --only-compile     # the compile check alone
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_pseudo_labels import canonical_labels, synthetic_reid_features  # noqa: E402
from bench.bench_step import Clock, Setup, hcl_loop_update  # noqa: E402
from rpnr import pseudo_labels as pl  # noqa: E402
from rpnr.engine.settings import TrainConfig  # noqa: E402
from rpnr.evaluation import extract_features_uint8  # noqa: E402
from rpnr.matching import hybrid_centers, match_clusters  # noqa: E402
from rpnr.memory import ClusterMemory, _hcl_update  # noqa: E402
from rpnr.models import build_model  # noqa: E402
from rpnr.training import TERMS, TermInputs, objective, stage2_loss  # noqa: E402

RESULTS: list[tuple[str, bool, str]] = []


def record(name: str, ok: bool, detail: str) -> None:
    RESULTS.append((name, bool(ok), detail))
    print(f"{'PASS' if ok else 'FAIL'}  {name:<42} {detail}", flush=True)


def max_diff(a, b) -> float:
    a = torch.as_tensor(a).detach().double().cpu()
    b = torch.as_tensor(b).detach().double().cpu()
    return float((a - b).abs().max()) if a.numel() else 0.0


def check_pseudo_labels(n: int, cuda: torch.device) -> tuple[torch.Tensor, np.ndarray]:
    feats, _ = synthetic_reid_features(n, 2048, seed=0)  # [n, 2048]
    t = time.perf_counter()
    jac_cpu = pl.jaccard_distance(feats)
    t_cpu = time.perf_counter() - t
    if cuda.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    jac_gpu = pl.jaccard_distance(feats.to(cuda))
    t_gpu = time.perf_counter() - t
    diff = float(np.abs(jac_cpu - jac_gpu).max())
    record("jaccard_distance cuda == cpu", diff < 1e-4,
           f"max |diff| {diff:.2e} (cpu {t_cpu:.2f} s, cuda {t_gpu:.2f} s)")

    lab_cpu = pl.cluster_features(feats, 0.6)
    lab_gpu = pl.cluster_features(feats.to(cuda), 0.6)
    same = np.array_equal(canonical_labels(lab_cpu), canonical_labels(lab_gpu))
    record("cluster_features cuda == cpu", same, f"{lab_cpu.max() + 1} clusters, {(lab_cpu < 0).sum()} outliers")
    api = pl.dbscan(jac_gpu, 0.6)
    record("dbscan(jaccard) == cluster_features (cuda)",
           np.array_equal(canonical_labels(api), canonical_labels(lab_gpu)), "")

    c_cpu = pl.cluster_centers(feats, lab_cpu)
    c_gpu = pl.cluster_centers(feats.to(cuda), lab_cpu)
    d = max_diff(c_cpu, c_gpu)
    record("cluster_centers cuda == cpu", d < 1e-5 and c_gpu.device.type == cuda.type, f"max |diff| {d:.2e}")

    cal_cpu = pl.calibrate_labels(feats, lab_cpu)
    cal_gpu = pl.calibrate_labels(feats.to(cuda), lab_cpu)
    record("calibrate_labels cuda == cpu", np.array_equal(cal_cpu, cal_gpu),
           f"{int((cal_cpu != lab_cpu).sum())} samples relabelled")
    return feats, lab_cpu


def check_matching_and_step(feats: torch.Tensor, labels: np.ndarray, cuda: torch.device) -> None:
    half = feats.size(0) // 2
    centers = pl.cluster_centers(feats, labels)  # [K, d]
    c_rgb, c_ir = centers[: len(centers) // 2 + 3], centers[len(centers) // 2:]
    r2i_c, i2r_c = match_clusters(c_rgb, c_ir)
    r2i_g, i2r_g = match_clusters(c_rgb.to(cuda), c_ir.to(cuda))
    record("match_clusters cuda == cpu", np.array_equal(r2i_c, r2i_g) and np.array_equal(i2r_c, i2r_g),
           f"{len(c_rgb)} RGB / {len(c_ir)} IR clusters")
    hyb_c = hybrid_centers(c_rgb, c_ir, i2r_c)
    hyb_g = hybrid_centers(c_rgb.to(cuda), c_ir.to(cuda), i2r_g)

    g = torch.Generator().manual_seed(0)
    y_rgb = torch.randint(0, len(c_rgb), (32,), generator=g).repeat(2)  # [64]: two views
    y_ir = torch.randint(0, len(c_ir), (32,), generator=g)  # [32]
    f_rgb0 = feats[:64].clone()
    f_ir0 = feats[half:half + 32].clone()
    for epoch in (0, 1):
        out = {}
        for name, dev, hyb in (("cpu", torch.device("cpu"), hyb_c), ("cuda", cuda, hyb_g)):
            mems = {"rgb": ClusterMemory.from_centers(c_rgb.to(dev), 0.05, 0.1),
                    "ir": ClusterMemory.from_centers(c_ir.to(dev), 0.05, 0.1),
                    "hybrid": ClusterMemory.from_centers(hyb.to(dev), 0.05, 0.1)}
            f_rgb = f_rgb0.to(dev, copy=True).requires_grad_(True)  # fresh leaves on each device
            f_ir = f_ir0.to(dev, copy=True).requires_grad_(True)
            total, parts = stage2_loss(f_rgb, f_ir, y_rgb.to(dev), y_ir.to(dev), mems, r2i_c, i2r_c, epoch)
            total.backward()
            out[name] = (total.item(), parts, f_rgb.grad, f_ir.grad, {k: m.features for k, m in mems.items()})
        (t_c, p_c, gr_c, gi_c, m_c), (t_g, p_g, gr_g, gi_g, m_g) = out["cpu"], out["cuda"]
        d_parts = max(abs(p_c[k] - p_g[k]) for k in p_c)
        d_grad = max(max_diff(gr_c, gr_g), max_diff(gi_c, gi_g))
        d_mem = max(max_diff(m_c[k], m_g[k]) for k in m_c)
        ok = abs(t_c - t_g) < 1e-4 and d_parts < 1e-4 and d_grad < 1e-4 and d_mem < 1e-4
        record(f"stage2 step epoch {epoch} cuda == cpu", ok,
               f"loss {t_g:.5f} |dloss| {abs(t_c - t_g):.1e} |dgrad| {d_grad:.1e} |dmem| {d_mem:.1e}")


def check_model(cuda: torch.device, height: int, width: int) -> None:
    torch.manual_seed(0)
    model = build_model().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 3, height, width, generator=g) * 2 - 1  # [8, 3, H, W]
    with torch.inference_mode():
        e_cpu = model.embed(x, "infrared")
    model_g = model.to(cuda)  # outside inference mode: the weights are trained below
    c_cpu = e_cpu - e_cpu.mean(0)  # centred, as the acceptance compares
    tf32 = torch.backends.cudnn.allow_tf32
    for allow in (False, True):
        torch.backends.cudnn.allow_tf32 = allow
        with torch.inference_mode():
            e_gpu = model_g.embed(x.to(cuda), "infrared").cpu()
        c_gpu = e_gpu - e_gpu.mean(0)
        rel = float((c_cpu - c_gpu).norm() / c_cpu.norm())
        record(f"eval embedding cuda ~ cpu, cudnn tf32 {allow}", rel < 1e-3 or allow,
               f"relative diff after centring {rel:.1e}" + (" (information only)" if allow else ""))
    torch.backends.cudnn.allow_tf32 = tf32

    model_g.train()
    model_g = model_g.to(memory_format=torch.channels_last)
    x_rgb = torch.rand(16, 3, height, width, device=cuda).contiguous(memory_format=torch.channels_last)
    x_ir = torch.rand(8, 3, height, width, device=cuda).contiguous(memory_format=torch.channels_last)
    with torch.autocast(cuda.type, dtype=torch.bfloat16):
        f_rgb, f_ir = model_g(x_rgb, x_ir)
    ok = f_rgb.shape == (16, 2048) and f_ir.shape == (8, 2048) and bool(torch.isfinite(f_rgb).all())
    loss = f_rgb.float().pow(2).mean() + f_ir.float().pow(2).mean()
    loss.backward()
    grads_ok = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model_g.parameters())
    record("bf16 channels_last train forward/backward", ok and grads_ok, f"{tuple(f_rgb.shape)} {tuple(f_ir.shape)}")

    model_g.eval()
    imgs = np.random.default_rng(0).integers(0, 256, (20, height, width, 3), dtype=np.uint8)
    f_dev = extract_features_uint8(model_g, imgs, "visible", batch_size=8, normalize=False, device=cuda)
    model.to("cpu")
    f_host = extract_features_uint8(model, imgs, "visible", batch_size=8, normalize=False, device="cpu")
    rel = float((f_dev.cpu() - f_host).norm() / f_host.norm())
    record("extract_features_uint8 cuda ~ cpu", f_dev.device.type == cuda.type and rel < 1e-3,
           f"relative diff {rel:.1e}")


def time_extraction(device: torch.device, height: int, width: int, n: int = 2048) -> None:
    """Images per second of flip-averaged eval extraction: as the project runs it (strict fp32), and under
    bf16 autocast for comparison. (TF32 is not timed: the extraction switches it off itself.)"""
    if device.type != "cuda":
        return
    torch.manual_seed(0)
    model = build_model().to(device).eval().to(memory_format=torch.channels_last)
    imgs = np.random.default_rng(0).integers(0, 256, (n, height, width, 3), dtype=np.uint8)
    for label, amp in (("fp32", False), ("bf16", True)):
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        with ctx:
            extract_features_uint8(model, imgs[:256], "visible", batch_size=256, normalize=False, device=device)
            torch.cuda.synchronize()
            t = time.perf_counter()
            extract_features_uint8(model, imgs, "visible", batch_size=256, normalize=False, device=device)
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        print(f"INFO  extraction {label}: {n / dt:.0f} img/s (flip-averaged, {height}x{width})", flush=True)


def _step_args(cuda: torch.device, height: int, width: int, **kw) -> argparse.Namespace:
    """bench/bench_step.py's options for a small stage-2 iteration on ``cuda``."""
    return argparse.Namespace(**{"device": str(cuda), "height": height, "width": width, "ir": 32, "rgb": 16,
                                 "num_instances": 4, "k_rgb": 60, "k_ir": 50, "bn_splits": 2, "amp": True, **kw})


def check_step_speed_parts(cuda: torch.device, height: int, width: int) -> None:
    """Issue 24: no host synchronisation from the forward to the optimizer step; the vectorised CMhcl update
    against the per-class loop; fused Adam's state dict across devices; extraction's in-place channels_last."""
    setup = Setup(_step_args(cuda, height, width))
    setup.parts(Clock(cuda), 1)  # warm-up: cuDNN autotuning, Adam's state
    if cuda.type == "cuda":
        x_rgb, x_ir = setup.augment()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            setup.train(x_rgb, x_ir, Clock(cuda), 2)
            ok, detail = True, "forward, objective, backward (memory updates), fused Adam: none"
        except RuntimeError as exc:
            ok, detail = False, str(exc).splitlines()[0][:150]
        finally:
            torch.cuda.set_sync_debug_mode(0)
        record("no host sync from forward to optimizer", ok, detail)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                setup.step(3)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        print(f"INFO  train_step: {len(syncs)} synchronising call(s) per iteration (augmentation's draws to the "
              f"device: rpnr/data/augment.py)", flush=True)

    g = torch.Generator().manual_seed(4)
    k, d = 400, 2048
    features = torch.nn.functional.normalize(torch.randn(2 * k, d, generator=g), dim=1)
    inputs = torch.nn.functional.normalize(torch.randn(256, d, generator=g), dim=1)
    targets = torch.randperm(k, generator=g)[:16].repeat_interleave(16)[torch.randperm(256, generator=g)]
    want = features.clone()
    hcl_loop_update(inputs, targets, want, 0.1)
    got = features.to(cuda)
    _hcl_update(inputs.to(cuda), targets.to(cuda), got, 0.1)
    diff = max_diff(got, want)
    record("vectorised CMhcl update (device) == loop (cpu)", diff < 1e-5, f"K {k}, B 256, max |diff| {diff:.1e}")

    params = [torch.nn.Parameter(torch.randn(64, 32, generator=g).to(cuda))]
    fused = torch.optim.Adam(params, lr=1e-2, weight_decay=5e-4, fused=True)
    grads = [torch.randn(64, 32, generator=g) for _ in range(5)]
    for grad in grads[:3]:
        params[0].grad = grad.to(cuda)
        fused.step()
    on_cpu = [torch.nn.Parameter(params[0].detach().cpu())]
    plain = torch.optim.Adam(on_cpu, lr=1e-2, weight_decay=5e-4)
    plain.load_state_dict(fused.state_dict())
    plain.param_groups[0]["fused"] = None  # the CPU's default implementation from here on
    for grad in grads[3:]:
        params[0].grad, on_cpu[0].grad = grad.to(cuda), grad.clone()
        fused.step()
        plain.step()
    diff = max_diff(params[0], on_cpu[0])
    record("fused Adam state (device) loads into CPU Adam", diff < 1e-5, f"max |diff| after 2 more steps {diff:.1e}")

    torch.manual_seed(0)
    net = build_model().to(cuda)  # contiguous (NCHW) weights, as test.py's models
    imgs = np.random.default_rng(1).integers(0, 256, (10, height, width, 3), dtype=np.uint8)
    extract_features_uint8(net, imgs, "infrared", batch_size=4)
    stem = net.infrared_stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    net.train()
    f_rgb, f_ir = net(torch.rand(4, 3, height, width, device=cuda), torch.rand(4, 3, height, width, device=cuda))
    (f_rgb.sum() + f_ir.sum()).backward()  # inference tensors would refuse this
    record("model trainable after extraction", all(p.grad is not None for p in net.parameters() if p.requires_grad)
           and stem == (cuda.type == "cuda"), f"train forward/backward after extract_features_uint8 (weights "
           f"channels_last: {stem})")


def check_compile(cuda: torch.device, height: int, width: int) -> None:
    """A torch.compile'd model (``--compile``) against the eager one: one stage-2 step's loss terms, features and
    gradients in float32 with TF32 off (1e-4 relative for the loss terms); the step's time after compilation."""
    torch.manual_seed(0)
    eager = build_model(bn_splits=2).to(cuda).train()
    if cuda.type == "cuda":
        eager = eager.to(memory_format=torch.channels_last)
    compiled = copy.deepcopy(eager)
    compiled.compile()
    g = torch.Generator().manual_seed(5)
    x_rgb, x_ir = (torch.rand(n, 3, height, width, generator=g).mul(2).sub(1).to(cuda) for n in (32, 16))
    y = torch.arange(4).repeat_interleave(4)
    y_rgb, y_ir = torch.cat((y, y)).to(cuda), torch.arange(4).repeat_interleave(4).to(cuda)
    centers = torch.randn(6, 2048, generator=g)
    r2i, i2r = np.array([1, 0, 3, 2, 5, 4]), np.array([1, 0, 3, 2, 5, 4])
    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    out = {}
    try:
        for name, model in (("eager", eager), ("compiled", compiled)):
            seconds = []
            for _ in range(3):  # the compiled model compiles in the first
                mems = {k: ClusterMemory.from_centers(centers.to(cuda), 0.05, 0.1) for k in ("rgb", "ir", "hybrid")}
                model.zero_grad(set_to_none=True)
                if cuda.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                f_rgb, f_ir = model(x_rgb, x_ir)
                settings = TrainConfig(dataset="sysu", stage="rpnr", data_dir="")
                x = TermInputs(f_rgb.float(), f_ir.float(), y_rgb, y_ir, mems, r2i, i2r, 1, settings)
                total, parts = objective(x, list(TERMS))
                total.backward()
                if cuda.type == "cuda":
                    torch.cuda.synchronize()
                seconds.append(time.perf_counter() - t)
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            out[name] = ({k: v.item() for k, v in parts.items()}, f_rgb.detach(), grads, seconds)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    (p_e, f_e, g_e, t_e), (p_c, f_c, g_c, t_c) = out["eager"], out["compiled"]
    d_parts = max(abs(p_e[k] - p_c[k]) / max(abs(p_e[k]), 1e-12) for k in p_e)
    d_feat = float((f_e - f_c).norm() / f_e.norm())
    top = max(float(g.abs().max()) for g in g_e.values())  # gradients against the largest one (some are noise)
    d_grad = max(float((g_e[n] - g_c[n]).abs().max()) for n in g_e) / top if g_e.keys() == g_c.keys() else math.inf
    record("compiled stage-2 step == eager", d_parts < 1e-4 and d_grad < 1e-3,
           f"loss terms rel {d_parts:.1e}, features rel {d_feat:.1e}, gradients {d_grad:.1e} of the largest")
    print(f"INFO  compile: first call {t_c[0]:.1f} s; step after it {min(t_c[1:]):.3f} s compiled, "
          f"{min(t_e[1:]):.3f} s eager (float32, 32 + 16 images)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="clustering features")
    parser.add_argument("--height", type=int, default=288)
    parser.add_argument("--width", type=int, default=144)
    parser.add_argument("--device", default="cuda", help="device compared with the CPU ('cpu': a dry run)")
    parser.add_argument("--compile", action="store_true", help="also check a torch.compile'd step (minutes)")
    parser.add_argument("--only-compile", action="store_true", help="only the torch.compile check")
    args = parser.parse_args(argv)
    cuda = torch.device(args.device)
    if cuda.type == "cuda" and not torch.cuda.is_available():
        print("check_cuda.py: no CUDA device", file=sys.stderr)
        return 1
    name = torch.cuda.get_device_name(cuda) if cuda.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    if not args.only_compile:
        feats, labels = check_pseudo_labels(args.n, cuda)
        check_matching_and_step(feats, labels, cuda)
        check_model(cuda, args.height, args.width)
        check_step_speed_parts(cuda, args.height, args.width)
        time_extraction(cuda, args.height, args.width)
    if args.compile or args.only_compile:
        check_compile(cuda, args.height, args.width)
    failed = [name for name, ok, _ in RESULTS if not ok]
    print(f"{len(RESULTS) - len(failed)}/{len(RESULTS)} checks passed" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
