"""The artificial data of thesis 3.3.5: outlines of rectangles and triangles.

The thesis says only that the images combine "the outlines of rectangles and
triangles" and that there is "an unlimited amount of it" (modelled by an RBM with 100
hidden units); it gives neither the image size nor the set sizes. Our choices:

* ``size`` 16 (256 visible units) by default; any size >= 8 works.
* Each image is the union (pixelwise OR) of one axis-aligned rectangle outline (sides
  of at least 4 pixels) and one triangle outline (vertices on the pixel grid, no edge
  shorter than 3 pixels, area at least ``size`` pixels), lines one pixel wide.
* The data is an endless sequence: image ``k`` of seed ``s`` is always the same,
  whatever ``n`` or batch size is asked for (fixed chunks of ``CHUNK`` images, each
  drawn from its own ``SeedSequence([s, chunk])`` stream).
* ``outlines_splits``: validation = images 0..9,999, test = 10,000..19,999, and a fixed
  training set of 50,000 from 20,000 on; ``outline_batches(start=TRAIN_START)`` extends
  training into the unlimited stream without touching the held-out images.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

CHUNK = 1024
SIZE = 16
N_VALID, N_TEST, N_TRAIN = 10000, 10000, 50000
TRAIN_START = N_VALID + N_TEST


def _draw_lines(img: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> None:
    """Set the pixels of segments ``p0[i] -> p1[i]`` ((n, 2) row, col) in ``img[i]``.

    DDA rasterisation: ``max(|drow|, |dcol|) + 1`` evenly spaced points, rounded, give
    an 8-connected line one pixel wide.
    """
    n, size = len(img), img.shape[-1]
    p0, p1 = p0.astype(float), p1.astype(float)
    steps = np.abs(p1 - p0).max(1)
    t = np.minimum(np.arange(size)[None, :], steps[:, None]) / np.maximum(steps, 1)[:, None]
    pts = np.rint(p0[:, None, :] + t[..., None] * (p1 - p0)[:, None, :]).astype(np.intp)
    rows = np.broadcast_to(np.arange(n)[:, None], pts.shape[:2])
    img[rows, pts[..., 0], pts[..., 1]] = 1


def _rectangles(rng, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Opposite corners (n, 2) each, sides of at least 4 pixels."""
    def sides():
        a, b = rng.integers(0, size, n), rng.integers(0, size, n)
        bad = np.abs(a - b) < 3
        while bad.any():
            a[bad], b[bad] = rng.integers(0, size, bad.sum()), rng.integers(0, size, bad.sum())
            bad = np.abs(a - b) < 3
        return np.minimum(a, b), np.maximum(a, b)
    y0, y1 = sides()
    x0, x1 = sides()
    return np.stack([y0, x0], 1), np.stack([y1, x1], 1)


def _triangles(rng, n: int, size: int) -> np.ndarray:
    """Vertices (n, 3, 2) with every edge >= 3 pixels and area >= ``size`` pixels."""
    def ok(v):
        e = v - np.roll(v, 1, axis=1)
        edges = np.sqrt((e.astype(float) ** 2).sum(-1)).min(1)
        d1, d2 = v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]
        area2 = np.abs(d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0])
        return (edges >= 3) & (area2 >= 2 * size)
    v = rng.integers(0, size, (n, 3, 2))
    bad = ~ok(v)
    while bad.any():
        v[bad] = rng.integers(0, size, (int(bad.sum()), 3, 2))
        bad = ~ok(v)
    return v


def _chunk(seed: int, index: int, size: int) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, size, index])))
    img = np.zeros((CHUNK, size, size), dtype=np.uint8)
    a, b = _rectangles(rng, CHUNK, size)
    corners = [a, np.stack([a[:, 0], b[:, 1]], 1), b, np.stack([b[:, 0], a[:, 1]], 1)]
    for k in range(4):
        _draw_lines(img, corners[k], corners[(k + 1) % 4])
    v = _triangles(rng, CHUNK, size)
    for k in range(3):
        _draw_lines(img, v[:, k], v[:, (k + 1) % 3])
    return img


def outlines(n: int, size: int = SIZE, seed: int = 0, start: int = 0,
             dtype=np.uint8) -> np.ndarray:
    """Images ``start .. start+n-1`` of the endless outline sequence of ``seed`` (thesis 3.3.5).

    Returns binary ``(n, size, size)`` images as ``dtype`` (uint8 or float32 0/1); the
    same arguments always give the same images.
    """
    if size < 8:
        raise ValueError(f"outlines: size must be at least 8, got {size}")
    if n < 0 or start < 0:
        raise ValueError("outlines: n and start must be non-negative")
    first, last = start // CHUNK, (start + n - 1) // CHUNK if n else start // CHUNK - 1
    chunks = [_chunk(int(seed), c, size) for c in range(first, last + 1)]
    out = np.concatenate(chunks) if chunks else np.zeros((0, size, size), np.uint8)
    off = start - first * CHUNK
    return out[off:off + n].astype(dtype, copy=False)


def outline_batches(batch_size: int, size: int = SIZE, seed: int = 0, start: int = TRAIN_START,
                    dtype=np.float32) -> Iterator[np.ndarray]:
    """An endless iterator of fresh minibatches (by default after the held-out images)."""
    k = start
    while True:
        yield outlines(batch_size, size, seed, k, dtype)
        k += batch_size


def outlines_splits(seed: int = 0, size: int = SIZE, dtype=np.uint8) -> dict[str, np.ndarray]:
    """Fixed ``train`` (50,000), ``valid`` (10,000) and ``test`` (10,000) sets (our sizes)."""
    return {"train": outlines(N_TRAIN, size, seed, TRAIN_START, dtype),
            "valid": outlines(N_VALID, size, seed, 0, dtype),
            "test": outlines(N_TEST, size, seed, N_VALID, dtype)}
