"""The experiments of thesis chapter 3 (figs 3.1-3.6) as functions returning their data.

Each ``figX_Y(quick=..., seed=...)`` returns a JSON-able dict: the configuration, one
record per training run, a summary, and the thesis's reference values where the text
gives them. Notebooks plot these; ``lab experiment NAME [--quick]`` prints a table and
writes the dict as JSON.

General set-up (3.3.1): minibatches of 100, learning rate decayed linearly to zero over
each run, runs bounded by wall time (the thesis compares algorithms at equal time), so
every point of a "vs training time" curve is a separate run. The thesis picked learning
rates (and, for the short runs, weight decay) with 30 validation runs per setting and
reported 10 test runs; the full variants here choose from a small grid on validation
data, the quick ones use fixed settings found that way on this machine and one run.

``quick=True`` versions finish in a few minutes on a two-core CPU; the full versions
take what they take (hours; meant for a GPU or a long night).
"""
from __future__ import annotations

import inspect
import json
import math
import os
import platform
import time

import numpy as np

from lab.backend import RandomStream, to_numpy
from lab.experiment_catalog import CHAPTER3 as DESCRIPTIONS
from lab.undirected.ais import quick_betas
from lab.undirected.classification import ClassificationRBM
from lab.undirected.mrf import FullyVisibleMRF
from lab.undirected.rbm import BinaryRBM

#: Numbers the thesis text states (figures without stated numbers have no entry).
THESIS = {
    "fig3.4": {"pl_test_ll": -5.35, "pcd_test_ll": -5.15, "exact_test_ll": -5.15,
               "train_entropy": 4.78, "train_minus_test_ll": 0.004},
    "fig3.5": {"best_weight_decay": {"mfcd": 1e-3, "cd1": 3e-4, "cd10": 1.3e-4, "pcd": 2.5e-5}},
    "fig3.6": {"fpcd_time_fraction_for_pcd_accuracy": 0.25,
               "best_hidden_9h": {"pcd": 700, "fpcd": 1200}},
}

#: algorithm labels of the figures -> estimator settings
ALGORITHM_SETTINGS = {
    "cd1": {"algorithm": "cd", "cd_k": 1},
    "cd10": {"algorithm": "cd", "cd_k": 10},
    "mfcd": {"algorithm": "mfcd", "cd_k": 1},
    "pcd": {"algorithm": "pcd"},
    "fpcd": {"algorithm": "fpcd"},
    "pl": {"algorithm": "pl"},
}


# ----------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------

def mnist_data(seed: int = 0):
    """Thesis 3.3.2: 50k/10k/10k, intensities as probabilities. Training images stay
    grey (each minibatch is binarized afresh during training); validation and test are
    binarized once with fixed seeds, so every model is scored on the same binary cases."""
    from lab.data import binarize, mnist_splits  # noqa: PLC0415
    splits = mnist_splits()
    train_x, train_y = splits["train"]
    out = {"train": ((train_x.reshape(len(train_x), -1) / np.float32(255)).astype(np.float32),
                     train_y.astype(np.int64))}
    for k, name in enumerate(("valid", "test")):
        x, y = splits[name]
        out[name] = (to_numpy(binarize(x.reshape(len(x), -1), RandomStream(10_000 + 17 * k + seed))),
                     y.astype(np.int64))
    return out


def patch_data():
    """Thesis 3.3.4: thresholded 5x5 MNIST patches as distinct patterns with counts."""
    from lab.data import codes_to_patches, patch_entropy, patch_histogram  # noqa: PLC0415
    out = {}
    for split in ("train", "valid", "test"):
        codes, counts = patch_histogram(split)
        out[split] = (codes_to_patches(codes).astype(np.float32), counts.astype(np.float64))
    out["train_entropy"] = float(patch_entropy("train"))
    return out


def outline_data(n_train: int = 50_000):
    """Thesis 3.3.5: outlines of rectangles and triangles (unlimited; ``n_train`` drawn)."""
    from lab.data import outlines, outlines_splits  # noqa: PLC0415
    from lab.data.outlines import TRAIN_START  # noqa: PLC0415
    splits = outlines_splits()
    flat = {k: v.reshape(len(v), -1).astype(np.float32) for k, v in splits.items()}
    if n_train != len(flat["train"]):
        imgs = outlines(n_train, start=TRAIN_START)
        flat["train"] = imgs.reshape(len(imgs), -1).astype(np.float32)
    return flat


