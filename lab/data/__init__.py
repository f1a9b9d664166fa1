"""Data sets of thesis section 3.3 (and the Olivetti faces standing in for the TFD, 2.7).

* ``load_mnist``, ``mnist_splits``: MNIST, verified, thesis 3.3.2's 50k/10k/10k split.
* ``binarize``: a fresh Bernoulli sample of grey images each call (3.3.2).
* ``mnist_patches``, ``mnist_patch_codes``, ``patch_histogram``, ``patch_entropy``:
  thresholded 5x5 patches for the fully visible MRF (3.3.4).
* ``outlines``, ``outline_batches``, ``outlines_splits``: rectangles and triangles (3.3.5).
* ``load_olivetti``: the faces.

Files are searched in ``path=``, ``$LAB_DATA_DIR``, the user cache, then downloaded;
see ``lab.data._files``. Any bad copy raises ``DataError`` naming the file.
"""
from lab.data._files import DataError, DataNotFoundError, cache_dir
from lab.data.binarize import binarize
from lab.data.mnist import load_mnist, mnist_splits
from lab.data.olivetti import load_olivetti
from lab.data.outlines import outline_batches, outlines, outlines_splits
from lab.data.patches import (codes_to_patches, mnist_patch_codes, mnist_patch_sources,
                              mnist_patches, patch_entropy, patch_histogram, patches_to_codes)

__all__ = [
    "DataError", "DataNotFoundError", "cache_dir",
    "load_mnist", "mnist_splits", "load_olivetti", "binarize",
    "mnist_patches", "mnist_patch_codes", "mnist_patch_sources", "patch_histogram",
    "patch_entropy", "patches_to_codes", "codes_to_patches",
    "outlines", "outline_batches", "outlines_splits",
]
