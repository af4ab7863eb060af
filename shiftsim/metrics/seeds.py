"""Statistics over seeds, the unit of replication of a study (docs/metrics.md): means with
Student-t or bootstrap intervals (per group too: :func:`mean_interval_by`), median recovery times
with censored runs as +inf, paired differences and tests, and Holm's adjustment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ..errors import ShiftsimError, SpecTypeError, allowed, check_range
from ._base import _bool_array, _check_frame, _check_level, _column_names, _float_array

__all__ = ["INTERVAL_METHODS", "PAIRED_TESTS", "censored_fraction", "holm", "mean_interval",
           "mean_interval_by", "median_interval", "median_recovery", "paired_difference",
           "paired_p_value"]

INTERVAL_METHODS = ("t", "bootstrap")
PAIRED_TESTS = ("t", "wilcoxon")


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
        half = float(_t_half_width(np.std(x, ddof=1), x.size, level))
        return (mean, mean - half, mean + half)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return (mean, float(low), float(high))


def _t_half_width(std: Any, n: Any, level: float) -> Any:
    """t_{(1+level)/2, n−1} · s/√n, elementwise (n ≥ 2; the quantile of n = 1 is unused)."""
    from scipy.special import stdtrit  # Student's t quantile; lighter than scipy.stats

    return stdtrit(np.maximum(n - 1, 1), (1 + level) / 2) * std / np.sqrt(n)


def mean_interval_by(df: pd.DataFrame, value: str, by: Sequence[str], level: float = 0.95
                     ) -> pd.DataFrame:
    """:func:`mean_interval` (Student t) of ``value`` in every group of ``by``, in one grouped
    pass: columns ``by``, ``mean``, ``std``, ``count``, ``low``, ``high`` (NaN bounds where a
    group has one row; NaN values are left out), groups sorted. ``by`` is a column name or a
    list of them; ``value`` must be a numeric column.

    >>> d = pd.DataFrame({"opt": ["a", "a", "a", "b"], "acc": [1.0, 2.0, 3.0, 0.5]})
    >>> mean_interval_by(d, "acc", ["opt"])[["opt", "mean", "count", "low"]].values.tolist()
    [['a', 2.0, 3, -0.484], ['b', 0.5, 1, nan]]
    """
    level = _check_level(level)
    by = _column_names(by, "by")
    _check_frame(df, "df", [*by, value])
    if not pd.api.types.is_numeric_dtype(df[value]):  # e.g. numbers in an object column
        column = df[value]
        try:
            numbers = pd.to_numeric(column, errors="coerce")
            bad = column.notna() & numbers.isna()
        except (TypeError, ValueError):  # lists, dicts ...
            numbers, bad = column, column.notna()
        if bad.any():
            raise SpecTypeError(f"mean_interval_by: column {value!r} must hold numbers, got "
                                f"{column[bad].iloc[0]!r}")
        df = df.copy()
        df[value] = numbers
    out = df.groupby(by, sort=True)[value].agg(["mean", "std", "count"]).reset_index()
    half = np.where(out["count"] > 1, _t_half_width(out["std"], out["count"], level), np.nan)
    out["low"], out["high"] = out["mean"] - half, out["mean"] + half
    return out


def median_recovery(times: ArrayLike, censored: ArrayLike) -> float:
    """Median recovery time over runs, counting censored runs as +inf (docs/metrics.md).

    Tie rule: with an even number of runs the median is the mean of the two middle values, so it
    is finite exactly when fewer than half of the runs are censored; when half or more are
    censored the median is undefined and NaN is returned (never +inf, never a mean that drops the
    censored runs). A run with a NaN time that is not censored (phase never reached, e.g. the run
    diverged earlier) has no recovery time and is left out. NaN when no run is left. Times are
    steps or samples, so never negative; ``censored`` is True/False (or 1/0) per run.

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
    if np.any(t < 0):
        raise ShiftsimError(f"times must be recovery times (>= 0, NaN for a run without one), "
                            f"got {float(t[t < 0][0])!r}")
    return _median_recovery(t, c)


