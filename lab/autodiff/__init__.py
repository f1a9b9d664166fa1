"""Define-by-run reverse-mode autodiff over numpy or CuPy arrays (thesis 2.5.1).

``Tensor(array, requires_grad=True)``, Python operators, the functions below, and
``backward()`` on a scalar. New fused ops subclass ``Function`` (see its module).
Every public op is in ``REGISTRY`` with its gradient-check cases.
"""
from lab.autodiff.function import REGISTRY, Function, OpSpec, register_op
from lab.autodiff.gradcheck import GradcheckError, gradcheck, numerical_gradient
from lab.autodiff.ops import *  # noqa: F403
from lab.autodiff.ops import __all__ as _ops_all
from lab.autodiff.tensor import Tensor, as_tensor, grad_enabled, no_grad, unbroadcast

__all__ = ["Function", "GradcheckError", "OpSpec", "REGISTRY", "Tensor", "as_tensor",
           "grad_enabled", "gradcheck", "no_grad", "numerical_gradient", "register_op",
           "unbroadcast", *_ops_all]
