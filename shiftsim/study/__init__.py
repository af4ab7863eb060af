"""Robustness studies: scenarios x models x optimizers x seeds, run in parallel, resumable.

A :class:`Study` is a grid of :class:`RunSpec` (each with a stable content hash as its run id);
:meth:`Study.run` runs the runs not yet complete in ``out_dir`` — in this process
(``workers=1``), in a spawn-safe pool of local processes (``backend="local"``, the default) or
as Ray tasks (``backend="ray"``) — and the driver alone writes each result to the store
(:mod:`shiftsim.store`) as it arrives. Resume is the default: complete runs are skipped, so a
second run of a complete study does nothing, and a study killed at any moment loses at most the
runs in flight.

Failed runs (the run raised) are complete-but-failed: they are recorded with their error and
kept on resume; ``retry_failed=True`` runs them again. Diverged runs (non-finite loss) are
results and are never rerun. Every run uses one torch thread by default (``threads=1``), so a
spec gives the same trace bit for bit in-process, in the pool and on Ray.

>>> import tempfile, shiftsim as ss
>>> data = ss.data.digits()
>>> study = Study("mini", scenarios=flip_rates(data, [0.0, 1.0], tasks=2, steps_per_task=30),
...               model=ss.models.mlp(hidden=(16,)), optimizers=lr_grid("sgdm", [0.05]),
...               seeds=2)
>>> study
Study('mini': 2 scenarios x 1 model x 1 optimizer x 2 seeds = 4 runs)
>>> with tempfile.TemporaryDirectory() as out:
...     report = study.run(out, workers=1, progress=False)
...     again = study.run(out, workers=1, progress=False)
...     runs = ss.store.load(out).runs
mini: 4/4 runs complete (4 ran now)...
mini: 4/4 runs complete (4 already complete)...
>>> report.done, again.done, again.skipped, sorted(runs["severity"].unique().tolist())
(4, 0, 4, [0.0, 1.0])
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import store
from ..checks import check_model_fits
from ..errors import ShiftsimError, SpecTypeError, allowed
from ..models import ModelSpec
from ..optim.registry import OptimizerSpec
from ..optim.registry import spec as optimizer_spec
from ..scenario import Scenario
from .axes import Axis, flip_rates, hparam_grid, lr_grid, severity_axis, views
from .executors import (
    GUARD_HINT,
    Executor,
    InProcess,
    LocalPool,
    Outcome,
    RayExecutor,
    import_ray,
    run_outcome,
)
from .fleet_executor import FleetExecutor, plan_fleets
from .spec import (
    HASH_FORMAT,
    RunSpec,
    canonical_json,
    content_hash,
    execute,
    freeze_labels,
    labels_from_info,
)
from .tuning import Tuning
from .tuning import points as tuning_points

__all__ = [
    "Axis", "BACKENDS", "Executor", "HASH_FORMAT", "InProcess", "LocalPool", "Outcome",
    "RayExecutor", "RunSpec", "Study", "StudyRunReport", "Tuning", "canonical_json",
    "content_hash",
    "default_workers", "execute", "flip_rates", "freeze_labels", "hparam_grid",
    "import_ray", "labels_from_info", "lr_grid", "run_outcome", "severity_axis", "views",
    "study_from_file",
]

BACKENDS = ("local", "ray")
_RESERVED = ("run_id", "status", "error")


def default_workers() -> int:
    """The number of cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------------------------------
# axes normalisation


