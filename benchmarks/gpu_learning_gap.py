"""Why did the one GPU ``mnist-thesis`` run learn more slowly per step than the CPU runs?

Session 3's 3-minute H100 run was 0.0635 held-out error at step 1,400 where CPU seeds 0
and 1 were at 0.0582 and 0.0581 (``benchmarks/results/capsules_runs_*.json``). This
script answers it in one device call of a few minutes:

1. ``train_follow`` (from ``gpu_check``): the GPU trainer against the CPU trainer for a
   few steps with the CPU's random numbers, both with a host read every step and with
   the GPU default of one every 10 steps, beside a CPU run started 1e-7 off (training
   amplifies rounding; see ``gpu_check.section_train_follow``). ``--follow-steps 0``
   skips it.
2. GPU runs of ``--steps`` (default 1,400) from seed 0 with a held-out evaluation every
   200 steps, printed beside the CPU curves of seeds 0 and 1. ``--runs`` picks them:
   ``graph`` (the device's random numbers, every step but the rule-counting ones replayed as a CUDA
   graph: the default trainer), ``eager`` (the same, every launch from Python) and
   ``host`` (the CPU run's random numbers, ``--host-random``).

Reading it: host-random on the CPU curve and the device-RNG run off it means the device
random numbers matter (a generator or a distribution bug); both off it means arithmetic;
both on it means session 3's run was its code of the time, or chance. Session 6 (H200):
all on it, within the spread of CPU seeds (``benchmarks/results/gpu_learning_gap_h200.json``).

3. ``late_follow`` (``--late-follow-steps``, default 20; 0 skips): step 1's comparison again,
   from the first run's last state: GPU and CPU trainers restored from its final checkpoint,
   drawing the same numbers, and the held-out error of those parameters on each device.

Past 10,000 steps a 2-minute CUDA-graph run got worse (``capsules_runs_gpu.json``). Whether
the eager path does the same, and whether the GPU path still computes what the CPU path does
that late, is the next question, answered in about 7 device minutes by
``--steps 15000 --runs graph,eager --follow-steps 0 --name gpu_long`` (eager: ~18 ms/step).
Since session 8 the ``mnist-thesis`` preset has the alphas of fig 2.13's rule pattern,
(0.1, 10, 2e-4, 4e-6); the runs use the preset, so they also show whether those alphas keep
the ACs in use (``acs_active``) and the error falling past 10,000 steps on the GPU.

    python benchmarks/gpu_learning_gap.py [--steps 1400] [--runs graph,eager,host] [--out DIR]
    python benchmarks/gpu_learning_gap.py --cpu-dry-run   # numpy standing in for CuPy

Results go to ``DIR/NAME.json`` (``--name``, default gpu_learning_gap; ``DIR``: ``$OUT``
when set, else benchmarks/results).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def cpu_curves() -> dict:
    """The committed CPU held-out curves of ``mnist-thesis`` (seed 0 and seed 1)."""
    runs = json.loads((HERE / "results" / "capsules_runs_cpu.json").read_text())
    out = {}
    for label, run in runs.items():
        curve = run.get("held_out_curve_every_200_steps") if isinstance(run, dict) else None
        if label.startswith("mnist-thesis") and curve:
            out[label] = {int(p["step"]): p["valid_recon_nodropout"] for p in curve}
    return out


def follow(dry: bool, steps: int) -> dict:
    """gpu_check's train_follow, with a host read every step and every 10 steps."""
    import gpu_check  # noqa: PLC0415
    out = {}
    for sync_every in (1, 10):
        ctx = gpu_check.Ctx(dry)
        ctx.follow_steps, ctx.follow_sync_every = steps, sync_every
        res = {"checks": {}, "timings": {}}
        try:
            gpu_check.section_train_follow(ctx, res)
        except Exception as exc:  # noqa: BLE001 - report, then go on to the runs
            res["error"] = f"{type(exc).__name__}: {exc}"
        out[f"sync_every_{sync_every}"] = res
        print(f"  train_follow, host read every {sync_every} step(s):",
              json.dumps(res.get("checks", {}).get("train_follow", res.get("error"))), flush=True)
    return out


#: ``--runs`` names: (host random numbers, CUDA graph)
RUNS = {"graph": (False, None), "eager": (False, False), "host": (True, False)}


def run_curve(config, steps: int, host_random: bool, backend, graph=None, late_follow_steps: int = 0) -> dict:
    """One GPU run from seed 0: held-out error every ``config.eval_every`` steps, the
    training loss and the mixture's decisiveness every 500 (at check steps), and, with
    ``late_follow_steps``, :func:`late_follow` from its last state."""
    from lab.capsules.run import train_run  # noqa: PLC0415
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = train_run(config, tmp, seed=0, steps=steps, progress=False, device=backend,
                            host_random=host_random, checkpoint_seconds=1e9, graph=graph)
        seconds = time.perf_counter() - t0
        curve, acs, train = {}, {}, {}
        with open(Path(tmp) / "metrics.jsonl") as f:
            for line in f:
                m = json.loads(line)
                if "valid_recon_nodropout" in m:
                    curve[int(m["step"])] = m["valid_recon_nodropout"]
                if "valid_acs_active" in m:
                    acs[int(m["step"])] = m["valid_acs_active"]
                if "loss" in m and int(m["step"]) % 500 == 0:
                    train[int(m["step"])] = {k: m[k] for k in ("loss", "mixture_max_y", "mixture_used")
                                             if k in m}
        out = {"host_random": host_random, "steps": steps, "seconds": round(seconds, 1),
               "rollbacks": summary.get("rollbacks"), "cuda_graph": summary.get("cuda_graph"),
               "curve": curve, "acs_active": acs, "train_every_500": train}
        if late_follow_steps:
            out["late_follow"] = late_follow(Path(tmp) / "final.npz", config, backend, late_follow_steps)
    return out


