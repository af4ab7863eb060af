"""``run``: one learner over one scenario's stream — the entry point over the run loop.

:func:`run` checks its arguments, picks the learner (``vectorized=``: the fleet's stacked
program with one member, or the model and optimizer as they are) and hands it to the one loop,
:func:`shiftsim.loop.run_members`, which steps the stream, scores, trains, evaluates and
assembles the :class:`~shiftsim.result.RunResult` (importable from here as before).

>>> import shiftsim as ss
>>> sc = ss.label_flip_tasks(ss.data.digits(), rate=1.0, tasks=2, steps_per_task=100)
>>> res = ss.run(sc, ss.models.mlp(hidden=(64,)), ss.optim.spec("sgdm", lr=0.05), seed=0)
>>> list(res.trace.columns[:6])
['step', 'phase', 'n', 'correct', 'correct_true', 'loss']
>>> res.diverged, len(res.trace), res.accuracy_matrix.shape
(False, 200, (2, 2))
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .checks import check_model_fits
from .errors import ShiftsimError, SpecTypeError, check_range
from .fleet import StackedLearner, stacked_program
from .learner import Learner, TorchLearner
from .loop import Members, OneLearner, run_members
from .models import ModelSpec
from .optim import spec
from .result import RunResult
from .runtime import deterministic_mode, torch_threads
from .scenario import Scenario

__all__ = ["RunResult", "run"]


def _as_learner(model: Any, optimizer: Any) -> Learner:
    learner_for = getattr(optimizer, "learner_for", None)  # a spec that brings its own learner
    if learner_for is not None:  # (an Avalanche StrategySpec): it trains the model its own way
        return learner_for(model)
    if isinstance(model, (ModelSpec, nn.Module)):
        return TorchLearner(model, optimizer if optimizer is not None else "sgdm")
    if all(hasattr(model, m) for m in ("setup", "observe", "predict")):
        if optimizer is not None:
            raise ShiftsimError("a Learner brings its own optimizer; pass optimizer=None")
        return model
    if callable(model):
        return TorchLearner(model, optimizer if optimizer is not None else "sgdm")
    raise SpecTypeError(f"model must be a ModelSpec (e.g. ss.models.mlp()), an nn.Module, a "
                        f"callable Dataset -> nn.Module or a Learner, got {model!r}")


def run(scenario: Scenario, model: ModelSpec | nn.Module | Callable[..., nn.Module] | Learner,
        optimizer: Any = None, seed: int = 0, device: str | torch.device = "auto", *,
        progress: bool = False, check_every: int = 64,
        vectorized: bool | None = None, threads: int | None = None,
        deterministic: bool = False) -> RunResult:
    """Run one learner over ``scenario``'s stream and return its :class:`RunResult`.

    Every batch is scored with the parameters before the update (prequential, test-then-train),
    then trained on. A non-finite loss stops the run: the trace keeps the steps before it and the
    result is marked ``diverged``.

    Args:
        scenario: the :class:`~shiftsim.scenario.Scenario`.
        model: a ModelSpec, an ``nn.Module`` (deep-copied), a callable ``Dataset -> nn.Module``,
            or a :class:`~shiftsim.learner.Learner` (then ``optimizer`` must be None).
        optimizer: an :class:`~shiftsim.optim.OptimizerSpec`, a registry name such as ``"tam"``,
            or a torch optimizer class / factory. Default ``"sgdm"``.
        seed: seeds the batch order, the label tables, the noise and the initial weights.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` ...
        progress: show a progress bar over steps.
        check_every: steps between the finiteness checks of the loss (the only host syncs).
        vectorized: how the model is trained. ``None`` (default): a ReLU MLP (``mlp()`` with
            the default activation and no norm, ``linear()``, or a module of ``Flatten``,
            ``Linear`` and ``ReLU`` layers) with an optimizer the fleet supports runs as the
            fleet's stacked program with one member (its forward and backward passes written
            out as batched matmuls, no autograd graph: faster per step), which gives bit for
            bit what a study's fleet gives for this run; any other model (a model factory
            too: what it builds is not known in advance) runs the plain per-step loop.
            ``False``: always the plain loop (a module, ``loss.backward()``,
            ``torch.optim``-style ``step()``). ``True``: the stacked program, or an error when
            it does not apply. The two agree up to float rounding (``info["engine"]`` says
            which ran; :func:`shiftsim.fleet.stacked_program` decides).
        threads: torch's intra-op threads for this run only (restored afterwards); ``None``
            (default) leaves the process's setting. Bit for bit means: same seed, device and
            number of threads. A study runs every run with one thread (``Study.run``'s
            ``threads=1``), so ``run(..., threads=1)`` gives exactly the trace a study stores
            for that run id; with another thread count reductions may round differently
            (about 1e-7 relative in the loss), and the difference can grow over steps.
        deterministic: run under torch's deterministic settings
            (:func:`shiftsim.runtime.deterministic_mode`: deterministic algorithms, cuDNN
            deterministic without autotuning, TF32 off, ``CUBLAS_WORKSPACE_CONFIG`` set),
            restored afterwards; ``info["determinism"]`` records the settings a run ran
            under, whichever this is. On CUDA, bit for bit then means: same seed, GPU
            model, driver, CUDA/cuDNN and torch versions (and no "nondeterministic" warning);
            without it CUDA results may differ in the last bits between reruns (torch's
            documented conditions; not yet checked on a GPU by shiftsim's tests). On the CPU it
            changes nothing (CPU results are reproducible for a fixed number of threads).
    """
    if not isinstance(deterministic, bool):
        raise SpecTypeError(f"deterministic must be True or False, got {deterministic!r}")
    if threads is not None or deterministic:
        threads = check_range(threads, "threads", 1, integer=True, optional=True)
        with torch_threads(threads), deterministic_mode(deterministic):
            return run(scenario, model, optimizer, seed, device, progress=progress,
                       check_every=check_every, vectorized=vectorized)
    t_start = time.perf_counter()
    if not isinstance(scenario, Scenario):
        raise SpecTypeError(f"run() needs a Scenario, got {type(scenario).__name__}")
    seed = check_range(seed, "seed", 0, integer=True)
    check_every = check_range(check_every, "check_every", 1, integer=True)
    if vectorized not in (None, True, False):
        raise SpecTypeError(f"vectorized must be None, True or False, got {vectorized!r}")
    check_model_fits(model, scenario.data)  # before any work: one line naming both shapes
    learner: Members
    if vectorized is not False and \
            stacked_program(model, optimizer, scenario.data.input_shape) == "relu_mlp":
        learner = StackedLearner(model, [(spec(optimizer if optimizer is not None else "sgdm"),
                                          seed)])
    elif vectorized:
        raise ShiftsimError("vectorized=True needs a ReLU MLP (Flatten, Linear and ReLU "
                            "layers) and an optimizer the fleet supports; got "
                            f"model {model!r} and optimizer {optimizer!r}")
    else:
        learner = OneLearner(_as_learner(model, optimizer), seed)
    return run_members(scenario, learner, device, check_every=check_every, progress=progress,
                       started=t_start)[0]
