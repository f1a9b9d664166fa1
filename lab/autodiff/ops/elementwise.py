"""Element-wise ops: arithmetic, exp/log family, squashing functions, maximum and clip.

``softplus10(x) = log(1 + exp(10 x)) / 10`` is the thesis's smooth non-negativity
(2.4.4): templates and intensities pass through it.
"""
from __future__ import annotations

from lab.autodiff.function import Function, register_op


def _rand(rng, *shape):
    return rng.standard_normal(shape)


def _binary_cases(op, positive_b=False, away_from_zero_b=False):
    def cases(rng):
        def b(*shape):
            v = rng.standard_normal(shape)
            if positive_b:
                v = rng.uniform(0.5, 2.0, shape)
            elif away_from_zero_b:
                v = (rng.uniform(0.5, 2.0, shape)) * rng.choice([-1, 1], shape)
            return v
        return [
            (op, [_rand(rng, 3, 4), b(3, 4)]),
            (op, [_rand(rng, 2, 3, 4), b(4)]),         # broadcasting: trailing dims
            (op, [_rand(rng, 3, 1), b(1, 4)]),         # broadcasting on both sides
            (lambda x: op(x, 1.5 if not away_from_zero_b else 2.5), [_rand(rng, 5)]),  # python scalar
        ]
    return cases


# -- arithmetic ---------------------------------------------------------------------
class Add(Function):
    label = "+"

    def forward(self, xp, a, b):
        return a + b

    def backward(self, xp, gy):
        return gy, gy


class Sub(Function):
    label = "-"

    def forward(self, xp, a, b):
        return a - b

    def backward(self, xp, gy):
        return gy, -gy


class Mul(Function):
    label = "*"

    def forward(self, xp, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, xp, gy):
        return gy * self.b, gy * self.a


class Div(Function):
    label = "/"

    def forward(self, xp, a, b):
        self.b = b
        self.y = a / b
        return self.y

    def backward(self, xp, gy):
        ga = gy / self.b
        return ga, -ga * self.y


class Neg(Function):
    label = "neg"

    def forward(self, xp, x):
        return -x

    def backward(self, xp, gy):
        return (-gy,)


class Power(Function):
    """x ** p; the gradient for p needs x > 0 (it is only computed when p needs it)."""

    label = "**"

    def forward(self, xp, x, p):
        self.x, self.p = x, p
        self.y = x ** p
        return self.y

    def backward(self, xp, gy):
        gx = gy * self.p * self.x ** (self.p - 1)
        gp = None
        if self.inputs[1].requires_grad:
            gp = gy * self.y * xp.log(xp.where(self.x > 0, self.x, 1))
        return gx, gp


@register_op("add", _binary_cases(lambda a, b: add(a, b)))
def add(a, b):
    """a + b with numpy broadcasting."""
    return Add()(a, b)


@register_op("sub", _binary_cases(lambda a, b: sub(a, b)))
def sub(a, b):
    """a - b with numpy broadcasting."""
    return Sub()(a, b)


@register_op("mul", _binary_cases(lambda a, b: mul(a, b)))
def mul(a, b):
    """a * b with numpy broadcasting."""
    return Mul()(a, b)


@register_op("div", _binary_cases(lambda a, b: div(a, b), away_from_zero_b=True))
def div(a, b):
    """a / b with numpy broadcasting."""
    return Div()(a, b)


@register_op("neg", lambda rng: [(lambda x: neg(x), [_rand(rng, 3, 4)])])
def neg(x):
    """-x."""
    return Neg()(x)


def _power_cases(rng):
    pos = lambda *s: rng.uniform(0.5, 2.0, s)  # noqa: E731
    return [
        (lambda x: power(x, 3), [_rand(rng, 3, 4)]),
        (lambda x: power(x, 0.5), [pos(3, 4)]),
        (lambda x, p: power(x, p), [pos(3, 4), rng.uniform(-1, 2, (4,))]),
        (lambda p: power(2.0, p), [_rand(rng, 5)]),
    ]


@register_op("power", _power_cases)
def power(x, p):
    """x ** p (p a number or a tensor; a tensor p needs x > 0 for its gradient)."""
    return Power()(x, p)


