"""Metrics: pure functions from a run's trace, phase plan and held-out evaluations to numbers.

Every formula is stated in docs/metrics.md; each docstring names the paper it comes from. No
function mutates its inputs, and none loops in Python over steps.

Inputs (the engine's DataFrames):

* ``trace``: one row per step — ``step``, ``phase``, ``n`` (batch size b_t), ``correct``,
  ``correct_true``, ``loss``, ``n_new`` (+ ``diag_*`` columns, ignored). A diverged run's trace
  stops before the diverged step.
* ``phases``: one row per planned phase — ``phase``, ``name``, ``start``, ``end``, ``steps``,
  ``regime``, ``ceiling``, ``chance``, ``chance_true``, ``label_kind``, ``shifted``,
  ``width`` (:meth:`shiftsim.Scenario.phase_table`).
* ``evals``: held-out evaluations — ``step``, ``phase`` (phase being trained), ``regime``, ``n``,
  ``correct``, ``accuracy``, ``phase_end``.

Conventions chosen where the definitions leave room (also in the docstrings below):

* Recovery (version 2: chance-normalised target, onset, persistence, collapse, censoring): a
  phase with fewer than ``w`` rows uses the rows it has for its plateau (and for the pre-shift
  level of the next phase); the persistences are not shortened, so a dip needs ``onset`` rows
  below the target and a recovery ``m`` rows at or above it. ``ā_t ≥ target`` is tested with an
  absolute tolerance of 1e-12 so that exact ties count as reached despite float rounding. When
  the previous phase has no rows, ``pre`` and ``drop`` are NaN; if the reference is then
  undefined, so is the recovery time (NaN, ``censored=False``). A phase table without
  ``chance`` means χ = 0; without ``shifted``, every phase after the first is a shift.
* Accuracy matrix metrics (ACC, BWT, forgetting) are over the distinct regimes and NaN when any
  entry they need is missing.
* Stability-gap metrics use the evaluations that exist: min-ACC_j is the minimum over the
  evaluations taken while a phase > j was trained (the phase-end evaluation of phase j itself is
  not included), up to the evaluation point.
* Median recovery over seeds: censored runs count as +inf; the median of an even count is the
  mean of the two middle values; it is NaN ("undefined") when half or more runs are censored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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
    "common_reference",
    "run_recovery",
    "accuracy_matrix",
    "average_accuracy",
    "backward_transfer",
    "forgetting",
    "max_average_accuracy",
    "min_accuracy",
    "worst_case_accuracy",
    "anytime_accuracy",
    "summarize",
    "run_scores",
    "mean_interval",
    "median_recovery",
    "median_interval",
    "censored_fraction",
    "paired_difference",
    "paired_p_value",
    "holm",
]

LABELS = ("stream", "true")
REFERENCES = ("plateau", "pre", "ceiling")
INTERVAL_METHODS = ("t", "bootstrap")
PAIRED_TESTS = ("t", "wilcoxon")
RECOVERY_OPTIONS = ("window", "q", "reference", "reference_true", "persistence", "onset")
TOLERANCE = 1e-12
#: a plateau within this of chance is a collapse (never counts as recovered)
COLLAPSE_MARGIN = 0.05

_PER_LABELS = [
    "chance", "pre", "plateau", "reference", "target", "dipped", "onset_steps",
    "recovery_steps", "recovery_samples", "below_steps", "after_ramp_steps", "censored",
    "collapsed", "drop", "deficit",
]
RECOVERY_COLUMNS = ["phase", "shifted", "ceiling", *_PER_LABELS,
                    *[f"{c}_true" for c in _PER_LABELS]]
BOOL_COLUMNS = ("shifted", "dipped", "censored", "collapsed", "dipped_true", "censored_true",
                "collapsed_true")
#: the stream-level scores of a run (:func:`run_scores`; a study's ``runs`` table has them)
SCORE_COLUMNS = ("online_acc", "online_acc_true", "acc", "bwt", "forgetting", "anytime_acc")
SUMMARY_COLUMNS = [
    "phase", "name", "start", "steps", "steps_run", "samples", "online_acc", "online_acc_true",
    "loss", *RECOVERY_COLUMNS[1:], "heldout_acc",
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


def _check_reference(reference: Any, name: str = "reference") -> Any:
    """A reference kind, a number in [0, 1] or a mapping phase -> number in [0, 1] (or NaN)."""
    what = (f"{name} must be 'plateau', 'pre', 'ceiling', a number in [0, 1] or a mapping "
            "phase -> number")
    if isinstance(reference, str):
        if reference == "common":
            raise ShiftsimError(
                f"{name}='common' compares learners: it needs a study (the store and reports "
                "compute it), or metrics.common_reference(...) passed as a mapping phase -> "
                "value; a single run uses 'plateau'")
        if reference not in REFERENCES:
            raise ShiftsimError(f"unknown {name} {reference!r}; allowed: 'plateau', 'pre', "
                                "'ceiling', a number in [0, 1] or a mapping phase -> number")
        return reference
    if isinstance(reference, Mapping):
        out = {}
        for k, v in reference.items():
            if v is None or (isinstance(v, float) and math.isnan(v)):
                out[int(k)] = math.nan
                continue
            try:
                out[int(k)] = float(check_range(v, f"{name}[{k!r}]", 0, 1))
            except (SpecTypeError, TypeError, ValueError):
                raise SpecTypeError(f"{what}, got {reference!r}") from None
        return out
    try:
        return float(check_range(reference, name, 0, 1))
    except SpecTypeError:
        raise SpecTypeError(f"{what}, got {reference!r}") from None


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
# recovery (version 2)


def _window_starts(mask: np.ndarray, m: int) -> np.ndarray:
    """Every s with mask[s], …, mask[s + m − 1] all True (s + m ≤ len(mask)), ascending."""
    if mask.size < m:
        return np.zeros(0, dtype=np.int64)
    c = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
    return np.flatnonzero(c[m:] - c[:-m] == m)


def _reference_value(reference: Any, k: int, labels: str, row: dict[str, Any]) -> float:
    """A_ref,k for one label set: a kind resolved from the row, a number or a per-phase map."""
    if isinstance(reference, str):
        if reference == "plateau":
            return row["plateau"]
        if reference == "pre":
            return row["pre"]
        return row["ceiling"] if labels == "stream" else 1.0  # clean labels: ceiling 1
    if isinstance(reference, Mapping):
        value = reference.get(k, math.nan)
        return math.nan if value is None else float(value)
    return float(reference)


def _recover(seg: np.ndarray, n_seg: np.ndarray, target: float, *, persistence: int,
             onset: int, width: int, collapsed: bool) -> dict[str, Any]:
    """Onset, recovery time and its parts for one phase's ā_t (``seg``) against ``target``."""
    out: dict[str, Any] = {"dipped": False, "onset_steps": math.nan, "recovery_steps": math.nan,
                           "recovery_samples": math.nan, "below_steps": math.nan,
                           "after_ramp_steps": math.nan, "censored": False}
    below = seg < target - TOLERANCE
    starts = _window_starts(below, onset)
    R: int | None
    if starts.size == 0:  # never below the target for m_on steps: the shift did not hurt
        R = 0
    else:
        t_on = int(starts[0])
        out["dipped"] = True
        out["onset_steps"] = float(t_on)
        ok = _window_starts(~below, persistence)
        ok = ok[ok >= t_on]
        R = int(ok[0]) if ok.size else None
    if collapsed or R is None:  # at chance: never counts as recovered
        out["censored"] = True
        return out
    out["recovery_steps"] = float(R)
    out["recovery_samples"] = float(n_seg[:R].sum())
    out["below_steps"] = float(R - out["onset_steps"]) if out["dipped"] else 0.0
    if width:
        out["after_ramp_steps"] = float(max(0, R - width))
    return out