def late_follow(ckpt, config, backend, steps: int, seed: int = 1234) -> dict:
    """``train_follow`` from a run's last state: the GPU trainer (eager, a host read every
    step) and two CPU trainers, one perturbed by a relative 1e-7, all restored from
    ``ckpt`` and drawing ``HostRandomStream(seed)``; plus the held-out error of the
    restored parameters on each device. Does the GPU path still compute what the CPU path
    does late in a run (the decisive mixture, the grown poses), or only early on?"""
    import gpu_check  # noqa: PLC0415
    from lab.capsules.run import load_data  # noqa: PLC0415
    from lab.capsules.trainer import CapsuleTrainer  # noqa: PLC0415
    data = load_data(config, None)
    train, valid = data["train"][0], data["valid"][0]
    cpu, control = (CapsuleTrainer.load(ckpt, train, valid, device="cpu") for _ in range(2))
    gpu_check.perturbed(control)
    dev = CapsuleTrainer.load(ckpt, train, valid, device=backend, sync_every=1, graph=False)
    valid_cpu, valid_gpu = cpu.evaluate(), dev.evaluate()
    for tr in (cpu, control, dev):
        tr.use_host_random(seed)
    rows = gpu_check.follow_rows(cpu, control, dev, steps)
    first = rows[:3]
    out = {"from_step": cpu.step_count - steps, "valid_recon_nodropout_cpu": valid_cpu,
           "valid_recon_nodropout_gpu": valid_gpu,
           "valid_rel_diff": abs(valid_gpu - valid_cpu) / max(abs(valid_cpu), 1e-30),
           "drift_gpu_first_3": max(r["drift_gpu"] for r in first),
           "drift_control_first_3": max(r["drift_control"] for r in first), "rows": rows}
    out["ok"] = bool(out["valid_rel_diff"] <= 1e-4 and
                     out["drift_gpu_first_3"] <= max(1e-4, 10 * out["drift_control_first_3"]))
    print(f"  late follow from step {out['from_step']}: held-out cpu {valid_cpu:.6f} gpu {valid_gpu:.6f}; "
          f"drift over 3 steps gpu {out['drift_gpu_first_3']:.2e} control "
          f"{out['drift_control_first_3']:.2e} -> {'ok' if out['ok'] else 'DIFFERENT'}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1400)
    ap.add_argument("--follow-steps", type=int, default=20)
    ap.add_argument("--late-follow-steps", type=int, default=20,
                    help="steps of late_follow from the first run's last state (0: skip)")
    ap.add_argument("--runs", default="graph,eager,host", help="comma-separated: " + ", ".join(RUNS))
    ap.add_argument("--name", default="gpu_learning_gap", help="the JSON file's name (no suffix)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="numpy in place of CuPy, mnist-quick, a few steps: checks the script")
    args = ap.parse_args(argv)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if not runs or set(runs) - set(RUNS):
        ap.error(f"--runs takes a comma-separated subset of {', '.join(RUNS)}")
    from lab.backend import Backend, get_backend  # noqa: PLC0415
    from lab.capsules import get_config  # noqa: PLC0415
    dry = args.cpu_dry_run
    backend = Backend("gpu", np) if dry else get_backend("gpu")
    config = get_config("mnist-quick", eval_every=2, n_valid=40) if dry else get_config("mnist-thesis")
    steps = 6 if dry else args.steps
    out_dir = args.out or Path(os.environ.get("OUT") or HERE / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / (f"{args.name}_dry.json" if dry else f"{args.name}.json")
    result = {"what": __doc__.split("\n\n")[0], "dry_run": dry, "config": config.name,
              "cpu_curves": cpu_curves()}

    def write():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, path)

    if not dry:
        import cupy  # noqa: PLC0415
        from gpu_check import Ctx, card_name  # noqa: PLC0415
        result["machine"] = {"card": card_name(Ctx(False)), "cupy": cupy.__version__,
                             "numpy": np.__version__}
    if args.follow_steps:
        print("1. step by step against the CPU", flush=True)
        result["train_follow"] = follow(dry, 10 if dry else args.follow_steps)
        write()
    for i, run in enumerate(runs):
        host_random, graph = RUNS[run]
        name = f"gpu_{run}"
        print(f"2. {name}: {steps} steps", flush=True)
        late = 0 if i or not args.late_follow_steps else (4 if dry else args.late_follow_steps)
        result[name] = run_curve(config, steps, host_random, backend, graph, late)
        write()
    cpu = result["cpu_curves"]
    rows = sorted({s for run in runs for s in result[f"gpu_{run}"]["curve"]})
    labels = list(cpu)
    print("\nstep  " + "  ".join(f"gpu({run})" for run in runs) + "  " + "  ".join(labels))
    for s in rows:
        vals = [result[f"gpu_{run}"]["curve"].get(s) for run in runs] + [cpu[k].get(s) for k in labels]
        print(f"{s:5d}  " + "  ".join("   -   " if v is None else f"{v:.5f}" for v in vals))
    print("seconds: " + ", ".join(f"{run} {result[f'gpu_{run}']['seconds']}" for run in runs))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
