"""What the notebooks share: the run mode, BLAS threads, cached training runs, the data.

Every notebook starts with a parameter cell reading ``LAB_NOTEBOOK_MODE``:

``smoke``    seconds: a few dozen updates, tiny evaluations (CI runs every notebook so)
``default``  a few minutes on a 2-core CPU (the chapter-2 model trains for 4 minutes,
             once, and is reused by every chapter-2 notebook)
``full``     the thesis-scale run (``mnist-thesis``; hours on a CPU, see ``shared_run``)

Training runs go through ``lab.capsules.run.train_run`` (the loop behind ``lab train
capsules``), so a notebook's run directory is the CLI's: ``metrics.jsonl``,
``final.npz``, ``summary.json``. They are cached under ``runs/`` at the repository root
(git-ignored) and reused while the recipe (config, budget, seed) matches and the
checkpoint loads; pass ``retrain=True`` after changing the model code.
"""
from __future__ import annotations

import contextlib
import json
import importlib.util
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("lab") is None:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))
RUNS = REPO / "runs"
RESULTS = REPO / "benchmarks" / "results"
MODES = ("smoke", "default", "full")

#: The chapter-2 model every chapter-2 notebook reads (thesis 2.6), per mode.
#: ``steps`` makes the smoke run deterministic; ``minutes`` bounds the others by wall time.
SHARED = {
    "smoke": dict(config="mnist-quick", steps=20, minutes=None),
    "default": dict(config="mnist-quick", steps=None, minutes=4.0),
    # Thesis scale (2.6.1): the thesis trained for days on a GPU; a CPU gets through a
    # fraction of that in 12 hours. The run resumes where it stopped, and a run made
    # with `lab train capsules --config mnist-thesis` (runs/capsules-mnist-thesis) is
    # used as it is.
    "full": dict(config="mnist-thesis", steps=None, minutes=12 * 60.0),
}


def get_mode() -> str:
    mode = os.environ.get("LAB_NOTEBOOK_MODE", "default")
    if mode not in MODES:
        raise ValueError(f"LAB_NOTEBOOK_MODE={mode!r}: expected one of {', '.join(MODES)}")
    return mode


def limit_threads(n: int | None = None) -> int:
    """Cap BLAS threads for the rest of the kernel (default ``LAB_BLAS_THREADS`` or 1).

    On a small shared CPU OpenBLAS's one-thread-per-core default is many times slower
    as soon as other processes compete for the cores (see ``lab.capsules.run``).
    """
    n = int(n or os.environ.get("LAB_BLAS_THREADS", 1))
    import numpy  # noqa: F401  (threadpoolctl only sees libraries already loaded)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return n
    threadpool_limits(limits=n, user_api="blas")
    return n