def _median_recovery(t: np.ndarray, c: np.ndarray) -> float:
    """:func:`median_recovery` of checked arrays (any real ``t``: :func:`median_interval` takes
    differences too)."""
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
    ``censored`` is True/False (or 1/0) per run. ``times`` may be any real numbers: reports
    take the median of paired differences of recovery times (with nothing censored) too.

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
    med = _median_recovery(t, c)
    keep = c | ~np.isnan(t)
    x = np.where(c, np.inf, t)[keep]
    if x.size < 2:
        return (med, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    ordered = np.sort(x[rng.integers(0, x.size, size=(n_boot, x.size))], axis=1)
    # the middle pair's mean: what np.median computes, without partitioning sorted rows again
    meds = (ordered[:, (x.size - 1) // 2] + ordered[:, x.size // 2]) / 2
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
        if d.size <= _SIGN_FLIPS_UP_TO and np.unique(np.abs(d)).size < d.size:
            return _signed_rank_flips_p(d)
        from scipy.stats import wilcoxon

        return float(wilcoxon(d).pvalue)
    if np.all(d == d[0]):
        return 1.0 if d[0] == 0 else float(min(1.0, 2 * 0.5 ** d.size))
    from scipy.stats import ttest_1samp

    return float(ttest_1samp(d, 0.0).pvalue)


#: up to this many differences with tied magnitudes, scipy's wilcoxon enumerates all 2^n sign
#: flips (its permutation test; beyond, the normal approximation)
_SIGN_FLIPS_UP_TO = 13


def _signed_rank_flips_p(d: np.ndarray) -> float:
    """Two-sided p-value of the signed-rank sum of ``d`` (non-zero, some magnitudes tied)
    over all 2^n sign flips: the p-value scipy's ``wilcoxon`` gives there, bit for bit
    (tested with scipy 1.17), counted instead of enumerated. Average ranks are multiples of
    1/2, so twice each rank is an integer and the flips' rank sums are subset sums, counted by
    dynamic programming; p = 2 min(#(sum <= observed), #(sum >= observed)) / 2^n, capped at 1.
    (scipy's permutation test takes 48 ms for n = 10; the robustness league's report has 63.)

    >>> _signed_rank_flips_p(np.array([3.0, -2.0, 5.0, 5.0, 1.0, -4.0, 7.0, 2.0, 3.0]))
    0.109375
    """
    from scipy.stats import rankdata

    twice = np.rint(2 * rankdata(np.abs(d))).astype(np.int64)
    observed = int(twice[d > 0].sum())
    counts = np.zeros(int(twice.sum()) + 1, dtype=np.int64)
    counts[0] = 1
    for v in twice:  # add one difference: its rank in the sum or not
        counts[v:] = counts[v:] + counts[:-v]
    total = float(2 ** d.size)
    less = float(counts[:observed + 1].sum()) / total
    greater = float(counts[observed:].sum()) / total
    return float(min(1.0, min(less, greater) * 2))


def holm(p_values: ArrayLike) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (Holm 1979) over one family of tests.

    Sorted ascending, p_(i) is multiplied by (m − i + 1), made non-decreasing, capped at 1; a
    test is rejected at level α when its adjusted p-value is ≤ α. NaN p-values (tests that
    could not be made) are not counted in m and stay NaN; every other p-value must be in
    [0, 1].

    >>> holm([0.01, 0.04, 0.03, float("nan")]).round(3).tolist()
    [0.03, 0.06, 0.06, nan]
    """
    p = _float_array(p_values, "p_values")
    bad = (p < 0) | (p > 1)
    if bad.any():
        raise ShiftsimError(f"p_values must be in [0, 1] (NaN for a test not made), got "
                            f"{float(p[bad][0])!r}")
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    adj = np.maximum.accumulate(np.minimum(1.0, p[order] * (m - np.arange(m))))
    out[order] = adj
    return out