# ----------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------

def machine_info() -> dict:
    info = {"python": platform.python_version(), "numpy": np.__version__,
            "cpus": os.cpu_count(), "loadavg": list(os.getloadavg())}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def _log(msg: str, verbose: bool) -> None:
    if verbose:
        print(msg, flush=True)


def _train_rbm(X, n_hidden, label, lr, seconds, seed, **extra):
    params = dict(n_hidden=n_hidden, learning_rate=lr, max_seconds=seconds, batch_size=100,
                  n_fantasy=100, binarize=extra.pop("binarize", True),
                  visible_bias_init="data", random_state=seed)
    params.update(ALGORITHM_SETTINGS[label])
    params.update(extra)
    return BinaryRBM(**params).fit(X)


def _run_record(model, label, seconds, lr, **fields) -> dict:
    rec = {"algorithm": label, "seconds": seconds, "learning_rate": lr,
           "n_updates": int(model.n_updates_), "train_seconds": round(model.train_seconds_, 3)}
    rec.update(fields)
    return rec


def _best(records, key, group=("algorithm", "seconds")):
    """For each group, the record with the greatest ``key`` (validation selection)."""
    best = {}
    for r in records:
        g = tuple(r[k] for k in group)
        if g not in best or r[key] > best[g][key]:
            best[g] = r
    return list(best.values())


def _curves(chosen, key, algorithms) -> dict:
    """Per algorithm, ``[[seconds, key], ...]`` of the chosen records, by duration."""
    ordered = sorted(chosen, key=lambda r: r["seconds"])
    return {a: [[r["seconds"], r[key]] for r in ordered if r["algorithm"] == a] for a in algorithms}


class SettingsError(ValueError):
    """Settings an experiment cannot take (unknown names, learning rates for algorithms
    it does not train); raised before any training."""


def _rate_grid(learning_rates, algorithms, default) -> dict:
    """The initial learning rates to try per algorithm: ``default`` with the entries of
    ``learning_rates`` ({algorithm: [rates]}) in place of its own."""
    if not learning_rates:
        return default
    unknown = sorted(set(learning_rates) - set(algorithms))
    if unknown:
        raise SettingsError(f"learning_rates names {unknown}, which this run does not train; "
                            f"its algorithms: {list(algorithms)}")
    grid = {**default, **{a: [float(r) for r in rates] for a, rates in learning_rates.items()}}
    empty = [a for a in algorithms if not grid.get(a)]
    if empty:
        raise SettingsError(f"learning_rates gives no rate for {empty}")
    return grid


# ----------------------------------------------------------------------------------
# fig 3.1: 25 hidden units, exact test log-likelihood vs training time
# ----------------------------------------------------------------------------------

#: initial learning rates: best of {0.01, 0.03, 0.1} on validation data in 15-second
#: runs on this (busy) machine, for every algorithm
FIG31_LR = {"cd1": 0.1, "cd10": 0.1, "mfcd": 0.1, "pcd": 0.1, "fpcd": 0.1}


def fig3_1(quick: bool = False, seed: int = 0, durations=None, algorithms=None,
           learning_rates=None, n_hidden: int = 25, verbose: bool = True) -> dict:
    """Exact test log-likelihood of 784x25 RBMs on binarized MNIST vs training time for
    CD-1, CD-10, MF-CD, PCD and FPCD (thesis fig 3.1; the thesis axis spans 4 minutes to
    3 days)."""
    durations = durations or ([5, 15] if quick else [60, 240, 960, 3840])
    algorithms = algorithms or ["cd1", "cd10", "mfcd", "pcd", "fpcd"]
    grid = _rate_grid(learning_rates, algorithms,
                      {a: [FIG31_LR[a]] for a in algorithms} if quick else
                      {a: [FIG31_LR[a] / 3, FIG31_LR[a], FIG31_LR[a] * 3] for a in algorithms})
    data = mnist_data(seed)
    X, (Xv, _), (Xt, _) = data["train"][0], data["valid"], data["test"]
    runs = []
    for seconds in durations:
        for label in algorithms:
            for lr in grid[label]:
                rbm = _train_rbm(X, n_hidden, label, lr, seconds, seed)
                t0 = time.perf_counter()
                log_z = rbm.log_partition("exact").value
                rec = _run_record(rbm, label, seconds, lr, log_z=log_z,
                                  valid_ll=float(-rbm.free_energy(Xv).mean() - log_z),
                                  test_ll=float(-rbm.free_energy(Xt).mean() - log_z),
                                  log_z_seconds=round(time.perf_counter() - t0, 2))
                runs.append(rec)
                _log(f"fig3.1 {label:5s} {seconds:6.0f}s lr={lr:<7g} updates={rec['n_updates']:6d} "
                     f"test LL={rec['test_ll']:9.3f}  (log Z {rec['log_z_seconds']}s)", verbose)
    chosen = _best(runs, "valid_ll")
    return {"name": "fig3.1", "quick": quick, "seed": seed, "n_hidden": n_hidden,
            "durations": durations, "runs": runs,
            "curves": _curves(chosen, "test_ll", algorithms),
            "machine": machine_info()}


