"""The Shift base class, severity presets and the registry of shift types."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar

from ..errors import ShiftsimError, SpecTypeError, allowed, check_range

SHIFT_TYPES: dict[str, type[Shift]] = {}


class Shift:
    """A change to the data of a phase: its labels, its class prior or its inputs.

    Subclasses are frozen dataclasses; ``kind`` is "label", "prior" or "input".
    """

    kind: ClassVar[str] = "input"
    summary: ClassVar[str] = ""
    #: name of the parameter a severity preset sets, and the five preset values
    severity_param: ClassVar[str | None] = None
    severity_values: ClassVar[tuple[float, ...]] = ()
    severity_source: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            SHIFT_TYPES[cls.__name__] = cls

    # -- severity presets ----------------------------------------------------------------------
    def _resolve_severity(self) -> None:
        """Fill the parameter from ``severity`` (1..5) when the parameter was not given."""
        sev = getattr(self, "severity", None)
        param = self.severity_param
        if param is None:
            return
        value = getattr(self, param)
        if sev is not None:
            check_range(sev, "severity", 1, 5, integer=True)
            if value is not None:
                raise ShiftsimError(f"{type(self).__name__}: give {param} or severity, not both "
                                    f"(got {param}={value!r}, severity={sev!r})")
            object.__setattr__(self, param, self.severity_values[int(sev) - 1])
            object.__setattr__(self, "severity", int(sev))
        elif value is None:
            raise ShiftsimError(f"{type(self).__name__} needs {param}=... or severity=1..5")

    # -- description ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON description, ``{"type": <class name>, <fields>}``.

        >>> from shiftsim.shifts import GaussianNoise
        >>> GaussianNoise(severity=3).to_dict()
        {'type': 'GaussianNoise', 'std': 0.08, 'severity': 3}
        """
        out: dict[str, Any] = {"type": type(self).__name__}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if f.name == "severity" and v is None:
                continue
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def describe(self) -> str:
        """A short label, e.g. ``"GaussianNoise(std=0.08)"``."""
        parts = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if f.name == "severity" or v is None:
                continue
            if isinstance(v, float):
                v = f"{v:g}"
            elif isinstance(v, tuple):
                v = f"[{len(v)} values]"
            parts.append(f"{f.name}={v}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def check(self, data: Any) -> None:
        """Raise a clear error when this shift cannot apply to ``data`` (a Dataset)."""

    #: True when the shift draws fixed randomness per regime (a label table, a permutation), so
    #: that two regimes with equal parameters still differ from each other
    regime_draw: ClassVar[bool] = False

    def is_identity(self) -> bool:
        """True when the shift changes nothing (a flip rate of 0, a rotation by 0 degrees ...):
        a phase whose shifts are all identities is no shift to recover from."""
        return False


def shift_from_dict(d: dict[str, Any]) -> Shift:
    """Rebuild a shift from :meth:`Shift.to_dict`.

    >>> from shiftsim.shifts import LabelFlip
    >>> shift_from_dict(LabelFlip(0.5, "other").to_dict())
    LabelFlip(rate=0.5, mode='other')
    """
    if not isinstance(d, dict) or "type" not in d:
        raise SpecTypeError(f"a shift description must be a dict with a 'type', got {d!r}")
    cls = SHIFT_TYPES.get(d["type"])
    if cls is None:
        raise allowed(d["type"], "shift", SHIFT_TYPES)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k != "type"}
    if "severity" in kwargs and cls.severity_param is not None:
        kwargs.pop(cls.severity_param, None)  # the preset recomputes it
    return cls(**kwargs)


def number(value: Any, name: str, owner: str, low: float | None = None,
           high: float | None = None, **kw: Any) -> float:
    """Validate a numeric shift parameter (naming the shift in the error)."""
    return check_range(value, f"{owner}.{name}", low, high, **kw)


def numbers(value: Any, name: str, owner: str) -> float | tuple[float, ...]:
    """A scalar or a tuple of finite numbers."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ShiftsimError(f"{owner}.{name} must not be empty")
        out = tuple(float(check_range(v, f"{owner}.{name}[{i}]")) for i, v in enumerate(value))
        return out
    return float(check_range(value, f"{owner}.{name}"))


def is_finite_seq(values: Sequence[float]) -> bool:
    return all(math.isfinite(v) for v in values)