def _recovery_rows(trace: pd.DataFrame, tab: pd.DataFrame, *, window: int, q: float,
                   reference: Any, reference_true: Any, persistence: int, onset: int
                   ) -> dict[int, dict[str, Any]]:
    """Recovery quantities (stream and clean labels) for every phase present in the
    (step-ordered) trace, phase 0 included."""
    n = trace["n"].to_numpy()
    phase = trace["phase"].to_numpy()
    bounds = _phase_bounds(phase)
    _check_known(list(bounds), tab, "trace")
    first = tab.index[0]
    sets = [("stream", "correct", "")]
    if "correct_true" in trace.columns:
        sets.append(("true", "correct_true", "_true"))
    rows: dict[int, dict[str, Any]] = {k: {"phase": k} for k in bounds}
    for labels, col, sfx in sets:
        correct = trace[col].to_numpy()
        a = _ratio(correct.astype(np.float64), n.astype(np.float64))
        abar = _trailing(correct, n, phase, window)
        ref_kind = reference if labels == "stream" else reference_true
        for k, (lo, hi) in bounds.items():
            info = tab.loc[k]
            row = rows[k]
            shifted = k != first and bool(info.get("shifted", True))
            noise = str(info.get("label_kind", "")) == "noise"
            chance = float(info.get("chance", 0.0)) if labels == "stream" else float(
                info.get("chance_true", info.get("chance", 0.0)))
            values: dict[str, Any] = {
                "chance": chance, "pre": math.nan, "plateau": _tail_mean(a, lo, hi, window),
                "reference": math.nan, "target": math.nan, "dipped": False,
                "onset_steps": math.nan, "recovery_steps": math.nan,
                "recovery_samples": math.nan, "below_steps": math.nan,
                "after_ramp_steps": math.nan, "censored": False, "collapsed": False,
                "drop": math.nan, "deficit": math.nan,
            }
            if labels == "stream":
                row["shifted"] = shifted
                row["ceiling"] = float(info["ceiling"])
            if k - 1 in bounds:
                values["pre"] = _tail_mean(a, *bounds[k - 1], window)
            if labels == "true" and not noise:  # clean-label recovery: for label noise only
                values = {key: (False if isinstance(v, bool) else math.nan)
                          for key, v in values.items()}
            elif shifted:
                values["collapsed"] = bool(values["plateau"] - chance < COLLAPSE_MARGIN)
                ref = _reference_value(ref_kind, k, labels, {**row, **values})
                seg = abar[lo:hi]
                values["reference"] = ref
                values["drop"] = values["pre"] - float(np.min(seg))
                if not math.isnan(ref):
                    target = chance + q * (ref - chance)
                    values["target"] = target
                    values["deficit"] = float(np.mean(np.maximum(0.0, ref - seg)))
                    values.update(_recover(seg, n[lo:hi], target, persistence=persistence,
                                           onset=onset, width=int(info.get("width", 0) or 0),
                                           collapsed=values["collapsed"]))
            row.update({f"{key}{sfx}": v for key, v in values.items()})
    return rows


