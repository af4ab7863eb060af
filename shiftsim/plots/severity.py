"""Metrics against severity: curves (recovery times as medians with censored runs, anything
else as means with intervals over seeds) and heatmaps."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..errors import ShiftsimError  # noqa: E402
from ..metrics import mean_interval, median_recovery  # noqa: E402
from ..metrics._base import _bool_array  # noqa: E402
from ..metrics.names import axis_label, format_severity  # noqa: E402
from .common import (  # noqa: E402
    RECOVERY_METRICS,
    _hue_names,
    _no_rows,
    _numeric,
    _palette,
    _require,
    style,
)


def _plotted(df: pd.DataFrame, x: str, value: str, recovery: bool, what: str,
             panel: bool) -> pd.DataFrame | None:
    """The rows a severity figure draws (a value of ``x``; a phase ≥ 1 for recovery times),
    ``value`` as numbers and ``censored`` as True/False. No such row: refused, or None for a
    ``panel`` of the caller's figure (drawn saying so: a report's panel of recovery times in
    a study without shifts)."""
    data = df[df[x].notna()]
    if recovery and "phase" in data.columns:
        data = data[data["phase"] >= 1]
    if data.empty:
        if panel:
            return None
        _no_rows(df, what)
        raise ShiftsimError(f"{what}: no rows to plot (none of the {len(df)} rows has a value "
                            f"of {x!r}" + (" and a phase >= 1)" if recovery else ")"))
    data = data.copy()
    data[value] = _numeric(data, value, what)
    if recovery:
        data["censored"] = _bool_array(data["censored"], f"{what}: column 'censored'")
    return data


def _empty_panel(ax: plt.Axes, x_label: str, y_label: str) -> plt.Figure:
    """A panel without rows to draw, saying so (never a blank panel)."""
    with style():
        ax.text(0.5, 0.5, "no values to plot", transform=ax.transAxes, ha="center",
                va="center", fontsize=9, color="0.35")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
    return ax.figure


def _recovery_cell(times: Any, censored: Any) -> tuple[float, np.ndarray, int]:
    """(median, observed values with censored as +inf, number censored) of one cell of recovery
    times; runs that never reached the shift (NaN, not censored) are left out. The median is
    :func:`shiftsim.metrics.median_recovery` (NaN when half or more are censored or no run is
    left)."""
    t = np.asarray(times, dtype=np.float64)
    c = np.asarray(censored, dtype=bool)
    vals = np.where(c, np.inf, t)[c | ~np.isnan(t)]
    med = median_recovery(t, c) if vals.size else math.nan
    return med, vals, int(np.isinf(vals).sum())


def _quartiles(vals: np.ndarray) -> tuple[float, float]:
    """25th and 75th percentiles, +inf allowed (no inf - inf warnings)."""
    if vals.size == 0:
        return (math.nan, math.nan)
    s = np.sort(vals)
    out = []
    for q in (0.25, 0.75):
        pos = q * (s.size - 1)
        lo, hi = int(math.floor(pos)), int(math.ceil(pos))
        a, b = s[lo], s[hi]
        out.append(float(a) if lo == hi or a == b else float(a + (b - a) * (pos - lo))
                   if math.isfinite(b) else math.inf)
    return out[0], out[1]


def severity_curves(df: pd.DataFrame, y: str = "recovery_steps", x: str = "severity",
                    hue: str = "optimizer", level: float = 0.95,
                    palette: dict[str, Any] | None = None, x_label: str | None = None,
                    hue_order: Sequence[str] | None = None, ax: plt.Axes | None = None,
                    height: float = 3.2, show_runs: bool = True) -> plt.Figure:
    """A metric against severity (e.g. flip rate), one line per ``hue`` value.

    * Recovery times (``recovery_steps`` / ``recovery_samples``; ``df`` = run × phase rows with a
      ``censored`` column, e.g. ``results.phases``): the median over seeds and shifts counting
      censored runs as +inf (:func:`shiftsim.metrics.median_recovery`), bars from the 25th to
      the 75th percentile, every run as a small dot, and censored runs as a triangle (bigger:
      more) in the "censored" strip at the top of the axis. A median that is undefined (half or
      more censored) is an open circle in that strip. Runs that never reached a shift (diverged
      earlier) are left out.
    * Anything else (``online_acc`` from ``results.runs``, ``heldout_acc`` ...): the mean over
      seeds with a ``level`` Student-t interval (:func:`shiftsim.metrics.mean_interval`).

    With a ``status`` column, a point whose runs include diverged ones gets a black ×.
    ``x`` may be numeric (severity) or categorical (e.g. ``"scenario"``); ``y`` must be
    numeric. A frame with no row to draw is refused (the figure would be blank); drawn into a
    given ``ax`` (a panel of a larger figure) the panel says "no values to plot" instead. A
    ``hue_order`` that names no ``hue`` value present is refused.

    >>> d = pd.DataFrame({"optimizer": ["a"] * 4 + ["b"] * 4, "severity": [0.5, 0.5, 1, 1] * 2,
    ...                   "phase": 1, "recovery_steps": [3, 5, 8, np.nan, 2, 2, 4, 6],
    ...                   "censored": [False, False, False, True] + [False] * 4})
    >>> ax = severity_curves(d, x_label="flip rate").axes[0]
    >>> ax.get_xlabel(), ax.get_yticklabels()[-1].get_text()
    ('flip rate', 'censored')
    """
    _require(df, [x, y, hue], "severity_curves")
    recovery = y in RECOVERY_METRICS
    if recovery:
        _require(df, ["censored"], "severity_curves (recovery)")
    data = _plotted(df, x, y, recovery, "severity_curves", panel=ax is not None)
    if data is None:
        return _empty_panel(ax, x_label or x, axis_label(y))
    data[hue] = data[hue].astype(str)
    names = _hue_names(data, hue, hue_order)
    palette = _palette(palette, names)
    numeric = pd.api.types.is_numeric_dtype(data[x])
    xs = sorted(data[x].unique().tolist()) if numeric else list(dict.fromkeys(data[x].tolist()))
    pos = {v: (float(v) if numeric else float(i)) for i, v in enumerate(xs)}
    span = (max(pos.values()) - min(pos.values())) if len(pos) > 1 else 1.0
    dodge = (0.03 * span if numeric else 0.1) if len(names) > 1 else 0.0
    with style():
        if ax is None:
            fig, ax = plt.subplots(figsize=(max(4.8, 0.9 * len(xs) + 3), height),
                                   layout="constrained")
        else:
            fig = ax.figure
        top = 1.0
        if recovery:
            finite = data.loc[~data["censored"], y]
            top = max(float(np.nanmax(finite)) if finite.notna().any() else 1.0, 1.0) * 1.15
        for i, name in enumerate(names):
            sub = data[data[hue] == name]
            off = (i - (len(names) - 1) / 2) * dodge
            px, py, lo, hi, open_x, flagged = [], [], [], [], [], []
            for v in xs:
                cell = sub[sub[x] == v]
                p = pos[v] + off
                if cell.empty:
                    continue
                if "status" in cell.columns and (cell["status"] == "diverged").any():
                    flagged.append(p)
                if recovery:
                    med, vals, nc = _recovery_cell(cell[y], cell["censored"])
                    if vals.size == 0:
                        continue
                    if show_runs:
                        ok = vals[np.isfinite(vals)]
                        ax.scatter(np.full(ok.size, p), ok, s=9, color=palette[name], alpha=0.35,
                                   lw=0, zorder=2)
                    if nc:
                        ax.scatter([p], [top], marker="^", s=14 + 40 * nc / vals.size,
                                   color=palette[name], alpha=0.9, zorder=3, clip_on=False)
                    if math.isnan(med):
                        open_x.append(p)
                        px.append(p)
                        py.append(np.nan)
                        lo.append(np.nan)
                        hi.append(np.nan)
                        continue
                    q25, q75 = _quartiles(vals)
                    px.append(p)
                    py.append(med)
                    lo.append(q25)
                    hi.append(min(q75, top))
                else:
                    vals = cell[y].to_numpy(np.float64)
                    m, lw_, hw_ = mean_interval(vals, level)
                    if show_runs:
                        ax.scatter(np.full(vals.size, p), vals, s=9, color=palette[name],
                                   alpha=0.35, lw=0, zorder=2)
                    px.append(p)
                    py.append(m)
                    lo.append(lw_)
                    hi.append(hw_)
            px_a, py_a = np.array(px, dtype=float), np.array(py, dtype=float)
            lo_a, hi_a = np.array(lo, dtype=float), np.array(hi, dtype=float)
            ax.plot(px_a, py_a, "-o", color=palette[name], lw=1.5, ms=4, label=name, zorder=4)
            has = ~np.isnan(lo_a) & ~np.isnan(py_a)
            if has.any():
                ax.errorbar(px_a[has], py_a[has],
                            yerr=[py_a[has] - lo_a[has], np.maximum(hi_a[has] - py_a[has], 0)],
                            fmt="none", ecolor=palette[name], elinewidth=1.1, capsize=3,
                            zorder=4)
            if open_x:
                ax.scatter(open_x, [top] * len(open_x), marker="o", s=40, facecolors="white",
                           edgecolors=palette[name], lw=1.4, zorder=5, clip_on=False)
            for p in flagged:  # points whose runs include diverged ones
                val = py_a[px_a == p]
                if val.size:  # drawn (a recovery cell without reached shifts is not)
                    yv = top if np.isnan(val[0]) else val[0]
                    ax.scatter([p], [yv], marker="x", s=30, color="black", lw=1.2, zorder=6,
                               clip_on=False)
        if recovery:
            ax.axhspan(top * 0.96, top * 1.04, color="0.85", alpha=0.6, lw=0, zorder=0)
            ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]) - 0.02 * top, top=top * 1.04)
            ticks = [t for t in ax.get_yticks() if 0 <= t < top * 0.9]
            ax.set_yticks([*ticks, top])
            ax.set_yticklabels([f"{t:g}" for t in ticks] + ["censored"])
        ax.set_xticks([pos[v] for v in xs])
        ax.set_xticklabels([format_severity(v, x_label or x) if numeric else str(v) for v in xs],
                           rotation=0 if numeric or len(xs) < 5 else 30,
                           ha="center" if numeric or len(xs) < 5 else "right")
        ax.set_xlabel(x_label or x)
        ax.set_ylabel(axis_label(y))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(title=hue, loc="best")
    return fig


def severity_heatmap(df: pd.DataFrame, value: str = "online_acc", x: str = "severity",
                     y: str = "optimizer", x_label: str | None = None,
                     hue_order: Sequence[str] | None = None, ax: plt.Axes | None = None,
                     fmt: str | None = None) -> plt.Figure:
    """An ``y`` (optimizer) × ``x`` (severity) heatmap of ``value``, annotated.

    Recovery times (``value`` in ``recovery_steps`` / ``recovery_samples``; needs ``censored``):
    the median counting censored runs as +inf, lower is better (reversed colours); a cell whose
    median is undefined (half or more censored) is hatched and says "censored". Other values:
    the mean over runs. A cell without values (e.g. every run diverged before the shift) is
    left blank and says "n/a". ``value`` must be numeric. A frame with no row to draw is
    refused, or, drawn into a given ``ax`` (a panel of a larger figure), the panel says "no
    values to plot"; a ``hue_order`` (the ``y`` values to show) that names none present is
    refused.

    >>> d = pd.DataFrame({"optimizer": ["a", "a", "b", "b"], "severity": [0.5, 1.0] * 2,
    ...                   "online_acc": [0.9, 0.7, 0.8, np.nan]})
    >>> ax = severity_heatmap(d).axes[0]
    >>> ax.get_ylabel(), [t.get_text() for t in ax.texts]
    ('optimizer', ['0.900', '0.700', '0.800', 'n/a'])
    """
    import seaborn as sns

    _require(df, [x, y, value], "severity_heatmap")
    recovery = value in RECOVERY_METRICS
    if recovery:
        _require(df, ["censored"], "severity_heatmap (recovery)")
    data = _plotted(df, x, value, recovery, "severity_heatmap", panel=ax is not None)
    if data is None:
        return _empty_panel(ax, x_label or x, y)
    data[y] = data[y].astype(str)
    rows = _hue_names(data, y, hue_order)
    numeric = pd.api.types.is_numeric_dtype(data[x])
    cols = sorted(data[x].unique().tolist()) if numeric else list(dict.fromkeys(data[x]))
    mat = np.full((len(rows), len(cols)), np.nan)
    text = np.full(mat.shape, "n/a", dtype=object)
    undefined = np.zeros(mat.shape, dtype=bool)
    for (ri, r), (ci, c) in ((a, b) for a in enumerate(rows) for b in enumerate(cols)):
        cell = data[(data[y] == r) & (data[x] == c)]
        if recovery:
            med, vals, _ = _recovery_cell(cell[value], cell["censored"])
            mat[ri, ci] = med
            undefined[ri, ci] = vals.size > 0 and math.isnan(med)
            if undefined[ri, ci]:
                text[ri, ci] = "censored"
        else:
            vals = pd.to_numeric(cell[value], errors="coerce").dropna()
            if len(vals):
                mat[ri, ci] = float(vals.mean())
        if not math.isnan(mat[ri, ci]):
            v = mat[ri, ci]
            text[ri, ci] = format(v, fmt) if fmt else (
                (f"{v:.0f}" if v == round(v) else f"{v:.1f}") if recovery else f"{v:.3f}")
    labels = [format_severity(c, x_label or x) if numeric else str(c) for c in cols]
    with style(), sns.axes_style("white"):
        if ax is None:
            fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(cols) + 2.2),
                                            max(2.0, 0.45 * len(rows) + 1.2)),
                                   layout="constrained")
        else:
            fig = ax.figure
        cmap = "viridis_r" if recovery else "viridis"
        finite = mat[~np.isnan(mat)]
        sns.heatmap(pd.DataFrame(mat, index=rows, columns=labels), ax=ax, cmap=cmap,
                    annot=False, linewidths=0.5, linecolor="white", cbar=finite.size > 0,
                    cbar_kws={"label": ("median " + axis_label(value)) if recovery else
                              f"{axis_label(value)} (mean)"},
                    vmin=float(finite.min()) if finite.size else 0.0,
                    vmax=float(finite.max()) if finite.size else 1.0)
        ax.grid(False)
        norm = ax.collections[0].norm if ax.collections else None
        colormap = plt.get_cmap(cmap)
        for ri in range(len(rows)):
            for ci in range(len(cols)):
                v = mat[ri, ci]
                if undefined[ri, ci]:
                    ax.add_patch(plt.Rectangle((ci, ri), 1, 1, facecolor="0.93", hatch="///",
                                               edgecolor="0.65", lw=0))
                dark = False
                if not math.isnan(v) and norm is not None:
                    rgb = colormap(norm(v))[:3]
                    dark = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] < 0.5
                ax.text(ci + 0.5, ri + 0.5, str(text[ri, ci]), ha="center", va="center",
                        fontsize=8, color="white" if dark else "0.15")
        ax.set_xlabel(x_label or x)
        ax.set_ylabel(y)
        ax.tick_params(axis="y", rotation=0)
    return fig