# ----------------------------------------------------------------------------------
# fig 3.2: samples from 500-hidden RBMs trained with PCD and CD-1
# ----------------------------------------------------------------------------------

def fig3_2(quick: bool = False, seed: int = 0, seconds=None, n_samples: int = 100,
           n_steps: int = 1000, n_hidden: int = 500, verbose: bool = True) -> dict:
    """Train 784x500 RBMs with PCD and CD-1 and draw samples by long Gibbs chains from
    random starts (thesis fig 3.2), plus an AIS estimate of the test log-likelihood."""
    seconds = seconds or (45 if quick else 3600)
    betas = quick_betas(1000) if quick else None
    data = mnist_data(seed)
    X, (Xt, _) = data["train"][0], data["test"]
    out = {"name": "fig3.2", "quick": quick, "seed": seed, "n_hidden": n_hidden, "seconds": seconds,
           "n_steps": n_steps, "models": {}, "machine": machine_info()}
    for label, lr in (("pcd", 0.01), ("cd1", 0.05)):
        rbm = _train_rbm(X, n_hidden, label, lr, seconds, seed)
        t0 = time.perf_counter()
        samples = to_numpy(rbm.sample(n_samples, n_steps=n_steps, random_state=seed + 1,
                                      return_mean=True))
        sample_seconds = time.perf_counter() - t0
        lz = rbm.log_partition("ais", betas=betas, random_state=seed + 2)
        test_ll = float(-rbm.free_energy(Xt).mean() - lz.value)
        out["models"][label] = _run_record(
            rbm, label, seconds, lr, samples=np.round(samples, 3).tolist(),
            sample_seconds=round(sample_seconds, 2), ais_log_z=lz.value,
            ais_interval=[lz.lower, lz.upper], ais_betas=len(betas) if betas is not None else 14501,
            test_ll_ais=test_ll,
            sample_mean_intensity=float(samples.mean()),
            data_mean_intensity=float(X.mean()))
        _log(f"fig3.2 {label}: updates={rbm.n_updates_} AIS test LL={test_ll:.2f} "
             f"(log Z in [{lz.lower:.2f}, {lz.upper:.2f}]), samples' mean intensity "
             f"{samples.mean():.3f} vs data {X.mean():.3f}", verbose)
    return out


# ----------------------------------------------------------------------------------
# figs 3.3 and 3.6: classification RBMs
# ----------------------------------------------------------------------------------

#: initial learning rates: best on this machine in 24-second runs with 200 hidden units
#: ({0.1, 0.2} for CD/MF-CD, {0.05, 0.1} for PCD/FPCD; short runs like large rates)
FIG33_LR = {"cd1": 0.2, "cd10": 0.2, "mfcd": 0.2, "pcd": 0.1, "fpcd": 0.05}


def _train_clf(X, y, n_hidden, label, lr, seconds, seed):
    params = dict(n_hidden=n_hidden, learning_rate=lr, max_seconds=seconds, binarize=True,
                  visible_bias_init="data", random_state=seed)
    params.update(ALGORITHM_SETTINGS[label])
    return ClassificationRBM(**params).fit(X, y)


