"""shiftsim — an online continual-learning simulator.

Streams with label flips and covariate drift feed PyTorch learners batch by batch; every
prediction is scored before the learner trains on it; recovery after each shift is measured;
robustness studies run in parallel and end in comparative reports.

>>> import shiftsim as ss
>>> scenario = ss.label_flip_tasks(ss.data.digits(), rate=0.8, tasks=2, steps_per_task=60)
>>> result = ss.run(scenario, ss.models.mlp(hidden=(32,)), ss.optim.spec("sgdm"), seed=0)
>>> len(result.trace), list(result.summary()["phase"])
(120, [0, 1])
"""

from __future__ import annotations

import importlib
from typing import Any

from . import data, integrations, models, optim, shifts
from .allocator import keep_freed_memory
from .errors import ShiftsimError
from .scenario import (
    Abrupt,
    Gradual,
    Phase,
    Scenario,
    covariate_drift,
    label_flip_tasks,
    recurring,
)
from .shifts import (
    Brightness,
    ClassPrior,
    Contrast,
    FeatureOffset,
    FeatureScale,
    GaussianBlur,
    GaussianNoise,
    LabelFlip,
    PixelPermutation,
    Rotate,
)

keep_freed_memory()  # tensor-sized temporaries reuse memory: shiftsim.allocator

__version__ = "0.1.0"

# heavier parts load on first use (the engine pulls torch.nn, reports pull matplotlib)
_LAZY = {
    "run": ("shiftsim.engine", "run"),
    "RunResult": ("shiftsim.result", "RunResult"),
    "stream": ("shiftsim.stream", None),
    "Stream": ("shiftsim.stream", "Stream"),
    "engine": ("shiftsim.engine", None),
    "Study": ("shiftsim.study", "Study"),
    "Tuning": ("shiftsim.study", "Tuning"),
    "RunSpec": ("shiftsim.runspec", "RunSpec"),
    "study": ("shiftsim.study", None),
    "store": ("shiftsim.store", None),
    "load": ("shiftsim.store", "load"),
    "plots": ("shiftsim.plots", None),
    "report": ("shiftsim.report", "report"),
    "fleet": ("shiftsim.fleet", None),
    "run_fleet": ("shiftsim.fleet", "run_fleet"),
    "metrics": ("shiftsim.metrics", None),
}

#: the scenario builders, also reachable as ``ss.scenarios.label_flip_tasks`` etc.
scenarios = importlib.import_module("shiftsim.scenario")

__all__ = [
    "Abrupt", "Brightness", "ClassPrior", "Contrast", "FeatureOffset", "FeatureScale",
    "GaussianBlur", "GaussianNoise", "Gradual", "LabelFlip", "Phase", "PixelPermutation",
    "Rotate", "Scenario", "ShiftsimError", "covariate_drift", "data", "integrations",
    "label_flip_tasks", "models", "optim", "recurring", "scenarios", "shifts", *_LAZY,
]


def __dir__() -> list[str]:
    """The module's names, the lazily loaded ones (run, Study, report, store, plots ...)
    included, as tab completion and ``dir(ss)`` expect."""
    return sorted(set(globals()) | set(_LAZY))


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        value = mod if attr is None else getattr(mod, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'shiftsim' has no attribute {name!r}")
