"""``lab train rbm``: train a binary RBM of thesis chapter 3 and report its log-likelihood."""
from __future__ import annotations

import json
import os
import sys


def register(subparsers) -> None:
    from lab.cli import group  # noqa: PLC0415
    p = group(subparsers, "train", "Train a model").add_parser(
        "rbm", help="binary RBM: CD-k, MF-CD, PL, PCD or FPCD (thesis chapter 3)",
        description="Train a binary RBM (thesis ch. 3) and write DIR/rbm.npz (parameters, "
                    "particles) and DIR/summary.json (settings, timing, log-likelihoods).")
    p.add_argument("--data", default="mnist",
                   help="mnist (stochastically binarized, 3.3.2), outlines (3.3.5), or a .npy "
                        "file of 0/1 rows (or probabilities with --binarize)")
    p.add_argument("--hidden", type=int, default=500, help="number of hidden units")
    p.add_argument("--algorithm", default="pcd", choices=("cd", "mfcd", "pl", "pcd", "fpcd"))
    p.add_argument("--cd-k", type=int, default=1, help="Gibbs steps of cd/mfcd (CD-1, CD-10)")
    p.add_argument("--lr", type=float, default=0.01, help="initial learning rate (decays linearly to 0)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--fantasy", type=int, default=100, help="persistent chains (pcd/fpcd)")
    p.add_argument("--fast-lr", type=float, default=None, help="FPCD fast learning rate (default: --lr)")
    p.add_argument("--fast-decay", type=float, default=19 / 20)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--updates", type=int, default=None, help="number of updates")
    p.add_argument("--seconds", type=float, default=None, help="wall-clock budget")
    p.add_argument("--binarize", action="store_true",
                   help="treat a .npy file as probabilities and sample each minibatch")
    p.add_argument("--eval", default="auto", choices=("auto", "exact", "ais", "none"),
                   help="test log-likelihood: exact for up to 25 hidden units, else AIS")
    p.add_argument("--ais-runs", type=int, default=100)
    p.add_argument("--jobs", type=int, default=None, help="worker threads (default: automatic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None,
                   help="cpu, gpu or auto (default $LAB_DEVICE or cpu); on the GPU pcd/fpcd without "
                        "momentum use the fused CUDA update")
    p.add_argument("--out", default=None, help="run directory (default runs/rbm-ALGORITHM-HIDDEN)")
    p.set_defaults(func=run)


def _load(args):
    """(train, test, binarize) as float32 rows."""
    import numpy as np  # noqa: PLC0415
    if args.data == "mnist":
        from lab.undirected.experiments import mnist_data  # noqa: PLC0415
        d = mnist_data(args.seed)
        return d["train"][0], d["test"][0], True
    if args.data == "outlines":
        from lab.undirected.experiments import outline_data  # noqa: PLC0415
        d = outline_data()
        return d["train"], d["test"], False
    if not os.path.exists(args.data):
        raise FileNotFoundError(f"--data: no such file {args.data!r} (or use mnist / outlines)")
    X = np.load(args.data).astype(np.float32)
    X = X.reshape(len(X), -1)
    n_test = max(1, len(X) // 10)
    return X[n_test:], X[:n_test], args.binarize


def run(args) -> int:
    import time  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    from lab.backend import to_numpy  # noqa: PLC0415
    from lab.undirected import BinaryRBM  # noqa: PLC0415
    if args.updates is None and args.seconds is None:
        print("lab train rbm: give --updates N and/or --seconds S", file=sys.stderr)
        return 2
    try:
        train, test, binarize = _load(args)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        print(f"lab train rbm: {exc}", file=sys.stderr)
        return 2
    rbm = BinaryRBM(args.hidden, algorithm=args.algorithm, cd_k=args.cd_k, learning_rate=args.lr,
                    batch_size=args.batch_size, n_fantasy=args.fantasy,
                    fast_learning_rate=args.fast_lr, fast_decay=args.fast_decay,
                    weight_decay=args.weight_decay, momentum=args.momentum,
                    n_updates=args.updates, max_seconds=args.seconds, binarize=binarize,
                    visible_bias_init="data", n_jobs=args.jobs, random_state=args.seed,
                    device=args.device, verbose=True)
    from lab.backend import GPUUnavailableError  # noqa: PLC0415
    try:
        rbm.fit(train)
    except (ValueError, GPUUnavailableError) as exc:
        print(f"lab train rbm: {exc}", file=sys.stderr)
        return 2
    summary = {"params": {k: v for k, v in rbm.get_params().items()},
               "data": args.data, "n_train": int(len(train)), "n_test": int(len(test)),
               "n_updates": rbm.n_updates_, "train_seconds": round(rbm.train_seconds_, 2),
               "updates_per_second": round(rbm.n_updates_ / max(rbm.train_seconds_, 1e-9), 1)}
    method = args.eval
    if method == "auto":
        method = "exact" if min(args.hidden, train.shape[1]) <= 25 else "ais"
    if method != "none":
        if binarize:
            from lab.backend import RandomStream  # noqa: PLC0415
            from lab.undirected.algorithms import bernoulli  # noqa: PLC0415
            test = to_numpy(bernoulli(test, RandomStream(args.seed + 99)))
        t0 = time.perf_counter()
        lz = rbm.log_partition(method, n_runs=args.ais_runs) if method == "ais" else rbm.log_partition(method)
        summary.update(eval=method, log_z=lz.value, log_z_interval=[lz.lower, lz.upper],
                       log_z_seconds=round(time.perf_counter() - t0, 2),
                       test_log_likelihood=float(np.mean(-rbm.free_energy(test) - lz.value)))
    out = args.out or f"runs/rbm-{args.algorithm}-{args.hidden}"
    os.makedirs(out, exist_ok=True)
    arrays = {k: v for k, v in rbm.snapshot().items() if not isinstance(v, (int, float))}
    np.savez(os.path.join(out, "rbm.npz"), **arrays)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    print(json.dumps(summary, indent=1, default=str))
    return 0
