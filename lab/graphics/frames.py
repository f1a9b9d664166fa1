"""Coordinate frames of the 2-D graphics decoder (thesis 2.3.2, "Multiple coordinate frames").

Conventions used by every module of ``lab.graphics``:

* **Unit squares.** The world frame (which is also the camera frame, thesis footnote
  11) and every template (object) frame are the unit square. A point is a pair
  ``(p0, p1)`` in **array order**: ``p0`` runs down the rows of an image, ``p1`` runs
  along the columns. Output pixel ``(i, j)`` of an ``H x W`` canvas is the point
  ``((i + 0.5) / H, (j + 0.5) / W)``; template pixel ``(r, c)`` of a ``T0 x T1``
  template is the point ``((r + 0.5) / T0, (c + 0.5) / T1)``. So the middle of either
  frame is ``(0.5, 0.5)``, as the thesis states for both.
* **Template pixels are points** (thesis fig. 2.15): between them the template is the
  bilinear interpolation, and the template is zero outside the grid of points. A
  template therefore fades linearly to zero within one template-pixel spacing beyond
  its outermost points; this is ``grid_sample(..., padding_mode="zeros",
  align_corners=False)`` in PyTorch terms.
* **Homogeneous column vectors.** A matrix acts as ``q = M @ (p0, p1, 1)``; its third
  row is ``(0, 0, 1)``. ``render_templates`` takes the **world -> template** matrix
  (the "renderer-friendly" direction of 2.3.2): output pixel ``p`` shows the template
  at ``q``. With the identity matrix the template is stretched over the whole canvas.
* **Determinant.** Because both frames are unit squares, ``det`` of the world ->
  template matrix is 1 exactly when the template is as large as the whole output:
  ``FILL_DETERMINANT`` is the thesis's ``s`` of the determinant penalty (2.4.3).
"""
from __future__ import annotations

import numpy as np

#: det(world -> template) of a template exactly as large as the output (thesis 2.4, penalty's s).
FILL_DETERMINANT = 1.0


def pixel_centres(n: int, xp=np, dtype=np.float64):
    """Unit-square coordinates ``(i + 0.5) / n`` of the ``n`` pixel centres along one axis."""
    return (xp.arange(n, dtype=dtype) + 0.5) / n


def canvas_points(height: int, width: int, xp=np, dtype=np.float64):
    """Homogeneous world points of every output pixel: array ``(height, width, 3)``."""
    p0 = pixel_centres(height, xp, dtype)
    p1 = pixel_centres(width, xp, dtype)
    out = xp.ones((height, width, 3), dtype=dtype)
    out[..., 0] = p0[:, None]
    out[..., 1] = p1[None, :]
    return out


def as_size(size) -> tuple[int, int]:
    """``28`` or ``(28, 28)`` -> ``(H, W)``; a clear error for anything else."""
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be an int or a pair (height, width), got {size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {(h, w)}")
    return h, w
