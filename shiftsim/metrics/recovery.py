"""Recovery after a shift (version 2, docs/metrics.md): the target normalised to chance, the
onset of the dip, the time until the trailing accuracy holds the target, censoring and collapse,
drop and deficit; the ``common`` reference of a comparison; a run's shifts reduced to one value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ShiftsimError, SpecTypeError, allowed, check_range
from ._base import (
    _bool_array,
    _check_counts,
    _check_frame,
    _check_known,
    _check_levels,
    _column_names,
    _ordered,
    _phase_bounds,
    _phase_table,
    _ratio,
    _tail_mean,
    _trailing,
)

__all__ = ["BOOL_COLUMNS", "COLLAPSE_MARGIN", "RECOVERY_COLUMNS", "RECOVERY_OPTIONS",
           "REFERENCES", "TOLERANCE", "common_reference", "judged_on_original",
           "original_label_rows", "plan_recovery_records", "recovery", "recovery_records",
           "run_recovery"]

REFERENCES = ("plateau", "pre", "ceiling")
RECOVERY_OPTIONS = ("window", "q", "reference", "reference_true", "persistence", "onset")
#: ā_t ≥ target is tested with this absolute tolerance (exact ties count as reached)
TOLERANCE = 1e-12
#: a plateau less than this above chance is a collapse (never counts as recovered; the
#: comparison has the tolerance above, so that 0.15 − 0.1 is not below 0.05)
COLLAPSE_MARGIN = 0.05

_PER_LABELS = [
    "chance", "pre", "plateau", "reference", "target", "dipped", "onset_steps",
    "recovery_steps", "recovery_samples", "below_steps", "after_ramp_steps", "onset_samples",
    "below_samples", "after_ramp_samples", "censored", "collapsed", "drop", "deficit",
]
RECOVERY_COLUMNS = ["phase", "shifted", "ceiling", *_PER_LABELS,
                    *[f"{c}_true" for c in _PER_LABELS]]
BOOL_COLUMNS = ("shifted", "dipped", "censored", "collapsed", "dipped_true", "censored_true",
                "collapsed_true")


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
                           "after_ramp_steps": math.nan, "onset_samples": math.nan,
                           "below_samples": math.nan, "after_ramp_samples": math.nan,
                           "censored": False}
    below = seg < target - TOLERANCE
    starts = _window_starts(below, onset)
    R: int | None
    if starts.size == 0:  # never below the target for m_on steps: the shift did not hurt
        R = 0
    else:
        t_on = int(starts[0])
        out["dipped"] = True
        out["onset_steps"] = float(t_on)
        out["onset_samples"] = float(n_seg[:t_on].sum())
        ok = _window_starts(~below, persistence)
        ok = ok[ok >= t_on]
        R = int(ok[0]) if ok.size else None
    if collapsed or R is None:  # at chance: never counts as recovered
        out["censored"] = True
        return out
    out["recovery_steps"] = float(R)
    out["recovery_samples"] = float(n_seg[:R].sum())
    t_on = int(out["onset_steps"]) if out["dipped"] else R
    out["below_steps"] = float(R - t_on)
    out["below_samples"] = float(n_seg[t_on:R].sum())
    if width:
        out["after_ramp_steps"] = float(max(0, R - width))
        out["after_ramp_samples"] = float(n_seg[min(width, R):R].sum())
    return out


#: the columns of a phase plan that recovery reads
PLAN_COLUMNS = ("shifted", "label_kind", "concept", "chance", "chance_true", "ceiling", "width")


def judged_on_original(label_kind: Any, concept: Any = "") -> bool:
    """True when a phase's labels are noise around the original concept, so that it is judged
    on the original labels (``*_true``): label noise (``other``, ``uniform``: ``label_kind``
    ``"noise"``) and a partial ``permute`` / ``pair`` whose concept is still the original
    labels (``"concept + noise"`` below 0.5, ``concept`` ``"original"``). A partial flip of
    0.5 or more (``concept`` ``"flipped"``) and a full one are judged on the stream's labels,
    as is a phase without a label shift, and a partial flip whose ``concept`` is not known.
    Tuning, recovery and reports all use this rule.

    >>> judged_on_original("noise"), judged_on_original("concept + noise", "original")
    (True, True)
    >>> judged_on_original("concept + noise", "flipped"), judged_on_original("concept")
    (False, False)
    """
    kind = str(label_kind)
    return kind == "noise" or (kind == "concept + noise" and str(concept) == "original")


def original_label_rows(phases: pd.DataFrame) -> pd.Series:
    """:func:`judged_on_original` for every row of a phase table or phases frame (its
    ``label_kind`` and, where present, ``concept`` columns), vectorised: a bool Series on
    ``phases``' index. Without ``label_kind`` no row is.

    >>> original_label_rows(pd.DataFrame({"label_kind": ["noise", "concept + noise",
    ...                                                  "concept + noise", "none"],
    ...                                   "concept": ["original", "original", "flipped",
    ...                                               "original"]})).tolist()
    [True, True, False, False]
    """
    if "label_kind" not in phases.columns:
        return pd.Series(False, index=phases.index, dtype=bool)
    kind = phases["label_kind"].astype(str)
    original = phases["concept"].astype(str) == "original" if "concept" in phases.columns \
        else pd.Series(False, index=phases.index)
    return ((kind == "noise") | ((kind == "concept + noise") & original)).astype(bool)


def _recovery_rows(trace: pd.DataFrame, tab: pd.DataFrame, *, window: int, q: float,
                   reference: Any, reference_true: Any, persistence: int, onset: int
                   ) -> dict[int, dict[str, Any]]:
    """Recovery quantities (stream and clean labels) for every phase present in the
    (step-ordered) trace, phase 0 included."""
    return _plan_recovery_rows(trace["n"].to_numpy(), trace["phase"].to_numpy(),
                               _corrects(trace), _plan_of(tab), window=window, q=q,
                               reference=reference, reference_true=reference_true,
                               persistence=persistence, onset=onset)


def _plan_of(tab: pd.DataFrame) -> dict[Any, dict[str, Any]]:
    """A phase table's rows as dicts by phase, in its order, read once (a pandas row lookup
    per phase and label set cost more than the recovery arithmetic)."""
    columns = {c: tab[c].tolist() for c in PLAN_COLUMNS if c in tab.columns}
    return {k: {c: v[i] for c, v in columns.items()} for i, k in enumerate(tab.index)}


def _corrects(trace: pd.DataFrame) -> dict[str, np.ndarray]:
    """A trace's ``correct`` and, where recorded, ``correct_true`` columns."""
    return {c: trace[c].to_numpy() for c in ("correct", "correct_true") if c in trace.columns}


