"""``lab train capsules``: train a capsule autoencoder of thesis chapter 2."""
from __future__ import annotations

import json
import sys


def register(subparsers) -> None:
    from lab.cli import group  # noqa: PLC0415
    from lab.capsules.configs import config_names  # noqa: PLC0415
    p = group(subparsers, "train", "Train a model").add_parser(
        "capsules", help="capsule autoencoder (thesis chapter 2)",
        description="Train a capsule autoencoder (thesis ch. 2); writes DIR/metrics.jsonl, "
                    "DIR/ckpt-*.npz, DIR/final.npz and DIR/summary.json.")
    p.add_argument("--config", default=None, choices=config_names(),
                   help="default: mnist-quick, or with --resume the checkpoint's")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget")
    p.add_argument("--steps", type=int, default=None, help="number of minibatch updates")
    p.add_argument("--out", default=None, help="run directory (default runs/capsules-CONFIG)")
    p.add_argument("--seed", type=int, default=None, help="default: 0, or with --resume the checkpoint's")
    p.add_argument("--optimizer", choices=("conservative", "adam"), default=None,
                   help="default: the config's (conservative for mnist-thesis, as in 2.5.3)")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu", "auto"),
                   help="cpu (default), gpu (CuPy; fails if no GPU can run) or auto "
                        "(the GPU when usable)")
    p.add_argument("--host-random", action="store_true",
                   help="draw the CPU run's random numbers on the GPU too (same seed: same dropout, "
                        "manager noise and minibatch order as --device cpu; slower; fresh runs only)")
    p.add_argument("--no-graph", dest="graph", action="store_false",
                   help="GPU: issue every step's kernels from Python instead of replaying the step "
                        "recorded as a CUDA graph (the default with the conservative optimizer)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in DIR, with its config, seed and "
                        "optimizer (--config, --seed, --optimizer and --set, where given, must equal "
                        "the checkpoint's, except --set eval_every, plateau_patience and "
                        "encoder_step_scale)")
    p.add_argument("--checkpoint-seconds", type=float, default=60.0,
                   help="save DIR/ckpt-STEP.npz this often (the newest 3 are kept)")
    p.add_argument("--keep-every", type=int, default=None, metavar="STEPS",
                   help="also keep the state every STEPS steps as DIR/snapshot-STEP.npz, never "
                        "deleted (evaluate one with lab eval capsules DIR/snapshot-STEP.npz)")
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS threads (default 1: faster than 2 on a busy 2-core machine)")
    p.add_argument("--data-dir", default=None, help="data directory (default: LAB_DATA_DIR/cache)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="override a config field, e.g. --set batch_size=200 (with --resume: "
                        "eval_every or plateau_patience only)")
    p.set_defaults(func=run)


def parse_overrides(items) -> dict:
    """``["KEY=JSON", ...]`` (``--set``) -> config overrides; a value that is not JSON stays
    a string (``--set optimizer=adam``)."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--set {item!r}: expected KEY=JSON, e.g. --set batch_size=200")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run(args) -> int:
    from lab.capsules.configs import ResumeConfigError, get_config  # noqa: PLC0415
    from lab.capsules.run import check_run_options, limit_blas_threads, train_run  # noqa: PLC0415
    try:
        check_run_options(args.minutes, args.steps, args.resume, args.host_random, args.keep_every)
    except ValueError as exc:
        print(f"lab train capsules: {exc}", file=sys.stderr)
        return 2
    from lab.backend import GPUUnavailableError, get_backend  # noqa: PLC0415
    name = args.config or "mnist-quick"
    out = args.out or f"runs/capsules-{name}"
    try:
        overrides = parse_overrides(args.set)
        config = get_config(name, **overrides)     # checks the --set keys
        if args.resume and args.config is None:
            config = None                           # the checkpoint's
    except ValueError as exc:
        print(f"lab train capsules: {exc}", file=sys.stderr)
        return 2
    try:
        backend = get_backend(args.device)
    except GPUUnavailableError as exc:
        print(f"lab train capsules: {exc}", file=sys.stderr)
        return 2
    try:
        with limit_blas_threads(args.threads):
            summary = train_run(config, out, seed=args.seed, minutes=args.minutes, steps=args.steps,
                                optimizer=args.optimizer, resume=args.resume,
                                checkpoint_seconds=args.checkpoint_seconds, data_path=args.data_dir,
                                device=backend, host_random=args.host_random,
                                graph=None if args.graph else False, keep_every=args.keep_every,
                                resume_overrides=overrides if args.resume else None)
    except ResumeConfigError as exc:        # raised before the data is loaded
        print(f"lab train capsules: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0
