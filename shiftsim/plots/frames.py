"""The tidy frames the figures draw: trailing accuracy per run, accuracy aligned at shifts, and
means with intervals over seeds — every number from :mod:`shiftsim.metrics`."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from .. import metrics
from ..metrics._base import _column_names
from .common import _require


def smoothed_accuracy(trace: pd.DataFrame, window: int = 20, by: Sequence[str] = ("run_id",)
                      ) -> pd.Series:
    """Within-phase trailing online accuracy ā_t of every run (docs/metrics.md), as a Series
    named ``acc`` aligned with ``trace``: Σ correct / Σ n over the last ``window`` steps of the
    same phase. ``by`` names the columns that identify a run (a name or a list of names;
    absent ones ignored).
    :func:`shiftsim.metrics.trailing_accuracy_by` computes it (vectorised, no loop over runs).

    >>> tr = pd.DataFrame({"step": range(5), "phase": [0, 0, 0, 1, 1], "n": 10,
    ...                    "correct": [2, 4, 9, 1, 5]})
    >>> smoothed_accuracy(tr, window=2).tolist()
    [0.2, 0.3, 0.65, 0.1, 0.3]
    """
    _require(trace, ["step", "phase", "n", "correct"], "smoothed_accuracy")
    return pd.Series(metrics.trailing_accuracy_by(trace, window, by), index=trace.index,
                     name="acc")


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
    keys = [c for c in _column_names(run_key, "run_key") if c in traces.columns]
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
    each point (:func:`shiftsim.metrics.mean_interval_by`): columns ``by``, ``x``, ``mean``,
    ``std``, ``count``, ``low``, ``high`` (NaN bounds where a point has one row). ``by`` is a
    column name or a list of them.

    >>> d = pd.DataFrame({"opt": "a", "t": [0, 0, 0, 1], "acc": [0.1, 0.2, 0.3, 0.5]})
    >>> mean_band(d, "t", "acc", ["opt"])[["t", "mean", "count"]].values.tolist()
    [[0.0, 0.2, 3.0], [1.0, 0.5, 1.0]]
    """
    return metrics.mean_interval_by(df, y, [*_column_names(by, "by"), x], level)
