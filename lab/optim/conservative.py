"""The conservative optimizer of thesis section 2.5.3.

Per parameter element, four proposals for the step, all with the sign of the
gradient ``g`` (so the most conservative one is simply the smallest in magnitude):

    rule 1  alpha1 * sign(g)          a cap on the change of a parameter value
    rule 2  alpha2 * g                a maximum learning rate
    rule 3  alpha3 * g / sqrt(ghat2)  rmsprop: same-size steps in parameter space
    rule 4  alpha4 * g / ghat2        a cap on the change of the objective (~ g * step)

``ghat2`` is the largest ("most alarming") of three decaying averages of ``g**2``,
``avg <- g**2 / gamma + (1 - 1/gamma) * avg`` with ``gamma = 1, e**3, e**6``.
The thesis minimises, so parameters move by ``theta -= delta``.

Choices the thesis leaves open, and what this module does:

* **Averages are updated with the current gradient before the step is computed.**
  The thesis says the iteration "makes an update every time g is computed" and that a
  small gamma makes large gradients have "an almost immediate effect"; with gamma = 1
  that average *is* the current ``g**2`` only under this reading. A consequence worth
  knowing: ``ghat2 >= g**2``, so rule 3 never proposes more than ``alpha3`` and the
  divisions are safe wherever ``g != 0`` (elements with ``g == 0`` do not move and are
  counted as ``"zero_grad"``, not as a rule).
* **Initialisation "high"** (the thesis: fig 2.13's early rule-4 dominance is "an
  artefact of initialization ... the initial gradient size estimates are high"). The
  thesis gives no value and the parameter groups differ in gradient scale by orders of
  magnitude, so the default is *relative*: at the first step with a non-zero gradient
  the gamma > 1 averages start at ``init_factor * max(g**2, mean(g**2))`` (the mean over
  that parameter tensor, so elements whose first gradient happens to be 0 start high too).
  With ``init_factor = 100`` the estimate starts 10x above the first gradient's RMS
  and the gamma = e**6 average forgets it after a few thousand steps, giving the
  rule-4-first, rule-3-later pattern of fig 2.13. ``init_sq=<float>`` instead starts
  every average at that absolute value (the thesis's literal reading).
* **Default alphas** (``DEFAULT_ALPHAS``), see its comment: chosen by unit analysis
  for the capsule model's objective (squared error summed over the pixels of an image,
  averaged over the minibatch) and checked on a small MNIST autoencoder
  (``tests/test_optim.py`` keeps the check small; the calibration is described below).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from lab.backend import get_array_module
from lab.optim.base import Optimizer

#: (alpha1, alpha2, alpha3, alpha4). Units and why these values:
#:   alpha1 = 0.1: no parameter moves more than 0.1 in one step (weights are O(0.01-1),
#:       poses O(1)): an emergency brake the thesis says almost never dominates.
#:   alpha2 = 1.0: a plain learning rate; it only dominates for elements whose gradient
#:       RMS is below alpha3/alpha2 = 1e-3, i.e. nearly irrelevant ones (the thesis found
#:       rule 2 "simply useless": never binding with its best alphas).
#:   alpha3 = 1e-3: typical step in parameter units, the rmsprop/Adam default.
#:   alpha4 = 1e-3: rule 4 takes over from rule 3 where sqrt(ghat2) > alpha4/alpha3 = 1,
#:       i.e. where one element's gradient RMS exceeds 1 (squared-error units per image);
#:       then it changes the objective by at most ~alpha4 per element and step.
#: Calibration: on a 784-256-784 logistic autoencoder on MNIST (batch 100, objective as
#: above) these settle with rule 3 dominant for most elements and rule 4 for the
#: large-gradient ones (output biases, weights of active units), loss close to Adam(1e-3).
DEFAULT_ALPHAS: tuple[float, float, float, float] = (0.1, 1.0, 1e-3, 1e-3)
#: gamma = e^0, e^3, e^6 (thesis 2.5.3).
DEFAULT_GAMMAS: tuple[float, ...] = (1.0, math.exp(3.0), math.exp(6.0))
RULE_NAMES = ("rule1", "rule2", "rule3", "rule4", "zero_grad")


def _factor(ghat2, alphas):
    """``f = min(alpha2, alpha3/sqrt(ghat2), alpha4/ghat2)`` and the rule-3 factor.

    Every proposal is ``g`` times a positive factor except rule 1, so the most
    conservative step is ``clip(g * f, -alpha1, alpha1)``: a few passes over the
    parameter instead of four proposal arrays. ``ghat2 == 0`` (only where ``g == 0``)
    gives infinite factors, hence ``f = alpha2`` and a zero step.
    """
    xp = get_array_module(ghat2)
    _, a2, a3, a4 = alphas
    with np.errstate(divide="ignore"):
        q3 = a3 / xp.sqrt(ghat2)
        f = a4 / ghat2
    xp.minimum(f, q3, out=f)
    xp.minimum(f, a2, out=f)
    return f, q3


def conservative_step(g, ghat2, alphas: Sequence[float]):
    """The step ``delta`` (to subtract) and the winning rule per element (0..3, 4 = g==0).

    ``ghat2`` must be >= 0 and > 0 wherever ``g != 0`` (as it is when the averages were
    updated with ``g`` first). Ties go to the lower-numbered rule. The optimizer uses
    the same ``_factor``; this function adds the per-element winner for tests and views.
    """
    xp = get_array_module(g, ghat2)
    alphas = tuple(float(a) for a in alphas)
    f, q3 = _factor(ghat2, alphas)
    delta = xp.clip(g * f, -alphas[0], alphas[0])
    winner = xp.full(g.shape, 3, dtype=xp.int8)
    winner[f == q3] = 2
    winner[f == alphas[1]] = 1
    winner[xp.abs(g) * f >= alphas[0]] = 0
    winner[g == 0] = 4
    return delta, winner


def _rule_counts(g, f, q3, alphas):
    """Counts of elements per winner (rule1..rule4, zero_grad) as a small device array,
    with the tie order of ``conservative_step``."""
    xp = get_array_module(g)
    a1, a2 = alphas[0], alphas[1]
    n = g.size
    nonzero = g != 0
    zero = n - xp.count_nonzero(nonzero)
    capped = xp.abs(g) * f >= a1               # rule 1 (never true where g == 0)
    n1 = xp.count_nonzero(capped)
    rest = nonzero & ~capped
    is2 = f == a2
    n2 = xp.count_nonzero(is2 & rest)
    n3 = xp.count_nonzero((f == q3) & ~is2 & rest)
    n4 = n - n1 - n2 - n3 - zero
    return xp.stack([xp.asarray(c) for c in (n1, n2, n3, n4, zero)])


class ConservativeOptimizer(Optimizer):
    """Thesis 2.5.3: the smallest of four step proposals, per parameter element.

    Parameters
    ----------
    params : dict name -> Tensor (names key the state and the per-group statistics),
        or a list of Tensors (named "0", "1", ...).
    alphas : (alpha1, alpha2, alpha3, alpha4), see ``DEFAULT_ALPHAS``.
    gammas : the decay times of the ``g**2`` averages; ``ghat2`` is their maximum.
    init_sq : None for the relative high start (``init_factor`` times the first
        gradient's square, see the module docstring) or a float: the absolute start value.
    init_factor : the multiplier of the relative start.
    update_first : update the averages with this step's gradient before computing the
        step (default), or after it (``ghat2`` then only knows earlier gradients and
        rule 1 is the brake for a sudden gradient spike); see the module docstring.
    overrides : fnmatch pattern on parameter names -> {"alphas": ..., "init_sq": ...,
        "init_factor": ...}; the first matching pattern wins.
    record_every : count which rule won (fig 2.13) every this many steps (0: never);
        counting costs a few passes over the parameters and one small transfer.

    After a counted ``step()``, ``last_rule_fractions`` gives ``{"rule1".."rule4", "zero_grad"}``
    fractions of all updated parameter elements; ``rule_fractions(by="group")`` or
    ``by="param"`` splits them by parameter group.
    """

    _hyper_keys = ("alphas", "init_sq", "init_factor")
    _array_slots = ("avg0", "avg1", "avg2", "avg3", "avg4", "avg5")
    rule_names = RULE_NAMES

    def __init__(self, params, alphas: Sequence[float] = DEFAULT_ALPHAS,
                 gammas: Sequence[float] = DEFAULT_GAMMAS, init_sq: float | None = None,
                 init_factor: float = 100.0, update_first: bool = True,
                 overrides: Mapping[str, Mapping[str, Any]] | None = None,
                 record_every: int = 1):
        self.alphas = _check_alphas(alphas)
        self.gammas = tuple(float(g) for g in gammas)
        if not self.gammas or any(g < 1 for g in self.gammas):
            raise ValueError(f"gammas must be >= 1 (1 = no memory), got {gammas}")
        if len(self.gammas) > len(self._array_slots):
            raise ValueError(f"at most {len(self._array_slots)} averages")
        self.init_sq = None if init_sq is None else float(init_sq)
        self.init_factor = float(init_factor)
        self.update_first = bool(update_first)
        self.record_every = int(record_every)
        super().__init__(params, overrides)
        for over in self.overrides.values():
            if "alphas" in over:
                over["alphas"] = _check_alphas(over["alphas"])

    def _init_slots(self, data) -> dict[str, Any]:
        xp = get_array_module(data)
        slots: dict[str, Any] = {f"avg{k}": xp.zeros_like(data) for k in range(len(self.gammas))}
        slots["ready"] = 0  # 1 once the averages got their high start value
        return slots

    def _update(self, name, data, g, slots, hyper):
        xp = get_array_module(data)
        g2 = g * g
        if not slots["ready"]:
            if hyper["init_sq"] is not None:
                start = xp.full_like(data, hyper["init_sq"])
            else:
                mean = g2.mean()
                if float(mean) == 0.0:
                    start = None  # nothing seen yet: wait for the first non-zero gradient
                else:
                    start = hyper["init_factor"] * xp.maximum(g2, mean)
            if start is not None:
                for k in range(len(self.gammas)):
                    slots[f"avg{k}"][...] = start
                slots["ready"] = 1
        if self.update_first:  # the default reading (module docstring)
            self._update_averages(slots, g2)
        ghat2 = slots["avg0"].copy()
        for k in range(1, len(self.gammas)):
            xp.maximum(ghat2, slots[f"avg{k}"], out=ghat2)
        if not self.update_first:
            self._update_averages(slots, g2)
        alphas = tuple(a * self.step_scale for a in hyper["alphas"])
        f, q3 = _factor(ghat2, alphas)
        delta = g * f
        xp.clip(delta, -alphas[0], alphas[0], out=delta)
        data -= delta.astype(data.dtype, copy=False)
        if self.record_every and self.step_count % self.record_every == 0:
            return _rule_counts(g, f, q3, alphas)
        return None

    def _update_averages(self, slots, g2) -> None:
        for k, gamma in enumerate(self.gammas):
            avg = slots[f"avg{k}"]
            if gamma == 1.0:
                avg[...] = g2
            else:
                avg *= 1.0 - 1.0 / gamma
                avg += g2 * (1.0 / gamma)

    def _scalars(self) -> dict[str, Any]:
        return {"alphas": list(self.alphas), "gammas": list(self.gammas),
                "update_first": self.update_first,
                "init_sq": self.init_sq, "init_factor": self.init_factor}

    def _load_scalars(self, d) -> None:
        if "alphas" in d:
            self.alphas = _check_alphas(d["alphas"])
        if "gammas" in d:
            self.gammas = tuple(float(g) for g in d["gammas"])
        if "init_sq" in d:
            self.init_sq = None if d["init_sq"] is None else float(d["init_sq"])
        if "init_factor" in d:
            self.init_factor = float(d["init_factor"])
        if "update_first" in d:
            self.update_first = bool(d["update_first"])

    def load_state_dict(self, d) -> None:
        super().load_state_dict(d)
        for slots in self.state.values():
            if "ready" in slots:
                slots["ready"] = int(slots["ready"])


def _check_alphas(alphas) -> tuple[float, float, float, float]:
    alphas = tuple(float(a) for a in alphas)
    if len(alphas) != 4 or any(not (a > 0) for a in alphas):
        raise ValueError(f"alphas must be four positive numbers, got {alphas}")
    return alphas
