"""Figures from tidy DataFrames (seaborn / matplotlib), for reports and notebooks.

Every function takes DataFrames as :func:`shiftsim.store.load` gives them (``results.runs``,
``results.phases``, ``results.evals``, ``results.traces()``) or as a
:class:`~shiftsim.engine.RunResult` gives them with a few label columns added, and returns a
matplotlib Figure; nothing is drawn to the screen or saved. Colours are colour-blind safe and
fixed per optimizer across figures (:func:`optimizer_palette`); pass the same ``palette`` to every
figure of a report to keep them consistent.

Intervals are Student-t intervals over seeds (:func:`mean_band`,
:func:`shiftsim.metrics.mean_interval`), never bootstraps over thousands of points, so a figure of
a 100-run study draws in about a second.

>>> import shiftsim as ss
>>> sc = ss.label_flip_tasks(ss.data.digits(), 1.0, tasks=2, steps_per_task=40)
>>> tr = pd.concat([ss.run(sc, ss.models.mlp(hidden=(16,)), o).trace.assign(optimizer=o,
...                 run_id=o) for o in ("sgdm", "tam")])
>>> fig = recovery_curves(tr)          # one panel: both optimizers after the shift
>>> fig2 = stream_accuracy(tr)         # the whole stream, phases shaded
>>> len(fig.axes), len(fig2.axes)
(1, 1)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats as _stats  # noqa: E402

from .errors import ShiftsimError  # noqa: E402

__all__ = [
    "optimizer_palette", "smoothed_accuracy", "recovery_frame", "mean_band", "recovery_curves",
    "stream_accuracy", "run_accuracy", "severity_curves", "severity_heatmap", "accuracy_matrices",
    "diagnostics", "diagnostic_columns", "format_severity", "style", "sensitivity",
]

#: Okabe & Ito's colour-blind-safe palette (Wong 2011, Nature Methods 8:441), most distinct first
#: (yellow, hard to see on white, and black come last)
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
             "#000000")

#: recovery metrics: lower is better, censored runs count as +inf (docs/metrics.md)
RECOVERY_METRICS = ("recovery_steps", "recovery_samples")

#: readable axis labels (with units) for the columns the report plots
AXIS_LABELS = {
    "online_acc": "online accuracy",
    "online_acc_true": "online accuracy (original labels)",
    "recovery_steps": "recovery time (steps)",
    "recovery_samples": "recovery time (samples)",
    "drop": "drop depth (accuracy)",
    "deficit": "recovery deficit (accuracy)",
    "heldout_acc": "held-out accuracy",
    "acc": "ACC (held-out accuracy)",
    "bwt": "BWT (held-out accuracy)",
    "forgetting": "forgetting (held-out accuracy)",
    "diag_damping": "TAM damping (1 + cos)/2",
    "diag_cosine": "TAM cosine(momentum, gradient)",
    "diag_beta": "AM momentum beta",
    "diag_step_size": "MoMo step size",
    "diag_fstar": "MoMo f* estimate",
}


def _label(column: str) -> str:
    if column in AXIS_LABELS:
        return AXIS_LABELS[column]
    if column.startswith("diag_"):
        return column[5:].replace("_", " ")
    return column.replace("_", " ")


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
    import seaborn as sns

    colours = list(OKABE_ITO) + [matplotlib.colors.to_hex(c)
                                 for c in sns.color_palette("dark", 10)]
    unique = list(dict.fromkeys(map(str, names)))
    return {name: colours[i % len(colours)] for i, name in enumerate(unique)}


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


def format_severity(value: Any, name: str | None = None) -> str:
    """A severity value as a short label: rates in percent when ``name`` says it is a rate or
    probability, otherwise the number in its shortest form.

    >>> format_severity(0.4, "flip rate"), format_severity(45.0, "angle"), format_severity(2.0)
    ('40 %', '45', '2')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (int, float, np.integer, np.floating)):
        v = float(value)
        if name and re.search(r"rate|fraction|prob|percent", name, re.I) and 0 <= v <= 1:
            return f"{100 * v:g} %"
        return f"{v:g}"
    return str(value)


