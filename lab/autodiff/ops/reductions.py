"""Reductions (sum, mean, max, stable logsumexp, softmax) and matmul."""
from __future__ import annotations

from lab.autodiff.function import Function, register_op


def _normalize_axis(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, int):
        axis = (axis,)
    return tuple(a % ndim for a in axis)


def _expand(gy, axes, keepdims):
    """Reshape a reduced gradient so that it broadcasts against the input."""
    if keepdims:
        return gy
    for a in sorted(axes):
        gy = gy.reshape(gy.shape[:a] + (1,) + gy.shape[a:])
    return gy


class Sum(Function):
    label = "sum"

    def __init__(self, axis, keepdims):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, xp, x):
        self.shape = x.shape
        self.axes = _normalize_axis(self.axis, x.ndim)
        return x.sum(axis=self.axes, keepdims=self.keepdims)

    def backward(self, xp, gy):
        return (xp.broadcast_to(_expand(gy, self.axes, self.keepdims), self.shape),)


class Max(Function):
    """Maximum over axes; tied maxima share the gradient equally."""

    label = "max"

    def __init__(self, axis, keepdims):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, xp, x):
        self.axes = _normalize_axis(self.axis, x.ndim)
        m = x.max(axis=self.axes, keepdims=True)
        mask = (x == m).astype(x.dtype)
        self.weights = mask / mask.sum(axis=self.axes, keepdims=True)
        return m if self.keepdims else m.reshape([s for i, s in enumerate(m.shape) if i not in self.axes])

    def backward(self, xp, gy):
        return (self.weights * _expand(gy, self.axes, self.keepdims),)


class LogSumExp(Function):
    """log Σ exp(x) over axes, shifted by the (finite) maximum so it never overflows."""

    label = "logsumexp"

    def __init__(self, axis, keepdims):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, xp, x):
        self.axes = _normalize_axis(self.axis, x.ndim)
        m = x.max(axis=self.axes, keepdims=True)
        m = xp.where(xp.isfinite(m), m, 0)
        e = xp.exp(x - m)
        s = e.sum(axis=self.axes, keepdims=True)
        empty = s == 0  # every entry -inf: the result is -inf and no gradient flows
        s_safe = xp.where(empty, 1, s)
        self.softmax = e / s_safe
        y = xp.where(empty, -xp.inf, xp.log(s_safe) + m)
        return y if self.keepdims else y.reshape([d for i, d in enumerate(y.shape) if i not in self.axes])

    def backward(self, xp, gy):
        return (self.softmax * _expand(gy, self.axes, self.keepdims),)


class Softmax(Function):
    label = "softmax"

    def __init__(self, axis):
        self.axis = axis

    def forward(self, xp, x):
        m = x.max(axis=self.axis, keepdims=True)
        e = xp.exp(x - m)
        self.y = e / e.sum(axis=self.axis, keepdims=True)
        return self.y

    def backward(self, xp, gy):
        y = self.y
        return (y * (gy - (gy * y).sum(axis=self.axis, keepdims=True)),)


#: Batched products with an inner dimension up to this go elementwise on the GPU.
SMALL_INNER = 4


def _gpu_route(a, b):
    """How the GPU multiplies ``a @ b``: ``"gemm"`` (two float matrices of one dtype),
    ``"small"`` (batched, inner dimension <= SMALL_INNER, e.g. the 3x3 pose products) or
    None (CuPy's ``@``, which a CUDA graph cannot record)."""
    if a.dtype != b.dtype or a.dtype.kind != "f" or a.dtype.itemsize not in (4, 8):
        return None
    if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2] or a.size == 0 or b.size == 0:
        return None                               # (CuPy's @ gives the shape errors)
    if a.ndim == 2 and b.ndim == 2:
        return "gemm"
    if a.shape[-1] <= SMALL_INNER:
        return "small"
    return None


def small_matmul(xp, a, b):
    """``a @ b`` for (broadcast) batches of small matrices as one broadcast multiply and a
    sum over the inner dimension: no BLAS call (numpy or CuPy; ``a``, ``b`` at least 2-D)."""
    return (a[..., :, :, None] * b[..., None, :, :]).sum(axis=-2)


