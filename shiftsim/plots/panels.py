"""Panels of a study: held-out accuracy matrices, optimizer diagnostics over the stream, and
the sensitivity of each optimizer to its tuned hyperparameter."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..errors import ShiftsimError  # noqa: E402
from ..metrics._base import _column_names  # noqa: E402
from ..metrics.names import axis_label  # noqa: E402
from .common import (  # noqa: E402
    _draw_bands,
    _facet_title,
    _facets,
    _grid,
    _hue_names,
    _layout,
    _legend,
    _no_rows,
    _numeric,
    _one_run,
    _palette,
    _require,
    _thin,
    style,
)
from .frames import mean_band  # noqa: E402


def accuracy_matrices(evals: pd.DataFrame, hue: str = "optimizer", row: str | None = None,
                      hue_order: Sequence[str] | None = None,
                      row_order: Sequence[Any] | None = None, row_label: str | None = None,
                      size: float = 1.9) -> plt.Figure:
    """The accuracy matrix R[i, j] (held-out accuracy on regime j at the end of phase i,
    docs/metrics.md), averaged over seeds: one panel per ``hue`` value (columns) and ``row``
    value (rows), from the phase-end evaluations of ``evals`` (e.g. ``results.evals``).

    >>> ev = pd.DataFrame({"optimizer": "sgdm", "run_id": "a", "step": [5, 5, 10, 10],
    ...                    "phase": [0, 0, 1, 1], "regime": [0, 1, 0, 1],
    ...                    "accuracy": [0.9, 0.1, 0.6, 0.8], "phase_end": True})
    >>> len(accuracy_matrices(ev).axes)
    2
    """
    _require(evals, ["phase", "regime", "accuracy", "phase_end", hue], "accuracy_matrices")
    end = evals[evals["phase_end"].astype(bool)].copy()
    if end.empty:
        raise ShiftsimError("accuracy_matrices needs phase-end evaluations (phase_end true)")
    end[hue] = end[hue].astype(str)
    names = _hue_names(end, hue, hue_order)
    rows = _facets(end, row, row_order, "row_order")
    with style():
        fig, axes = plt.subplots(len(rows), len(names),
                                 figsize=(size * len(names) + 1.2, size * len(rows) + 0.4),
                                 squeeze=False, layout="constrained")
        for ri, r in enumerate(rows):
            for ci, name in enumerate(names):
                ax = axes[ri, ci]
                sub = end[end[hue] == name]
                if r is not None:
                    sub = sub[sub[row] == r]
                if sub.empty:
                    ax.set_visible(False)
                    continue
                mat = sub.groupby(["phase", "regime"])["accuracy"].mean().unstack("regime")
                _matrix_panel(ax, mat, annotate=mat.shape[1] <= 6)
                title = name if r is None else f"{name}\n{_facet_title(row, r, row_label, None)}"
                ax.set_title(title, fontsize=8)
                ax.set_xlabel("evaluated on regime" if ri == len(rows) - 1 else "")
                ax.set_ylabel("after phase" if ci == 0 else "")
                ax.tick_params(axis="y", rotation=0)
        mappable = next((a.collections[0] for a in fig.axes if a.collections), None)
        if mappable is not None:
            fig.colorbar(mappable, ax=axes, shrink=0.8, label="held-out accuracy")
    return fig


def _matrix_panel(ax: plt.Axes, mat: pd.DataFrame, annotate: bool) -> None:
    """One accuracy matrix as a heatmap (rows: ``mat``'s index, top down), values on [0, 1].

    Drawn with matplotlib alone: seaborn's heatmap draws the whole figure once per call to
    check its tick labels (the robustness league's 53-panel figure: 84 s, now 1.7 s).
    """
    vals = mat.to_numpy(dtype=float)
    cmap = matplotlib.colormaps["viridis"]
    ax.pcolormesh(np.ma.masked_invalid(vals), cmap=cmap, vmin=0, vmax=1, edgecolors="white",
                  linewidth=0.5)
    n_rows, n_cols = vals.shape
    ax.set(xlim=(0, n_cols), ylim=(n_rows, 0), aspect="equal")
    ax.set_xticks(np.arange(n_cols) + 0.5, [str(c) for c in mat.columns])
    ax.set_yticks(np.arange(n_rows) + 0.5, [str(i) for i in mat.index])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if annotate:
        from seaborn.utils import relative_luminance

        # dark text on light cells: seaborn's heatmap rule
        light = relative_luminance(cmap(vals).reshape(-1, 4)).reshape(vals.shape) > 0.408
        for (i, j), v in np.ndenumerate(vals):
            if np.isfinite(v):
                ax.text(j + 0.5, i + 0.5, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color=".15" if light[i, j] else "w")


def diagnostic_columns(traces: pd.DataFrame) -> list[str]:
    """The optimizer diagnostic columns (``diag_*``) that hold at least one finite value.

    >>> diagnostic_columns(pd.DataFrame({"diag_beta": [0.9], "diag_x": [np.nan], "loss": [1]}))
    ['diag_beta']
    """
    return [c for c in traces.columns if str(c).startswith("diag_")
            and pd.to_numeric(traces[c], errors="coerce").notna().any()]


def diagnostics(traces: pd.DataFrame, hue: str = "optimizer", columns: Sequence[str] | None = None,
                window: int = 20, level: float = 0.95, palette: dict[str, Any] | None = None,
                hue_order: Sequence[str] | None = None, height: float = 2.2) -> plt.Figure:
    """Optimizer diagnostics over time (TAM damping and cosine, AM beta, MoMo step size ...):
    one panel per ``diag_*`` column, the mean over seeds (smoothed with a ``window``-step
    rolling mean) with a ``level`` band, one line per ``hue`` value that records the diagnostic,
    phase boundaries dashed. ``columns``: the numeric columns to draw (a name or a list;
    default: :func:`diagnostic_columns`).

    >>> tr = pd.DataFrame({"run_id": "a", "optimizer": "tam", "step": range(30),
    ...                    "phase": [0] * 15 + [1] * 15, "diag_damping": np.linspace(0, 1, 30)})
    >>> len(diagnostics(tr).axes)
    1
    """
    traces, single = _one_run(traces, hue)
    _require(traces, ["step", "phase", hue], "diagnostics")
    _no_rows(traces, "diagnostics", "the traces are empty")
    cols = _column_names(columns, "columns") if columns is not None \
        else diagnostic_columns(traces)
    if not cols:
        raise ShiftsimError("diagnostics: the traces have no diag_* columns (only shiftsim's own "
                            "optimizers such as tam, adamem_* and momo record them)")
    if columns is not None:
        _require(traces, cols, "diagnostics")
        for c in cols:
            _numeric(traces, c, "diagnostics")
    keys = [c for c in ("run_id",) if c in traces.columns] or [hue]
    df = traces.copy()
    df[hue] = df[hue].astype(str)
    names = _hue_names(df, hue, hue_order)
    palette = _palette(palette, names)
    starts = df.groupby("phase")["step"].min().sort_index().tolist()[1:]
    with style():
        fig, axes = plt.subplots(len(cols), 1, figsize=(7.0, height * len(cols)), squeeze=False,
                                 sharex=True, layout="constrained")
        for ax, c in zip(axes[:, 0], cols):
            d = df[df[c].notna()]
            if window > 1 and len(d):
                d = d.sort_values(keys + ["step"])
                d = d.assign(**{c: d.groupby(keys, sort=False)[c].transform(
                    lambda s: s.rolling(window, min_periods=1).mean())})
            band = _thin(mean_band(d, "step", c, [hue], level), "step")
            _draw_bands(ax, band, "step", hue, names, palette, lw=1.2)
            for s in starts:
                ax.axvline(s, color="0.3", lw=0.6, ls="--")
            ax.set_ylabel(axis_label(c))
        axes[-1, 0].set_xlabel("step")
        if not single:
            _legend(fig, axes[0, 0], hue)
    return fig


def sensitivity(curves: pd.DataFrame, metric: str = "score", hue: str = "optimizer",
                col: str = "group", palette: dict[str, Any] | None = None,
                hue_order: Sequence[str] | None = None, col_order: Sequence[Any] | None = None,
                col_wrap: int | None = 3, height: float = 3.0,
                col_title: Callable[[Any], str] | None = None) -> plt.Figure:
    """Learning-rate sensitivity: the tuning metric against the learning rate (log axis), one
    line per ``hue`` value with its interval band (``mean``, ``low``, ``high`` over the tuning
    seeds), one facet per ``col`` value; the chosen point (``chosen``) is a star, a point where
    a tuning run diverged or failed (``eligible`` False) an open circle. ``curves`` is
    ``ss.store.load(...).tuning_curves``; other hyperparameters are held at their chosen
    values. A study without a tuning stage has no curves (an empty frame): that is refused,
    saying so.

    >>> c = pd.DataFrame({"group": "s", "optimizer": "sgdm", "lr": [0.01, 0.1, 1.0],
    ...                   "mean": [0.5, 0.8, 0.2], "low": [0.4, 0.7, 0.1],
    ...                   "high": [0.6, 0.9, 0.3], "eligible": [True, True, False],
    ...                   "chosen": [False, True, False]})
    >>> len(sensitivity(c, metric="online accuracy").axes)
    1
    """
    if isinstance(curves, pd.DataFrame) and curves.empty and len(curves.columns) == 0:
        raise ShiftsimError("no tuning curves: the study has no tuning stage "
                            "(Study(..., tuning=Tuning(...)))")
    _require(curves, ["lr", "mean", hue, col], "sensitivity")
    _no_rows(curves, "sensitivity", "the tuning curves are empty")
    df = curves.copy()
    for c in ("low", "high"):
        if c not in df.columns:
            df[c] = np.nan
    df["eligible"] = df["eligible"].astype(bool) if "eligible" in df else True
    df["chosen"] = df["chosen"].astype(bool) if "chosen" in df else False
    hp = [c for c in df.columns if c not in ("lr", "mean", "low", "high", "worst", "n", "runs",
                                             "eligible", "chosen", hue, col, "model")]
    facets, names, palette = _layout(df, hue, col, col_order, hue_order, palette)
    with style():
        fig, axes = _grid(len(facets), col_wrap, 3.6, height, sharey=False)
        for ax, facet in zip(axes.flat, facets):
            sub = df if facet is None else df[df[col] == facet]
            for name in names:
                line = sub[sub[hue] == name]
                pick = line[line["chosen"]]
                for c in hp:  # other hyperparameters at their chosen values
                    if len(pick) and c in line and line[c].nunique(dropna=True) > 1:
                        line = line[line[c] == pick[c].iloc[0]]
                line = line.sort_values("lr")
                if line.empty:
                    continue
                color = palette[name]
                ax.plot(line["lr"], line["mean"], color=color, lw=1.4, marker="o", ms=3,
                        label=name)
                ax.fill_between(line["lr"], line["low"], line["high"], color=color,
                                alpha=0.18, lw=0)
                bad = line[~line["eligible"]]
                ax.scatter(bad["lr"], bad["mean"], s=40, facecolors="white",
                           edgecolors=color, zorder=4)
                best = line[line["chosen"]]
                ax.scatter(best["lr"], best["mean"], s=110, marker="*", color=color,
                           edgecolors="black", linewidths=0.5, zorder=5)
            ax.set_xscale("log")
            ax.set_xlabel("learning rate")
            title = col_title(facet) if col_title is not None and facet is not None else \
                _facet_title(col, facet, None, None)
            ax.set_title(title)
        for row in axes:
            row[0].set_ylabel(f"{metric}\n(mean over tuning seeds)")
        _legend(fig, axes.flat[0], hue)
    return fig
