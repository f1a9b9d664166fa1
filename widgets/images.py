"""Image helpers shared by every front end: mosaics (tiles) and PNG bytes, numpy only."""
from __future__ import annotations

import struct
import zlib

import numpy as np


def as_images(a) -> np.ndarray:
    """(N, H, W) float32 from (N, H, W), (N, 1, H, W), (N, M, H, W) (channel mean) or (H, W)."""
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 2:
        return a[None]
    if a.ndim == 4:
        return a.mean(axis=1)
    if a.ndim != 3:
        raise ValueError(f"expected images (N,H,W), got shape {a.shape}")
    return a


def normalize(a, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Scale to [0, 1] (per call: min/max unless given)."""
    a = np.asarray(a, dtype=np.float32)
    lo = float(np.nanmin(a)) if lo is None else lo
    hi = float(np.nanmax(a)) if hi is None else hi
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo < 1e-12:
        return np.zeros_like(a)
    return np.clip((a - lo) / (hi - lo), 0, 1)


def tile(images, ncols: int | None = None, pad: int = 1, fill: float = 1.0,
         per_image: bool = False) -> np.ndarray:
    """A (rows*(H+pad)-pad, cols*(W+pad)-pad) float32 mosaic of ``images`` in row-major order.

    ``per_image`` rescales each image to [0, 1] on its own (templates, filters);
    otherwise values are clipped to [0, 1]. Row 0 is the top row.
    """
    imgs = as_images(images)
    n, h, w = imgs.shape
    if per_image:
        imgs = np.stack([normalize(i) for i in imgs]) if n else imgs
    else:
        imgs = np.clip(imgs, 0, 1)
    ncols = int(ncols or max(1, int(np.ceil(np.sqrt(max(n, 1))))))
    nrows = max(1, int(np.ceil(n / ncols)))
    out = np.full((nrows * (h + pad) - pad, ncols * (w + pad) - pad), fill, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, ncols)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = imgs[i]
    return out


def grid(rows: list[list[np.ndarray]], pad: int = 1, fill: float = 1.0) -> np.ndarray:
    """A mosaic from a table of equally sized 2-D images (rows of columns)."""
    flat = [img for row in rows for img in row]
    ncols = max(len(r) for r in rows)
    padded = []
    for row in rows:
        padded.extend(list(row) + [np.full_like(flat[0], fill)] * (ncols - len(row)))
    return tile(np.stack(padded), ncols=ncols, pad=pad, fill=fill)


def mismatch(original, reconstruction) -> np.ndarray:
    """0.5 + (reconstruction - original) / 2: grey where equal (fig 2.14's third column)."""
    return np.clip(0.5 + 0.5 * (np.asarray(reconstruction) - np.asarray(original)), 0, 1)


def to_png(image, scale: int = 1) -> bytes:
    """8-bit greyscale PNG of a 2-D array in [0, 1] (black = 0), no imaging library needed."""
    a = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    a8 = (a * 255 + 0.5).astype(np.uint8)
    if scale > 1:
        a8 = np.repeat(np.repeat(a8, scale, axis=0), scale, axis=1)
    h, w = a8.shape
    raw = b"".join(b"\x00" + a8[r].tobytes() for r in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b""))
