"""The Shift base class, severity presets and the registry of shift types."""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Sequence
from typing import Any, ClassVar

from ..errors import ShiftsimError, SpecTypeError, allowed, check_range

SHIFT_TYPES: dict[str, type[Shift]] = {}


class Shift:
    """A change to the data of a phase: its labels, its class prior or its inputs.

    Subclasses are frozen dataclasses; ``kind`` is "label", "prior" or "input". The label and
    prior shifts are :class:`~shiftsim.shifts.LabelFlip` and :class:`~shiftsim.shifts.ClassPrior`;
    **your own input shift** is a frozen dataclass subclass that defines

    * ``apply(x, state, generator) -> x``: the shifted batch (same shape), a batched tensor op
      on ``x``'s device. Images are in [0, 1] and are clipped to it afterwards.
    * optionally ``prepare(input_shape, generator) -> state``: per-regime state drawn once from
      the regime's seeded CPU generator (a permutation, a mask ...); default None.
    * optionally ``stochastic = True`` when ``apply`` draws fresh randomness per batch from
      ``generator`` (the run's seeded device generator). A shift that is not stochastic is
      applied once, to the whole training set of the regime, with ``generator=None``.
    * optionally ``check(data)``: raise when the shift cannot apply to a dataset.

    A subclass that lacks ``apply``, or is not a frozen dataclass, is refused when a
    :class:`~shiftsim.Phase` is built, with an error naming what is missing.

    >>> import dataclasses, torch
    >>> @dataclasses.dataclass(frozen=True)
    ... class Invert(Shift):
    ...     def apply(self, x, state, generator):
    ...         return 1.0 - x
    >>> Invert().describe(), Invert().apply(torch.tensor([0.25]), None, None).tolist()
    ('Invert()', [0.75])
    """

    kind: ClassVar[str] = "input"
    summary: ClassVar[str] = ""
    #: whether ``apply`` draws fresh randomness per batch (input shifts)
    stochastic: ClassVar[bool] = False
    #: name of the parameter a severity preset sets, and the five preset values
    severity_param: ClassVar[str | None] = None
    severity_values: ClassVar[tuple[float, ...]] = ()
    severity_source: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            known = SHIFT_TYPES.get(cls.__name__)
            if known is not None and known.__module__.startswith("shiftsim.") and \
                    cls.__module__ != known.__module__:
                raise ShiftsimError(f"a shift named {cls.__name__!r} exists in shiftsim "
                                    f"already; give yours another name")
            SHIFT_TYPES[cls.__name__] = cls

    def prepare(self, input_shape: tuple[int, ...], generator: Any) -> Any:
        """Per-regime state of an input shift, drawn once from the regime's seeded CPU
        ``generator``; ``None`` for shifts without any."""
        return None

    def place(self, state: Any, input_shape: tuple[int, ...], device: Any, dtype: Any) -> Any:
        """The per-regime ``state`` as ``apply`` wants it on ``device`` (inputs of ``dtype``
        and ``input_shape``), made once per regime so that ``apply`` copies nothing from the
        host per batch; the default keeps ``state`` as it is. ``apply`` must still accept the
        state :meth:`prepare` made (or None) when called directly."""
        return state

    def check_interface(self) -> None:
        """Raise a clear error when this shift's class cannot take part in a stream (a custom
        subclass that is not a frozen dataclass, lacks ``apply`` or takes other arguments)."""
        cls = type(self)
        name = cls.__name__
        builtin = cls.__module__.startswith("shiftsim.")
        params = getattr(cls, "__dataclass_params__", None)
        if not dataclasses.is_dataclass(self) or params is None or not params.frozen:
            raise SpecTypeError(f"shift {name} must be a frozen dataclass: decorate the class "
                                f"with @dataclasses.dataclass(frozen=True)")
        if self.kind != "input" and not builtin:
            raise ShiftsimError(f"shift {name} has kind {self.kind!r}; your own shifts change "
                                "inputs (kind 'input'): for labels use LabelFlip, for the class "
                                "prior ClassPrior")
        if self.kind != "input":
            return
        for method, params in (("apply", ("x", "state", "generator")),
                               ("prepare", ("input_shape", "generator"))):
            fn = getattr(self, method, None)
            if not callable(fn):
                raise SpecTypeError(f"shift {name} has no {method}() method; an input shift "
                                    f"must define {method}(self, {', '.join(params)})")
            try:
                inspect.signature(fn).bind(*params)
            except TypeError:
                raise SpecTypeError(f"{name}.{method} must take ({', '.join(params)}); it "
                                    f"takes {inspect.signature(fn)}") from None
            except ValueError:  # no signature (a builtin): trust it
                pass

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
