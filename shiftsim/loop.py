"""The run loop: predict -> score -> train, step by step, for K learners on one scenario.

This module is the one place where a run happens. :func:`run_members` steps the streams of
``K`` members (:mod:`shiftsim.feed`), has the learner score and train on every batch, records
the per-step values in preallocated device buffers, evaluates on held-out data on a schedule
fixed in advance (:class:`EvalSchedule`; regimes whose held-out inputs are the same tensor,
those without an input shift, are predicted once per evaluation and scored against each
regime's labels), checks for non-finite losses every ``check_every``
steps (the only host synchronisation in the loop) and assembles one
:class:`~shiftsim.result.RunResult` per member. :func:`shiftsim.run` and
:func:`shiftsim.run_fleet` are entry points over it that pick the learner:

* a :class:`Members` object steps K members at once: the fleet's stacked model with its
  optimizer states (:class:`shiftsim.fleet.StackedLearner`, K >= 1);
* any :class:`~shiftsim.learner.Learner` (a model and a torch optimizer, an Avalanche strategy,
  your own) is the K = 1 case, wrapped by :class:`OneLearner`.

A member whose loss stops being finite is recorded as diverged at that step: its trace ends
there (and its evaluations one step before); the others go on, and the loop stops when every
member has diverged.

>>> import shiftsim as ss
>>> from shiftsim.learner import TorchLearner
>>> sc = ss.label_flip_tasks(ss.data.digits(), rate=1.0, tasks=2, steps_per_task=30)
>>> [res] = run_members(sc, OneLearner(TorchLearner(ss.models.linear(), "sgdm"), seed=0), "cpu")
>>> len(res.trace), res.info["engine"], res.diverged
(60, 'eager', False)
"""

from __future__ import annotations

import math
import platform
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from .errors import ShiftsimError
from .feed import StackedFeed, StreamFeed
from .learner import Learner
from .optim import _native
from .realtime import train_schedule
from .result import RunResult
from .runtime import denormal_mode, denormals, determinism_flags, device_facts
from .scenario import Scenario
from .stream import Stream, resolve_device


class Stopped(Exception):
    """:func:`run_members` ended early because its ``stop`` event was set."""


