"""Tensor and the reverse sweep of define-by-run autodiff (thesis 2.5.1).

The thesis describes its model as "a mathematical function: from the input(s), we
calculate intermediate values ... and in the end, we compute the output value",
differentiated automatically. This is that tool: each op run on ``Tensor`` records
its ``Function`` node; ``backward()`` sorts the recorded graph and walks it back,
adding gradients into each input (values used twice accumulate). Arrays are numpy
or CuPy; the code never asks which (``xp`` from the data).
"""
from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING

import numpy as np

from lab.backend import get_array_module

if TYPE_CHECKING:  # pragma: no cover
    from lab.autodiff.function import Function

_state = threading.local()


def grad_enabled() -> bool:
    return getattr(_state, "enabled", True)


@contextlib.contextmanager
def no_grad():
    """Run ops without recording a graph (evaluation, rendering for sliders)."""
    previous = grad_enabled()
    _state.enabled = False
    try:
        yield
    finally:
        _state.enabled = previous


def unbroadcast(xp, grad, shape: tuple[int, ...]):
    """Sum a gradient back to ``shape`` after numpy broadcasting: the one place that does it."""
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, (g, s) in enumerate(zip(grad.shape, shape)) if s == 1 and g != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


class Tensor:
    """An array (numpy or CuPy) with an optional gradient and the op that made it.

    ``Tensor(array, requires_grad=True)`` makes a leaf whose ``.grad`` is filled by
    ``backward()``; results of ops carry ``creator`` (the ``Function`` node).
    """

    __array_ufunc__ = None  # numpy defers ``ndarray + Tensor`` to Tensor.__radd__

    def __init__(self, data, requires_grad: bool = False, name: str | None = None):
        if isinstance(data, Tensor):
            data = data.data
        if not hasattr(data, "dtype") or not hasattr(data, "shape"):
            data = np.asarray(data)
        self.data = data
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self.creator: Function | None = None
        self.name = name
        self._retain = False

    # -- basic properties -------------------------------------------------------
    @property
    def shape(self):
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def xp(self):
        return get_array_module(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        label = f", op={self.creator.label}" if self.creator is not None else ""
        rg = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}{rg}{label})"

    def numpy(self) -> np.ndarray:
        from lab.backend import to_numpy  # noqa: PLC0415
        return to_numpy(self.data)

    def item(self) -> float:
        return float(self.data.reshape(-1)[0]) if self.data.size == 1 else _raise_item(self.shape)

    def detach(self) -> "Tensor":
        """The same data, cut off from the graph."""
        return Tensor(self.data)

    def retain_grad(self) -> "Tensor":
        """Keep ``.grad`` on this intermediate tensor after ``backward()``."""
        self._retain = True
        return self

    def zero_grad(self) -> None:
        self.grad = None

    # -- the reverse sweep ------------------------------------------------------
    def backward(self, grad=None) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``.

        ``self`` must be a scalar unless ``grad`` (same shape as self) is given.
        """
        xp = self.xp
        if grad is None:
            if self.data.size != 1:
                raise ValueError(f"backward() without a gradient needs a scalar, got shape {self.shape}")
            grad = xp.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad, dtype=self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"gradient shape {grad.shape} does not match tensor shape {self.shape}")
        order = _topological_order(self)
        grads: dict[int, object] = {id(self): grad}
        for node in reversed(order):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node.creator is None or node._retain:
                if node.requires_grad:
                    node.grad = g if node.grad is None else node.grad + g
            if node.creator is None:
                continue
            fn = node.creator
            input_grads = fn._backward(g)
            for inp, ig in zip(fn.inputs, input_grads):
                if ig is None or not inp.requires_grad:
                    continue
                ig = unbroadcast(xp, ig, inp.shape)
                key = id(inp)
                grads[key] = ig if key not in grads else grads[key] + ig

    # -- Python operators -------------------------------------------------------
    def __add__(self, other):
        from lab.autodiff import ops  # noqa: PLC0415
        return ops.add(self, other)

    def __radd__(self, other):
        from lab.autodiff import ops  # noqa: PLC0415
        return ops.add(other, self)

    def __sub__(self, other):
        from lab.autodiff import ops  # noqa: PLC0415
        return ops.sub(self, other)

    def __rsub__(self, other):
        from lab.autodiff import ops  # noqa: PLC0415
        return ops.sub(other, self)

    def __mul__(self, other):
        from lab.autodiff import ops  # noqa: PLC0415
        return ops.mul(self, other)

    def __rmul__(self, other):
        from lab.autodiff import ops  # noqa: PLC0415
        return ops.mul(other, self)

    def __truediv__(self, other):
        from lab.autodiff import ops  # noqa: PLC0415
        return ops.div(self, other)

    def __rtruediv__(self, other):
        from lab.autodiff import ops  # noqa: PLC0415
        return ops.div(other, self)

    def __pow__(self, other):
        from lab.autodiff import ops  # noqa: PLC0415
        return ops.power(self, other)

    def __rpow__(self, other):
        from lab.autodiff import ops  # noqa: PLC0415
        return ops.power(other, self)

    def __matmul__(self, other):
        from lab.autodiff import ops  # noqa: PLC0415
        return ops.matmul(self, other)

    def __rmatmul__(self, other):
        from lab.autodiff import ops  # noqa: PLC0415
        return ops.matmul(other, self)

    def __neg__(self):
        from lab.autodiff import ops  # noqa: PLC0415
        return ops.neg(self)

    def __getitem__(self, key):
        from lab.autodiff import ops  # noqa: PLC0415
        return ops.getitem(self, key)

    # -- method forms of common functions ---------------------------------------
    def sum(self, axis=None, keepdims=False):
        from lab.autodiff import ops  # noqa: PLC0415
        return ops.sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        from lab.autodiff import ops  # noqa: PLC0415
        return ops.mean(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        from lab.autodiff import ops  # noqa: PLC0415
        return ops.max(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape):
        from lab.autodiff import ops  # noqa: PLC0415
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return ops.reshape(self, shape)

    def transpose(self, *axes):
        from lab.autodiff import ops  # noqa: PLC0415
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return ops.transpose(self, axes or None)

    @property
    def T(self):  # noqa: N802
        return self.transpose()


def _raise_item(shape):
    raise ValueError(f"item() needs a tensor of size 1, got shape {shape}")


def _topological_order(root: Tensor) -> list[Tensor]:
    """Tensors reachable from ``root`` through creators, inputs before outputs (iterative DFS)."""
    order: list[Tensor] = []
    visited: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        if node.creator is not None:
            for inp in node.creator.inputs:
                if inp.requires_grad and id(inp) not in visited:
                    stack.append((inp, False))
    return order


_DEVICE_CONSTANTS: dict = {}


def _device_constant(xp, value, dtype):
    """A cached 0-d device array holding the number ``value``: the constants of a training
    step (1/B, alphas, 0.1, ...) are uploaded once, not once per op per step (each upload
    is a host->device copy). Ops never write into their inputs, so sharing is safe."""
    key = (xp.__name__, xp.cuda.Device().id, type(value), value, np.dtype(dtype).str)
    c = _DEVICE_CONSTANTS.get(key)
    if c is None:
        if len(_DEVICE_CONSTANTS) >= 4096:
            _DEVICE_CONSTANTS.clear()
        c = _DEVICE_CONSTANTS[key] = xp.asarray(value, dtype=dtype)
    return c


def as_tensor(x, like: Tensor | None = None) -> Tensor:
    """Wrap an array or number as a constant Tensor (no gradient), on ``like``'s device."""
    if isinstance(x, Tensor):
        return x
    if like is not None:
        xp = like.xp
        if isinstance(x, (int, float, bool, np.number)):
            if xp is not np:
                return Tensor(_device_constant(xp, x, like.dtype))
            return Tensor(xp.asarray(x, dtype=like.dtype))
        return Tensor(xp.asarray(x))
    xp = get_array_module(x)
    return Tensor(xp.asarray(x))
