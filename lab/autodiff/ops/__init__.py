"""Every public differentiable op; each is registered with its gradient-check cases."""
from lab.autodiff.ops.elementwise import (abs, add, clip, div, exp, log, log1p, maximum,  # noqa: A004
                                          minimum, mul, neg, power, relu, sigmoid, softplus,
                                          softplus10, sqrt, square, sub, tanh)
from lab.autodiff.ops.nn import dropout
from lab.autodiff.ops.reductions import logsumexp, matmul, max, mean, softmax, sum  # noqa: A004
from lab.autodiff.ops.shapes import (broadcast_to, concatenate, getitem, reshape, scatter_add,
                                     stack, take, transpose, where)

__all__ = ["abs", "add", "broadcast_to", "clip", "concatenate", "div", "dropout", "exp",
           "getitem", "log", "log1p", "logsumexp", "matmul", "max", "maximum", "mean",
           "minimum", "mul", "neg", "power", "relu", "reshape", "scatter_add", "sigmoid",
           "softmax", "softplus", "softplus10", "sqrt", "square", "stack", "sub", "sum",
           "take", "tanh", "transpose", "where"]