def _check_recovery_options(window: Any, q: Any, reference: Any, reference_true: Any,
                            persistence: Any, onset: Any) -> tuple[int, float, Any, Any, int, int]:
    window = check_range(window, "window", 1, integer=True)
    q = check_range(q, "q", 0, 1, low_open=True)
    reference = _check_reference(reference)
    if reference_true is None:
        reference_true = reference if isinstance(reference, str) else "plateau"
    else:
        reference_true = _check_reference(reference_true, "reference_true")
    persistence = window if persistence is None else check_range(
        persistence, "persistence", 1, integer=True)
    onset = check_range(onset, "onset", 1, integer=True)
    return window, q, reference, reference_true, persistence, onset


def recovery(trace: pd.DataFrame, phases: pd.DataFrame, *, window: int = 20, q: float = 0.9,
             reference: str | float | Mapping[int, float] = "plateau",
             reference_true: str | float | Mapping[int, float] | None = None,
             persistence: int | None = None, onset: int = 5) -> pd.DataFrame:
    """Recovery after each shift (version 2): one row per phase k ≥ 1 that has rows in the trace.

    With a_t = correct_t / b_t and ā_t the within-phase trailing accuracy (window w):

    * ``chance`` χ_k (from ``phases``, column ``chance``; 0 when absent): the accuracy of the
      best constant prediction; ``pre`` / ``plateau``: mean a_t over the last w steps of phase
      k−1 / of phase k; ``ceiling`` C_k.
    * ``reference`` A_ref: ``"plateau"`` (the learner's own; the default of a single run),
      ``"pre"``, ``"ceiling"``, a number in [0, 1], or a mapping phase -> value (what a study
      passes for its ``common`` reference: the same target for every learner, see
      :func:`common_reference`). ``target`` T_k = χ_k + q · (A_ref − χ_k): normalised to
      chance, so a learner at chance is never "at 90 %".
    * Onset t_on: the first s with ā_{τ_k+s+j} < T_k for all j in [0, ``onset``) (m_on = 5).
      No onset: the shift did not hurt (``dipped`` False, ``recovery_steps`` 0).
    * ``recovery_steps`` R_k = min{s ≥ t_on : ā_{τ_k+s+j} ≥ T_k for all j in [0, m)}, m =
      ``persistence`` (default w), counted from τ_k, the shift's first step (the ramp's first
      step for a gradual shift), the same for every learner. ``recovery_samples`` = Σ b_t over
      [τ_k, τ_k + R_k); ``onset_steps`` = t_on; ``below_steps`` = R_k − t_on;
      ``after_ramp_steps`` = max(0, R_k − W) for a gradual shift of width W (NaN when abrupt).
      No such s within the phase: ``censored`` (R_k NaN).
    * ``collapsed``: the plateau is within 0.05 of chance (A_plat − χ_k < 0.05); recovery is then
      censored whatever the reference.
    * ``drop`` D_k = pre − min_t ā_t; ``deficit`` RDA_k = mean over the phase of
      max(0, A_ref − ā_t).
    * ``shifted`` (from ``phases``; True when absent): False for a phase that changes nothing
      relative to the one before (flip rate 0, ...); such a row has no recovery values.
    * For label-noise phases (``label_kind`` "noise"), the same quantities against the original
      labels (``correct_true``) with suffix ``_true`` (χ from ``chance_true``, ceiling 1,
      reference ``reference_true``: by default the same kind as ``reference``); NaN elsewhere.

    Conventions: a phase with fewer than w rows uses the rows it has for its plateau; the
    persistences are not shortened (a dip or a recovery needs m_on / m rows); ties with the
    target count as reached (absolute tolerance 1e-12). When phase k−1 has no rows ``pre`` and
    ``drop`` are NaN; a NaN reference leaves the target and recovery undefined (NaN, not
    censored). Definitions and sources: docs/metrics.md.

    >>> tr = pd.DataFrame({"step": range(10), "phase": [0] * 3 + [1] * 7, "n": 10,
    ...                    "correct": [9, 9, 9, 2, 2, 2, 9, 9, 9, 9]})
    >>> ph = pd.DataFrame({"phase": [0, 1], "ceiling": 1.0, "chance": 0.1})
    >>> r = recovery(tr, ph, window=1, onset=2, persistence=2)  # target 0.1 + 0.9 · 0.8
    >>> r.loc[0, ["target", "onset_steps", "recovery_steps", "below_steps"]].tolist()
    [0.82, 0.0, 3.0, 3.0]
    >>> bool(r.loc[0, "dipped"]), bool(r.loc[0, "censored"]), bool(r.loc[0, "collapsed"])
    (True, False, False)
    """
    _check_frame(trace, "trace", ["step", "phase", "n", "correct"])
    tab = _phase_table(phases, ["ceiling"])
    opts = _check_recovery_options(window, q, reference, reference_true, persistence, onset)
    window, q, reference, reference_true, persistence, onset = opts
    ordered, _ = _ordered(trace)
    rows = _recovery_rows(ordered, tab, window=window, q=q, reference=reference,
                          reference_true=reference_true, persistence=persistence, onset=onset)
    first = tab.index[0] if len(tab) else None
    return _recovery_frame([r for k, r in rows.items() if k != first])