def _axis(value: Any, what: str, kind: type | tuple[type, ...], label_of: Any,
          coerce: Any = None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(entries, extra labels) of an axis given as a dict, a list or a single value."""
    extra: dict[str, dict[str, Any]] = {}
    if isinstance(value, Mapping):
        items = list(value.items())
        extra = {k: dict(v) for k, v in getattr(value, "labels", {}).items()}
    elif isinstance(value, (list, tuple)):
        items = []
        for v in value:
            v = coerce(v) if coerce else v
            if not isinstance(v, kind):
                break
            items.append((label_of(v), v))
        else:
            value = None
        if value is not None:
            bad = next(v for v in value if not isinstance(coerce(v) if coerce else v, kind))
            raise SpecTypeError(f"{what} must hold {_kind_name(kind)} objects, got {bad!r}")
    else:
        v = coerce(value) if coerce and value is not None else value
        if not isinstance(v, kind):
            raise SpecTypeError(f"{what} must be {_kind_name(kind)}, a list of them or a dict "
                                f"label -> {_kind_name(kind)}, got {value!r}")
        items = [(label_of(v), v)]
    if not items:
        raise ShiftsimError(f"{what} is empty; a study needs at least one")
    out: dict[str, Any] = {}
    for key, v in items:
        if not isinstance(key, str) or not key.strip():
            raise ShiftsimError(f"{what} labels must be non-empty strings, got {key!r}")
        if key in out:
            raise ShiftsimError(f"{what} has the label {key!r} twice; labels must be unique "
                                "(use a dict to name them)")
        v = coerce(v) if coerce else v
        if not isinstance(v, kind):
            raise SpecTypeError(f"{what}[{key!r}] must be {_kind_name(kind)}, got {v!r}")
        out[key] = v
    return out, extra


def _kind_name(kind: Any) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _optimizer(v: Any) -> Any:
    return optimizer_spec(v) if isinstance(v, str) else v


def _seeds(seeds: Any) -> list[int]:
    if isinstance(seeds, bool):
        raise SpecTypeError(f"seeds must be a count or a list of seeds, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise ShiftsimError(f"seeds must be a positive count or a list of seeds, got {seeds}")
        return list(range(seeds))
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):
        raise SpecTypeError(f"seeds must be a count or a list of seeds, got {seeds!r}")
    out = []
    for s in seeds:
        if hasattr(s, "item") and not isinstance(s, (bool, int)):
            s = s.item()
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ShiftsimError(f"seeds must be non-negative integers, got {s!r}")
        if s in out:
            raise ShiftsimError(f"seed {s} is listed twice")
        out.append(int(s))
    if not out:
        raise ShiftsimError("seeds is empty; a study needs at least one seed")
    return out


# ----------------------------------------------------------------------------------------------
# the run report


@dataclass
class StudyRunReport:
    """What one :meth:`Study.run` did. ``done``: runs finished now; ``skipped``: already
    complete; ``failed`` / ``diverged``: such runs in the store (now or kept from earlier);
    ``remaining``: runs still not complete (after an interrupt)."""

    name: str
    out_dir: Path
    total: int
    done: int = 0
    skipped: int = 0
    failed: int = 0
    diverged: int = 0
    remaining: int = 0
    kept_failed: int = 0
    elapsed_s: float = 0.0
    interrupted: bool = False
    backend: str = "local"
    workers: int = 1
    #: a tuned study's stages (tuning, widened grids, evaluation), each with its own counts;
    #: ``started_s`` and ``elapsed_s`` of each count from the start of the whole run
    stages: list[StudyRunReport] = dataclasses.field(default_factory=list)
    started_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Every run is complete and none failed."""
        return self.failed == 0 and self.remaining == 0 and not self.interrupted

    @property
    def complete(self) -> int:
        return self.total - self.remaining

    @property
    def complete_stage(self) -> bool:
        """Every run of this stage is complete (failed ones included): the next may start."""
        return self.remaining == 0 and not self.interrupted

    def line(self) -> str:
        parts = [f"{self.name}: {self.complete}/{self.total} runs complete"]
        now = []
        if self.done:
            now.append(f"{self.done} ran now")
        if self.skipped:
            now.append(f"{self.skipped} already complete")
        if now:
            parts[0] += f" ({', '.join(now)})"
        if self.diverged:
            parts.append(f"{self.diverged} diverged")
        if self.failed:
            kept = (f", {self.kept_failed} kept from earlier — retry_failed=True reruns them"
                    if self.kept_failed else "")
            parts.append(f"{self.failed} FAILED{kept}")
        if self.interrupted:
            parts.append(f"INTERRUPTED, {self.remaining} left (run again to resume)")
        elif self.remaining:
            parts.append(f"{self.remaining} not complete")
        parts.append(f"{_duration(self.elapsed_s)} -> {self.out_dir}")
        return "; ".join(parts)

    def __str__(self) -> str:
        return self.line()


def _duration(s: float) -> str:
    if s < 60:
        return f"{s:.1f}s"
    m, s = divmod(int(round(s)), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


@contextlib.contextmanager
def _defer_sigint() -> Iterator[None]:
    """Delay Ctrl-C until the block ends (a run's files are written whole or not at all)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[Any] = []
    old = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, lambda sig, frame: caught.append(frame))
    except (ValueError, OSError):  # pragma: no cover - no signals here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if caught:
            if callable(old):
                old(signal.SIGINT, caught[0])
            else:
                raise KeyboardInterrupt


# ----------------------------------------------------------------------------------------------
# the study


class Study:
    """A robustness study: every combination of scenarios, models, optimizers and seeds.

    Args:
        name: the study's name (``study.json``; a results folder holds one study).
        scenarios: a dict label -> Scenario (e.g. :func:`flip_rates`), a list of scenarios
            (labelled by their names) or one scenario.
        model: a ModelSpec or a dict label -> ModelSpec (``models=`` is the same argument).
        optimizers: a dict label -> OptimizerSpec or registry name (e.g. :func:`lr_grid`), a
            list, or one.
        seeds: a count (``range(seeds)``) or a list of seeds.
        description: free text kept in ``study.json``.
        tuning: a :class:`Tuning`: tune each optimizer on tuning seeds first, then evaluate it
            at its chosen setting (:mod:`shiftsim.study.tuning`).
        where: keep only the grid points whose labels satisfy ``where(labels)`` (e.g. a model
            only on some datasets: ``lambda r: r["model"] != "cnn" or "fashion" in
            r["scenario"]``); default every combination.

    Every run gets the labels ``scenario``, ``model``, ``optimizer`` (the axis labels),
    ``optimizer_name`` (the registry name), ``lr``, ``seed``, ``severity`` (when an axis gives
    it) and any other label its axes carry; they are the columns reports group by.
    """

    def __init__(self, name: str, scenarios: Any, model: Any = None, optimizers: Any = None,
                 seeds: Any = 3, *, models: Any = None, description: str = "",
                 tuning: Tuning | None = None,
                 where: Callable[[dict[str, Any]], bool] | None = None) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ShiftsimError(f"a study needs a non-empty name, got {name!r}")
        if model is not None and models is not None:
            raise ShiftsimError("give the model(s) once: model= or models=, not both")
        model = models if model is None else model
        if model is None:
            raise ShiftsimError("a study needs a model: model=ss.models.mlp() or a dict of them")
        if optimizers is None:
            raise ShiftsimError("a study needs optimizers: a dict label -> ss.optim.spec(...), "
                                "e.g. lr_grid('sgdm', [0.01, 0.1])")
        self.name = name
        self.description = description
        #: the study file it was loaded from (set by :func:`study_from_file`), for reports
        self.source: str | None = None
        self.scenarios, self._scenario_labels = _axis(
            scenarios, "scenarios", Scenario, lambda s: s.name)
        self.models, self._model_labels = _axis(model, "models", ModelSpec, lambda m: m.label)
        self.optimizers, self._optimizer_labels = _axis(
            optimizers, "optimizers", OptimizerSpec, lambda o: o.label, coerce=_optimizer)
        if any(sc.realtime for sc in self.scenarios.values()):
            # a real-time stream charges each learner its cost relative to the cheapest
            # learner of the study (which trains on every batch)
            low = min(o.effective_cost for o in self.optimizers.values())
            self.optimizers = {k: o.replace(cost=o.effective_cost / low)
                               for k, o in self.optimizers.items()}
        self.seeds = _seeds(seeds)
        if where is not None and not callable(where):
            raise SpecTypeError(f"where must be a function of a run's labels -> bool, got "
                                f"{where!r}")
        self.where = where
        if tuning is not None and not isinstance(tuning, Tuning):
            raise SpecTypeError(f"tuning must be a shiftsim Tuning(...) or None, got {tuning!r}")
        self.tuning = tuning
        if tuning is not None:
            tuning.check(list(self.scenarios), self.optimizers, self.seeds)
        #: (group, model, optimizer) -> the chosen hyperparameters, once tuning is done
        self._selection: dict[tuple[str, str, str], dict[str, Any]] | None = None
        #: (group, model, optimizer) -> learning rates added by widening the grid
        self._extra_lrs: dict[tuple[str, str, str], list[float]] = {}
        self._grid: list[RunSpec] | None = None
        self.grid()  # validate now: serialisable specs, unique runs

    # -- the grid -------------------------------------------------------------------------------
    def _labels(self, s_key: str, m_key: str, o_key: str, seed: int,
                opt: OptimizerSpec | None = None, stage: str | None = None,
                point: dict[str, Any] | None = None) -> dict[str, Any]:
        opt = self.optimizers[o_key] if opt is None else opt
        labels: dict[str, Any] = {}
        for extra in (self._scenario_labels.get(s_key, {}), self._model_labels.get(m_key, {}),
                      self._optimizer_labels.get(o_key, {})):
            for k, v in extra.items():
                if k in _RESERVED:
                    raise ShiftsimError(f"axis label {k!r} is reserved; rename it")
                if k in labels and labels[k] != v:
                    raise ShiftsimError(f"two axes set the label {k!r} ({labels[k]!r} and "
                                        f"{v!r}) for the same run; rename one")
                labels[k] = v
        for k, v in (point or {}).items():  # the tuned hyperparameters are columns too
            if k in _RESERVED or k in ("scenario", "model", "optimizer", "seed", "stage"):
                raise ShiftsimError(f"a tuned hyperparameter may not be called {k!r}")
            labels[k] = float(v) if isinstance(v, (int, float)) and not isinstance(
                v, bool) else v
        lr = opt.kwargs.get("lr")
        if isinstance(lr, (int, float)) and not isinstance(lr, bool) and (
                "lr" not in labels or point):
            labels["lr"] = float(lr)
        labels.update({"scenario": s_key, "model": m_key, "optimizer": o_key,
                       "optimizer_name": opt.name, "seed": seed})
        if stage is not None:
            labels["stage"] = stage
        return labels

    def grid(self) -> list[RunSpec]:
        """Every run of the study as a :class:`RunSpec`, scenario-major, seeds innermost.

        A tuned study's grid is its tuning runs, followed by its evaluation runs once the
        selection is known (:meth:`run` tunes first).
        """
        if self.tuning is not None:
            specs = self.tuning_grid()
            if self._selection is not None:
                specs += self.evaluation_grid()
            return _unique(specs)
        if self._grid is None:
            specs: list[RunSpec] = []
            seen: dict[str, RunSpec] = {}
            for s_key, sc in self.scenarios.items():
                for m_key, m in self.models.items():
                    for o_key, o in self.optimizers.items():
                        for seed in self.seeds:
                            spec = RunSpec(sc, m, o, seed, self._labels(s_key, m_key, o_key,
                                                                        seed))
                            if not self._keep(spec):
                                continue
                            if spec.run_id in seen:
                                a, b = seen[spec.run_id].label_dict, spec.label_dict
                                diff = {k: (a.get(k), b.get(k)) for k in a if a.get(k) != b.get(k)}
                                raise ShiftsimError(f"two grid points are the same run "
                                                    f"(identical specs, labels differ: {diff}); "
                                                    "remove one of the duplicate axis entries")
                            seen[spec.run_id] = spec
                            specs.append(spec)
            self._grid = specs
        return list(self._grid)

    def tuning_grid(self) -> list[RunSpec]:
        """The tuning runs: every tuned optimizer at every grid point on every tuning seed of
        every tuning scenario (label ``stage="tune"``)."""
        assert self.tuning is not None
        out = []
        for s_key in self.tuning.tuning_scenarios(list(self.scenarios)):
            sc = self.scenarios[s_key]
            for m_key, m in self.models.items():
                for o_key, opt in self.optimizers.items():
                    grid = self.tuned_grid(s_key, m_key, o_key)
                    if grid is None:
                        continue
                    for point in tuning_points(grid):
                        o = opt.replace(**point)
                        for seed in self.tuning.tuning_seeds():
                            out.append(RunSpec(sc, m, o, seed, self._labels(
                                s_key, m_key, o_key, seed, o, "tune", point)))
        return [s for s in out if self._keep(s)]

    def tuned_grid(self, s_key: str, m_key: str, o_key: str) -> dict[str, Any] | None:
        """The grid an optimizer is tuned on (with any widened learning rates); None when the
        optimizer is not tuned."""
        assert self.tuning is not None
        grid = self.tuning.grid_of(o_key, self.optimizers[o_key])
        if grid is None:
            return None
        extra = self._extra_lrs.get((self.tuning.group_of(s_key), m_key, o_key))
        if extra:
            grid = {**grid, "lr": tuple(sorted(set(grid["lr"]) | set(extra)))}
        return grid

    def evaluation_grid(self) -> list[RunSpec]:
        """The evaluation runs, each optimizer at its chosen setting (label ``stage="eval"``);
        needs the selection (:meth:`run` makes it)."""
        if self.tuning is None:
            return self.grid()
        if self._selection is None:
            raise ShiftsimError("the evaluation runs of a tuned study are known once tuning is "
                                "done; study.run() tunes first")
        out = []
        for s_key, sc in self.scenarios.items():
            for m_key, m in self.models.items():
                for o_key, opt in self.optimizers.items():
                    chosen = self._selection.get((self.tuning.group_of(s_key), m_key, o_key))
                    o = opt.replace(**chosen) if chosen else opt
                    for seed in self.seeds:
                        out.append(RunSpec(sc, m, o, seed, self._labels(
                            s_key, m_key, o_key, seed, o, "eval", chosen)))
        return [s for s in out if self._keep(s)]

    def _keep(self, spec: RunSpec) -> bool:
        """Whether a grid point is in the study (``where`` of its labels; default all)."""
        if self.where is None:
            return True
        keep = self.where(spec.label_dict)
        if not isinstance(keep, (bool, np.bool_)):
            raise SpecTypeError(f"where must return True or False, got {keep!r}")
        return bool(keep)

    def __len__(self) -> int:
        return len(self.grid())

    def __iter__(self) -> Iterator[RunSpec]:
        return iter(self.grid())

    def __repr__(self) -> str:
        def n(k: int, w: str) -> str:
            return f"{k} {w}{'s' if k != 1 else ''}"

        head = (f"Study({self.name!r}: {n(len(self.scenarios), 'scenario')} x "
                f"{n(len(self.models), 'model')} x {n(len(self.optimizers), 'optimizer')} x "
                f"{n(len(self.seeds), 'seed')}")
        if self.tuning is None:
            return f"{head} = {n(len(self), 'run')})"
        evals = sum(self._keep(RunSpec(sc, m, o, seed, self._labels(s, mk, ok, seed, o, "eval")))
                    for s, sc in self.scenarios.items() for mk, m in self.models.items()
                    for ok, o in self.optimizers.items() for seed in self.seeds)
        return (f"{head} = {n(evals, 'evaluation run')}, after "
                f"{n(len(self.tuning_grid()), 'tuning run')} ({self.tuning.scope}, "
                f"{n(len(self.tuning.tuning_seeds()), 'seed')}))")

    def to_dict(self) -> dict[str, Any]:
        """The study's description (what ``study.json`` holds, less its timestamps)."""
        return {
            "name": self.name, "description": self.description, "n_runs": len(self),
            "axes": {
                "scenarios": {k: {"labels": self._scenario_labels.get(k, {}),
                                  "scenario": s.to_dict()} for k, s in self.scenarios.items()},
                "models": {k: {"labels": self._model_labels.get(k, {}), "model": m.to_dict()}
                           for k, m in self.models.items()},
                "optimizers": {k: {"labels": self._optimizer_labels.get(k, {}),
                                   "optimizer": o.to_dict()}
                               for k, o in self.optimizers.items()},
                "seeds": list(self.seeds),
            },
            "runs": [{"run_id": s.run_id, "labels": s.label_dict} for s in self.grid()],
            "run_id_format": HASH_FORMAT,
            "tuning": self.tuning.to_dict() if self.tuning is not None else None,
            "where": getattr(self.where, "__name__", repr(self.where))
            if self.where is not None else None,
            "source": self.source,
        }

    # -- running --------------------------------------------------------------------------------
    def run(self, out_dir: str | os.PathLike, workers: int | None = None,
            backend: str = "local", resume: bool = True, progress: bool = True, *,
            retry_failed: bool = False, device: str = "auto", threads: int | None = 1,
            gpus_per_run: float = 0.0, executor: Executor | None = None,
            fleet: bool | None = None) -> StudyRunReport:
        """Run every run not yet complete in ``out_dir`` and write each result as it arrives.

        Args:
            out_dir: the results folder (created; it holds one study).
            workers: runs in parallel; default: the number of cores. ``1`` runs in this
                process. With Ray: the most runs in flight (default: the cluster's CPUs).
            backend: ``"local"`` (a spawn-safe process pool) or ``"ray"`` (Ray tasks on the
                cluster at ``RAY_ADDRESS``, or on a local Ray started for the study).
            resume: skip runs that are complete in ``out_dir`` (False: redo every run).
            progress: show a progress bar (runs done/total, failures, ETA).
            retry_failed: also redo runs recorded as failed (they are kept by default).
            device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` ...
            threads: torch intra-op threads per run (default 1: bit-identical results on every
                backend, and the fastest for small models); None leaves torch's setting.
            gpus_per_run: GPUs each Ray task asks for (fractions share a GPU); Ray only.
            executor: a custom executor (overrides ``backend`` and ``workers``).
            fleet: run runs of one scenario and model as fleets, many learners in one
                vectorized program (:mod:`~shiftsim.study.fleet_executor`; for a ReLU MLP
                the results equal ``shiftsim.run``'s bit for bit, for other models up to
                float rounding). None (default): whenever some runs
                can share a fleet on the local backend; False: one run at a time.

        Returns a :class:`StudyRunReport` and prints its one-line summary. Ctrl-C stops the
        workers, leaves only complete runs in ``out_dir`` and raises KeyboardInterrupt.
        """
        if backend not in BACKENDS:
            raise allowed(backend, "backend", BACKENDS)
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                    or workers < 1):
            raise ShiftsimError(f"workers must be a positive integer, got {workers!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise ShiftsimError(f"threads must be a positive integer or None, got {threads!r}")
        if isinstance(gpus_per_run, bool) or not isinstance(gpus_per_run, (int, float)) or not (
                math.isfinite(gpus_per_run) and gpus_per_run >= 0):
            raise ShiftsimError(f"gpus_per_run must be a number >= 0 (fractions share a GPU), "
                                f"got {gpus_per_run!r}")
        if gpus_per_run and backend != "ray" and executor is None:
            raise ShiftsimError("gpus_per_run applies to backend='ray'; local workers use the "
                                "machine's GPU through device='auto'")
        if not isinstance(device, str):
            raise SpecTypeError(f"device must be a string such as 'auto' or 'cpu', got {device!r}")
        if mp.parent_process() is not None and \
                getattr(sys.modules.get("__main__"), "__name__", "") == "__mp_main__":
            raise ShiftsimError(f"study.run() called while a worker process was starting; "
                                f"{GUARD_HINT}")
        if fleet is not None and not isinstance(fleet, bool):
            raise SpecTypeError(f"fleet must be True, False or None, got {fleet!r}")
        if fleet and (backend == "ray" or executor is not None):
            raise ShiftsimError("fleet=True runs on the local backend without a custom "
                                "executor; use fleet=False with backend='ray' or executor=")
        if backend == "ray" and executor is None:
            import_ray()  # fail before touching the folder when Ray is missing
        pairs = {(id(s.data), m): (s.data, m) for s in self.scenarios.values()
                 for m in self.models.values()}
        for data, m in pairs.values():  # before any work: every model fits every dataset
            check_model_fits(m, data)
        out = store.check_out_dir(out_dir)
        t0 = time.perf_counter()
        with store.lock(out):
            return self._run(out, workers, backend, resume, progress, retry_failed, device,
                             threads, gpus_per_run, executor, t0, fleet)

    def _run(self, out: Path, workers: int | None, backend: str, resume: bool, progress: bool,
             retry_failed: bool, device: str, threads: int | None, gpus_per_run: float,
             executor: Executor | None, t0: float, fleet: bool | None = None
             ) -> StudyRunReport:
        old = store.read_study(out)
        if old is not None and old.get("name") not in (None, self.name):
            raise ShiftsimError(f"{str(out)!r} holds the results of study {old.get('name')!r}, "
                                f"not {self.name!r}; use another folder")
        n_workers = default_workers() if workers is None else workers
        ray_executor = None
        if executor is None and backend == "ray":
            executor = ray_executor = RayExecutor(workers, device, threads, gpus_per_run)

        def stage(specs: list[RunSpec], label: str) -> StudyRunReport:
            nonlocal old
            states = store.scan(out, [s.run_id for s in specs])
            redo = {"pending", "incomplete"} | ({"failed"} if retry_failed else set())
            todo = [s for s in specs if not resume or states[s.run_id].status in redo]
            counts = {st: 0 for st in store.STATUSES}
            todo_ids = {s.run_id for s in todo}
            for s in specs:
                if s.run_id not in todo_ids:
                    counts[states[s.run_id].status] += 1
            ex = executor
            if ex is None:
                if todo and fleet is not False and (
                        fleet or plan_fleets(todo, min(n_workers, len(todo)), device)[0]):
                    ex = FleetExecutor(min(n_workers, len(todo)), device, threads)
                elif min(n_workers, len(todo)) <= 1:
                    ex = InProcess(device, threads)
                else:
                    ex = LocalPool(min(n_workers, len(todo)), device, threads)
            elif ex is ray_executor and todo:
                ray_executor.connect()  # fail before writing anything: unreachable, no GPUs
            report = self._execute(out, old, specs, todo, counts, ex, n_workers, progress, t0,
                                   {rid: st.status for rid, st in states.items()}, label)
            old = store.read_study(out)
            return report

        try:
            if self.tuning is None:
                return stage(self.grid(), self.name)
            return self._tune_then_test(out, stage)
        finally:
            if ray_executor is not None:
                ray_executor.close()

    def _tune_then_test(self, out: Path, stage: Any) -> StudyRunReport:
        """Run the tuning runs, select (widening the grid where asked), write ``tuning.json``,
        then run the evaluation runs."""
        from . import selection

        assert self.tuning is not None
        self._selection = None
        reports = [stage(self.tuning_grid(), f"{self.name} [tune]")]
        for round_ in range(self.tuning.extend + 1):
            if not reports[-1].complete_stage:
                return _merged(self.name, out, reports)  # interrupted or incomplete: resume
            choices, curves = selection.select_from_store(self, out)
            wider = selection.widenings(self, choices) if round_ < self.tuning.extend else {}
            if not wider:
                break
            for key, lrs in wider.items():
                self._extra_lrs[key] = sorted(set(self._extra_lrs.get(key, [])) | set(lrs))
            reports.append(stage(self.tuning_grid(), f"{self.name} [tune, wider grid]"))
        self._selection = {(r.group, r.model, r.optimizer): dict(r.chosen)
                           for r in choices.itertuples()}
        selection.write(self, out, choices, curves)
        reports.append(stage(self.grid(), f"{self.name} [eval]"))
        return _merged(self.name, out, reports)

    def _execute(self, out: Path, old: dict[str, Any] | None, specs: list[RunSpec],
                 todo: list[RunSpec], counts: dict[str, int], executor: Executor,
                 n_workers: int, progress: bool, t0: float, statuses: dict[str, str],
                 label: str | None = None) -> StudyRunReport:
        store._clean_tmp(out)  # left by a process killed while writing study.json or an index
        desc = self.to_dict()
        if old is None or {k: old.get(k) for k in desc} != store._plain(desc):
            store.write_study(out, desc)
        report = StudyRunReport(label or self.name, out, len(specs),
                                started_s=time.perf_counter() - t0,
                                skipped=len(specs) - len(todo),
                                kept_failed=counts["failed"], backend=getattr(
                                    executor, "name", type(executor).__name__),
                                workers=n_workers)
        bar = _progress(progress, label or self.name, len(specs), report.skipped)
        by_id = {s.run_id: s for s in todo}
        left = set(by_id)
        outcomes = executor.run(todo) if todo else iter(())
        try:
            for outcome in outcomes:
                spec = by_id.get(outcome.run_id)
                if spec is None or outcome.run_id not in left:
                    continue  # not ours, or a duplicate (never written twice)
                with _defer_sigint():
                    _write(out, spec, outcome)
                    left.discard(outcome.run_id)
                    report.done += 1
                    counts[outcome.status] += 1
                    if bar is not None:
                        bar.update(1)
                        post = {k: counts[k] for k in ("failed", "diverged") if counts[k]}
                        if post:
                            bar.set_postfix(post, refresh=False)
        except KeyboardInterrupt:
            report.interrupted = True
            executor.cancel()
            raise
        finally:
            close = getattr(outcomes, "close", None)
            if close is not None:
                close()
            if bar is not None:
                bar.close()
            report.failed = counts["failed"]
            report.diverged = counts["diverged"]
            report.remaining = len(left) + counts["incomplete"] + counts["pending"]
            report.elapsed_s = time.perf_counter() - t0
            if report.done or store.indexes_stale(out, statuses):
                with contextlib.suppress(Exception):
                    store.write_indexes(out)
            print(report.line(), flush=True)
        return report


def _progress(enabled: bool, name: str, total: int, initial: int) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=name, unit="run", dynamic_ncols=True,
                smoothing=0.1)


def _write(out: Path, spec: RunSpec, o: Outcome) -> Path:
    extra = {"wall_s": o.wall_s, "worker": o.worker, "threads": o.threads}
    return store.write_run(out, spec.run_id, spec=spec.to_dict(), labels=spec.label_dict,
                           status=o.status, result=o.result, summary=o.summary, scores=o.scores,
                           error=o.error, traceback=o.traceback, extra=extra)


def _merged(name: str, out: Path, reports: list[StudyRunReport]) -> StudyRunReport:
    """One report for a study run in stages (tuning, evaluation): the last stage's totals
    (which list every run), the stages' work added up."""
    last = reports[-1]
    return StudyRunReport(
        name, out, last.total, done=sum(r.done for r in reports),
        skipped=max(0, last.skipped - sum(r.done for r in reports[:-1])),
        failed=last.failed, diverged=last.diverged, remaining=last.remaining,
        kept_failed=last.kept_failed, elapsed_s=last.elapsed_s,
        interrupted=any(r.interrupted for r in reports), backend=last.backend,
        workers=last.workers, stages=list(reports))


def _unique(specs: list[RunSpec]) -> list[RunSpec]:
    seen: dict[str, RunSpec] = {}
    for spec in specs:
        if spec.run_id in seen:
            a, b = seen[spec.run_id].label_dict, spec.label_dict
            diff = {k: (a.get(k), b.get(k)) for k in a if a.get(k) != b.get(k)}
            raise ShiftsimError(f"two grid points are the same run (identical specs, labels "
                                f"differ: {diff}); remove one of the duplicate entries")
        seen[spec.run_id] = spec
    return specs


def study_from_file(path: str | os.PathLike) -> Study:
    """Load a study file: a Python file that defines ``study = Study(...)``."""
    from ..cli import load_python_file

    ns = load_python_file(path, "study")
    study = ns["study"]
    if not isinstance(study, Study):
        raise ShiftsimError(f"{Path(path).name}: 'study' must be a shiftsim Study, got "
                            f"{type(study).__name__}")
    if study.source is None:  # where it came from: reports say how to rerun it
        study.source = str(path)
    return study
