"""The baselines beside the conservative optimizer: Adam and SGD with momentum.

The thesis never compared its optimizer with anything (2.5.3); these make that
comparison one config string away. Same interface as ``ConservativeOptimizer``.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from lab.backend import get_array_module
from lab.optim.base import Optimizer


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction, descending the objective.

    ``m <- b1 m + (1-b1) g``, ``v <- b2 v + (1-b2) g^2``,
    ``theta -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)``, where ``t`` counts
    this parameter's own updates (a parameter without a gradient keeps its clock).
    ``overrides`` may set ``lr``, ``betas``, ``eps`` per fnmatch pattern.
    """

    _hyper_keys = ("lr", "betas", "eps")
    _array_slots = ("m", "v")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, overrides: Mapping[str, Mapping[str, Any]] | None = None):
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        super().__init__(params, overrides)

    def _init_slots(self, data) -> dict[str, Any]:
        xp = get_array_module(data)
        return {"m": xp.zeros_like(data), "v": xp.zeros_like(data), "t": 0}

    def _update(self, name, data, g, slots, hyper):
        xp = get_array_module(data)
        b1, b2 = hyper["betas"]
        slots["t"] = t = int(slots["t"]) + 1
        m, v = slots["m"], slots["v"]
        m *= b1
        m += (1.0 - b1) * g
        v *= b2
        v += (1.0 - b2) * (g * g)
        lr = hyper["lr"] * self.step_scale
        # Algorithm 1 of the paper as written (eps added after the bias correction).
        mhat = m / (1.0 - b1 ** t)
        vhat = v / (1.0 - b2 ** t)
        data -= (lr * mhat / (xp.sqrt(vhat) + hyper["eps"])).astype(data.dtype, copy=False)
        return None

    def _scalars(self) -> dict[str, Any]:
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps}

    def _load_scalars(self, d) -> None:
        self.lr = float(d.get("lr", self.lr))
        self.betas = tuple(float(b) for b in d.get("betas", self.betas))
        self.eps = float(d.get("eps", self.eps))


class SGD(Optimizer):
    """Gradient descent with (heavy-ball) momentum: ``u <- mu u + g``, ``theta -= lr u``.

    ``overrides`` may set ``lr`` and ``momentum`` per fnmatch pattern.
    """

    _hyper_keys = ("lr", "momentum")
    _array_slots = ("u",)

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.9,
                 overrides: Mapping[str, Mapping[str, Any]] | None = None):
        self.lr = float(lr)
        self.momentum = float(momentum)
        if not (0.0 <= self.momentum < 1.0) or math.isnan(self.momentum):
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        super().__init__(params, overrides)

    def _init_slots(self, data) -> dict[str, Any]:
        return {"u": get_array_module(data).zeros_like(data)}

    def _update(self, name, data, g, slots, hyper):
        u = slots["u"]
        u *= hyper["momentum"]
        u += g
        data -= (hyper["lr"] * self.step_scale * u).astype(data.dtype, copy=False)
        return None

    def _scalars(self) -> dict[str, Any]:
        return {"lr": self.lr, "momentum": self.momentum}

    def _load_scalars(self, d) -> None:
        self.lr = float(d.get("lr", self.lr))
        self.momentum = float(d.get("momentum", self.momentum))
