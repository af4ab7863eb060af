"""The stream: (Scenario, seed, device) -> device batches, with no DataLoader.

Batches are index gathers into the dataset, which moves to the device once. Within a phase,
samples are drawn without replacement and reshuffled at every pass (a pass yields
``N // batch_size`` full batches); a phase with a :class:`~shiftsim.shifts.ClassPrior` draws with
replacement by the prior. Label shifts are computed once per regime as a table over the whole
training set, so a sample keeps its flipped label for the whole phase; shifts that have no
per-batch randomness are applied once per regime to the whole training set, the rest per batch.

Randomness comes from seeded generators derived from the run seed: the batch order of each
phase, each regime's label table and permutations, and the per-batch noise. The same seed on the
same device gives the same stream bit for bit.

>>> import shiftsim as ss
>>> sc = ss.label_flip_tasks(ss.data.digits(), rate=1.0, tasks=2, steps_per_task=3, batch_size=4)
>>> batches = list(ss.stream.Stream(sc, seed=0))
>>> len(batches), batches[0].x.shape, batches[3].phase
(6, torch.Size([4, 1, 8, 8]), 1)
>>> bool((batches[3].y != batches[3].y_true).all())   # rate 1.0 permute: every label moved
True
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import ShiftsimError, SpecTypeError, check_range
from .runtime import resolve_device
from .scenario import Scenario
from .seeds import derive_seed
from .shifts import ClassPrior, LabelFlip, Shift


def _generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@dataclass(frozen=True)
class Batch:
    """One step of the stream: the inputs and labels the learner sees, and their provenance."""

    step: int
    phase: int
    x: torch.Tensor  # (b, *input_shape), on the stream's device
    y: torch.Tensor  # labels presented (after label shifts)
    y_true: torch.Tensor  # the dataset's original labels
    is_new: torch.Tensor  # bool (b,): sample from the phase's regime (False: previous, in a ramp)
    index: torch.Tensor  # (b,) indices into the training set


def _place(shift: Shift, state: Any, input_shape: tuple[int, ...], device: torch.device,
           dtype: torch.dtype) -> Any:
    """``shift.place(...)`` (a custom shift written before ``place`` existed keeps its state)."""
    place = getattr(shift, "place", None)
    return state if place is None else place(state, input_shape, device, dtype)


class Regime:
    """A regime's fixed state on the device: label tables, pre-shifted inputs, per-batch tail."""

    def __init__(self, stream: Stream, regime_id: int) -> None:
        sc, data, dev = stream.scenario, stream.data, stream.device
        phase = sc.regime_phase[regime_id]
        shifts = sc.phases[phase].shifts
        self.id = regime_id
        self.clip = data.kind == "image"
        g = _generator(derive_seed(stream.seed, "regime", regime_id))
        flip = next((s for s in shifts if isinstance(s, LabelFlip)), None)
        prior = next((s for s in shifts if isinstance(s, ClassPrior)), None)
        c = data.num_classes
        y_train = stream.y_train_cpu
        y_eval = stream.y_eval_cpu
        if flip is not None and flip.rate > 0:
            mapping = flip.draw(c, g)  # the first draw from g (see heldout_concept)
            self.labels = flip.relabel(y_train, c, mapping, g).to(dev)
            flip.relabel(y_eval, c, mapping, g)  # drawn, so that later draws from g are stable
            # held-out labels: the concept a learner should hold (the majority mapping of a
            # concept shift); noise shifts are scored against the original labels
            concept = flip.concept_map(c, mapping, sc.class_counts())
            self.eval_labels = (concept[y_eval] if concept is not None else y_eval).to(dev)
        else:
            self.labels = data.y_train
            self.eval_labels = y_eval.to(dev)
        self.sample_weights = prior.sample_weights(y_train, c) if prior is not None else None
        inputs = [s for s in shifts if s.kind == "input"]
        states = [s.prepare(data.input_shape, g) for s in inputs]  # type: ignore[attr-defined]
        # each shift's state and constants go to the device once per regime, not per batch
        states = [_place(s, st, data.input_shape, dev, data.x_train.dtype)
                  for s, st in zip(inputs, states)]
        cut = next((i for i, s in enumerate(inputs) if s.stochastic), len(inputs))  # type: ignore[attr-defined]
        self.static = list(zip(inputs[:cut], states[:cut]))
        self.tail = list(zip(inputs[cut:], states[cut:]))
        self._x_base: torch.Tensor | None = None
        self._stream = stream
        # the held-out inputs of this regime, with a fixed noise draw so evaluation is stable
        eval_gen = _generator(derive_seed(stream.seed, "eval-noise", regime_id), dev)
        if inputs:
            x_eval = data.x_test.index_select(0, stream.eval_index)  # shifted: its own copy
            self.eval_inputs = self._apply(self._apply(x_eval, self.static, None), self.tail,
                                           eval_gen)
        else:  # no input shift: the stream's clean held-out inputs, one tensor for all such
            self.eval_inputs = stream.clean_eval_inputs  # regimes (scored once per evaluation)

    def _apply(self, x: torch.Tensor, shifts: list[tuple[Shift, Any]],
               gen: torch.Generator | None) -> torch.Tensor:
        for shift, state in shifts:
            x = shift.apply(x, state, gen)  # type: ignore[attr-defined]
            if self.clip:
                x = x.clamp(0.0, 1.0)
        return x

    @property
    def x_base(self) -> torch.Tensor:
        """The training inputs with this regime's static shifts applied (computed once)."""
        if self._x_base is None:
            self._x_base = self._apply(self._stream.data.x_train, self.static, None)
        return self._x_base

    def release(self) -> None:
        """Drop the pre-shifted training inputs (recomputed on demand)."""
        if self.static:
            self._x_base = None

    def inputs(self, index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = self.x_base.index_select(0, index)
        return self._apply(x, self.tail, gen) if self.tail else x


class PhasePlan:
    """Everything about one phase that can be drawn in advance, as device tensors.

    ``index``, ``y`` and ``y_true`` are ``(steps, batch_size)``; ``n_new`` is ``(steps,)``;
    ``new_mask`` is ``(width, batch_size)`` during a gradual ramp, else ``None``.
    """

    def __init__(self, stream: Stream, phase: int) -> None:
        sc = stream.scenario
        p = sc.phases[phase]
        dev = stream.device
        b, n_train = sc.batch_size, len(sc.data)
        self.phase = phase
        self.start = sc.boundaries[phase]
        self.steps = p.steps
        self.regime = stream.regime(sc.regime_of[phase])
        width = int(p.transition.width)
        self.previous = stream.regime(sc.regime_of[phase - 1]) if width else None
        g = _generator(derive_seed(stream.seed, "order", phase))
        if self.regime.sample_weights is not None:
            flat = torch.multinomial(self.regime.sample_weights, p.steps * b, replacement=True,
                                     generator=g)
            index = flat.view(p.steps, b)
        else:
            per_pass = n_train // b
            passes = math.ceil(p.steps / per_pass)
            index = torch.cat([torch.randperm(n_train, generator=g)[: per_pass * b]
                               for _ in range(passes)]).view(-1, b)[: p.steps]
        self.index = index.to(dev)
        self.y = self.regime.labels[self.index]
        self.y_true = stream.data.y_train[self.index]
        self.n_new = torch.full((p.steps,), b, dtype=torch.int64)
        self.new_mask: torch.Tensor | None = None
        if width:
            probs = torch.tensor(p.transition.probabilities(), dtype=torch.float64)
            mask = torch.rand(width, b, generator=g, dtype=torch.float64) < probs[:, None]
            self.n_new[:width] = mask.sum(1)
            self.new_mask = mask.to(dev)
            assert self.previous is not None
            old_y = self.previous.labels[self.index[:width]]
            self.y[:width] = torch.where(self.new_mask, self.y[:width], old_y)

    def inputs(self, s: int, gen: torch.Generator) -> torch.Tensor:
        """The inputs of step ``s`` of the phase (per-batch shifts drawn from ``gen``)."""
        index = self.index[s]
        x = self.regime.inputs(index, gen)
        if self.new_mask is not None and s < self.new_mask.shape[0]:
            assert self.previous is not None
            old = self.previous.inputs(index, gen)
            m = self.new_mask[s].view(-1, *([1] * (x.ndim - 1)))
            x = torch.where(m, x, old)
        return x

    def is_new(self, s: int) -> torch.Tensor:
        if self.new_mask is not None and s < self.new_mask.shape[0]:
            return self.new_mask[s]
        return torch.ones(self.index.shape[1], dtype=torch.bool, device=self.index.device)


class Stream:
    """The batches of ``scenario`` for run ``seed`` on ``device``.

    Iterate it for :class:`Batch` objects, or use :meth:`plan` for a phase's whole draw at once
    (what the engine does) and :meth:`heldout` for a regime's held-out set.
    """

    def __init__(self, scenario: Scenario, seed: int = 0,
                 device: str | torch.device = "auto") -> None:
        if not isinstance(scenario, Scenario):
            raise ShiftsimError(f"Stream needs a Scenario, got {type(scenario).__name__}")
        self.scenario = scenario
        self.seed = check_range(seed, "seed", 0, integer=True)
        self.device = resolve_device(device)
        self.data = scenario.data.to(self.device)
        self.y_train_cpu = scenario.data.y_train.cpu()
        eval_index = _eval_index(scenario, seed)
        self.y_eval_cpu = scenario.data.y_test.cpu()[eval_index]
        self.eval_index = eval_index.to(self.device)
        self.noise = _generator(derive_seed(seed, "noise"), self.device)
        self._regimes: dict[int, Regime] = {}
        self._clean_eval: torch.Tensor | None = None

    @property
    def clean_eval_inputs(self) -> torch.Tensor:
        """The run's held-out inputs without any shift (made once): the held-out inputs of
        every regime without an input shift are this one tensor."""
        if self._clean_eval is None:
            self._clean_eval = self.data.x_test.index_select(0, self.eval_index)
        return self._clean_eval

    def regime(self, regime_id: int) -> Regime:
        if regime_id not in self._regimes:
            _check_index(regime_id, "regime", self.scenario.num_regimes)
            self._regimes[regime_id] = Regime(self, regime_id)
        return self._regimes[regime_id]

    def chance(self, phase: int) -> float:
        """χ_k as this stream draws it: the largest share of phase ``phase``'s stream labels,
        from its regime's label table (each class c sampled with its share w_c in the phase,
        uniformly within the class: the share of label j is Σ_c w_c · #(y = c, label j) / n_c).
        :meth:`Scenario.chance <shiftsim.scenario.Scenario.chance>` gives the expectation over
        the regime's draw (before any run); a fixed derangement only moves the class shares
        around, so at a flip rate of 1 the largest share stays the largest class share (the
        expectation spreads a moved class over every other class, which understates it under
        an uneven class prior).

        >>> import shiftsim as ss
        >>> sc = ss.Scenario(ss.data.digits(), [ss.Phase(5), ss.Phase(5, [ss.LabelFlip(1.0),
        ...                  ss.ClassPrior((10,) + (1,) * 9)])])
        >>> round(Stream(sc, seed=0, device="cpu").chance(1), 3), round(sc.chance(1), 3)
        (0.526, 0.105)
        """
        sc = self.scenario
        _check_index(phase, "phase", len(sc.phases))
        flip = sc.label_flip(phase)
        if flip is None or flip.rate == 0:
            return sc.chance(phase)
        c = sc.data.num_classes
        labels = self.regime(sc.regime_of[phase]).labels.cpu()
        pairs = torch.bincount(self.y_train_cpu * c + labels, minlength=c * c)
        table = pairs.reshape(c, c).to(torch.float64).numpy()
        counts = table.sum(axis=1, keepdims=True)
        within = np.divide(table, counts, out=np.zeros_like(table), where=counts > 0)
        return float(np.max(sc.class_shares(phase) @ within))

    def plan(self, phase: int) -> PhasePlan:
        """Draw phase ``phase``: batch indices, labels and ramp mask, as device tensors.

        Pre-shifted inputs of regimes that neither this phase nor its ramp uses are released.
        """
        _check_index(phase, "phase", len(self.scenario.phases))
        plan = PhasePlan(self, phase)
        keep = {plan.regime.id} | ({plan.previous.id} if plan.previous else set())
        for rid, reg in self._regimes.items():
            if rid not in keep:
                reg.release()
        return plan

    def heldout(self, regime_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Held-out inputs and labels of a regime: inputs shifted as the regime shifts them,
        labels shifted by concept label shifts only (noise flips are scored clean)."""
        r = self.regime(regime_id)
        return r.eval_inputs, r.eval_labels

    def __iter__(self) -> Iterator[Batch]:
        for k in range(len(self.scenario.phases)):
            plan = self.plan(k)
            for s in range(plan.steps):
                yield Batch(plan.start + s, k, plan.inputs(s, self.noise), plan.y[s],
                            plan.y_true[s], plan.is_new(s), plan.index[s])

    def __len__(self) -> int:
        return self.scenario.total_steps


def _check_index(value: Any, what: str, count: int) -> None:
    """``value`` is one of the scenario's ``count`` phases (or regimes): 0 … count − 1."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise SpecTypeError(f"{what} must be an integer index, got {value!r}")
    if not 0 <= value < count:
        raise ShiftsimError(f"{what} {int(value)} is out of range: the scenario has {count} "
                            f"{what}{'s' if count != 1 else ''} (0-{count - 1})")


def _eval_index(scenario: Scenario, seed: int) -> torch.Tensor:
    """The held-out samples a run evaluates on (sorted indices into the test split)."""
    n_test = scenario.data.x_test.shape[0]
    eval_index = torch.randperm(n_test, generator=_generator(derive_seed(seed, "eval")))
    return eval_index[: scenario.eval_size].sort().values


def heldout_concept(scenario: Scenario, seed: int, regime_id: int) -> torch.Tensor:
    """The class -> label map of a regime's held-out labels in run ``seed``: the identity
    without a concept label shift, else the majority mapping of its ``permute`` / ``pair``
    flip (:meth:`~shiftsim.shifts.LabelFlip.concept_map`), drawn as the run draws it.

    >>> import shiftsim as ss
    >>> sc = ss.label_flip_tasks(ss.data.digits(), rate=1.0, tasks=2, steps_per_task=5)
    >>> bool((heldout_concept(sc, 0, 1) != torch.arange(10)).all())
    True
    """
    c = scenario.data.num_classes
    flip = next((s for s in scenario.shifts_of(scenario.regime_phase[regime_id])
                 if isinstance(s, LabelFlip)), None)
    if flip is None or flip.rate == 0:
        return torch.arange(c)
    g = _generator(derive_seed(seed, "regime", regime_id))
    mapping = flip.draw(c, g)  # the Regime's first draw from the same generator
    concept = flip.concept_map(c, mapping, scenario.class_counts())
    return torch.arange(c) if concept is None else concept


def max_average_accuracy(scenario: Scenario, seed: int) -> float:
    """The highest ACC any single classifier can reach on ``scenario``'s regimes in run
    ``seed``: below 1 when regimes conflict (the same input with different held-out labels,
    e.g. ``permute`` at rate 1 in two regimes). See
    :func:`shiftsim.metrics.max_average_accuracy`.

    >>> import shiftsim as ss
    >>> d = ss.data.digits()
    >>> max_average_accuracy(ss.label_flip_tasks(d, 0.0, tasks=3, steps_per_task=5), 0)
    1.0
    >>> round(max_average_accuracy(ss.label_flip_tasks(d, 1.0, tasks=2, steps_per_task=5), 0), 3)
    0.5
    """
    from .metrics import max_average_accuracy as bound

    maps = [heldout_concept(scenario, seed, r).numpy() for r in range(scenario.num_regimes)]
    groups = []
    for r in range(scenario.num_regimes):
        inputs = [s for s in scenario.shifts_of(scenario.regime_phase[r]) if s.kind == "input"]
        key = repr([repr(sorted(s.to_dict().items())) for s in inputs if not s.is_identity()])
        if any(s.regime_draw and not s.is_identity() for s in inputs):
            key += f"#{r}"  # a drawn input transform (a pixel permutation): its own inputs
        groups.append(key)
    y_eval = scenario.data.y_test.cpu()[_eval_index(scenario, seed)]
    weights = torch.bincount(y_eval, minlength=scenario.data.num_classes).numpy()
    return bound(maps, groups, weights)


def stream(scenario: Scenario, seed: int = 0, device: str | torch.device = "auto") -> Stream:
    """Shorthand for :class:`Stream`."""
    return Stream(scenario, seed, device)
