"""Optimizers: a registry of names (:func:`spec`) and shiftsim's own optimizers.

Each optimizer family is one module (:mod:`~shiftsim.optim.tam`, :mod:`~shiftsim.optim.adamem`,
:mod:`~shiftsim.optim.momo`, :mod:`~shiftsim.optim.grams`): its functional kernel, its state
initialisation, the fleet's rule for stacked members and the ``torch.optim`` class over them.
:mod:`~shiftsim.optim.sgd` and :mod:`~shiftsim.optim.adam` hold torch's SGD and Adam as the
fleet steps them. A class registered in :mod:`~shiftsim.optim.registry` is reachable here by
its name (``ss.optim.TAM``).

>>> import shiftsim as ss
>>> ss.optim.spec("sgdm", lr=0.05).label
'sgdm(lr=0.05)'
>>> ss.optim.TAM.__name__
'TAM'
"""

from __future__ import annotations

import importlib
from typing import Any

from .registry import REGISTRY, OptimizerEntry, OptimizerSpec, names, spec

#: shiftsim's optimizer classes (from the registry) and helpers, by name -> their module
_LAZY = {e.target.rpartition(":")[2]: e.target.partition(":")[0]
         for e in REGISTRY.values() if e.target.startswith(f"{__name__}.")}
_LAZY["tam_lr_from_sgdm"] = f"{__name__}.tam"

__all__ = ["REGISTRY", "OptimizerEntry", "OptimizerSpec", "names", "spec", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
