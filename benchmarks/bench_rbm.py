"""Benchmark the RBM code of lab.undirected against scikit-learn, in one run.

1. PCD-1 updates per second on MNIST, 784x500, minibatches of 100: ``lab.undirected.
   BinaryRBM`` vs ``sklearn.neural_network.BernoulliRBM`` (float32 input, same data),
   interleaved repetitions, in two configurations. sklearn does five dense 100x784x500
   matrix products per update (``gemm_floor_1_thread`` is those alone); ours does the
   three with binary visible states (data and fantasy particles) as row sums
   (``lab.undirected.binary_products``, numba) and is also timed with dense products
   only (``ours_dense``: the same products as sklearn, so with equal BLAS threads that
   gap is the rest of the update; both compute their sigmoids and their uniforms with
   compiled kernels, ``logistic`` and ``philox_uniforms``):
     * ``defaults``: each library as it comes (sklearn: BLAS with its default threads;
       ours: two worker threads, each owning half of the hidden units for the whole
       update -- one hand-off per update -- with BLAS single-threaded);
     * ``blas_1_thread``: BLAS limited to one thread for both, and ours with n_jobs=1
       (the per-update work alone, no parallelism anywhere).
2. Exact log Z of a trained 784x25 RBM (2^25 hidden states): the split scheme of
   ``lab.undirected.partition`` with 2 threads and 1 thread, and the plain chunked
   numpy enumeration timed on 2^17 states and scaled by 2^8.

The machine is shared (other jobs run beside this one), so every timing records the
load average around it. Usage:

    python benchmarks/bench_rbm.py [--updates 200] [--reps 3] [--out benchmarks/results/rbm_cpu.json]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lab.undirected import BinaryRBM, binary_products  # noqa: E402
from lab.undirected.parallel import blas_single_thread  # noqa: E402
from lab.undirected.partition import _log_sum_direct, rbm_log_partition  # noqa: E402


def machine() -> dict:
    info = {"python": platform.python_version(), "numpy": np.__version__,
            "cpus": os.cpu_count(), "platform": platform.platform()}
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    try:
        import threadpoolctl  # noqa: PLC0415
        info["blas"] = [{k: d.get(k) for k in ("internal_api", "version", "num_threads",
                                                "threading_layer", "architecture")}
                        for d in threadpoolctl.threadpool_info() if d.get("user_api") == "blas"]
    except ImportError:
        info["blas"] = "threadpoolctl not installed"
    try:
        import sklearn  # noqa: PLC0415
        info["sklearn"] = sklearn.__version__
    except ImportError:
        info["sklearn"] = None
    return info


def load_data(n: int):
    """n binarized MNIST training images (fixed seed), or random stand-ins without data."""
    try:
        from lab.backend import RandomStream  # noqa: PLC0415
        from lab.data import binarize, mnist_splits  # noqa: PLC0415
        x = mnist_splits()["train"][0][:n]
        return np.asarray(binarize(x.reshape(len(x), -1), RandomStream(0))), "mnist (binarized once, seed 0)"
    except Exception as exc:  # noqa: BLE001
        rng = np.random.default_rng(0)
        return (rng.random((n, 784)) < 0.13).astype(np.float32), f"random 13% ones ({exc})"


def timed(fn):
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    fn()
    dt = time.perf_counter() - t
    return dt, [load0, os.getloadavg()[0]]


def bench_updates(X, updates: int, reps: int) -> dict:
    from sklearn.neural_network import BernoulliRBM  # noqa: PLC0415
    from threadpoolctl import threadpool_limits  # noqa: PLC0415
    data = X[:updates * 100]

    def ours(n_jobs, dense=False):
        def run():
            rbm = BinaryRBM(500, algorithm="pcd", learning_rate=0.01, batch_size=100,
                            n_fantasy=100, n_updates=updates, n_jobs=n_jobs, random_state=0)
            with (binary_products.disabled() if dense else contextlib.nullcontext()):
                rbm.fit(data)
        return run

    def sk():
        BernoulliRBM(n_components=500, learning_rate=0.01, batch_size=100, n_iter=1,
                     random_state=0).fit(data)

    def sk_one_thread():
        with threadpool_limits(limits=1, user_api="blas"):
            sk()

    configs = {
        "defaults": {"ours": ours(None), "ours_dense": ours(None, dense=True), "sklearn": sk},
        "blas_1_thread": {"ours": ours(1), "ours_dense": ours(1, dense=True),
                          "sklearn": sk_one_thread},
    }
    # one-off costs outside the timings: numba loading its compiled kernels, imports
    BinaryRBM(500, n_updates=2, batch_size=100, random_state=0).fit(data[:200])
    BernoulliRBM(n_components=500, batch_size=100, n_iter=1, random_state=0).fit(data[:200])
    raw = {c: {who: [] for who in f} for c, f in configs.items()}
    loads = {c: {who: [] for who in f} for c, f in configs.items()}
    for rep in range(reps):
        for cname, fns in configs.items():
            for who, fn in fns.items():
                dt, load = timed(fn)
                raw[cname][who].append(updates / dt)
                loads[cname][who].append(load)
                print(f"  rep {rep} {cname:14s} {who:8s} {updates / dt:7.2f} updates/s "
                      f"(load {load[0]:.1f}->{load[1]:.1f})", flush=True)
    out = {}
    for cname in configs:
        r = raw[cname]
        ours_med, dense_med, sk_med = (statistics.median(r[w]) for w in ("ours", "ours_dense", "sklearn"))
        out[cname] = {"ours_updates_per_s": r["ours"], "ours_dense_updates_per_s": r["ours_dense"],
                      "sklearn_updates_per_s": r["sklearn"],
                      "ours_median": round(ours_med, 2), "ours_dense_median": round(dense_med, 2),
                      "sklearn_median": round(sk_med, 2),
                      "speedup_median": round(ours_med / sk_med, 2),
                      "speedup_dense_median": round(dense_med / sk_med, 2),
                      "speedup_best": round(max(r["ours"]) / max(r["sklearn"]), 2),
                      # each repetition's ratio: the machine's load drifts less within one
                      "speedup_per_rep": [round(a / b, 2) for a, b in zip(r["ours"], r["sklearn"])],
                      "loadavg_1min": loads[cname]}
    return out


def gemm_floor(X, reps: int = 20) -> dict:
    """The matrix products of one PCD update (784x500, batch 100), single-threaded BLAS:
    v+ W^T, v- W^T, h W and the gradient [h+; -h-]^T [v+; v-], i.e. 5 x 39.2 M
    multiply-adds, the same work sklearn's update does."""
    rng = np.random.default_rng(0)
    W = rng.normal(0, 0.01, (500, 784)).astype(np.float32)
    v = X[:200]
    h = rng.random((200, 500), dtype=np.float32)

    def update_products():
        _ = v[:100] @ W.T
        _ = v[100:] @ W.T
        _ = h[:100] @ W
        _ = h.T @ v

    with blas_single_thread():
        update_products()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            update_products()
            times.append(time.perf_counter() - t)
    ms = 1e3 * statistics.median(times)
    return {"ms_per_update": round(ms, 2), "max_updates_per_s": round(1e3 / ms, 1),
            "gflops": round(5 * 2 * 100 * 784 * 500 / (ms * 1e-3) / 1e9, 1),
            "loadavg_1min": os.getloadavg()[0]}


