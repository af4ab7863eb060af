"""Metrics: pure functions from a run's trace, phase plan and held-out evaluations to numbers.

Every formula is the one stated in ``docs/metrics.md``; each docstring names the paper it comes
from. No function mutates its inputs, and none loops in Python over steps.

Inputs (the engine's DataFrames):

* ``trace``: one row per step — ``step``, ``phase``, ``n`` (batch size b_t), ``correct``,
  ``correct_true``, ``loss``, ``n_new`` (+ ``diag_*`` columns, ignored). A diverged run's trace
  stops before the diverged step.
* ``phases``: one row per planned phase — ``phase``, ``name``, ``start``, ``end``, ``steps``,
  ``regime``, ``ceiling``, ``label_kind``, ``width``.
* ``evals``: held-out evaluations — ``step``, ``phase`` (phase being trained), ``regime``, ``n``,
  ``correct``, ``accuracy``, ``phase_end``.

Conventions chosen where the spec leaves room (also in the docstrings below):

* Recovery: a phase with fewer than ``w`` rows uses the rows it has for its plateau (and for the
  pre-shift level of the next phase); the persistence ``m`` is not shortened, so a phase with
  fewer than ``m`` rows is censored. ``ā_t ≥ target`` is tested with an absolute tolerance of
  1e-12 so that exact ties count as reached despite float rounding. When the previous phase has
  no rows, ``pre`` and ``drop`` are NaN; if the reference is then undefined, so is the recovery
  time (NaN, ``censored=False``).
* Accuracy matrix metrics (ACC, BWT, forgetting) are NaN when any entry they need is missing.
* Stability-gap metrics use the evaluations that exist: min-ACC_j is the minimum over the
  evaluations taken while a phase > j was trained (the phase-end evaluation of phase j itself is
  not included), up to the evaluation point.
* Median recovery over seeds: censored runs count as +inf; the median of an even count is the
  mean of the two middle values; it is NaN ("undefined") when half or more runs are censored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from .errors import ShiftsimError, SpecTypeError, allowed, check_range

__all__ = [
    "online_accuracy",
    "phase_online_accuracy",
    "trailing_accuracy",
    "recovery",
    "accuracy_matrix",
    "average_accuracy",
    "backward_transfer",
    "forgetting",
    "min_accuracy",
    "worst_case_accuracy",
    "anytime_accuracy",
    "summarize",
    "mean_interval",
    "median_recovery",
    "censored_fraction",
    "paired_difference",
]

LABELS = ("stream", "true")
REFERENCES = ("plateau", "pre", "ceiling")
INTERVAL_METHODS = ("t", "bootstrap")
TOLERANCE = 1e-12

RECOVERY_COLUMNS = [
    "phase", "pre", "plateau", "ceiling", "reference", "target", "recovery_steps",
    "recovery_samples", "censored", "drop", "deficit",
]
SUMMARY_COLUMNS = [
    "phase", "name", "start", "steps", "steps_run", "samples", "online_acc", "online_acc_true",
    "loss", "pre", "plateau", "ceiling", "target", "recovery_steps", "recovery_samples",
    "censored", "drop", "deficit", "heldout_acc",
]


# ----------------------------------------------------------------------------------------------
# input checks


def _check_frame(df: Any, what: str, columns: Sequence[str]) -> None:
    if not isinstance(df, pd.DataFrame):
        raise SpecTypeError(f"{what} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        have = ", ".join(repr(str(c)) for c in df.columns) or "none"
        need = ", ".join(repr(c) for c in missing)
        raise ShiftsimError(f"{what} is missing column(s) {need}; it has: {have}")


def _has_rows(evals: Any, columns: Sequence[str]) -> bool:
    """Check an evals frame; an empty one (no rows, whatever its columns) means no evaluations."""
    if not isinstance(evals, pd.DataFrame):
        raise SpecTypeError(f"evals must be a pandas DataFrame, got {type(evals).__name__}")
    if len(evals) == 0:
        return False
    _check_frame(evals, "evals", columns)
    return True


def _labels_column(labels: str) -> str:
    if labels == "stream":
        return "correct"
    if labels == "true":
        return "correct_true"
    raise allowed(labels, "labels", LABELS)


def _check_reference(reference: Any) -> str | float:
    if isinstance(reference, str):
        if reference not in REFERENCES:
            raise ShiftsimError(
                f"unknown reference {reference!r}; allowed: 'plateau', 'pre', 'ceiling' "
                "or a number in [0, 1]"
            )
        return reference
    try:
        return float(check_range(reference, "reference", 0, 1))
    except SpecTypeError:
        raise SpecTypeError(
            f"reference must be 'plateau', 'pre', 'ceiling' or a number in [0, 1], "
            f"got {reference!r}"
        ) from None


def _ordered(trace: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray | None]:
    """The trace in step order (and the permutation used, or None when already ordered).

    Phases must be contiguous and non-decreasing in step order.
    """
    steps = trace["step"].to_numpy()
    order = None
    if steps.size > 1 and not np.all(steps[1:] > steps[:-1]):
        order = np.argsort(steps, kind="stable")
        s = steps[order]
        if np.any(s[1:] == s[:-1]):
            dup = s[1:][s[1:] == s[:-1]][0]
            raise ShiftsimError(f"trace has step {dup} more than once; steps must be unique")
        trace = trace.iloc[order]
    phase = trace["phase"].to_numpy()
    if phase.size > 1 and np.any(phase[1:] < phase[:-1]):
        raise ShiftsimError("trace phases must not decrease with step (each phase is one run of "
                            "consecutive steps)")
    return trace, order


def _phase_table(phases: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    _check_frame(phases, "phases", ["phase", *columns])
    tab = phases.set_index("phase", drop=False)
    tab.index.name = None
    if not tab.index.is_unique:
        raise ShiftsimError("phases has a phase number more than once; one row per phase")
    return tab.sort_index()


def _check_known(present: Sequence[int], tab: pd.DataFrame, what: str) -> None:
    unknown = sorted(set(present) - set(tab.index.tolist()))
    if unknown:
        raise ShiftsimError(
            f"{what} has phase(s) {unknown} that are not in phases "
            f"(phases: {tab.index.tolist()})"
        )


def _phase_bounds(phase: np.ndarray) -> dict[int, tuple[int, int]]:
    """{phase: (first row, end row)} for a non-decreasing phase column."""
    uniq, first = np.unique(phase, return_index=True)
    last = np.r_[first[1:], phase.size]
    return {int(k): (int(a), int(b)) for k, a, b in zip(uniq, first, last)}


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _trailing(correct: np.ndarray, n: np.ndarray, phase: np.ndarray, window: int) -> np.ndarray:
    """ā_t on step-ordered arrays: Σ correct / Σ n over the last ``window`` rows of the phase."""
    T = correct.size
    if T == 0:
        return np.zeros(0)
    idx = np.arange(T)
    new = np.ones(T, dtype=bool)
    new[1:] = phase[1:] != phase[:-1]
    seg_start = np.maximum.accumulate(np.where(new, idx, 0))
    lo = np.maximum(seg_start, idx - window + 1)
    c = np.concatenate([[0], np.cumsum(correct, dtype=np.float64)])
    b = np.concatenate([[0], np.cumsum(n, dtype=np.float64)])
    return _ratio(c[idx + 1] - c[lo], b[idx + 1] - b[lo])


def _tail_mean(a: np.ndarray, lo: int, hi: int, window: int) -> float:
    """Mean of a over the last ``window`` rows of [lo, hi) (all of them when fewer)."""
    if hi <= lo:
        return math.nan
    return float(np.mean(a[max(lo, hi - window):hi]))


# ----------------------------------------------------------------------------------------------
# online accuracy


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


# ----------------------------------------------------------------------------------------------
# recovery


def _recovery_rows(trace: pd.DataFrame, tab: pd.DataFrame, *, window: int, q: float,
                   reference: str | float, persistence: int) -> dict[int, dict[str, Any]]:
    """Recovery quantities for every phase present in the (step-ordered) trace, phase 0 too."""
    correct = trace["correct"].to_numpy()
    n = trace["n"].to_numpy()
    phase = trace["phase"].to_numpy()
    a = _ratio(correct.astype(np.float64), n.astype(np.float64))
    abar = _trailing(correct, n, phase, window)
    bounds = _phase_bounds(phase)
    _check_known(list(bounds), tab, "trace")
    ceilings = tab["ceiling"]
    rows: dict[int, dict[str, Any]] = {}
    for k, (lo, hi) in bounds.items():
        row: dict[str, Any] = {
            "phase": k, "pre": math.nan, "plateau": _tail_mean(a, lo, hi, window),
            "ceiling": float(ceilings.loc[k]), "reference": math.nan, "target": math.nan,
            "recovery_steps": math.nan, "recovery_samples": math.nan, "censored": False,
            "drop": math.nan, "deficit": math.nan,
        }
        rows[k] = row
        if k == tab.index[0]:
            continue  # the first phase has no shift to recover from
        if k - 1 in bounds:
            row["pre"] = _tail_mean(a, *bounds[k - 1], window)
        if reference == "plateau":
            ref = row["plateau"]
        elif reference == "pre":
            ref = row["pre"]
        elif reference == "ceiling":
            ref = row["ceiling"]
        else:
            ref = float(reference)
        seg = abar[lo:hi]
        target = q * ref
        row["reference"] = ref
        row["target"] = target
        row["drop"] = row["pre"] - float(np.min(seg))
        row["deficit"] = float(np.mean(np.maximum(0.0, ref - seg)))
        if math.isnan(target):
            continue
        L = hi - lo
        found = None
        if L >= persistence:
            ok = np.concatenate([[0], np.cumsum(seg >= target - TOLERANCE)])
            hits = np.flatnonzero(ok[persistence:] - ok[:-persistence] == persistence)
            if hits.size:
                found = int(hits[0])
        if found is None:
            row["censored"] = True
        else:
            row["recovery_steps"] = float(found)
            row["recovery_samples"] = float(n[lo:lo + found].sum())
    return rows


def recovery(trace: pd.DataFrame, phases: pd.DataFrame, *, window: int = 20, q: float = 0.9,
             reference: str | float = "plateau", persistence: int | None = None
             ) -> pd.DataFrame:
    """Recovery after each shift: one row per phase k ≥ 1 that has rows in the trace.

    Definitions (docs/metrics.md; time-to-recover after float's ``mean_drift_restoration_time``
    and Shaker & Hüllermeier 2015's recovery analysis, with persistence and censoring added),
    with a_t = correct_t / b_t and ā_t the within-phase trailing accuracy (window w):

    * ``pre`` = mean of a_t over the last w steps of phase k−1;
      ``plateau`` = mean of a_t over the last w steps of phase k;
      ``ceiling`` = C_k from ``phases``.
    * ``reference`` = A_ref: the plateau (default), ``pre``, the ceiling, or a given number in
      [0, 1]; ``target`` = q · A_ref.
    * ``recovery_steps`` R_k = min{s ≥ 0 : ā_{τ_k+s+j} ≥ target for all j in [0, m)},
      m = ``persistence`` (default w); ``recovery_samples`` = Σ b_t over [τ_k, τ_k + R_k).
      If no s with s + m ≤ L_k qualifies, R_k is NaN and ``censored`` is True.
    * ``drop`` D_k = pre − min ā_t over phase k; ``deficit`` RDA_k = mean over phase k of
      max(0, A_ref − ā_t).

    L_k is the number of rows the trace has for phase k (a diverged run's trace is truncated).
    A phase with fewer than w rows uses the rows it has for its plateau and as the next phase's
    pre-shift level; the persistence is not shortened, so a phase with fewer than m rows is
    censored. Ties (ā_t equal to the target) count as reached (absolute tolerance 1e-12).
    When phase k−1 has no rows, ``pre`` and ``drop`` are NaN, and with ``reference="pre"`` the
    target, recovery time and deficit are NaN with ``censored=False`` (undefined, not censored).

    >>> tr = pd.DataFrame({"step": range(7), "phase": [0, 0, 0, 1, 1, 1, 1], "n": 10,
    ...                    "correct": [8, 9, 9, 2, 9, 9, 9]})
    >>> ph = pd.DataFrame({"phase": [0, 1], "ceiling": [1.0, 1.0]})
    >>> r = recovery(tr, ph, window=2)  # ā in phase 1: 0.2, 0.55, 0.9, 0.9; target 0.81
    >>> r.loc[0, ["pre", "plateau", "target", "recovery_steps", "recovery_samples"]].tolist()
    [0.9, 0.9, 0.81, 2.0, 20.0]
    """
    _check_frame(trace, "trace", ["step", "phase", "n", "correct"])
    tab = _phase_table(phases, ["ceiling"])
    window = check_range(window, "window", 1, integer=True)
    q = check_range(q, "q", 0, 1, low_open=True)
    reference = _check_reference(reference)
    persistence = window if persistence is None else check_range(
        persistence, "persistence", 1, integer=True)
    ordered, _ = _ordered(trace)
    rows = _recovery_rows(ordered, tab, window=window, q=q, reference=reference,
                          persistence=persistence)
    first = tab.index[0] if len(tab) else None
    out = pd.DataFrame([r for k, r in rows.items() if k != first], columns=RECOVERY_COLUMNS)
    return _recovery_dtypes(out)


def _recovery_dtypes(df: pd.DataFrame) -> pd.DataFrame:
    floats = [c for c in RECOVERY_COLUMNS if c not in ("phase", "censored")]
    df = df.astype({c: np.float64 for c in floats if c in df.columns})
    df["censored"] = df["censored"].astype(bool)
    df["phase"] = df["phase"].astype(np.int64)
    return df.reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# held-out evaluations: accuracy matrix, ACC, BWT, forgetting


def accuracy_matrix(evals: pd.DataFrame, phases: pd.DataFrame) -> pd.DataFrame:
    """R[i, j]: held-out accuracy on the regime of phase j at the end of phase i.

    Built from the phase-end evaluations (``phase_end`` true; each covers every regime). K×K,
    index ``after_phase`` i, columns ``phase`` j; NaN where an evaluation is missing (a diverged
    run, evaluations switched off). Two phases with the same regime get the same column values.
    Repeated rows for one (phase, regime) are averaged.

    >>> ev = pd.DataFrame({"step": [5, 5, 10, 10], "phase": [0, 0, 1, 1],
    ...                    "regime": [0, 1, 0, 1], "accuracy": [0.9, 0.1, 0.6, 0.8],
    ...                    "phase_end": True})
    >>> ph = pd.DataFrame({"phase": [0, 1], "regime": [0, 1]})
    >>> accuracy_matrix(ev, ph).to_numpy().tolist()
    [[0.9, 0.1], [0.6, 0.8]]
    """
    tab = _phase_table(phases, ["regime"])
    pk = tab.index.to_numpy()
    K = pk.size
    out = np.full((K, K), np.nan)
    if _has_rows(evals, ["phase", "regime", "accuracy", "phase_end"]):
        end = evals[evals["phase_end"].astype(bool).to_numpy()]
        if len(end):
            acc = end.groupby(["phase", "regime"])["accuracy"].mean()
            regs = tab["regime"].to_numpy()
            rows = np.repeat(pk, K)
            cols = np.tile(regs, K)
            key = pd.MultiIndex.from_arrays([rows, cols], names=["phase", "regime"])
            out = acc.reindex(key).to_numpy(np.float64).reshape(K, K)
    R = pd.DataFrame(out, index=pd.Index(pk, name="after_phase"),
                     columns=pd.Index(pk, name="phase"))
    return R


def _square(R: pd.DataFrame | ArrayLike) -> np.ndarray:
    A = np.asarray(R.to_numpy() if isinstance(R, pd.DataFrame) else R, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ShiftsimError(f"accuracy matrix must be square (K×K), got shape {A.shape}")
    return A


def average_accuracy(R: pd.DataFrame | ArrayLike) -> float:
    """ACC = (1/K) Σ_j R[K−1, j] (Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018).

    NaN if the matrix is empty or any entry of its last row is missing.

    >>> average_accuracy([[1.0, 0.0], [0.5, 1.0]])
    0.75
    """
    A = _square(R)
    if A.size == 0:
        return math.nan
    return float(np.mean(A[-1]))


def backward_transfer(R: pd.DataFrame | ArrayLike) -> float:
    """BWT = 1/(K−1) Σ_{j<K−1} (R[K−1, j] − R[j, j]) (Lopez-Paz & Ranzato 2017, GEM).

    NaN for K < 2 or when an entry it needs is missing. Negative means forgetting. (continuum
    1.2.7 returns 0.0 for ``[[1, 0], [0.5, 1]]``; the definition gives −0.5.)

    >>> backward_transfer([[1.0, 0.0], [0.5, 1.0]])
    -0.5
    """
    A = _square(R)
    K = A.shape[0]
    if K < 2:
        return math.nan
    return float(np.mean(A[-1, :-1] - np.diag(A)[:-1]))


def forgetting(R: pd.DataFrame | ArrayLike) -> float:
    """Average forgetting F = 1/(K−1) Σ_{j<K−1} f_j (Chaudhry et al. 2018, RWalk).

    f_j = max_{l in [j, K−2]} R[l, j] − R[K−1, j]: the best accuracy on regime j at any phase end
    from its own up to the one before last, minus the final one. NaN for K < 2 or when an entry it
    needs is missing.

    >>> forgetting([[1.0, 0.0], [0.5, 1.0]])
    0.5
    """
    A = _square(R)
    K = A.shape[0]
    if K < 2:
        return math.nan
    l = np.arange(K)[:, None]
    j = np.arange(K)[None, :]
    keep = (l >= j) & (l <= K - 2)
    best = np.max(np.where(keep, A, -np.inf), axis=0)  # NaN propagates
    return float(np.mean(best[:-1] - A[-1, :-1]))


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


# ----------------------------------------------------------------------------------------------
# per-phase summary


def summarize(trace: pd.DataFrame, phases: pd.DataFrame, evals: pd.DataFrame | None = None,
              **recovery_kwargs: Any) -> pd.DataFrame:
    """One row per planned phase: what ``RunResult.summary()`` returns.

    Columns: ``phase``, ``name``, ``start``, ``steps`` (planned L_k), ``steps_run`` (rows in the
    trace), ``samples`` (Σ b_t), ``online_acc``, ``online_acc_true`` (Cai et al. 2021), ``loss``
    (mean per-step loss), then the :func:`recovery` columns ``pre``, ``plateau``, ``ceiling``,
    ``target``, ``recovery_steps``, ``recovery_samples``, ``censored``, ``drop``, ``deficit``, and
    ``heldout_acc`` (R[k, k] of :func:`accuracy_matrix`; NaN without evaluations).

    Every phase of ``phases`` has a row. A phase without rows (a diverged run stopped earlier)
    has ``steps_run = samples = 0`` and NaN metrics. The first phase has no shift: its ``pre``,
    ``target``, recovery, ``drop`` and ``deficit`` are NaN and ``censored`` is False; its
    ``plateau`` (end-of-phase level) and ``ceiling`` are filled. ``recovery_kwargs`` (``window``,
    ``q``, ``reference``, ``persistence``) go to :func:`recovery`.

    >>> tr = pd.DataFrame({"step": range(6), "phase": [0, 0, 0, 1, 1, 1], "n": 10,
    ...                    "correct": [8, 9, 9, 2, 9, 9], "correct_true": [8, 9, 9, 2, 9, 9],
    ...                    "loss": 0.5})
    >>> ph = pd.DataFrame({"phase": [0, 1, 2], "name": ["a", "b", "c"], "start": [0, 3, 6],
    ...                    "steps": 3, "ceiling": 1.0})
    >>> s = summarize(tr, ph, window=2, persistence=1)
    >>> s["steps_run"].tolist(), s["online_acc"].round(3).tolist()
    ([3, 3, 0], [0.867, 0.667, nan])
    >>> s["recovery_steps"].tolist(), s["censored"].tolist()
    ([nan, 2.0, nan], [False, False, False])
    """
    unknown = sorted(set(recovery_kwargs) - {"window", "q", "reference", "persistence"})
    if unknown:
        raise allowed(unknown[0], "summarize option", ("window", "q", "reference", "persistence"))
    _check_frame(trace, "trace", ["step", "phase", "n", "correct", "correct_true", "loss"])
    tab = _phase_table(phases, ["name", "start", "steps", "ceiling"])
    window = check_range(recovery_kwargs.get("window", 20), "window", 1, integer=True)
    q = check_range(recovery_kwargs.get("q", 0.9), "q", 0, 1, low_open=True)
    reference = _check_reference(recovery_kwargs.get("reference", "plateau"))
    persistence = recovery_kwargs.get("persistence")
    persistence = window if persistence is None else check_range(
        persistence, "persistence", 1, integer=True)

    ordered, _ = _ordered(trace)
    rows = _recovery_rows(ordered, tab, window=window, q=q, reference=reference,
                          persistence=persistence)
    pk = tab.index
    rec = pd.DataFrame(list(rows.values()), columns=RECOVERY_COLUMNS).set_index("phase")
    rec = rec.reindex(pk)

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

    if evals is not None:
        heldout = np.diag(accuracy_matrix(evals, phases).to_numpy())
    else:
        heldout = np.full(len(pk), np.nan)

    out = pd.DataFrame({
        "phase": pk.to_numpy(np.int64),
        "name": tab["name"].astype(str).to_numpy(),
        "start": tab["start"].to_numpy(np.int64),
        "steps": tab["steps"].to_numpy(np.int64),
        "steps_run": steps_run,
        "samples": samples,
        "online_acc": _ratio(agg["correct"].to_numpy(np.float64), den),
        "online_acc_true": _ratio(agg["correct_true"].to_numpy(np.float64), den),
        "loss": agg["loss"].to_numpy(np.float64),
        "pre": rec["pre"].to_numpy(np.float64),
        "plateau": rec["plateau"].to_numpy(np.float64),
        "ceiling": tab["ceiling"].to_numpy(np.float64),
        "target": rec["target"].to_numpy(np.float64),
        "recovery_steps": rec["recovery_steps"].to_numpy(np.float64),
        "recovery_samples": rec["recovery_samples"].to_numpy(np.float64),
        "censored": rec["censored"].eq(True).to_numpy(bool),
        "drop": rec["drop"].to_numpy(np.float64),
        "deficit": rec["deficit"].to_numpy(np.float64),
        "heldout_acc": heldout.astype(np.float64),
    })
    return out[SUMMARY_COLUMNS]


# ----------------------------------------------------------------------------------------------
# study-level aggregation


def _float_array(values: ArrayLike, name: str) -> np.ndarray:
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise SpecTypeError(f"{name} must be numbers, got {values!r}") from None
    if x.ndim != 1:
        x = x.reshape(-1)
    return x


def _bool_array(values: ArrayLike, name: str) -> np.ndarray:
    s = pd.Series(np.asarray(values).reshape(-1))
    if s.isna().any():
        raise ShiftsimError(f"{name} must be True/False for every run, got a missing value")
    return s.astype(bool).to_numpy()


def _check_level(level: float) -> float:
    return check_range(level, "level", 0, 1, low_open=True, high_open=True)


def mean_interval(values: ArrayLike, level: float = 0.95, method: str = "t", seed: int = 0,
                  n_boot: int = 10_000) -> tuple[float, float, float]:
    """Mean over seeds and a ``level`` confidence interval: (mean, low, high).

    ``method="t"``: mean ± t_{(1+level)/2, n−1} · s/√n (Student's t, sample standard deviation).
    ``method="bootstrap"``: percentile bootstrap (Efron & Tibshirani 1993) of the mean with
    ``n_boot`` resamples drawn with ``numpy.random.default_rng(seed)``. NaN values are ignored;
    with one value the interval is (NaN, NaN); with none everything is NaN.

    >>> mean_interval([1.0, 2.0, 3.0])  # 2 ± 4.3027 · 1/√3
    (2.0, -0.484, 4.484)
    >>> mean_interval([0.7])
    (0.7, nan, nan)
    """
    level = _check_level(level)
    if method not in INTERVAL_METHODS:
        raise allowed(method, "interval method", INTERVAL_METHODS)
    n_boot = check_range(n_boot, "n_boot", 1, integer=True)
    x = _float_array(values, "values")
    x = x[~np.isnan(x)]
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(np.mean(x))
    if x.size == 1:
        return (mean, math.nan, math.nan)
    if method == "t":
        from scipy.special import stdtrit  # Student's t quantile; lighter than scipy.stats

        half = float(stdtrit(x.size - 1, (1 + level) / 2)) * float(
            np.std(x, ddof=1)) / math.sqrt(x.size)
        return (mean, mean - half, mean + half)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return (mean, float(low), float(high))


def median_recovery(times: ArrayLike, censored: ArrayLike) -> float:
    """Median recovery time over runs, counting censored runs as +inf (docs/metrics.md).

    Tie rule: with an even number of runs the median is the mean of the two middle values, so it
    is finite exactly when fewer than half of the runs are censored; when half or more are
    censored the median is undefined and NaN is returned (never +inf, never a mean that drops the
    censored runs). A run with a NaN time that is not censored (phase never reached, e.g. the run
    diverged earlier) has no recovery time and is left out. NaN when no run is left.

    >>> median_recovery([3, 5, float("nan")], [False, False, True])  # 3, 5, inf
    5.0
    >>> median_recovery([3, 7, float("nan"), float("nan")], [False, False, True, True])
    nan
    """
    t = _float_array(times, "times")
    c = _bool_array(censored, "censored")
    if t.shape != c.shape:
        raise ShiftsimError(f"times and censored must have the same length, got {t.size} "
                            f"and {c.size}")
    observed = c | ~np.isnan(t)
    t = np.where(c, np.inf, t)[observed]
    if t.size == 0 or 2 * int(c[observed].sum()) >= t.size:
        return math.nan
    return float(np.median(t))


def censored_fraction(censored: ArrayLike) -> float:
    """Fraction of runs whose recovery is censored (NaN for no runs).

    >>> censored_fraction([True, False, False, True])
    0.5
    """
    c = _bool_array(censored, "censored")
    return float(c.mean()) if c.size else math.nan


def paired_difference(a: ArrayLike | pd.Series, b: ArrayLike | pd.Series, level: float = 0.95,
                      *, method: str = "t", seed: int = 0, higher_is_better: bool = True
                      ) -> dict[str, Any]:
    """Difference a − b paired by seed, with an interval and win counts.

    Two Series are paired by index (the seed) over the seeds both have; anything else is paired
    by position. Pairs with a NaN are dropped. Returns ``mean`` (mean of a − b), ``low``, ``high``
    (the :func:`mean_interval` of the differences, ``method`` t or bootstrap), ``wins_a``,
    ``wins_b``, ``ties`` (exactly equal values) and ``n`` (pairs). A win is the larger value, or
    the smaller one with ``higher_is_better=False`` (e.g. recovery times).

    >>> d = paired_difference(pd.Series([0.8, 0.7, 0.9]), pd.Series([0.6, 0.75, 0.9]))
    >>> round(d["mean"], 3), d["wins_a"], d["wins_b"], d["ties"], d["n"]
    (0.05, 1, 1, 1, 3)
    """
    if isinstance(a, pd.Series) and isinstance(b, pd.Series):
        if not (a.index.is_unique and b.index.is_unique):
            raise ShiftsimError("paired_difference: each side must have one value per seed")
        common = a.index.intersection(b.index, sort=False)
        x = _float_array(a.loc[common].to_numpy(), "a")
        y = _float_array(b.loc[common].to_numpy(), "b")
    else:
        x = _float_array(a, "a")
        y = _float_array(b, "b")
        if x.shape != y.shape:
            raise ShiftsimError(f"paired_difference: a and b must have the same length, got "
                                f"{x.size} and {y.size}")
    d = x - y
    d = d[~np.isnan(d)]
    mean, low, high = mean_interval(d, level=level, method=method, seed=seed)
    better = d if higher_is_better else -d
    return {
        "mean": mean, "low": low, "high": high,
        "wins_a": int((better > 0).sum()), "wins_b": int((better < 0).sum()),
        "ties": int((d == 0).sum()), "n": int(d.size),
    }
