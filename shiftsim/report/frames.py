"""The report's numbers, computed with pandas from :func:`shiftsim.store.load`'s DataFrames.

Every number comes from :mod:`shiftsim.metrics` (docs/metrics.md), with the seed as the unit of
replication (:mod:`shiftsim.report.statistics`):

* per run: the stream scores and per-phase summaries the store holds, recovery timed against the
  study's common reference (:attr:`shiftsim.store.StudyResults.phases`), and the run's shifts
  reduced to one value (:func:`shiftsim.metrics.run_recovery`);
* across seeds: :func:`~shiftsim.metrics.mean_interval` (mean and Student-t interval) for
  accuracies, drops and deficits; :func:`~shiftsim.metrics.median_interval` (median with
  censored runs as +inf, undefined when half or more are censored, bootstrap interval) and the
  censored fraction for recovery times;
* against the baseline: paired by seed, every comparison Holm-adjusted over the report's family.

Diverged runs keep the metrics of the steps they ran (docs/metrics.md) and are counted and
flagged; failed, incomplete and pending runs have no metrics and are counted. Nothing is dropped
silently. For label-noise scenarios the clean-label numbers (``*_true``) are the headline; for
scenarios whose regimes conflict (one input, several labels) ACC is shown next to its maximum
and BWT and forgetting are not compared; scenarios whose labels carry no signal are not ranked.
"""


from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .. import metrics
from .statistics import ALPHA, METRICS, MIN_SEEDS, Metric, adjust, paired, verdict
from .view import StudyView

__all__ = ["RANK_BOOT", "compared_metrics", "comparison_frame", "family_adjust",
           "first_place_frame", "kind_frame", "kind_values", "phase_frame", "rank_frame",
           "recovery_fields", "reduced_shifts", "run_values", "summary_frame"]


# one value per run (the unit of replication is the seed)


_REC_COLS = ["recovery_steps", "recovery_samples", "censored", "censored_shifts", "shifts",
             "drop", "deficit"]


def reduced_shifts(v: StudyView) -> pd.DataFrame:
    """One row per run and shift kind: its shifts of that kind reduced to one value each
    (:func:`shiftsim.metrics.run_recovery`), stream and clean-label (``_true``) columns."""
    ph = v.phases
    out = pd.DataFrame(columns=["run_id", "shift_kind"])
    if not len(ph):
        return out
    if "shift_kind" not in ph.columns:
        ph = ph.assign(shift_kind="")
    for sfx in ("", "_true"):
        if f"recovery_steps{sfx}" not in ph.columns:
            continue
        red = metrics.run_recovery(ph, suffix=sfx).rename(
            columns={"censored_shifts": f"censored_shifts{sfx}", "shifts": f"shifts{sfx}"})
        out = red if out.empty else out.merge(red, on=["run_id", "shift_kind"], how="outer")
    return out


def _fill_recovery(out: pd.DataFrame) -> pd.DataFrame:
    for sfx in ("", "_true"):
        for c in _REC_COLS:
            col = f"{c}{sfx}"
            if col not in out.columns:
                out[col] = np.nan
        out[f"censored{sfx}"] = out[f"censored{sfx}"].astype("boolean").fillna(False).astype(
            bool)
        for c in ("censored_shifts", "shifts"):
            out[f"{c}{sfx}"] = out[f"{c}{sfx}"].fillna(0).astype(np.int64)
    return out


