"""Scenarios: a dataset, a sequence of phases (regimes of shifts) and how the stream is read.

>>> import shiftsim as ss
>>> sc = ss.Scenario(ss.data.digits(), [ss.Phase(200), ss.Phase(200, [ss.LabelFlip(1.0)])],
...                  batch_size=16)
>>> sc.total_steps, sc.boundaries
(400, [0, 200])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .data import Dataset
from .data import load as load_dataset
from .errors import ShiftsimError, SpecTypeError, allowed, check_range
from .shifts import ClassPrior, LabelFlip, Shift, shift_from_dict

RAMP_SHAPES = ("linear", "sigmoid")


@dataclass(frozen=True)
class Abrupt:
    """The new regime from the phase's first step (the default transition)."""

    width: int = 0

    def __post_init__(self) -> None:
        if self.width != 0:
            raise ShiftsimError("Abrupt() takes no width; use Gradual(width=...)")

    def probabilities(self) -> np.ndarray:
        return np.zeros(0)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "Abrupt"}

    def describe(self) -> str:
        return "abrupt"


@dataclass(frozen=True)
class Gradual:
    """Over ``width`` steps each sample comes from the new regime with probability p(s).

    ``linear``: p = (s + 1) / width; ``sigmoid``: p = 1 / (1 + exp(-4 (s - width/2) / width))
    (river's ConceptDriftStream ramp: only 0.12 and 0.88 at the ends of the stated width).

    >>> Gradual(4).probabilities().tolist()
    [0.25, 0.5, 0.75, 1.0]
    >>> [round(float(p), 2) for p in Gradual(4, "sigmoid").probabilities()]
    [0.12, 0.27, 0.5, 0.73]
    """

    width: int
    shape: str = "linear"

    def __post_init__(self) -> None:
        check_range(self.width, "Gradual.width", 1, None, integer=True)
        object.__setattr__(self, "width", int(self.width))
        if self.shape not in RAMP_SHAPES:
            raise allowed(self.shape, "ramp shape", RAMP_SHAPES)

    def probabilities(self) -> np.ndarray:
        s = np.arange(self.width, dtype=np.float64)
        if self.shape == "linear":
            return (s + 1) / self.width
        return 1.0 / (1.0 + np.exp(-4.0 * (s - self.width / 2) / self.width))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "Gradual", "width": self.width, "shape": self.shape}

    def describe(self) -> str:
        return f"gradual({self.width}, {self.shape})"


Transition = Abrupt | Gradual


def transition_from_dict(d: dict[str, Any]) -> Transition:
    if d.get("type") == "Abrupt":
        return Abrupt()
    if d.get("type") == "Gradual":
        return Gradual(d["width"], d.get("shape", "linear"))
    raise allowed(d.get("type"), "transition", ["Abrupt", "Gradual"])


