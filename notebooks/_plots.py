"""Bokeh figures for the notebooks: image mosaics with a grey palette, curves.

Images are drawn as one ``image`` glyph per mosaic (a single float32 array travels
to the browser, not one glyph per tile). Bokeh puts row 0 at the bottom, so mosaics
are flipped before drawing: row 0 of an image is at the top, as in the thesis.
"""
from __future__ import annotations

import warnings

import numpy as np
from bokeh.models import ColumnDataSource, LinearColorMapper
from bokeh.palettes import Category10_10, Greys256
from bokeh.plotting import figure

#: Grey palette, 0 black -> 1 white (digits are white on black, as in the data).
GREY = Greys256
#: Diverging grey for mismatches: black = too dark, white = too bright, mid grey = exact.
MID = 0.5


def mosaic(grid, pad: int = 1, fill: float = np.nan, per_image: bool = False) -> np.ndarray:
    """(R, C, H, W) images -> one (R*(H+pad)-pad, C*(W+pad)-pad) array, row 0 at the top.

    ``per_image`` rescales every tile to [0, 1] on its own (templates). NaN tiles
    (missing) stay NaN and show as the figure background."""
    g = np.asarray(grid, dtype=np.float32)
    if g.ndim == 3:
        g = g[None]
    R, C, H, W = g.shape
    if per_image:
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN padding tiles
            lo = np.nanmin(g, axis=(2, 3), keepdims=True)
            hi = np.nanmax(g, axis=(2, 3), keepdims=True)
            g = (g - lo) / np.where(hi - lo > 1e-12, hi - lo, 1.0)
    out = np.full((R * (H + pad) - pad, C * (W + pad) - pad), fill, dtype=np.float32)
    for r in range(R):
        for c in range(C):
            out[r * (H + pad):r * (H + pad) + H, c * (W + pad):c * (W + pad) + W] = g[r, c]
    return out


def image_figure(img, title: str = "", scale: float = 3.0, low: float = 0.0, high: float = 1.0,
                 palette=GREY, col_labels=None, tile=None, **kw):
    """A bokeh figure showing the 2-D array ``img`` (row 0 at the top), ``scale`` screen
    pixels per image pixel. ``col_labels`` with ``tile=(H, W)`` names the mosaic's columns."""
    img = np.asarray(img, dtype=np.float32)
    h, w = img.shape
    p = figure(title=title, width=int(w * scale) + 20, height=int(h * scale) + (40 if title else 20),
               x_range=(0, w), y_range=(0, h), tools="pan,wheel_zoom,reset,save",
               toolbar_location=None, match_aspect=True, **kw)
    mapper = LinearColorMapper(palette=palette, low=low, high=high, nan_color="#e8e8ff")
    p.image(image=[img[::-1]], x=0, y=0, dw=w, dh=h, color_mapper=mapper)
    p.axis.visible = False
    p.grid.visible = False
    p.outline_line_color = None
    p.min_border = 2
    if col_labels is not None and tile is not None:
        th, tw = tile
        xs = [(tw + 1) * i + tw / 2 for i in range(len(col_labels))]
        p.text(x=xs, y=[h] * len(xs), text=[str(c) for c in col_labels], text_align="center",
               text_baseline="bottom", text_font_size="8pt")
        p.y_range.end = h + 0.06 * h + 2
        p.height += 12
    return p


def image_grid(grid, title: str = "", scale: float = 3.0, low: float = 0.0, high: float = 1.0,
               per_image: bool = False, col_labels=None, pad: int = 1):
    """A figure of an (R, C, H, W) grid of images (or (N, H, W): one row)."""
    g = np.asarray(grid, dtype=np.float32)
    if g.ndim == 3:
        g = g[None]
    m = mosaic(g, pad=pad, per_image=per_image)
    return image_figure(m, title=title, scale=scale, low=low if not per_image else 0.0,
                        high=high if not per_image else 1.0, col_labels=col_labels,
                        tile=g.shape[2:])


def wrap(images, ncols: int):
    """(N, H, W) -> (ceil(N/ncols), ncols, H, W), NaN tiles after the last image."""
    a = np.asarray(images, dtype=np.float32)
    n = len(a)
    rows = -(-n // ncols)
    out = np.full((rows * ncols, *a.shape[1:]), np.nan, dtype=np.float32)
    out[:n] = a
    return out.reshape(rows, ncols, *a.shape[1:])


def line_figure(title: str = "", x_label: str = "", y_label: str = "", width: int = 640,
                height: int = 320, x_axis_type: str = "linear", **kw):
    p = figure(title=title, width=width, height=height, x_axis_type=x_axis_type,
               tools="pan,wheel_zoom,box_zoom,reset,save,hover", **kw)
    p.xaxis.axis_label = x_label
    p.yaxis.axis_label = y_label
    return p


def add_lines(p, x, ys: dict, errors: dict | None = None, markers: bool = True):
    """One coloured line per ``ys`` entry (legend = key), optional ±error whiskers."""
    for i, (name, y) in enumerate(ys.items()):
        color = Category10_10[i % 10]
        y = np.asarray(y, dtype=float)
        xx = np.asarray(x[name] if isinstance(x, dict) else x, dtype=float)
        src = ColumnDataSource(dict(x=xx, y=y))
        p.line("x", "y", source=src, color=color, legend_label=str(name), line_width=2)
        if markers:
            p.scatter("x", "y", source=src, color=color, legend_label=str(name), size=6)
        if errors is not None and name in errors:
            e = np.asarray(errors[name], dtype=float)
            p.segment(x0=xx, y0=y - e, x1=xx, y1=y + e, color=color, line_width=1.5)
    p.legend.location = "bottom_right"
    p.legend.click_policy = "hide"
    return p
