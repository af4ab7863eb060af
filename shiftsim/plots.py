"""Figures from tidy DataFrames (seaborn / matplotlib), for reports and notebooks.

Every function takes DataFrames as :func:`shiftsim.store.load` or :class:`~shiftsim.engine.
RunResult` give them and returns a matplotlib Figure; nothing is drawn to the screen or saved.
Colours are colour-blind safe and fixed per optimizer across figures (:func:`optimizer_palette`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats as _stats  # noqa: E402

from .errors import ShiftsimError  # noqa: E402

_REGISTRY_ORDER = ("sgd", "sgdm", "nesterov", "adam", "adamw", "tam", "adatam", "adatamw",
                   "adamem_sgd", "adamem_adamw", "momo", "momo_adam", "grams")


def optimizer_palette(names: Sequence[str]) -> dict[str, Any]:
    """A colour-blind-safe colour per name, stable across figures (and across studies for the
    registry's names, which keep their registry position).

    >>> pal = optimizer_palette(["tam", "sgdm"])
    >>> pal["sgdm"] == optimizer_palette(["sgdm"])["sgdm"]
    True
    """
    import seaborn as sns

    base = sns.color_palette("colorblind", 10) + sns.color_palette("dark", 10)
    out: dict[str, Any] = {}
    used: set[int] = set()
    for name in names:
        key = str(name).split("(")[0]
        if key in _REGISTRY_ORDER:
            idx = _REGISTRY_ORDER.index(key) % len(base)
            out[name] = base[idx]
            used.add(idx)
    free = [i for i in range(len(base)) if i not in used] or list(range(len(base)))
    for j, name in enumerate(n for n in sorted(set(map(str, names))) if n not in out):
        out[name] = base[free[j % len(free)]]
    return out


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ShiftsimError(f"{what} needs columns {list(columns)}; missing {missing}")


def smoothed_accuracy(trace: pd.DataFrame, window: int = 20, by: Sequence[str] = ("run_id",)
                      ) -> pd.Series:
    """Within-phase trailing online accuracy ā_t of every run (metrics.md), as a Series
    aligned with ``trace``. ``by`` names the columns that identify a run (absent ones ignored).
    """
    keys = [c for c in by if c in trace.columns] + ["phase"]
    grouped = trace.groupby(keys, sort=False)
    num = grouped["correct"].transform(lambda s: s.rolling(window, min_periods=1).sum())
    den = grouped["n"].transform(lambda s: s.rolling(window, min_periods=1).sum())
    return num / den


def recovery_frame(traces: pd.DataFrame, window: int = 20, before: int = 0,
                   run_key: Sequence[str] = ("run_id",)) -> pd.DataFrame:
    """Smoothed online accuracy aligned at every shift boundary.

    One row per (run, shift, step): ``shift`` (the phase k ≥ 1 entered), ``since_shift``
    (steps since its first step; negative for the last ``before`` steps of phase k−1) and
    ``acc`` (ā_t). Other columns of ``traces`` (optimizer, seed, severity ...) are kept.
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
    """Mean of ``y`` per (by, x) with a t-interval over the rows (seeds) at each point."""
    g = df.groupby(list(by) + [x], sort=True)[y]
    out = g.agg(["mean", "std", "count"]).reset_index()
    t = _stats.t.ppf(0.5 + level / 2, np.maximum(out["count"] - 1, 1))
    half = np.where(out["count"] > 1, t * out["std"] / np.sqrt(out["count"]), np.nan)
    out["low"], out["high"] = out["mean"] - half, out["mean"] + half
    return out


def recovery_curves(traces: pd.DataFrame, hue: str = "optimizer", col: str | None = None,
                    window: int = 20, before: int = 20, level: float = 0.95,
                    palette: dict[str, Any] | None = None, height: float = 3.2
                    ) -> plt.Figure:
    """Recovery curves: smoothed online accuracy vs steps since each shift, the mean over seeds
    and shifts with a ``level`` interval band, one line per ``hue`` value, one facet per ``col``
    value (e.g. severity).

    >>> import shiftsim as ss
    >>> sc = ss.label_flip_tasks(ss.data.digits(), 1.0, tasks=2, steps_per_task=40)
    >>> res = ss.run(sc, ss.models.mlp(hidden=(16,)), "sgdm")
    >>> fig = recovery_curves(res.trace.assign(optimizer="sgdm", run_id="a"))
    >>> len(fig.axes)
    1
    """
    _require(traces, ["step", "phase", "n", "correct", hue], "recovery_curves")
    frame = recovery_frame(traces, window, before)
    if frame.empty:
        raise ShiftsimError("recovery_curves needs runs with at least two phases (a shift)")
    facets = [None] if col is None else sorted(frame[col].dropna().unique().tolist())
    names = sorted(frame[hue].astype(str).unique().tolist())
    palette = palette or optimizer_palette(names)
    fig, axes = plt.subplots(1, len(facets), figsize=(max(4.5, 3.6 * len(facets)), height),
                             squeeze=False, sharey=True)
    for ax, facet in zip(axes[0], facets):
        sub = frame if facet is None else frame[frame[col] == facet]
        band = mean_band(sub.assign(**{hue: sub[hue].astype(str)}), "since_shift", "acc", [hue],
                         level)
        for name in names:
            b = band[band[hue] == name]
            if b.empty:
                continue
            ax.plot(b["since_shift"], b["mean"], color=palette[name], lw=1.6, label=name)
            ax.fill_between(b["since_shift"], b["low"], b["high"], color=palette[name],
                            alpha=0.2, lw=0)
        ax.axvline(0, color="0.4", lw=0.8, ls="--")
        ax.set_xlabel("steps since shift")
        ax.set_title(f"{col} = {facet}" if facet is not None else "after each shift", fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"online accuracy ({window}-step mean)")
    axes[0][-1].legend(title=hue, fontsize=8, title_fontsize=8, loc="lower right", frameon=True)
    fig.tight_layout()
    return fig
