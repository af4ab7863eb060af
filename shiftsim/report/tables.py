"""The report's tables, computed with pandas from :func:`shiftsim.store.load`'s DataFrames.

Every number comes from :mod:`shiftsim.metrics` (``docs/metrics.md``):

* per run, the store already holds ``metrics.summarize`` (per phase) and the stream scores
  (online accuracy, ACC, BWT, forgetting); nothing here re-derives them from traces;
* across seeds: :func:`~shiftsim.metrics.mean_interval` (mean and 95 % Student-t interval) for
  accuracies, :func:`~shiftsim.metrics.median_recovery` (censored runs count as +inf; undefined
  when half or more are censored) and :func:`~shiftsim.metrics.censored_fraction` for recovery
  times, :func:`~shiftsim.metrics.paired_difference` (paired by seed) for comparisons.

Diverged runs keep the metrics of the steps they ran (docs/metrics.md) and are counted and
flagged; failed, incomplete and pending runs have no metrics and are counted. Nothing is dropped
silently.

>>> import pandas as pd
>>> d = paired(pd.Series([30.0, 50.0, float("nan")], index=[0, 1, 2]),
...            pd.Series([60.0, 40.0, float("nan")], index=[0, 1, 2]),
...            censored_a=pd.Series([False, False, True], index=[0, 1, 2]),
...            censored_b=pd.Series([False, False, False], index=[0, 1, 2]),
...            higher_is_better=False, cap=100)
>>> d["mean"], d["wins_a"], d["wins_b"], d["n"], d["n_pairs"]
(-10.0, 1, 1, 2, 2)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .. import metrics
from ..errors import ShiftsimError
from . import _format as fmt

#: statuses whose runs have metrics (a diverged run's metrics cover the steps before it)
WITH_METRICS = ("ok", "diverged")

#: metrics compared against the baseline: (column, higher is better, per shift, label, digits)
COMPARED = (
    ("online_acc", True, False, "online accuracy", 3),
    ("online_acc_true", True, False, "online accuracy (original labels)", 3),
    ("recovery_steps", False, True, "recovery time (steps)", 0),
    ("drop", False, True, "drop depth", 3),
    ("deficit", False, True, "recovery deficit", 3),
    ("final_heldout", True, False, "final held-out accuracy", 3),
    ("acc", True, False, "ACC", 3),
    ("bwt", True, False, "BWT", 3),
    ("forgetting", False, False, "forgetting", 3),
)


@dataclass
class Table:
    """One table of the report: numbers for CSV, formatted text for Markdown and HTML."""

    name: str
    title: str
    caption: str
    data: pd.DataFrame
    display: pd.DataFrame

    def __len__(self) -> int:
        return len(self.data)


@dataclass
class StudyView:
    """The study as the report sees it: runs and phases with one ``optimizer`` label per arm,
    ordered scenarios and optimizers, the baseline, and the severity axis."""

    runs: pd.DataFrame
    phases: pd.DataFrame
    arms: list[str]
    baseline: str
    baseline_reason: str
    scenarios: list[str]
    severity: dict[str, float]
    severity_name: str
    families: dict[str, str]
    n_phases: dict[str, int]
    noise: dict[str, bool]
    level: float
    name: str
    study: dict[str, Any] | None = None
    tables: dict[str, Table] = field(default_factory=dict)
    summary: pd.DataFrame | None = None
    comparison: pd.DataFrame | None = None
    phase_summary: pd.DataFrame | None = None

    @property
    def has_severity(self) -> bool:
        return any(not math.isnan(v) for v in self.severity.values())

    @property
    def severity_identifies(self) -> bool:
        """True when every scenario has its own severity (one family): tables then show the
        severity instead of the scenario label."""
        sev = [self.severity.get(s, math.nan) for s in self.scenarios]
        return (not self.families and len(sev) > 0 and not any(math.isnan(x) for x in sev)
                and len(set(sev)) == len(sev))

    def severity_text(self, scenario: str) -> str:
        """``flip rate 100 %`` for a scenario with a known severity, else its name."""
        from ..plots import format_severity

        sev = self.severity.get(scenario, math.nan)
        if math.isnan(sev):
            return f"scenario {scenario}"
        label = f"{self.severity_name} {format_severity(sev, self.severity_name)}"
        fam = self.families.get(scenario)
        if fam:
            label = f"{fam}, {label}"
        return label

    def runs_with_metrics(self) -> pd.DataFrame:
        return self.runs[self.runs["status"].isin(WITH_METRICS)]


# ----------------------------------------------------------------------------------------------
# the view


def _first_order(values: pd.Series) -> list[Any]:
    return list(dict.fromkeys(values.dropna().tolist()))


def _arm_labels(runs: pd.DataFrame) -> pd.Series:
    """One label per arm: the optimizer label, plus whatever else varies between runs that share
    scenario, optimizer and seed (the model, custom axes)."""
    label = runs["optimizer"].astype(str)
    extra_cols = [c for c in runs.columns if c not in (
        "run_id", "scenario", "optimizer", "seed", "severity", "status", "error",
        "diverged_step", "steps", "steps_run", "online_acc", "online_acc_true", "acc", "bwt",
        "forgetting", "anytime_acc", "total_s", "ms_per_step", "device", "optimizer_name")]
    if "model" in runs.columns and runs["model"].nunique(dropna=True) > 1:
        label = label + " [" + runs["model"].astype(str) + "]"
    key = pd.DataFrame({"s": runs["scenario"].astype(str), "a": label,
                        "seed": runs["seed"].astype(str)})
    for c in extra_cols:
        if c == "model" or not key.duplicated().any():
            continue
        varying = runs.groupby([key["s"], key["a"]])[c].nunique(dropna=False)
        if (varying > 1).any():
            label = label + f" {c}=" + runs[c].astype(str)
            key["a"] = label
    return label


def _severity_name(runs: pd.DataFrame, study: dict[str, Any] | None) -> str:
    for key in ("severity_name", "severity_label"):
        if study and isinstance(study.get(key), str):
            return study[key]
    if "flip_mode" in runs.columns and runs["flip_mode"].notna().any():
        return "flip rate"
    if "shift" in runs.columns and runs["shift"].nunique(dropna=True) == 1:
        return f"{runs['shift'].dropna().iloc[0]} severity"
    return "severity"


def _families(runs: pd.DataFrame) -> dict[str, str]:
    """scenario -> family text when the study sweeps several families (e.g. flip modes)."""
    for col in ("flip_mode", "shift", "family"):
        if col in runs.columns:
            per = runs.groupby("scenario", sort=False)[col].first()
            if per.nunique(dropna=True) > 1:
                return {str(k): str(v) for k, v in per.items() if isinstance(v, str)}
    return {}


def view(results: Any, baseline: str | None = None, level: float = 0.95) -> StudyView:
    """Prepare a loaded study for reporting (arms, order, baseline, severity axis).

    Raises :class:`~shiftsim.errors.ShiftsimError` for an unknown baseline (listing the
    optimizers there are) and for a study without a single run that has metrics.
    """
    runs = results.runs.copy()
    if runs.empty:
        raise ShiftsimError(f"{str(getattr(results, 'path', 'the study'))!r} holds no runs: not "
                            "a study results folder (expected study.json and runs/<id>/...)")
    for col in ("scenario", "optimizer"):
        runs[col] = runs[col].astype(object).where(runs[col].notna(), "?").astype(str)
    runs["optimizer_label"] = runs["optimizer"]
    runs["optimizer"] = _arm_labels(runs)
    done = runs[runs["status"].isin(WITH_METRICS)]
    if done.empty:
        counts = runs["status"].value_counts().to_dict()
        first = runs.sort_values("status", key=lambda st: st != "failed", kind="stable")[
            "error"].dropna()  # a failed run's error first, not a pending run's "not run yet"
        why = f"; first error: {first.iloc[0]}" if len(first) else ""
        listed = ", ".join(f"{n} {k}" for k, n in counts.items())
        raise ShiftsimError(f"no run of the study has results to report ({listed}){why}")
    arms = _first_order(runs["optimizer"])
    if getattr(results, "study", None) is None:  # run folders only: no study order, sort
        arms = sorted(arms)
    reason = "given"
    if baseline is None:
        baseline = arms[0]
        reason = "the study's first optimizer"
    else:
        baseline = str(baseline)
        if baseline not in arms:
            by_name = []
            if "optimizer_name" in runs.columns:
                hit = runs["optimizer_name"].astype(str) == baseline
                by_name = runs.loc[hit, "optimizer"].unique().tolist()
            if len(by_name) == 1:
                baseline = by_name[0]
            else:
                raise ShiftsimError(f"unknown baseline {baseline!r}; allowed: "
                                    f"{', '.join(repr(a) for a in arms)}")
    arms = [baseline] + [a for a in arms if a != baseline]
    scenarios = [str(s) for s in _first_order(runs["scenario"])]
    sev = runs.groupby("scenario", sort=False)["severity"].first()
    severity = {str(s): float(sev.get(s, math.nan)) for s in scenarios}
    phases = results.phases.copy()
    if len(phases):
        phases = phases.merge(runs[["run_id", "optimizer", "optimizer_label"]].rename(
            columns={"optimizer": "_arm"}), on="run_id", how="left")
        phases["optimizer"] = phases["_arm"]
        phases = phases.drop(columns="_arm")
        phases["scenario"] = phases["scenario"].astype(str)
        phases = phases[phases["status"].isin(WITH_METRICS)].reset_index(drop=True)
    n_phases = {}
    noise = {}
    for s in scenarios:
        ps = phases[phases["scenario"] == s] if len(phases) else phases
        n_phases[s] = int(ps["phase"].nunique()) if len(ps) else 0
        noise[s] = bool(len(ps) and "label_kind" in ps.columns
                        and (ps["label_kind"] == "noise").any())
    study = getattr(results, "study", None)
    name = (study or {}).get("name") or getattr(getattr(results, "path", None), "name", "study")
    return StudyView(runs=runs, phases=phases, arms=arms, baseline=baseline,
                     baseline_reason=reason, scenarios=scenarios, severity=severity,
                     severity_name=_severity_name(runs, study), families=_families(runs),
                     n_phases=n_phases, noise=noise, level=level, name=str(name), study=study)


# ----------------------------------------------------------------------------------------------
# per-run values


def run_values(v: StudyView) -> pd.DataFrame:
    """One row per run with metrics: scenario, optimizer, seed, status and the per-run values
    that are aggregated over seeds: ``online_acc``, ``online_acc_true``, ``final_heldout``
    (held-out accuracy at the end of the last phase, R[K−1, K−1]), ``acc``, ``bwt``,
    ``forgetting``, and ``drop`` / ``deficit`` averaged over the run's shifts."""
    runs = v.runs_with_metrics()
    out = runs[["run_id", "scenario", "optimizer", "seed", "severity", "status", "online_acc",
                "online_acc_true", "acc", "bwt", "forgetting"]].copy()
    ph = v.phases
    if len(ph):
        last = ph.loc[ph.groupby("run_id")["phase"].idxmax(), ["run_id", "heldout_acc"]]
        shifts = ph[ph["phase"] >= 1].groupby("run_id")[["drop", "deficit"]].mean()
        out = out.merge(last.rename(columns={"heldout_acc": "final_heldout"}), on="run_id",
                        how="left").merge(shifts, on="run_id", how="left")
    else:
        out["final_heldout"] = np.nan
        out["drop"] = np.nan
        out["deficit"] = np.nan
    return out.reset_index(drop=True)


