"""One device run answers everything about the GPU path: correctness against the CPU
path for every kernel, then timings beside the PyTorch peer on the same card.

    python benchmarks/gpu_check.py                 # on a machine with a GPU (CuPy + torch)
    python benchmarks/gpu_check.py --cpu-dry-run   # the harness on the CPU, small sizes

Sections (each in its own try/except: an error is printed and recorded, the run goes on):

render    ACR forward + backward kernels vs the numpy op (float32 and float64), NaN poses
fused     render -> maxSemiSoft -> squared error, one kernel, vs the autodiff graph on
          the CPU; timed (B=500, 9 ACs, 11x11 -> 28x28) against torch affine_grid +
          grid_sample (TF32 off), which must agree with ours too
rbm       PCD/FPCD update 784x500, batch 100: kernels vs the array reference with the
          same uniforms, in-kernel Philox vs its numpy reference, CUDA-graph replay vs
          eager; timed eager and as a graph against torch eager and torch CUDA graph
logz      exact log Z: vs the CPU (784x16), then 784x25 timed (float32 and float64
          softplus) against a chunked torch enumeration
ais       AIS on the GPU vs the exact log Z of a small RBM; timed (and as graphs)
train     the capsule training step: mnist-thesis (MNIST from a local copy, else stand-in
          images), one batch's loss and gradients on the GPU vs the CPU (same seed,
          float32, rel err <= 1e-3 over all gradients), then 10 s of GPU training steps
          issued from Python and 10 s replaying the step as a CUDA graph (images/s)
          beside 2 CPU steps (~50 s in all, CuPy's first-use kernel compiles included)
rbm_estimator  BinaryRBM(500, fpcd, device="gpu") with the fused update: graph replay vs
          eager launches, finite parameters, updates/s beside the CPU estimator (~10 s)
train_graph    14 mnist-thesis steps replayed as a CUDA graph beside two eager runs from
          the same seed: no further from the eager run than the eager runs are from
          each other (10x), in the parameters and in the loss a check reads; then on to
          step 104: recorded once, every step but the rule-counting one (100) replayed
train_follow   20 mnist-thesis training steps on the GPU and on the CPU with the same
          random numbers (lab.backend.HostRandomStream): the GPU drifts from the CPU run
          no faster than a CPU run started 1e-7 off (~20 s)

The run stops starting sections after ``--max-seconds`` (default 270) and rewrites the
JSON after every section (also into ``$OUT`` when that folder exists, as on the device
machine), so a run cut short still leaves its results.

Timings are medians over batches of calls after warm-up, with device synchronisation.
The table is printed last; the JSON goes to ``benchmarks/results/gpu_<card>.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

TOL = 1e-4          # the bar: float32 relative error of forwards and gradients


# -- small helpers -------------------------------------------------------------------
def rel_err(a, b) -> float:
    """``||a - b|| / ||b||`` over finite entries (numpy arrays), 0 when both are 0."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    den = float(np.linalg.norm(b))
    num = float(np.linalg.norm(a - b))
    return num / den if den else num


def record(res, section, name, err, tol=TOL):
    ok = bool(np.isfinite(err) and err <= tol)
    res["checks"].setdefault(section, {})[name] = {"rel_err": float(err), "tol": tol, "ok": ok}
    print(f"  check {section}/{name}: rel err {err:.3g} (tol {tol:g}) {'ok' if ok else 'FAIL'}", flush=True)
    return ok


