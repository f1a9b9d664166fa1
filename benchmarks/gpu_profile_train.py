"""Where the time of one GPU capsule training step goes (a device-session diagnostic).

    python benchmarks/gpu_profile_train.py [--config mnist-thesis] [--steps 30] [--out DIR]

Times ``--steps`` steps of ``CapsuleTrainer`` on the GPU, then profiles as many again with
cProfile. Run it twice: once as is (the profile shows Python/launch overhead) and once
with ``CUDA_LAUNCH_BLOCKING=1`` (every launch waits for its kernel, so a function's own
time includes its GPU time). Writes ``profile_<mode>.txt`` (top functions by own and by
cumulative time) into ``--out`` and prints the head.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="mnist-thesis")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    ap.add_argument("--top", type=int, default=35)
    args = ap.parse_args(argv)
    from gpu_check import mnist_or_stand_in  # noqa: PLC0415
    from lab.backend import get_backend  # noqa: PLC0415
    from lab.capsules import get_config  # noqa: PLC0415
    from lab.capsules.trainer import CapsuleTrainer  # noqa: PLC0415

    mode = "blocking" if os.environ.get("CUDA_LAUNCH_BLOCKING") == "1" else "async"
    cfg = get_config(args.config)
    images, source = mnist_or_stand_in(4 * cfg.batch_size, seed=1)
    gpu = get_backend("gpu")
    tr = CapsuleTrainer(cfg, images, None, seed=0, device=gpu)
    for _ in range(2 * tr.sync_every):
        tr.step()                                   # compiles every kernel
    gpu.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        tr.step()
    gpu.synchronize()
    ms = (time.perf_counter() - t0) / args.steps * 1e3
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.steps):
        tr.step()
    gpu.synchronize()
    prof.disable()
    buf = io.StringIO()
    buf.write(f"{args.config} ({source}), batch {cfg.batch_size}, {mode}: {ms:.2f} ms/step "
              f"({cfg.batch_size / ms * 1e3:.0f} images/s) over {args.steps} steps\n\n")
    for key in ("tottime", "cumulative"):
        buf.write(f"== by {key}\n")
        pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(args.top)
    text = buf.getvalue()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"profile_{mode}.txt").write_text(text)
    print("\n".join(text.splitlines()[:60]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
