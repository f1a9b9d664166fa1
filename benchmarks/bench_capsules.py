"""Benchmark: training throughput (images/s) of the capsule autoencoder configs (issue 3).

For each config (default: mnist-thesis and mnist-quick) a ``CapsuleTrainer`` is built
on real MNIST (``LAB_DATA_DIR``), warmed up for a few steps, then timed over
``--steps`` full training steps (forward, backward, optimizer update, including
dropout and manager noise). Reported: images/s and seconds per step (median of the
per-step times and the overall mean), the machine's load average before and after
(other jobs may share the cores), the BLAS thread count and the parameter count.

    python benchmarks/bench_capsules.py [--configs mnist-thesis,mnist-quick]
        [--steps N] [--threads 1] [--optimizer conservative|adam] [--out FILE]

Writes ``benchmarks/results/capsules_cpu.json`` by default.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lab.capsules.configs import get_config  # noqa: E402
from lab.capsules.run import limit_blas_threads  # noqa: E402
from lab.capsules.trainer import CapsuleTrainer  # noqa: E402


def bench_config(name: str, steps: int, warmup: int, optimizer: str | None, images) -> dict:
    cfg = get_config(name)
    tr = CapsuleTrainer(cfg, images, None, seed=0, optimizer=optimizer)
    for _ in range(warmup):
        tr.step()
    times = []
    t0 = time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        tr.step()
        times.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    med = statistics.median(times)
    return {"config": name, "batch_size": cfg.batch_size, "optimizer": tr.optimizer_name,
            "n_parameters": tr.model.n_parameters(), "steps": steps, "warmup": warmup,
            "seconds_per_step_median": med, "seconds_per_step_mean": total / steps,
            "images_per_second_median": cfg.batch_size / med,
            "images_per_second_mean": cfg.batch_size * steps / total,
            "final_train_recon_per_pixel": tr.last_metrics.get("recon_per_pixel")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="mnist-thesis,mnist-quick")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 5 thesis, 30 quick)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--optimizer", default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "capsules_cpu.json"))
    args = ap.parse_args(argv)
    from lab.data import mnist_splits  # noqa: PLC0415
    images = mnist_splits()["train"][0][:10000].astype(np.float32) / 255.0
    load_before = os.getloadavg()
    results = []
    with limit_blas_threads(args.threads):
        for name in args.configs.split(","):
            steps = args.steps or (5 if name == "mnist-thesis" else 30)
            r = bench_config(name, steps, args.warmup, args.optimizer, images)
            r["load_average_after"] = os.getloadavg()
            results.append(r)
            print(json.dumps(r), flush=True)
    out = {"benchmark": "capsule autoencoder training throughput", "device": "cpu",
           "machine": {"platform": platform.platform(), "processor": platform.processor(),
                       "cpu_count": os.cpu_count(), "python": platform.python_version(),
                       "numpy": np.__version__},
           "blas_threads": args.threads, "load_average_before": load_before,
           "note": "load average > cpu_count means other jobs shared the cores during the run",
           "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
