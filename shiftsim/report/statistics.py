"""The report's statistics: one value per seed, paired comparisons, Holm-adjusted verdicts.

The seed is the unit of replication (docs/metrics.md, "Comparing optimizers in a study"):

* every run is first reduced to one value per metric: its online accuracies, its held-out
  numbers, and its shifts reduced within the run (:func:`shiftsim.metrics.run_recovery`: the
  medians over its shifted phases of one kind of the recovery time, counting censored ones as
  +inf, the drop and the deficit), so seed × shift pairs are never counted as independent
  replicates;
* an optimizer is compared with the baseline paired by seed: accuracies and deficits by the mean
  difference with a Student-t interval and a paired t test, recovery times by the median
  difference with a bootstrap interval and a Wilcoxon signed-rank test (a run that never
  recovered counts as the phase length, so "never" is slower than every time);
* every comparison the report makes is one test of a family; the p-values are adjusted with
  Holm–Bonferroni over the whole family (:func:`shiftsim.metrics.holm`) and a comparison gets
  the verdict "better" or "worse" only when its adjusted p-value is at most α = 0.05; otherwise
  "no detectable difference with n seeds". With fewer than :data:`MIN_SEEDS` seeds nothing is
  judged.

>>> import pandas as pd
>>> a = pd.Series([.80, .82, .79, .85, .81], index=range(5))
>>> b = pd.Series([.70, .75, .71, .74, .72], index=range(5))
>>> d = paired(a, b, METRICS["online_acc"])
>>> round(d["difference"], 3), d["wins"], d["n"], d["p"] < 0.001
(0.09, 5, 5, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .. import metrics

#: fewer seeds than this: numbers without verdicts
MIN_SEEDS = 5
#: the family-wise error rate of a report's verdicts
ALPHA = 0.05


@dataclass(frozen=True)
class Metric:
    """A per-run number the report compares: its column, direction, digits and paired test;
    its label comes from the metrics' one table (:mod:`shiftsim.metrics.names`)."""

    column: str
    higher_is_better: bool
    digits: int = 3
    test: str = "t"

    @property
    def label(self) -> str:
        return metrics.label(self.column)

    @property
    def recovery(self) -> bool:
        return self.test == "wilcoxon"

    @property
    def unit(self) -> str:
        return " steps" if self.recovery else ""


METRICS: dict[str, Metric] = {m.column: m for m in (
    Metric("online_acc", True),
    Metric("online_acc_true", True),
    Metric("recovery_steps", False, 0, "wilcoxon"),
    Metric("recovery_steps_true", False, 0, "wilcoxon"),
    Metric("deficit", False),
    Metric("deficit_true", False),
    Metric("final_heldout", True),
    Metric("acc", True),
    Metric("bwt", True),
    Metric("forgetting", False),
)}


def paired(a: pd.Series, b: pd.Series, metric: Metric, *, censored_a: pd.Series | None = None,
           censored_b: pd.Series | None = None, cap: float | None = None,
           level: float = 0.95) -> dict[str, Any]:
    """Compare ``a`` with ``b`` (Series indexed by seed) on ``metric``, paired by seed.

    Returns ``difference`` (mean of a − b, or for recovery times the median, a censored time
    standing for ``cap``), ``low`` / ``high`` (a Student-t interval of the mean, or a
    percentile-bootstrap interval of the median), ``wins`` / ``losses`` / ``ties`` (seeds where
    ``a`` is better / worse / equal; a censored run never recovered, so it loses against a run
    that did and ties with another censored one), ``n`` (paired seeds) and ``p`` (paired t or
    Wilcoxon signed-rank; NaN with fewer than two pairs). ``untestable``: for recovery times, why
    the comparison is no test (``p`` NaN): on every seed both sides never recovered, or the
    shift hurt neither (both 0 steps); ``""`` otherwise.
    """
    x, y = a.astype(float), b.astype(float)
    ca = cb = pd.Series(False, index=x.index.union(y.index))
    if metric.recovery:
        big = float(cap) if cap is not None and math.isfinite(cap) else 1e12
        if censored_a is not None:
            ca = censored_a.reindex(ca.index).fillna(False).astype(bool)
            x = x.mask(ca.reindex(x.index), big)
        if censored_b is not None:
            cb = censored_b.reindex(cb.index).fillna(False).astype(bool)
            y = y.mask(cb.reindex(y.index), big)
    common = x.index.intersection(y.index, sort=True)
    dd = x.loc[common] - y.loc[common]
    keep = dd.notna()
    d = dd[keep].to_numpy(np.float64)
    better = d if metric.higher_is_better else -d
    out: dict[str, Any] = {"n": int(d.size), "wins": int((better > 0).sum()),
                           "losses": int((better < 0).sum()), "ties": int((d == 0).sum()),
                           "untestable": ""}
    if metric.recovery:
        med, low, high = metrics.median_interval(d, np.zeros(d.size, bool), level=level)
        out["untestable"] = _untestable(x.loc[common][keep], ca.loc[common][keep],
                                        cb.loc[common][keep], y.loc[common][keep])
    else:
        med, low, high = metrics.mean_interval(d, level=level)
    out.update(difference=med, low=low, high=high,
               p=metrics.paired_p_value(d, metric.test) if d.size and not out["untestable"]
               else math.nan)
    return out


def _untestable(x: pd.Series, ca: pd.Series, cb: pd.Series, y: pd.Series) -> str:
    """Why a recovery-time comparison is no test (``""`` when it is one): on every paired seed
    both sides never recovered, or the shift hurt neither side (both recovered in 0 steps, no
    dip), or a mix of the two, so every difference is a structural tie."""
    if not len(x):
        return ""
    both_never = (ca & cb).to_numpy(bool)
    both_unhurt = ((x == 0) & (y == 0) & ~ca & ~cb).to_numpy(bool)
    if not (both_never | both_unhurt).all():
        return ""
    if both_never.all():
        return "neither side recovers on any seed"
    if both_unhurt.all():
        return "the shift hurt neither side on any seed"
    return "on every seed both sides never recover or are not hurt"


def adjust(p: pd.Series, judged: pd.Series) -> pd.Series:
    """Holm-adjusted p-values over the comparisons that can be judged (others: NaN)."""
    out = pd.Series(np.nan, index=p.index)
    use = judged & p.notna()
    if use.any():
        out[use] = metrics.holm(p[use].to_numpy(np.float64))
    return out


def verdict(row: Any, alpha: float = ALPHA) -> str:
    """The verdict of one comparison row (``difference``, ``wins``, ``losses``, ``n``,
    ``p_holm``, ``higher_is_better``, ``judged``)."""
    if not row["judged"]:
        if row["n"] == 0:
            return "not judged (no paired values)"
        if row["n"] < MIN_SEEDS:
            return f"not judged (fewer than {MIN_SEEDS} seeds)"
        why = row.get("untestable") if hasattr(row, "get") else None
        return f"not compared: {why}" if isinstance(why, str) and why else "not judged"
    p = row["p_holm"]
    if p is None or (isinstance(p, float) and math.isnan(p)) or p > alpha:
        return f"no detectable difference with {int(row['n'])} seeds"
    diff = row["difference"]
    if diff and not math.isnan(diff):
        good = (diff > 0) == bool(row["higher_is_better"])
    else:  # a zero median difference: the side that wins more seeds
        good = row["wins"] > row["losses"]
    return "better" if good else "worse"
