"""Number formatting shared by the tables, the findings and the documents."""

from __future__ import annotations

import math
from typing import Any

DASH = "—"


def isnan(x: Any) -> bool:
    try:
        return x is None or math.isnan(float(x))
    except (TypeError, ValueError):
        return False


def num(x: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals; a dash for NaN / None.

    >>> num(0.81234), num(float("nan")), num(-0.5, 2)
    ('0.812', '—', '−0.50')
    """
    if isnan(x):
        return DASH
    return f"{float(x):.{digits}f}".replace("-", "−")


def signed(x: Any, digits: int = 3) -> str:
    """A difference with an explicit sign.

    >>> signed(0.0213), signed(-4.0, 0)
    ('+0.021', '−4')
    """
    if isnan(x):
        return DASH
    return f"{float(x):+.{digits}f}".replace("-", "−")


def interval(mean: Any, low: Any, high: Any, digits: int = 3, sign: bool = False) -> str:
    """``mean [low, high]``, or the mean alone when the interval is undefined (one seed).

    >>> interval(0.8, 0.75, 0.85), interval(0.8, float("nan"), float("nan"))
    ('0.800 [0.750, 0.850]', '0.800')
    """
    f = signed if sign else num
    if isnan(mean):
        return DASH
    if isnan(low) or isnan(high):
        return f(mean, digits)
    return f"{f(mean, digits)} [{num(low, digits)}, {num(high, digits)}]"


def steps(x: Any) -> str:
    """A recovery time in whole steps (or samples).

    >>> steps(35.0), steps(35.5), steps(float("nan"))
    ('35', '35.5', '—')
    """
    if isnan(x):
        return DASH
    v = float(x)
    if math.isinf(v):
        return "∞"
    return f"{v:.0f}" if v == round(v) else f"{v:.1f}"


def percent(x: Any) -> str:
    """>>> percent(0.25)
    '25 %'
    """
    if isnan(x):
        return DASH
    return f"{100 * float(x):.0f} %"


def plural(n: int, word: str, many: str | None = None) -> str:
    """>>> plural(1, "seed"), plural(3, "seed")
    ('1 seed', '3 seeds')
    """
    return f"{n} {word if n == 1 else (many or word + 's')}"