# -- unary functions ------------------------------------------------------------------
class _Unary(Function):
    """Base for y = f(x) with dy/dx computed from x and y."""

    def forward(self, xp, x):
        self.x = x
        self.y = self.f(xp, x)
        return self.y

    def backward(self, xp, gy):
        return (gy * self.df(xp, self.x, self.y),)


def _sigmoid(xp, x):
    # 0.5 (1 + tanh(x/2)) is exact sigmoid, smooth and never overflows.
    return 0.5 * (1 + xp.tanh(0.5 * x))


def _softplus(xp, x):
    return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))


class Exp(_Unary):
    label = "exp"
    f = staticmethod(lambda xp, x: xp.exp(x))
    df = staticmethod(lambda xp, x, y: y)


class Log(_Unary):
    label = "log"
    f = staticmethod(lambda xp, x: xp.log(x))
    df = staticmethod(lambda xp, x, y: 1 / x)


class Log1p(_Unary):
    label = "log1p"
    f = staticmethod(lambda xp, x: xp.log1p(x))
    df = staticmethod(lambda xp, x, y: 1 / (1 + x))


class Sigmoid(_Unary):
    label = "sigmoid"
    f = staticmethod(_sigmoid)
    df = staticmethod(lambda xp, x, y: y * (1 - y))


class Tanh(_Unary):
    label = "tanh"
    f = staticmethod(lambda xp, x: xp.tanh(x))
    df = staticmethod(lambda xp, x, y: 1 - y * y)


class Softplus(_Unary):
    label = "softplus"
    f = staticmethod(_softplus)
    df = staticmethod(lambda xp, x, y: _sigmoid(xp, x))


class Softplus10(_Unary):
    label = "softplus10"
    f = staticmethod(lambda xp, x: _softplus(xp, 10 * x) / 10)
    df = staticmethod(lambda xp, x, y: _sigmoid(xp, 10 * x))


class Square(_Unary):
    label = "square"
    f = staticmethod(lambda xp, x: x * x)
    df = staticmethod(lambda xp, x, y: 2 * x)


class Sqrt(_Unary):
    label = "sqrt"
    f = staticmethod(lambda xp, x: xp.sqrt(x))
    df = staticmethod(lambda xp, x, y: 0.5 / y)


class Abs(_Unary):
    label = "abs"
    f = staticmethod(lambda xp, x: xp.abs(x))
    df = staticmethod(lambda xp, x, y: xp.sign(x))


class Relu(_Unary):
    label = "relu"
    f = staticmethod(lambda xp, x: xp.maximum(x, 0))
    df = staticmethod(lambda xp, x, y: (x > 0).astype(x.dtype))


def _unary_cases(fn, low=None, high=None, away_from_zero=False):
    def cases(rng):
        def x(*shape):
            if low is not None:
                return rng.uniform(low, high, shape)
            v = rng.standard_normal(shape) * 2
            if away_from_zero:
                v = rng.uniform(0.1, 2.0, shape) * rng.choice([-1, 1], shape)
            return v
        return [(fn, [x(3, 4)]), (fn, [x(2, 3, 5)])]
    return cases


@register_op("exp", _unary_cases(lambda x: exp(x)))
def exp(x):
    """e ** x."""
    return Exp()(x)


@register_op("log", _unary_cases(lambda x: log(x), 0.2, 3.0))
def log(x):
    """Natural logarithm (x > 0)."""
    return Log()(x)


@register_op("log1p", _unary_cases(lambda x: log1p(x), -0.7, 3.0))
def log1p(x):
    """log(1 + x), accurate near 0."""
    return Log1p()(x)


@register_op("sigmoid", _unary_cases(lambda x: sigmoid(x)))
def sigmoid(x):
    """Logistic function 1 / (1 + e^-x), overflow-free."""
    return Sigmoid()(x)


@register_op("tanh", _unary_cases(lambda x: tanh(x)))
def tanh(x):
    """Hyperbolic tangent."""
    return Tanh()(x)