def fig3_3(quick: bool = False, seed: int = 0, durations=None, algorithms=None,
           n_hidden: int | None = None, learning_rates=None, verbose: bool = True) -> dict:
    """Test accuracy of classification RBMs (softmax label unit) vs training time for
    CD-1, CD-10, MF-CD, PCD and FPCD (thesis fig 3.3; axis 4 minutes to 3 days)."""
    durations = durations or ([8, 24] if quick else [240, 960, 3840, 15360])
    algorithms = algorithms or ["cd1", "cd10", "mfcd", "pcd", "fpcd"]
    n_hidden = n_hidden or (200 if quick else 500)
    grid = _rate_grid(learning_rates, algorithms,
                      {a: [FIG33_LR[a]] for a in algorithms} if quick else
                      {a: [FIG33_LR[a] / 3, FIG33_LR[a], FIG33_LR[a] * 3] for a in algorithms})
    data = mnist_data(seed)
    (X, y), (Xv, yv), (Xt, yt) = data["train"], data["valid"], data["test"]
    runs = []
    for seconds in durations:
        for label in algorithms:
            for lr in grid[label]:
                clf = _train_clf(X, y, n_hidden, label, lr, seconds, seed)
                rec = _run_record(clf, label, seconds, lr, n_hidden=n_hidden,
                                  valid_accuracy=clf.score(Xv, yv), test_accuracy=clf.score(Xt, yt))
                runs.append(rec)
                _log(f"fig3.3 {label:5s} {seconds:6.0f}s lr={lr:<7g} updates={rec['n_updates']:6d} "
                     f"test accuracy={rec['test_accuracy']:.4f}", verbose)
    chosen = _best(runs, "valid_accuracy")
    return {"name": "fig3.3", "quick": quick, "seed": seed, "n_hidden": n_hidden,
            "durations": durations, "runs": runs,
            "curves": _curves(chosen, "test_accuracy", algorithms),
            "machine": machine_info()}


def time_to_reach(curve, target):
    """First time at which a (seconds, score) curve reaches ``target``, interpolating
    linearly in log time; None when it never does."""
    pts = sorted(curve)
    for i, (t, s) in enumerate(pts):
        if s >= target:
            if i == 0:
                return float(t)
            t0, s0 = pts[i - 1]
            frac = (target - s0) / (s - s0) if s != s0 else 1.0
            return float(math.exp(math.log(t0) + frac * (math.log(t) - math.log(t0))))
    return None


def fig3_6(quick: bool = False, seed: int = 0, durations=None, hidden_sizes=None,
           learning_rates=None, verbose: bool = True) -> dict:
    """PCD vs FPCD classification RBMs with the number of hidden units chosen on
    validation data for each training time (thesis fig 3.6: FPCD needs about a quarter
    of PCD's time for the same accuracy, and prefers about twice as many hidden units)."""
    durations = durations or ([8, 24] if quick else [240, 960, 3840, 15360])
    hidden_sizes = hidden_sizes or ([100, 300] if quick else [300, 500, 700, 1000, 1200])
    grid = _rate_grid(learning_rates, ("pcd", "fpcd"),
                      {"pcd": [FIG33_LR["pcd"]], "fpcd": [FIG33_LR["fpcd"]]})
    data = mnist_data(seed)
    (X, y), (Xv, yv), (Xt, yt) = data["train"], data["valid"], data["test"]
    runs = []
    for seconds in durations:
        for label in ("pcd", "fpcd"):
            for n_hidden in hidden_sizes:
                for lr in grid[label]:
                    clf = _train_clf(X, y, n_hidden, label, lr, seconds, seed)
                    rec = _run_record(clf, label, seconds, lr, n_hidden=n_hidden,
                                      valid_accuracy=clf.score(Xv, yv),
                                      test_accuracy=clf.score(Xt, yt))
                    runs.append(rec)
                    _log(f"fig3.6 {label:4s} {seconds:6.0f}s hidden={n_hidden:5d} lr={lr:<6g} "
                         f"updates={rec['n_updates']:6d} valid={rec['valid_accuracy']:.4f} "
                         f"test={rec['test_accuracy']:.4f}", verbose)
    chosen = sorted(_best(runs, "valid_accuracy"), key=lambda r: r["seconds"])
    curves = _curves(chosen, "test_accuracy", ("pcd", "fpcd"))
    best_hidden = {a: {str(r["seconds"]): r["n_hidden"] for r in chosen if r["algorithm"] == a}
                   for a in ("pcd", "fpcd")}
    pcd_final = curves["pcd"][-1][1]
    t_fpcd = time_to_reach(curves["fpcd"], pcd_final)
    return {"name": "fig3.6", "quick": quick, "seed": seed, "durations": durations,
            "hidden_sizes": hidden_sizes, "runs": runs, "curves": curves,
            "best_hidden": best_hidden,
            "fpcd_time_fraction_for_pcd_accuracy": (t_fpcd / durations[-1]) if t_fpcd else None,
            "thesis": THESIS["fig3.6"], "machine": machine_info()}


