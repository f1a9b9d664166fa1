"""Shape ops: reshape, transpose, broadcast_to, concatenate, stack, take, indexing, where."""
from __future__ import annotations

import numpy as np

from lab.autodiff.function import Function, register_op
from lab.autodiff.tensor import Tensor


def scatter_add(xp, target, index, values) -> None:
    """target[index] += values, adding repeated indices (numpy ``add.at``; cupyx on GPU)."""
    if xp is np:
        np.add.at(target, index, values)
    else:  # pragma: no cover - GPU only
        import cupyx  # noqa: PLC0415
        cupyx.scatter_add(target, index, values)


class Reshape(Function):
    label = "reshape"

    def __init__(self, shape):
        self.shape = shape

    def forward(self, xp, x):
        self.in_shape = x.shape
        return x.reshape(self.shape)

    def backward(self, xp, gy):
        return (gy.reshape(self.in_shape),)


class Transpose(Function):
    label = "transpose"

    def __init__(self, axes):
        self.axes = axes

    def forward(self, xp, x):
        self.axes = tuple(range(x.ndim))[::-1] if self.axes is None else tuple(a % x.ndim for a in self.axes)
        return x.transpose(self.axes)

    def backward(self, xp, gy):
        return (gy.transpose(tuple(np.argsort(self.axes))),)


class BroadcastTo(Function):
    """Broadcast to ``shape``; the engine's ``unbroadcast`` sums the gradient back."""

    label = "broadcast_to"

    def __init__(self, shape):
        self.shape = tuple(shape)

    def forward(self, xp, x):
        return xp.broadcast_to(x, self.shape)

    def backward(self, xp, gy):
        return (gy,)


class Concatenate(Function):
    label = "concatenate"

    def __init__(self, axis):
        self.axis = axis

    def forward(self, xp, *xs):
        self.sizes = [x.shape[self.axis] for x in xs]
        return xp.concatenate(xs, axis=self.axis)

    def backward(self, xp, gy):
        bounds = np.cumsum(self.sizes)[:-1].tolist()
        return tuple(xp.split(gy, bounds, axis=self.axis))


class Stack(Function):
    label = "stack"

    def __init__(self, axis):
        self.axis = axis

    def forward(self, xp, *xs):
        return xp.stack(xs, axis=self.axis)

    def backward(self, xp, gy):
        n = gy.shape[self.axis]
        return tuple(xp.take(gy, i, axis=self.axis) for i in range(n))


class Take(Function):
    """Pick entries ``indices`` along ``axis``; repeated indices add their gradients."""

    label = "take"

    def __init__(self, indices, axis):
        self.indices, self.axis = indices, axis

    def forward(self, xp, x):
        self.in_shape = x.shape
        self.indices = xp.asarray(self.indices)
        return xp.take(x, self.indices, axis=self.axis)

    def backward(self, xp, gy):
        axis = self.axis % len(self.in_shape)
        g = xp.zeros(self.in_shape, dtype=gy.dtype)
        # Move the axis to the front so that one scatter_add on axis 0 does it.
        gm = xp.moveaxis(g, axis, 0)
        gym = xp.moveaxis(gy, tuple(range(axis, axis + self.indices.ndim)),
                          tuple(range(self.indices.ndim)))
        scatter_add(xp, gm, self.indices, gym)
        return (g,)


def _key_parts(key):
    return key if isinstance(key, tuple) else (key,)


def _is_basic(key) -> bool:
    """True when ``key`` holds only ints, slices, None and Ellipsis (no index arrays)."""
    return all(k is None or k is Ellipsis or isinstance(k, (slice, int, np.integer))
               for k in _key_parts(key))


def _device_key(xp, key):
    """``key`` with its numpy/list index arrays moved to ``xp`` (once, in forward)."""
    def move(k):
        return xp.asarray(k) if isinstance(k, (np.ndarray, list)) else k
    return tuple(move(k) for k in key) if isinstance(key, tuple) else move(key)


class GetItem(Function):
    """``x[key]`` for basic and advanced indices."""

    label = "getitem"

    def __init__(self, key):
        self.key = key

    def forward(self, xp, x):
        self.in_shape, self.dtype = x.shape, x.dtype
        return x[self.key]

    def forward_gpu(self, xp, x):  # pragma: no cover - needs a GPU
        self.basic = _is_basic(self.key)
        if not self.basic:
            self.key = _device_key(xp, self.key)
        return self.forward(xp, x)

    def backward(self, xp, gy):
        g = xp.zeros(self.in_shape, dtype=gy.dtype)
        scatter_add(xp, g, self.key, gy)
        return (g,)

    def backward_gpu(self, xp, gy):  # pragma: no cover - needs a GPU
        if not self.basic:
            return self.backward(xp, gy)
        g = xp.zeros(self.in_shape, dtype=gy.dtype)
        g[self.key] = gy          # a basic index hits each element at most once: no atomics
        return (g,)


