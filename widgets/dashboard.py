"""The dashboard as a Panel app: ``panel serve widgets/dashboard.py`` (or ``lab serve``).

Bokeh runs this file once per browser session; the training sessions are built once
per process by ``widgets.app.default_state()`` (capsule autoencoder ``mnist-quick`` on
the CPU, and an FPCD RBM on MNIST) and shared by every browser tab.
Environment: ``LAB_SERVE_CONFIG`` (capsule config), ``LAB_CHECKPOINT_DIR``.
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("BOKEH_RESOURCES", "server")  # no CDN: see widgets.app

try:
    import lab  # noqa: F401
except ImportError:  # run from a checkout without ``pip install -e .``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import panel as pn  # noqa: E402

from widgets.app import build_app, default_state  # noqa: E402

pn.extension()
build_app(default_state()).servable(title="capsule-lab")