def run_values(v: StudyView, reduced: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per run with metrics: ``scenario``, ``optimizer``, ``seed``, ``severity``,
    ``status``, the stream scores (``online_acc``, ``online_acc_true``, ``acc``, ``bwt``,
    ``forgetting``), ``final_heldout`` (R[K−1, regime of K−1]) and the run's shifts reduced to
    one value each (:func:`shiftsim.metrics.run_recovery`, against the common reference):
    ``recovery_steps``, ``recovery_samples``, ``censored``, ``censored_shifts``, ``shifts``,
    ``drop``, ``deficit`` and their ``_true`` twins (clean labels, label-noise phases). In a
    scenario whose shifts are of several kinds (:meth:`StudyView.mixed`) those columns are
    empty (``shifts`` 0): its shifts are reduced per kind (:func:`kind_values`)."""
    runs = v.runs_with_metrics()
    out = runs[["run_id", "scenario", "optimizer", "seed", "severity", "status", "online_acc",
                "online_acc_true", "acc", "bwt", "forgetting"]].copy()
    ph = v.phases
    if len(ph):
        last = ph.loc[ph.groupby("run_id")["phase"].idxmax(), ["run_id", "heldout_acc"]]
        out = out.merge(last.rename(columns={"heldout_acc": "final_heldout"}), on="run_id",
                        how="left")
        red = reduced_shifts(v) if reduced is None else reduced
        mixed = out.loc[out["scenario"].map(v.mixed).astype(bool), "run_id"]
        red = red[~red["run_id"].isin(mixed)].drop(columns="shift_kind")
        if len(red):
            out = out.merge(red, on="run_id", how="left")
    if "final_heldout" not in out.columns:
        out["final_heldout"] = np.nan
    return _fill_recovery(out).reset_index(drop=True)


def kind_values(v: StudyView, reduced: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per run and kind of shift (:meth:`shiftsim.Scenario.shift_kind`) in the
    scenarios whose shifts are of several kinds: ``run_id``, ``scenario``, ``optimizer``,
    ``seed``, ``severity``, ``status``, ``shift_kind`` and the recovery columns of
    :func:`run_values` over the run's shifts of that kind (docs/metrics.md: a run's shifts of
    one kind are reduced within the run, then aggregated over seeds)."""
    runs = v.runs_with_metrics()
    keys = runs[["run_id", "scenario", "optimizer", "seed", "severity", "status"]]
    keys = keys[keys["scenario"].map(v.mixed).astype(bool)]
    red = reduced_shifts(v) if reduced is None else reduced
    out = keys.merge(red, on="run_id", how="inner")
    out = out[out["shift_kind"].astype(str) != ""]
    return _fill_recovery(out).reset_index(drop=True)


def _mi(values: Any, level: float) -> tuple[float, float, float]:
    return metrics.mean_interval(np.asarray(values, dtype=float), level=level)


def _recovery_stats(rows: pd.DataFrame, level: float, sfx: str = "") -> dict[str, Any]:
    """Median recovery over seeds (bootstrap interval), censored counts: one value per run."""
    has = rows[rows[f"shifts{sfx}"] > 0]
    n = len(has)
    out: dict[str, Any] = {f"censored{sfx}": int(has[f"censored{sfx}"].sum()),
                           f"shifts{sfx}": n}
    for c in ("recovery_steps", "recovery_samples"):
        col = f"{c}{sfx}"
        if n:
            m, lo, hi = metrics.median_interval(has[col], has[f"censored{sfx}"], level=level)
        else:
            m = lo = hi = math.nan
        out[col], out[f"{col}_low"], out[f"{col}_high"] = m, lo, hi
    out[f"censored_fraction{sfx}"] = (metrics.censored_fraction(has[f"censored{sfx}"])
                                      if n else math.nan)
    return out


def _status_counts(runs: pd.DataFrame) -> dict[str, int]:
    vc = runs["status"].value_counts()
    return {
        "runs": int(len(runs)), "ok": int(vc.get("ok", 0)),
        "diverged": int(vc.get("diverged", 0)), "failed": int(vc.get("failed", 0)),
        "missing": int(vc.get("incomplete", 0) + vc.get("pending", 0)),
    }


def recovery_fields(sfx: str = "") -> list[str]:
    """The recovery columns of a summary row (``sfx`` ``"_true"``: the clean-label ones)."""
    out = []
    for c in ("recovery_steps", "recovery_samples"):
        out += [f"{c}{sfx}", f"{c}{sfx}_low", f"{c}{sfx}_high"]
    return out + [f"censored_fraction{sfx}", f"censored{sfx}", f"shifts{sfx}"]


def summary_frame(v: StudyView) -> pd.DataFrame:
    """Per scenario × optimizer: run counts, seeds, online accuracy (mean and interval over
    seeds), recovery (median over seeds with a bootstrap interval, censored fraction), drop,
    deficit, final held-out accuracy, ACC / BWT / forgetting for more than two phases and the
    scenario's maximum achievable ACC; clean-label twins (``*_true``) for label noise."""
    values = v.values if v.values is not None else run_values(v)
    rows = []
    for s in v.scenarios:
        for arm in v.arms:
            runs = v.runs[(v.runs["scenario"] == s) & (v.runs["optimizer"] == arm)]
            if runs.empty:
                continue
            val = values[(values["scenario"] == s) & (values["optimizer"] == arm)]
            row: dict[str, Any] = {"scenario": s, "severity": v.severity.get(s, math.nan),
                                   "optimizer": arm, **_status_counts(runs),
                                   "seeds": int(val["seed"].nunique()),
                                   "phases": v.n_phases.get(s, 0),
                                   "label_noise": v.noise.get(s, False),
                                   "no_signal": v.no_signal.get(s, False),
                                   "max_acc": v.max_acc.get(s, 1.0),
                                   "shift_kinds": len(v.kinds.get(s, ())),
                                   "ms_per_step": float(pd.to_numeric(
                                       runs["ms_per_step"], errors="coerce").mean())
                                   if "ms_per_step" in runs else math.nan}
            for c in ("online_acc", "online_acc_true", "drop", "deficit", "drop_true",
                      "deficit_true", "final_heldout"):
                row[c], row[f"{c}_low"], row[f"{c}_high"] = _mi(val[c], v.level)
            row.update(_recovery_stats(val, v.level))
            row.update(_recovery_stats(val, v.level, "_true"))
            multi = v.n_phases.get(s, 0) > 2
            for c in ("acc", "bwt", "forgetting"):
                m = _mi(val[c], v.level) if multi else (math.nan,) * 3
                row[c], row[f"{c}_low"], row[f"{c}_high"] = m
            rows.append(row)
    cols = ["scenario", "severity", "optimizer", "runs", "ok", "diverged", "failed", "missing",
            "seeds", "phases", "label_noise", "no_signal", "max_acc", "shift_kinds", "ms_per_step"]
    for c in ("online_acc", "online_acc_true"):
        cols += [c, f"{c}_low", f"{c}_high"]
    cols += recovery_fields() + recovery_fields("_true")
    for c in ("drop", "deficit", "drop_true", "deficit_true", "final_heldout", "acc", "bwt",
              "forgetting"):
        cols += [c, f"{c}_low", f"{c}_high"]
    return pd.DataFrame(rows, columns=cols)


def kind_frame(v: StudyView) -> pd.DataFrame:
    """Per scenario × kind of shift × optimizer, for the scenarios whose shifts are of several
    kinds: recovery (median over seeds with a bootstrap interval, censored fraction), drop and
    deficit (mean and interval over seeds), from each run's shifts of that kind reduced to one
    value (:func:`kind_values`); clean-label twins (``*_true``) for label noise."""
    values = v.kind_values if v.kind_values is not None else kind_values(v)
    rows = []
    for s in v.scenarios:
        if not v.mixed(s):
            continue
        for kind in v.kinds[s]:
            for arm in v.arms:
                val = values[(values["scenario"] == s) & (values["shift_kind"] == kind)
                             & (values["optimizer"] == arm)]
                if val.empty:
                    continue
                row: dict[str, Any] = {"scenario": s, "severity": v.severity.get(s, math.nan),
                                       "shift_kind": kind, "optimizer": arm,
                                       "label_noise": v.kind_noise.get((s, kind), False),
                                       "seeds": int(val["seed"].nunique())}
                row.update(_recovery_stats(val, v.level))
                row.update(_recovery_stats(val, v.level, "_true"))
                for c in ("drop", "deficit", "drop_true", "deficit_true"):
                    row[c], row[f"{c}_low"], row[f"{c}_high"] = _mi(val[c], v.level)
                rows.append(row)
    cols = ["scenario", "severity", "shift_kind", "optimizer", "label_noise", "seeds",
            *recovery_fields(), *recovery_fields("_true")]
    for c in ("drop", "deficit", "drop_true", "deficit_true"):
        cols += [c, f"{c}_low", f"{c}_high"]
    return pd.DataFrame(rows, columns=cols)


def phase_frame(v: StudyView) -> pd.DataFrame:
    """Per scenario × optimizer × phase: online accuracy (presented and original labels),
    recovery (median over seeds, bootstrap interval, censored count), drop, deficit and held-out
    accuracy at the phase's end. Phases without a shift have no recovery values."""
    ph = v.phases
    rows = []
    if ph.empty:
        return pd.DataFrame(rows)
    for s in v.scenarios:
        for arm in v.arms:
            sub = ph[(ph["scenario"] == s) & (ph["optimizer"] == arm)]
            for k, g in sub.groupby("phase", sort=True):
                ran = g[g["steps_run"].fillna(0) > 0]
                shifted = bool(g["shifted"].any()) if "shifted" in g else k >= 1
                row: dict[str, Any] = {
                    "scenario": s, "severity": v.severity.get(s, math.nan), "optimizer": arm,
                    "phase": int(k), "name": str(g["name"].iloc[0]),
                    "label_kind": str(g["label_kind"].iloc[0]) if "label_kind" in g else "",
                    "original_labels": metrics.judged_on_original(
                        g["label_kind"].iloc[0] if "label_kind" in g else "",
                        g["concept"].iloc[0] if "concept" in g else ""),
                    "shifted": shifted,
                    "ceiling": float(g["ceiling"].iloc[0]) if "ceiling" in g else math.nan,
                    "chance": float(g["chance"].iloc[0]) if "chance" in g else math.nan,
                    "steps": int(g["steps"].iloc[0]), "runs": int(len(ran)),
                }
                for c in ("online_acc", "online_acc_true", "drop", "deficit", "heldout_acc"):
                    row[c], row[f"{c}_low"], row[f"{c}_high"] = _mi(ran[c], v.level)
                for sfx in ("", "_true"):
                    if shifted and f"recovery_steps{sfx}" in ran:
                        reached = ran[ran[f"censored{sfx}"].astype(bool)
                                      | ran[f"recovery_steps{sfx}"].notna()]
                        per = pd.DataFrame({
                            f"recovery_steps{sfx}": reached[f"recovery_steps{sfx}"],
                            f"recovery_samples{sfx}": reached[f"recovery_samples{sfx}"],
                            f"censored{sfx}": reached[f"censored{sfx}"].astype(bool),
                            f"shifts{sfx}": 1})
                        row.update(_recovery_stats(per, v.level, sfx))
                    else:
                        counts = (f"censored{sfx}", f"shifts{sfx}")
                        row.update({c: 0 if c in counts else math.nan
                                    for c in recovery_fields(sfx)})
                rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# comparisons against the baseline


def compared_metrics(v: StudyView, scenario: str) -> list[Metric]:
    """The metrics a report compares in one scenario: the headline accuracy (clean labels for
    label noise), recovery time and deficit when the scenario has shifts, the final held-out
    accuracy, and for more than two phases ACC, plus BWT and forgetting unless its regimes
    conflict. None for a scenario without learnable signal."""
    if v.no_signal.get(scenario):
        return []
    out = [METRICS[v.headline(scenario, "online_acc")]]
    if v.shifted.get(scenario):
        out += [METRICS[v.headline(scenario, "recovery_steps")],
                METRICS[v.headline(scenario, "deficit")]]
    out.append(METRICS["final_heldout"])
    if v.n_phases.get(scenario, 0) > 2:
        out.append(METRICS["acc"])
        if not v.conflicting(scenario):
            out += [METRICS["bwt"], METRICS["forgetting"]]
    return out


#: the metrics of a run's shifts, which a scenario with shifts of several kinds compares per kind
_KIND_METRICS = ("recovery_steps", "recovery_steps_true", "deficit", "deficit_true")


def _by_seed(rows: pd.DataFrame, col: str) -> pd.Series:
    s = pd.Series(pd.to_numeric(rows[col], errors="coerce").to_numpy(float),
                  index=pd.Index(rows["seed"].to_numpy(), name="seed"))
    return s[~s.index.duplicated()]


def comparison_frame(v: StudyView) -> pd.DataFrame:
    """Every optimizer against the baseline, per scenario and compared metric, paired by seed,
    with p-values Holm-adjusted over all the comparisons that can be judged (≥ MIN_SEEDS
    seeds) and the verdict."""
    values = v.values if v.values is not None else run_values(v)
    kinds = v.kind_values if v.kind_values is not None else kind_values(v)
    rows = []
    for s in v.scenarios:
        sub = values[values["scenario"] == s]
        by_kind = kinds[kinds["scenario"] == s]
        steps = v.phases.loc[v.phases["scenario"] == s, "steps"] if len(v.phases) else []
        cap = float(np.max(steps)) if len(steps) else None
        for arm in v.arms:
            if v.is_baseline(arm):
                continue
            base = sub[sub["optimizer"] == v.baseline_of(arm)]
            mine = sub[sub["optimizer"] == arm]
            if mine.empty or base.empty:
                continue
            for m in compared_metrics(v, s):
                # a scenario with shifts of several kinds: its recovery metrics once per kind
                per_kind = v.mixed(s) and m.column in _KIND_METRICS
                scenario_metric = m
                for kind in (v.kinds[s] if per_kind else [""]):
                    a, b, m = mine, base, scenario_metric
                    if kind:  # the kind's own headline (clean labels for its label noise)
                        m = METRICS[v.kind_headline(s, kind, m.column)]
                        a = by_kind[(by_kind["optimizer"] == arm)
                                    & (by_kind["shift_kind"] == kind)]
                        b = by_kind[(by_kind["optimizer"] == v.baseline_of(arm))
                                    & (by_kind["shift_kind"] == kind)]
                    kw: dict[str, Any] = {}
                    if m.recovery:
                        cen = m.column.replace("recovery_steps", "censored")
                        kw = {"censored_a": _by_seed(a, cen).astype(bool),
                              "censored_b": _by_seed(b, cen).astype(bool), "cap": cap}
                    d = paired(_by_seed(a, m.column), _by_seed(b, m.column), m,
                               level=v.level, **kw)
                    # a side whose median recovery is undefined (half or more never recover):
                    # the difference then rests on the phase length standing for "never"
                    undefined = bool(m.recovery and any(
                        2 * int(kw[c].sum()) >= len(kw[c]) > 0
                        for c in ("censored_a", "censored_b")))
                    rows.append({"scenario": s, "severity": v.severity.get(s, math.nan),
                                 "optimizer": arm, "baseline": v.baseline_of(arm),
                                 "metric": m.column, "shift_kind": kind,
                                 "metric_label": f"{m.label} after {kind}" if kind else m.label,
                                 "difference": d["difference"],
                                 "low": d["low"], "high": d["high"], "n": d["n"],
                                 "wins": d["wins"], "losses": d["losses"], "ties": d["ties"],
                                 "higher_is_better": m.higher_is_better, "test": m.test,
                                 "p": d["p"], "untestable": d["untestable"],
                                 "median_undefined": undefined})
    cols = ["scenario", "severity", "optimizer", "baseline", "metric", "shift_kind",
            "metric_label",
            "difference", "low", "high", "n", "wins", "losses", "ties", "higher_is_better",
            "test", "p", "p_holm", "judged", "verdict", "untestable", "median_undefined"]
    df = pd.DataFrame(rows, columns=[c for c in cols if c not in ("p_holm", "judged",
                                                                   "verdict")])
    df["judged"] = (df["n"] >= MIN_SEEDS) & df["p"].notna()
    df["p_holm"] = adjust(df["p"], df["judged"])
    df["verdict"] = [verdict(r) for _, r in df.iterrows()] if len(df) else []
    return df[cols]


#: bootstrap resamples of the rank table
RANK_BOOT = 1000


def _first_tests(tables: list[pd.DataFrame]) -> list[tuple[list[int], np.ndarray, float]]:
    """Per scenario (a seed × optimizer table): the columns in order of their means (best
    first, NaN left out), the means, and the raw p-value of a paired t test over the seeds of
    the top against the runner-up (NaN with fewer than two ranked columns or fewer than
    :data:`MIN_SEEDS` paired seeds)."""
    out = []
    for t in tables:
        means = t.mean(axis=0, skipna=True).to_numpy(np.float64)
        order = [int(j) for j in np.argsort(-np.nan_to_num(means, nan=-np.inf), kind="stable")
                 if not np.isnan(means[j])]
        p = np.nan
        if len(order) >= 2:
            d = (t.iloc[:, order[0]] - t.iloc[:, order[1]]).dropna().to_numpy(np.float64)
            p = metrics.paired_p_value(d) if d.size >= MIN_SEEDS else np.nan
        out.append((order, means, float(p)))
    return out


def _clear_firsts(tables: list[pd.DataFrame], alpha: float = ALPHA,
                  p_holm: Sequence[float] | None = None) -> list[tuple[int | None, set[int]]]:
    """Per scenario (a seed × optimizer table): ``(winner, tied)``, the column of the top mean
    when a paired t test over the seeds puts it significantly above the runner-up (``p_holm``:
    the tests' adjusted p-values, one per table, as the report's whole family adjusted them;
    without it Holm over these tests alone; fewer than :data:`MIN_SEEDS` paired seeds: never),
    else ``None`` and the columns tied for first (the top, the runner-up and any other with the
    top's mean).

    >>> t = pd.DataFrame({"a": [.9, .91, .92, .93, .94], "b": [.8, .8, .81, .8, .82],
    ...                   "c": [.1] * 5})
    >>> u = pd.DataFrame({"a": [.9, .8, .9, .8, .9], "b": [.85] * 5, "c": [.1] * 5})
    >>> _clear_firsts([t, u])
    [(0, set()), (None, {0, 1})]
    >>> _clear_firsts([t[["a"]]])  # one optimizer with runs: nothing to rank it against
    [(None, set())]
    """
    tests = _first_tests(tables)
    if p_holm is None:
        pv = np.array([p for *_, p in tests], dtype=np.float64)
        adj = np.full(pv.size, np.nan)
        if np.isfinite(pv).any():
            adj[np.isfinite(pv)] = metrics.holm(pv[np.isfinite(pv)])
    else:
        adj = np.asarray(p_holm, dtype=np.float64)
    out: list[tuple[int | None, set[int]]] = []
    for (order, means, _), q in zip(tests, adj):
        if len(order) < 2:  # nothing to compare with: no first place, no tie
            out.append((None, set()))
            continue
        top = order[0]
        same = {j for j in order if means[j] == means[top]}
        if len(same) == 1 and q <= alpha:
            out.append((int(top), set()))
        else:
            out.append((None, {int(j) for j in same | set(order[:2])}))
    return out


def _rank_tables(v: StudyView, values: pd.DataFrame
                 ) -> tuple[list[str], list[str], list[pd.DataFrame]] | None:
    """The ranked scenarios, the ranked optimizers and per scenario a seed × optimizer table of
    the headline online accuracy; None with fewer than 3 optimizers or 2 ranked scenarios."""
    scen = [s for s in v.scenarios if not v.no_signal.get(s)]
    have = set(values.dropna(subset=["online_acc"])["optimizer"])
    arms = [a for a in v.arms if a in have]  # arms whose every run failed are not ranked
    if len(arms) < 3 or len(scen) < 2:
        return None
    tables = []
    for s in scen:
        col = v.headline(s, "online_acc")
        sub = values[values["scenario"] == s]
        t = sub.pivot_table(index="seed", columns="optimizer", values=col, aggfunc="first")
        tables.append(t.reindex(columns=arms))
    return scen, arms, tables


def first_place_frame(v: StudyView) -> pd.DataFrame:
    """The league's first-place tests, one per ranked scenario: ``scenario``, ``top`` and
    ``runner_up`` (by mean headline online accuracy), ``lead`` (the difference of their means),
    ``n`` paired seeds and ``p`` (paired t, raw); empty when the study has no league. They
    belong to the report's Holm family (:func:`family_adjust`)."""
    values = v.values if v.values is not None else run_values(v)
    got = _rank_tables(v, values)
    cols = ["scenario", "top", "runner_up", "lead", "n", "p", "duplicate"]
    if got is None:
        return pd.DataFrame(columns=cols)
    scen, arms, tables = got
    rows = []
    for s, t, (order, means, p) in zip(scen, tables, _first_tests(tables)):
        two = len(order) >= 2
        rows.append({"scenario": s, "top": arms[order[0]] if order else None,
                     "runner_up": arms[order[1]] if two else None,
                     "lead": float(means[order[0]] - means[order[1]]) if two else math.nan,
                     "n": int((t.iloc[:, order[0]] - t.iloc[:, order[1]]).notna().sum())
                     if two else 0, "p": p, "duplicate": False})
    return pd.DataFrame(rows, columns=cols)


def family_adjust(comparison: pd.DataFrame, firsts: pd.DataFrame
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Holm over the report's whole family (metrics.md: every paired comparison a report
    makes): the judged comparisons against the baseline and the league's first-place tests,
    adjusted together; a first-place test that is one of the comparisons (the top and the
    runner-up are an optimizer and its baseline: the same paired t test on the same accuracy)
    is counted once, and takes that comparison's adjusted p-value (``duplicate``). Returns both
    frames with ``p_holm`` (and the comparisons' ``verdict``) recomputed."""
    comparison, firsts = comparison.copy(), firsts.copy()
    use_c = comparison["judged"].astype(bool) & comparison["p"].notna()
    same: dict[int, Any] = {}  # first-place row -> the comparison row that is the same test
    acc = comparison[use_c & comparison["metric"].isin(["online_acc", "online_acc_true"])]
    for i, r in firsts.iterrows():
        hit = acc[(acc["scenario"] == r["scenario"])
                  & (((acc["optimizer"] == r["top"]) & (acc["baseline"] == r["runner_up"]))
                     | ((acc["optimizer"] == r["runner_up"]) & (acc["baseline"] == r["top"])))]
        if len(hit):
            same[i] = hit.index[0]
    firsts["duplicate"] = [i in same for i in firsts.index]
    use_f = (firsts["p"].notna() & ~firsts["duplicate"]) if len(firsts) else pd.Series(
        dtype=bool)
    p = pd.concat([comparison["p"], firsts["p"] if len(firsts) else pd.Series(dtype=float)],
                  ignore_index=True)
    judged = pd.concat([use_c, use_f if len(firsts) else pd.Series(dtype=bool)],
                       ignore_index=True)
    adj = adjust(p, judged).to_numpy()  # one Holm family (NaN outside it)
    comparison["p_holm"] = adj[:len(comparison)]
    firsts["p_holm"] = adj[len(comparison):] if len(firsts) else np.nan
    for i, j in same.items():  # the same test as a comparison: its adjusted p-value
        firsts.loc[i, "p_holm"] = comparison.loc[j, "p_holm"]
    comparison["verdict"] = [verdict(r) for _, r in comparison.iterrows()] \
        if len(comparison) else []
    return comparison, firsts


def _connected(present: np.ndarray) -> np.ndarray:
    """Per column of a scenario × optimizer presence matrix, a group id: optimizers are in one
    group when a chain of shared scenarios links them.

    >>> _connected(np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]], bool)).tolist()
    [0, 0, 0, 3]
    """
    parent = list(range(present.shape[1]))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for row in present:
        cols = np.flatnonzero(row)
        for j in cols[1:]:
            parent[find(int(j))] = find(int(cols[0]))
    return np.array([find(i) for i in range(present.shape[1])])


def rank_frame(v: StudyView, n_boot: int = RANK_BOOT, seed: int = 0
               ) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The league: each optimizer's mean rank over the ranked scenarios (rank 1 = the highest
    mean headline online accuracy over seeds in a scenario; ties share the average rank), with a
    percentile-bootstrap interval (seeds resampled within each scenario, paired across
    optimizers, since one seed is one stream), first places, and the mean rank per scenario
    family. None with fewer than 3 optimizers or 2 ranked scenarios. Scenarios without a
    learnable signal are left out.

    A first place counts only where the top mean is significantly above the runner-up's: a
    paired t test over the seeds (at least :data:`MIN_SEEDS` seeds), Holm-adjusted in the
    report's whole family (``v.first_places``, from :func:`family_adjust`; without it over the
    ranked scenarios alone); otherwise the two tie for first
    (``tied_first``: the scenarios where the optimizer is the top or the runner-up without
    such a difference, or shares the top mean).

    ``league`` numbers the groups of optimizers that share scenarios (directly or through
    others): with arms of several models that never share one (a study whose CNN and MLP run
    different scenarios), each group is its own league, the one over most scenarios first, and
    ranks compare only within one. An optimizer without runs in some scenario stays in its
    group."""
    values = v.values if v.values is not None else run_values(v)
    got = _rank_tables(v, values)
    if got is None:
        return None
    scen, arms, tables = got
    rng = np.random.default_rng(seed)

    def ranks(frames: list[pd.DataFrame]) -> np.ndarray:
        out = np.full((len(frames), len(arms)), np.nan)
        for i, t in enumerate(frames):
            means = t.mean(axis=0, skipna=True)
            out[i] = means.rank(ascending=False, method="average").to_numpy()
        return out

    point = ranks(tables)
    firsts = v.first_places
    clear = _clear_firsts(tables, p_holm=None if firsts is None or not len(firsts)
                          else firsts.set_index("scenario")["p_holm"].reindex(scen).to_numpy())
    boot = np.empty((n_boot, len(arms)))
    for b in range(n_boot):
        res = [t.iloc[rng.integers(0, len(t), len(t))] for t in tables]
        with warnings.catch_warnings():  # an optimizer without runs in a scenario: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            boot[b] = np.nanmean(ranks(res), axis=0)
    fam = [v.families.get(s, "") or s for s in scen]
    rows = []
    for j, arm in enumerate(arms):
        col = point[:, j]
        rows.append({"optimizer": arm, "mean_rank": float(np.nanmean(col)),
                     "low": float(np.nanquantile(boot[:, j], 0.025)),
                     "high": float(np.nanquantile(boot[:, j], 0.975)),
                     "first_places": int(sum(w == j for w, _ in clear)),
                     "tied_first": int(sum(j in tied for _, tied in clear)),
                     "scenarios": int(np.isfinite(col).sum())})
    league = pd.DataFrame(rows)
    # optimizers that never meet, not even through others (one model's arms against
    # another's), are ranked among their own: one league per connected group, largest first
    group = _connected(np.isfinite(point))
    sizes = {g: int(np.isfinite(point[:, group == g]).any(axis=1).sum()) for g in set(group)}
    order = sorted(sizes, key=lambda g: (-sizes[g], g))
    league["league"] = [order.index(g) for g in group]
    league["league_scenarios"] = [sizes[g] for g in group]  # the league's, not the arm's
    league = league.sort_values(["league", "mean_rank"], kind="stable").reset_index(drop=True)
    per = pd.DataFrame(point, columns=arms).assign(family=fam)
    families = per.groupby("family", sort=False).mean().T
    families.index.name = "optimizer"
    families = families.reindex(league["optimizer"]).reset_index()
    return league, families