@dataclass(frozen=True)
class Phase:
    """A regime: ``steps`` batches drawn with ``shifts`` applied, entered by ``transition``.

    ``repeat`` (an earlier phase's index or name) reuses that phase's regime exactly — the same
    label table, permutation and class prior — to measure re-adaptation to a known regime.

    >>> Phase(300, [LabelFlip(0.5, "other")]).describe_shifts()
    'LabelFlip(rate=0.5, mode=other)'
    """

    steps: int
    shifts: Sequence[Shift] = ()
    transition: Transition = field(default_factory=Abrupt)
    name: str | None = None
    repeat: int | str | None = None

    def __post_init__(self) -> None:
        check_range(self.steps, "Phase.steps", 1, None, integer=True)
        object.__setattr__(self, "steps", int(self.steps))
        shifts = self.shifts
        if isinstance(shifts, Shift):
            shifts = (shifts,)
        if not isinstance(shifts, (list, tuple)):
            raise SpecTypeError(f"Phase.shifts must be a list of shifts, got {shifts!r}")
        for s in shifts:
            if not isinstance(s, Shift):
                raise SpecTypeError(f"Phase.shifts must hold shifts such as LabelFlip or Rotate, "
                                    f"got {s!r}")
            s.check_interface()  # a custom Shift: a frozen dataclass with apply(x, state, gen)
        object.__setattr__(self, "shifts", tuple(shifts))
        if not isinstance(self.transition, (Abrupt, Gradual)):
            raise SpecTypeError(f"Phase.transition must be Abrupt() or Gradual(width), got "
                                f"{self.transition!r}")
        if isinstance(self.transition, Gradual) and self.transition.width > self.steps:
            raise ShiftsimError(f"Gradual width {self.transition.width} is longer than the "
                                f"phase ({self.steps} steps)")
        if self.name is not None and (not isinstance(self.name, str) or not self.name.strip()):
            raise ShiftsimError(f"Phase.name must be a non-empty string, got {self.name!r}")
        if self.repeat is not None and self.shifts:
            raise ShiftsimError("a Phase that repeats an earlier regime takes no shifts of its own")
        if sum(isinstance(s, LabelFlip) for s in self.shifts) > 1:
            raise ShiftsimError("a phase can have at most one LabelFlip")
        if sum(isinstance(s, ClassPrior) for s in self.shifts) > 1:
            raise ShiftsimError("a phase can have at most one ClassPrior")

    def describe_shifts(self) -> str:
        if self.repeat is not None:
            return f"repeat of {self.repeat!r}"
        return " + ".join(s.describe() for s in self.shifts).replace("'", "") or "clean"

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "shifts": [s.to_dict() for s in self.shifts],
                "transition": self.transition.to_dict(), "name": self.name,
                "repeat": self.repeat}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Phase:
        return cls(d["steps"], [shift_from_dict(s) for s in d.get("shifts", [])],
                   transition_from_dict(d.get("transition", {"type": "Abrupt"})),
                   d.get("name"), d.get("repeat"))


def _auto_name(phase: Phase) -> str:
    if phase.repeat is not None:
        return "repeat"
    parts = []
    for s in phase.shifts:
        if isinstance(s, LabelFlip):
            parts.append(f"flip {s.mode} {s.rate:.0%}")
        elif isinstance(s, ClassPrior):
            parts.append("class prior")
        else:
            d = s.to_dict()
            d.pop("type")
            d.pop("severity", None)
            val = next(iter(d.values()), None)
            label = type(s).__name__.lower()
            parts.append(f"{label} {val:g}" if isinstance(val, float) else label)
    return " + ".join(parts) or "clean"


