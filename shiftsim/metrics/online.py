"""Online (prequential) accuracy: over the stream, per phase, and trailing within a phase —
for one run (:func:`trailing_accuracy`) or for many runs at once (:func:`trailing_accuracy_by`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import check_range
from ._base import _check_frame, _column_names, _labels_column, _ordered, _ratio, _trailing

__all__ = ["online_accuracy", "phase_online_accuracy", "trailing_accuracy",
           "trailing_accuracy_by"]


def online_accuracy(trace: pd.DataFrame, labels: str = "stream") -> float:
    """Stream online (prequential) accuracy Σ_t correct_t / Σ_t b_t.

    From Cai, Sener & Koltun 2021 ("Online Continual Learning with Natural Distribution Shifts",
    CLOC). ``labels="true"`` scores against the dataset's original labels (``correct_true``),
    which is what matters under label noise. NaN for an empty trace.

    >>> tr = pd.DataFrame({"n": [4, 4, 4], "correct": [1, 3, 2], "correct_true": [1, 3, 4]})
    >>> online_accuracy(tr)
    0.5
    >>> online_accuracy(tr, labels="true")
    0.667
    """
    col = _labels_column(labels)
    _check_frame(trace, "trace", ["n", col])
    total = float(trace["n"].sum())
    return float(trace[col].sum()) / total if total > 0 else math.nan


def phase_online_accuracy(trace: pd.DataFrame, labels: str = "stream") -> pd.Series:
    """Online accuracy restricted to each phase (Cai et al. 2021), indexed by phase.

    Only phases with rows in the trace appear.

    >>> tr = pd.DataFrame({"phase": [0, 0, 1], "n": [4, 4, 4], "correct": [1, 3, 2],
    ...                    "correct_true": [1, 3, 4]})
    >>> phase_online_accuracy(tr).tolist()
    [0.5, 0.5]
    >>> phase_online_accuracy(tr, labels="true").tolist()
    [0.5, 1.0]
    """
    col = _labels_column(labels)
    _check_frame(trace, "trace", ["phase", "n", col])
    g = trace.groupby("phase", sort=True)
    sums = g[[col, "n"]].sum()
    out = pd.Series(_ratio(sums[col].to_numpy(np.float64), sums["n"].to_numpy(np.float64)),
                    index=sums.index, name="online_acc" if labels == "stream" else
                    "online_acc_true")
    out.index.name = "phase"
    return out


def trailing_accuracy(trace: pd.DataFrame, window: int = 20, *, labels: str = "stream"
                      ) -> np.ndarray:
    """Within-phase trailing accuracy ā_t (docs/metrics.md, notation).

    ā_t = Σ_{u=max(τ_k, t−w+1)}^{t} correct_u / Σ_{same u} b_u for t in phase k: a ratio of sums
    over the last ``window`` steps, never across a phase boundary (so the first steps of a phase
    average fewer than ``window`` steps). Returned aligned with the trace's rows.

    >>> tr = pd.DataFrame({"step": range(5), "phase": [0, 0, 0, 1, 1], "n": 10,
    ...                    "correct": [2, 4, 9, 1, 5]})
    >>> trailing_accuracy(tr, window=2).tolist()
    [0.2, 0.3, 0.65, 0.1, 0.3]
    """
    col = _labels_column(labels)
    _check_frame(trace, "trace", ["step", "phase", "n", col])
    window = check_range(window, "window", 1, integer=True)
    ordered, order = _ordered(trace)
    abar = _trailing(ordered[col].to_numpy(), ordered["n"].to_numpy(),
                     ordered["phase"].to_numpy(), window)
    if order is None:
        return abar
    out = np.empty_like(abar)
    out[order] = abar
    return out


def trailing_accuracy_by(traces: pd.DataFrame, window: int = 20,
                         by: Sequence[str] = ("run_id",), *, labels: str = "stream"
                         ) -> np.ndarray:
    """:func:`trailing_accuracy` of many runs at once, aligned with the rows of ``traces``.

    ``by`` names the columns that identify a run (a name or a list of names; absent ones are
    ignored); within each run and phase the rows are taken in step order and ā_t is
    Σ correct / Σ n over the last ``window`` of them. Vectorised: one sort and one pass of
    cumulative sums, no Python loop over runs (what figures of whole studies need). Rows with
    a missing run key get NaN.

    >>> tr = pd.DataFrame({"run_id": ["a"] * 3 + ["b"] * 3, "step": [0, 1, 2] * 2,
    ...                    "phase": [0, 0, 1] * 2, "n": 10, "correct": [2, 4, 9, 6, 8, 1]})
    >>> trailing_accuracy_by(tr, window=2).tolist()
    [0.2, 0.3, 0.9, 0.6, 0.7, 0.1]
    """
    col = _labels_column(labels)
    _check_frame(traces, "traces", ["step", "phase", "n", col])
    window = check_range(window, "window", 1, integer=True)
    keys = [c for c in _column_names(by, "by") if c in traces.columns] + ["phase"]
    frame = traces[[*keys, "step"]].reset_index(drop=True)
    order = frame.sort_values([*keys, "step"], kind="stable").index.to_numpy()
    segment = frame.groupby(keys, sort=False).ngroup().to_numpy()[order]
    abar = _trailing(traces[col].to_numpy()[order], traces["n"].to_numpy()[order], segment,
                     window)
    abar[segment < 0] = np.nan  # a missing key: no run to average over
    out = np.empty(len(frame))
    out[order] = abar
    return out
