"""Differentiable ops as ``Function`` nodes (Chainer's FunctionNode), and the op registry.

Writing a new op, fused kernels included (the custom-op API)::

    class Scale(Function):
        label = "scale"
        def forward(self, xp, x):          # raw arrays in, raw array out
            return 2 * x
        def backward(self, xp, gy):        # gradient of the output -> one per input
            return (2 * gy,)
        # optional: forward_gpu / backward_gpu with a hand-written CuPy kernel;
        # they are used instead of forward/backward when the data live on the GPU.

    def scale(x):
        return Scale()(x)

``forward`` keeps on ``self`` only what ``backward`` needs. Gradients may have a
broadcast shape: the engine sums them back to each input's shape (``unbroadcast``).
Register the public wrapper with ``register_op`` and give it gradient-check cases,
so the test suite checks it like every other op.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from lab.autodiff.tensor import Tensor, as_tensor, grad_enabled
from lab.backend import get_array_module


class Function:
    """One node of the graph: ``forward`` on arrays, ``backward`` from the output gradient."""

    label = "function"
    inputs: tuple[Tensor, ...] = ()

    def __call__(self, *inputs) -> Tensor:
        like = next((x for x in inputs if isinstance(x, Tensor)), None)
        tensors = tuple(as_tensor(x, like) for x in inputs)
        arrays = tuple(t.data for t in tensors)
        xp = get_array_module(*arrays)
        self.xp = xp
        forward = getattr(self, "forward_gpu", None) if xp.__name__ == "cupy" else None
        y = (forward or self.forward)(xp, *arrays)
        out = Tensor(y)
        if grad_enabled() and any(t.requires_grad for t in tensors):
            self.inputs = tensors
            out.requires_grad = True
            out.creator = self
        return out

    def _backward(self, gy):
        xp = self.xp
        backward = getattr(self, "backward_gpu", None) if xp.__name__ == "cupy" else None
        grads = (backward or self.backward)(xp, gy)
        if not isinstance(grads, tuple):
            grads = (grads,)
        if len(grads) != len(self.inputs):
            raise RuntimeError(f"{type(self).__name__}.backward returned {len(grads)} gradients "
                               f"for {len(self.inputs)} inputs")
        return grads

    def forward(self, xp, *arrays):  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} defines no forward()")

    def backward(self, xp, gy):  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} defines no backward()")


# -- the registry -----------------------------------------------------------------
@dataclass
class OpSpec:
    """A public op and the cases its gradient check runs on.

    ``cases(rng)`` returns a list of ``(fn, arrays)``: ``fn(*tensors) -> Tensor`` and
    float64 numpy inputs chosen away from kinks (e.g. no ties for ``max``).
    """

    name: str
    fn: Callable
    cases: Callable[..., Sequence[tuple[Callable, list]]]
    doc: str = field(default="")


REGISTRY: dict[str, OpSpec] = {}


def register_op(name: str, cases: Callable) -> Callable:
    """Decorator: record a public op (its wrapper function) with its gradcheck cases."""
    def decorate(fn):
        if name in REGISTRY:
            raise ValueError(f"op {name!r} registered twice")
        REGISTRY[name] = OpSpec(name, fn, cases, (fn.__doc__ or "").strip())
        return fn
    return decorate
