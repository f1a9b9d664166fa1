"""How much do viewers slow a training session? (issue 6: at most 5%.)

For each trainer, three ways to run the same number of steps from the same seed:

* ``bare``: ``trainer.step()`` in a plain loop (no session) - the session's own cost;
* ``unobserved``: a ``TrainingSession`` with the dashboard's snapshot rate, nobody looking;
* ``observed``: the same with viewers attached the way the dashboard and notebooks
  attach: ``--pollers`` browser-like viewers polling the snapshot every 300 ms and
  drawing their frames (the RBM tab's fantasy/fast-overlay/filter mosaics and curve
  increments), one ipywidgets-like subscriber rendering PNG frames, and a viewer that
  attaches and detaches once a second.

Wall-clock time is what a user feels, but on a shared machine it is dominated by other
processes; so the process CPU time of each run is recorded too (load from elsewhere
barely moves it): the viewers' CPU cost relative to the training's own CPU is the
overhead that remains on an otherwise idle machine.

The most load-independent figure is the viewers' own CPU: their threads' CPU seconds
(``time.thread_time``) over the paired unobserved run's CPU seconds. It bounds the
slowdown on an idle machine (if each viewer CPU second held the training up, GIL and
one core); the pass/fail line uses it, next to the observed wall and CPU ratios.

Runs are paired and interleaved (unobserved then observed, then the other order) so
that machine load drifts hit both runs of a pair alike; the overhead is the median over
pairs of observed / unobserved - 1 (the ratio of the medians is reported too). Observed and unobserved runs must
also produce identical metrics (checked). Writes ``benchmarks/results/session_cpu.json``.

    python benchmarks/bench_session.py [--repeats 9] [--steps 150] [--capsule-steps 16] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.session import FakeTrainer, TrainingSession  # noqa: E402
from widgets.images import tile, to_png  # noqa: E402
from widgets.views import RBMView, ReconstructionsView, cached_frame  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "session_cpu.json"


def rbm_trainer(seed: int):
    from lab.session.adapters import RBMSessionTrainer
    kwargs = dict(algorithm="fpcd", n_hidden=16, learning_rate=0.05, eval_every=100, seed=seed)
    try:
        return RBMSessionTrainer(n_train=10000, **kwargs), "MNIST (LAB_DATA_DIR)"
    except Exception:  # no MNIST here: synthetic blobs of the same size
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:28, 0:28]
        imgs = np.stack([np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 18.0)
                         for cx, cy in rng.uniform(8, 20, (2000, 2))]).astype(np.float32)
        return RBMSessionTrainer(images=(imgs, imgs[:500]), **kwargs), "synthetic 28x28 blobs"


_CAPSULE_DATA: dict = {}


def capsule_trainer(seed: int):
    from lab.capsules.configs import get_config
    from lab.capsules.trainer import CapsuleTrainer
    from lab.session.adapters import CapsuleSessionTrainer
    config = get_config("mnist-quick")
    if not _CAPSULE_DATA:
        try:
            from lab.capsules.data import load_data
            d = load_data(config)
            _CAPSULE_DATA.update(train=d["train"][0], valid=d["valid"][0], name="MNIST (LAB_DATA_DIR)")
        except Exception:
            rng = np.random.default_rng(0)
            imgs = rng.random((2000, 28, 28)).astype(np.float32) ** 4
            _CAPSULE_DATA.update(train=imgs, valid=imgs[:1000], name="synthetic noise images")
    trainer = CapsuleTrainer(config, _CAPSULE_DATA["train"], _CAPSULE_DATA["valid"], seed=seed)
    return CapsuleSessionTrainer(config, seed=seed, trainer=trainer), _CAPSULE_DATA["name"]


TRAINERS = {
    "rbm-fpcd": (lambda seed: rbm_trainer(seed), {"snapshot_every": 1, "snapshot_interval": 0.5}),
    "capsules-mnist-quick": (lambda seed: capsule_trainer(seed),
                             {"snapshot_every": 1, "snapshot_interval": 4.0}),
    "fake": (lambda seed: (FakeTrainer(dim=784, seed=seed, work=128), "numpy toy"),
             {"snapshot_every": 1, "snapshot_interval": 0.5}),
}


_RECON = ReconstructionsView()


def frames(snap) -> int:
    """What one dashboard viewer draws per new snapshot: the RBM tab's three mosaics, or
    the capsule tab's reconstructions (through a private model copy, fig 2.14) and
    templates. Viewers share frames of the same snapshot (``widgets.views.cached_frame``)."""
    n = 0
    if "templates" in snap:
        made = (_RECON.frame(snap), cached_frame(snap, "templates", lambda s: tile(s["templates"])))
    else:
        made = (RBMView.fantasy(snap), RBMView.fast_overlay(snap), RBMView.filters(snap))
    for f in made:
        if f is not None:
            n += int(f.size)
    return n


class Viewers:
    """The attached viewers; ``cpu`` adds up the CPU seconds their own threads spent
    (``time.thread_time``), a measure of their cost that other processes barely move."""

    def __init__(self, session: TrainingSession, pollers: int):
        self.session, self.stop = session, threading.Event()
        self.drawn = 0
        self.cpu = 0.0
        self._cpu_lock = threading.Lock()
        self.threads = [threading.Thread(target=self._poll, daemon=True) for _ in range(pollers)]
        self.threads.append(threading.Thread(target=self._churn, daemon=True))
        self.token = session.subscribe(self._png)

    def _add(self, c0):
        with self._cpu_lock:
            self.cpu += time.thread_time() - c0

    def _poll(self):
        version, cursor = 0, {}
        while not self.stop.wait(0.3):
            c0 = time.thread_time()
            snap = self.session.snapshot
            _, cursor = self.session.history.since(cursor)
            if snap is not None and snap.version != version:
                version = snap.version
                self.drawn += frames(snap) > 0
            self._add(c0)

    def _png(self, snap):
        c0 = time.thread_time()
        f = RBMView.fantasy(snap) if "fantasy" in snap else snap.get("image")
        if "templates" in snap:
            f = cached_frame(snap, "templates", lambda s: tile(s["templates"]))
        if f is not None:
            to_png(np.asarray(f), scale=2)
            self.drawn += 1
        self._add(c0)

    def _churn(self):
        while not self.stop.wait(1.0):
            c0 = time.thread_time()
            token = self.session.subscribe(lambda snap: None)
            self.session.unsubscribe(token)
            self._add(c0)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(5)
        self.session.unsubscribe(self.token)


def run(kind: str, mode: str, steps: int, seed: int, pollers: int):
    make, opts = TRAINERS[kind]
    trainer, data = make(seed)
    if mode == "bare":
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            trainer.step()
        return time.perf_counter() - t0, time.process_time() - c0, None, data, (0, 0.0)
    session = TrainingSession(trainer, **opts)
    drawn, viewer_cpu = 0, 0.0
    if mode == "observed":
        with Viewers(session, pollers) as v:
            t0, c0 = time.perf_counter(), time.process_time()
            session.start(max_steps=steps)
            session.join()
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        drawn, viewer_cpu = v.drawn, v.cpu
    else:
        t0, c0 = time.perf_counter(), time.process_time()
        session.start(max_steps=steps)
        session.join()
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    names = [n for n in session.history.names() if n != "seconds"]   # timing, not a result
    metrics = {n: session.history.series(n)[1] for n in names}
    session.close()
    return dt, cpu, metrics, data, (drawn, viewer_cpu)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--pollers", type=int, default=3)
    ap.add_argument("--trainers", default="rbm-fpcd,capsules-mnist-quick",
                    help="comma-separated: rbm-fpcd, capsules-mnist-quick, fake")
    ap.add_argument("--capsule-steps", type=int, default=16, help="steps per capsule run")
    ap.add_argument("--quick", action="store_true", help="2 repeats of 40 (RBM) or 4 (capsule) steps: a smoke run")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.steps, args.capsule_steps = 2, 40, 4
    load_before = os.getloadavg()
    report = {"benchmark": "session viewer overhead", "machine": platform.machine(),
              "cpus": os.cpu_count(), "python": platform.python_version(),
              "numpy": np.__version__, "steps": args.steps, "repeats": args.repeats,
              "pollers": args.pollers, "load_average_before": load_before, "trainers": {}}
    ok = True
    for kind in args.trainers.split(","):
        times = {"bare": [], "unobserved": [], "observed": []}
        cpus = {"bare": [], "unobserved": [], "observed": []}
        identical, drawn, data, viewer_cpu = True, [], None, []
        run(kind, "unobserved", 3 if kind.startswith("capsules") else 20, 0, args.pollers)  # warm-up
        for r in range(args.repeats):
            order = ("unobserved", "observed") if r % 2 == 0 else ("observed", "unobserved")
            if r < 3:
                order += ("bare",)
            results = {}
            for mode in order:
                n = args.capsule_steps if kind.startswith("capsules") else args.steps
                dt, cpu, metrics, data, d = run(kind, mode, n, seed=r, pollers=args.pollers)
                times[mode].append(dt)
                cpus[mode].append(cpu)
                results[mode] = metrics
                if mode == "observed":
                    drawn.append(d[0])
                    viewer_cpu.append(d[1])
            same = all(np.array_equal(results["unobserved"][n], results["observed"][n])
                       for n in results["unobserved"])
            identical &= same and set(results["unobserved"]) == set(results["observed"])
            print(f"{kind} repeat {r}: " + ", ".join(f"{m} {times[m][-1]:.2f}s ({cpus[m][-1]:.2f} cpu)"
                                                       for m in order)
                  + f", identical metrics: {same}", flush=True)
        med = {m: statistics.median(v) for m, v in times.items()}
        ratios = [o / u for o, u in zip(times["observed"], times["unobserved"])]
        overhead = statistics.median(ratios) - 1.0
        cpu_ratios = [o / u for o, u in zip(cpus["observed"], cpus["unobserved"])]
        cpu_overhead = statistics.median(cpu_ratios) - 1.0
        # Upper bound of the slowdown if every viewer CPU second held the training up
        # (one core, GIL-bound): viewer CPU / the paired unobserved run's CPU.
        bound = statistics.median([v / u for v, u in zip(viewer_cpu, cpus["unobserved"])])
        session_cost = med["unobserved"] / med["bare"] - 1.0
        entry = {"data": data, "seconds": times, "median_seconds": med,
                 "steps": args.capsule_steps if kind.startswith("capsules") else args.steps,
                 "viewer_overhead": overhead, "pair_ratios": ratios,
                 "viewer_overhead_ratio_of_medians": med["observed"] / med["unobserved"] - 1.0,
                 "session_overhead_vs_bare_loop": session_cost,
                 "cpu_seconds": cpus, "viewer_cpu_overhead": cpu_overhead, "cpu_pair_ratios": cpu_ratios,
                 "viewer_thread_cpu_seconds": viewer_cpu,
                 "viewer_cost_bound": bound, "within_5_percent_bound": bound <= 0.05,
                 "session_cpu_overhead_vs_bare_loop": statistics.median(cpus["unobserved"])
                 / statistics.median(cpus["bare"]) - 1.0,
                 "viewer_frames_drawn": drawn, "identical_metrics_observed_vs_unobserved": identical,
                 "within_5_percent_wall": overhead <= 0.05,
                 "within_5_percent_cpu": cpu_overhead <= 0.05}
        report["trainers"][kind] = entry
        ok &= identical and bound <= 0.05
        print(f"{kind}: viewers {100 * overhead:+.1f}% wall, {100 * cpu_overhead:+.1f}% process cpu, "
              f"viewer threads' own cpu {100 * bound:.1f}% of the training's "
              f"(median {med['observed']:.2f}s vs "
              f"{med['unobserved']:.2f}s), session vs bare loop {100 * session_cost:+.1f}%, "
              f"identical metrics: {identical}", flush=True)
    report["load_average_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
