"""A whole training run: the loop behind ``lab train capsules`` (and the benchmarks).

Writes ``DIR/metrics.jsonl`` (one JSON line per step, plus ``event`` lines for
rollbacks and checkpoints), ``DIR/ckpt-*.npz`` every ``checkpoint_seconds`` (the
newest three kept), ``DIR/best.npz`` (+ ``best.json``) whenever the held-out error
reaches a new low (early stopping's model) and ``DIR/final.npz`` at the end; resumes
from the latest valid state in ``DIR`` when asked (``final.npz`` or a newer ``ckpt-*.npz``).

BLAS threads: on a small shared CPU, OpenBLAS's default of one thread per core makes
the encoder's matrix products 50-100x *slower* as soon as other processes compete
for the cores (its threads spin while waiting for each other). ``limit_blas_threads``
caps the thread count (``threadpoolctl`` when installed, else nothing can be done
after numpy's import and the caller should set ``OPENBLAS_NUM_THREADS``).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path

from lab.capsules.configs import CapsuleConfig, ResumeConfigError, resume_changes
from lab.capsules.data import load_data
from lab.capsules.trainer import CapsuleTrainer, write_jsonl


def limit_blas_threads(n: int | None):
    """A context manager limiting BLAS threads to ``n`` (None: no change)."""
    if n is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=int(n), user_api="blas")


def check_run_options(minutes, steps, resume: bool = False, host_random: bool = False,
                      keep_every: int | None = None) -> None:
    """Raise ``ValueError`` for options that cannot go together (before anything loads)."""
    if minutes is None and steps is None:
        raise ValueError("give --minutes M and/or --steps N")
    if keep_every is not None and keep_every < 1:
        raise ValueError(f"--keep-every must be a number of steps >= 1, got {keep_every}")
    if resume and host_random:
        raise ValueError("--host-random is for fresh runs, not with --resume")


def check_resume_identity(meta: dict, config: CapsuleConfig | None, seed: int | None,
                          optimizer: str | None) -> None:
    """Raise ``ResumeConfigError`` when a resumed run is asked for another config, seed
    or optimizer than its checkpoint's ``meta`` holds (None: not asked; restating the
    checkpoint's own is fine), instead of silently going on with the checkpoint's."""
    asked = {"--config": (config.name if config is not None else None, meta["config"]["name"]),
             "--seed": (seed, meta["seed"]), "--optimizer": (optimizer, meta["optimizer_name"])}
    wrong = [f"{option} {mine} (the checkpoint's is {theirs})"
             for option, (mine, theirs) in asked.items() if mine is not None and mine != theirs]
    if wrong:
        raise ResumeConfigError(f"{'; '.join(wrong)}: a resumed run keeps its checkpoint's config, "
                                "seed and optimizer (leave these out to resume, or start a fresh "
                                "run in another directory)")


def train_run(config: CapsuleConfig | None, out_dir, seed: int | None = None,
              minutes: float | None = None, steps: int | None = None,
              optimizer: str | None = None, resume: bool = False, checkpoint_seconds: float = 60.0,
              data_path=None, progress: bool = True,
              log_every: int = 1, device="cpu", host_random: bool = False,
              graph: bool | None = None, keep_every: int | None = None,
              resume_overrides: dict | None = None) -> dict:
    """Train until ``minutes`` of wall time or ``steps`` updates (whichever first); returns a
    summary dict (also written to ``DIR/summary.json``). ``device``: cpu, gpu or auto
    (on the GPU only the trainer's check steps carry the loss; see ``CapsuleTrainer``).
    ``host_random``: a fresh run draws the CPU's random numbers on any device
    (``CapsuleTrainer.use_host_random``), to compare a GPU run with the CPU run.
    ``graph``: replay the GPU step as a CUDA graph (None: where it can; see
    ``lab.capsules.graph_step``). ``keep_every``: also save the state at every multiple
    of this many steps as ``DIR/snapshot-STEP.npz``, never pruned (the periodic
    ``ckpt-*.npz`` keep only the newest 3), to evaluate a long run's history.
    ``resume_overrides``: when resuming, the schedule fields to change from the
    checkpoint's config on (``configs.resume_changes``; logged as an event); a resumed
    run otherwise takes its config, seed and optimizer from the checkpoint: ``config``
    (then only its name is compared), ``seed`` and ``optimizer`` may be None there, and
    must match the checkpoint's where given (``check_resume_identity``). A fresh run
    needs ``config``; its seed defaults to 0."""
    from lab.backend import Backend, get_backend  # noqa: PLC0415
    from lab.checkpoint import (newest_checkpoint, read_checkpoint_record,  # noqa: PLC0415
                                save_step_checkpoint)
    from lab.progress import Progress  # noqa: PLC0415
    check_run_options(minutes, steps, resume, host_random, keep_every)
    out = Path(out_dir)
    ckpt = newest_checkpoint(out) if resume else None
    changes = {}
    if ckpt is not None:        # the checkpoint's config picks the data, not the caller's
        meta = read_checkpoint_record(ckpt)["meta"]
        check_resume_identity(meta, config, seed, optimizer)
        changes = resume_changes(meta["config"], resume_overrides or {})
        config = CapsuleConfig.from_dict({**meta["config"], **changes})
    elif config is None:        # e.g. a mistyped --out
        raise ResumeConfigError(f"no checkpoint to resume in {out} (give --config to start a fresh "
                                "run there)" if resume else "a fresh run needs a config")
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(config, data_path)
    train, valid = data["train"][0], data["valid"][0]
    backend = device if isinstance(device, Backend) else get_backend(device)
    if ckpt is not None:
        trainer = CapsuleTrainer.load(ckpt, train, valid, device=backend, graph=graph,
                                      overrides=changes)
    else:
        trainer = CapsuleTrainer(config, train, valid, seed=0 if seed is None else seed,
                                 optimizer=optimizer, device=backend, graph=graph)
        if host_random:
            trainer.use_host_random()
    metrics_path = out / "metrics.jsonl"
    start_step = trainer.step_count
    t_start = time.monotonic()
    last_ckpt = t_start
    total = minutes * 60.0 if minutes is not None else float(steps)
    unit = "s" if minutes is not None else "it"
    n_events = len(trainer.events)
    if changes:
        write_jsonl(metrics_path, {"event": "resume_overrides", "step": trainer.step_count, **changes})
    best_path = out / "best.json"       # the best held-out error so far (kept across --resume)
    best = json.loads(best_path.read_text()) if best_path.is_file() else None
    with Progress(total if progress else None, f"capsules {config.name}", unit=unit) as bar:
        while True:
            elapsed = time.monotonic() - t_start
            done = trainer.step_count - start_step
            if (minutes is not None and elapsed >= minutes * 60) or (steps is not None and done >= steps):
                break
            m = trainer.step()
            m["time"] = round(time.monotonic() - t_start, 3)
            logged = "loss" in m or "valid_recon_nodropout" in m      # deferred (GPU) steps carry no loss
            if log_every and logged and (m["step"] % log_every == 0 or "valid_recon_nodropout" in m
                                         or "rollback" in m):
                write_jsonl(metrics_path, m)
            valid = m.get("valid_recon_nodropout")
            if valid is not None and math.isfinite(valid) and (best is None or valid < best["valid_recon_nodropout"]):
                # early stopping's checkpoint: with a constant step size the held-out error
                # moves from one evaluation to the next (faces: 33-55% of variance)
                trainer.save(out / "best.npz")
                best = {"step": trainer.step_count, "valid_recon_nodropout": float(valid)}
                tmp = best_path.with_suffix(".json.tmp")
                tmp.write_text(json.dumps(best))
                os.replace(tmp, best_path)
            if len(trainer.events) > n_events:
                for ev in trainer.events[n_events:]:
                    write_jsonl(metrics_path, {"event": "rollback", **ev})
                n_events = len(trainer.events)
            if keep_every and trainer.step_count % keep_every == 0:
                snapshot = out / f"snapshot-{trainer.step_count:09d}.npz"
                trainer.save(snapshot)
                write_jsonl(metrics_path, {"event": "snapshot", "step": trainer.step_count,
                                           "time": m["time"], "path": snapshot.name})
            if time.monotonic() - last_ckpt >= checkpoint_seconds:
                arrays, meta = trainer.state_dict()
                path = save_step_checkpoint(out, trainer.step_count, arrays, meta, keep=3)
                write_jsonl(metrics_path, {"event": "checkpoint", "step": trainer.step_count,
                                           "path": path.name})
                last_ckpt = time.monotonic()
            if progress and (logged or minutes is None):
                fields = {"recon": m.get("recon_per_pixel", float("nan"))}
                if "valid_recon_nodropout" in m:
                    fields["valid"] = m["valid_recon_nodropout"]
                if "valid_acs_active" in m:
                    fields["acs"] = m["valid_acs_active"]
                bar.set(m["time"] if minutes is not None else done + 1, **fields)
    trainer.backend.synchronize()
    seconds = time.monotonic() - t_start
    trainer.save(out / "final.npz")
    n_steps = trainer.step_count - start_step
    summary = {"config": trainer.config.name, "seed": trainer.seed, "steps": trainer.step_count,
               "steps_this_run": n_steps, "seconds": round(seconds, 2),
               "images_per_second": round(n_steps * trainer.config.batch_size / max(seconds, 1e-9), 2),
               "valid_recon_nodropout": trainer.evaluate(), "rollbacks": len(trainer.events),
               "optimizer": trainer.optimizer_name, "device": trainer.backend.name,
               "best": best}
    if trainer.graph_info() is not None:
        summary["cuda_graph"] = trainer.graph_info()
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
