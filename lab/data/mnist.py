"""MNIST (LeCun & Cortes, 1998): the data set of thesis sections 3.3.2-3.3.4.

The idx files are read from a local copy or downloaded (see ``lab.data._files`` for
the search order) and always verified: the idx header (magic number, dimensions), the
byte count, and the sha256 of the *uncompressed* bytes, which is the same for every
mirror even where the gzip bytes differ.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from lab.data._files import (DataError, DataNotFoundError, cache_dir, download, find_file,
                             not_found_message, sha256_bytes)

#: Canonical mirrors (yann.lecun.com itself now refuses most downloads).
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

#: name -> (sha256 of the uncompressed idx bytes, array shape); values from the data README.
FILES = {
    "train-images-idx3-ubyte": ("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                                (60000, 28, 28)),
    "train-labels-idx1-ubyte": ("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                                (60000,)),
    "t10k-images-idx3-ubyte": ("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                               (10000, 28, 28)),
    "t10k-labels-idx1-ubyte": ("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
                               (10000,)),
}
SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

# Verified arrays by (file, size, mtime): tests and the patch builder load MNIST often.
_memo: dict[tuple, np.ndarray] = {}


def read_idx(path: str | os.PathLike, name: str) -> np.ndarray:
    """Read and verify idx file ``path`` (gzipped or not) as MNIST file ``name``.

    Raises ``DataError`` naming the file for a truncated gzip stream, a wrong magic
    number or dimensions, a wrong byte count, or a sha256 mismatch.
    """
    path = Path(path)
    sha, shape = FILES[name]
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise DataError(f"{path}: truncated or corrupt gzip data ({exc})") from exc
    ndim = len(shape)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated: {len(raw)} bytes, shorter than the idx header")
    if raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise DataError(f"{path}: wrong idx magic number 0x{raw[:4].hex()} for {name} "
                        f"(expected 0x0000080{ndim}: unsigned bytes, {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if dims != shape:
        raise DataError(f"{path}: idx header says shape {dims}, expected {shape} for {name}")
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "too long"
        raise DataError(f"{path}: {kind}: {len(raw)} bytes after decompression, "
                        f"expected {expected}")
    got = sha256_bytes(raw)
    if got != sha:
        raise DataError(f"{path}: sha256 mismatch (corrupt or tampered copy of {name}): "
                        f"got {got}, expected {sha}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def mnist_file(name: str, path=None, *, download_missing: bool = True, opener=None,
               progress: bool = True) -> tuple[str, Path, np.ndarray]:
    """``(origin, file, array)`` for MNIST file ``name``: found, verified, or downloaded."""
    found = find_file("mnist", (name + ".gz", name), path)
    if found is None:
        if not download_missing:
            raise DataNotFoundError(not_found_message(f"MNIST file {name}", "mnist", path))
        dest = cache_dir() / "mnist" / (name + ".gz")
        try:
            download([m + name + ".gz" for m in MIRRORS], dest, lambda p: read_idx(p, name),
                     opener=opener, desc=f"MNIST {name}", progress=progress)
        except DataNotFoundError as exc:
            raise DataNotFoundError(not_found_message(f"MNIST file {name}", "mnist", path,
                                                      f"\nDownload failed: {exc}")) from exc
        found = ("download", dest)
    origin, f = found
    st = f.stat()
    key = (str(f.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _memo:
        if len(_memo) >= 8:
            _memo.clear()
        _memo[key] = read_idx(f, name)
    return origin, f, _memo[key]


def load_mnist(split: str = "train", path=None, *, download: bool = True, opener=None,
               progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The official MNIST ``split`` ("train": 60,000 or "test": 10,000 images), thesis 3.3.2.

    Returns ``(images uint8 (N, 28, 28), labels uint8 (N,))``, fresh writable copies.
    ``path`` is a directory searched first; ``download=False`` raises
    ``DataNotFoundError`` instead of fetching a missing file.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown MNIST split {split!r}: expected 'train' or 'test' "
                         "(mnist_splits() gives the thesis's train/valid/test)")
    out = [mnist_file(name, path, download_missing=download, opener=opener,
                      progress=progress)[2].copy() for name in SPLITS[split]]
    return out[0], out[1]


def mnist_splits(path=None, **kwargs) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Thesis 3.3.2's split: train = first 50,000 official training images, valid = the
    last 10,000, test = the official 10,000 test images; each ``(images, labels)``."""
    x, y = load_mnist("train", path, **kwargs)
    xt, yt = load_mnist("test", path, **kwargs)
    return {"train": (x[:50000], y[:50000]), "valid": (x[50000:], y[50000:]), "test": (xt, yt)}
