"""The grid of a study: scenarios × models × optimizers × seeds as :class:`RunSpec` values.

:class:`StudyGrid` normalises the axes (dicts, lists or single values; labels unique and
non-empty), labels every run with its axis values and builds the grid, scenario-major with
seeds innermost. A tuned study's grid is its tuning runs, then — once the selection is set —
its evaluation runs. The grid runs nothing; :class:`shiftsim.study.Study` adds ``run()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ShiftsimError, SpecTypeError, allowed
from ..models import ModelSpec
from ..optim.registry import OptimizerSpec
from ..optim.registry import spec as optimizer_spec
from ..runspec import HASH_FORMAT, RunSpec
from ..scenario import Scenario
from .axes import seed_list
from .tuning import Tuning
from .tuning import points as tuning_points

__all__ = ["StudyGrid"]

_RESERVED = ("run_id", "status", "error")
#: the arguments of StudyGrid (and Study), named when an unknown one is given
_ARGUMENTS = ("name", "scenarios", "model", "optimizers", "seeds", "models",
              "description", "tuning", "where")


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



class StudyGrid:
    """A study's runs: every combination of scenarios, models, optimizers and seeds.

    Args:
        name: the study's name (``study.json``; a results folder holds one study).
        scenarios: a dict label -> Scenario (e.g. :func:`flip_rates`), a list of scenarios
            (labelled by their names) or one scenario.
        model: a ModelSpec or a dict label -> ModelSpec (``models=`` is the same argument).
        optimizers: a dict label -> OptimizerSpec or registry name (e.g. :func:`lr_grid`), a
            list, or one.
        seeds: a count (``range(seeds)``) or a list of seeds; default 10, the evaluation
            seeds of the comparison protocol (a report draws no verdict below 5 seeds).
        description: free text kept in ``study.json``.

    Any other keyword argument is refused with a one-line error that names it and the allowed
    arguments.

    Every run gets the labels ``scenario``, ``model``, ``optimizer`` (the axis labels),
    ``optimizer_name`` (the registry name), ``lr``, ``seed``, ``severity`` (when an axis gives
    it) and any other label its axes carry; they are the columns reports group by.

    :class:`~shiftsim.study.Study` adds :meth:`~shiftsim.study.Study.run`; the grid itself
    runs nothing and writes nothing.
    """

    def __init__(self, name: str, scenarios: Any, model: Any = None, optimizers: Any = None,
                 seeds: Any = 10, *, models: Any = None, description: str = "",
                 tuning: Tuning | None = None,
                 where: Callable[[dict[str, Any]], bool] | None = None,
                 **unknown: Any) -> None:
        if unknown:  # a misspelt or made-up argument: one line naming it and the allowed ones
            raise SpecTypeError(str(allowed(next(iter(unknown)),
                                            f"{type(self).__name__} argument", _ARGUMENTS)))
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
        #: the study file it was loaded from (set by ``study_from_file``), for reports
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
        self.seeds = seed_list(seeds)
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
            self._grid = _unique([
                spec for s_key, sc in self.scenarios.items() for m_key, m in self.models.items()
                for o_key, o in self.optimizers.items() for seed in self.seeds
                if self._keep(spec := RunSpec(sc, m, o, seed,
                                              self._labels(s_key, m_key, o_key, seed)))])
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

    def set_selection(self, choices: Any) -> None:
        """Record the tuning's choice (rows with ``group``, ``model``, ``optimizer`` and
        ``chosen``), or forget it (None): the evaluation grid follows it."""
        self._selection = None if choices is None else {
            (r.group, r.model, r.optimizer): dict(r.chosen) for r in choices.itertuples()}

    def widen(self, wider: Mapping[tuple[str, str, str], Sequence[float]]) -> None:
        """Add learning rates to the tuning grids: ``{(group, model, optimizer): [lr, ...]}``."""
        for key, lrs in wider.items():
            self._extra_lrs[key] = sorted(set(self._extra_lrs.get(key, [])) | set(lrs))

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


def _unique(specs: list[RunSpec]) -> list[RunSpec]:
    """``specs``, after checking that no two are the same run (labels aside)."""
    seen: dict[str, RunSpec] = {}
    for spec in specs:
        if spec.run_id in seen:
            a, b = seen[spec.run_id].label_dict, spec.label_dict
            diff = {k: (a.get(k), b.get(k)) for k in a if a.get(k) != b.get(k)}
            raise ShiftsimError(f"two grid points are the same run (identical specs, labels "
                                f"differ: {diff}); remove one of the duplicate axis entries")
        seen[spec.run_id] = spec
    return specs