# ----------------------------------------------------------------------------------------------
# data helpers


def _run_keys(df: pd.DataFrame, by: Sequence[str]) -> list[str]:
    return [c for c in by if c in df.columns]


def smoothed_accuracy(trace: pd.DataFrame, window: int = 20, by: Sequence[str] = ("run_id",)
                      ) -> pd.Series:
    """Within-phase trailing online accuracy ā_t of every run (docs/metrics.md), as a Series
    aligned with ``trace``: Σ correct / Σ n over the last ``window`` steps of the same phase.
    ``by`` names the columns that identify a run (absent ones ignored). Vectorised: one grouped
    cumulative sum, no Python loop over runs; equals :func:`shiftsim.metrics.trailing_accuracy`.

    >>> tr = pd.DataFrame({"step": range(5), "phase": [0, 0, 0, 1, 1], "n": 10,
    ...                    "correct": [2, 4, 9, 1, 5]})
    >>> smoothed_accuracy(tr, window=2).tolist()
    [0.2, 0.3, 0.65, 0.1, 0.3]
    """
    _require(trace, ["step", "phase", "n", "correct"], "smoothed_accuracy")
    keys = _run_keys(trace, by) + ["phase"]
    df = trace[keys + ["step", "n", "correct"]].copy()
    df["_row"] = np.arange(len(df))
    df = df.sort_values(keys + ["step"], kind="stable")
    g = df.groupby(keys, sort=False)
    c = g["correct"].cumsum().astype(np.float64)
    b = g["n"].cumsum().astype(np.float64)
    df["_c"], df["_b"] = c, b
    g = df.groupby(keys, sort=False)
    c_old = g["_c"].shift(window, fill_value=0.0)
    b_old = g["_b"].shift(window, fill_value=0.0)
    num = (c - c_old).to_numpy()
    den = (b - b_old).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    out = np.empty(len(df))
    out[df["_row"].to_numpy()] = acc
    return pd.Series(out, index=trace.index, name="acc")


def recovery_frame(traces: pd.DataFrame, window: int = 20, before: int = 0,
                   run_key: Sequence[str] = ("run_id",)) -> pd.DataFrame:
    """Smoothed online accuracy aligned at every shift boundary.

    One row per (run, shift, step): ``shift`` (the phase k ≥ 1 entered), ``since_shift``
    (steps since its first step; negative for the last ``before`` steps of phase k−1) and
    ``acc`` (ā_t). Other columns of ``traces`` (optimizer, seed, severity ...) are kept.

    >>> tr = pd.DataFrame({"run_id": "a", "step": range(6), "phase": [0, 0, 0, 1, 1, 1],
    ...                    "n": 10, "correct": [5, 6, 7, 1, 2, 3]})
    >>> f = recovery_frame(tr, window=1, before=1)
    >>> f["since_shift"].tolist(), f["acc"].tolist()
    ([-1, 0, 1, 2], [0.7, 0.1, 0.2, 0.3])
    """
    _require(traces, ["step", "phase", "n", "correct"], "recovery_frame")
    keys = [c for c in run_key if c in traces.columns]
    df = traces.copy()
    df["acc"] = smoothed_accuracy(df, window, keys)
    starts = df.groupby(keys + ["phase"], sort=False)["step"].transform("min")
    df["_start"] = starts
    after = df[df["phase"] >= 1].copy()
    after["shift"] = after["phase"]
    after["since_shift"] = after["step"] - after["_start"]
    parts = [after]
    if before > 0:
        nxt = df[df["phase"] >= 1].groupby(keys + ["phase"], sort=False)["step"].min()
        nxt = nxt.rename("_next").reset_index()
        nxt["phase"] = nxt["phase"] - 1
        prev = df.merge(nxt, on=keys + ["phase"], how="inner")
        prev = prev[prev["step"] >= prev["_next"] - before].copy()
        prev["shift"] = prev["phase"] + 1
        prev["since_shift"] = prev["step"] - prev["_next"]
        parts.append(prev.drop(columns="_next"))
    out = pd.concat(parts, ignore_index=True).drop(columns="_start")
    return out.sort_values(keys + ["shift", "since_shift"], kind="stable").reset_index(drop=True)