def _plan_recovery_rows(n: np.ndarray, phase: np.ndarray, corrects: Mapping[str, np.ndarray],
                        infos: Mapping[int, Mapping[str, Any]], *, window: int, q: float,
                        reference: Any, reference_true: Any, persistence: int, onset: int
                        ) -> dict[int, dict[str, Any]]:
    """:func:`_recovery_rows` on a step-ordered trace's columns (``corrects``: ``correct`` and,
    where recorded, ``correct_true``) and the plan's rows by phase (``infos``: each phase's
    ``PLAN_COLUMNS``, ``ceiling`` required, in phase order)."""
    bounds = _phase_bounds(phase)
    _check_known(list(bounds), list(infos), "trace")
    first = next(iter(infos), None)
    sets = [("stream", "correct", "")]
    if "correct_true" in corrects:
        sets.append(("true", "correct_true", "_true"))
    rows: dict[int, dict[str, Any]] = {k: {"phase": k} for k in bounds}
    for labels, col, sfx in sets:
        correct = corrects[col]
        a = _ratio(correct.astype(np.float64), n.astype(np.float64))
        abar = _trailing(correct, n, phase, window)
        ref_kind = reference if labels == "stream" else reference_true
        for k, (lo, hi) in bounds.items():
            info = infos[k]
            row = rows[k]
            shifted = k != first and bool(info.get("shifted", True))
            noise = judged_on_original(info.get("label_kind", ""), info.get("concept", ""))
            chance = float(info.get("chance", 0.0)) if labels == "stream" else float(
                info.get("chance_true", info.get("chance", 0.0)))
            values: dict[str, Any] = {
                "chance": chance, "pre": math.nan, "plateau": _tail_mean(a, lo, hi, window),
                "reference": math.nan, "target": math.nan, "dipped": False,
                "onset_steps": math.nan, "recovery_steps": math.nan,
                "recovery_samples": math.nan, "below_steps": math.nan,
                "after_ramp_steps": math.nan, "onset_samples": math.nan,
                "below_samples": math.nan, "after_ramp_samples": math.nan, "censored": False,
                "collapsed": False, "drop": math.nan, "deficit": math.nan,
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
                values["collapsed"] = bool(
                    values["plateau"] - chance < COLLAPSE_MARGIN - TOLERANCE)
                ref = _reference_value(ref_kind, k, labels, {**row, **values})
                seg = abar[lo:hi]
                values["reference"] = ref
                values["drop"] = values["pre"] - float(np.min(seg))
                if not math.isnan(ref):
                    values["deficit"] = float(np.mean(np.maximum(0.0, ref - seg)))
                # an unknown chance level (a plan without it): no target, so no recovery time
                # (never "not hurt"); a NaN chance is never a collapse either
                if not (math.isnan(ref) or math.isnan(chance)):
                    target = chance + q * (ref - chance)
                    values["target"] = target
                    values.update(_recover(seg, n[lo:hi], target, persistence=persistence,
                                           onset=onset, width=int(info.get("width", 0) or 0),
                                           collapsed=values["collapsed"]))
                elif values["collapsed"]:  # at chance: censored whatever the reference
                    values["censored"] = True
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
      ``after_ramp_steps`` = max(0, R_k − W) for a gradual shift of width W (NaN when abrupt);
      each also in samples (``onset_samples``, ``below_samples``, ``after_ramp_samples``: Σ b_t
      over the same steps).
      No such s within the phase: ``censored`` (R_k NaN).
    * ``collapsed``: the plateau is within 0.05 of chance (A_plat − χ_k < 0.05); recovery is then
      censored whatever the reference.
    * ``drop`` D_k = pre − min_t ā_t; ``deficit`` RDA_k = mean over the phase of
      max(0, A_ref − ā_t).
    * ``shifted`` (from ``phases``; True when absent): False for a phase that changes nothing
      relative to the one before (flip rate 0, ...); such a row has no recovery values.
    * For phases judged on the original labels (:func:`judged_on_original`: label noise, a
      partial ``permute`` / ``pair`` below 0.5), the same quantities against the original
      labels (``correct_true``) with suffix ``_true`` (χ from ``chance_true``, ceiling 1,
      reference ``reference_true``: by default the same kind as ``reference``); NaN elsewhere.

    Conventions: a phase with fewer than w rows uses the rows it has for its plateau; the
    persistences are not shortened (a dip or a recovery needs m_on / m rows); ties with the
    target count as reached, and a plateau exactly 0.05 above chance is not a collapse (absolute
    tolerance 1e-12 both). When phase k−1 has no rows ``pre`` and ``drop`` are NaN; a NaN
    reference leaves the target and recovery undefined (NaN; censored only when the learner
    collapsed); a NaN chance level (a plan without it) leaves the target and recovery
    undefined too (the deficit needs only the reference). Definitions and sources:
    docs/metrics.md.

    >>> tr = pd.DataFrame({"step": range(10), "phase": [0] * 3 + [1] * 7, "n": 10,
    ...                    "correct": [9, 9, 9, 2, 2, 2, 9, 9, 9, 9]})
    >>> ph = pd.DataFrame({"phase": [0, 1], "ceiling": 1.0, "chance": 0.1})
    >>> r = recovery(tr, ph, window=1, onset=2, persistence=2)  # target 0.1 + 0.9 · 0.8
    >>> r.loc[0, ["target", "onset_steps", "recovery_steps", "below_steps"]].tolist()
    [0.82, 0.0, 3.0, 3.0]
    >>> bool(r.loc[0, "dipped"]), bool(r.loc[0, "censored"]), bool(r.loc[0, "collapsed"])
    (True, False, False)
    """
    return _recovery_frame(recovery_records(
        trace, phases, window=window, q=q, reference=reference, reference_true=reference_true,
        persistence=persistence, onset=onset))


def recovery_records(trace: pd.DataFrame, phases: pd.DataFrame, **options: Any
                     ) -> list[dict[str, Any]]:
    """:func:`recovery`'s rows as dicts (``options``: its keyword arguments), for callers that
    gather the rows of many runs into one frame (a study's common-reference recompute)."""
    _check_unknown_options(options)
    _check_frame(trace, "trace", ["step", "phase", "n", "correct"])
    _check_counts(trace)
    tab = _phase_table(phases, ["ceiling"])
    _check_levels(tab)
    opts = _recovery_options(options)
    ordered, _ = _ordered(trace)
    return _records(ordered["n"].to_numpy(), ordered["phase"].to_numpy(), _corrects(ordered),
                    _plan_of(tab), opts)


def plan_recovery_records(n: np.ndarray, phase: np.ndarray, corrects: Mapping[str, np.ndarray],
                          plan: Mapping[int, Mapping[str, Any]], **options: Any
                          ) -> list[dict[str, Any]]:
    """:func:`recovery_records` from arrays, for a caller that has a run's trace columns and its
    phase plan at hand (a study's common-reference recompute over thousands of runs: no
    frame per run): ``n``, ``phase`` and ``corrects`` (``correct``, optionally
    ``correct_true``) in step order with the phases non-decreasing (not checked here;
    :func:`recovery_records` checks and orders a frame); ``plan``: each phase's row of the
    phase plan (``ceiling`` and what else of ``PLAN_COLUMNS`` it has) by phase, in phase
    order. The same rows as :func:`recovery_records` on the same trace and plan.

    >>> import numpy as np
    >>> rows = plan_recovery_records(
    ...     np.full(10, 10), np.array([0] * 3 + [1] * 7),
    ...     {"correct": np.array([9, 9, 9, 2, 2, 2, 9, 9, 9, 9])},
    ...     {0: {"ceiling": 1.0, "chance": 0.1}, 1: {"ceiling": 1.0, "chance": 0.1}},
    ...     window=1, onset=2, persistence=2)
    >>> [rows[0][k] for k in ("target", "onset_steps", "recovery_steps", "below_steps")]
    [0.82, 0.0, 3.0, 3.0]
    """
    _check_unknown_options(options)
    return _records(n, phase, corrects, plan, _recovery_options(options))


def _check_unknown_options(options: Mapping[str, Any]) -> None:
    unknown = sorted(set(options) - set(RECOVERY_OPTIONS))
    if unknown:
        raise allowed(unknown[0], "recovery option", RECOVERY_OPTIONS)


def _recovery_options(options: Mapping[str, Any]) -> tuple[int, float, Any, Any, int, int]:
    """The recovery keyword arguments checked, defaults filled in (:func:`recovery`'s)."""
    return _check_recovery_options(
        options.get("window", 20), options.get("q", 0.9), options.get("reference", "plateau"),
        options.get("reference_true"), options.get("persistence"), options.get("onset", 5))


def _records(n: np.ndarray, phase: np.ndarray, corrects: Mapping[str, np.ndarray],
             plan: Mapping[Any, Mapping[str, Any]], opts: tuple[int, float, Any, Any, int, int]
             ) -> list[dict[str, Any]]:
    """The recovery rows of every phase but the plan's first (nothing to recover from)."""
    window, q, reference, reference_true, persistence, onset = opts
    rows = _plan_recovery_rows(n, phase, corrects, plan, window=window, q=q,
                               reference=reference, reference_true=reference_true,
                               persistence=persistence, onset=onset)
    first = next(iter(plan), None)
    return [r for k, r in rows.items() if k != first]


def _recovery_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The recovery rows as a frame with fixed dtypes (int phase, bool flags, float values);
    rows may carry other keys (a ``run_id``: kept as a column)."""
    data: dict[str, Any] = {}
    if rows and "run_id" in rows[0]:
        data["run_id"] = [r["run_id"] for r in rows]
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
    by = _column_names(by, "by")
    _check_frame(rows, "rows", [*by, optimizer, "phase", "plateau", "ceiling"])
    keys = [*by, "phase"]
    cols = ["plateau"] + (["plateau_true"] if "plateau_true" in rows.columns else [])
    means = rows.groupby([*keys, optimizer], sort=False, dropna=False)[cols].mean()
    best = means.groupby(level=list(range(len(keys))), sort=False).max()
    ceiling = rows.groupby(keys, sort=False, dropna=False)["ceiling"].first()
    out = pd.DataFrame(index=best.index)
    out["reference"] = np.fmin(best["plateau"], ceiling.reindex(best.index))
    # capped at 1; NaN where no run has a clean-label plateau (not 1: that would time every
    # learner against perfection)
    out["reference_true"] = (np.minimum(best["plateau_true"], 1.0) if "plateau_true" in best
                             else math.nan)
    return out.reset_index()


def run_recovery(rows: pd.DataFrame, by: Sequence[str] = ("run_id",), suffix: str = ""
                 ) -> pd.DataFrame:
    """A run's shifts of one kind reduced to one value (the seed is the unit of replication):
    ``recovery_steps`` / ``recovery_samples`` the median over the run's shifted phases of that
    kind counting censored shifts as +inf (``censored`` when that median is infinite),
    ``censored_shifts`` and ``shifts`` the counts, ``drop`` and ``deficit`` the median over the
    same shifts (never censored). With a ``shift_kind`` column (the phase plan's,
    :meth:`shiftsim.Scenario.shift_kind`) there is one row per run and kind, and the output has
    that column; without it every shift of a run counts as one kind. ``suffix`` ``"_true"``
    reduces the clean-label columns. Runs without a shifted phase (with a value) are left out.

    >>> rows = pd.DataFrame({"run_id": "r", "phase": [1, 2, 3], "shifted": True,
    ...                      "recovery_steps": [4.0, 10.0, float("nan")],
    ...                      "recovery_samples": [40.0, 100.0, float("nan")],
    ...                      "censored": [False, False, True], "drop": 0.2, "deficit": 0.1})
    >>> run_recovery(rows)[["recovery_steps", "censored", "censored_shifts"]].values.tolist()
    [[10.0, False, 1]]
    >>> kinds = rows.assign(shift_kind=["Rotate", "LabelFlip(permute)", "Rotate"])
    >>> run_recovery(kinds)[["shift_kind", "recovery_steps", "censored"]].values.tolist()
    [['Rotate', nan, True], ['LabelFlip(permute)', 10.0, False]]
    """
    by = _column_names(by, "by")
    cols = [f"{c}{suffix}" for c in ("recovery_steps", "recovery_samples", "censored", "drop",
                                     "deficit")]
    _check_frame(rows, "rows", [*by, "phase", *cols])
    sub = rows
    if "shifted" in rows.columns:
        sub = rows[_bool_array(rows["shifted"], "rows column 'shifted'")]
    kind = ["shift_kind"] if "shift_kind" in rows.columns and "shift_kind" not in by else []
    if kind:
        sub = sub.assign(shift_kind=sub["shift_kind"].fillna("").astype(str))
    rec, sam, cen, drop, deficit = cols
    # True/False (or 1/0) on every shifted row: a string "False" is not censored
    sub = sub.assign(**{cen: _bool_array(sub[cen], f"rows column {cen!r}")})
    cens = sub[cen]
    sub = sub[cens | sub[rec].notna()].assign(
        _t=lambda d: np.where(d[cen], np.inf, d[rec]),
        _s=lambda d: np.where(d[cen], np.inf, d[sam]),
        _c=lambda d: d[cen].astype(np.int64))
    g = sub.groupby([*by, *kind], sort=False)
    out = pd.DataFrame({"_t": g["_t"].median(), "_s": g["_s"].median(),
                        "censored_shifts": g["_c"].sum(), "shifts": g.size(),
                        drop: g[drop].median(), deficit: g[deficit].median()})
    out[cen] = np.isinf(out["_t"])
    out[rec] = out["_t"].where(~out[cen])
    out[sam] = out["_s"].where(~out[cen])
    return out.drop(columns=["_t", "_s"]).reset_index()[
        [*by, *kind, rec, sam, cen, "censored_shifts", "shifts", drop, deficit]]