def timed(fn, sync, inner=10, outer=7, warmup=2) -> float:
    """Median milliseconds per call over ``outer`` batches of ``inner`` calls."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(outer):
        sync()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        times.append((time.perf_counter() - t0) / inner * 1e3)
    return statistics.median(times)


def no_peer(res, section):
    res["errors"][f"{section}/peer"] = "torch is not installed: peer skipped"
    print("  torch is not installed: peer skipped", flush=True)


def put_time(res, case, who, ms, **extra):
    res["timings"].setdefault(case, {})[who] = dict(ms=float(ms), **extra)
    print(f"  time {case} / {who}: {ms:.4g} ms", flush=True)


class Ctx:
    """What the sections share: array module, torch and its device, sizes."""

    def __init__(self, dry: bool):
        self.dry = dry
        try:
            import torch  # noqa: PLC0415
        except ImportError:
            torch = None             # the checks go on without the peer (recorded)
        self.torch = torch
        if torch is not None:
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        if dry:
            self.cp = None
            self.tdev = "cpu"
            self.tsync = lambda: None
        else:
            import cupy  # noqa: PLC0415
            self.cp = cupy
            self.tdev = "cuda"
            self.tsync = torch.cuda.synchronize if torch is not None else (lambda: None)
        self.sync = (lambda: self.cp.cuda.get_current_stream().synchronize()) if self.cp else (lambda: None)
        # sizes: the cases on the device, small ones in the dry run
        self.render = dict(B=500, K=9, T=11, H=28) if not dry else dict(B=6, K=3, T=5, H=8)
        self.rbm = dict(nv=784, nh=500, n=100) if not dry else dict(nv=20, nh=10, n=8)
        self.logz_small = (784, 16) if not dry else (20, 8)
        self.logz_big = (784, 25) if not dry else (20, 10)
        self.inner = 20 if not dry else 2
        self.outer = 7 if not dry else 2
        # the training step: (config name, overrides); seconds of timed GPU steps
        self.train_config = ("mnist-thesis", {}) if not dry else (
            "mnist-quick", dict(batch_size=8, encoder_hidden=16, decoder_hidden=8, n_components=3,
                                n_acs=2, template_size=5, n_distortions=2))
        self.train_seconds = 10.0 if not dry else 0.0
        self.train_images = 2000 if not dry else 32
        self.cpu_train_steps = 2 if not dry else 1
        self.follow_steps = 20 if not dry else 2
        self.follow_sync_every = 1       # train_follow's GPU trainer: host read every step
        self.graph_steps = 14 if not dry else 13     # train_graph: past the check at step 10
        self.rbm_estimator = (dict(nh=500, n=5000, cpu_updates=50, gpu_updates=400) if not dry
                              else dict(nh=10, n=300, cpu_updates=3, gpu_updates=3))


# -- render ------------------------------------------------------------------------------
def torch_render_step(p, torch, device, grads=True):
    """The PyTorch peer (``bench_render.torch_render``, the CPU benchmark's peer, on any
    device): returns the loss, the image and the leaf tensors (their .grad hold the
    gradients)."""
    from bench_render import torch_render  # noqa: PLC0415 (benchmarks/ is on sys.path)
    loss, image, _, leaves = torch_render(p, torch, device, grads)
    return loss, image, leaves


def render_problem(ctx, seed=0):
    from bench_render import make_problem  # noqa: PLC0415
    r = ctx.render
    return make_problem(r["B"], r["K"], r["T"], r["H"], seed=seed, poses="parts")


def section_render(ctx, res):
    """The ACR op's kernels against the numpy op, float32 and float64."""
    import lab.autodiff as ad  # noqa: PLC0415
    from lab.graphics.acr import render_templates  # noqa: PLC0415
    from lab.gpu import render as gr  # noqa: PLC0415
    p = render_problem(ctx, seed=1)
    rng = np.random.default_rng(2)
    for dt, tol in ((np.float32, TOL), (np.float64, 1e-10)):
        ins = [p[k].astype(dt) for k in ("templates", "matrices", "intensity")]
        gy = rng.standard_normal((p["intensity"].shape + p["size"])).astype(dt)
        xs = [ad.Tensor(a, requires_grad=True) for a in ins]
        y = render_templates(*xs, p["size"])
        y.backward(gy)
        cpu = [y.data] + [x.grad for x in xs]
        if ctx.dry:
            res["checks"].setdefault("render", {})["skipped"] = "dry run: CPU side only"
            return
        cp = ctx.cp
        d = [cp.asarray(a) for a in ins]
        yg = gr.render_forward(*d, p["size"])
        gt, gm, gi = gr.render_backward(*d, cp.asarray(gy))
        name = np.dtype(dt).name
        record(res, "render", f"forward_{name}", rel_err(yg.get(), cpu[0]), tol)
        record(res, "render", f"g_templates_{name}", rel_err(gt.get(), cpu[1]), tol)
        record(res, "render", f"g_matrices_{name}", rel_err(gm.get(), cpu[2]), tol)
        record(res, "render", f"g_intensity_{name}", rel_err(gi.get(), cpu[3]), tol)
        # through the autodiff engine (Function.forward_gpu/backward_gpu)
        xg = [ad.Tensor(a, requires_grad=True) for a in d]
        yy = render_templates(*xg, p["size"])
        yy.backward(cp.asarray(gy))
        record(res, "render", f"autodiff_g_matrices_{name}", rel_err(xg[1].grad.get(), cpu[2]), tol)
    # a non-finite pose renders NaN on its canvas only
    m = p["matrices"].copy()
    m[0, 1, 0, 2] = np.nan
    yn = gr.render_forward(ctx.cp.asarray(p["templates"]), ctx.cp.asarray(m),
                           ctx.cp.asarray(p["intensity"]), p["size"]).get()
    ok = bool(np.isnan(yn[0, 1]).all() and np.isfinite(np.delete(yn.reshape(-1, *yn.shape[2:]), 1, 0)).all())
    record(res, "render", "nan_pose", 0.0 if ok else 1.0, 0.5)