class MatMul(Function):
    """Matrix product with numpy semantics (1-D operands, broadcast batch dims)."""

    label = "@"

    def forward(self, xp, a, b):
        self.a_vec, self.b_vec = a.ndim == 1, b.ndim == 1
        self.a = a[None, :] if self.a_vec else a
        self.b = b[:, None] if self.b_vec else b
        return a @ b

    def forward_gpu(self, xp, a, b):  # pragma: no cover - needs a GPU
        """Products that a CUDA graph can record (CuPy's own cuBLAS calls refuse to run
        during stream capture, see ``lab.gpu.cublas``): matrices by ``lab.gpu.cublas.gemm``,
        batches of small matrices elementwise (:func:`small_matmul`)."""
        self.route = _gpu_route(a, b)
        if self.route is None:
            return self.forward(xp, a, b)
        self.a_vec = self.b_vec = False
        if self.route == "small":
            self.a, self.b = a, b
            return small_matmul(xp, a, b)
        from lab.gpu.cublas import gemm  # noqa: PLC0415
        self.a, self.b = xp.ascontiguousarray(a), xp.ascontiguousarray(b)
        return gemm("N", "N", self.a, self.b, xp.empty((a.shape[0], b.shape[1]), a.dtype))

    def backward_gpu(self, xp, gy):  # pragma: no cover - needs a GPU
        if self.route is None:
            return self.backward(xp, gy)
        a, b = self.a, self.b
        if self.route == "small":
            return small_matmul(xp, gy, xp.swapaxes(b, -1, -2)), small_matmul(xp, xp.swapaxes(a, -1, -2), gy)
        from lab.gpu.cublas import gemm  # noqa: PLC0415
        gy = xp.ascontiguousarray(gy, dtype=a.dtype)
        return (gemm("N", "T", gy, b, xp.empty(a.shape, a.dtype)),
                gemm("T", "N", a, gy, xp.empty(b.shape, b.dtype)))

    def backward(self, xp, gy):
        if self.a_vec and self.b_vec:  # inner product
            return gy * self.b[:, 0], gy * self.a[0]
        if self.a_vec:
            gy = xp.expand_dims(gy, -2)
        if self.b_vec:
            gy = xp.expand_dims(gy, -1)
        ga = gy @ xp.swapaxes(self.b, -1, -2)
        gb = xp.swapaxes(self.a, -1, -2) @ gy
        if self.a_vec:
            ga = ga.reshape(ga.shape[:-2] + ga.shape[-1:])
            if ga.ndim > 1:
                ga = ga.sum(axis=tuple(range(ga.ndim - 1)))
        if self.b_vec:
            gb = gb[..., 0]
            if gb.ndim > 1:
                gb = gb.sum(axis=tuple(range(gb.ndim - 1)))
        return ga, gb


def _reduce_cases(op, distinct=False):
    def cases(rng):
        def x(*shape):
            if distinct:  # a permutation scaled: no ties
                return rng.permutation(int(__import__("numpy").prod(shape))).reshape(shape) * 0.1 \
                    + rng.uniform(0, 0.01, shape)
            return rng.standard_normal(shape)
        return [
            (lambda t: op(t, None, False), [x(3, 4)]),
            (lambda t: op(t, 1, False), [x(3, 4, 2)]),
            (lambda t: op(t, (0, 2), True), [x(3, 4, 2)]),
            (lambda t: op(t, -1, False), [x(5,)]),
        ]
    return cases


@register_op("sum", _reduce_cases(lambda t, a, k: sum(t, a, k)))
def sum(x, axis=None, keepdims=False):  # noqa: A001
    """Sum over ``axis`` (None: all)."""
    return Sum(axis, keepdims)(x)


@register_op("mean", _reduce_cases(lambda t, a, k: mean(t, a, k)))
def mean(x, axis=None, keepdims=False):
    """Mean over ``axis`` (None: all); derived from ``sum``."""
    from lab.autodiff.tensor import as_tensor  # noqa: PLC0415
    x = as_tensor(x)
    axes = _normalize_axis(axis, x.ndim)
    count = 1
    for a in axes:
        count *= x.shape[a]
    return Sum(axis, keepdims)(x) * (1.0 / count)


@register_op("max", _reduce_cases(lambda t, a, k: max(t, a, k), distinct=True))
def max(x, axis=None, keepdims=False):  # noqa: A001
    """Maximum over ``axis``; ties share the gradient."""
    return Max(axis, keepdims)(x)


@register_op("logsumexp", _reduce_cases(lambda t, a, k: logsumexp(t, a, k)))
def logsumexp(x, axis=None, keepdims=False):
    """Stable log Σ exp(x) over ``axis``."""
    return LogSumExp(axis, keepdims)(x)


def _softmax_cases(rng):
    return [(lambda t: softmax(t, -1), [rng.standard_normal((3, 5))]),
            (lambda t: softmax(t, 0), [rng.standard_normal((4, 2, 3))])]


@register_op("softmax", _softmax_cases)
def softmax(x, axis=-1):
    """exp(x) / Σ exp(x) along ``axis`` (stable)."""
    return Softmax(axis)(x)


def _matmul_cases(rng):
    n = rng.standard_normal
    return [
        (lambda a, b: matmul(a, b), [n((3, 4)), n((4, 5))]),
        (lambda a, b: matmul(a, b), [n((2, 3, 4)), n((4, 5))]),       # broadcast batch
        (lambda a, b: matmul(a, b), [n((2, 1, 3, 4)), n((3, 4, 2))]),  # broadcast both
        (lambda a, b: matmul(a, b), [n((4,)), n((4, 3))]),            # vector @ matrix
        (lambda a, b: matmul(a, b), [n((2, 3, 4)), n((4,))]),         # batch @ vector
        (lambda a, b: matmul(a, b), [n((4,)), n((4,))]),              # inner product
        (lambda a, b: matmul(a, b), [n((2, 3, 3, 3)), n((2, 1, 3, 3))]),  # poses (small, GPU)
    ]


@register_op("matmul", _matmul_cases)
def matmul(a, b):
    """Matrix product (``a @ b``) with numpy's broadcasting rules."""
    return MatMul()(a, b)