# ----------------------------------------------------------------------------------
# fig 3.4: the fully visible MRF on 5x5 patches
# ----------------------------------------------------------------------------------

FIG34_LR = {"pl": {2: 0.05, 8: 0.02}, "pcd": 0.1}


def fig3_4(quick: bool = False, seed: int = 0, pl_durations=None, pcd_durations=None,
           exact_seconds=None, verbose: bool = True) -> dict:
    """Exact test log-likelihood per case of a 25-unit fully connected MRF on thresholded
    5x5 MNIST patches trained with PL, PCD and the exact gradient (thesis fig 3.4:
    PL -5.35, PCD and exact -5.15, data entropy 4.78 nats)."""
    pl_durations = pl_durations or ([2, 8] if quick else [8, 16, 32, 64, 128])
    pcd_durations = pcd_durations or ([8, 32] if quick else [8, 16, 32, 64, 128, 256, 512])
    exact_seconds = exact_seconds or (40 if quick else 1800)
    data = patch_data()
    (X, w), (Xv, wv), (Xt, wt) = data["train"], data["valid"], data["test"]
    runs = []

    def evaluate(mrf, label, seconds, lr):
        rec = _run_record(mrf, label, seconds, lr,
                          valid_ll=mrf.score(Xv, sample_weight=wv),
                          test_ll=mrf.score(Xt, sample_weight=wt),
                          train_ll=mrf.score(X, sample_weight=w))
        runs.append(rec)
        _log(f"fig3.4 {label:5s} {seconds:6.0f}s lr={lr:<6g} updates={rec['n_updates']:7d} "
             f"test LL={rec['test_ll']:.4f} train LL={rec['train_ll']:.4f}", verbose)

    for seconds in pl_durations:
        # the best PL learning rate is roughly inversely proportional to the run's length
        lrs = ([FIG34_LR["pl"].get(seconds, 0.16 / seconds)] if quick else
               [0.5 / seconds, 0.16 / seconds, 0.05 / seconds])
        for lr in lrs:
            mrf = FullyVisibleMRF(algorithm="pl", learning_rate=lr, max_seconds=seconds,
                                  bias_init="data", random_state=seed).fit(X, sample_weight=w)
            evaluate(mrf, "pl", seconds, lr)
    for seconds in pcd_durations:
        for lr in ([FIG34_LR["pcd"]] if quick else [0.03, 0.1, 0.3]):
            mrf = FullyVisibleMRF(algorithm="pcd", learning_rate=lr, max_seconds=seconds,
                                  bias_init="data", random_state=seed).fit(X, sample_weight=w)
            evaluate(mrf, "pcd", seconds, lr)
    # the exact gradient, followed by L-BFGS: plain ascent on this badly conditioned
    # objective needs hundreds of its half-second steps
    mrf = FullyVisibleMRF(algorithm="exact", exact_optimizer="lbfgs", bias_init="data",
                          max_seconds=exact_seconds, random_state=seed).fit(X, sample_weight=w)
    evaluate(mrf, "exact", exact_seconds, 0.0)
    chosen = _best(runs, "valid_ll")
    best = {a: max((r for r in chosen if r["algorithm"] == a), key=lambda r: r["valid_ll"])
            for a in ("pl", "pcd", "exact")}
    summary = {f"{a}_test_ll": best[a]["test_ll"] for a in best}
    summary["train_entropy"] = data["train_entropy"]
    summary["pcd_train_minus_test_ll"] = best["pcd"]["train_ll"] - best["pcd"]["test_ll"]
    return {"name": "fig3.4", "quick": quick, "seed": seed, "runs": runs,
            "curves": _curves(chosen, "test_ll", ("pl", "pcd", "exact")),
            "summary": summary, "thesis": THESIS["fig3.4"], "machine": machine_info()}


# ----------------------------------------------------------------------------------
# fig 3.5: 100 hidden units on the artificial outlines, AIS, weight decay
# ----------------------------------------------------------------------------------