def _mi(values: Any, level: float) -> tuple[float, float, float]:
    return metrics.mean_interval(np.asarray(values, dtype=float), level=level)


def _recovery_stats(rows: pd.DataFrame) -> dict[str, Any]:
    """Median recovery (steps, samples), censored fraction and counts over run × shift rows."""
    rows = rows[rows["phase"] >= 1]
    reached = rows[rows["censored"].astype(bool) | rows["recovery_steps"].notna()]
    n = len(reached)
    cens = int(reached["censored"].astype(bool).sum())
    return {
        "recovery_steps": metrics.median_recovery(reached["recovery_steps"], reached["censored"])
        if n else math.nan,
        "recovery_samples": metrics.median_recovery(reached["recovery_samples"],
                                                    reached["censored"]) if n else math.nan,
        "censored_fraction": metrics.censored_fraction(reached["censored"]) if n else math.nan,
        "censored": cens,
        "shifts": n,
    }


# ----------------------------------------------------------------------------------------------
# aggregation


def _status_counts(runs: pd.DataFrame) -> dict[str, int]:
    vc = runs["status"].value_counts()
    return {
        "runs": int(len(runs)), "ok": int(vc.get("ok", 0)),
        "diverged": int(vc.get("diverged", 0)), "failed": int(vc.get("failed", 0)),
        "missing": int(vc.get("incomplete", 0) + vc.get("pending", 0)),
    }