class Members(Protocol):
    """K learners the loop steps together (the fleet's stacked model, or one learner).

    ``seeds[i]`` is member ``i``'s run seed (its stream, label tables and initial weights).
    ``stacked``: the member batches come stacked ``(K, b, ...)``
    (:class:`~shiftsim.feed.StackedFeed`; ``flat_inputs``: flattened to ``(K, b, features)``),
    else one learner takes the stream's ``(b, ...)`` batches
    (:class:`~shiftsim.feed.StreamFeed`). ``grad``: the autograd mode for the whole loop
    (None: as the caller has it). ``engine`` names the program in ``info["engine"]``.
    """

    seeds: Sequence[int]
    stacked: bool
    flat_inputs: bool
    grad: bool | None
    engine: str

    def setup(self, data: Any, device: torch.device, steps: int) -> None:
        """Build every member for a run of ``steps`` steps on ``data`` (on ``device``)."""

    @property
    def loss_dtype(self) -> torch.dtype:
        """The dtype the losses are recorded (and checked for finiteness) in."""

    def step(self, t: int, x: torch.Tensor, y: torch.Tensor,
             out: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Step ``t``: write every member's predictions for ``x`` made *before* training into
        ``out[0]`` ``(K, 1, b)`` and its training loss into ``out[1]`` ``(K,)``, then train."""

    def score(self, t: int, x: torch.Tensor, y: torch.Tensor,
              out: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Step ``t`` without training (a real-time stream's batch that arrives while the
        learner is busy): predictions and losses into ``out`` as :meth:`step` writes them."""

    def costs(self) -> list[float]:
        """Each member's relative cost per training step (real-time streams)."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class predictions ``(K, n)`` (or ``(n,)`` for K = 1) for held-out inputs."""

    def diagnostics(self) -> list[dict[str, np.ndarray]]:
        """Per member, its recorded per-step diagnostics (``diag_<name>`` trace columns), one
        value per step of the run (after the loop; steps not run hold zeros)."""

    def describe(self, k: int) -> dict[str, Any]:
        """A JSON description of member ``k`` (model, optimizer ...)."""


class OneLearner:
    """A :class:`~shiftsim.learner.Learner` as the K = 1 case of :class:`Members`: it gets the
    stream's batches as they are and trains the way it trains (autograd, its optimizer)."""

    stacked = False
    flat_inputs = False
    grad = None
    engine = "eager"
    loss_dtype = torch.float32

    def __init__(self, learner: Learner, seed: int) -> None:
        self.learner = learner
        self.seeds = [seed]
        self._diag: torch.Tensor | None = None
        self._diag_names: list[str] = []

    def setup(self, data: Any, device: torch.device, steps: int) -> None:
        lrn = self.learner
        lrn.setup(data, device, self.seeds[0])
        self._diagnose = getattr(lrn, "diagnostics", None)
        self._diag_names = list(self._diagnose()) if self._diagnose is not None else []
        if self._diag_names:
            self._diag = torch.zeros(steps, len(self._diag_names), dtype=torch.float32,
                                     device=device)

    def step(self, t: int, x: torch.Tensor, y: torch.Tensor,
             out: tuple[torch.Tensor, torch.Tensor]) -> None:
        out[1][0] = self.learner.observe(x, y, out[0][0, 0])  # a 0-d tensor (or a number)
        if self._diag is not None:
            self._diag[t] = torch.stack(list(self._diagnose().values()))  # type: ignore[misc]

    def score(self, t: int, x: torch.Tensor, y: torch.Tensor,
              out: tuple[torch.Tensor, torch.Tensor]) -> None:
        score = getattr(self.learner, "score", None)
        if score is None:
            raise ShiftsimError(f"{type(self.learner).__name__} cannot score a batch without "
                                "training on it (it has no score() method), so it cannot run "
                                "on a real-time stream")
        out[1][0] = score(x, y, out[0][0, 0])
        if self._diag is not None:
            self._diag[t] = float("nan")

    def costs(self) -> list[float]:
        return [float(getattr(self.learner, "cost", 1.0))]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.learner.predict(x)

    def diagnostics(self) -> list[dict[str, np.ndarray]]:
        if self._diag is None:
            return [{}]
        values = self._diag.cpu().numpy()
        return [{name: values[:, j] for j, name in enumerate(self._diag_names)}]

    def describe(self, k: int) -> dict[str, Any]:
        describe = getattr(self.learner, "describe", None)
        return describe() if describe is not None else {}


class EvalSchedule:
    """When to evaluate and which regimes: known in advance, so buffers are preallocated.

    ``at[t]``: ``(phase, regimes, phase_end)`` for each step ``t`` after which the held-out
    sets are scored: every ``eval_every`` steps the regimes seen so far, at the end of each
    phase every regime. ``rows``: one ``(step, phase, regime, phase_end)`` per evaluation, in
    order (``step`` counts the updates made); ``first_row[t]``: the first row of step ``t``.

    >>> import shiftsim as ss
    >>> sc = ss.label_flip_tasks(ss.data.digits(), rate=1.0, tasks=2, steps_per_task=30,
    ...                          eval_every=20)
    >>> EvalSchedule(sc).rows[:4]
    [(20, 0, 0, False), (30, 0, 0, True), (30, 0, 1, True), (40, 1, 0, False)]
    """

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


def run_members(scenario: Scenario, learner: Members, device: str | torch.device = "auto", *,
                check_every: int = 64, progress: bool = False,
                started: float | None = None, label: str | None = None,
                stop: threading.Event | None = None) -> list[RunResult]:
    """Run the K members of ``learner`` over ``scenario`` and return one
    :class:`~shiftsim.result.RunResult` per member, in the learner's order.

    Every batch is scored with the parameters before the update (prequential,
    test-then-train), then trained on. ``check_every``: steps between the finiteness checks of
    the losses. ``started``: the ``time.perf_counter()`` at which the caller began (the
    setup time counts from there). ``label``: the progress bar's description (default: the
    fleet's size, or the run's seed). ``stop``: when set (another thread's doing), the loop
    ends at the next step with :class:`Stopped`.
    """
    t_start = time.perf_counter() if started is None else started
    dev = resolve_device(device)
    denormal_setting = denormal_mode()  # a bad $SHIFTSIM_DENORMALS fails before any work
    seeds = list(learner.seeds)
    K = len(seeds)
    distinct = sorted(set(seeds))
    streams = [Stream(scenario, s, dev) for s in distinct]
    T, b = scenario.total_steps, scenario.batch_size
    learner.setup(streams[0].data, dev, T)
    train = _train_schedule(scenario, learner, T)
    feed: StreamFeed | StackedFeed = StackedFeed(
        streams, [distinct.index(s) for s in seeds], flat=learner.flat_inputs) \
        if learner.stacked else StreamFeed(streams[0])

    # step-major, in the learner's loss dtype (what its optimizers see); the trace keeps float32
    losses_tm = torch.empty(T, K, dtype=learner.loss_dtype, device=dev)
    losses = losses_tm.T
    correct = torch.zeros(K, T, dtype=torch.int64, device=dev)
    correct_true = torch.zeros(K, T, dtype=torch.int64, device=dev)
    n_new = torch.empty(K, T, dtype=torch.int64)
    schedule = EvalSchedule(scenario)
    eval_correct = torch.zeros(K, len(schedule.rows), dtype=torch.int64, device=dev)
    diverged_at: list[int | None] = [None] * K
    checked = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        desc = label or (f"fleet of {K}" if K > 1 else f"run seed {seeds[0]}")
        bar = tqdm(total=T, desc=desc, unit="step", leave=False)
    t_setup = time.perf_counter()
    native_s = _native.setup_seconds()  # a one-off build of the C library is not a step

    def check(upto: int) -> bool:
        """Record members whose loss went non-finite in [checked, upto); True when all did."""
        nonlocal checked
        bad = ~torch.isfinite(losses[:, checked:upto])
        if bool(bad.any()):  # the one host sync, every check_every steps
            for k in bad.any(1).nonzero().flatten().tolist():
                if diverged_at[k] is None:
                    diverged_at[k] = checked + int(bad[k].nonzero()[0, 0])
        checked = upto
        return all(d is not None for d in diverged_at)

    # A diverged member is not stepped differently: its non-finite values stay in its own
    # slice (every reduction of a stacked program is per member), and its trace ends there.
    all_out = False
    grad_was = torch.is_grad_enabled()
    if learner.grad is not None:
        torch.set_grad_enabled(learner.grad)
    # $SHIFTSIM_DENORMALS: subnormal floats kept (ieee) or flushed, for the loop only
    with denormals(denormal_setting) as denormal_applied:
        try:
            for k_phase in range(len(scenario.phases)):
                batches = feed.phase(k_phase)
                start, steps = scenario.boundaries[k_phase], batches.steps
                # step-major buffers: each step's predictions and losses are written in place by
                # the step itself (views made once per phase, no per-step indexing)
                preds = torch.empty(steps, K, 1, b, dtype=torch.int64, device=dev)
                outs = list(zip(preds.unbind(0), losses_tm[start:start + steps].unbind(0)))
                n_new[:, start:start + steps] = batches.n_new
                for s in range(steps):
                    t = start + s
                    if stop is not None and stop.is_set():
                        raise Stopped(f"stopped at step {t}: another part of the run failed "
                                      "or was interrupted")
                    if train is None or train[t]:
                        learner.step(t, batches.inputs(s), batches.labels(s), outs[s])
                    else:  # real time: the learner is still busy; scored, not trained
                        learner.score(t, batches.inputs(s), batches.labels(s), outs[s])
                    if t in schedule.at:
                        _, regimes, _ = schedule.at[t]
                        row = schedule.first_row[t]
                        preds_of: dict[int, torch.Tensor] = {}  # regimes sharing inputs: once
                        for i, r in enumerate(regimes):
                            hx, hy = feed.heldout(r)
                            pred = preds_of.get(id(hx))
                            if pred is None:
                                pred = preds_of[id(hx)] = learner.predict(hx)
                            eval_correct[:, row + i] = (pred == hy).sum(-1)
                    if (t + 1) % check_every == 0 and check(t + 1):
                        all_out = True
                        break
                    if bar is not None and (t + 1) % 50 == 0:
                        bar.update(50)
                done = s + 1
                p_m = preds[:done, :, 0]  # (done, K, b)
                correct[:, start:start + done] = (p_m == batches.y[:done]).sum(-1).T
                correct_true[:, start:start + done] = (p_m == batches.y_true[:done]).sum(-1).T
                if all_out or check(start + steps):
                    break
        finally:
            torch.set_grad_enabled(grad_was)
            if bar is not None:
                bar.close()
    t_loop = time.perf_counter()
    chances = {seed: _stream_chances(stream) for seed, stream in zip(distinct, streams)}
    results = _results(scenario, learner, dev, schedule, diverged_at, losses, correct,
                       correct_true, n_new, eval_correct, train, denormal_applied, chances)
    t_end = time.perf_counter()
    loop_s = t_loop - t_setup - (_native.setup_seconds() - native_s)
    # the loop ran ``checked`` steps for every member (a diverged member's trace ends earlier,
    # but the loop went on to the next check, or for the other members): time per step is the
    # loop's time over the steps it ran, not over the steps a trace kept
    for r in results:
        r.timings.update({
            "setup_s": (t_setup - t_start) / K, "loop_s": loop_s / K,
            "collect_s": (t_end - t_loop) / K, "total_s": (t_end - t_start) / K,
            "ms_per_step": 1000 * loop_s / K / checked if checked else math.nan})
        if K > 1 or learner.stacked:
            r.timings["fleet_loop_s"] = loop_s
    return results


def shared_cost(costs: Sequence[float]) -> float:
    """The one relative cost of the members of a program on a real-time stream (a stacked
    program steps its members together, on one training schedule); a clear error when they
    differ.

    >>> shared_cost([1.5, 1.5])
    1.5
    """
    if len(set(costs)) > 1:
        raise ShiftsimError(f"the members of one program on a real-time stream must have equal "
                            f"costs (one training schedule), got {sorted(set(costs))}; run "
                            "members of different costs in separate fleets")
    return costs[0]


def _train_schedule(scenario: Scenario, learner: Members, steps: int) -> np.ndarray | None:
    """On a real-time stream, the steps the members train on (:func:`shared_cost`); None
    otherwise."""
    if not scenario.realtime:
        return None
    return train_schedule(shared_cost(learner.costs()), steps)


def _stream_chances(stream: Stream) -> list[float]:
    """Each phase's chance level as the run's stream drew its labels (:meth:`Stream.chance`)."""
    return [stream.chance(k) for k in range(len(stream.scenario.phases))]


def _results(scenario: Scenario, learner: Members, dev: torch.device, schedule: EvalSchedule,
             diverged_at: list[int | None], losses: torch.Tensor, correct: torch.Tensor,
             correct_true: torch.Tensor, n_new: torch.Tensor, eval_correct: torch.Tensor,
             train: np.ndarray | None = None, denormal_mode: str = "ieee",
             chances: dict[int, list[float]] | None = None) -> list[RunResult]:
    """One RunResult per member, from one transfer of every buffer; ``denormal_mode``: how
    the loop treated subnormal floats (:func:`~shiftsim.runtime.denormals`); ``chances``: per
    seed, each phase's chance level as its stream drew the labels (the phase plan's
    ``chance``; default the scenario's expectation)."""
    T, b = scenario.total_steps, scenario.batch_size
    losses_c, correct_c, ctrue_c = losses.float().cpu().numpy(), correct.cpu().numpy(), \
        correct_true.cpu().numpy()
    ec = eval_correct.cpu().numpy()
    diags = learner.diagnostics()
    phase_of_step = np.repeat(np.arange(len(scenario.phases)),
                              [p.steps for p in scenario.phases])
    phases = scenario.phase_table()
    scenario_dict = scenario.to_dict()
    facts = device_facts(dev)
    versions = {"torch": torch.__version__, "python": platform.python_version(),
                "cuda": facts["cuda"], "cudnn": facts["cudnn"]}
    determinism = {**determinism_flags(), "row_sums": _native.current(),
                   "denormals": denormal_mode}
    machine = describe_machine(dev)
    results = []
    for k, d in enumerate(diverged_at):
        steps_run = T if d is None else d
        columns = {
            "step": np.arange(steps_run, dtype=np.int64),
            "phase": phase_of_step[:steps_run],
            "n": np.full(steps_run, b, dtype=np.int64),
            "correct": correct_c[k, :steps_run],
            "correct_true": ctrue_c[k, :steps_run],
            "loss": losses_c[k, :steps_run],
            "n_new": n_new[k, :steps_run].numpy(),
        }
        if train is not None:  # a real-time stream: which batches the learner trained on
            columns["trained"] = train[:steps_run]
        for name, values in diags[k].items():
            columns[f"diag_{name}"] = values[:steps_run]
        trace = pd.DataFrame(columns)  # one frame (each column added later cost 0.3 ms)
        # an evaluation at step s sees the weights after update s - 1; at the diverged step d
        # those weights gave the non-finite loss, so only evaluations up to step d - 1 are kept
        last_eval = T if d is None else d - 1
        rows = [r for r in schedule.rows if r[0] <= last_eval]
        evc = ec[k, :len(rows)]
        evals = pd.DataFrame({
            "step": np.array([r[0] for r in rows], dtype=np.int64),
            "phase": np.array([r[1] for r in rows], dtype=np.int64),
            "regime": np.array([r[2] for r in rows], dtype=np.int64),
            "n": np.full(len(rows), scenario.eval_size, dtype=np.int64),
            "correct": evc.astype(np.int64),
            "accuracy": evc / scenario.eval_size,
            "phase_end": np.array([r[3] for r in rows], dtype=bool),
        })
        info = {"scenario": scenario_dict, "learner": learner.describe(k),
                "seed": learner.seeds[k], "device": str(dev), "engine": learner.engine,
                "versions": dict(versions), "machine": machine,
                "device_type": facts["device_type"], "device_name": facts["device_name"],
                "determinism": dict(determinism)}
        plan = phases.copy()
        if chances is not None:
            plan["chance"] = chances[learner.seeds[k]]
        results.append(RunResult(trace, evals, plan, info, diverged=d is not None,
                                 diverged_step=d, timings={}))
    return results


def describe_machine(device: torch.device) -> str:
    """Where a run ran, in words: the CPU model and core count (and the GPU's name on CUDA),
    e.g. ``"AMD EPYC 7B13, 2 cores"``."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import os

        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        import os

        cores = os.cpu_count() or 1
    out = f"{cpu}, {cores} core{'s' if cores != 1 else ''}"
    if device.type == "cuda":
        out += f", {torch.cuda.get_device_name(device)}"
    return out

