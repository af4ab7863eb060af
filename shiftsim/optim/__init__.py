"""Optimizers: a registry of names (:func:`spec`) and shiftsim's own optimizers.

>>> import shiftsim as ss
>>> ss.optim.spec("sgdm", lr=0.05).label
'sgdm(lr=0.05)'
"""

from __future__ import annotations

import importlib
from typing import Any

from .registry import REGISTRY, OptimizerEntry, OptimizerSpec, names, spec

_LAZY = {
    "TAM": "tam", "AdaTAM": "tam", "AdaTAMW": "tam", "tam_lr_from_sgdm": "tam",
    "AdaptiveMemorySGD": "adamem", "AdaptiveMemoryAdamW": "adamem",
    "MoMo": "momo", "MoMoAdam": "momo",
    "Grams": "grams",
}

__all__ = ["REGISTRY", "OptimizerEntry", "OptimizerSpec", "names", "spec", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
