"""Optimizers (thesis 2.5.3): the conservative four-rule optimizer, and Adam/SGD beside it.

All share one interface (``lab.optim.base.Optimizer``): ``step()`` uses each
parameter's ``.grad`` and descends, ``zero_grad()``, ``state_dict()`` /
``load_state_dict()`` for checkpoints, ``scale_step_sizes(factor)`` after a NaN
rollback, and ``last_rule_fractions`` (fig 2.13; empty for Adam/SGD).
``make_optimizer(name, params, **kw)`` builds one from a config string.
"""
from lab.optim.adam import SGD, Adam
from lab.optim.base import Optimizer, default_group, named_parameters
from lab.optim.conservative import (DEFAULT_ALPHAS, DEFAULT_GAMMAS, RULE_NAMES,
                                    ConservativeOptimizer, conservative_step)

OPTIMIZERS = {"conservative": ConservativeOptimizer, "adam": Adam, "sgd": SGD}


def make_optimizer(name: str, params, **kwargs) -> Optimizer:
    """``make_optimizer("conservative" | "adam" | "sgd", params, **hyperparameters)``."""
    try:
        cls = OPTIMIZERS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}: expected one of {sorted(OPTIMIZERS)}") from None
    return cls(params, **kwargs)


__all__ = ["Adam", "ConservativeOptimizer", "DEFAULT_ALPHAS", "DEFAULT_GAMMAS", "OPTIMIZERS",
           "Optimizer", "RULE_NAMES", "SGD", "conservative_step", "default_group",
           "make_optimizer", "named_parameters"]