def _recovery_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The recovery rows as a frame with fixed dtypes (int phase, bool flags, float values)."""
    data: dict[str, np.ndarray] = {}
    for c in RECOVERY_COLUMNS:
        if c == "phase":
            data[c] = np.array([r[c] for r in rows], dtype=np.int64)
        elif c in BOOL_COLUMNS:
            data[c] = np.array([r.get(c) is True or r.get(c) == 1 for r in rows], dtype=bool)
        else:
            data[c] = np.array([r.get(c, math.nan) for r in rows], dtype=np.float64)
    return pd.DataFrame(data)


def common_reference(rows: pd.DataFrame, by: Sequence[str] = ("scenario",),
                     optimizer: str = "optimizer") -> pd.DataFrame:
    """The ``common`` recovery reference of a comparison (docs/metrics.md): per ``by`` group
    and phase, min(C_k, the highest mean plateau over seeds that any optimizer reached).

    ``rows``: run × phase rows with the ``by`` columns, ``optimizer``, ``phase``, ``plateau``
    and ``ceiling`` (``plateau_true`` too for the clean-label reference, capped at 1). Returns
    one row per group and phase: ``reference`` and ``reference_true`` (NaN without
    ``plateau_true``). Every learner of the comparison is then timed against the same target.

    >>> rows = pd.DataFrame({"scenario": "s", "optimizer": ["a", "a", "b", "b"],
    ...                      "phase": 1, "plateau": [0.8, 0.9, 0.6, 0.7], "ceiling": 0.8})
    >>> common_reference(rows)[["scenario", "phase", "reference"]].values.tolist()
    [['s', 1, 0.8]]
    """
    by = list(by)
    _check_frame(rows, "rows", [*by, optimizer, "phase", "plateau", "ceiling"])
    keys = [*by, "phase"]
    cols = ["plateau"] + (["plateau_true"] if "plateau_true" in rows.columns else [])
    means = rows.groupby([*keys, optimizer], sort=False, dropna=False)[cols].mean()
    best = means.groupby(level=list(range(len(keys))), sort=False).max()
    ceiling = rows.groupby(keys, sort=False, dropna=False)["ceiling"].first()
    out = pd.DataFrame(index=best.index)
    out["reference"] = np.fmin(best["plateau"], ceiling.reindex(best.index))
    out["reference_true"] = (np.fmin(best["plateau_true"], 1.0) if "plateau_true" in best
                             else math.nan)
    return out.reset_index()


def run_recovery(rows: pd.DataFrame, by: Sequence[str] = ("run_id",), suffix: str = ""
                 ) -> pd.DataFrame:
    """A run's shifts reduced to one value per run (the seed is the unit of replication):
    ``recovery_steps`` / ``recovery_samples`` the median over the run's shifted phases counting
    censored shifts as +inf (``censored`` when that median is infinite), ``censored_shifts``
    and ``shifts`` the counts, ``drop`` and ``deficit`` the mean. ``suffix`` ``"_true"`` reduces
    the clean-label columns. Runs without a shifted phase (with a value) are left out.

    >>> rows = pd.DataFrame({"run_id": "r", "phase": [1, 2, 3], "shifted": True,
    ...                      "recovery_steps": [4.0, 10.0, float("nan")],
    ...                      "recovery_samples": [40.0, 100.0, float("nan")],
    ...                      "censored": [False, False, True], "drop": 0.2, "deficit": 0.1})
    >>> run_recovery(rows)[["recovery_steps", "censored", "censored_shifts"]].values.tolist()
    [[10.0, False, 1]]
    """
    by = list(by)
    cols = [f"{c}{suffix}" for c in ("recovery_steps", "recovery_samples", "censored", "drop",
                                     "deficit")]
    _check_frame(rows, "rows", [*by, "phase", *cols])
    sub = rows
    if "shifted" in rows.columns:
        sub = rows[rows["shifted"].astype(bool)]
    rec, sam, cen, drop, deficit = cols
    cens = sub[cen].astype(bool)
    sub = sub[cens | sub[rec].notna()].assign(
        _t=lambda d: np.where(d[cen].astype(bool), np.inf, d[rec]),
        _s=lambda d: np.where(d[cen].astype(bool), np.inf, d[sam]),
        _c=lambda d: d[cen].astype(bool).astype(np.int64))
    g = sub.groupby(by, sort=False)
    out = pd.DataFrame({"_t": g["_t"].median(), "_s": g["_s"].median(),
                        "censored_shifts": g["_c"].sum(), "shifts": g.size(),
                        drop: g[drop].mean(), deficit: g[deficit].mean()})
    out[cen] = np.isinf(out["_t"])
    out[rec] = out["_t"].where(~out[cen])
    out[sam] = out["_s"].where(~out[cen])
    return out.drop(columns=["_t", "_s"]).reset_index()[
        [*by, rec, sam, cen, "censored_shifts", "shifts", drop, deficit]]


# ----------------------------------------------------------------------------------------------
# held-out evaluations: accuracy matrix, ACC, BWT, forgetting


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
        end = evals[evals["phase_end"].astype(bool).to_numpy()]
        if len(end):
            acc = end.groupby(["phase", "regime"])["accuracy"].mean()
            key = pd.MultiIndex.from_arrays([np.repeat(pk, J), np.tile(regs, K)],
                                            names=["phase", "regime"])
            out = acc.reindex(key).to_numpy(np.float64).reshape(K, J)
    R = pd.DataFrame(out, index=pd.Index(pk, name="after_phase"),
                     columns=pd.Index(regs, name="regime"))
    R.attrs["first_end"] = [int(np.flatnonzero(regime_of == r)[0]) for r in regs]
    R.attrs["final"] = regs.index(regime_of[-1]) if K else 0
    return R


def _layout(R: pd.DataFrame | ArrayLike) -> tuple[np.ndarray, np.ndarray, int]:
    """(A, first_end, final) of an accuracy matrix: a DataFrame from :func:`accuracy_matrix`
    carries its layout; any other (square) matrix is one regime per phase."""
    attrs = getattr(R, "attrs", None) or {}
    A = np.asarray(R.to_numpy() if isinstance(R, pd.DataFrame) else R, dtype=np.float64)
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
    l = np.arange(K)[:, None]
    keep = (l >= first[None, :]) & (l <= K - 2)
    best = np.max(np.where(keep, A[:, cols], -np.inf), axis=0)  # NaN propagates
    return float(np.mean(best - A[-1, cols]))


def max_average_accuracy(label_maps: Sequence[ArrayLike], groups: Sequence[Any],
                         class_weights: ArrayLike) -> float:
    """The highest ACC a single classifier can reach over J regimes (docs/metrics.md,
    "conflicting regimes").

    ``label_maps[j]``: regime j's held-out label per original class; ``groups[j]``: a key of
    its inputs (regimes with the same key show the classifier the same inputs, so it must give
    them one answer; regimes with different inputs, e.g. another rotation, can be told apart);
    ``class_weights``: the held-out class counts or shares. Per group and class the best answer
    is the label most of the group's regimes agree on:
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
    if w.size != maps[0].size or any(m.size != w.size for m in maps) or w.sum() <= 0:
        raise ShiftsimError("max_average_accuracy: every label map needs one label per class "
                            "and the class weights must match them and be positive")
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


