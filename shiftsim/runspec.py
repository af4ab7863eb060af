"""RunSpec: one run of a study, frozen, JSON-serialisable, with a stable content hash as its id.

The run id is the first 16 hex digits of the sha256 of the canonical JSON of
``{"scenario": scenario.to_dict(), "model": model.to_dict(), "optimizer": optimizer.to_dict(),
"seed": seed, "format": 1}``. Canonical: sorted keys, no spaces, tuples as lists, dict entries
whose value is None left out (so a new option whose default is None changes no earlier run id;
a new option with another default must be left out of ``to_dict`` at its default for the same
reason), integral floats written as integers (``lr=1`` and ``lr=1.0`` are the same run), other
floats in Python's shortest round-trip form. Nothing in it depends on the process, the machine,
the Python version or ``PYTHONHASHSEED``, so results folders stay valid across versions unless a
spec changes. Names are part of the scenario's description (phase names appear in the stored
summaries), so renaming a scenario or a phase gives new run ids.
The labels (the study's axes) are not hashed: renaming an axis value does not redo a run.

>>> import shiftsim as ss
>>> sc = ss.label_flip_tasks(ss.data.digits(), rate=0.5, tasks=2, steps_per_task=40)
>>> spec = RunSpec(sc, ss.models.mlp(hidden=(16,)), ss.optim.spec("sgdm", lr=0.05), seed=1,
...                labels={"optimizer": "sgdm"})
>>> len(spec.run_id), spec.run_id == RunSpec.from_dict(spec.to_dict()).run_id
(16, True)

The spec is the store's and the study's common language: the store writes ``spec.json`` from
:meth:`RunSpec.to_dict`, a study builds its grid of specs, and both import this module, which
imports neither.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ShiftsimError, SpecTypeError, check_range
from .models import ModelSpec
from .optim.registry import OptimizerSpec
from .optim.registry import spec as optimizer_spec
from .scenario import Scenario

if TYPE_CHECKING:  # pragma: no cover
    from .data import Dataset

__all__ = ["HASH_FORMAT", "RunSpec", "canonical_json", "content_hash", "freeze_labels",
           "labels_from_info"]

#: part of every hashed payload; bump only if the meaning of a spec's fields changes
HASH_FORMAT = 1

LabelValue = str | int | float | bool | None


def _canonical(value: Any, where: str = "spec") -> Any:
    """The canonical JSON-ready form that the run id hashes (dict entries that are None are
    left out: an option added later with a None default keeps every earlier run id)."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v, f"{where}.{k}") for k, v in value.items()
                if v is not None}
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):
        return _canonical(value.item(), where)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ShiftsimError(f"{where} must be finite to be hashed, got {value!r}")
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
        return value
    raise SpecTypeError(f"{where}={value!r} is not JSON-serialisable; allowed: numbers, "
                        "strings, booleans, None, lists and dicts of these")


def canonical_json(payload: Any) -> str:
    """``json.dumps(sort_keys=True, separators=(",", ":"))`` of the canonical form.

    >>> canonical_json({"b": 1.0, "a": (0.1, 2), "c": None, "d": [None]})
    '{"a":[0.1,2],"b":1,"d":[null]}'
    """
    return json.dumps(_canonical(payload), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False)


def content_hash(payload: Mapping[str, Any]) -> str:
    """The run id of a ``{"scenario", "model", "optimizer", "seed"}`` payload (16 hex digits).

    >>> content_hash({"scenario": {}, "model": {}, "optimizer": {}, "seed": 0})
    '80354c76377b93b1'
    """
    body = {"scenario": payload["scenario"], "model": payload["model"],
            "optimizer": payload["optimizer"], "seed": payload["seed"], "format": HASH_FORMAT}
    return hashlib.sha256(canonical_json(body).encode("ascii")).hexdigest()[:16]


def _label_value(key: str, value: Any) -> LabelValue:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    raise SpecTypeError(f"label {key}={value!r} must be a string, number, boolean or None")


def freeze_labels(labels: Mapping[str, Any] | tuple | None) -> tuple[tuple[str, LabelValue], ...]:
    """Labels as a sorted tuple of (key, value) pairs (values: JSON scalars; NaN -> None)."""
    if labels is None:
        return ()
    items = labels.items() if isinstance(labels, Mapping) else labels
    out: dict[str, LabelValue] = {}
    try:
        for k, v in items:
            if not isinstance(k, str) or not k:
                raise SpecTypeError(f"label names must be non-empty strings, got {k!r}")
            if k in out:
                raise ShiftsimError(f"label {k!r} is given twice")
            out[k] = _label_value(k, v)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ShiftsimError):
            raise
        raise SpecTypeError(f"labels must be a dict of name -> value, got {labels!r}") from None
    return tuple(sorted(out.items()))


_SCENARIO_DICTS: dict[int, tuple[weakref.ref, dict[str, Any]]] = {}


def _scenario_dict(scenario: Scenario) -> dict[str, Any]:
    """``scenario.to_dict()``, computed once per scenario object: a dataset built from tensors
    is described by a checksum of its tensors (about 0.2 s for Fashion-MNIST), and a study
    makes one spec per optimizer x model x seed of every scenario."""
    key = id(scenario)
    hit = _SCENARIO_DICTS.get(key)
    if hit is not None and hit[0]() is scenario:
        return hit[1]
    d = scenario.to_dict()
    try:
        ref = weakref.ref(scenario, lambda _, k=key: _SCENARIO_DICTS.pop(k, None))
    except TypeError:  # pragma: no cover - not weak-referenceable
        return d
    _SCENARIO_DICTS[key] = (ref, d)
    return d


