"""Accuracy over the stream: recovery curves aligned at each shift, the whole stream with its
phases shaded, and one run at a glance."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..errors import ShiftsimError, SpecTypeError  # noqa: E402
from ..metrics import median_recovery  # noqa: E402
from .common import (  # noqa: E402
    OKABE_ITO,
    _draw_bands,
    _facet_title,
    _grid,
    _layout,
    _legend,
    _no_rows,
    _one_run,
    _require,
    _thin,
    style,
)
from .frames import mean_band, recovery_frame, smoothed_accuracy  # noqa: E402


def recovery_curves(traces: pd.DataFrame, hue: str = "optimizer", col: str | None = None,
                    window: int = 20, before: int = 20, level: float = 0.95,
                    palette: dict[str, Any] | None = None, height: float = 3.0,
                    col_wrap: int | None = 4, col_label: str | None = None,
                    hue_order: Sequence[str] | None = None,
                    col_order: Sequence[Any] | None = None,
                    recovery: pd.DataFrame | None = None,
                    col_title: Callable[[Any], str] | None = None,
                    shifted: pd.DataFrame | None = None) -> plt.Figure:
    """Recovery curves: smoothed online accuracy vs steps since each shift, the mean over seeds
    and shifts with a ``level`` Student-t interval band, one line per ``hue`` value, one facet per
    ``col`` value (e.g. ``"severity"``, or ``"shift"``: one facet per phase k ≥ 1 entered, for
    scenarios whose shifts differ; facets wrap after ``col_wrap``). ``col_title`` makes a
    facet's title from its value (default ``"<col_label> = <value>"``).

    ``traces``: per-step rows with ``step``, ``phase``, ``n``, ``correct``, the ``hue`` column
    and a run identifier (``run_id``), e.g. ``results.traces()``, or one run's trace
    (``RunResult.trace``: no ``hue`` column, one line, no legend). ``recovery``: optional
    rows with ``recovery_steps`` and ``censored`` (one per run, or run × phase rows such as
    ``results.phases``); when given, the median recovery time of each line (censored counted as
    +inf, docs/metrics.md) is marked with a dotted vertical line. ``shifted``: optional
    ``run_id``, ``phase`` rows of the phases that are shifts; other phases (a flip rate of 0)
    are left out of the curves.

    >>> import shiftsim as ss
    >>> sc = ss.label_flip_tasks(ss.data.digits(), 1.0, tasks=2, steps_per_task=40)
    >>> res = ss.run(sc, ss.models.mlp(hidden=(16,)), "sgdm")
    >>> fig = recovery_curves(res.trace.assign(optimizer="sgdm", run_id="a"))
    >>> len(fig.axes)
    1
    """
    traces, single = _one_run(traces, hue)
    if single and recovery is not None:
        recovery, _ = _one_run(recovery, hue)
    _require(traces, ["step", "phase", "n", "correct", hue], "recovery_curves")
    _no_rows(traces, "recovery_curves", "the traces are empty")
    if col is not None and col != "shift":
        _require(traces, [col], "recovery_curves")
    keys = [c for c in ("run_id",) if c in traces.columns] or [hue]
    frame = recovery_frame(traces, window, before, run_key=keys)
    if shifted is not None and "run_id" in frame.columns:
        keep = pd.MultiIndex.from_frame(shifted[["run_id", "phase"]].rename(
            columns={"phase": "shift"}))
        frame = frame[pd.MultiIndex.from_frame(frame[["run_id", "shift"]]).isin(keep)]
    if frame.empty:
        raise ShiftsimError("recovery_curves needs runs with at least two phases (a shift)")
    facets, names, palette = _layout(frame, hue, col, col_order, hue_order, palette)
    with style():
        fig, axes = _grid(len(facets), col_wrap, 3.4, height)
        for ax, facet in zip(axes.flat, facets):
            sub = frame if facet is None else frame[frame[col] == facet]
            band = mean_band(sub, "since_shift", "acc", [hue], level)
            for name in _draw_bands(ax, band, "since_shift", hue, names, palette, lw=1.6):
                if recovery is not None and {"recovery_steps", "censored", hue} <= set(
                        recovery.columns):
                    rec = recovery[recovery[hue].astype(str) == name]
                    if "phase" in rec.columns:
                        rec = rec[rec["phase"] >= 1]
                    if facet is not None and col in rec.columns:
                        rec = rec[rec[col] == facet]
                    if len(rec):
                        med = median_recovery(rec["recovery_steps"], rec["censored"])
                        if not math.isnan(med):
                            ax.axvline(med, color=palette[name], lw=1.0, ls=":")
            ax.axvline(0, color="0.3", lw=0.8, ls="--")
            ax.set_xlabel("steps since shift")
            title = col_title(facet) if col_title is not None and facet is not None else \
                _facet_title(col, facet, col_label, None)
            ax.set_title(title or "after each shift")
            ax.set_ylim(-0.02, 1.02)
        for row in axes:
            row[0].set_ylabel(f"online accuracy\n({window}-step trailing mean)")
        if not single:
            _legend(fig, axes.flat[0], hue)
    return fig


def stream_accuracy(traces: pd.DataFrame, phases: pd.DataFrame | None = None,
                    hue: str = "optimizer", col: str | None = None, window: int = 20,
                    level: float = 0.95, palette: dict[str, Any] | None = None,
                    height: float = 2.6, col_wrap: int | None = 2,
                    col_label: str | None = None, hue_order: Sequence[str] | None = None,
                    col_order: Sequence[Any] | None = None) -> plt.Figure:
    """Whole-stream smoothed online accuracy vs step, mean over seeds with a ``level`` band, one
    line per ``hue`` value, phases shaded and named, one facet per ``col`` value.

    ``traces``: per-step rows of one run or many (``results.traces()``); without a ``hue``
    column (one run's ``RunResult.trace``) it is one line and no legend.
    ``phases``: optional phase plan rows (``phase``, ``start``, ``steps``, ``name``; e.g.
    ``results.phases``, which may repeat them per run, or ``RunResult.phases``) for the shading;
    without it the phases are read off the traces. A run whose trace stops before the end of
    the stream (it diverged) gets a × where it stopped.

    >>> tr = pd.DataFrame({"run_id": "a", "optimizer": "sgdm", "step": range(40),
    ...                    "phase": [0] * 20 + [1] * 20, "n": 10, "correct": range(40)})
    >>> len(stream_accuracy(tr, window=5).axes)
    1
    """
    traces, single = _one_run(traces, hue)
    _require(traces, ["step", "phase", "n", "correct", hue], "stream_accuracy")
    _no_rows(traces, "stream_accuracy", "the traces are empty")
    keys = [c for c in ("run_id",) if c in traces.columns] or [hue]
    df = traces.copy()
    df["acc"] = smoothed_accuracy(df, window, keys)
    facets, names, palette = _layout(df, hue, col, col_order, hue_order, palette)
    with style():
        fig, axes = _grid(len(facets), col_wrap, 5.0, height)
        for ax, facet in zip(axes.flat, facets):
            sub = df if facet is None else df[df[col] == facet]
            plan = _phase_plan(sub, phases, col, facet)
            for i, row in enumerate(plan.itertuples()):
                if i % 2 == 1:
                    ax.axvspan(row.start, row.start + row.steps, color="0.5", alpha=0.12, lw=0)
                if i > 0:
                    ax.axvline(row.start, color="0.3", lw=0.6, ls="--")
                ax.text(row.start + 0.01 * max(1, plan["end"].max()), 1.09, str(row.name),
                        fontsize=7, va="top", ha="left", color="0.25", clip_on=True)
            band = _thin(mean_band(sub, "step", "acc", [hue], level), "step")
            _draw_bands(ax, band, "step", hue, names, palette, lw=1.1)
            # runs that stop early (diverged): a × where each one stopped
            last = sub.loc[sub.groupby(keys, sort=False)["step"].idxmax()]
            stopped = last[last["step"] < max(int(plan["end"].max()) - 1, int(sub["step"].max()))]
            stopped = stopped[stopped[hue].isin(names)]  # the lines drawn (``hue_order``)
            for st, acc, name in zip(stopped["step"], stopped["acc"], stopped[hue]):
                ax.scatter([st], [0.0 if math.isnan(acc) else acc], marker="x", s=28, lw=1.3,
                           color=palette[name], zorder=5, clip_on=False)
            ax.set_ylim(-0.02, 1.1)
            ax.set_xlabel("step")
            ax.set_title(_facet_title(col, facet, col_label, None))
        for row in axes:
            row[0].set_ylabel(f"online accuracy\n({window}-step trailing mean)")
        if not single:
            _legend(fig, axes.flat[0], hue)
    return fig


def run_accuracy(result: Any, window: int = 20, summary: pd.DataFrame | None = None,
                 height: float = 3.0, color: str = OKABE_ITO[0]) -> plt.Figure:
    """One run at a glance (what ``RunResult.plot()`` draws): its smoothed online accuracy over
    the whole stream, phases shaded and named, and for every shift its recovery from the run's
    summary: the recovery target as a dashed segment over the phase, a dot where the trailing
    accuracy is back at the target to stay (``recovery_steps`` after the shift), "not
    recovered" when it never is (censored). Where the summary has them (recovery version 2),
    the onset of the dip (``onset_steps``) is a small down-triangle, a shift that did not hurt
    (``dipped`` false) says "no dip", and a learner that ended the phase at chance
    (``collapsed``) says so.

    ``result``: a :class:`~shiftsim.engine.RunResult`; ``summary``: its ``summary()`` when
    already computed (e.g. with other recovery options).

    >>> import shiftsim as ss
    >>> sc = ss.label_flip_tasks(ss.data.digits(), 1.0, tasks=2, steps_per_task=60)
    >>> fig = run_accuracy(ss.run(sc, ss.models.mlp(hidden=(16,)), "sgdm"))
    >>> fig.axes[0].get_title(), fig.axes[0].get_xlabel()
    ('flip-permute-1, sgdm, seed 0', 'step')
    """
    if isinstance(result, pd.DataFrame) or not all(
            hasattr(result, a) for a in ("trace", "phases", "summary")):
        raise SpecTypeError(f"run_accuracy needs a RunResult (what ss.run returns), got "
                            f"{type(result).__name__}; for traces in a DataFrame use "
                            "plots.stream_accuracy")
    trace, phases = result.trace, result.phases
    if summary is None:
        summary = result.summary(window=window)
    _require(summary, ["phase", "start", "recovery_steps", "censored"], "run_accuracy")
    fig = stream_accuracy(trace, phases, window=window, height=height,
                          palette={"run": color}, col_wrap=None)
    ax = fig.axes[0]
    info = getattr(result, "info", {}) or {}
    scen = (info.get("scenario") or {}).get("name")
    opt = ((info.get("learner") or {}).get("optimizer") or {}).get("name")
    ax.set_title(", ".join(str(p) for p in (scen, opt, f"seed {info['seed']}"
                                            if "seed" in info else None) if p))
    ends = dict(zip(phases["phase"], phases["start"] + phases["steps"])) \
        if {"phase", "start", "steps"} <= set(phases.columns) else {}
    stop = len(trace)
    handles = {}
    with style():
        for row in summary[summary["phase"] >= 1].to_dict("records"):
            start = int(row["start"])
            if start >= stop:
                continue  # the run stopped (diverged) before this shift
            end = int(ends.get(row["phase"], stop))
            target = row.get("target", math.nan)
            dipped = row.get("dipped", True)
            label_y = 0.04
            if target is not None and np.isfinite(target):
                h = ax.hlines(target, start, min(end, stop), colors="0.35", lw=0.9, ls="--",
                              zorder=3)
                handles.setdefault("recovery target", h)
            onset = row.get("onset_steps", math.nan)
            if onset is not None and np.isfinite(onset) and dipped is not False:
                y = target if np.isfinite(target) else 0.5
                (h,) = ax.plot([start + onset], [y], marker="v", ms=5, color="0.25", lw=0,
                               zorder=5)
                handles.setdefault("onset of the dip", h)
            rec = row.get("recovery_steps", math.nan)
            if dipped is False:
                ax.text(start + 2, label_y, "no dip", fontsize=7, color="0.25", va="bottom")
            elif bool(row.get("censored")) or rec is None or not np.isfinite(rec):
                what = "collapsed, not recovered" if bool(row.get("collapsed")) else \
                    "not recovered"
                ax.text(start + 2, label_y, what, fontsize=7, color=OKABE_ITO[3], va="bottom")
            else:
                y = target if np.isfinite(target) else 0.5
                (h,) = ax.plot([start + rec], [y], marker="o", ms=5, color=OKABE_ITO[2],
                               lw=0, zorder=6)
                handles.setdefault("recovered", h)
                ax.text(start + rec, y - 0.06, f"{rec:g} steps", fontsize=7,
                        color=OKABE_ITO[2], ha="left", va="top")
        if handles:
            ax.legend(list(handles.values()), list(handles), loc="lower right", fontsize=7,
                      frameon=True, framealpha=0.85)
    return fig


def _phase_plan(traces: pd.DataFrame, phases: pd.DataFrame | None, col: str | None,
                facet: Any) -> pd.DataFrame:
    """phase, start, steps, end, name for the shading (from ``phases`` or the traces)."""
    if phases is not None and {"phase", "start", "steps"} <= set(phases.columns):
        p = phases
        if col is not None and facet is not None and col in p.columns:
            p = p[p[col] == facet]
        p = p.drop_duplicates("phase").sort_values("phase")
        out = pd.DataFrame({"phase": p["phase"].to_numpy(), "start": p["start"].to_numpy(),
                            "steps": p["steps"].to_numpy(),
                            "name": (p["name"] if "name" in p.columns else p["phase"]).astype(
                                str).to_numpy()})
    else:
        g = traces.groupby("phase")["step"]
        out = pd.DataFrame({"start": g.min(), "steps": g.max() - g.min() + 1}).reset_index()
        out["name"] = "phase " + out["phase"].astype(str)
    out["end"] = out["start"] + out["steps"]
    return out.reset_index(drop=True)
