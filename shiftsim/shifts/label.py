"""Label shifts: :class:`LabelFlip` (explicit modes) and :class:`ClassPrior`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..errors import ShiftsimError, allowed, check_range
from .base import Shift

FLIP_MODES = ("permute", "other", "uniform", "pair")


def derangement(num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random permutation of ``range(num_classes)`` with no fixed point.

    >>> g = torch.Generator().manual_seed(0)
    >>> p = derangement(5, g)
    >>> bool((p != torch.arange(5)).all()), sorted(p.tolist())
    (True, [0, 1, 2, 3, 4])
    """
    if num_classes < 2:
        raise ShiftsimError(f"a derangement needs at least 2 classes, got {num_classes}")
    ar = torch.arange(num_classes)
    while True:  # rejection sampling: accepted with probability ~1/e
        p = torch.randperm(num_classes, generator=generator)
        if bool((p != ar).all()):
            return p


def choose_per_class(y: torch.Tensor, rate: float, num_classes: int,
                     generator: torch.Generator) -> torch.Tensor:
    """A boolean mask choosing exactly ``round(rate * n_c)`` samples of each class c.

    >>> y = torch.tensor([0, 0, 0, 0, 1, 1])
    >>> m = choose_per_class(y, 0.5, 2, torch.Generator().manual_seed(0))
    >>> int(m[:4].sum()), int(m[4:].sum())
    (2, 1)
    """
    n = y.shape[0]
    counts = torch.bincount(y, minlength=num_classes)
    # round half to even would make 0.5 * 1 -> 0; use half-up like the spec's round(rate * n_c)
    take = torch.floor(rate * counts.double() + 0.5).long()
    keys = torch.rand(n, generator=generator, dtype=torch.float64)
    order = torch.argsort(y.double() + keys)  # grouped by class, random within class
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts[y[order]]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order] = rank < take[y[order]]
    return mask


