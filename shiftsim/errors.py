"""Errors a user can cause.

Every error shiftsim raises for bad input is a :class:`ShiftsimError`, which is also a
``ValueError`` (or a ``TypeError`` for :class:`SpecTypeError`), so ordinary ``except ValueError``
code keeps working. The message names the offending value and what is allowed; the CLI prints it
on one line and exits non-zero.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class ShiftsimError(ValueError):
    """A user-facing error: bad input, a missing file, an unknown name."""


class SpecTypeError(ShiftsimError, TypeError):
    """A value of the wrong type was given where shiftsim expected another."""


def allowed(value: Any, what: str, choices: Iterable[Any]) -> ShiftsimError:
    """Build the standard "unknown X" error.

    >>> str(allowed("foo", "flip mode", ["permute", "other"]))
    "unknown flip mode 'foo'; allowed: 'permute', 'other'"
    """
    listed = ", ".join(repr(c) for c in choices)
    return ShiftsimError(f"unknown {what} {value!r}; allowed: {listed}")


def check_range(
    value: Any,
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    integer: bool = False,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> Any:
    """Check that ``value`` is a finite number within [low, high] (bounds optional) and return it
    (an integral value as ``int`` when ``integer``; None as None when ``optional``).

    >>> check_range(0.5, "rate", 0, 1)
    0.5
    >>> check_range(1.5, "rate", 0, 1)
    Traceback (most recent call last):
    ...
    shiftsim.errors.ShiftsimError: rate must be in [0, 1], got 1.5
    >>> check_range(0, "workers", 1, integer=True)
    Traceback (most recent call last):
    ...
    shiftsim.errors.ShiftsimError: workers must be a positive integer, got 0
    >>> check_range(None, "threads", 1, integer=True, optional=True) is None
    True
    """
    import math

    if optional and value is None:
        return None
    counting = integer and high is None and not low_open and low in (0, 1)
    if counting:  # a count or an index: said in words
        kind = "a positive integer" if low == 1 else "a non-negative integer"
    else:
        kind = "an integer" if integer else "a number"
    alt = " or None" if optional else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        integer and not float(value).is_integer()
    ):
        try:
            import numpy as np

            if isinstance(value, np.generic) and not isinstance(value, np.bool_):
                return check_range(
                    value.item(), name, low, high, integer=integer,
                    low_open=low_open, high_open=high_open, optional=optional,
                )
        except ImportError:  # pragma: no cover
            pass
        raise SpecTypeError(f"{name} must be {kind}{alt}, got {value!r}")
    if not math.isfinite(value):
        raise ShiftsimError(f"{name} must be finite, got {value!r}")
    lo_ok = low is None or (value > low if low_open else value >= low)
    hi_ok = high is None or (value < high if high_open else value <= high)
    if not (lo_ok and hi_ok):
        if counting:
            raise ShiftsimError(f"{name} must be {kind}{alt}, got {value!r}")
        lb = "(" if low_open else "["
        hb = ")" if high_open else "]"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ShiftsimError(f"{name} must be in {lb}{lo}, {hi}{hb}{alt}, got {value!r}")
    return int(value) if integer else value