@dataclass(frozen=True)
class RunSpec:
    """One run: a scenario, a model, an optimizer and a seed (plus ``labels`` for reports).

    The scenario travels to worker processes by pickling (a Dataset built from tensors cannot
    be rebuilt from JSON; it pickles without its device cache). ``labels`` are the study's axis
    values for this run (``scenario``, ``optimizer``, ``severity``, ``lr`` ...); they become
    columns in the store but are not part of the run id.
    """

    scenario: Scenario
    model: ModelSpec
    optimizer: OptimizerSpec
    seed: int = 0
    labels: tuple[tuple[str, LabelValue], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.scenario, Scenario):
            raise SpecTypeError(f"RunSpec.scenario must be a Scenario, got "
                                f"{type(self.scenario).__name__}")
        if not isinstance(self.model, ModelSpec):
            raise SpecTypeError(f"RunSpec.model must be a ModelSpec (e.g. ss.models.mlp()), got "
                                f"{self.model!r}")
        opt = self.optimizer
        if isinstance(opt, str):
            opt = optimizer_spec(opt)
            object.__setattr__(self, "optimizer", opt)
        if not isinstance(opt, OptimizerSpec):
            raise SpecTypeError(f"RunSpec.optimizer must be an OptimizerSpec (ss.optim.spec(...)) "
                                f"or a registry name, got {opt!r}")
        # the cost matters on a real-time stream only: there it is part of the run (and its id),
        # resolved to a number; elsewhere it is left out (a plain run's id never depends on it)
        if self.scenario.realtime and opt.cost is None:
            opt = dataclasses.replace(opt, cost=opt.effective_cost)
        elif not self.scenario.realtime and opt.cost is not None:
            opt = dataclasses.replace(opt, cost=None)
        object.__setattr__(self, "optimizer", opt)
        object.__setattr__(self, "seed", check_range(self.seed, "RunSpec.seed", 0, integer=True))
        object.__setattr__(self, "labels", freeze_labels(self.labels))
        self.payload  # noqa: B018 - fail now (not in a worker) when a part cannot be serialised

    @cached_property
    def payload(self) -> dict[str, Any]:
        """What the run id hashes: the scenario, model, optimizer and seed as JSON dicts
        (read-only: the scenario's dict is shared by the specs of one scenario object)."""
        return {"scenario": _scenario_dict(self.scenario), "model": self.model.to_dict(),
                "optimizer": self.optimizer.to_dict(), "seed": self.seed}

    @cached_property
    def run_id(self) -> str:
        """16 hex digits of sha256 over the canonical JSON of :attr:`payload`."""
        return content_hash(self.payload)

    @property
    def label_dict(self) -> dict[str, LabelValue]:
        return dict(self.labels)

    def with_labels(self, **labels: Any) -> RunSpec:
        """A copy with labels added or changed (same run id)."""
        return RunSpec(self.scenario, self.model, self.optimizer, self.seed,
                       {**self.label_dict, **labels})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (what ``spec.json`` holds)."""
        return {**self.payload, "labels": self.label_dict, "run_id": self.run_id,
                "format": HASH_FORMAT}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], data: Dataset | None = None) -> RunSpec:
        """Rebuild from :meth:`to_dict`; a dataset built from tensors must be passed as ``data``.

        Raises when the dict's ``run_id`` does not match its content (an edited file).
        """
        if not isinstance(d, Mapping) or not {"scenario", "model", "optimizer"} <= set(d):
            raise SpecTypeError(f"a run spec dict needs 'scenario', 'model' and 'optimizer', "
                                f"got {sorted(d) if isinstance(d, Mapping) else d!r}")
        spec = cls(Scenario.from_dict(d["scenario"], data), ModelSpec.from_dict(d["model"]),
                   OptimizerSpec.from_dict(d["optimizer"]), d.get("seed", 0),
                   d.get("labels") or {})
        if d.get("run_id") not in (None, spec.run_id):
            raise ShiftsimError(f"run spec says run_id {d['run_id']!r} but its content hashes "
                                f"to {spec.run_id!r}; the file was edited or is from another "
                                "format")
        return spec

    def __repr__(self) -> str:
        return (f"RunSpec({self.run_id}: {self.scenario.name!r}, {self.model.label}, "
                f"{self.optimizer.label}, seed={self.seed})")


def labels_from_info(info: Mapping[str, Any]) -> dict[str, LabelValue]:
    """Default labels for a result without a RunSpec (``shiftsim run --out``)."""
    learner = info.get("learner") or {}
    labels: dict[str, Any] = {"scenario": (info.get("scenario") or {}).get("name"),
                              "seed": info.get("seed")}
    model = learner.get("model") or {}
    try:
        labels["model"] = ModelSpec.from_dict(model).label
    except Exception:
        labels["model"] = model.get("name") or model.get("module") or model.get("factory")
    opt = learner.get("optimizer") or {}
    name = opt.get("name")
    labels["optimizer_name"] = name
    lr = (opt.get("hparams") or {}).get("lr")
    if isinstance(lr, (int, float)) and not isinstance(lr, bool):
        labels["lr"] = float(lr)
    try:
        labels["optimizer"] = OptimizerSpec.from_dict(opt).label
    except Exception:
        labels["optimizer"] = name
    return dict(freeze_labels(labels))