@contextlib.contextmanager
def _locked(directory: Path):
    """One trainer per run directory, even when notebooks run side by side."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as f:
        try:
            import fcntl
            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: no lock, same behaviour otherwise
            pass
        yield


def capsule_run(name: str, config: str = "mnist-quick", *, steps: int | None = None,
                minutes: float | None = None, seed: int = 0, optimizer: str | None = None,
                overrides: dict | None = None, resume: bool = False, retrain: bool = False,
                progress: bool = True) -> Path:
    """The directory of a finished capsule training run ``runs/<name>``, trained now
    unless a finished run of the same recipe is there.

    ``resume``: continue an unfinished run in the directory (thesis-scale runs)."""
    from lab.capsules import find_checkpoint, get_config
    from lab.capsules.run import train_run

    cfg = get_config(config, **(overrides or {}))
    out = RUNS / name
    recipe = {"config": cfg.to_dict(), "steps": steps, "minutes": minutes, "seed": seed,
              "optimizer": optimizer}
    stamp = out / "notebook.json"
    with _locked(out):
        if not retrain and stamp.is_file() and json.loads(stamp.read_text()) == recipe:
            try:
                find_checkpoint(out)
                return out
            except FileNotFoundError:
                pass
        if not resume:
            for old in [*out.glob("*.npz"), out / "metrics.jsonl", out / "summary.json", stamp]:
                old.unlink(missing_ok=True)
        t0 = time.monotonic()
        train_run(cfg, out, seed=seed, steps=steps, minutes=minutes, optimizer=optimizer,
                  resume=resume, progress=progress, checkpoint_seconds=300.0)
        stamp.write_text(json.dumps(recipe, indent=2))
        print(f"trained {name} ({config}) in {time.monotonic() - t0:.0f} s")
    return out


def shared_run(mode: str | None = None, **kwargs) -> Path:
    """The chapter-2 model's run directory for ``mode`` (trained on first use).

    smoke/default: ``runs/notebook-mnist-quick/<mode>``. full: the CLI's
    ``runs/capsules-mnist-thesis`` when it holds a checkpoint (train it yourself with
    ``lab train capsules --config mnist-thesis --minutes M``), else a 12-hour
    resumable run in ``runs/notebook-mnist-thesis``.
    """
    mode = mode or get_mode()
    spec = SHARED[mode]
    if mode == "full":
        from lab.capsules import find_checkpoint
        cli_run = RUNS / "capsules-mnist-thesis"
        try:
            find_checkpoint(cli_run)
            return cli_run
        except FileNotFoundError:
            return capsule_run("notebook-mnist-thesis", spec["config"], steps=spec["steps"],
                               minutes=spec["minutes"], resume=True, **kwargs)
    return capsule_run(f"notebook-mnist-quick/{mode}", spec["config"], steps=spec["steps"],
                       minutes=spec["minutes"], **kwargs)


def shared_model(mode: str | None = None, **kwargs):
    """(model, run directory) of the chapter-2 model (``lab.capsules.load``)."""
    import lab.capsules
    run = shared_run(mode, **kwargs)
    return lab.capsules.load(run), run


def data_for(model_or_config) -> dict:
    """``lab.capsules.data.load_data`` for a model or config (images in [0, 1])."""
    from lab.capsules.data import load_data
    config = getattr(model_or_config, "config", model_or_config)
    return load_data(config)


def summary(run: Path) -> dict:
    p = Path(run) / "summary.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def experiment(name: str, mode: str | None = None, rerun: bool = False, **kwargs) -> dict:
    """Run chapter 3's experiment ``name`` (``lab.undirected.experiments``) and return its dict.

    ``kwargs`` go to the experiment function; any it does not take are reported and left
    out (smoke mode asks for smaller models where the function allows it). Results of
    default/full runs are cached in ``runs/notebook-undirected/<mode>/<name>.json`` by
    their arguments; smoke runs always run.
    """
    import inspect
    from lab.undirected import experiments as ex
    mode = mode or get_mode()
    fn = ex.EXPERIMENTS[name]
    accepted = inspect.signature(fn).parameters
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown:
        print(f"note: {fn.__name__} takes no {', '.join(unknown)}; using its defaults")
    call = {k: v for k, v in kwargs.items() if k in accepted}
    cache = RUNS / "notebook-undirected" / mode / f"{name}.json"
    key = json.dumps(call, sort_keys=True, default=str)
    if mode != "smoke" and not rerun and cache.is_file():
        stored = json.loads(cache.read_text())
        if stored.get("notebook_call") == key:
            print(f"reusing {cache.relative_to(REPO)} (rerun=True to train again)")
            return stored
    t0 = time.monotonic()
    result = fn(**call)
    result["wall_seconds"] = round(time.monotonic() - t0, 1)
    result["notebook_call"] = key
    if mode != "smoke":
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(result, default=_jsonable))
    return result


def _jsonable(o):
    if hasattr(o, "tolist"):      # numpy arrays and scalars
        return o.tolist()
    raise TypeError(f"not JSON-able: {type(o)}")


def committed(name: str) -> dict | None:
    """The committed result ``benchmarks/results/<name>.json`` (a run made outside the
    notebooks, e.g. a medium-length experiment), or None when the file is not there."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None
