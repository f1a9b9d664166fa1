"""Thresholded 5x5 MNIST patches: the data of the fully visible MRF (thesis 3.3.4).

All 70,000 MNIST images (official training set, then official test set) give
(28 - 5 + 1)^2 = 576 patches each, binarised "by thresholding at 1/2" (a pixel is on
when ``value / 255 > 1/2``, i.e. ``value >= 128``).

Count. The thesis writes "70,000 times (28 - 5 + 1)^2 = 4,032,000 patches", but the
product is 40,320,000 (4,032,000 would be 7,000 images). We use all 70,000 images:
the text says so, and the entropy check agrees: the training split's empirical entropy
here is 4.784 nats, the thesis's "approximately 4.78" (footnote 7), while the patches
of 7,000 images give about 4.76.

Split. The thesis says "this data set was split into training (60%), validation (20%),
and test (20%) sets" right after forming the patches, and does not say how. We split
the patches themselves (not the images), by a fixed pseudo-random permutation of the
patch index ``i -> (A * i) mod N`` with ``A`` the integer nearest ``N (sqrt 5 - 1) / 2``
coprime to ``N`` (a Weyl / golden-ratio sequence): pure integer arithmetic, so it never
depends on the numpy version, it costs no sort, and it spreads every split evenly over
images and positions (each image gives about 60% of its patches to training).
Sizes: 24,192,000 / 8,064,000 / 8,064,000. Overlapping patches of one image can land
in different splits, consistent with the thesis's train/test gap of only 0.004 nats.

Storage. A patch is 25 bits, packed into a uint32 code with bit ``5*r + c`` holding
pixel (row r, column c) of the patch: 161 MB for all codes, where 0/1 uint8 patches
would take 1 GB and float32 4 GB, so work with codes and histograms and unpack only
minibatches (``codes_to_patches``). The codes are computed once and cached in
``<cache>/derived/mnist_patches5x5_<key>.npz``, ``key`` a hash of the source files'
sha256 and of this recipe.
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from lab.data._files import cache_dir, save_npz_atomic
from lab.data.mnist import FILES, load_mnist

SIZE = 5
PER_IMAGE = (28 - SIZE + 1) ** 2            # 576 positions
N_IMAGES = 70000
TOTAL = N_IMAGES * PER_IMAGE                # 40,320,000 (the thesis misprints 4,032,000)
SPLIT_SIZES = {"train": TOTAL * 3 // 5, "valid": TOTAL // 5, "test": TOTAL // 5}
THRESHOLD = 127                             # on when value > 127, i.e. value / 255 > 1/2
_WEYL = 24919129                           # nearest N (sqrt 5 - 1) / 2 coprime to N
_WEYL_INV = pow(_WEYL, -1, TOTAL)
_CHUNK = 1 << 22
_RECIPE = f"mnist-patches5x5-v1|value>127|weyl-{_WEYL}|60/20/20"
CACHE_KEY = hashlib.sha256((_RECIPE + "|" + "|".join(s for s, _ in FILES.values()))
                           .encode()).hexdigest()[:16]

_memo: dict[str, dict[str, np.ndarray]] = {}


def patches_to_codes(patches) -> np.ndarray:
    """Pack 0/1 patches ``(..., 25)`` or ``(..., 5, 5)`` into uint32 codes ``(...)``."""
    p = np.asarray(patches)
    if p.shape[-2:] == (SIZE, SIZE):
        p = p.reshape(*p.shape[:-2], SIZE * SIZE)
    if p.shape[-1:] != (SIZE * SIZE,):
        raise ValueError(f"patches must have shape (..., 25) or (..., 5, 5), got {p.shape}")
    weights = np.uint32(1) << np.arange(SIZE * SIZE, dtype=np.uint32)
    return ((p != 0).astype(np.uint32) * weights).sum(axis=-1, dtype=np.uint32)


def codes_to_patches(codes) -> np.ndarray:
    """Unpack uint32 codes ``(n,)`` into uint8 0/1 patches ``(n, 25)`` (row-major 5x5)."""
    codes = np.asarray(codes, dtype=np.uint32)
    return ((codes[..., None] >> np.arange(SIZE * SIZE, dtype=np.uint32)) & 1).astype(np.uint8)


def _split_indices(lo: int, hi: int) -> np.ndarray:
    """Patch indices (image-major) at permuted positions ``lo..hi-1`` of the fixed order."""
    pos = np.arange(lo, hi, dtype=np.uint64)
    return (pos * np.uint64(_WEYL_INV)) % np.uint64(TOTAL)


def _split_bounds(split: str) -> tuple[int, int]:
    start = 0
    for name, n in SPLIT_SIZES.items():
        if name == split:
            return start, start + n
        start += n
    raise ValueError(f"unknown patch split {split!r}: expected train, valid, test or all")


def _image_codes(images: np.ndarray) -> np.ndarray:
    """Codes of every 5x5 window of ``images`` (n, 28, 28): uint32 (n, 24, 24)."""
    on = (images > THRESHOLD).astype(np.uint32)
    m = 28 - SIZE + 1
    rows = on[:, :, 0:m].copy()          # 5-bit codes of each row segment first, then stack rows
    for c in range(1, SIZE):
        rows |= on[:, :, c:c + m] << np.uint32(c)
    codes = rows[:, 0:m].copy()
    for r in range(1, SIZE):
        codes |= rows[:, r:r + m] << np.uint32(SIZE * r)
    return codes


def _build(path=None, **kwargs) -> dict[str, np.ndarray]:
    train, _ = load_mnist("train", path, **kwargs)
    test, _ = load_mnist("test", path, **kwargs)
    codes = np.concatenate([_image_codes(train).ravel(), _image_codes(test).ravel()])
    del train, test
    out = {}
    for name in SPLIT_SIZES:
        lo, hi = _split_bounds(name)
        out[name] = np.empty(hi - lo, dtype=np.uint32)
        for start in range(lo, hi, _CHUNK):  # chunks keep the uint64 indices small
            stop = min(start + _CHUNK, hi)
            out[name][start - lo:stop - lo] = codes[_split_indices(start, stop)]
    return out


def _valid(arrays) -> bool:
    return all(name in arrays and arrays[name].dtype == np.uint32
               and arrays[name].shape == (n,) and int(arrays[name].max()) < 1 << 25
               for name, n in SPLIT_SIZES.items())


def cache_file() -> Path:
    return cache_dir() / "derived" / f"mnist_patches5x5_{CACHE_KEY}.npz"


def _codes(path=None, **kwargs) -> dict[str, np.ndarray]:
    f = cache_file()
    key = str(f)
    if key in _memo:
        return _memo[key]
    arrays = None
    if f.is_file():
        try:
            with np.load(f, allow_pickle=False) as z:
                arrays = {name: z[name] for name in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            arrays = None
        if arrays is not None and not _valid(arrays):
            arrays = None  # a derived file: a bad one is rebuilt from verified MNIST
    if arrays is None:
        arrays = _build(path, **kwargs)
        try:
            save_npz_atomic(f, **arrays)
        except OSError:
            pass  # a read-only cache only costs recomputation
    for a in arrays.values():
        a.flags.writeable = False
    _memo.clear()
    _memo[key] = arrays
    return arrays


def mnist_patch_codes(split: str = "train", path=None, **kwargs) -> np.ndarray:
    """Packed 5x5 patches of thesis 3.3.4 as read-only uint32 codes ``(n,)``.

    ``split`` is train (24,192,000), valid (8,064,000), test (8,064,000) or all (the
    three concatenated, 40,320,000). ``path``/``kwargs`` go to ``load_mnist`` on the first build.
    """
    arrays = _codes(path, **kwargs)
    if split == "all":
        return np.concatenate([arrays[name] for name in SPLIT_SIZES])
    _split_bounds(split)
    return arrays[split]


def mnist_patches(split: str = "train", index=None, path=None, **kwargs) -> np.ndarray:
    """Thresholded 5x5 patches of ``split`` as uint8 0/1 ``(n, 25)``, row-major (3.3.4).

    ``index`` (an int array or slice, e.g. a minibatch) unpacks only those rows: the
    whole training split unpacked takes 605 MB.
    """
    codes = mnist_patch_codes(split, path, **kwargs)
    return codes_to_patches(codes if index is None else codes[index])


def mnist_patch_sources(split: str = "train",
                        index=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where patches of ``split`` come from: ``(image, row, col)`` of the top-left pixel.

    ``index`` selects positions within the split (default: all of them). ``image``
    indexes the 70,000 MNIST images, official training set first (0-59,999), then the
    official test set (60,000-69,999).
    """
    lo, hi = (0, TOTAL) if split == "all" else _split_bounds(split)
    if index is None:
        idx = _split_indices(lo, hi)
    else:
        index = np.asarray(index, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= hi - lo):
            raise IndexError(f"patch index out of range for split {split!r} of {hi - lo}")
        idx = (index.astype(np.uint64) + np.uint64(lo)) * np.uint64(_WEYL_INV) % np.uint64(TOTAL)
    image, pos = np.divmod(idx.astype(np.int64), PER_IMAGE)
    row, col = np.divmod(pos, 28 - SIZE + 1)
    return image, row, col


def patch_histogram(split: str = "train", path=None, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """The empirical distribution of ``split``: sorted distinct codes (uint32) and counts.

    For the exact MRF likelihood over all 2^25 states (thesis 3.3.4) a dense table is
    ``np.zeros(1 << 25, np.int32)`` with ``table[codes] = counts``.
    """
    codes, counts = np.unique(mnist_patch_codes(split, path, **kwargs), return_counts=True)
    return codes, counts


def patch_entropy(split: str = "train", path=None, **kwargs) -> float:
    """Entropy in nats of the empirical patch distribution of ``split`` (thesis 3.3.4).

    The thesis's footnote 7 treats the data set as a mixture of delta distributions and
    reports about 4.78 nats for the training data distribution; here train gives 4.784.
    """
    _, counts = patch_histogram(split, path, **kwargs)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())