class Where(Function):
    """``cond ? a : b`` with a constant boolean ``cond``."""

    label = "where"

    def __init__(self, cond):
        self.cond = cond

    def forward(self, xp, a, b):
        self.cond = xp.asarray(self.cond, dtype=bool)
        return xp.where(self.cond, a, b)

    def backward(self, xp, gy):
        zero = xp.zeros((), dtype=gy.dtype)
        return xp.where(self.cond, gy, zero), xp.where(self.cond, zero, gy)


# -- public wrappers ----------------------------------------------------------------
def _n(rng, *shape):
    return rng.standard_normal(shape)


@register_op("reshape", lambda rng: [(lambda x: reshape(x, (6, 2)), [_n(rng, 3, 4)]),
                                     (lambda x: reshape(x, (-1,)), [_n(rng, 2, 3, 2)])])
def reshape(x, shape):
    """Reshape (one dimension may be -1)."""
    return Reshape(tuple(shape) if not isinstance(shape, int) else (shape,))(x)


@register_op("transpose", lambda rng: [(lambda x: transpose(x), [_n(rng, 3, 4)]),
                                       (lambda x: transpose(x, (1, 2, 0)), [_n(rng, 2, 3, 4)])])
def transpose(x, axes=None):
    """Permute axes (default: reverse them)."""
    return Transpose(axes)(x)


@register_op("broadcast_to", lambda rng: [(lambda x: broadcast_to(x, (2, 3, 4)), [_n(rng, 3, 1)]),
                                          (lambda x: broadcast_to(x, (5, 4)), [_n(rng, 4)])])
def broadcast_to(x, shape):
    """Broadcast to ``shape`` (numpy rules)."""
    return BroadcastTo(shape)(x)


@register_op("concatenate", lambda rng: [
    (lambda a, b: concatenate([a, b], axis=0), [_n(rng, 2, 3), _n(rng, 4, 3)]),
    (lambda a, b, c: concatenate([a, b, c], axis=-1), [_n(rng, 2, 1), _n(rng, 2, 3), _n(rng, 2, 2)])])
def concatenate(xs, axis=0):
    """Join tensors along an existing axis."""
    return Concatenate(axis)(*xs)


@register_op("stack", lambda rng: [
    (lambda a, b: stack([a, b], axis=0), [_n(rng, 2, 3), _n(rng, 2, 3)]),
    (lambda a, b, c: stack([a, b, c], axis=-1), [_n(rng, 4), _n(rng, 4), _n(rng, 4)])])
def stack(xs, axis=0):
    """Join tensors along a new axis."""
    return Stack(axis)(*xs)


@register_op("take", lambda rng: [
    (lambda x: take(x, np.array([2, 0, 2, 1]), axis=0), [_n(rng, 3, 4)]),
    (lambda x: take(x, np.array([[0, 3], [3, 3]]), axis=1), [_n(rng, 2, 4, 3)])])
def take(x, indices, axis=0):
    """Entries ``indices`` along ``axis`` (repeats allowed)."""
    return Take(indices, axis)(x)


def _key(key):
    if isinstance(key, tuple):
        return tuple(k.data if isinstance(k, Tensor) else k for k in key)
    return key.data if isinstance(key, Tensor) else key


@register_op("getitem", lambda rng: [
    (lambda x: getitem(x, (slice(1, 3), slice(None, None, 2))), [_n(rng, 4, 5)]),
    (lambda x: getitem(x, (Ellipsis, 1)), [_n(rng, 2, 3, 4)]),
    (lambda x: getitem(x, np.array([0, 2, 0])), [_n(rng, 3, 4)]),       # repeated rows
    (lambda x: getitem(x, (np.array([0, 1]), np.array([2, 2]))), [_n(rng, 3, 4)]),
    (lambda x: getitem(x, (slice(None), None, 0)), [_n(rng, 3, 4)])])
def getitem(x, key):
    """``x[key]``: slices, integers, None, Ellipsis, integer and boolean arrays."""
    return GetItem(_key(key))(x)


@register_op("where", lambda rng: [
    (lambda a, b: where(np.array([[True, False, True, True]]), a, b), [_n(rng, 3, 4), _n(rng, 3, 4)]),
    (lambda a: where(np.array([True, False, False]), a, 0.0), [_n(rng, 2, 3)])])
def where(cond, a, b):
    """``a`` where ``cond`` else ``b`` (``cond``: a constant boolean array)."""
    if isinstance(cond, Tensor):
        cond = cond.data
    return Where(cond)(a, b)