def parallel_capacity() -> dict:
    """How much two threads gain on this machine right now (1.0: one core's worth free):
    the same single-threaded matrix products, run once in one thread and twice in two."""
    import threading  # noqa: PLC0415
    a = np.random.default_rng(0).random((600, 600), dtype=np.float32)

    def work():
        for _ in range(30):
            a @ a

    with blas_single_thread():
        work()
        t = time.perf_counter()
        work()
        one = time.perf_counter() - t
        threads = [threading.Thread(target=work) for _ in range(2)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        two = time.perf_counter() - t
    return {"two_thread_speedup": round(2 * one / two, 2), "loadavg_1min": os.getloadavg()[0]}


def bench_log_z(X) -> dict:
    rbm = BinaryRBM(25, algorithm="pcd", learning_rate=0.1, n_updates=2000, binarize=False,
                    visible_bias_init="data", random_state=0).fit(X)
    W = rbm.components_.astype(np.float64)
    b = rbm.intercept_visible_.astype(np.float64)
    c = rbm.intercept_hidden_.astype(np.float64)
    out = {"model": "784x25 PCD, 2000 updates of lr 0.1 on the benchmark data"}
    for threads in (2, 1):
        values = []
        dt, load = timed(lambda t=threads, out=values: out.append(
            rbm_log_partition(W, b, c, method="split", threads=t)))
        out[f"split_{threads}_threads"] = {"seconds": round(dt, 2), "log_z": values[0], "loadavg_1min": load}
        print(f"  log Z split, {threads} thread(s): {dt:.1f} s (log Z {values[0]:.4f})", flush=True)
    # plain numpy enumeration: 2^17 of the 2^25 states, scaled up
    with blas_single_thread():
        dt, load = timed(lambda: _log_sum_direct(W[:17], c[:17], b))
    out["direct_numpy_estimate"] = {"seconds_for_2^17_states": round(dt, 2),
                                    "estimated_seconds_for_2^25": round(dt * 256, 1),
                                    "loadavg_1min": load}
    # accuracy of the split scheme against the direct method on a 20-hidden sub-model
    sub = (W[:20], b, c[:20])
    with blas_single_thread():
        direct = _log_sum_direct(sub[0], sub[2], sub[1])
    split = rbm_log_partition(*sub, method="split")
    out["accuracy_20_hidden"] = {"direct": direct, "split": split, "abs_diff": abs(direct - split)}
    print(f"  direct numpy, 2^17 states: {dt:.1f} s -> about {dt * 256:.0f} s for 2^25; "
          f"split vs direct on 20 hidden: {abs(direct - split):.2e}", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--updates", type=int, default=200, help="PCD updates per timing (500 = one epoch)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--skip-log-z", action="store_true")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "results", "rbm_cpu.json"))
    args = p.parse_args(argv)
    X, source = load_data(max(args.updates * 100, 20_000))
    result = {"benchmark": "PCD-1 784x500 batch 100 updates/s vs sklearn BernoulliRBM; exact log Z 784x25",
              "machine": machine(), "data": source, "updates_per_timing": args.updates,
              "reps": args.reps, "loadavg_start": list(os.getloadavg()),
              "note": ("shared 2-core machine: other jobs ran during the measurements (see the "
                       "load averages); medians of interleaved repetitions")}
    print("PCD-1 784x500:", flush=True)
    result["parallel_capacity_start"] = parallel_capacity()
    print("  two-thread speedup available:", result["parallel_capacity_start"], flush=True)
    result["pcd_784x500"] = bench_updates(X, args.updates, args.reps)
    result["pcd_784x500"]["gemm_floor_1_thread"] = gemm_floor(X)
    print("  matrix products alone (1 thread):", result["pcd_784x500"]["gemm_floor_1_thread"], flush=True)
    if not args.skip_log_z:
        print("exact log Z 784x25:", flush=True)
        result["log_z_784x25"] = bench_log_z(X)
    result["parallel_capacity_end"] = parallel_capacity()
    result["loadavg_end"] = list(os.getloadavg())
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if "median" in kk or "speedup" in kk}
                      for k, v in result["pcd_784x500"].items() if k != "gemm_floor_1_thread"},
                     indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