def summary_frame(v: StudyView) -> pd.DataFrame:
    """Per scenario × optimizer: run counts, online accuracy (mean and interval over seeds),
    recovery (median, censored fraction), drop, deficit, final held-out accuracy and, for more
    than two phases, ACC / BWT / forgetting."""
    values = run_values(v)
    rows = []
    for s in v.scenarios:
        for arm in v.arms:
            runs = v.runs[(v.runs["scenario"] == s) & (v.runs["optimizer"] == arm)]
            if runs.empty:
                continue
            val = values[(values["scenario"] == s) & (values["optimizer"] == arm)]
            ph = v.phases[(v.phases["scenario"] == s) & (v.phases["optimizer"] == arm)] \
                if len(v.phases) else v.phases
            row: dict[str, Any] = {"scenario": s, "severity": v.severity.get(s, math.nan),
                                   "optimizer": arm, **_status_counts(runs),
                                   "seeds": int(val["seed"].nunique()),
                                   "phases": v.n_phases.get(s, 0),
                                   "label_noise": v.noise.get(s, False)}
            for c in ("online_acc", "online_acc_true", "drop", "deficit", "final_heldout"):
                row[c], row[f"{c}_low"], row[f"{c}_high"] = _mi(val[c], v.level)
            row.update(_recovery_stats(ph) if len(ph) else _recovery_stats(
                pd.DataFrame(columns=["phase", "censored", "recovery_steps",
                                      "recovery_samples"])))
            multi = v.n_phases.get(s, 0) > 2
            for c in ("acc", "bwt", "forgetting"):
                m = _mi(val[c], v.level) if multi else (math.nan,) * 3
                row[c], row[f"{c}_low"], row[f"{c}_high"] = m
            rows.append(row)
    cols = ["scenario", "severity", "optimizer", "runs", "ok", "diverged", "failed", "missing",
            "seeds", "phases", "label_noise"]
    for c in ("online_acc", "online_acc_true"):
        cols += [c, f"{c}_low", f"{c}_high"]
    cols += ["recovery_steps", "recovery_samples", "censored_fraction", "censored", "shifts"]
    for c in ("drop", "deficit", "final_heldout", "acc", "bwt", "forgetting"):
        cols += [c, f"{c}_low", f"{c}_high"]
    return pd.DataFrame(rows, columns=cols)


