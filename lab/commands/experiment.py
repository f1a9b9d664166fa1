"""``lab experiment NAME [--quick] [--set KEY=JSON ...] [--out DIR]``: the experiments of
thesis chapter 3."""
from __future__ import annotations

import json
import sys

from lab.experiment_catalog import CHAPTER3 as _NAMES  # import-light: `lab --help` stays fast


def register(subparsers) -> None:
    import argparse  # noqa: PLC0415
    listing = "\n".join(f"  {k}  {v}" for k, v in _NAMES.items())
    p = subparsers.add_parser(
        "experiment", help="run a thesis chapter 3 experiment (" + ", ".join(_NAMES) + ")",
        description="Run an experiment of thesis chapter 3, print a table, and write the "
                    "results as JSON to --out.\n\nexperiments:\n" + listing,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=list(_NAMES), metavar="NAME", help="one of: " + ", ".join(_NAMES))
    p.add_argument("--quick", action="store_true",
                   help="the few-minute CPU variant (short runs, fixed learning rates)")
    p.add_argument("--out", default="runs/experiments", help="directory for NAME[-quick].json")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", dest="settings",
                   help="a keyword argument of the experiment's function in place of its default, "
                        "the value as JSON (repeatable), e.g. --set 'durations=[60, 240]' "
                        "--set 'learning_rates={\"fpcd\": [0.1]}'; the file is then "
                        "NAME[-quick]-custom.json and records the settings")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no per-run lines")
    p.set_defaults(func=run)


def _table(result: dict) -> str:
    runs = result.get("runs") or list(result.get("models", {}).values())
    if not runs:
        return ""
    skip = {"samples", "ais_interval"}
    keys = [k for k in runs[0] if k not in skip]
    rows = [[_fmt(r.get(k)) for k in keys] for r in runs]
    widths = [max(len(k), *(len(row[i]) for row in rows)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.1f}"
    return str(v)


def parse_settings(items) -> dict:
    """``["KEY=JSON", ...]`` -> ``{KEY: value}``; a clear error for anything else."""
    from lab.undirected.experiments import SettingsError  # noqa: PLC0415
    settings = {}
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise SettingsError(f"--set {item!r}: expected KEY=VALUE, e.g. --set 'durations=[60, 240]'")
        try:
            settings[key] = json.loads(text)
        except json.JSONDecodeError:
            raise SettingsError(f"--set {item!r}: the value must be JSON, e.g. "
                                f"--set 'algorithms=[\"pcd\", \"fpcd\"]'") from None
    return settings


def run(args) -> int:
    from lab.undirected.experiments import SettingsError, run as run_experiment  # noqa: PLC0415
    from lab.undirected.parallel import blas_single_thread  # noqa: PLC0415
    try:
        settings = parse_settings(args.settings)
        # one BLAS thread: the estimators bring their own worker threads (see parallel.py)
        with blas_single_thread():
            result = run_experiment(args.name, quick=args.quick, out=args.out, seed=args.seed,
                                    verbose=not args.quiet, settings=settings)
    except (ImportError, SettingsError) as exc:  # missing data loaders, bad settings
        print(f"lab experiment {args.name}: {exc}", file=sys.stderr)
        return 2
    print(_table(result))
    extra = {k: v for k, v in result.items()
             if k in ("summary", "curves", "thesis", "best_hidden", "wall_seconds", "path",
                      "fpcd_time_fraction_for_pcd_accuracy")}
    print(json.dumps(extra, indent=1, default=str))
    return 0
