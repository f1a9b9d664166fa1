import os

import numpy as np
import pytest

from lab.backend import gpu_available


def pytest_collection_modifyitems(config, items):
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="no usable GPU (CuPy missing or cannot run a kernel)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def data_dir():
    """The local data directory (CI: ../shared/data) or None when unset."""
    return os.environ.get("LAB_DATA_DIR")
