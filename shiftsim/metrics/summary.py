"""One run summarised: :func:`summarize` (one row per phase: what ``RunResult.summary()``
returns) and :func:`run_scores` (the stream-level numbers ``RunResult.scores()`` returns).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..errors import allowed
from ._base import _check_counts, _check_frame, _check_levels, _ordered, _phase_table, _ratio
from .heldout import (
    accuracy_matrix,
    anytime_accuracy,
    average_accuracy,
    backward_transfer,
    forgetting,
)
from .online import online_accuracy
from .recovery import (
    BOOL_COLUMNS,
    RECOVERY_COLUMNS,
    RECOVERY_OPTIONS,
    _check_recovery_options,
    _recovery_frame,
    _recovery_rows,
)

__all__ = ["SCORE_COLUMNS", "SUMMARY_COLUMNS", "run_scores", "summarize"]

#: the stream-level scores of a run (:func:`run_scores`; a study's ``runs`` table has them)
SCORE_COLUMNS = ("online_acc", "online_acc_true", "acc", "bwt", "forgetting", "anytime_acc")
SUMMARY_COLUMNS = [
    "phase", "name", "start", "steps", "steps_run", "samples", "online_acc", "online_acc_true",
    "loss", *RECOVERY_COLUMNS[1:], "heldout_acc",
]


def summarize(trace: pd.DataFrame, phases: pd.DataFrame, evals: pd.DataFrame | None = None,
              **recovery_kwargs: Any) -> pd.DataFrame:
    """One row per planned phase: what ``RunResult.summary()`` returns.

    Columns: ``phase``, ``name``, ``start``, ``steps`` (planned L_k), ``steps_run`` (rows in the
    trace), ``samples`` (Σ b_t), ``online_acc``, ``online_acc_true`` (Cai et al. 2021), ``loss``
    (mean per-step loss), then the :func:`recovery` columns (``shifted``, ``chance``, ``pre``,
    ``plateau``, ``ceiling``, ``reference``, ``target``, ``dipped``, ``onset_steps``,
    ``recovery_steps``, ``recovery_samples``, ``below_steps``, ``after_ramp_steps``,
    ``onset_samples``, ``below_samples``, ``after_ramp_samples``, ``censored``,
    ``collapsed``, ``drop``, ``deficit`` and their ``_true`` twins), and
    ``heldout_acc`` (R[k, regime of k] of :func:`accuracy_matrix`; NaN without evaluations).

    Every phase of ``phases`` has a row. A phase without rows (a diverged run stopped earlier)
    has ``steps_run = samples = 0`` and NaN metrics. The first phase has no shift: its recovery
    values are NaN (``censored`` and ``dipped`` False); its ``plateau`` (end-of-phase level) and
    ``ceiling`` are filled. ``recovery_kwargs`` (``window``, ``q``, ``reference``,
    ``reference_true``, ``persistence``, ``onset``) go to :func:`recovery`.

    >>> tr = pd.DataFrame({"step": range(6), "phase": [0, 0, 0, 1, 1, 1], "n": 10,
    ...                    "correct": [8, 9, 9, 2, 9, 9], "correct_true": [8, 9, 9, 2, 9, 9],
    ...                    "loss": 0.5})
    >>> ph = pd.DataFrame({"phase": [0, 1, 2], "name": ["a", "b", "c"], "start": [0, 3, 6],
    ...                    "steps": 3, "ceiling": 1.0})
    >>> s = summarize(tr, ph, window=2, persistence=1, onset=1)
    >>> s["steps_run"].tolist(), s["online_acc"].round(3).tolist()
    ([3, 3, 0], [0.867, 0.667, nan])
    >>> s["recovery_steps"].tolist(), s["censored"].tolist()
    ([nan, 2.0, nan], [False, False, False])
    """
    unknown = sorted(set(recovery_kwargs) - set(RECOVERY_OPTIONS))
    if unknown:
        raise allowed(unknown[0], "summarize option", RECOVERY_OPTIONS)
    _check_frame(trace, "trace", ["step", "phase", "n", "correct", "correct_true", "loss"])
    _check_counts(trace)
    tab = _phase_table(phases, ["name", "start", "steps", "ceiling"])
    _check_levels(tab)
    opts = _check_recovery_options(
        recovery_kwargs.get("window", 20), recovery_kwargs.get("q", 0.9),
        recovery_kwargs.get("reference", "plateau"), recovery_kwargs.get("reference_true"),
        recovery_kwargs.get("persistence"), recovery_kwargs.get("onset", 5))
    window, q, reference, reference_true, persistence, onset = opts

    ordered, _ = _ordered(trace)
    rows = _recovery_rows(ordered, tab, window=window, q=q, reference=reference,
                          reference_true=reference_true, persistence=persistence, onset=onset)
    pk = tab.index
    rec = _recovery_frame(list(rows.values())).set_index("phase").reindex(pk)

    g = ordered.groupby("phase", sort=True)
    agg = pd.DataFrame({
        "steps_run": g.size(),
        "samples": g["n"].sum(),
        "correct": g["correct"].sum(),
        "correct_true": g["correct_true"].sum(),
        "loss": g["loss"].mean(),
    }).reindex(pk)
    steps_run = agg["steps_run"].fillna(0).to_numpy(np.int64)
    samples = agg["samples"].fillna(0).to_numpy(np.int64)
    den = samples.astype(np.float64)

    if evals is not None and "regime" in tab.columns:
        R = accuracy_matrix(evals, phases)
        col = {r: i for i, r in enumerate(R.columns)}
        heldout = R.to_numpy()[np.arange(len(pk)), [col[r] for r in tab["regime"]]]
    else:
        heldout = np.full(len(pk), np.nan)

    cols: dict[str, Any] = {
        "phase": pk.to_numpy(np.int64),
        "name": tab["name"].astype(str).to_numpy(),
        "start": tab["start"].to_numpy(np.int64),
        "steps": tab["steps"].to_numpy(np.int64),
        "steps_run": steps_run,
        "samples": samples,
        "online_acc": _ratio(agg["correct"].to_numpy(np.float64), den),
        "online_acc_true": _ratio(agg["correct_true"].to_numpy(np.float64), den),
        "loss": agg["loss"].to_numpy(np.float64),
    }
    # column by column into a dict, one frame at the end (a frame grown column by column
    # copies its blocks on every insertion: most of a summary's time before)
    shifted = [k != pk[0] and bool(tab.loc[k].get("shifted", True)) for k in pk] \
        if "shifted" in tab.columns else [k != pk[0] for k in pk]
    for c in RECOVERY_COLUMNS[1:]:
        if c == "ceiling":
            cols[c] = tab["ceiling"].to_numpy(np.float64)
        elif c == "shifted":
            cols[c] = np.asarray(shifted, dtype=bool)
        elif c in BOOL_COLUMNS:
            cols[c] = rec[c].eq(True).to_numpy(bool)
        else:
            cols[c] = rec[c].astype(np.float64).to_numpy()
    cols["heldout_acc"] = heldout.astype(np.float64)
    return pd.DataFrame(cols)[SUMMARY_COLUMNS]


def run_scores(trace: pd.DataFrame, phases: pd.DataFrame, evals: pd.DataFrame
               ) -> dict[str, float]:
    """A run's stream-level numbers (what ``RunResult.scores()`` returns and the store keeps):
    :data:`SCORE_COLUMNS` — online accuracy against the presented and the original labels,
    ACC, BWT and forgetting of the :func:`accuracy_matrix`, average :func:`anytime_accuracy` —
    and ``steps_run``.

    >>> tr = pd.DataFrame({"step": [0, 1], "phase": 0, "n": 10, "correct": [5, 7],
    ...                    "correct_true": [5, 7]})
    >>> ph = pd.DataFrame({"phase": [0], "regime": [0]})
    >>> s = run_scores(tr, ph, pd.DataFrame())
    >>> s["online_acc"], s["steps_run"], s["acc"]
    (0.6, 2.0, nan)
    """
    R = accuracy_matrix(evals, phases)
    return {
        "online_acc": online_accuracy(trace),
        "online_acc_true": online_accuracy(trace, labels="true"),
        "acc": average_accuracy(R),
        "bwt": backward_transfer(R),
        "forgetting": forgetting(R),
        "anytime_acc": anytime_accuracy(evals, phases),
        "steps_run": float(len(trace)),
    }