@dataclass(frozen=True)
class LabelFlip(Shift):
    """Flip a fraction ``rate`` of the labels, per class, with an explicit ``mode``.

    Modes (docs/metrics.md): ``permute`` — a fixed random derangement π of the classes for
    the phase (a learnable new concept at rate 1); ``pair`` — c → c+1 mod C (concept);
    ``other`` — a uniformly drawn *different* class, fixed for the phase (noise); ``uniform`` —
    a uniformly drawn class among all C, possibly the true one (noise). Labels are redrawn
    relative to the original labels at every phase, never cumulatively.

    >>> LabelFlip(0.8, "other").ceiling(10)
    0.2
    >>> round(LabelFlip(1.0, "uniform").ceiling(10), 3)
    0.1
    >>> LabelFlip(1.2)
    Traceback (most recent call last):
    ...
    shiftsim.errors.ShiftsimError: LabelFlip.rate must be in [0, 1], got 1.2
    """

    rate: float | None = None
    mode: str = "permute"
    severity: int | None = None

    kind: ClassVar[str] = "label"
    summary: ClassVar[str] = ("flip a fraction of labels: permute / pair (concept), "
                              "other / uniform (noise)")
    severity_param: ClassVar[str] = "rate"
    severity_values: ClassVar[tuple[float, ...]] = (0.2, 0.4, 0.6, 0.8, 1.0)
    severity_source: ClassVar[str] = "ours"

    def __post_init__(self) -> None:
        self._resolve_severity()
        check_range(self.rate, "LabelFlip.rate", 0, 1)
        object.__setattr__(self, "rate", float(self.rate))
        if self.mode not in FLIP_MODES:
            raise allowed(self.mode, "flip mode", FLIP_MODES)

    def __repr__(self) -> str:
        return f"LabelFlip(rate={self.rate:g}, mode={self.mode!r})"

    @property
    def regime_draw(self) -> bool:  # type: ignore[override]
        """A flip draws its chosen samples (and π, or the noise) per regime; ``pair`` at rate
        1 is the same mapping every time."""
        return self.rate > 0 and not (self.mode == "pair" and self.rate == 1)

    def is_identity(self) -> bool:
        return self.rate == 0

    @property
    def label_kind(self) -> str:
        """The kind of label change: ``"concept"`` (``permute`` / ``pair`` at rate 1: a new
        mapping), ``"concept + noise"`` (``permute`` / ``pair`` below rate 1: two mappings of
        the same input mixed), ``"noise"`` (``other``, ``uniform``) or ``"none"`` at rate 0.

        >>> LabelFlip(1.0).label_kind, LabelFlip(0.5).label_kind, LabelFlip(0.5, "other").label_kind
        ('concept', 'concept + noise', 'noise')
        """
        if self.rate == 0:
            return "none"
        if self.mode in ("permute", "pair"):
            return "concept" if self.rate == 1 else "concept + noise"
        return "noise"

    def realized_rates(self, counts: Sequence[int]) -> np.ndarray:
        """ρ′_c = round(ρ · n_c) / n_c per class, the fraction actually flipped (half-up
        rounding, as :func:`choose_per_class`); ρ for a class without samples.

        >>> LabelFlip(0.5).realized_rates([4, 3, 0]).tolist()
        [0.5, 0.6666666666666666, 0.5]
        """
        n = np.asarray(counts, dtype=np.float64)
        take = np.floor(self.rate * n + 0.5)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(n > 0, take / np.where(n > 0, n, 1), self.rate)

    def ceiling(self, num_classes: int, counts: Sequence[int] | None = None,
                weights: Sequence[float] | None = None) -> float:
        """Best accuracy a generalising learner can reach against this phase's labels
        (the accuracy of predicting, for every input, its most likely presented label).

        ``permute`` / ``pair``: per class c with realised rate ρ′_c (``counts``: training
        samples per class; without them ρ′ = ρ), max(ρ′, 1 − ρ′) (the majority mapping: at
        ρ < 1 two mappings of one input are mixed), averaged with ``weights`` (the phase's
        class shares; default the class shares of ``counts``, or equal). The noise modes, at the
        nominal rate ρ: ``other`` max(1 − ρ, ρ / (C − 1)), ``uniform`` 1 − ρ + ρ / C (the
        realised rates would move them by at most 1 / (2 n_c): 0.4983 instead of 0.5 for
        ``other`` at 0.5 on the digits).

        >>> LabelFlip(0.8, "other").ceiling(10)
        0.2
        >>> LabelFlip(0.5).ceiling(10), LabelFlip(0.8).ceiling(10), LabelFlip(1.0).ceiling(10)
        (0.5, 0.8, 1.0)
        >>> round(LabelFlip(1.0, "uniform").ceiling(10), 3)
        0.1
        >>> round(LabelFlip(0.5).ceiling(2, counts=[3, 4]), 4)   # ρ′ = 2/3 and 1/2
        0.5714
        >>> LabelFlip(0.5, "other").ceiling(3, counts=[4, 3, 5])  # ρ, not ρ′ = 1/2, 2/3, 3/5
        0.5
        """
        c = int(num_classes)
        if self.rate == 0:
            return 1.0
        concept = self.mode in ("permute", "pair")
        rho = (self.realized_rates(counts) if counts is not None and concept
               else np.full(c, self.rate, dtype=np.float64))
        if concept:
            per = np.maximum(rho, 1.0 - rho)
        elif self.mode == "other":
            per = np.maximum(1.0 - rho, rho / max(c - 1, 1))
        else:
            per = 1.0 - rho + rho / c
        w = _weights(weights if weights is not None else counts, per.size)
        return float(np.sum(w * per))

    def label_shares(self, num_classes: int, counts: Sequence[int] | None = None,
                     weights: Sequence[float] | None = None) -> np.ndarray:
        """The expected share of each presented label in the phase: class c keeps its label
        with probability 1 − ρ′_c and moves to π(c) (``permute``: a uniformly random
        derangement, so 1/(C − 1) to each other class in expectation), c + 1 (``pair``), a
        uniform other class (``other``) or a uniform class (``uniform``). ``weights``: the
        phase's class shares (default: those of ``counts``, or equal).

        >>> LabelFlip(1.0, "pair").label_shares(3, weights=[0.5, 0.3, 0.2]).round(2).tolist()
        [0.2, 0.5, 0.3]
        """
        c = int(num_classes)
        p = _weights(weights if weights is not None else counts, c)
        rho = (self.realized_rates(counts) if counts is not None
               else np.full(c, self.rate, dtype=np.float64))
        moved = rho * p
        out = p - moved
        if self.mode == "pair":
            out = out + np.roll(moved, 1)
        elif self.mode in ("permute", "other"):
            out = out + (moved.sum() - moved) / max(c - 1, 1)
        else:
            out = out + moved.sum() / c
        return out

    def concept_map(self, num_classes: int, mapping: torch.Tensor | None,
                    counts: Sequence[int]) -> torch.Tensor | None:
        """The class -> label map a learner should hold in this phase (the held-out labels),
        or None for the noise modes (held out: the original labels). ``permute`` / ``pair``:
        per class the majority mapping, π(c) (or c + 1) where ρ′_c ≥ 0.5, c otherwise.

        >>> LabelFlip(0.4, "pair").concept_map(3, None, [10, 10, 10]).tolist()
        [0, 1, 2]
        >>> LabelFlip(0.5, "pair").concept_map(3, None, [10, 10, 10]).tolist()
        [1, 2, 0]
        """
        if self.mode not in ("permute", "pair") or self.rate == 0:
            return None
        c = int(num_classes)
        ar = torch.arange(c)
        moved = mapping if self.mode == "permute" else (ar + 1) % c
        assert moved is not None
        majority = torch.as_tensor(self.realized_rates(counts) >= 0.5)
        return torch.where(majority, moved.cpu(), ar)

    def check(self, data) -> None:
        if self.mode in ("permute", "other") and data.num_classes < 2:
            raise ShiftsimError(f"LabelFlip mode {self.mode!r} needs at least 2 classes")

    def draw(self, num_classes: int, generator: torch.Generator) -> torch.Tensor | None:
        """The phase's class mapping (π for ``permute``), drawn once per regime."""
        if self.mode == "permute":
            return derangement(num_classes, generator)
        return None

    def relabel(self, y: torch.Tensor, num_classes: int, mapping: torch.Tensor | None,
                generator: torch.Generator) -> torch.Tensor:
        """New labels for ``y`` (CPU int64): the chosen samples flipped, the rest unchanged."""
        chosen = choose_per_class(y, self.rate, num_classes, generator)
        if self.mode == "permute":
            assert mapping is not None
            new = mapping[y]
        elif self.mode == "pair":
            new = (y + 1) % num_classes
        elif self.mode == "other":
            new = (y + torch.randint(1, num_classes, y.shape, generator=generator)) % num_classes
        else:
            new = torch.randint(0, num_classes, y.shape, generator=generator)
        return torch.where(chosen, new, y)