def phase_frame(v: StudyView) -> pd.DataFrame:
    """Per scenario × optimizer × phase: online accuracy (presented and original labels),
    recovery, drop, deficit and held-out accuracy at the phase's end, over seeds."""
    ph = v.phases
    rows = []
    if ph.empty:
        return pd.DataFrame(rows)
    for s in v.scenarios:
        for arm in v.arms:
            sub = ph[(ph["scenario"] == s) & (ph["optimizer"] == arm)]
            for k, g in sub.groupby("phase", sort=True):
                ran = g[g["steps_run"].fillna(0) > 0]
                row: dict[str, Any] = {
                    "scenario": s, "severity": v.severity.get(s, math.nan), "optimizer": arm,
                    "phase": int(k), "name": str(g["name"].iloc[0]),
                    "label_kind": str(g["label_kind"].iloc[0]) if "label_kind" in g else "",
                    "ceiling": float(g["ceiling"].iloc[0]) if "ceiling" in g else math.nan,
                    "steps": int(g["steps"].iloc[0]), "runs": int(len(ran)),
                }
                for c in ("online_acc", "online_acc_true", "drop", "deficit", "heldout_acc"):
                    row[c], row[f"{c}_low"], row[f"{c}_high"] = _mi(ran[c], v.level)
                if k >= 1:
                    row.update(_recovery_stats(g))
                else:
                    row.update({"recovery_steps": math.nan, "recovery_samples": math.nan,
                                "censored_fraction": math.nan, "censored": 0, "shifts": 0})
                rows.append(row)
    return pd.DataFrame(rows)


