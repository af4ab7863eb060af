"""What every metric module shares: the input checks, the step-ordered view of a trace and the
array kernels (ratios of sums, the within-phase trailing accuracy, tail means)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ..errors import ShiftsimError, SpecTypeError, allowed, check_range

#: the label sets a trace is scored against: the presented labels and the original ones
LABELS = ("stream", "true")


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


#: the phase plan's columns that are accuracies (shares of a batch), so within [0, 1]
LEVEL_COLUMNS = ("chance", "chance_true", "ceiling")


def _check_levels(tab: pd.DataFrame) -> None:
    """The plan's chance levels and ceilings are in [0, 1] (NaN: unknown) where it has them."""
    for col in LEVEL_COLUMNS:
        if col not in tab.columns:
            continue
        try:
            v = tab[col].to_numpy(dtype=np.float64)
        except (TypeError, ValueError):
            raise SpecTypeError(f"phases column {col!r} must be numbers in [0, 1], got "
                                f"{tab[col].tolist()!r}") from None
        bad = (v < 0) | (v > 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            k = _py(tab.index[i])
            raise ShiftsimError(f"phases has {col} {float(v[i])!r} for phase {k!r}; {col} "
                                "is an accuracy, so it must be in [0, 1] (or NaN when "
                                "unknown)")


def _check_known(present: Sequence[int], tab: pd.DataFrame | Sequence[int], what: str) -> None:
    """Every phase in ``present`` is one of the plan's (a phase table's index, or a list)."""
    known = tab.index.tolist() if isinstance(tab, pd.DataFrame) else list(tab)
    unknown = sorted(set(present) - set(known))
    if unknown:
        raise ShiftsimError(
            f"{what} has phase(s) {unknown} that are not in phases (phases: {known})"
        )


def _phase_bounds(phase: np.ndarray) -> dict[int, tuple[int, int]]:
    """{phase: (first row, end row)} for a non-decreasing phase column."""
    uniq, first = np.unique(phase, return_index=True)
    last = np.r_[first[1:], phase.size]
    return {int(k): (int(a), int(b)) for k, a, b in zip(uniq, first, last)}


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _trailing(correct: np.ndarray, n: np.ndarray, segment: np.ndarray, window: int
              ) -> np.ndarray:
    """ā_t on step-ordered arrays: Σ correct / Σ n over the last ``window`` rows of the same
    segment (a phase; or a run and phase): a new segment starts where ``segment`` changes."""
    T = correct.size
    if T == 0:
        return np.zeros(0)
    idx = np.arange(T)
    new = np.ones(T, dtype=bool)
    new[1:] = segment[1:] != segment[:-1]
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


def _float_array(values: ArrayLike, name: str) -> np.ndarray:
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise SpecTypeError(f"{name} must be numbers, got {values!r}") from None
    if x.ndim != 1:
        x = x.reshape(-1)
    return x


def _bool_array(values: ArrayLike, name: str) -> np.ndarray:
    """True/False per run: booleans (numpy, pandas' nullable ``boolean`` without missing values,
    Python) or the numbers 0 and 1; anything else (a string such as ``"False"``, which
    ``bool()`` would call true, a missing value, 2) is refused, never guessed."""
    a = np.asarray(values).reshape(-1)
    if a.dtype == bool:
        return a
    if pd.Series(a, dtype=object).isna().any():
        raise ShiftsimError(f"{name} must be True/False for every run, got a missing value")
    if a.dtype.kind in "iuf":
        bad = ~np.isin(a, (0, 1))
    elif a.dtype.kind == "O":
        bad = np.array([not (isinstance(v, (bool, np.bool_)) or (
            isinstance(v, (int, float, np.integer, np.floating)) and v in (0, 1)))
            for v in a.tolist()], dtype=bool)
    else:
        bad = np.ones(a.shape, dtype=bool)
    if bad.any():
        raise SpecTypeError(f"{name} must be True/False (or 1/0) for every run, got "
                            f"{a[bad].tolist()[0]!r}")
    return a.astype(bool)


def _py(value: Any) -> Any:
    """A numpy scalar as the Python value (for messages: ``5``, not ``np.int64(5)``)."""
    return value.item() if isinstance(value, np.generic) else value


def _column_names(value: Any, name: str) -> list[Any]:
    """A ``by``-style argument as a list of column names: a single name (a string) is one
    column, not a list of its letters."""
    if isinstance(value, str):
        return [value]
    try:
        return list(value)
    except TypeError:
        raise SpecTypeError(f"{name} must be a column name or a list of column names, got "
                            f"{value!r}") from None


def _check_counts(trace: pd.DataFrame, what: str = "trace") -> None:
    """Every row's ``correct`` (and ``correct_true``) is a count in [0, n], n ≥ 0 (vectorised;
    NaN is left to the metrics)."""
    n = trace["n"].to_numpy()
    for col in ("correct", "correct_true"):
        if col not in trace.columns:
            continue
        c = trace[col].to_numpy()
        try:
            bad = (c < 0) | (c > n) | (n < 0)
        except TypeError:
            raise SpecTypeError(f"{what} columns n and {col} must be numbers, got "
                                f"{trace[col].dtype} and {trace['n'].dtype}") from None
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            step = _py(trace["step"].iloc[i]) if "step" in trace.columns else i
            raise ShiftsimError(f"{what} has {col}={_py(c[i])!r} with n={_py(n[i])!r} at step "
                                f"{step!r}; "
                                f"{col} counts the batch's correct predictions, so it must be "
                                "in [0, n]")


def _check_level(level: float) -> float:
    return check_range(level, "level", 0, 1, low_open=True, high_open=True)