def mean_band(df: pd.DataFrame, x: str, y: str, by: Sequence[str], level: float = 0.95
              ) -> pd.DataFrame:
    """Mean of ``y`` per (by, x) with a Student-t ``level`` interval over the rows (seeds) at
    each point: columns ``by``, ``x``, ``mean``, ``std``, ``count``, ``low``, ``high`` (NaN
    bounds where a point has one row).

    >>> d = pd.DataFrame({"opt": "a", "t": [0, 0, 0, 1], "acc": [0.1, 0.2, 0.3, 0.5]})
    >>> mean_band(d, "t", "acc", ["opt"])[["t", "mean", "count"]].values.tolist()
    [[0.0, 0.2, 3.0], [1.0, 0.5, 1.0]]
    """
    g = df.groupby(list(by) + [x], sort=True)[y]
    out = g.agg(["mean", "std", "count"]).reset_index()
    t = _stats.t.ppf(0.5 + level / 2, np.maximum(out["count"] - 1, 1))
    half = np.where(out["count"] > 1, t * out["std"] / np.sqrt(out["count"]), np.nan)
    out["low"], out["high"] = out["mean"] - half, out["mean"] + half
    return out


def _facets(df: pd.DataFrame, col: str | None, order: Sequence[Any] | None = None) -> list[Any]:
    if col is None:
        return [None]
    if order is not None:
        present = set(df[col].dropna().tolist())
        return [v for v in order if v in present]
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
        return [str(n) for n in order if str(n) in present]
    return sorted(present)


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
    return _facets(df, col, col_order), names, palette or optimizer_palette(names)


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


# ----------------------------------------------------------------------------------------------
# figures


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
    from .metrics import median_recovery

    traces, single = _one_run(traces, hue)
    if single and recovery is not None:
        recovery, _ = _one_run(recovery, hue)
    _require(traces, ["step", "phase", "n", "correct", hue], "recovery_curves")
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