def paired(a: pd.Series, b: pd.Series, *, higher_is_better: bool = True,
           censored_a: pd.Series | None = None, censored_b: pd.Series | None = None,
           cap: float | None = None, level: float = 0.95) -> dict[str, Any]:
    """:func:`shiftsim.metrics.paired_difference` of a − b (Series indexed by seed, or by
    (seed, phase) for per-shift values), with censored recovery times handled as the spec asks:

    * the mean difference and its interval use the pairs where neither side is censored;
    * wins, losses and ties count every pair, a censored time standing for +inf (``cap``, any
      number larger than every observed time, stands in for it; two censored runs tie).

    Returns paired_difference's dict plus ``n_pairs`` (all pairs, censored included).
    """
    if censored_a is None or censored_b is None:
        d = metrics.paired_difference(a, b, level=level, higher_is_better=higher_is_better)
        d["n_pairs"] = d["n"]
        return d
    ca = censored_a.reindex(a.index).fillna(False).astype(bool)
    cb = censored_b.reindex(b.index).fillna(False).astype(bool)
    d = metrics.paired_difference(a.where(~ca), b.where(~cb), level=level,
                                  higher_is_better=higher_is_better)
    big = float(cap if cap is not None else 1e300)
    wins = metrics.paired_difference(a.mask(ca, big), b.mask(cb, big), level=level,
                                     higher_is_better=higher_is_better)
    d.update({"wins_a": wins["wins_a"], "wins_b": wins["wins_b"], "ties": wins["ties"],
              "n_pairs": wins["n"]})
    return d


def verdict(d: dict[str, Any], higher_is_better: bool) -> str:
    """``better`` / ``worse`` (the interval excludes 0), ``within noise`` (it contains 0) or
    ``not judged`` (fewer than two pairs: no interval)."""
    low, high = d.get("low", math.nan), d.get("high", math.nan)
    if fmt.isnan(low) or fmt.isnan(high):
        return "not judged"
    if low > 0:
        return "better" if higher_is_better else "worse"
    if high < 0:
        return "worse" if higher_is_better else "better"
    return "within noise"


def _series(df: pd.DataFrame, col: str, per_shift: bool) -> pd.Series:
    if per_shift:
        idx = pd.MultiIndex.from_arrays([df["seed"].to_numpy(), df["phase"].to_numpy()],
                                        names=["seed", "phase"])
    else:
        idx = pd.Index(df["seed"].to_numpy(), name="seed")
    s = pd.Series(pd.to_numeric(df[col], errors="coerce").to_numpy(float), index=idx)
    return s[~s.index.duplicated()]


def compare(v: StudyView, a: str, b: str, scenario: str, metric: str,
            values: pd.DataFrame | None = None) -> dict[str, Any] | None:
    """Paired comparison of optimizer ``a`` against ``b`` in one scenario on one metric of
    :data:`COMPARED`: the :func:`paired` dict plus ``metric``, ``unit`` (``seeds`` or
    ``seed × shift pairs``) and ``verdict`` for ``a``; None when there is nothing to pair."""
    spec = next((c for c in COMPARED if c[0] == metric), None)
    if spec is None:
        raise ShiftsimError(f"unknown comparison metric {metric!r}; allowed: "
                            f"{', '.join(repr(c[0]) for c in COMPARED)}")
    col, hib, per_shift, _, _ = spec
    if per_shift:
        ph = v.phases[(v.phases["scenario"] == scenario) & (v.phases["phase"] >= 1)]
        pa, pb = ph[ph["optimizer"] == a], ph[ph["optimizer"] == b]
        if pa.empty or pb.empty:
            return None
        sa, sb = _series(pa, col, True), _series(pb, col, True)
        if col == "recovery_steps":
            cap = float(ph["steps"].max()) + 1
            d = paired(sa, sb, higher_is_better=hib, censored_a=_series(pa, "censored", True),
                       censored_b=_series(pb, "censored", True), cap=cap, level=v.level)
        else:
            d = paired(sa, sb, higher_is_better=hib, level=v.level)
        unit = "seeds" if v.n_phases.get(scenario, 0) <= 2 else "seed × shift pairs"
    else:
        values = run_values(v) if values is None else values
        sub = values[values["scenario"] == scenario]
        ra, rb = sub[sub["optimizer"] == a], sub[sub["optimizer"] == b]
        if ra.empty or rb.empty:
            return None
        d = paired(_series(ra, col, False), _series(rb, col, False), higher_is_better=hib,
                   level=v.level)
        unit = "seeds"
    d.update({"metric": col, "unit": unit, "higher_is_better": hib,
              "verdict": verdict(d, hib)})
    return d