@dataclass(frozen=True)
class ClassPrior(Shift):
    """A label-prior shift: the stream samples class c with probability ``weights[c] / sum``.

    Samples are drawn with replacement during such a phase (a prior cannot be imposed when
    sampling without replacement). Weights are relative and need not sum to 1.

    >>> ClassPrior((1, 0, 1)).probabilities()
    (0.5, 0.0, 0.5)
    """

    weights: tuple[float, ...] = ()

    kind: ClassVar[str] = "prior"
    summary: ClassVar[str] = "change the class prior of the stream (sampling weights per class)"

    def __post_init__(self) -> None:
        w = self.weights
        if not isinstance(w, (list, tuple)) or len(w) < 2:
            raise ShiftsimError(f"ClassPrior.weights must be a sequence of >= 2 numbers, got {w!r}")
        vals = tuple(float(check_range(v, f"ClassPrior.weights[{i}]", 0)) for i, v in enumerate(w))
        if sum(vals) <= 0:
            raise ShiftsimError(f"ClassPrior.weights must not all be 0, got {w!r}")
        object.__setattr__(self, "weights", vals)

    def probabilities(self) -> tuple[float, ...]:
        s = sum(self.weights)
        return tuple(v / s for v in self.weights)

    def check(self, data) -> None:
        if len(self.weights) != data.num_classes:
            raise ShiftsimError(f"ClassPrior has {len(self.weights)} weights but the dataset "
                                f"{data.name!r} has {data.num_classes} classes")
        counts = data.class_counts()
        empty = [c for c, (w, n) in enumerate(zip(self.weights, counts)) if w > 0 and n == 0]
        if empty:
            raise ShiftsimError(f"ClassPrior gives weight to class {empty[0]}, which has no "
                                "training samples")

    def sample_weights(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Per-sample sampling weights so that classes are drawn with these probabilities."""
        counts = torch.bincount(y, minlength=num_classes).double().clamp_min(1)
        w = torch.tensor(self.weights, dtype=torch.float64)
        return (w / counts)[y]


def _weights(values: Sequence[float] | None, size: int) -> np.ndarray:
    """Normalised non-negative weights (equal when ``values`` is None or sums to 0)."""
    if values is None:
        return np.full(size, 1.0 / size)
    w = np.asarray(values, dtype=np.float64)
    if w.size != size:
        raise ShiftsimError(f"expected {size} class weights, got {w.size}")
    total = float(w.sum())
    return w / total if total > 0 else np.full(size, 1.0 / size)