def _recovery_cell(times: Any, censored: Any) -> tuple[float, np.ndarray, int]:
    """(median, observed values with censored as +inf, number censored) of one cell of recovery
    times; runs that never reached the shift (NaN, not censored) are left out. The median is
    :func:`shiftsim.metrics.median_recovery` (NaN when half or more are censored or no run is
    left)."""
    from .metrics import median_recovery

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
    ``x`` may be numeric (severity) or categorical (e.g. ``"scenario"``).

    >>> d = pd.DataFrame({"optimizer": ["a"] * 4 + ["b"] * 4, "severity": [0.5, 0.5, 1, 1] * 2,
    ...                   "phase": 1, "recovery_steps": [3, 5, 8, np.nan, 2, 2, 4, 6],
    ...                   "censored": [False, False, False, True] + [False] * 4})
    >>> ax = severity_curves(d, x_label="flip rate").axes[0]
    >>> ax.get_xlabel(), ax.get_yticklabels()[-1].get_text()
    ('flip rate', 'censored')
    """
    from .metrics import mean_interval

    _require(df, [x, y, hue], "severity_curves")
    recovery = y in RECOVERY_METRICS
    if recovery:
        _require(df, ["censored"], "severity_curves (recovery)")
        if "phase" in df.columns:
            df = df[df["phase"] >= 1]
    data = df[df[x].notna()].copy()
    data[hue] = data[hue].astype(str)
    names = _hue_names(data, hue, hue_order)
    palette = palette or optimizer_palette(names)
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
            finite = data.loc[~data["censored"].astype(bool), y]
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
        ax.set_ylabel(_label(y))
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
    left blank and says "n/a".

    >>> d = pd.DataFrame({"optimizer": ["a", "a", "b", "b"], "severity": [0.5, 1.0] * 2,
    ...                   "online_acc": [0.9, 0.7, 0.8, np.nan]})
    >>> ax = severity_heatmap(d).axes[0]
    >>> ax.get_ylabel(), [t.get_text() for t in ax.texts]
    ('optimizer', ['0.900', '0.700', '0.800', 'n/a'])
    """
    import seaborn as sns

    _require(df, [x, y, value], "severity_heatmap")
    recovery = value in RECOVERY_METRICS
    data = df[df[x].notna()].copy()
    if recovery:
        _require(df, ["censored"], "severity_heatmap (recovery)")
        if "phase" in data.columns:
            data = data[data["phase"] >= 1]
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
            med, vals, _ = _recovery_cell(cell[value], cell["censored"].astype(bool))
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
                    cbar_kws={"label": ("median " + _label(value)) if recovery else
                              f"{_label(value)} (mean)"},
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
    import seaborn as sns

    _require(evals, ["phase", "regime", "accuracy", "phase_end", hue], "accuracy_matrices")
    end = evals[evals["phase_end"].astype(bool)].copy()
    if end.empty:
        raise ShiftsimError("accuracy_matrices needs phase-end evaluations (phase_end true)")
    end[hue] = end[hue].astype(str)
    names = _hue_names(end, hue, hue_order)
    rows = _facets(end, row, row_order)
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
                sns.heatmap(mat, ax=ax, vmin=0, vmax=1, cmap="viridis", annot=mat.shape[1] <= 6,
                            fmt=".2f", cbar=False, square=True, linewidths=0.5,
                            linecolor="white", annot_kws={"fontsize": 7})
                title = name if r is None else f"{name}\n{_facet_title(row, r, row_label, None)}"
                ax.set_title(title, fontsize=8)
                ax.set_xlabel("evaluated on regime" if ri == len(rows) - 1 else "")
                ax.set_ylabel("after phase" if ci == 0 else "")
                ax.tick_params(axis="y", rotation=0)
        mappable = next((a.collections[0] for a in fig.axes if a.collections), None)
        if mappable is not None:
            fig.colorbar(mappable, ax=axes, shrink=0.8, label="held-out accuracy")
    return fig


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
    phase boundaries dashed.

    >>> tr = pd.DataFrame({"run_id": "a", "optimizer": "tam", "step": range(30),
    ...                    "phase": [0] * 15 + [1] * 15, "diag_damping": np.linspace(0, 1, 30)})
    >>> len(diagnostics(tr).axes)
    1
    """
    traces, single = _one_run(traces, hue)
    _require(traces, ["step", "phase", hue], "diagnostics")
    cols = list(columns) if columns is not None else diagnostic_columns(traces)
    if not cols:
        raise ShiftsimError("diagnostics: the traces have no diag_* columns (only shiftsim's own "
                            "optimizers such as tam, adamem_* and momo record them)")
    keys = [c for c in ("run_id",) if c in traces.columns] or [hue]
    df = traces.copy()
    df[hue] = df[hue].astype(str)
    names = _hue_names(df, hue, hue_order)
    palette = palette or optimizer_palette(names)
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
            ax.set_ylabel(_label(c))
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
    values.

    >>> c = pd.DataFrame({"group": "s", "optimizer": "sgdm", "lr": [0.01, 0.1, 1.0],
    ...                   "mean": [0.5, 0.8, 0.2], "low": [0.4, 0.7, 0.1],
    ...                   "high": [0.6, 0.9, 0.3], "eligible": [True, True, False],
    ...                   "chosen": [False, True, False]})
    >>> len(sensitivity(c, metric="online accuracy").axes)
    1
    """
    _require(curves, ["lr", "mean", hue, col], "sensitivity")
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
