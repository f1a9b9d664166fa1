"""``lab serve``: the live dashboard (training sessions + Panel views) on 127.0.0.1."""
from __future__ import annotations

import os
import sys


def serve(args) -> int:
    # Stylesheets from this server, not a CDN (offline use; see widgets.app). Before bokeh loads.
    os.environ.setdefault("BOKEH_RESOURCES", "server")
    try:
        import panel  # noqa: F401, PLC0415
    except ImportError:
        print("lab serve needs Panel and bokeh: pip install -e '.[lab]'", file=sys.stderr)
        return 2
    from widgets.app import DashboardState, serve as run  # noqa: PLC0415
    state = DashboardState(args.checkpoint_dir)
    if not args.no_capsules:
        print(f"starting the capsule autoencoder ({args.config}) ...", file=sys.stderr, flush=True)
        state.start_capsules(args.config, seed=args.seed, start=not args.paused,
                             fake=args.config == "fake")
        if state.capsules.session is None:
            print(f"capsules: {state.capsules.note}", file=sys.stderr)
    if not args.no_rbm:
        print(f"starting the RBM ({args.rbm_algorithm}) ...", file=sys.stderr, flush=True)
        state.start_rbm(start=not args.paused, algorithm=args.rbm_algorithm,
                        n_hidden=args.rbm_hidden, seed=args.seed)
        if state.rbm.session is None:
            print(f"rbm: {state.rbm.note}", file=sys.stderr)
    if args.checkpoint:
        print(state.load_checkpoint(args.checkpoint, read_only=args.read_only), file=sys.stderr)
    print(f"dashboard: http://{args.address}:{args.port}/", file=sys.stderr, flush=True)
    try:
        run(state, address=args.address, port=args.port, show=not args.no_show)
    finally:
        state.close()
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="live dashboard: train and watch the capsule autoencoder and an RBM",
        description="Start the default training sessions (capsule autoencoder mnist-quick on "
                    "the CPU, an FPCD RBM on MNIST) and serve the dashboard on 127.0.0.1.")
    p.add_argument("--address", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5006, help="port (default 5006)")
    p.add_argument("--no-show", action="store_true", help="do not open a browser")
    p.add_argument("--config", default="mnist-quick", help="capsule config (default mnist-quick)")
    p.add_argument("--rbm-algorithm", default="fpcd", choices=["fpcd", "pcd", "cd", "mfcd", "pl"],
                   help="RBM training algorithm (default fpcd)")
    p.add_argument("--rbm-hidden", type=int, default=16,
                   help="RBM hidden units (default 16: exact log-likelihood; above 20 uses AIS)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--paused", action="store_true", help="build the sessions but do not start them")
    p.add_argument("--no-capsules", action="store_true", help="no capsule session")
    p.add_argument("--no-rbm", action="store_true", help="no RBM session")
    p.add_argument("--checkpoint", help="load this checkpoint into its tab at start")
    p.add_argument("--read-only", action="store_true", help="with --checkpoint: attach, no training")
    p.add_argument("--checkpoint-dir", help="where 'Save checkpoint' writes (default ./lab-checkpoints)")
    p.set_defaults(func=serve)
