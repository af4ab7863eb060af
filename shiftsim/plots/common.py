"""What every figure shares: the style, the colours, the axis labels (from
:mod:`shiftsim.metrics.names`), input checks and the faceted line layout."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..errors import ShiftsimError, SpecTypeError  # noqa: E402
from ..metrics._base import _column_names  # noqa: E402
from ..metrics.names import NAMES, format_severity  # noqa: E402

#: Okabe & Ito's colour-blind-safe palette (Wong 2011, Nature Methods 8:441), most distinct first
#: (yellow, hard to see on white, and black come last)
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
             "#000000")

#: recovery metrics: lower is better, censored runs count as +inf (docs/metrics.md)
RECOVERY_METRICS = ("recovery_steps", "recovery_samples")
#: the axis label of every named column (:data:`shiftsim.metrics.names.NAMES`, the one table)
AXIS_LABELS = {column: name.axis for column, name in NAMES.items()}


def style() -> Any:
    """The context every figure is drawn in: seaborn's white grid, readable font sizes.

    Use it for your own figures to match the report's look::

        with ss.plots.style():
            fig, ax = plt.subplots()
    """
    import contextlib

    import seaborn as sns

    stack = contextlib.ExitStack()
    stack.enter_context(sns.axes_style("whitegrid"))
    stack.enter_context(plt.rc_context({
        "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
        "legend.title_fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8,
        "svg.fonttype": "none", "figure.dpi": 100,
    }))
    return stack


def optimizer_palette(names: Sequence[str]) -> dict[str, Any]:
    """A colour-blind-safe colour per name (Okabe-Ito), in the order given: the first name
    (a report's baseline) is blue, the second orange, then green, vermillion, purple, sky
    blue, yellow, black. Pass the same palette to every figure so an optimizer keeps its
    colour throughout. Beyond eight names seaborn's ``dark`` palette follows.

    >>> pal = optimizer_palette(["sgdm", "tam", "sgdm"])
    >>> pal
    {'sgdm': '#0072B2', 'tam': '#E69F00'}
    >>> len(set(optimizer_palette([f"o{i}" for i in range(12)]).values()))
    12
    """
    colours = _colours()
    unique = list(dict.fromkeys(map(str, names)))
    return {name: colours[i % len(colours)] for i, name in enumerate(unique)}


def _colours() -> list[str]:
    """The colours :func:`optimizer_palette` hands out, in order."""
    import seaborn as sns

    return list(OKABE_ITO) + [matplotlib.colors.to_hex(c) for c in sns.color_palette("dark", 10)]


def _palette(palette: Any, names: Sequence[str]) -> dict[str, Any]:
    """The colour of every line name: ``palette`` (keys compared as strings) where it has one;
    a name it lacks gets the first default colour (:func:`optimizer_palette`'s order) that
    ``palette`` does not use. No ``palette``: :func:`optimizer_palette`."""
    if palette is None:
        return optimizer_palette(names)
    if not isinstance(palette, Mapping):
        raise SpecTypeError(f"palette must be a dict name -> colour, got {palette!r}")
    out = {str(k): v for k, v in palette.items()}
    missing = [str(n) for n in names if str(n) not in out]
    if missing:
        used = set()
        for v in out.values():
            try:
                used.add(matplotlib.colors.to_hex(v))
            except ValueError:  # not a colour: matplotlib says so when it draws
                pass
        spare = [c for c in _colours() if matplotlib.colors.to_hex(c) not in used] or _colours()
        out.update({n: spare[i % len(spare)] for i, n in enumerate(missing)})
    return out


def _no_rows(df: pd.DataFrame, what: str, why: str = "the frame is empty") -> None:
    """Refuse an empty frame: a figure of nothing would be blank, silently."""
    if len(df) == 0:
        raise ShiftsimError(f"{what}: no rows to plot ({why})")


def _numeric(df: pd.DataFrame, column: str, what: str) -> pd.Series:
    """``df[column]`` as numbers (numbers stored as objects are converted); a column of text
    such as names or statuses is refused, naming a value."""
    values = df[column]
    if pd.api.types.is_numeric_dtype(values):
        return values
    numbers = pd.to_numeric(values, errors="coerce")
    bad = values.notna() & numbers.isna()
    if bad.any():
        raise SpecTypeError(f"{what}: column {column!r} must hold numbers, got "
                            f"{values[bad].iloc[0]!r}")
    return numbers


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise ShiftsimError(f"{what} needs a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ShiftsimError(f"{what} needs columns {list(columns)}; missing {missing} "
                            f"(it has: {list(df.columns)[:20]})")


def _one_run(df: Any, hue: str) -> tuple[Any, bool]:
    """A single run's trace (e.g. ``RunResult.trace``) has no ``optimizer`` column: it is drawn
    as one line, without a legend. Only for the default ``hue`` and one run (no ``run_id``
    column, or a single one); otherwise a missing column stays an error. Returns
    (frame, single)."""
    if isinstance(df, pd.DataFrame) and hue == "optimizer" and hue not in df.columns and (
            "run_id" not in df.columns or df["run_id"].nunique() <= 1):
        return df.assign(**{hue: "run"}), True
    return df, False


def _facets(df: pd.DataFrame, col: str | None, order: Sequence[Any] | None = None,
            what: str = "col_order") -> list[Any]:
    if col is None:
        return [None]
    if order is not None:
        present = list(dict.fromkeys(df[col].dropna().tolist()))
        have = set(present)
        facets = [v for v in order if v in have]
        if not facets:
            raise _matches_nothing(what, order, col, present)
        return facets
    values = df[col].dropna().unique().tolist()
    try:
        return sorted(values)
    except TypeError:
        return values


def _grid(n: int, col_wrap: int | None, width: float, height: float, sharey: bool = True,
          sharex: bool = False) -> tuple[plt.Figure, np.ndarray]:
    ncols = n if not col_wrap else max(1, min(col_wrap, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(4.8, width * ncols), height * nrows),
                             squeeze=False, sharey=sharey, sharex=sharex, layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def _facet_title(col: str | None, facet: Any, col_label: str | None,
                 fmt: Callable[[Any], str] | None) -> str:
    if facet is None:
        return ""
    value = fmt(facet) if fmt else (format_severity(facet, col_label or col)
                                    if isinstance(facet, (int, float, np.number)) else str(facet))
    return f"{col_label or col} = {value}"


def _hue_names(df: pd.DataFrame, hue: str, order: Sequence[str] | None) -> list[str]:
    present = list(dict.fromkeys(df[hue].astype(str).tolist()))
    if order is not None:
        order = _column_names(order, "hue_order")  # one name, not its letters
        names = [str(n) for n in order if str(n) in present]
        if not names:
            raise _matches_nothing("hue_order", order, hue, present)
        return names
    return sorted(present)


def _matches_nothing(what: str, order: Sequence[Any], column: str, present: Sequence[Any]
                     ) -> ShiftsimError:
    """An order argument none of whose values is in the data: the figure would be empty."""
    have = ", ".join(repr(v) for v in sorted(present, key=str)[:20]) or "none"
    return ShiftsimError(f"{what} {list(order)!r} names no value of column {column!r}; "
                         f"present: {have}")


#: most points per line a whole-stream figure draws (a 20-step smoothed curve loses nothing
#: visible; SVG files stay small)
MAX_POINTS = 400


def _thin(band: pd.DataFrame, x: str, most: int = MAX_POINTS) -> pd.DataFrame:
    """Every k-th x value of a band (k = ceil(distinct x / most)), the last one kept."""
    xs = np.sort(band[x].unique())
    if xs.size <= most:
        return band
    keep = xs[::math.ceil(xs.size / most)]
    keep = np.union1d(keep, xs[-1:])
    return band[band[x].isin(keep)]


def _layout(df: pd.DataFrame, hue: str, col: str | None, col_order: Sequence[Any] | None,
            hue_order: Sequence[str] | None, palette: dict[str, Any] | None
            ) -> tuple[list[Any], list[str], dict[str, Any]]:
    """(facets, line names, palette) of a faceted line figure; ``df[hue]`` becomes str."""
    df[hue] = df[hue].astype(str)
    names = _hue_names(df, hue, hue_order)
    return _facets(df, col, col_order), names, _palette(palette, names)


def _draw_bands(ax: plt.Axes, band: pd.DataFrame, x: str, hue: str, names: Sequence[str],
                palette: dict[str, Any], lw: float) -> list[str]:
    """One mean line with its interval band per name (a :func:`mean_band` frame); returns the
    names drawn."""
    drawn = []
    for name in names:
        b = band[band[hue] == name]
        if b.empty:
            continue
        ax.plot(b[x], b["mean"], color=palette[name], lw=lw, label=name)
        ax.fill_between(b[x], b["low"], b["high"], color=palette[name], alpha=0.2, lw=0)
        drawn.append(name)
    return drawn


def _legend(fig: plt.Figure, ax: plt.Axes, title: str) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        for other in fig.axes:
            handles, labels = other.get_legend_handles_labels()
            if handles:
                break
    if handles:
        fig.legend(handles, labels, title=title, loc="outside right center", frameon=False)
