"""Held-out evaluations: the accuracy matrix R and ACC, BWT and forgetting over it, the highest
ACC a single classifier can reach, the stability gap (min-ACC, WC-ACC) and anytime accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ..errors import ShiftsimError, SpecTypeError
from ._base import _check_known, _float_array, _has_rows, _phase_table

__all__ = ["accuracy_matrix", "anytime_accuracy", "average_accuracy", "backward_transfer",
           "forgetting", "max_average_accuracy", "min_accuracy", "worst_case_accuracy"]


def accuracy_matrix(evals: pd.DataFrame, phases: pd.DataFrame) -> pd.DataFrame:
    """R[i, j]: held-out accuracy on the distinct regime j at the end of phase i.

    Built from the phase-end evaluations (``phase_end`` true; each covers every regime).
    K × J: index ``after_phase`` i (every phase), columns ``regime`` j (each distinct regime
    once, in the order of first appearance: a phase that repeats a regime shares its column, so
    no regime counts twice). NaN where an evaluation is missing (a diverged run, evaluations
    switched off). Repeated rows for one (phase, regime) are averaged. ``R.attrs`` records the
    layout that :func:`backward_transfer` and :func:`forgetting` need: ``first_end`` (per column,
    the row of its regime's first phase: "R[j, j]") and ``final`` (the column of the last
    phase's regime).

    >>> ev = pd.DataFrame({"step": [5, 5, 10, 10, 15, 15], "phase": [0, 0, 1, 1, 2, 2],
    ...                    "regime": [0, 1, 0, 1, 0, 1],
    ...                    "accuracy": [0.9, 0.1, 0.6, 0.8, 0.85, 0.7], "phase_end": True})
    >>> ph = pd.DataFrame({"phase": [0, 1, 2], "regime": [0, 1, 0]})
    >>> R = accuracy_matrix(ev, ph)
    >>> R.to_numpy().tolist(), R.attrs["first_end"], R.attrs["final"]
    ([[0.9, 0.1], [0.6, 0.8], [0.85, 0.7]], [0, 1], 0)
    """
    tab = _phase_table(phases, ["regime"])
    pk = tab.index.to_numpy()
    regime_of = tab["regime"].to_numpy()
    regs = list(dict.fromkeys(regime_of.tolist()))
    K, J = pk.size, len(regs)
    out = np.full((K, J), np.nan)
    if _has_rows(evals, ["phase", "regime", "accuracy", "phase_end"]):
        # the mean per (phase, regime) of the phase-end rows, NaN skipped, with numpy (with a
        # pandas groupby and reindex instead, a run's metrics took 19 ms instead of 15: this
        # runs twice a run); rows of phases or regimes outside the plan are left out
        end = evals["phase_end"].astype(bool).to_numpy()
        if end.any():
            ph = evals["phase"].to_numpy()[end]
            rg = evals["regime"].to_numpy()[end]
            acc = evals["accuracy"].to_numpy(np.float64)[end]
            row = np.minimum(np.searchsorted(pk, ph), max(K - 1, 0))
            row_ok = pk[row] == ph if K else np.zeros(ph.size, bool)
            col_of = {r: j for j, r in enumerate(regs)}
            col = np.array([col_of.get(r, -1) for r in rg.tolist()], dtype=np.int64)
            use = row_ok & (col >= 0) & ~np.isnan(acc)
            sums, counts = np.zeros((K, J)), np.zeros((K, J))
            np.add.at(sums, (row[use], col[use]), acc[use])
            np.add.at(counts, (row[use], col[use]), 1.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                out = np.where(counts > 0, sums / counts, np.nan)
    R = pd.DataFrame(out, index=pd.Index(pk, name="after_phase"),
                     columns=pd.Index(regs, name="regime"))
    R.attrs["first_end"] = [int(np.flatnonzero(regime_of == r)[0]) for r in regs]
    R.attrs["final"] = regs.index(regime_of[-1]) if K else 0
    return R


def _layout(R: pd.DataFrame | ArrayLike) -> tuple[np.ndarray, np.ndarray, int]:
    """(A, first_end, final) of an accuracy matrix: a DataFrame from :func:`accuracy_matrix`
    carries its layout; any other (square) matrix is one regime per phase."""
    attrs = getattr(R, "attrs", None) or {}
    try:
        A = np.asarray(R.to_numpy() if isinstance(R, pd.DataFrame) else R, dtype=np.float64)
    except (TypeError, ValueError):  # text, rows of different lengths
        raise SpecTypeError(f"accuracy matrix must be a 2-D table of numbers (phases × regimes, "
                            f"every row the same length), got {R!r}") from None
    if A.ndim != 2:
        raise ShiftsimError(f"accuracy matrix must be 2-D (phases × regimes), got shape "
                            f"{A.shape}")
    if "first_end" in attrs and "final" in attrs:
        first = np.asarray(attrs["first_end"], dtype=np.int64)
        if first.size != A.shape[1]:
            raise ShiftsimError("accuracy matrix layout does not match its columns")
        return A, first, int(attrs["final"])
    if A.shape[0] != A.shape[1]:
        raise ShiftsimError(f"accuracy matrix must be square (K×K) or come from "
                            f"metrics.accuracy_matrix, got shape {A.shape}")
    return A, np.arange(A.shape[1]), A.shape[1] - 1


def average_accuracy(R: pd.DataFrame | ArrayLike) -> float:
    """ACC = (1/J) Σ_j R[K−1, j] over the J distinct regimes (Lopez-Paz & Ranzato 2017;
    Chaudhry et al. 2018).

    NaN if the matrix is empty or any entry of its last row is missing.

    >>> average_accuracy([[1.0, 0.0], [0.5, 1.0]])
    0.75
    """
    A, _, _ = _layout(R)
    if A.size == 0:
        return math.nan
    return float(np.mean(A[-1]))


def _earlier(R: pd.DataFrame | ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A, the columns j other than the final phase's regime, their first-end rows)."""
    A, first, final = _layout(R)
    cols = np.array([j for j in range(A.shape[1]) if j != final], dtype=np.int64)
    return A, cols, first[cols]


def backward_transfer(R: pd.DataFrame | ArrayLike) -> float:
    """BWT = mean over the regimes j other than the last phase's of (R[K−1, j] − R[j, j])
    (Lopez-Paz & Ranzato 2017, GEM), R[j, j] the accuracy at the end of regime j's first
    phase.

    NaN with fewer than two regimes or when an entry it needs is missing. Negative means
    forgetting. (continuum 1.2.7 returns 0.0 for ``[[1, 0], [0.5, 1]]``; the definition gives
    −0.5.)

    >>> backward_transfer([[1.0, 0.0], [0.5, 1.0]])
    -0.5
    """
    A, cols, first = _earlier(R)
    if cols.size == 0:
        return math.nan
    return float(np.mean(A[-1, cols] - A[first, cols]))


def forgetting(R: pd.DataFrame | ArrayLike) -> float:
    """Average forgetting F over the regimes j other than the last phase's (Chaudhry et al.
    2018, RWalk): f_j = max_{l in [j, K−2]} R[l, j] − R[K−1, j], l running from the end of
    regime j's first phase to the phase before last.

    NaN with fewer than two regimes or when an entry it needs is missing.

    >>> forgetting([[1.0, 0.0], [0.5, 1.0]])
    0.5
    """
    A, cols, first = _earlier(R)
    if cols.size == 0:
        return math.nan
    K = A.shape[0]
    phase = np.arange(K)[:, None]  # l of the docstring: the row (phase) of R
    keep = (phase >= first[None, :]) & (phase <= K - 2)
    best = np.max(np.where(keep, A[:, cols], -np.inf), axis=0)  # NaN propagates
    return float(np.mean(best - A[-1, cols]))


def max_average_accuracy(label_maps: Sequence[ArrayLike], groups: Sequence[Any],
                         class_weights: ArrayLike) -> float:
    """The highest ACC a single classifier can reach over J regimes (docs/metrics.md,
    "conflicting regimes").

    ``label_maps[j]``: regime j's held-out label per original class; ``groups[j]``: a key of
    its inputs (regimes with the same key show the classifier the same inputs, so it must give
    them one answer; regimes with different inputs, e.g. another rotation, can be told apart);
    ``class_weights``: the held-out class counts or shares (finite, ≥ 0, not all 0). Per group
    and class the best answer is the label most of the group's regimes agree on:
    max ACC = (1/J) Σ_groups Σ_c w_c · max_ℓ #{j in group : map_j(c) = ℓ}.

    >>> ident, perm = [0, 1, 2], [1, 2, 0]
    >>> max_average_accuracy([ident, perm], ["x", "x"], [1, 1, 1])   # one input, two labels
    0.5
    >>> max_average_accuracy([ident, perm], ["x", "rotated"], [1, 1, 1])
    1.0
    """
    maps = [np.asarray(m, dtype=np.int64).reshape(-1) for m in label_maps]
    if not maps:
        return math.nan
    if len(groups) != len(maps):
        raise ShiftsimError(f"max_average_accuracy: {len(maps)} label maps but {len(groups)} "
                            "group keys")
    w = _float_array(class_weights, "class_weights")
    if w.size != maps[0].size or any(m.size != w.size for m in maps):
        raise ShiftsimError(f"max_average_accuracy: every label map needs one label per class "
                            f"and the class weights must match them, got {w.size} weights and "
                            f"label maps of {sorted({m.size for m in maps})} labels")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ShiftsimError(f"max_average_accuracy: class_weights must be class counts or "
                            f"shares (finite, >= 0, not all 0), got {w.tolist()}")
    w = w / w.sum()
    total = 0.0
    for key in dict.fromkeys(groups):
        M = np.stack([m for m, g in zip(maps, groups) if g == key])  # regimes × classes
        agree = (M[:, None, :] == M[None, :, :]).sum(axis=1).max(axis=0)  # per class
        total += float(np.sum(w * agree))
    return total / len(maps)


# ----------------------------------------------------------------------------------------------
# held-out evaluations: stability gap and anytime accuracy


def _eval_points(evals: pd.DataFrame, tab: pd.DataFrame
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, phases, A, regs): one row per evaluation step, A[i, r] = accuracy on ``regs[r]``.

    Repeated rows for one (step, regime) — a periodic and a phase-end evaluation at the same
    step — are averaged.
    """
    regs = np.unique(tab["regime"].to_numpy())
    if not _has_rows(evals, ["step", "phase", "regime", "accuracy"]):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, regs.size)), regs
    per_step = evals.groupby("step", sort=True)["phase"]
    if (per_step.nunique() > 1).any():
        raise ShiftsimError("evals has a step with more than one phase; the phase of an "
                            "evaluation is the phase of the step before it")
    point_phase = per_step.first()
    _check_known(point_phase.unique().tolist(), tab, "evals")
    acc = evals.groupby(["step", "regime"])["accuracy"].mean().unstack("regime")
    acc = acc.reindex(index=point_phase.index, columns=regs)
    return (point_phase.index.to_numpy(), point_phase.to_numpy(),
            acc.to_numpy(np.float64), regs)


def _running_min_acc(evals: pd.DataFrame, phases: pd.DataFrame
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, point phases, pk, Aj, M): Aj[i, j] = accuracy on regime of phase j at point i;
    M[i, j] = min-ACC_j over the points up to i taken while a phase > j was trained."""
    tab = _phase_table(phases, ["regime"])
    steps, kpt, A, regs = _eval_points(evals, tab)
    pk = tab.index.to_numpy()
    Aj = A[:, np.searchsorted(regs, tab["regime"].to_numpy())]
    after = kpt[:, None] > pk[None, :]
    masked = np.where(after, Aj, np.nan)
    M = np.fmin.accumulate(masked, axis=0) if masked.size else masked
    return steps, kpt, pk, Aj, M


def min_accuracy(evals: pd.DataFrame, phases: pd.DataFrame) -> pd.Series:
    """min-ACC_j: the lowest held-out accuracy on the regime of phase j, over all evaluations
    taken while a later phase (> j) was being trained (De Lange, van de Ven & Tuytelaars 2023,
    "Continual evaluation for lifelong learning: identifying the stability gap").

    Periodic and phase-end evaluations both count; the phase-end evaluation of phase j itself is
    not "after" it. NaN when there is no such evaluation (always for the last phase). Indexed by
    phase.

    >>> ev = pd.DataFrame({"step": [5, 7, 7, 10, 10], "phase": [0, 1, 1, 1, 1],
    ...                    "regime": [0, 0, 1, 0, 1], "accuracy": [0.9, 0.4, 0.5, 0.7, 0.8]})
    >>> ph = pd.DataFrame({"phase": [0, 1], "regime": [0, 1]})
    >>> min_accuracy(ev, ph).tolist()
    [0.4, nan]
    """
    _, _, pk, _, M = _running_min_acc(evals, phases)
    values = M[-1] if M.shape[0] else np.full(pk.size, np.nan)
    return pd.Series(values, index=pd.Index(pk, name="phase"), name="min_acc")


def worst_case_accuracy(evals: pd.DataFrame, phases: pd.DataFrame) -> pd.DataFrame:
    """WC-ACC at every evaluation point (De Lange, van de Ven & Tuytelaars 2023).

    At an evaluation point in phase k: WC-ACC = (1/(k+1))·acc(regime of phase k)
    + (1 − 1/(k+1))·mean_{j<k} min-ACC_j, where min-ACC_j is taken over the evaluations up to and
    including this point that were taken while a phase > j was trained. Columns: ``step``,
    ``phase``, ``acc`` (current regime), ``min_acc`` (the mean of min-ACC_j over j < k; NaN for
    the first phase), ``wc_acc`` (= ``acc`` in the first phase). NaN where a needed accuracy is
    missing.

    >>> ev = pd.DataFrame({"step": [5, 7, 7, 10, 10], "phase": [0, 1, 1, 1, 1],
    ...                    "regime": [0, 0, 1, 0, 1], "accuracy": [0.9, 0.4, 0.5, 0.7, 0.8]})
    >>> ph = pd.DataFrame({"phase": [0, 1], "regime": [0, 1]})
    >>> worst_case_accuracy(ev, ph)["wc_acc"].tolist()
    [0.9, 0.45, 0.6]
    """
    steps, kpt, pk, Aj, M = _running_min_acc(evals, phases)
    kpos = np.searchsorted(pk, kpt)
    cur = Aj[np.arange(kpt.size), kpos] if kpt.size else np.zeros(0)
    prev = pk[None, :] < kpt[:, None]
    count = prev.sum(axis=1)
    total = np.where(prev, np.nan_to_num(M, nan=0.0), 0.0).sum(axis=1)
    missing = (prev & np.isnan(M)).any(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        min_prev = np.where((count > 0) & ~missing, total / np.maximum(count, 1), np.nan)
        w = 1.0 / (count + 1)
        wc = np.where(count > 0, w * cur + (1 - w) * min_prev, cur)
    return pd.DataFrame({"step": steps.astype(np.int64), "phase": kpt.astype(np.int64),
                         "acc": cur, "min_acc": min_prev, "wc_acc": wc})


def anytime_accuracy(evals: pd.DataFrame, phases: pd.DataFrame) -> float:
    """Average anytime accuracy: the mean over evaluation points of the mean held-out accuracy on
    the regimes seen so far (Caccia et al. 2022, "New insights on reducing abrupt representation
    change in online continual learning"; De Lange et al. 2023).

    At a point taken while phase k is trained, the regimes seen so far are the distinct regimes
    of phases 0..k (a recurring regime counts once); phase-end rows for regimes not yet seen are
    left out. A point averages the seen regimes it has evaluations for; points with none are
    skipped. NaN without evaluations.

    >>> ev = pd.DataFrame({"step": [5, 5, 10, 10], "phase": [0, 0, 1, 1],
    ...                    "regime": [0, 1, 0, 1], "accuracy": [0.9, 0.1, 0.6, 0.8]})
    >>> ph = pd.DataFrame({"phase": [0, 1], "regime": [0, 1]})
    >>> anytime_accuracy(ev, ph)  # (0.9 + (0.6 + 0.8) / 2) / 2
    0.8
    """
    tab = _phase_table(phases, ["regime"])
    _, kpt, A, regs = _eval_points(evals, tab)
    if A.shape[0] == 0:
        return math.nan
    first_phase = tab.groupby("regime")["phase"].min().reindex(regs).to_numpy()
    use = (first_phase[None, :] <= kpt[:, None]) & ~np.isnan(A)
    count = use.sum(axis=1)
    per_point = np.where(use, A, 0.0).sum(axis=1)[count > 0] / count[count > 0]
    return float(per_point.mean()) if per_point.size else math.nan