def comparison_frame(v: StudyView) -> pd.DataFrame:
    """Every optimizer against the baseline, per scenario and metric (paired by seed)."""
    values = run_values(v)
    rows = []
    for s in v.scenarios:
        multi = v.n_phases.get(s, 0) > 2
        for arm in v.arms[1:]:
            for col, hib, _, label, _ in COMPARED:
                if col == "online_acc_true" and not v.noise.get(s):
                    continue
                if col in ("acc", "bwt", "forgetting") and not multi:
                    continue
                d = compare(v, arm, v.baseline, s, col, values)
                if d is None:
                    continue
                rows.append({"scenario": s, "severity": v.severity.get(s, math.nan),
                             "optimizer": arm, "baseline": v.baseline, "metric": col,
                             "metric_label": label, "difference": d["mean"], "low": d["low"],
                             "high": d["high"], "n": d["n"], "pairs": d["n_pairs"],
                             "wins": d["wins_a"], "losses": d["wins_b"], "ties": d["ties"],
                             "unit": d["unit"], "higher_is_better": hib,
                             "verdict": d["verdict"]})
    cols = ["scenario", "severity", "optimizer", "baseline", "metric", "metric_label",
            "difference", "low", "high", "n", "pairs", "wins", "losses", "ties", "unit",
            "higher_is_better", "verdict"]
    return pd.DataFrame(rows, columns=cols)


# ----------------------------------------------------------------------------------------------
# display tables


def _status_text(r: Any) -> str:
    parts = [f"{r.ok} ok"]
    if r.diverged:
        parts.append(f"{r.diverged} diverged")
    if r.failed:
        parts.append(f"{r.failed} failed")
    if r.missing:
        parts.append(f"{r.missing} missing")
    return ", ".join(parts)


def _recovery_text(median: Any, censored: int, shifts: int) -> str:
    if shifts == 0:
        return fmt.DASH
    if fmt.isnan(median):
        return "never" if censored == shifts else "undefined*"
    return fmt.steps(median)


def _censored_text(censored: int, shifts: int) -> str:
    if shifts == 0:
        return fmt.DASH
    return f"{censored}/{shifts}"


def _keys(v: StudyView, scenario: str) -> dict[str, Any]:
    """The columns that name a scenario in a display table: the severity (formatted) when the
    study has one, and the scenario label unless the severity alone identifies it."""
    from ..plots import format_severity

    out: dict[str, Any] = {}
    if not v.severity_identifies:
        out["scenario"] = scenario
    if v.has_severity:
        out[v.severity_name] = format_severity(v.severity.get(scenario, math.nan),
                                               v.severity_name)
    return out


def _flag(r: Any) -> str:
    return " †" if getattr(r, "diverged", 0) else ""


def _diverged_note(df: pd.DataFrame) -> str:
    if "diverged" in df.columns and df["diverged"].sum():
        return (" † includes diverged runs, whose metrics cover the steps before the loss "
                "became non-finite.")
    return ""


def summary_table(v: StudyView, df: pd.DataFrame) -> Table:
    show_true = any(v.noise.values())
    recs = []
    for r in df.itertuples():
        rec: dict[str, Any] = {**_keys(v, r.scenario), "optimizer": r.optimizer,
                               "runs": _status_text(r)}
        rec["online accuracy"] = fmt.interval(r.online_acc, r.online_acc_low,
                                              r.online_acc_high) + _flag(r)
        if show_true:
            rec["online acc. (original labels)"] = fmt.interval(
                r.online_acc_true, r.online_acc_true_low, r.online_acc_true_high) \
                if r.label_noise else fmt.DASH
        rec["recovery (steps)"] = _recovery_text(r.recovery_steps, r.censored, r.shifts)
        rec["recovery (samples)"] = _recovery_text(r.recovery_samples, r.censored, r.shifts)
        rec["censored"] = _censored_text(r.censored, r.shifts)
        rec["drop"] = fmt.interval(r.drop, r.drop_low, r.drop_high)
        rec["deficit"] = fmt.interval(r.deficit, r.deficit_low, r.deficit_high)
        recs.append(rec)
    pct = int(round(100 * v.level))
    caption = (
        f"Per scenario and optimizer. Accuracies: mean over seeds [{pct} % Student-t interval]; "
        "online accuracy is prequential (each batch scored before training on it)"
        + ("; against the original labels for label-noise scenarios" if show_true else "")
        + ". Recovery: median over seeds and shifts of the steps (samples) until the 20-step "
        "trailing accuracy stays at ≥ 90 % of the phase's plateau for 20 steps, counting "
        "censored (never recovered within the phase) as +∞; *undefined when half or more are "
        "censored; 'never' when all are. Censored: censored / all run × shift pairs. Drop: "
        "pre-shift level minus the lowest trailing accuracy after the shift; deficit: mean "
        "shortfall below the plateau over the phase (accuracy units); both averaged over the "
        "shifts of a run, then over seeds." + _diverged_note(df))
    return Table("summary", "Summary per scenario and optimizer", caption, df,
                 pd.DataFrame(recs))


