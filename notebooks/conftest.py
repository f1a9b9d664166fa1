"""pytest settings for ``pytest --nbval-lax notebooks/``.

The kernels nbval starts inherit this process's environment, so a plain pytest run
executes the notebooks in ``smoke`` mode (seconds each) unless ``LAB_NOTEBOOK_MODE``
says otherwise, with single-threaded BLAS (see ``_shared.limit_threads``).
"""
import os

os.environ.setdefault("LAB_NOTEBOOK_MODE", "smoke")
# Kernels run in notebooks/: a relative data directory must not change meaning there.
if os.environ.get("LAB_DATA_DIR"):
    os.environ["LAB_DATA_DIR"] = os.path.abspath(os.environ["LAB_DATA_DIR"])
os.environ.setdefault("LAB_BLAS_THREADS", "1")