#: initial learning rates: best without weight decay in 15-second runs on this machine
#: (of {0.05, 0.1, 0.2}; PCD of {0.02, 0.05, 0.1})
FIG35_LR = {"mfcd": 0.1, "cd1": 0.2, "cd10": 0.2, "pcd": 0.1}


def fig3_5(quick: bool = False, seed: int = 0, durations=None, algorithms=None,
           weight_decays=None, n_hidden: int = 100, n_ais_runs: int = 100,
           verbose: bool = True) -> dict:
    """AIS test log-likelihood of 100-hidden RBMs on rectangle-and-triangle outlines
    for MF-CD, CD-1, CD-10 and PCD, with and without weight decay (thesis fig 3.5 and
    the weight-decay discussion of 3.3.5)."""
    durations = durations or ([15] if quick else [60, 240, 960, 3840])
    algorithms = algorithms or ["mfcd", "cd1", "cd10", "pcd"]
    best_wd = THESIS["fig3.5"]["best_weight_decay"]
    weight_decays = weight_decays or {a: [0.0, best_wd[a]] for a in algorithms}
    betas = quick_betas(2000) if quick else None
    data = outline_data(50_000 if quick else 500_000)
    X, Xt = data["train"], data["test"]
    runs = []
    for seconds in durations:
        for label in algorithms:
            for wd in weight_decays[label]:
                rbm = _train_rbm(X, n_hidden, label, FIG35_LR[label], seconds, seed,
                                 binarize=False, weight_decay=wd)
                lz = rbm.log_partition("ais", n_runs=n_ais_runs, betas=betas, random_state=seed + 3)
                test_ll = float(-rbm.free_energy(Xt).mean() - lz.value)
                rec = _run_record(rbm, label, seconds, FIG35_LR[label], weight_decay=wd,
                                  ais_log_z=lz.value, ais_interval=[lz.lower, lz.upper],
                                  test_ll_ais=test_ll,
                                  ais_seconds=round(lz.seconds, 2))
                runs.append(rec)
                _log(f"fig3.5 {label:5s} {seconds:6.0f}s wd={wd:<8g} updates={rec['n_updates']:6d} "
                     f"AIS test LL={test_ll:8.3f} (log Z ±3σ: [{lz.lower:.2f}, {lz.upper:.2f}])",
                     verbose)
    return {"name": "fig3.5", "quick": quick, "seed": seed, "n_hidden": n_hidden,
            "ais_runs": n_ais_runs,
            "image_size": int(math.isqrt(X.shape[1])), "ais_betas": len(betas) if betas is not None else 14501,
            "runs": runs, "thesis": THESIS["fig3.5"], "machine": machine_info()}


EXPERIMENTS = {
    "fig3.1": fig3_1,
    "fig3.2": fig3_2,
    "fig3.3": fig3_3,
    "fig3.4": fig3_4,
    "fig3.5": fig3_5,
    "fig3.6": fig3_6,
}


def settings_of(name: str) -> list[str]:
    """The keyword arguments of experiment ``name`` that ``run(settings=...)`` may set."""
    fixed = ("quick", "seed", "verbose")
    return [p for p in inspect.signature(EXPERIMENTS[name]).parameters if p not in fixed]


def run(name: str, quick: bool = False, out: str | None = None, seed: int = 0,
        verbose: bool = True, settings: dict | None = None) -> dict:
    """Run experiment ``name``, with ``settings`` (keyword arguments of its function, e.g.
    ``{"durations": [60, 240]}``) in place of the defaults; write
    ``<out>/<name>[-quick][-custom].json`` when ``out`` is given (``-custom`` with settings,
    which the file records)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(settings_of(name)))
    if unknown:
        raise SettingsError(f"{name} has no setting {', '.join(unknown)}; "
                            f"its settings: {', '.join(settings_of(name))}")
    start = time.perf_counter()
    result = EXPERIMENTS[name](quick=quick, seed=seed, verbose=verbose, **settings)
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    if settings:
        result["settings"] = settings
    if out:
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, f"{name}{'-quick' if quick else ''}{'-custom' if settings else ''}.json")
        with open(path, "w") as f:
            json.dump(result, f, indent=1, default=_json_default)
        result["path"] = path
    return result


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-able: {type(o)}")
