"""The engine: the predict -> score -> train loop for one learner over one stream.

Performance (docs/architecture.md): data on the device; per phase the batch indices, labels, masks
are drawn at once; predictions, losses and diagnostics go into preallocated device buffers; there
is no host synchronisation inside the step loop except a finiteness check every
``check_every`` steps; results leave the device once, at the end.

>>> import shiftsim as ss
>>> sc = ss.label_flip_tasks(ss.data.digits(), rate=1.0, tasks=2, steps_per_task=100)
>>> res = ss.run(sc, ss.models.mlp(hidden=(64,)), ss.optim.spec("sgdm", lr=0.05), seed=0)
>>> list(res.trace.columns[:6])
['step', 'phase', 'n', 'correct', 'correct_true', 'loss']
>>> res.diverged, len(res.trace), res.accuracy_matrix.shape
(False, 200, (2, 2))
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import metrics
from .checks import check_model_fits
from .errors import ShiftsimError, SpecTypeError
from .learner import Learner, TorchLearner
from .models import ModelSpec
from .scenario import Scenario
from .stream import Stream, resolve_device


@dataclass
class RunResult:
    """Everything one run produced, as plain values (DataFrames and dicts).

    ``trace``: one row per step (step, phase, n, correct, correct_true, loss, n_new and
    ``diag_*`` optimizer diagnostics). ``evals``: held-out evaluations (step, phase, regime, n,
    correct, accuracy, phase_end). ``phases``: the scenario's phase table. ``info``: the scenario,
    learner, seed and device descriptions. ``timings``: seconds spent.
    """

    trace: pd.DataFrame
    evals: pd.DataFrame
    phases: pd.DataFrame
    info: dict[str, Any]
    diverged: bool = False
    diverged_step: int | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self, **recovery_options: Any) -> pd.DataFrame:
        """One row per phase: online accuracy, recovery time, drop, deficit, held-out accuracy.

        Options (``window``, ``q``, ``reference``, ``persistence``) go to
        :func:`shiftsim.metrics.recovery`.
        """
        return metrics.summarize(self.trace, self.phases, self.evals, **recovery_options)

    @property
    def accuracy_matrix(self) -> pd.DataFrame:
        """R[i, j]: held-out accuracy on the regime of phase j at the end of phase i."""
        return metrics.accuracy_matrix(self.evals, self.phases)

    @property
    def online_accuracy(self) -> float:
        """Stream online (prequential) accuracy against the presented labels."""
        return metrics.online_accuracy(self.trace)

    def scores(self) -> dict[str, float]:
        """Stream-level numbers: online accuracy (presented and original labels), ACC, BWT,
        forgetting and average anytime accuracy."""
        r = self.accuracy_matrix
        return {
            "online_acc": metrics.online_accuracy(self.trace),
            "online_acc_true": metrics.online_accuracy(self.trace, labels="true"),
            "acc": metrics.average_accuracy(r),
            "bwt": metrics.backward_transfer(r),
            "forgetting": metrics.forgetting(r),
            "anytime_acc": metrics.anytime_accuracy(self.evals, self.phases),
            "steps_run": float(len(self.trace)),
        }

    def plot(self, **options: Any) -> Any:
        """The run at a glance, as a matplotlib Figure: online accuracy over the stream, phases
        shaded, the recovery after each shift marked (:func:`shiftsim.plots.run_accuracy`;
        ``options`` go there). ``result.plot().savefig("run.png")``."""
        from .plots import run_accuracy

        return run_accuracy(self, **options)

    def __repr__(self) -> str:
        status = f"diverged at step {self.diverged_step}" if self.diverged else "ok"
        return (f"RunResult({len(self.trace)} steps, online_acc={self.online_accuracy:.4f}, "
                f"{status})")


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


class _EvalSchedule:
    """When to evaluate and which regimes: known in advance, so buffers are preallocated."""

    def __init__(self, scenario: Scenario) -> None:
        self.at: dict[int, tuple[int, list[int], bool]] = {}  # step t -> (phase, regimes, end)
        ends = {b + p.steps - 1: k for k, (b, p) in
                enumerate(zip(scenario.boundaries, scenario.phases))}
        seen: list[int] = []
        every = scenario.eval_every
        for k, (start, p) in enumerate(zip(scenario.boundaries, scenario.phases)):
            r = scenario.regime_of[k]
            if r not in seen:
                seen.append(r)
            for t in range(start, start + p.steps):
                if t in ends:
                    self.at[t] = (k, list(range(scenario.num_regimes)), True)
                elif every and (t + 1) % every == 0:
                    self.at[t] = (k, list(seen), False)
        self.rows: list[tuple[int, int, int, bool]] = []  # (step, phase, regime, phase_end)
        self.first_row: dict[int, int] = {}
        for t in sorted(self.at):
            k, regimes, end = self.at[t]
            self.first_row[t] = len(self.rows)
            self.rows += [(t + 1, k, r, end) for r in regimes]


def _stacked_optimizer(model: Any, optimizer: Any, data: Any) -> Any:
    """The optimizer spec when :func:`run` can use the stacked program of
    :mod:`shiftsim.fleet` for this model and optimizer — a ReLU MLP (``Flatten``/``Linear``/
    ``ReLU`` only, whose backward pass the fleet writes out by hand) and an optimizer the fleet
    steps — else None."""
    from . import fleet
    from .learner import build_model
    from .optim import spec

    if isinstance(model, type) or not (isinstance(model, (ModelSpec, nn.Module))
                                       or callable(model)):
        return None
    if all(hasattr(model, m) for m in ("setup", "observe", "predict")):
        return None  # a Learner trains its own way
    if isinstance(model, ModelSpec) and model.name not in ("mlp", "linear"):
        return None
    try:
        opt = spec(optimizer if optimizer is not None else "sgdm")
    except ShiftsimError:
        return None  # the per-step path raises the error
    if not fleet.supports(opt):
        return None
    try:
        net = build_model(model, data.to("cpu"), 0)
    except Exception:
        return None  # the per-step path raises the error
    return opt if fleet.hand_written_backward(net, data.input_shape) else None


def run(scenario: Scenario, model: ModelSpec | nn.Module | Callable[..., nn.Module] | Learner,
        optimizer: Any = None, seed: int = 0, device: str | torch.device = "auto", *,
        progress: bool = False, check_every: int = 64,
        vectorized: bool | None = None, threads: int | None = None) -> RunResult:
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
        vectorized: how the model is trained. ``None`` (default): a ReLU MLP with an optimizer
            the fleet supports runs as the fleet's stacked program with one member (its
            forward and backward passes written out as batched matmuls, no autograd graph:
            faster per step), which gives bit for bit what a study's fleet gives for this run;
            any other model runs the plain per-step loop. ``False``: always the plain loop (a
            module, ``loss.backward()``, ``torch.optim``-style ``step()``). ``True``: the
            stacked program, or an error when it does not apply. The two agree up to float
            rounding (``info["engine"]`` says which ran).
        threads: torch's intra-op threads for this run only (restored afterwards); ``None``
            (default) leaves the process's setting. Bit for bit means: same seed, device and
            number of threads. A study runs every run with one thread (``Study.run``'s
            ``threads=1``), so ``run(..., threads=1)`` gives exactly the trace a study stores
            for that run id; with another thread count reductions may round differently
            (about 1e-7 relative in the loss), and the difference can grow over steps.
    """
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ShiftsimError(f"threads must be a positive integer or None, got {threads!r}")
        from .study.spec import torch_threads

        with torch_threads(threads):
            return run(scenario, model, optimizer, seed, device, progress=progress,
                       check_every=check_every, vectorized=vectorized)
    t_start = time.perf_counter()
    if not isinstance(scenario, Scenario):
        raise SpecTypeError(f"run() needs a Scenario, got {type(scenario).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ShiftsimError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ShiftsimError(f"check_every must be a positive integer, got {check_every!r}")
    if vectorized not in (None, True, False):
        raise SpecTypeError(f"vectorized must be None, True or False, got {vectorized!r}")
    check_model_fits(model, scenario.data)  # before any work: one line naming both shapes
    if vectorized is not False and getattr(optimizer, "learner_for", None) is None:
        opt = _stacked_optimizer(model, optimizer, scenario.data)
        if opt is not None:
            from .fleet import run_fleet

            result = run_fleet(scenario, model, [(opt, seed)], device,
                               check_every=check_every, progress=progress)[0]
            result.info.pop("fleet", None)
            return result
        if vectorized:
            raise ShiftsimError("vectorized=True needs a ReLU MLP (Flatten, Linear and ReLU "
                                "layers) and an optimizer the fleet supports; got "
                                f"model {model!r} and optimizer {optimizer!r}")
    learner = _as_learner(model, optimizer)
    dev = resolve_device(device)
    stream = Stream(scenario, seed, dev)
    learner.setup(stream.data, dev, seed)

    T, b = scenario.total_steps, scenario.batch_size
    losses = torch.empty(T, dtype=torch.float32, device=dev)
    correct = torch.zeros(T, dtype=torch.int64, device=dev)
    correct_true = torch.zeros(T, dtype=torch.int64, device=dev)
    n_new = torch.empty(T, dtype=torch.int64)
    diag0 = learner.diagnostics() if hasattr(learner, "diagnostics") else {}
    diag_names = list(diag0)
    diag_buf = torch.zeros(T, len(diag_names), dtype=torch.float32, device=dev) \
        if diag_names else None
    schedule = _EvalSchedule(scenario)
    eval_correct = torch.zeros(len(schedule.rows), dtype=torch.int64, device=dev)
    heldout: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=T, desc=f"run seed {seed}", unit="step", leave=False)
    t_setup = time.perf_counter()

    diverged_at: int | None = None
    checked = 0  # steps [0, checked) are known finite
    noise = stream.noise

    def check(upto: int) -> int | None:
        nonlocal checked
        window = losses[checked:upto]
        bad = ~torch.isfinite(window)
        if bool(bad.any()):  # the one host sync, every check_every steps
            return checked + int(bad.nonzero()[0, 0])
        checked = upto
        return None

    for k in range(len(scenario.phases)):
        plan = stream.plan(k)
        start = plan.start
        preds = torch.empty(plan.steps, b, dtype=torch.int64, device=dev)
        phase_diag = diag_buf[start: start + plan.steps] if diag_buf is not None else None
        for s in range(plan.steps):
            t = start + s
            x = plan.inputs(s, noise)
            losses[t] = learner.observe(x, plan.y[s], preds[s])
            if phase_diag is not None:
                phase_diag[s] = torch.stack(list(learner.diagnostics().values()))
            if t in schedule.at:
                _, regimes, _ = schedule.at[t]
                row = schedule.first_row[t]
                for i, r in enumerate(regimes):
                    if r not in heldout:
                        heldout[r] = stream.heldout(r)
                    hx, hy = heldout[r]
                    eval_correct[row + i] = (learner.predict(hx) == hy).sum()
            if (t + 1) % check_every == 0:
                diverged_at = check(t + 1)
                if diverged_at is not None:
                    break
            if bar is not None and (t + 1) % 50 == 0:
                bar.update(50)
        done = s + 1
        correct[start: start + done] = (preds[:done] == plan.y[:done]).sum(1)
        correct_true[start: start + done] = (preds[:done] == plan.y_true[:done]).sum(1)
        n_new[start: start + plan.steps] = plan.n_new
        if diverged_at is None:
            diverged_at = check(start + plan.steps)
        if diverged_at is not None:
            break
    if bar is not None:
        bar.close()
    t_loop = time.perf_counter()

    steps_run = T if diverged_at is None else diverged_at
    trace = pd.DataFrame({
        "step": np.arange(steps_run, dtype=np.int64),
        "phase": np.repeat(np.arange(len(scenario.phases)),
                           [p.steps for p in scenario.phases])[:steps_run],
        "n": np.full(steps_run, b, dtype=np.int64),
        "correct": correct[:steps_run].cpu().numpy(),
        "correct_true": correct_true[:steps_run].cpu().numpy(),
        "loss": losses[:steps_run].cpu().numpy(),
        "n_new": n_new[:steps_run].numpy(),
    })
    if diag_buf is not None:
        values = diag_buf[:steps_run].cpu().numpy()
        for j, name in enumerate(diag_names):
            trace[f"diag_{name}"] = values[:, j]
    # an evaluation at step s sees the weights after update s - 1; at the diverged step d those
    # weights gave the non-finite loss, so only evaluations up to step d - 1 are kept
    last_eval = T if diverged_at is None else diverged_at - 1
    rows = [r for r in schedule.rows if r[0] <= last_eval]
    ec = eval_correct[: len(rows)].cpu().numpy()
    evals = pd.DataFrame({
        "step": np.array([r[0] for r in rows], dtype=np.int64),
        "phase": np.array([r[1] for r in rows], dtype=np.int64),
        "regime": np.array([r[2] for r in rows], dtype=np.int64),
        "n": np.full(len(rows), scenario.eval_size, dtype=np.int64),
        "correct": ec.astype(np.int64),
        "accuracy": ec / scenario.eval_size,
        "phase_end": np.array([r[3] for r in rows], dtype=bool),
    })
    t_end = time.perf_counter()
    info = {
        "scenario": scenario.to_dict(),
        "learner": learner.describe() if hasattr(learner, "describe") else {},
        "seed": seed,
        "device": str(dev),
        "engine": "eager",
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    loop_s = t_loop - t_setup
    timings = {"setup_s": t_setup - t_start, "loop_s": loop_s, "collect_s": t_end - t_loop,
               "total_s": t_end - t_start,
               "ms_per_step": 1000 * loop_s / steps_run if steps_run else math.nan}
    return RunResult(trace, evals, scenario.phase_table(), info,
                     diverged=diverged_at is not None, diverged_step=diverged_at,
                     timings=timings)