# ----------------------------------------------------------------------------------------------
# per-phase summary


def summarize(trace: pd.DataFrame, phases: pd.DataFrame, evals: pd.DataFrame | None = None,
              **recovery_kwargs: Any) -> pd.DataFrame:
    """One row per planned phase: what ``RunResult.summary()`` returns.

    Columns: ``phase``, ``name``, ``start``, ``steps`` (planned L_k), ``steps_run`` (rows in the
    trace), ``samples`` (Σ b_t), ``online_acc``, ``online_acc_true`` (Cai et al. 2021), ``loss``
    (mean per-step loss), then the :func:`recovery` columns (``shifted``, ``chance``, ``pre``,
    ``plateau``, ``ceiling``, ``reference``, ``target``, ``dipped``, ``onset_steps``,
    ``recovery_steps``, ``recovery_samples``, ``below_steps``, ``after_ramp_steps``,
    ``censored``, ``collapsed``, ``drop``, ``deficit`` and their ``_true`` twins), and
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
    tab = _phase_table(phases, ["name", "start", "steps", "ceiling"])
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
    })
    for c in RECOVERY_COLUMNS[1:]:
        out[c] = rec[c].to_numpy()
    out["ceiling"] = tab["ceiling"].to_numpy(np.float64)
    out["shifted"] = [k != pk[0] and bool(tab.loc[k].get("shifted", True)) for k in pk]
    for c in BOOL_COLUMNS:
        out[c] = out[c].eq(True).to_numpy(bool)
    floats = [c for c in RECOVERY_COLUMNS[1:] if c not in BOOL_COLUMNS]
    out = out.astype({c: np.float64 for c in floats})
    out["heldout_acc"] = heldout.astype(np.float64)
    return out[SUMMARY_COLUMNS]


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


def median_interval(times: ArrayLike, censored: ArrayLike, level: float = 0.95, seed: int = 0,
                    n_boot: int = 10_000) -> tuple[float, float, float]:
    """Median recovery time over seeds with a percentile-bootstrap ``level`` interval
    (Efron & Tibshirani 1993): (median, low, high).

    Censored runs count as +inf (:func:`median_recovery`); the median is NaN (undefined) when
    half or more are censored. Each bootstrap resample draws the seeds with replacement; a
    resample whose median is undefined counts as +inf, so ``high`` is +inf when more than
    (1 − level)/2 of the resamples have half or more censored runs. NaN interval with fewer than
    two runs. Runs with a NaN time that are not censored (never reached the shift) are left out.

    >>> med, low, high = median_interval([4, 6, 5, 7, 30], [False] * 5)
    >>> med, low <= med <= high
    (6.0, True)
    >>> median_interval([4, 6, 5, float("nan")], [False, False, False, True])[2]
    inf
    """
    level = _check_level(level)
    n_boot = check_range(n_boot, "n_boot", 1, integer=True)
    t = _float_array(times, "times")
    c = _bool_array(censored, "censored")
    if t.shape != c.shape:
        raise ShiftsimError(f"times and censored must have the same length, got {t.size} "
                            f"and {c.size}")
    med = median_recovery(t, c)
    keep = c | ~np.isnan(t)
    x = np.where(c, np.inf, t)[keep]
    if x.size < 2:
        return (med, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    meds = np.median(np.sort(x[rng.integers(0, x.size, size=(n_boot, x.size))], axis=1), axis=1)
    meds = np.where(np.isnan(meds), np.inf, meds)  # inf + inf halves: still never recovered
    low = float(np.quantile(meds, (1 - level) / 2, method="lower"))
    high = float(np.quantile(meds, (1 + level) / 2, method="higher"))
    return (med, low, high)


def paired_p_value(differences: ArrayLike, test: str = "t") -> float:
    """Two-sided p-value of "no difference" from paired differences (one per seed).

    ``test="t"``: the paired Student t test (accuracies); ``"wilcoxon"``: the Wilcoxon
    signed-rank test (recovery times, which are skewed and capped where censored; zero
    differences are dropped, Wilcoxon's convention). NaN values are ignored. With fewer than two
    differences the p-value is NaN (nothing can be tested). When every difference is the same
    non-zero number (no spread, so no t statistic) the exact sign test gives 2 · 0.5^n; all
    zero gives 1.

    >>> round(paired_p_value([0.1, 0.12, 0.09, 0.11, 0.1]), 6)
    3.4e-05
    >>> paired_p_value([3, 3, 3, 3, 3], test="wilcoxon")
    0.0625
    >>> paired_p_value([0.0, 0.0, 0.0])
    1.0
    """
    if test not in PAIRED_TESTS:
        raise allowed(test, "paired test", PAIRED_TESTS)
    d = _float_array(differences, "differences")
    d = d[~np.isnan(d)]
    if d.size < 2:
        return math.nan
    if test == "wilcoxon":
        d = d[d != 0]
        if d.size == 0:
            return 1.0
        if np.all(d == d[0]):
            return float(min(1.0, 2 * 0.5 ** d.size))
        from scipy.stats import wilcoxon

        return float(wilcoxon(d).pvalue)
    if np.all(d == d[0]):
        return 1.0 if d[0] == 0 else float(min(1.0, 2 * 0.5 ** d.size))
    from scipy.stats import ttest_1samp

    return float(ttest_1samp(d, 0.0).pvalue)


def holm(p_values: ArrayLike) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (Holm 1979) over one family of tests.

    Sorted ascending, p_(i) is multiplied by (m − i + 1), made non-decreasing, capped at 1; a
    test is rejected at level α when its adjusted p-value is ≤ α. NaN p-values (tests that
    could not be made) are not counted in m and stay NaN.

    >>> holm([0.01, 0.04, 0.03, float("nan")]).round(3).tolist()
    [0.03, 0.06, 0.06, nan]
    """
    p = _float_array(p_values, "p_values")
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    adj = np.maximum.accumulate(np.minimum(1.0, p[order] * (m - np.arange(m))))
    out[order] = adj
    return out