def heldout_table(v: StudyView, df: pd.DataFrame) -> Table:
    show_multi = any(n > 2 for n in v.n_phases.values())
    recs = []
    for r in df.itertuples():
        rec: dict[str, Any] = {**_keys(v, r.scenario), "optimizer": r.optimizer,
                               "final held-out acc.": fmt.interval(
                                   r.final_heldout, r.final_heldout_low,
                                   r.final_heldout_high) + _flag(r)}
        if show_multi:
            multi = v.n_phases.get(r.scenario, 0) > 2
            for c, name in (("acc", "ACC"), ("bwt", "BWT"), ("forgetting", "forgetting")):
                rec[name] = fmt.interval(getattr(r, c), getattr(r, f"{c}_low"),
                                         getattr(r, f"{c}_high")) if multi else fmt.DASH
        recs.append(rec)
    pct = int(round(100 * v.level))
    caption = (f"Held-out accuracy, mean over seeds [{pct} % Student-t interval]. Final: on the "
               "last regime at the end of the stream (label noise is not applied to held-out "
               "labels, concept shifts are).")
    if show_multi:
        caption += (" From the accuracy matrix R[i, j] (held-out accuracy on regime j at the end "
                    "of phase i), for scenarios with more than two phases: ACC = mean_j "
                    "R[K−1, j]; BWT = mean_{j<K−1} (R[K−1, j] − R[j, j]) (Lopez-Paz & Ranzato "
                    "2017); forgetting = mean_{j<K−1} (max_{l<K−1} R[l, j] − R[K−1, j]) "
                    "(Chaudhry et al. 2018).")
    caption += _diverged_note(df)
    cols = ["scenario", "severity", "optimizer", "runs", "ok", "diverged", "seeds", "phases"]
    for c in ("final_heldout", "acc", "bwt", "forgetting"):
        cols += [c, f"{c}_low", f"{c}_high"]
    return Table("heldout", "Held-out accuracy, ACC, BWT and forgetting", caption,
                 df[cols].copy(), pd.DataFrame(recs))


def comparison_table(v: StudyView, df: pd.DataFrame) -> Table:
    recs = []
    for r in df.itertuples():
        digits = 0 if r.metric == "recovery_steps" else 3
        unit = " steps" if r.metric == "recovery_steps" else ""
        if r.pairs:
            diff = fmt.interval(r.difference, r.low, r.high, digits, sign=True)
            diff += unit if diff != fmt.DASH else ""
            won = f"{r.wins} / {r.losses} / {r.ties} of {r.pairs} {r.unit}"
        else:
            diff, won = fmt.DASH, "no pairs (no values on one side)"
        recs.append({**_keys(v, r.scenario), "optimizer": r.optimizer,
                     "metric": r.metric_label, f"difference vs {v.baseline}": diff,
                     "won / lost / tied": won, "verdict": r.verdict})
    pct = int(round(100 * v.level))
    caption = (
        f"Each optimizer minus the baseline {v.baseline} ({v.baseline_reason}), paired by seed "
        f"(and by shift for recovery, drop and deficit): mean difference [{pct} % Student-t "
        "interval]. Won / lost counts the pairs where the optimizer is better / worse (higher "
        "accuracy; shorter recovery, smaller drop, deficit and forgetting). For recovery time "
        "the difference uses the pairs where both recovered; the counts use every pair, a "
        "censored run counting as never recovering. Verdict: 'better' / 'worse' when the "
        "interval excludes 0, 'within noise' when it contains 0, 'not judged' with fewer than "
        "two pairs. Pairs are missing where a run diverged before the shift or failed.")
    return Table("comparison", f"Paired comparison against the baseline ({v.baseline})",
                 caption, df, pd.DataFrame(recs))