class Scenario:
    """A dataset, its phases, and how the stream is batched and evaluated.

    Every field is validated on construction. ``eval_every`` (steps; 0 = only at phase ends)
    sets how often the learner is evaluated on ``eval_size`` held-out samples of every regime
    seen so far; at each phase end every regime is evaluated (the accuracy matrix).
    ``realtime=True`` makes the stream real-time (after Ghunaim et al. 2023): it does not wait
    for the learner, so a learner of relative cost c (its optimizer's
    :attr:`~shiftsim.optim.OptimizerSpec.effective_cost`) is scored on every batch but trains
    only on the batches that arrive when it is free (:mod:`shiftsim.realtime`);
    ``scenario.replace(realtime=True)`` gives the real-time view of a scenario.

    >>> import shiftsim as ss
    >>> sc = ss.Scenario(ss.data.digits(), [ss.Phase(10)], batch_size=2000)
    Traceback (most recent call last):
    ...
    shiftsim.errors.ShiftsimError: batch_size 2000 is larger than the training set of 'digits' ...
    """

    def __init__(self, data: Dataset, phases: Sequence[Phase], batch_size: int = 32,
                 eval_every: int = 100, eval_size: int | None = None,
                 name: str | None = None, realtime: bool = False) -> None:
        if not isinstance(data, Dataset):
            raise SpecTypeError(f"Scenario data must be a shiftsim Dataset (e.g. "
                                f"ss.data.digits()), got {type(data).__name__}")
        if isinstance(phases, Phase):
            phases = [phases]
        if not isinstance(phases, (list, tuple)) or not phases:
            raise ShiftsimError(f"Scenario needs a non-empty list of phases, got {phases!r}")
        for p in phases:
            if not isinstance(p, Phase):
                raise SpecTypeError(f"Scenario phases must be Phase objects, got {p!r}")
        check_range(batch_size, "batch_size", 1, None, integer=True)
        if batch_size > len(data):
            raise ShiftsimError(f"batch_size {batch_size} is larger than the training set of "
                                f"{data.name!r} ({len(data)} samples)")
        check_range(eval_every, "eval_every", 0, None, integer=True)
        n_test = int(data.x_test.shape[0])
        if eval_size is None:
            eval_size = min(500, n_test)
        check_range(eval_size, "eval_size", 1, None, integer=True)
        if eval_size > n_test:
            raise ShiftsimError(f"eval_size {eval_size} is larger than the held-out set of "
                                f"{data.name!r} ({n_test} samples)")
        if not isinstance(realtime, bool):
            raise SpecTypeError(f"realtime must be True or False, got {realtime!r}")
        self.data = data
        #: the stream does not wait for the learner: a learner of cost c trains on every c-th
        #: batch only (:mod:`shiftsim.realtime`); every batch is still scored
        self.realtime = realtime
        self.batch_size = int(batch_size)
        self.eval_every = int(eval_every)
        self.eval_size = int(eval_size)
        self.name = name or "scenario"
        self.phases: tuple[Phase, ...] = tuple(phases)
        self._counts: list[int] | None = None
        self._resolve()

    # -- validation / derived structure ---------------------------------------------------------
    def _resolve(self) -> None:
        names: list[str] = []
        regimes: list[int] = []
        n_regimes = 0
        for k, p in enumerate(self.phases):
            name = p.name or _auto_name(p)
            if p.name is None and name in names:
                name = f"{name} ({k})"
            if name in names:
                raise ShiftsimError(f"phase name {name!r} is used twice; phase names must be "
                                    "unique")
            names.append(name)
            if k == 0 and isinstance(p.transition, Gradual):
                raise ShiftsimError("the first phase cannot have a Gradual transition (there is "
                                    "no earlier regime to blend from)")
            for s in p.shifts:
                s.check(self.data)
            if p.repeat is None:
                regimes.append(n_regimes)
                n_regimes += 1
                continue
            if isinstance(p.repeat, bool) or not isinstance(p.repeat, (int, str)):
                raise SpecTypeError(f"Phase.repeat must be an earlier phase's index or name, got "
                                    f"{p.repeat!r}")
            if isinstance(p.repeat, int):
                target = p.repeat
                if not 0 <= target < k:
                    raise ShiftsimError(f"phase {k} repeats phase {target}, but only phases "
                                        f"0..{k - 1} come before it")
            else:
                if p.repeat not in names[:k]:
                    raise ShiftsimError(f"phase {k} repeats {p.repeat!r}, which is not the name of "
                                        f"an earlier phase; earlier phases: {names[:k]}")
                target = names.index(p.repeat)
            regimes.append(regimes[target])
        self.phase_names: tuple[str, ...] = tuple(names)
        self.regime_of: tuple[int, ...] = tuple(regimes)
        first = {}
        for k, r in enumerate(regimes):
            first.setdefault(r, k)
        #: for each regime id, the phase that defines its shifts
        self.regime_phase: tuple[int, ...] = tuple(first[r] for r in range(n_regimes))

    @property
    def num_regimes(self) -> int:
        return len(self.regime_phase)

    def _phase(self, phase: Any) -> int:
        """``phase`` checked: an integer in [0, number of phases)."""
        n = len(self.phases)
        if isinstance(phase, bool) or not isinstance(phase, (int, np.integer)) or \
                not 0 <= phase < n:
            raise ShiftsimError(f"phase {phase!r} is out of range: scenario {self.name!r} has "
                                f"{n} phase{'s' if n != 1 else ''} (0-{n - 1})")
        return int(phase)

    def shifts_of(self, phase: int) -> tuple[Shift, ...]:
        """The shifts in force in ``phase`` (a repeat's are those of the phase it repeats)."""
        return self.phases[self.regime_phase[self.regime_of[self._phase(phase)]]].shifts

    def label_flip(self, phase: int) -> LabelFlip | None:
        return next((s for s in self.shifts_of(phase) if isinstance(s, LabelFlip)), None)

    def class_shares(self, phase: int) -> np.ndarray:
        """The share of each original class in the phase's stream: the training set's class
        shares, or the phase's :class:`~shiftsim.shifts.ClassPrior` (over classes that have
        samples)."""
        counts = np.asarray(self.class_counts(), dtype=np.float64)
        prior = next((s for s in self.shifts_of(phase) if isinstance(s, ClassPrior)), None)
        w = counts if prior is None else np.asarray(prior.weights) * (counts > 0)
        return w / w.sum()

    def class_counts(self) -> list[int]:
        """Training samples per class (cached)."""
        if self._counts is None:
            self._counts = self.data.class_counts()
        return self._counts

    def ceiling(self, phase: int) -> float:
        """C_k: the best accuracy a generalising learner can reach against the phase's stream
        labels (1 without a label flip; see :meth:`~shiftsim.shifts.LabelFlip.ceiling`:
        max(ρ′, 1 − ρ′) for a partial ``permute`` / ``pair``, with the realised per-class
        rates, weighted by the phase's class shares; the noise modes' at the nominal rate)."""
        flip = self.label_flip(phase)
        if flip is None:
            return 1.0
        return flip.ceiling(self.data.num_classes, self.class_counts(),
                            self.class_shares(phase))

    def chance(self, phase: int, labels: str = "stream") -> float:
        """χ_k: the accuracy of the best constant prediction, i.e. the largest expected class
        share of the phase's labels (``labels="stream"``: as presented, after label shifts;
        ``"true"``: the original labels). 1/C for balanced classes.

        The shares are the expectation over the regime's draw (a random derangement moves a
        class to each other class with probability 1/(C − 1)); they are exact for balanced
        classes at a flip rate of 1 and for ``pair``. A run records the chance level of the
        labels its stream drew (:meth:`Stream.chance <shiftsim.stream.Stream.chance>`).
        """
        shares = self.class_shares(phase)
        flip = self.label_flip(phase)
        if labels == "stream" and flip is not None and flip.rate > 0:
            shares = flip.label_shares(self.data.num_classes, self.class_counts(), shares)
        elif labels not in ("stream", "true"):
            raise allowed(labels, "labels", ("stream", "true"))
        return float(np.max(shares))

    def has_shift(self, phase: int) -> bool:
        """True when phase ``phase`` changes the data relative to the phase before it (so
        there is something to recover from): another regime whose effective shifts differ, or
        the same kind of shift drawn afresh (a new permutation, a new label table). A flip
        rate of 0, a repeat of the regime just left or an unchanged input shift is no shift.

        >>> import shiftsim as ss
        >>> d = ss.data.digits()
        >>> ss.label_flip_tasks(d, 0.0, tasks=2, steps_per_task=10).has_shift(1)
        False
        >>> ss.label_flip_tasks(d, 1.0, tasks=3, steps_per_task=10).has_shift(2)
        True
        >>> ss.covariate_drift(d, [ss.Rotate(30), ss.Rotate(30)], 10).has_shift(2)
        False
        """
        phase = self._phase(phase)
        if phase == 0 or self.regime_of[phase] == self.regime_of[phase - 1]:
            return False
        before = _effective(self.shifts_of(phase - 1))
        now = _effective(self.shifts_of(phase))
        if before != now:
            return True
        return any(s.regime_draw for s in self.shifts_of(phase) if not s.is_identity())

    def shift_kind(self, phase: int) -> str:
        """What kind of shift phase ``phase`` is: the types of the shifts that change between
        the phase before and this one (a label flip with its mode), sorted and joined with
        " + "; ``""`` when the phase is no shift (:meth:`has_shift`). A shift away and the
        shift back are of one kind (both ``"Rotate"``); a run's shifts of one kind are reduced
        together, shifts of different kinds separately (docs/metrics.md).

        >>> import shiftsim as ss
        >>> sc = ss.recurring(ss.data.digits(), [[], [ss.Rotate(45)], [ss.LabelFlip(1.0)]],
        ...                   steps_per_phase=10, cycles=1)
        >>> [sc.shift_kind(k) for k in range(len(sc.phases))]
        ['', 'Rotate', 'LabelFlip(permute) + Rotate']
        """
        if not self.has_shift(phase):
            return ""
        before, now = _kinds(self.shifts_of(phase - 1)), _kinds(self.shifts_of(phase))
        changed = {label for _, label in before.items() ^ now.items()}
        changed |= {_kind_label(s) for s in self.shifts_of(phase)
                    if s.regime_draw and not s.is_identity()}
        if not changed:  # the same shifts, one of them twice: a shift of their kinds
            changed = set(before.values()) | set(now.values())
        return " + ".join(sorted(changed))

    def label_kind(self, phase: int) -> str:
        flip = self.label_flip(phase)
        return flip.label_kind if flip else "none"

    def concept(self, phase: int) -> str:
        """Which labels the phase's concept follows: ``"flipped"`` when its concept label
        shift moves the majority of every class (``permute`` / ``pair`` at a rate of 0.5 or
        more: the held-out labels are the flipped mapping), else ``"original"`` (no flip, label
        noise, a partial concept shift below 0.5)."""
        flip = self.label_flip(phase)
        if flip is None or flip.label_kind not in ("concept", "concept + noise"):
            return "original"
        rates = flip.realized_rates(self.class_counts())
        return "flipped" if float(np.mean(rates >= 0.5)) >= 0.5 else "original"

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)

    @property
    def boundaries(self) -> list[int]:
        """The first step of every phase (τ_k, the start of its ramp when gradual)."""
        return [int(x) for x in np.cumsum([0] + [p.steps for p in self.phases])[:-1]]

    def phase_table(self) -> pd.DataFrame:
        """One row per phase: the plan that metrics and reports read.

        Columns: ``phase``, ``name``, ``start``, ``end``, ``steps``, ``regime``, ``ceiling``
        (C_k), ``chance`` and ``chance_true`` (χ_k against the presented and the original
        labels), ``label_kind``, ``concept`` (:meth:`concept`), ``shifted`` (:meth:`has_shift`),
        ``width`` (the ramp),
        ``transition``, ``shifts``.

        >>> import shiftsim as ss
        >>> sc = ss.label_flip_tasks(ss.data.digits(), rate=0.5, mode="other", tasks=2,
        ...                          steps_per_task=50)
        >>> t = sc.phase_table()
        >>> t[["phase", "start", "end", "regime", "label_kind", "shifted"]]
           phase  start  end  regime label_kind  shifted
        0      0      0   50       0       none    False
        1      1     50  100       1      noise     True
        >>> t["ceiling"].round(3).tolist(), t["chance"].round(3).tolist()
        ([1.0, 0.5], [0.102, 0.101])
        """
        rows = []
        for k, (p, start) in enumerate(zip(self.phases, self.boundaries)):
            rows.append({
                "phase": k, "name": self.phase_names[k], "start": start,
                "end": start + p.steps, "steps": p.steps, "regime": self.regime_of[k],
                "ceiling": self.ceiling(k), "chance": self.chance(k),
                "chance_true": self.chance(k, "true"), "label_kind": self.label_kind(k),
                "concept": self.concept(k),
                "shifted": self.has_shift(k), "shift_kind": self.shift_kind(k),
                "width": int(p.transition.width), "transition": p.transition.describe(),
                "shifts": p.describe_shifts(),
            })
        return pd.DataFrame(rows)

    def describe(self, file: Any = None) -> None:
        """Print a readable table of the phases (to ``file``, default standard output).
        It returns None, as ``DataFrame.info`` does, so an interactive session shows the table
        once; for the text, print to a ``io.StringIO``.

        >>> import io, shiftsim as ss
        >>> buf = io.StringIO()
        >>> ss.label_flip_tasks(ss.data.digits(), 1.0, tasks=2, steps_per_task=10).describe(buf)
        >>> buf.getvalue().splitlines()[2].split()[:3]
        ['0', 'clean', '0']
        """
        t = self.phase_table()
        d = self.data
        head = (f"Scenario {self.name!r}: {d.name} ({len(d)} train / {d.x_test.shape[0]} held-out, "
                f"{d.num_classes} classes), batch {self.batch_size}, {self.total_steps} steps, "
                f"eval every {self.eval_every or 'phase end'} on {self.eval_size} samples"
                + (", real-time (a learner of cost c trains on every c-th batch)"
                   if self.realtime else ""))
        cols = ["phase", "name", "start", "steps", "transition", "shifts", "ceiling"]
        t = t[cols].assign(ceiling=t["ceiling"].map(lambda c: f"{c:.3g}"))
        print(head + "\n" + t.to_string(index=False), file=file)

    def __repr__(self) -> str:
        rt = ", realtime=True" if self.realtime else ""
        return (f"Scenario({self.name!r}, data={self.data.name!r}, phases={len(self.phases)}, "
                f"steps={self.total_steps}, batch_size={self.batch_size}{rt})")

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON description (the dataset by its source, or a fingerprint of its tensors)."""
        out = {"name": self.name, "data": self.data.to_dict(),
               "phases": [p.to_dict() for p in self.phases], "batch_size": self.batch_size,
               "eval_every": self.eval_every, "eval_size": self.eval_size}
        if self.realtime:  # absent when False: a plain scenario's description is unchanged
            out["realtime"] = True
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], data: Dataset | None = None) -> Scenario:
        """Rebuild from :meth:`to_dict`; datasets built from tensors must be passed as ``data``."""
        if data is None:
            data = load_dataset(d["data"]["source"])
        return cls(data, [Phase.from_dict(p) for p in d["phases"]], d["batch_size"],
                   d["eval_every"], d["eval_size"], d.get("name"), bool(d.get("realtime")))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Scenario) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self.to_dict()))

    def replace(self, **changes: Any) -> Scenario:
        """A copy with some constructor arguments changed."""
        args = {"data": self.data, "phases": self.phases, "batch_size": self.batch_size,
                "eval_every": self.eval_every, "eval_size": self.eval_size, "name": self.name,
                "realtime": self.realtime}
        unknown = set(changes) - set(args)
        if unknown:
            raise allowed(sorted(unknown)[0], "Scenario field", args)
        args.update(changes)
        return Scenario(**args)


def _kind_label(shift: Shift) -> str:
    """A shift's kind in words: its type, a label flip's with its mode."""
    name = type(shift).__name__
    return f"{name}({shift.mode})" if isinstance(shift, LabelFlip) else name


def _kinds(shifts: Sequence[Shift]) -> dict[str, str]:
    """The shifts that change something: comparable description -> kind label."""
    out = {}
    for s in shifts:
        if s.is_identity():
            continue
        d = s.to_dict()
        d.pop("severity", None)
        out[repr(sorted(d.items()))] = _kind_label(s)
    return out


def _effective(shifts: Sequence[Shift]) -> list[str]:
    """The shifts that change something, as comparable descriptions (severity presets resolved,
    order ignored)."""
    out = []
    for s in shifts:
        if s.is_identity():
            continue
        d = s.to_dict()
        d.pop("severity", None)
        out.append(repr(sorted(d.items())))
    return sorted(out)


# -- builders ---------------------------------------------------------------------------------

def _steps(value: int, name: str) -> int:
    return int(check_range(value, name, 1, None, integer=True))


def label_flip_tasks(data: Dataset, rate: float, mode: str = "permute", tasks: int = 5,
                     steps_per_task: int = 300, *, transition: Transition | None = None,
                     **scenario_kwargs: Any) -> Scenario:
    """``tasks`` tasks on the same inputs: task 0 has the original labels, every later task
    flips a fraction ``rate`` of them with ``mode``, drawn afresh relative to the original labels.

    >>> import shiftsim as ss
    >>> sc = ss.label_flip_tasks(ss.data.digits(), rate=1.0, tasks=3, steps_per_task=100)
    >>> sc.phase_names
    ('clean', 'flip permute 100%', 'flip permute 100% (2)')
    """
    _steps(tasks, "tasks")
    _steps(steps_per_task, "steps_per_task")
    flip = LabelFlip(rate, mode)
    phases = [Phase(steps_per_task)]
    for _ in range(1, tasks):
        phases.append(Phase(steps_per_task, [flip], transition or Abrupt()))
    scenario_kwargs.setdefault("name", f"flip-{mode}-{rate:g}")
    return Scenario(data, phases, **scenario_kwargs)


def covariate_drift(data: Dataset, shifts: Sequence[Shift | Sequence[Shift]],
                    steps_per_phase: int = 300, *, transition: Transition | None = None,
                    clean_first: bool = True, **scenario_kwargs: Any) -> Scenario:
    """A clean phase, then one phase per entry of ``shifts`` (a shift or a list of shifts),
    each entered by ``transition`` (abrupt by default).

    >>> import shiftsim as ss
    >>> sc = ss.covariate_drift(ss.data.digits(), [ss.Rotate(30), ss.Rotate(60)], 100,
    ...                         transition=ss.Gradual(50))
    >>> sc.phase_names
    ('clean', 'rotate 30', 'rotate 60')
    """
    _steps(steps_per_phase, "steps_per_phase")
    if not isinstance(shifts, (list, tuple)):  # a string would be read letter by letter
        raise SpecTypeError(f"covariate_drift needs a list of shifts (one per phase), got "
                            f"{shifts!r}")
    if not shifts:
        raise ShiftsimError("covariate_drift needs a non-empty list of shifts (one per phase)")
    phases = [Phase(steps_per_phase)] if clean_first else []
    for entry in shifts:
        if not isinstance(entry, (Shift, list, tuple)):
            raise SpecTypeError(f"covariate_drift: each entry of shifts must be a shift such as "
                                f"Rotate(30) or a list of shifts, got {entry!r}")
        group = [entry] if isinstance(entry, Shift) else list(entry)
        phases.append(Phase(steps_per_phase, group, transition or Abrupt()))
    if not clean_first:
        phases[0] = Phase(steps_per_phase, phases[0].shifts)
    scenario_kwargs.setdefault("name", "covariate-drift")
    return Scenario(data, phases, **scenario_kwargs)


def recurring(data: Dataset, regimes: Sequence[Sequence[Shift] | Shift], cycles: int = 2,
              steps_per_phase: int = 300, *, transition: Transition | None = None,
              **scenario_kwargs: Any) -> Scenario:
    """Cycle through ``regimes`` ``cycles`` times; later cycles repeat the first cycle's regimes
    exactly (same label tables and permutations).

    >>> import shiftsim as ss
    >>> sc = ss.recurring(ss.data.digits(), [[], [ss.LabelFlip(1.0)]], cycles=2, steps_per_phase=50)
    >>> sc.regime_of
    (0, 1, 0, 1)
    """
    _steps(cycles, "cycles")
    _steps(steps_per_phase, "steps_per_phase")
    if not isinstance(regimes, (list, tuple)):  # a string would be read letter by letter
        raise SpecTypeError(f"recurring needs a list of regimes (a shift or a list of shifts "
                            f"each), got {regimes!r}")
    if not regimes:
        raise ShiftsimError("recurring needs at least one regime")
    for r in regimes:
        if not isinstance(r, (Shift, list, tuple)):
            raise SpecTypeError(f"recurring: each regime must be a shift such as Rotate(30) or "
                                f"a list of shifts ([] for clean data), got {r!r}")
    groups = [[r] if isinstance(r, Shift) else list(r) for r in regimes]
    phases = []
    for c in range(cycles):
        for i, g in enumerate(groups):
            k = len(phases)
            tr = transition or Abrupt()
            if k == 0:
                tr = Abrupt()
            if c == 0:
                phases.append(Phase(steps_per_phase, g, tr))
            else:
                phases.append(Phase(steps_per_phase, (), tr, repeat=i))
    scenario_kwargs.setdefault("name", "recurring")
    return Scenario(data, phases, **scenario_kwargs)