def section_fused(ctx, res):
    """Fused render+maxSemiSoft+SE vs the CPU graph and the torch peer; timings."""
    from lab.gpu import render as gr  # noqa: PLC0415
    torch = ctx.torch
    p = render_problem(ctx, seed=0)
    ins = [p[k] for k in ("templates", "matrices", "intensity")]
    ref = gr.render_mss_se_reference(*ins, p["target"])          # numpy, float32
    names = ("loss", "image", "g_templates", "g_matrices", "g_intensity")
    nimg = p["target"].shape[0]
    if torch is None:
        no_peer(res, "fused")
    else:
        loss_t, image_t, leaves = torch_render_step(p, torch, ctx.tdev)
        peer = [loss_t.item(), image_t.detach().cpu().numpy()] + [x.grad.cpu().numpy() for x in leaves]
        # the peer computes the same function (kinks aside: see bench_render.check_agreement)
        for k, a, b in zip(names, peer, ref):
            record(res, "fused", f"torch_vs_cpu_{k}", rel_err(a, b), 2e-3 if k.startswith("g_") else TOL)
        # the peer's leaves are made inside the step, as a training loop would per batch
        ms = timed(lambda: torch_render_step(p, torch, ctx.tdev), ctx.tsync, inner=ctx.inner, outer=ctx.outer)
        put_time(res, "render_fwd_bwd", "torch", ms, images_per_s=nimg / ms * 1e3,
                 device=ctx.tdev, note="affine_grid+grid_sample, TF32 off")
    if ctx.dry:
        return
    cp = ctx.cp
    d = [cp.asarray(a) for a in ins]
    tgt = cp.asarray(p["target"])
    loss, image, gt, gm, gi = gr.render_mss_se(*d, tgt, want_image=True)
    ours = [float(loss.get()), image.get(), gt.get(), gm.get(), gi.get()]
    for k, a, b in zip(names, ours, ref):
        record(res, "fused", f"gpu_vs_cpu_{k}", rel_err(a, b))
    ms = timed(lambda: gr.render_mss_se(*d, tgt), ctx.sync, inner=ctx.inner, outer=ctx.outer)
    put_time(res, "render_fwd_bwd", "ours_fused", ms, images_per_s=nimg / ms * 1e3)

    # the unfused GPU path: the op's kernels inside the autodiff graph
    import lab.autodiff as ad  # noqa: PLC0415
    from lab.graphics.acr import render_templates  # noqa: PLC0415
    from lab.graphics.om import max_semi_soft  # noqa: PLC0415

    def unfused():
        xs = [ad.Tensor(a, requires_grad=True) for a in d]
        img = max_semi_soft(render_templates(*xs, p["size"]), axis=1)
        ad.sum(ad.square(img - tgt)).backward()
    try:
        ms = timed(unfused, ctx.sync, inner=max(2, ctx.inner // 4), outer=ctx.outer)
        put_time(res, "render_fwd_bwd", "ours_autodiff_graph", ms, images_per_s=nimg / ms * 1e3)
    except Exception as exc:  # the op graph's other ops may not all run on CuPy
        print(f"  unfused autodiff path failed: {type(exc).__name__}: {exc}")
        res["errors"]["fused/autodiff_graph"] = f"{type(exc).__name__}: {exc}"


# -- RBM -----------------------------------------------------------------------------------
def rbm_problem(ctx, seed=0):
    r = ctx.rbm
    rng = np.random.default_rng(seed)
    nv, nh, n = r["nv"], r["nh"], r["n"]
    return dict(W=(rng.standard_normal((nh, nv)) * 0.05).astype(np.float32),
                b=(rng.standard_normal(nv) * 0.5).astype(np.float32),
                c=(rng.standard_normal(nh) * 0.5).astype(np.float32),
                fast=tuple((rng.standard_normal(s) * 0.01).astype(np.float32) for s in ((nh, nv), (nv,), (nh,))),
                particles=(rng.random((n, nv)) < 0.3).astype(np.float32),
                v=(rng.random((n, nv)) < 0.3).astype(np.float32),
                rates=dict(lr=0.01, fast_lr=0.01, fast_decay=19 / 20, weight_decay=1e-4))


def torch_fpcd(ctx, q):
    """The PyTorch peer of one FPCD update (same arithmetic, torch.rand uniforms)."""
    torch = ctx.torch
    dev = ctx.tdev
    S = {k: torch.as_tensor(q[k], device=dev).clone() for k in ("W", "b", "c", "particles", "v")}
    S["fW"], S["fb"], S["fc"] = (torch.as_tensor(a, device=dev).clone() for a in q["fast"])
    r = q["rates"]
    n, m = S["v"].shape[0], S["particles"].shape[0]

    def step():
        W, b, c, fW, fb, fc, part, v = (S[k] for k in ("W", "b", "c", "fW", "fb", "fc", "particles", "v"))
        Wn, bn, cn = W + fW, b + fb, c + fc
        hp = torch.sigmoid(torch.addmm(c, v, W.t()))
        hn = torch.sigmoid(torch.addmm(cn, part, Wn.t()))
        hs = (torch.rand_like(hn) < hn).float()
        pv = torch.sigmoid(torch.addmm(bn, hs, Wn))
        vn = (torch.rand_like(pv) < pv).float()
        gW = hp.t() @ v / n - hn.t() @ part / m
        gb = v.mean(0) - part.mean(0)
        gc = hp.mean(0) - hn.mean(0)
        for f, g in ((fW, gW), (fb, gb), (fc, gc)):
            f.mul_(r["fast_decay"]).add_(g, alpha=r["fast_lr"])
        W.add_(gW - r["weight_decay"] * W, alpha=r["lr"])
        b.add_(gb, alpha=r["lr"])
        c.add_(gc, alpha=r["lr"])
        part.copy_(vn)
    return S, step


def section_rbm(ctx, res):
    q = rbm_problem(ctx)
    if ctx.torch is None:
        no_peer(res, "rbm")
    else:
        torch_fpcd_timings(ctx, res, q)
    _rbm_ours(ctx, res, q)


def torch_fpcd_timings(ctx, res, q):
    S, tstep = torch_fpcd(ctx, q)
    with ctx.torch.no_grad():
        ms = timed(tstep, ctx.tsync, inner=ctx.inner, outer=ctx.outer)
        put_time(res, "fpcd_update", "torch_eager", ms, updates_per_s=1e3 / ms, device=ctx.tdev)
        if not ctx.dry:
            torch = ctx.torch
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    tstep()
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                tstep()
            ms = timed(g.replay, ctx.tsync, inner=10 * ctx.inner, outer=ctx.outer)
            put_time(res, "fpcd_update", "torch_cuda_graph", ms, updates_per_s=1e3 / ms)


def _rbm_ours(ctx, res, q):
    from lab.undirected.gpu_update import PersistentUpdateGPU, reference_update  # noqa: PLC0415
    r = q["rates"]
    # the array reference on the CPU (one update), as the dry run's exercise
    rng = np.random.default_rng(5)
    nh, nv = q["W"].shape
    m = q["particles"].shape[0]
    u_h, u_v = rng.random((m, nh), dtype=np.float32), rng.random((m, nv), dtype=np.float32)
    cpu = reference_update(q["W"], q["b"], q["c"], q["particles"], q["v"], u_h, u_v, fast=q["fast"], **r)
    if ctx.dry:
        return
    cp = ctx.cp

    def make():
        return PersistentUpdateGPU(q["W"], q["b"], q["c"], q["particles"], q["v"].shape[0], fast=q["fast"],
                                   seed=1234, fast_decay=r["fast_decay"], weight_decay=r["weight_decay"])

    # 1. explicit uniforms: kernels vs the reference (samples may flip only at near-ties)
    up = make()
    up.step(cp.asarray(q["v"]), lr=r["lr"], fast_lr=r["fast_lr"], u_h=u_h, u_v=u_v)
    flips = int((up.particles.get() != cpu[3]).sum())
    record(res, "rbm", "particle_flips_explicit_u", float(flips), 0.0 if flips == 0 else 2.0)
    for k, a, b in (("W", up.W, cpu[0]), ("b", up.b, cpu[1]), ("c", up.c, cpu[2]),
                    ("fast_W", up.fast[0], cpu[4][0]), ("fast_b", up.fast[1], cpu[4][1]),
                    ("fast_c", up.fast[2], cpu[4][2])):
        record(res, "rbm", f"update_{k}", rel_err(a.get(), b))
    # the update itself (W_new - W_old) is the sensitive part: compare it too
    record(res, "rbm", "update_delta_W", rel_err(up.W.get() - q["W"], cpu[0] - q["W"]), 1e-3)
    # 2. in-kernel Philox == its numpy reference: same results bit for bit
    a, b_ = make(), make()
    uh, uv = a.uniforms(0)
    a.step(cp.asarray(q["v"]), lr=r["lr"], fast_lr=r["fast_lr"])
    b_.step(cp.asarray(q["v"]), lr=r["lr"], fast_lr=r["fast_lr"], u_h=uh, u_v=uv)
    same = bool((a.P == b_.P).all()) and bool((a.V == b_.V).all())
    record(res, "rbm", "philox_in_kernel_equals_numpy", 0.0 if same else 1.0, 0.5)
    # 3. a captured graph replays the eager update exactly (and draws fresh numbers)
    e, gph = make(), make()
    gph.capture()
    for _ in range(3):
        e.step(cp.asarray(q["v"]), lr=r["lr"], fast_lr=r["fast_lr"])
        gph.step(cp.asarray(q["v"]), lr=r["lr"], fast_lr=r["fast_lr"])
    same = bool((e.P == gph.P).all()) and bool((e.V == gph.V).all()) and int(gph.step_counter.get()[0]) == 3
    record(res, "rbm", "graph_equals_eager", 0.0 if same else 1.0, 0.5)
    # timings
    v = cp.asarray(q["v"])
    t = make()
    t.load_batch(v)
    t.set_rates(r["lr"], r["fast_lr"])
    ms = timed(t.step, ctx.sync, inner=ctx.inner, outer=ctx.outer)
    put_time(res, "fpcd_update", "ours_eager", ms, updates_per_s=1e3 / ms)
    t.capture()
    ms = timed(t.step, ctx.sync, inner=10 * ctx.inner, outer=ctx.outer)
    put_time(res, "fpcd_update", "ours_cuda_graph", ms, updates_per_s=1e3 / ms)


# -- log Z -----------------------------------------------------------------------------------
def logz_model(nv, nh, seed=0):
    rng = np.random.default_rng(seed)
    return ((rng.standard_normal((nh, nv)) * 0.1).astype(np.float32),
            (rng.standard_normal(nv) * 0.5 - 1).astype(np.float32),
            (rng.standard_normal(nh) * 0.5).astype(np.float32))


def torch_log_z(ctx, W, b, c, chunk_bits=14):
    """The PyTorch peer: enumerate hidden states in chunks, softplus sums, logsumexp (float32
    softplus, float64 logsumexp of the per-state terms)."""
    torch = ctx.torch
    dev = ctx.tdev
    Wt = torch.as_tensor(W, device=dev)
    bt = torch.as_tensor(b, device=dev)
    ct = torch.as_tensor(c, device=dev)
    nh = Wt.shape[0]
    bits = torch.arange(nh, device=dev)
    parts = []
    step = 1 << min(nh, chunk_bits)
    for s0 in range(0, 1 << nh, step):
        idx = torch.arange(s0, s0 + step, device=dev)
        S = ((idx[:, None] >> bits[None, :]) & 1).float()
        L = (S @ ct).double() + torch.nn.functional.softplus(S @ Wt + bt).sum(1, dtype=torch.float64)
        parts.append(torch.logsumexp(L, 0))
    return float(torch.logsumexp(torch.stack(parts), 0))


def section_logz(ctx, res):
    from lab.undirected.partition import rbm_log_partition  # noqa: PLC0415
    nv, nh = ctx.logz_small
    W, b, c = logz_model(nv, nh)
    t0 = time.perf_counter()
    exact = rbm_log_partition(W, b, c)
    cpu_s = time.perf_counter() - t0
    exact64 = rbm_log_partition(W, b, c, method="direct")     # float64 throughout
    res["timings"].setdefault("log_z_small", {})["cpu_split"] = dict(s=cpu_s, shape=[nv, nh])
    nvb, nhb = ctx.logz_big
    Wb, bb, cb = logz_model(nvb, nhb, seed=1)
    peer_big = None
    if ctx.torch is None:
        no_peer(res, "logz")
    else:
        peer = torch_log_z(ctx, W, b, c)
        record(res, "logz", f"torch_vs_cpu_{nv}x{nh}", abs(peer - exact) / abs(exact), 1e-6)
        torch_log_z(ctx, *logz_model(nvb, 8))              # warm-up
        ctx.tsync()
        t0 = time.perf_counter()
        peer_big = torch_log_z(ctx, Wb, bb, cb)
        ctx.tsync()
        put_time(res, "log_z_784x25" if not ctx.dry else "log_z_big", "torch",
                 (time.perf_counter() - t0) * 1e3, value=peer_big)
    if ctx.dry:
        return
    from lab.undirected.gpu_update import log_partition_gpu  # noqa: PLC0415
    for dt in (np.float32, np.float64):
        got = log_partition_gpu(W, b, c, dtype=dt)
        record(res, "logz", f"gpu_{np.dtype(dt).name}_vs_cpu_{nv}x{nh}_abs",
               abs(got - exact64), 1e-3 if dt == np.float32 else 1e-8)
    for dt in (np.float32, np.float64):
        log_partition_gpu(Wb, bb, cb, dtype=dt)            # warm-up (compiles)
        ctx.sync()
        t0 = time.perf_counter()
        val = log_partition_gpu(Wb, bb, cb, dtype=dt)
        ctx.sync()
        put_time(res, "log_z_784x25", f"ours_{np.dtype(dt).name}", (time.perf_counter() - t0) * 1e3, value=val)
        if peer_big is not None:
            record(res, "logz", f"gpu_{np.dtype(dt).name}_vs_torch_784x25_abs", abs(val - peer_big), 1e-2)


def section_ais(ctx, res):
    from lab.undirected.ais import ais_log_partition, quick_betas  # noqa: PLC0415
    from lab.undirected.partition import rbm_log_partition  # noqa: PLC0415
    nv, nh = (784, 12) if not ctx.dry else (20, 6)
    W, b, c = logz_model(nv, nh, seed=3)
    exact = rbm_log_partition(W, b, c)
    rng = np.random.default_rng(0)
    base = np.clip(rng.random(nv) * 0.3, 0.01, 0.99)
    betas = quick_betas(2000 if not ctx.dry else 50)
    cpu = ais_log_partition(W, b, c, base, n_runs=100 if not ctx.dry else 10, betas=betas, random_state=0)
    res["timings"].setdefault("ais", {})["cpu"] = dict(s=cpu.seconds, log_z=cpu.log_z, exact=exact)
    if ctx.dry:
        return
    from lab.undirected.gpu_update import ais_log_partition_gpu  # noqa: PLC0415
    for graph in (False, True):
        got = ais_log_partition_gpu(W, b, c, base, n_runs=1000, betas=betas, seed=7, graph=graph)
        record(res, "ais", f"gpu_graph{int(graph)}_abs_err_vs_exact", abs(got.log_z - exact), 0.1)
        put_time(res, "ais_1000runs_2000betas", f"ours_graph{int(graph)}", got.seconds * 1e3, log_z=got.log_z)


# -- the capsule training step and the RBM estimator --------------------------------------------
def stand_in_images(n, size=28, seed=0):
    """MNIST-like stand-ins when MNIST is absent: 2-4 soft strokes (blobs) per image in [0, 1]."""
    rng = np.random.default_rng(seed)
    r = np.arange(size, dtype=np.float32)
    out = np.zeros((n, size, size), np.float32)
    margin = min(7.0, size / 4)
    for _ in range(4):
        c = rng.uniform(margin, size - margin, (n, 2, 1, 1)).astype(np.float32)
        w = rng.uniform(2.0, 6.0, (n, 1, 1)).astype(np.float32)
        on = (rng.random((n, 1, 1)) < 0.8).astype(np.float32)
        d2 = (r[None, :, None] - c[:, 0]) ** 2 + (r[None, None, :] - c[:, 1]) ** 2
        out = np.maximum(out, on * np.exp(-d2 / (2 * w)))
    return out


def mnist_or_stand_in(n, seed=0):
    """(images float32 (n, 28, 28) in [0, 1], source): MNIST's training images from a local
    copy (``LAB_DATA_DIR`` or the cache; never a download: the device has no network),
    else stand-ins."""
    try:
        from lab.data.mnist import load_mnist  # noqa: PLC0415
        x, _ = load_mnist("train", download=False)
        return (np.asarray(x[:n], np.float32) / 255.0), "mnist"
    except Exception as exc:  # noqa: BLE001  (absent or unreadable: stand-ins will do)
        return stand_in_images(n, seed=seed), f"stand-in ({type(exc).__name__})"


def _flat_grads(params):
    from lab.backend import to_numpy  # noqa: PLC0415
    return {k: to_numpy(p.grad).astype(np.float64) for k, p in params.items() if p.grad is not None}


def section_train(ctx, res):
    """mnist-thesis (or ctx.train_config): one batch's loss and gradients on the GPU vs the
    CPU (same seed, float32, deterministic test-time network), then 15 s of GPU training
    steps (images/s) beside a few CPU steps."""
    from lab.capsules import build_model, get_config  # noqa: PLC0415
    from lab.capsules.trainer import CapsuleTrainer  # noqa: PLC0415
    name, overrides = ctx.train_config
    cfg = get_config(name, **overrides)
    B = cfg.batch_size
    images, source = mnist_or_stand_in(max(4 * B, ctx.train_images), seed=1)
    res.setdefault("info", {})["train"] = dict(config=name, overrides=overrides, batch=B, data=source)
    x = images[:B]
    t0 = time.perf_counter()
    cpu = build_model(cfg, seed=0)
    loss_c, _, _ = cpu.loss(x, train=False)
    loss_c.backward()
    cpu_s = time.perf_counter() - t0
    g_cpu = _flat_grads(cpu.params)
    res["timings"].setdefault("train_step", {})["cpu_one_fwd_bwd"] = dict(ms=cpu_s * 1e3, batch=B)
    print(f"  CPU forward+backward of {B} images: {cpu_s:.2f} s", flush=True)
    if not ctx.dry:
        from lab.backend import get_backend  # noqa: PLC0415
        gpu_backend = get_backend("gpu")
        gpu = build_model(cfg, seed=0, backend=gpu_backend)
        loss_g, _, _ = gpu.loss(x, train=False, sync=False)
        loss_g.backward()
        g_gpu = _flat_grads(gpu.params)
        record(res, "train", "loss_gpu_vs_cpu", abs(float(loss_g.item()) - float(loss_c.item()))
               / abs(float(loss_c.item())), 1e-3)
        keys = sorted(g_cpu)
        a = np.concatenate([g_gpu[k].ravel() for k in keys])
        b = np.concatenate([g_cpu[k].ravel() for k in keys])
        record(res, "train", "grads_gpu_vs_cpu_overall", rel_err(a, b), 1e-3)
        worst = max(keys, key=lambda k: rel_err(g_gpu[k], g_cpu[k]))
        res["info"]["train"]["worst_param"] = dict(name=worst, rel_err=rel_err(g_gpu[worst], g_cpu[worst]))
        # training mode (dropout, manager noise from the device stream) runs and is finite
        from lab.backend import RandomStream  # noqa: PLC0415
        lt, _, _ = gpu.loss(x, train=True, stream=RandomStream(3, gpu_backend), sync=False)
        lt.backward()
        record(res, "train", "train_mode_loss_finite", 0.0 if np.isfinite(float(lt.item())) else 1.0, 0.5)
        # timed training steps on the device: every launch from Python ("eager"), and the
        # steps replayed as one CUDA graph (lab.capsules.graph_step, default)
        for who, graph in (("ours_gpu_eager", False), ("ours_gpu", None)):
            tr = CapsuleTrainer(cfg, images, None, seed=0, device=gpu_backend, graph=graph)
            for _ in range(tr.sync_every):
                tr.step()     # warm-up through one check step: every kernel compiles (NVRTC) here
            gpu_backend.synchronize()
            t0 = time.perf_counter()
            n = 0
            last = {}
            while time.perf_counter() - t0 < ctx.train_seconds or n < 2:
                m = tr.step()
                n += 1
                if "loss" in m:
                    last = m
            gpu_backend.synchronize()
            dt = time.perf_counter() - t0
            put_time(res, "train_step", who, dt / n * 1e3, images_per_s=n * B / dt, steps=n,
                     last_loss=float(last.get("loss", float("nan"))), rollbacks=len(tr.events),
                     graph=tr.graph_info())
            record(res, "train", f"{who}_training_finite",
                   0.0 if (last and np.isfinite(last["loss"]) and not tr.events) else 1.0, 0.5)
    # a few CPU training steps for comparison (the same step, numpy)
    tr = CapsuleTrainer(cfg, images, None, seed=0)
    tr.step()
    t0 = time.perf_counter()
    for _ in range(ctx.cpu_train_steps):
        tr.step()
    dt = time.perf_counter() - t0
    put_time(res, "train_step", "ours_cpu", dt / ctx.cpu_train_steps * 1e3,
             images_per_s=ctx.cpu_train_steps * B / dt, steps=ctx.cpu_train_steps)


def _trainer_inputs(ctx):
    """``(config name, config, images, their source, backend)`` of the trainer sections:
    ctx's config, MNIST (or stand-in images) and the GPU (numpy standing in, dry run)."""
    from lab.backend import Backend, get_backend  # noqa: PLC0415
    from lab.capsules import get_config  # noqa: PLC0415
    name, overrides = ctx.train_config
    cfg = get_config(name, **overrides)
    images, source = mnist_or_stand_in(max(4 * cfg.batch_size, ctx.train_images), seed=1)
    return name, cfg, images, source, Backend("gpu", np) if ctx.dry else get_backend("gpu")


def _flat_params(trainer) -> np.ndarray:
    from lab.backend import to_numpy  # noqa: PLC0415
    ps = trainer.model.params
    return np.concatenate([to_numpy(ps[k].data).ravel() for k in sorted(ps)]).astype(np.float64)


def perturbed(trainer, rel: float = 1e-7):
    """``trainer`` with every parameter scaled by ``1 + rel * N(0, 1)`` (seed 0): float32
    rounding's worth of difference, the control of the follow checks."""
    rng = np.random.default_rng(0)
    for p in trainer.model.params.values():
        p.data *= (1 + rel * rng.standard_normal(p.data.shape)).astype(p.data.dtype)
    return trainer


def follow_rows(cpu, control, dev, steps: int) -> list[dict]:
    """Step three trainers that draw the same random numbers: per step the losses and the
    drift of the device's and the control's parameter change from the CPU's."""
    start = _flat_params(cpu)
    rows = []
    for step in range(1, steps + 1):
        loss_cpu, loss_control = cpu.step()["loss"], control.step()["loss"]
        loss_gpu = dev.step().get("loss", float("nan"))     # the GPU's loss only on its check steps
        b = _flat_params(cpu) - start
        rows.append(dict(step=step, loss_cpu=float(loss_cpu), loss_control=float(loss_control),
                         loss_gpu=float(loss_gpu), drift_gpu=rel_err(_flat_params(dev) - start, b),
                         drift_control=rel_err(_flat_params(control) - start, b)))
    return rows


def section_train_follow(ctx, res):
    """The GPU trainer against the CPU trainer, step for step: both draw the CPU's random
    numbers (``lab.backend.HostRandomStream``: same dropout masks, manager noise and
    minibatch order), so what is left is float rounding, which training amplifies. The
    control is a CPU trainer whose parameters start perturbed by a relative 1e-7 (float32
    rounding): on mnist-thesis its parameter change drifts from the CPU run's by 2e-4 to
    5e-3 after one step and about 0.7 after 20 (session 6; on the H200 the GPU's drift
    tracked the control's at every one of the 20 steps). The check:
    the GPU's drift stays within 10x the control's (or 1e-4) over the first steps, where
    an arithmetic bug of the GPU's training mode would show. Every step's losses and
    drifts are kept in the JSON."""
    from lab.capsules.trainer import CapsuleTrainer  # noqa: PLC0415
    name, cfg, images, source, backend = _trainer_inputs(ctx)
    cpu = CapsuleTrainer(cfg, images, None, seed=0)
    control = perturbed(CapsuleTrainer(cfg, images, None, seed=0))
    dev = CapsuleTrainer(cfg, images, None, seed=0, device=backend, sync_every=ctx.follow_sync_every)
    dev.use_host_random()
    rows = follow_rows(cpu, control, dev, ctx.follow_steps)
    first = rows[:3]
    record(res, "train_follow", f"gpu_drift_first_{len(first)}_steps_within_10x_control",
           max(r["drift_gpu"] for r in first), max(1e-4, 10 * max(r["drift_control"] for r in first)))
    res.setdefault("info", {})["train_follow"] = dict(config=name, data=source, steps=ctx.follow_steps,
                                                      sync_every=ctx.follow_sync_every, rows=rows)


def section_train_graph(ctx, res):
    """The step replayed as a CUDA graph (``lab.capsules.graph_step``) against eager steps
    on the device: three trainers from one seed with the device's random numbers, two
    eager and one replaying every step but the optimizer's rule-counting ones (checks
    included: they read the replayed step's outputs). The two eager runs show the
    device's own run-to-run drift (atomic additions make it non-zero where they
    reorder); over the first ``graph_steps`` the replaying run must stay within 10x of it
    (or 1e-5) in its parameter change and in the loss its check reads. Then the replaying
    and one eager run go on past the first counting step (``record_every``): one
    recording, every other step replayed, and the counted rule fractions at that check.
    Random numbers repeated by the replays, a stale constant or a stale output would show."""
    from lab.capsules.trainer import CapsuleTrainer  # noqa: PLC0415
    name, cfg, images, source, backend = _trainer_inputs(ctx)
    eager, again, graphed = (CapsuleTrainer(cfg, images, None, seed=0, device=backend, graph=g,
                                            optimizer="conservative") for g in (False, False, True))
    start = _flat_params(eager)
    rows, checks = [], []
    for step in range(1, ctx.graph_steps + 1):
        ms = [tr.step() for tr in (eager, again, graphed)]
        b = _flat_params(eager) - start
        rows.append(dict(step=step, drift_graph=rel_err(_flat_params(graphed) - start, b),
                         drift_eager=rel_err(_flat_params(again) - start, b)))
        if "loss" in ms[0]:
            checks.append(dict(step=step, loss=[m["loss"] for m in ms]))
    record(res, "train_graph", "drift_within_10x_eager_vs_eager",
           max(r["drift_graph"] for r in rows), max(1e-5, 10 * max(r["drift_eager"] for r in rows)))
    for c in checks:
        le, la, lg = c["loss"]
        record(res, "train_graph", f"check_loss_step_{c['step']}_within_10x_eager_vs_eager",
               abs(lg - le) / abs(le), max(1e-5, 10 * abs(la - le) / abs(le)))
    # on past the first rule-counting step: eager (step 1, step 2 that warms the fused
    # path, the counting steps), step 3 records and runs, the rest replay
    counting = graphed.optimizer.record_every
    steps = counting + 4
    counted = {}
    for step in range(ctx.graph_steps + 1, steps + 1):
        for who, tr in (("eager", eager), ("graph", graphed)):
            m = tr.step()
            if step == counting:
                counted[who] = {k: v for k, v in m.items() if k.startswith("rule_")}
    info = graphed.graph_info()
    record(res, "train_graph", "recorded_once_and_replayed",
           0.0 if info == {"captures": 1, "replays": steps - 3 - steps // counting, "error": None} else 1.0, 0.5)
    fr = [sum(counted.get(who, {}).values()) for who in ("eager", "graph")]
    record(res, "train_graph", "rule_fractions_counted_at_the_counting_check",
           max(abs(f - 1.0) for f in fr), 1e-6)
    res.setdefault("info", {})["train_graph"] = dict(config=name, data=source, graph=info, rows=rows,
                                                     checks=checks, steps=steps, rule_fractions=counted)


def section_rbm_estimator(ctx, res):
    """BinaryRBM(500, fpcd, device="gpu"): the fused update inside the estimator: finite
    parameters, graph replay equal to eager launches, updates/s (and the CPU's)."""
    from lab.backend import to_numpy  # noqa: PLC0415
    from lab.undirected import BinaryRBM  # noqa: PLC0415
    nh = ctx.rbm_estimator["nh"]
    X, source = mnist_or_stand_in(ctx.rbm_estimator["n"], seed=2)
    X = X.reshape(len(X), -1)
    res.setdefault("info", {})["rbm_estimator"] = dict(n_hidden=nh, data=source)

    def make(device, updates, graph=True):
        r = BinaryRBM(nh, algorithm="fpcd", learning_rate=0.01, batch_size=100, n_updates=updates,
                      binarize=True, visible_bias_init="data", random_state=0, device=device)
        r._gpu_graph = graph
        return r

    # the CPU estimator: updates/s over a short run
    cpu_updates = ctx.rbm_estimator["cpu_updates"]
    r = make("cpu", cpu_updates).fit(X)
    put_time(res, "rbm_estimator_fpcd", "ours_cpu", r.train_seconds_ / r.n_updates_ * 1e3,
             updates_per_s=r.n_updates_ / r.train_seconds_, updates=r.n_updates_)
    if ctx.dry:
        return
    # graph replay vs eager launches: the same numbers (same Philox stream)
    a, b = make("gpu", 20, graph=False).fit(X), make("gpu", 20, graph=True).fit(X)
    if getattr(b, "_gpu_graph_error", None):
        res["errors"]["rbm_estimator/graph"] = b._gpu_graph_error
    record(res, "rbm_estimator", "graph_vs_eager_W",
           rel_err(to_numpy(b.components_), to_numpy(a.components_)), 1e-5)
    record(res, "rbm_estimator", "graph_vs_eager_particles",
           float((to_numpy(b.fantasy_particles_) != to_numpy(a.fantasy_particles_)).mean()), 1e-3)
    updates = ctx.rbm_estimator["gpu_updates"]
    t0 = time.perf_counter()
    r = make("gpu", updates).fit(X)
    r.backend_.synchronize()
    wall = time.perf_counter() - t0
    finite = all(bool(np.isfinite(v).all()) for v in r.snapshot().values() if isinstance(v, np.ndarray))
    record(res, "rbm_estimator", "params_finite", 0.0 if finite else 1.0, 0.5)
    record(res, "rbm_estimator", "fused_update_used", 0.0 if getattr(r, "_gpu_update", None) else 1.0, 0.5)
    put_time(res, "rbm_estimator_fpcd", "ours_gpu", r.train_seconds_ / r.n_updates_ * 1e3,
             updates_per_s=r.n_updates_ / r.train_seconds_, updates=r.n_updates_,
             wall_s_incl_setup=wall, graph=r._gpu_update.graph is not None)


SECTIONS = (("render", section_render), ("fused", section_fused), ("rbm", section_rbm),
            ("logz", section_logz), ("ais", section_ais), ("train", section_train),
            ("rbm_estimator", section_rbm_estimator), ("train_graph", section_train_graph),
            ("train_follow", section_train_follow))


# -- report ------------------------------------------------------------------------------------
def card_name(ctx) -> str:
    if ctx.dry:
        return "cpu-dry-run"
    props = ctx.cp.cuda.runtime.getDeviceProperties(0)
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def table(res) -> str:
    lines = [f"GPU check on {res['card']} ({'dry run' if res['dry_run'] else 'device'})", ""]
    lines.append(f"{'case':<26} {'who':<22} {'ms':>10}  extra")
    for case, whos in res["timings"].items():
        for who, v in whos.items():
            ms = v.get("ms", v.get("s", float("nan")) * 1e3)
            extra = ", ".join(f"{k}={x:.4g}" if isinstance(x, float) else f"{k}={x}"
                              for k, x in v.items() if k not in ("ms", "s"))
            lines.append(f"{case:<26} {who:<22} {ms:>10.4g}  {extra}")
    n_ok = sum(c["ok"] for s in res["checks"].values() for c in s.values() if isinstance(c, dict))
    n_all = sum(1 for s in res["checks"].values() for c in s.values() if isinstance(c, dict))
    failed = [f"{s}/{k}" for s, cs in res["checks"].items() for k, c in cs.items()
              if isinstance(c, dict) and not c["ok"]]
    lines.append("")
    lines.append(f"checks: {n_ok}/{n_all} ok" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    lines.append(f"section errors: {', '.join(res['errors']) or 'none'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="no CuPy: exercise the harness, the CPU references and the torch peer on the CPU")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/gpu_<card>.json)")
    ap.add_argument("--sections", default=",".join(n for n, _ in SECTIONS),
                    help="comma-separated subset of: " + ", ".join(n for n, _ in SECTIONS))
    ap.add_argument("--max-seconds", type=float, default=270.0,
                    help="start no section after this many seconds (the rest are recorded as skipped)")
    args = ap.parse_args(argv)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(wanted) - {n for n, _ in SECTIONS}
    if unknown:
        ap.error(f"unknown sections: {', '.join(sorted(unknown))}")
    start = time.perf_counter()
    res = {"dry_run": bool(args.cpu_dry_run), "card": None, "checks": {}, "timings": {}, "errors": {},
           "machine": {"python": platform.python_version(), "platform": platform.platform()}}
    try:
        ctx = Ctx(args.cpu_dry_run)
        res["card"] = card_name(ctx)
        res["machine"]["torch"] = ctx.torch.__version__ if ctx.torch else None
        if ctx.cp is not None:
            res["machine"]["cupy"] = ctx.cp.__version__
            res["machine"]["cuda_runtime"] = ctx.cp.cuda.runtime.runtimeGetVersion()
    except Exception as exc:
        traceback.print_exc()
        res["errors"]["setup"] = f"{type(exc).__name__}: {exc}"
        ctx = None
    out = args.out
    if out is None:
        folder = Path(tempfile.gettempdir()) if args.cpu_dry_run else ROOT / "benchmarks" / "results"
        out = folder / f"gpu_{slug(res['card'] or 'unknown')}.json"
    res["complete"] = False
    res["section_seconds"] = {}

    # on the device machine $OUT is the folder that comes back: keep a copy there too, so
    # a run cut short by its time limit still returns every finished section
    targets = [out]
    if os.environ.get("OUT") and Path(os.environ["OUT"]).is_dir():
        extra = Path(os.environ["OUT"]) / out.name
        if extra.resolve() != out.resolve():
            targets.append(extra)

    def write():
        res["seconds"] = time.perf_counter() - start
        text = json.dumps(res, indent=1, default=float) + "\n"
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_text(text)
            tmp.replace(target)

    write()
    if ctx is not None:
        for name, fn in SECTIONS:
            if name not in wanted:
                continue
            if time.perf_counter() - start > args.max_seconds:
                res["errors"][name] = f"skipped: past --max-seconds {args.max_seconds:g}"
                print(f"== {name}: skipped (past --max-seconds)", flush=True)
                continue
            print(f"== {name}", flush=True)
            t0 = time.perf_counter()
            try:
                fn(ctx, res)
            except Exception as exc:
                traceback.print_exc()
                res["errors"][name] = f"{type(exc).__name__}: {exc}"
            res["section_seconds"][name] = time.perf_counter() - t0
            print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)
            write()                      # partial results survive a later timeout
    res["complete"] = True
    write()
    print()
    print(table(res))
    print(f"\nwrote {out} ({res['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