def phase_table(v: StudyView, df: pd.DataFrame) -> Table:
    recs = []
    show_true = any(v.noise.values())
    for r in df.itertuples():
        rec: dict[str, Any] = {**_keys(v, r.scenario), "optimizer": r.optimizer,
                               "phase": f"{r.phase}: {r.name}", "runs": r.runs,
                               "online accuracy": fmt.interval(r.online_acc, r.online_acc_low,
                                                               r.online_acc_high)}
        if show_true:
            rec["online acc. (original labels)"] = fmt.interval(
                r.online_acc_true, r.online_acc_true_low, r.online_acc_true_high) \
                if r.label_kind == "noise" else fmt.DASH
        shifted = r.phase >= 1
        rec["recovery (steps)"] = _recovery_text(r.recovery_steps, r.censored, r.shifts) \
            if shifted else fmt.DASH
        rec["recovery (samples)"] = _recovery_text(r.recovery_samples, r.censored, r.shifts) \
            if shifted else fmt.DASH
        rec["censored"] = _censored_text(r.censored, r.shifts) if shifted else fmt.DASH
        rec["drop"] = fmt.interval(r.drop, r.drop_low, r.drop_high)
        rec["deficit"] = fmt.interval(r.deficit, r.deficit_low, r.deficit_high)
        rec["held-out acc. (phase end)"] = fmt.interval(r.heldout_acc, r.heldout_acc_low,
                                                        r.heldout_acc_high)
        recs.append(rec)
    caption = ("Per phase (phase 0 has no shift to recover from). Same definitions as the "
               "summary; recovery is the median over seeds; 'runs' counts the runs that reached "
               "the phase. Original-label accuracy is shown for label-noise phases, where it is "
               "the accuracy that matters.")
    return Table("phases", "Per phase", caption, df, pd.DataFrame(recs))


def runs_table(v: StudyView) -> Table:
    cols = [c for c in ("run_id", "scenario", "severity", "optimizer", "optimizer_name", "lr",
                        "model", "seed", "status", "diverged_step", "steps", "steps_run",
                        "online_acc", "online_acc_true", "acc", "bwt", "forgetting",
                        "anytime_acc", "total_s", "ms_per_step", "device", "error")
            if c in v.runs.columns]
    data = v.runs[cols].copy()
    bad = data[data["status"] != "ok"]
    recs = []
    for r in bad.itertuples():
        if r.status == "diverged":
            what = f"loss not finite at step {r.diverged_step} of {r.steps}"
        else:
            what = str(r.error) if isinstance(r.error, str) and r.error else fmt.DASH
        recs.append({"run": r.run_id, **_keys(v, r.scenario), "optimizer": r.optimizer,
                     "seed": r.seed, "status": r.status, "details": what[:300]})
    caption = ("Every run that did not finish normally. Diverged runs keep the metrics of the "
               "steps they ran; failed runs (the run raised), incomplete and pending runs have "
               "no metrics. tables/runs.csv lists all runs.")
    return Table("runs", "Runs that did not finish normally", caption, data,
                 pd.DataFrame(recs))


def build(v: StudyView) -> StudyView:
    """Compute every table into ``v.tables`` (and ``v.summary``, ``v.comparison``,
    ``v.phase_summary``); returns ``v``."""
    v.summary = summary_frame(v)
    v.phase_summary = phase_frame(v)
    v.comparison = comparison_frame(v)
    v.tables = {
        "summary": summary_table(v, v.summary),
        "heldout": heldout_table(v, v.summary),
        "comparison": comparison_table(v, v.comparison),
        "phases": phase_table(v, v.phase_summary),
        "runs": runs_table(v),
    }
    return v


def order_frame(df: pd.DataFrame, v: StudyView, keys: Sequence[str] = ("scenario", "optimizer")
                ) -> pd.DataFrame:
    """Sort rows by the study's scenario and optimizer order."""
    out = df.copy()
    if "scenario" in keys:
        out["_s"] = out["scenario"].map({s: i for i, s in enumerate(v.scenarios)})
    if "optimizer" in keys:
        out["_o"] = out["optimizer"].map({a: i for i, a in enumerate(v.arms)})
    by = [c for c in ("_s", "_o") if c in out.columns]
    return out.sort_values(by, kind="stable").drop(columns=by)
