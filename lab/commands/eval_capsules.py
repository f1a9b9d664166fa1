"""``lab eval capsules DIR``: the numbers of thesis 2.6.2 and 2.6.6 as JSON."""
from __future__ import annotations

import json


def register(subparsers) -> None:
    from lab.cli import group  # noqa: PLC0415
    p = group(subparsers, "eval", "Evaluate a trained model").add_parser(
        "capsules", help="capsule autoencoder: reconstruction error, 25-label error, k-means(10)",
        description="Evaluate a trained capsule autoencoder (run directory or checkpoint).")
    p.add_argument("path", help="run directory (final.npz or newest ckpt-*.npz) or a .npz file")
    p.add_argument("--n-test", type=int, default=None, help="use the first N test images")
    p.add_argument("--n-train", type=int, default=None,
                   help="use the first N training images for the 25-label protocol")
    p.add_argument("--which", choices=("final", "best"), default="final",
                   help="in a run directory: final.npz (default) or best.npz (lowest held-out error)")
    p.add_argument("--seed", type=int, default=0, help="dropout seed of the with-dropout error")
    p.add_argument("--no-kmeans", action="store_true")
    p.add_argument("--code-search", type=int, default=0, metavar="N",
                   help="also find the first N test images' codes by gradient descent through "
                        "the decoder (what the encoder costs, thesis 2.2)")
    p.add_argument("--code-search-steps", type=int, default=300, metavar="STEPS")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads")
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=run)


def run(args) -> int:
    from lab.capsules.evaluate import evaluate_checkpoint  # noqa: PLC0415
    result = evaluate_checkpoint(args.path, args.which, n_test=args.n_test, n_train=args.n_train,
                                 seed=args.seed, kmeans=not args.no_kmeans, threads=args.threads,
                                 data_path=args.data_dir, code_search_images=args.code_search,
                                 code_search_steps=args.code_search_steps)
    print(json.dumps(result, indent=2))
    return 0
