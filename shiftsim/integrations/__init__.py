"""Bridges to other frameworks, each an optional extra imported only when used.

* :mod:`shiftsim.integrations.avalanche` (extra ``shiftsim[avalanche]``): shiftsim scenarios as
  Avalanche benchmarks (:func:`~shiftsim.integrations.avalanche.to_avalanche`,
  :func:`~shiftsim.integrations.avalanche.to_avalanche_online`) and Avalanche strategies as
  shiftsim learners (:class:`~shiftsim.integrations.avalanche.AvalancheLearner`).

Importing this package, or ``shiftsim.integrations.avalanche``, does not import Avalanche; the
first function that needs it does. ``import shiftsim`` imports this package, which registers
the integrations' spec decoders with the optimizer registry (by import path: nothing more is
imported until a stored spec needs one).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..optim.registry import register_decoder

__all__ = ["avalanche"]

# a study's stored optimizer spec with a "strategy" is an Avalanche strategy spec
register_decoder("strategy", "shiftsim.integrations.avalanche.spec:StrategySpec.from_dict")


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