@register_op("softplus", _unary_cases(lambda x: softplus(x)))
def softplus(x):
    """log(1 + e^x), computed without overflow."""
    return Softplus()(x)


@register_op("softplus10", _unary_cases(lambda x: softplus10(x)))
def softplus10(x):
    """log(1 + exp(10 x)) / 10: the thesis's sharp, smooth non-negativity (2.4.4)."""
    return Softplus10()(x)


@register_op("square", _unary_cases(lambda x: square(x)))
def square(x):
    """x * x."""
    return Square()(x)


@register_op("sqrt", _unary_cases(lambda x: sqrt(x), 0.2, 3.0))
def sqrt(x):
    """Square root (x > 0 for a finite gradient)."""
    return Sqrt()(x)


@register_op("abs", _unary_cases(lambda x: abs(x), away_from_zero=True))
def abs(x):  # noqa: A001  (the numpy name)
    """|x|; the gradient at 0 is 0."""
    return Abs()(x)


@register_op("relu", _unary_cases(lambda x: relu(x), away_from_zero=True))
def relu(x):
    """max(x, 0); the gradient at 0 is 0."""
    return Relu()(x)


# -- two-argument selections ----------------------------------------------------------
class Maximum(Function):
    """Element-wise max; a tie sends half the gradient to each side."""

    label = "maximum"

    def forward(self, xp, a, b):
        self.a, self.b = a, b
        return xp.maximum(a, b)

    def backward(self, xp, gy):
        wa = (self.a > self.b) + 0.5 * (self.a == self.b)
        wa = wa.astype(gy.dtype)
        return gy * wa, gy * (1 - wa)


class Minimum(Function):
    """Element-wise min; a tie sends half the gradient to each side."""

    label = "minimum"

    def forward(self, xp, a, b):
        self.a, self.b = a, b
        return xp.minimum(a, b)

    def backward(self, xp, gy):
        wa = (self.a < self.b) + 0.5 * (self.a == self.b)
        wa = wa.astype(gy.dtype)
        return gy * wa, gy * (1 - wa)


class Clip(Function):
    """Clip to [low, high]; the gradient is passed only strictly inside."""

    label = "clip"

    def __init__(self, low, high):
        self.low, self.high = low, high

    def forward(self, xp, x):
        self.inside = (x > self.low) & (x < self.high)
        return xp.clip(x, self.low, self.high)

    def backward(self, xp, gy):
        return (gy * self.inside.astype(gy.dtype),)


def _select_cases(op):
    def cases(rng):
        # Distinct values on each side keep the check away from ties.
        a = rng.standard_normal((3, 4))
        b = a + rng.uniform(0.2, 1.0, (3, 4)) * rng.choice([-1, 1], (3, 4))
        c = rng.standard_normal((4,))
        d = c[None, :] + rng.uniform(0.2, 1.0, (2, 4)) * rng.choice([-1, 1], (2, 4))
        return [(op, [a, b]), (op, [c, d]),
                (lambda x: op(x, 0.0), [rng.uniform(0.2, 1, (5,)) * rng.choice([-1, 1], 5)])]
    return cases


@register_op("maximum", _select_cases(lambda a, b: maximum(a, b)))
def maximum(a, b):
    """Element-wise maximum with broadcasting."""
    return Maximum()(a, b)


@register_op("minimum", _select_cases(lambda a, b: minimum(a, b)))
def minimum(a, b):
    """Element-wise minimum with broadcasting."""
    return Minimum()(a, b)


def _clip_cases(rng):
    x = rng.uniform(-2, 2, (4, 5))
    x[np_abs_close(x, -1.0)] = -1.5
    x[np_abs_close(x, 1.0)] = 1.5
    return [(lambda t: clip(t, -1.0, 1.0), [x])]


def np_abs_close(x, v, tol=0.05):
    return (x > v - tol) & (x < v + tol)


@register_op("clip", _clip_cases)
def clip(x, low, high):
    """Clip to [low, high] (either may be None)."""
    import numpy as np  # noqa: PLC0415
    low = -np.inf if low is None else low
    high = np.inf if high is None else high
    return Clip(low, high)(x)
