"""Label shifts: :class:`LabelFlip` (explicit modes) and :class:`ClassPrior`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

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
    def label_kind(self) -> str:
        """"concept" (permute, pair), "noise" (other, uniform), or "none" at rate 0."""
        if self.rate == 0:
            return "none"
        return "concept" if self.mode in ("permute", "pair") else "noise"

    def ceiling(self, num_classes: int) -> float:
        """Best accuracy reachable against this phase's labels by a generalising learner."""
        rho, c = self.rate, num_classes
        if self.mode in ("permute", "pair") or rho == 0:
            return 1.0
        if self.mode == "other":
            return max(1.0 - rho, rho / (c - 1))
        return 1.0 - rho + rho / c

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
