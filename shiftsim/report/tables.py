"""The report's tables, computed with pandas from :func:`shiftsim.store.load`'s DataFrames.

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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .. import metrics
from ..errors import ShiftsimError
from . import _format as fmt
from .statistics import ALPHA, METRICS, MIN_SEEDS, Metric, adjust, paired, verdict

#: statuses whose runs have metrics (a diverged run's metrics cover the steps before it)
WITH_METRICS = ("ok", "diverged")

#: a noise phase whose ceiling is this close to chance carries no learnable signal
NO_SIGNAL_MARGIN = 0.05


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
    ordered scenarios and optimizers, the baseline, the severity axis, and what each scenario
    allows (label noise, conflicting regimes, no learnable signal)."""

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
    shifted: dict[str, bool] = field(default_factory=dict)
    no_signal: dict[str, bool] = field(default_factory=dict)
    partial_concept: dict[str, bool] = field(default_factory=dict)
    max_acc: dict[str, float] = field(default_factory=dict)
    #: a tuned study's selection and grid scores (None without tuning)
    tuning: pd.DataFrame | None = None
    tuning_curves: pd.DataFrame | None = None
    tolerance_vs_baseline: pd.DataFrame | None = None
    values: pd.DataFrame | None = None
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

    def conflicting(self, scenario: str) -> bool:
        """True when no single classifier can be right on every regime (max ACC < 1)."""
        return self.max_acc.get(scenario, 1.0) < 1 - 1e-9

    def headline(self, scenario: str, column: str) -> str:
        """The column a scenario is judged on: the clean-label twin for label noise."""
        twin = f"{column}_true"
        return twin if self.noise.get(scenario) and twin in METRICS else column

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
        "forgetting", "anytime_acc", "total_s", "ms_per_step", "device", "optimizer_name",
        "machine", "stage")]
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
    """scenario -> family text when the study sweeps several families (e.g. flip modes), with
    the view ("real-time") when the study has both views of its scenarios."""
    out: dict[str, str] = {}
    for col in ("flip_mode", "shift", "family"):
        if col in runs.columns:
            per = runs.groupby("scenario", sort=False)[col].first()
            if per.nunique(dropna=True) > 1:
                out = {str(k): str(v) for k, v in per.items() if isinstance(v, str)}
                break
    if "view" in runs.columns and runs["view"].nunique(dropna=True) > 1:
        view = runs.groupby("scenario", sort=False)["view"].first()
        for k, v in view.items():
            fam = out.get(str(k), "")
            out[str(k)] = f"{fam} ({v})" if fam else str(v)
    return out


def view(results: Any, baseline: str | None = None, level: float = 0.95) -> StudyView:
    """Prepare a loaded study for reporting (arms, order, baseline, severity axis).

    Raises :class:`~shiftsim.errors.ShiftsimError` for an unknown baseline (listing the
    optimizers there are) and for a study without a single run that has metrics.
    """
    runs = results.runs.copy()
    if runs.empty:
        raise ShiftsimError(f"{str(getattr(results, 'path', 'the study'))!r} holds no runs: not "
                            "a study results folder (expected study.json and runs/<id>/...)")
    tuned = "stage" in runs.columns and (runs["stage"] == "tune").any()
    if tuned:  # tuning runs feed the tuning table and figure only; the rest is evaluation
        runs = runs[runs["stage"] != "tune"].copy()
        if runs.empty:
            raise ShiftsimError(f"{str(getattr(results, 'path', 'the study'))!r} holds tuning "
                                "runs but no evaluation run yet: run the study to the end "
                                "(it resumes) before reporting")
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
    if len(phases) and tuned:
        phases = phases[phases["run_id"].isin(runs["run_id"])]
    if len(phases):
        phases = phases.merge(runs[["run_id", "optimizer", "optimizer_label"]].rename(
            columns={"optimizer": "_arm"}), on="run_id", how="left")
        phases["optimizer"] = phases["_arm"]
        phases = phases.drop(columns="_arm")
        phases["scenario"] = phases["scenario"].astype(str)
        phases = phases[phases["status"].isin(WITH_METRICS)].reset_index(drop=True)
    n_phases, noise, shifted, no_signal, partial = {}, {}, {}, {}, {}
    for s in scenarios:
        ps = phases[phases["scenario"] == s] if len(phases) else phases
        n_phases[s] = int(ps["phase"].nunique()) if len(ps) else 0
        kind = ps["label_kind"].astype(str) if "label_kind" in ps.columns else pd.Series(
            dtype=str)
        shift = ps["shifted"].astype(bool) if "shifted" in ps.columns else ps["phase"] > 0
        noise[s] = bool(len(ps) and (kind[shift] == "noise").any())
        partial[s] = bool(len(ps) and (kind == "concept + noise").any())
        shifted[s] = bool(len(ps) and shift.any())
        if noise[s] and {"ceiling", "chance"} <= set(ps.columns):
            noisy = ps[shift & (kind == "noise")]
            no_signal[s] = bool(((noisy["ceiling"] - noisy["chance"]) < NO_SIGNAL_MARGIN).all())
        else:
            no_signal[s] = False
    study = getattr(results, "study", None)
    name = (study or {}).get("name") or getattr(getattr(results, "path", None), "name", "study")
    return StudyView(runs=runs, phases=phases, arms=arms, baseline=baseline,
                     baseline_reason=reason, scenarios=scenarios, severity=severity,
                     severity_name=_severity_name(runs, study), families=_families(runs),
                     n_phases=n_phases, noise=noise, level=level, name=str(name), study=study,
                     shifted=shifted, no_signal=no_signal, partial_concept=partial,
                     max_acc=_max_acc(results, runs, phases),
                     tuning=getattr(results, "tuning", None) if tuned else None,
                     tuning_curves=getattr(results, "tuning_curves", None) if tuned else None,
                     tolerance_vs_baseline=_tolerance_differences(results, baseline)
                     if tuned else None)


def _tolerance_differences(results: Any, baseline: str) -> pd.DataFrame | None:
    from ..study import selection

    path = getattr(results, "path", None)
    return selection.tolerance_differences(selection.read(path), baseline) if path else None


def _max_acc(results: Any, runs: pd.DataFrame, phases: pd.DataFrame) -> dict[str, float]:
    """Per scenario, the mean over its seeds of the highest ACC one classifier can reach
    (:func:`shiftsim.stream.max_average_accuracy`): below 1 when its regimes conflict. Only
    scenarios with a concept label shift and two or more regimes can conflict; the scenario is
    rebuilt from a run's spec (NaN when its dataset cannot be loaded here)."""
    from ..scenario import Scenario
    from ..stream import max_average_accuracy

    out: dict[str, float] = {}
    if not len(phases) or "label_kind" not in phases.columns:
        return out
    for s, ps in phases.groupby("scenario", sort=False):
        concept = ps["label_kind"].astype(str).isin(["concept", "concept + noise"]).any()
        if not concept or ps["regime"].nunique() < 2:
            continue
        sub = runs[(runs["scenario"] == s) & runs["status"].isin(WITH_METRICS)]
        spec = results.spec(sub["run_id"].iloc[0]) if len(sub) else None
        try:
            sc = Scenario.from_dict(spec["scenario"])
            seeds = sorted(int(x) for x in sub["seed"].dropna().unique())
            out[str(s)] = float(np.mean([max_average_accuracy(sc, seed) for seed in seeds]))
        except Exception:  # a dataset given as tensors, an old spec: unknown
            out[str(s)] = math.nan
    return out

# ----------------------------------------------------------------------------------------------
# one value per run (the unit of replication is the seed)


def run_values(v: StudyView) -> pd.DataFrame:
    """One row per run with metrics: ``scenario``, ``optimizer``, ``seed``, ``severity``,
    ``status``, the stream scores (``online_acc``, ``online_acc_true``, ``acc``, ``bwt``,
    ``forgetting``), ``final_heldout`` (R[K−1, regime of K−1]) and the run's shifts reduced to
    one value each (:func:`shiftsim.metrics.run_recovery`, against the common reference):
    ``recovery_steps``, ``recovery_samples``, ``censored``, ``censored_shifts``, ``shifts``,
    ``drop``, ``deficit`` and their ``_true`` twins (clean labels, label-noise phases)."""
    runs = v.runs_with_metrics()
    out = runs[["run_id", "scenario", "optimizer", "seed", "severity", "status", "online_acc",
                "online_acc_true", "acc", "bwt", "forgetting"]].copy()
    ph = v.phases
    rec_cols = ["recovery_steps", "recovery_samples", "censored", "censored_shifts", "shifts",
                "drop", "deficit"]
    if len(ph):
        last = ph.loc[ph.groupby("run_id")["phase"].idxmax(), ["run_id", "heldout_acc"]]
        out = out.merge(last.rename(columns={"heldout_acc": "final_heldout"}), on="run_id",
                        how="left")
        for sfx in ("", "_true"):
            if f"recovery_steps{sfx}" not in ph.columns:
                continue
            red = metrics.run_recovery(ph, suffix=sfx).rename(
                columns={"censored_shifts": f"censored_shifts{sfx}", "shifts": f"shifts{sfx}"})
            out = out.merge(red, on="run_id", how="left")
    for sfx in ("", "_true"):
        for c in rec_cols:
            col = f"{c}{sfx}"
            if col not in out.columns:
                out[col] = np.nan
        out[f"censored{sfx}"] = out[f"censored{sfx}"].astype("boolean").fillna(False).astype(
            bool)
        for c in ("censored_shifts", "shifts"):
            out[f"{c}{sfx}"] = out[f"{c}{sfx}"].fillna(0).astype(np.int64)
    if "final_heldout" not in out.columns:
        out["final_heldout"] = np.nan
    return out.reset_index(drop=True)


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
            "seeds", "phases", "label_noise", "no_signal", "max_acc", "ms_per_step"]
    for c in ("online_acc", "online_acc_true"):
        cols += [c, f"{c}_low", f"{c}_high"]
    cols += recovery_fields() + recovery_fields("_true")
    for c in ("drop", "deficit", "drop_true", "deficit_true", "final_heldout", "acc", "bwt",
              "forgetting"):
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


def _by_seed(rows: pd.DataFrame, col: str) -> pd.Series:
    s = pd.Series(pd.to_numeric(rows[col], errors="coerce").to_numpy(float),
                  index=pd.Index(rows["seed"].to_numpy(), name="seed"))
    return s[~s.index.duplicated()]


def comparison_frame(v: StudyView) -> pd.DataFrame:
    """Every optimizer against the baseline, per scenario and compared metric, paired by seed,
    with p-values Holm-adjusted over all the comparisons that can be judged (≥ MIN_SEEDS
    seeds) and the verdict."""
    values = v.values if v.values is not None else run_values(v)
    rows = []
    for s in v.scenarios:
        sub = values[values["scenario"] == s]
        base = sub[sub["optimizer"] == v.baseline]
        steps = v.phases.loc[v.phases["scenario"] == s, "steps"] if len(v.phases) else []
        cap = float(np.max(steps)) if len(steps) else None
        for arm in v.arms[1:]:
            mine = sub[sub["optimizer"] == arm]
            if mine.empty or base.empty:
                continue
            for m in compared_metrics(v, s):
                kw: dict[str, Any] = {}
                if m.recovery:
                    cen = m.column.replace("recovery_steps", "censored")
                    kw = {"censored_a": _by_seed(mine, cen).astype(bool),
                          "censored_b": _by_seed(base, cen).astype(bool), "cap": cap}
                d = paired(_by_seed(mine, m.column), _by_seed(base, m.column), m,
                           level=v.level, **kw)
                rows.append({"scenario": s, "severity": v.severity.get(s, math.nan),
                             "optimizer": arm, "baseline": v.baseline, "metric": m.column,
                             "metric_label": m.label, "difference": d["difference"],
                             "low": d["low"], "high": d["high"], "n": d["n"], "wins": d["wins"],
                             "losses": d["losses"], "ties": d["ties"],
                             "higher_is_better": m.higher_is_better, "test": m.test,
                             "p": d["p"]})
    cols = ["scenario", "severity", "optimizer", "baseline", "metric", "metric_label",
            "difference", "low", "high", "n", "wins", "losses", "ties", "higher_is_better",
            "test", "p", "p_holm", "judged", "verdict"]
    df = pd.DataFrame(rows, columns=[c for c in cols if c not in ("p_holm", "judged",
                                                                   "verdict")])
    df["judged"] = (df["n"] >= MIN_SEEDS) & df["p"].notna()
    df["p_holm"] = adjust(df["p"], df["judged"])
    df["verdict"] = [verdict(r) for _, r in df.iterrows()] if len(df) else []
    return df[cols]


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


def _recovery_text(median: Any, low: Any, high: Any, censored: int, n: int) -> str:
    """``35 [28, 51]``; ``never`` when every run is censored; ``undefined*`` when half or more
    are; a dash without shifts."""
    if n == 0:
        return fmt.DASH
    if fmt.isnan(median):
        return "never" if censored == n else "undefined*"
    text = fmt.steps(median)
    if not (fmt.isnan(low) or fmt.isnan(high)):
        text += f" [{fmt.steps(low)}, {fmt.steps(high)}]"
    return text


def _censored_text(censored: int, n: int) -> str:
    return fmt.DASH if n == 0 else f"{censored}/{n}"


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
        sfx = "_true" if r.label_noise else ""
        rec: dict[str, Any] = {**_keys(v, r.scenario), "optimizer": r.optimizer,
                               "runs": _status_text(r)}
        rec["online accuracy"] = fmt.interval(r.online_acc, r.online_acc_low,
                                              r.online_acc_high) + _flag(r)
        if show_true:
            rec["online acc. (original labels)"] = fmt.interval(
                r.online_acc_true, r.online_acc_true_low, r.online_acc_true_high) \
                if r.label_noise else fmt.DASH
        g = r._asdict()
        rec["recovery (steps)"] = _recovery_text(
            g[f"recovery_steps{sfx}"], g[f"recovery_steps{sfx}_low"],
            g[f"recovery_steps{sfx}_high"], g[f"censored{sfx}"], g[f"shifts{sfx}"])
        rec["censored"] = _censored_text(g[f"censored{sfx}"], g[f"shifts{sfx}"])
        rec["deficit"] = fmt.interval(g[f"deficit{sfx}"], g[f"deficit{sfx}_low"],
                                      g[f"deficit{sfx}_high"])
        rec["ms/step"] = fmt.num(r.ms_per_step, 2)
        if r.no_signal:
            rec["optimizer"] += " (not ranked: no signal)"
        recs.append(rec)
    pct = int(round(100 * v.level))
    caption = (
        f"Per scenario and optimizer; the seed is the unit (each run reduced to one value "
        f"first). Accuracies and deficits: mean over seeds [{pct} % Student-t interval]; online "
        "accuracy is prequential (each batch scored before training on it)"
        + ("; label-noise scenarios are judged on the original labels, so their recovery and "
           "deficit columns are the clean-label ones" if show_true else "")
        + ". Recovery: each run's shifts reduced to their median, then the median over seeds "
        f"[{pct} % bootstrap interval], counting runs that never recovered as +∞ (∞ in an "
        "interval: more than 2.5 % of the resamples never recover); *undefined when half or "
        "more of the seeds never recover; 'never' when none does. A shift is recovered when "
        "the 20-step trailing accuracy, after first falling below the target for 5 steps, "
        "stays at or above it for 20 steps; the target is chance + 90 % of the way from chance "
        "to the common reference (the best mean plateau any optimizer reached, capped at the "
        "ceiling), the same for every optimizer. Censored: seeds that never recovered / seeds "
        "with shifts. Deficit: mean shortfall below the reference over each shifted phase. "
        "ms/step: mean wall time per step of the runs (machine noise: shown, never used for a "
        "verdict)." + _diverged_note(df))
    return Table("summary", "Summary per scenario and optimizer", caption, df,
                 pd.DataFrame(recs))


def heldout_table(v: StudyView, df: pd.DataFrame) -> Table:
    show_multi = any(n > 2 for n in v.n_phases.values())
    show_max = any(v.conflicting(s) for s in v.scenarios)
    recs = []
    for r in df.itertuples():
        rec: dict[str, Any] = {**_keys(v, r.scenario), "optimizer": r.optimizer,
                               "final held-out acc.": fmt.interval(
                                   r.final_heldout, r.final_heldout_low,
                                   r.final_heldout_high) + _flag(r)}
        if show_multi:
            multi = v.n_phases.get(r.scenario, 0) > 2
            conflict = v.conflicting(r.scenario)
            rec["ACC"] = fmt.interval(r.acc, r.acc_low, r.acc_high) if multi else fmt.DASH
            if show_max:
                rec["max. ACC"] = fmt.num(r.max_acc) if multi and conflict else fmt.DASH
            for c, name in (("bwt", "BWT"), ("forgetting", "forgetting")):
                cell = fmt.interval(getattr(r, c), getattr(r, f"{c}_low"),
                                    getattr(r, f"{c}_high")) if multi else fmt.DASH
                rec[name] = f"{cell} (forced)" if multi and conflict and cell != fmt.DASH \
                    else cell
        recs.append(rec)
    pct = int(round(100 * v.level))
    caption = (f"Held-out accuracy, mean over seeds [{pct} % Student-t interval]. Final: on the "
               "last regime at the end of the stream. Held-out labels follow the concept a "
               "learner should hold: concept shifts are applied (a partial permute by its "
               "majority mapping), label noise is not.")
    if show_multi:
        caption += (" From the accuracy matrix R[i, j] (held-out accuracy on the distinct "
                    "regime j at the end of phase i; a repeated regime is one column), for "
                    "scenarios with more than two phases: ACC = mean_j R[K−1, j]; BWT = mean "
                    "over the regimes j before the last of (R[K−1, j] − R[j, j]) (Lopez-Paz & "
                    "Ranzato 2017); forgetting = mean_j (max_{l in [j, K−2]} R[l, j] − "
                    "R[K−1, j]) (Chaudhry et al. 2018).")
    if show_max:
        caption += (" Max. ACC: where regimes give one input different labels (e.g. permute "
                    "at 100 % in several tasks) no classifier is right on all of them; ACC "
                    "cannot exceed this bound, negative BWT is forced, and BWT and forgetting "
                    "are not compared there.")
    caption += _diverged_note(df)
    cols = ["scenario", "severity", "optimizer", "runs", "ok", "diverged", "seeds", "phases",
            "max_acc"]
    for c in ("final_heldout", "acc", "bwt", "forgetting"):
        cols += [c, f"{c}_low", f"{c}_high"]
    return Table("heldout", "Held-out accuracy, ACC, BWT and forgetting", caption,
                 df[cols].copy(), pd.DataFrame(recs))


def _p_text(p: Any) -> str:
    if fmt.isnan(p):
        return fmt.DASH
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def comparison_table(v: StudyView, df: pd.DataFrame) -> Table:
    recs = []
    for r in df.itertuples():
        m = METRICS[r.metric]
        if r.n:
            diff = fmt.interval(r.difference, r.low, r.high, m.digits, sign=True)
            diff += m.unit if diff != fmt.DASH else ""
            won = f"{r.wins} / {r.losses} / {r.ties} of {r.n}"
        else:
            diff, won = fmt.DASH, "no pairs"
        recs.append({**_keys(v, r.scenario), "optimizer": r.optimizer,
                     "metric": r.metric_label, f"difference vs {v.baseline}": diff,
                     "won / lost / tied (seeds)": won, "p (Holm)": _p_text(r.p_holm),
                     "verdict": r.verdict})
    pct = int(round(100 * v.level))
    judged = int(df["judged"].sum()) if len(df) else 0
    caption = (
        f"Each optimizer against the baseline {v.baseline} ({v.baseline_reason}), paired by "
        f"seed. Accuracies, deficits, ACC, BWT, forgetting: mean difference [{pct} % Student-t "
        "interval], paired t test. Recovery time: median difference [bootstrap interval], "
        "Wilcoxon signed-rank test, a seed that never recovered counting as the phase length. "
        "Won / lost / tied: seeds where the optimizer is better / worse / equal. "
        f"The p-values are Holm-adjusted over all {judged} comparisons of this report; the "
        f"verdict is 'better' or 'worse' only when the adjusted p-value is at most {ALPHA}, "
        "else 'no detectable difference'"
        f"; with fewer than {MIN_SEEDS} seeds nothing is judged. Unadjusted p-values are in "
        "tables/comparison.csv.")
    return Table("comparison", f"Paired comparison against the baseline ({v.baseline})",
                 caption, df, pd.DataFrame(recs))


def phase_table(v: StudyView, df: pd.DataFrame) -> Table:
    recs = []
    show_true = any(v.noise.values())
    for r in df.itertuples():
        g = r._asdict()
        rec: dict[str, Any] = {**_keys(v, r.scenario), "optimizer": r.optimizer,
                               "phase": f"{r.phase}: {r.name}", "runs": r.runs,
                               "online accuracy": fmt.interval(r.online_acc, r.online_acc_low,
                                                               r.online_acc_high)}
        noise = r.label_kind == "noise"
        if show_true:
            rec["online acc. (original labels)"] = fmt.interval(
                r.online_acc_true, r.online_acc_true_low, r.online_acc_true_high) \
                if noise else fmt.DASH
        if r.shifted:
            rec["recovery (steps)"] = _recovery_text(
                r.recovery_steps, r.recovery_steps_low, r.recovery_steps_high, r.censored,
                r.shifts)
            if show_true:
                rec["recovery (original labels)"] = _recovery_text(
                    g["recovery_steps_true"], g["recovery_steps_true_low"],
                    g["recovery_steps_true_high"], g["censored_true"], g["shifts_true"]) \
                    if noise else fmt.DASH
            rec["censored"] = _censored_text(r.censored, r.shifts)
            rec["drop"] = fmt.interval(r.drop, r.drop_low, r.drop_high)
            rec["deficit"] = fmt.interval(r.deficit, r.deficit_low, r.deficit_high)
        else:
            what = "no shift" if r.phase > 0 else fmt.DASH
            rec["recovery (steps)"] = what
            if show_true:
                rec["recovery (original labels)"] = fmt.DASH
            rec["censored"] = rec["drop"] = rec["deficit"] = fmt.DASH
        rec["held-out acc. (phase end)"] = fmt.interval(r.heldout_acc, r.heldout_acc_low,
                                                        r.heldout_acc_high)
        recs.append(rec)
    caption = ("Per phase; one value per seed. Phase 0, and a phase that changes nothing "
               "relative to the one before (a flip rate of 0, say), has no shift to recover "
               "from. Same definitions as the summary; recovery is the median over seeds "
               "[bootstrap interval]; 'runs' counts the runs that reached the phase. For "
               "label-noise phases the recovery on the original labels is shown too: it is "
               "the one that matters there.")
    return Table("phases", "Per phase", caption, df, pd.DataFrame(recs))


def runs_table(v: StudyView) -> Table:
    cols = [c for c in ("run_id", "scenario", "severity", "optimizer", "optimizer_name", "lr",
                        "model", "seed", "status", "diverged_step", "steps", "steps_run",
                        "online_acc", "online_acc_true", "acc", "bwt", "forgetting",
                        "anytime_acc", "total_s", "ms_per_step", "device", "machine", "error")
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


def tuning_table(v: StudyView) -> Table:
    """The tuned settings: per scenario and optimizer the chosen hyperparameters, the selection
    metric's mean over the tuning seeds, the tolerance in decades and edge flags."""
    from ..study.tuning import describe_chosen

    df = v.tuning if v.tuning is not None else pd.DataFrame()
    known = {"scenario", "model", "optimizer", "metric", "value", "worst", "n", "eligible",
             "tolerance", "tolerance_low", "tolerance_high", "at_edge", "scope", "tuned_on",
             "chance"}
    hp = [c for c in df.columns if c not in known]
    tv = v.tolerance_vs_baseline
    diffs = None
    if tv is not None and len(tv):
        diffs = {(str(r.scenario), r.optimizer): (r.difference, r.low, r.high)
                 for r in tv.itertuples()}
    recs = []
    for _, r in df.iterrows():
        chosen = describe_chosen({k: r[k] for k in hp if not fmt.isnan(r[k])})
        tol = fmt.interval(r.get("tolerance"), r.get("tolerance_low"), r.get("tolerance_high"),
                           2)
        edge = str(r.get("at_edge") or "")
        notes = []
        if edge:
            notes.append("best at the grid's edge (" + edge.replace(":", " ") + "): widen "
                         "the grid")
        if not r.get("eligible", True):
            notes.append("every grid point had a diverged or failed tuning run")
        if v.no_signal.get(str(r["scenario"])):
            notes.append("no learnable signal: not ranked")
        value = -r["value"] if r.get("metric") == "deficit" else r["value"]
        rec = {**_keys(v, str(r["scenario"])), "optimizer": r["optimizer"],
               "chosen": chosen, "metric": r.get("metric", ""),
               "mean over tuning seeds": fmt.num(value), "tolerance (decades)": tol}
        if diffs is not None:
            d = diffs.get((str(r["scenario"]), r["optimizer"]))
            rec[f"Δ tolerance vs {v.baseline}"] = fmt.DASH if d is None else fmt.interval(
                d[0], d[1], d[2], 2, sign=True)
        rec["notes"] = "; ".join(notes) or fmt.DASH
        recs.append(rec)
    caption = (
        "Each optimizer's setting for the evaluation runs, chosen on tuning seeds that the "
        "evaluation never sees: the grid point with the best mean of the selection metric over "
        "the tuning seeds (ties: the better worst seed; a point where a tuning run diverged is "
        "not eligible). Tolerance: the width in decades of the learning-rate range around the "
        "best whose mean stays within 95 % of the best, chance-normalised [95 % bootstrap "
        "interval over the tuning seeds]; 0 means only the chosen grid point qualifies, and the "
        "grid's spacing limits the resolution. Δ tolerance: the difference to the baseline's "
        "tolerance with a 95 % interval from the paired bootstrap (both resampled on the same "
        "tuning seeds). A best value at the edge of its grid may lie outside it.")
    return Table("tuning", "Tuned settings", caption, df, pd.DataFrame(recs))


#: bootstrap resamples of the rank table
RANK_BOOT = 1000


def rank_frame(v: StudyView, n_boot: int = RANK_BOOT, seed: int = 0
               ) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The league: each optimizer's mean rank over the ranked scenarios (rank 1 = the highest
    mean headline online accuracy over seeds in a scenario; ties share the average rank), with a
    percentile-bootstrap interval (seeds resampled within each scenario, paired across
    optimizers, since one seed is one stream), first places, and the mean rank per scenario
    family. None with fewer than 3 optimizers or 2 ranked scenarios. Scenarios without a
    learnable signal are left out."""
    values = v.values if v.values is not None else run_values(v)
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
    rng = np.random.default_rng(seed)

    def ranks(frames: list[pd.DataFrame]) -> np.ndarray:
        out = np.full((len(frames), len(arms)), np.nan)
        for i, t in enumerate(frames):
            means = t.mean(axis=0, skipna=True)
            out[i] = means.rank(ascending=False, method="average").to_numpy()
        return out

    point = ranks(tables)
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
                     "first_places": int((col == 1).sum()), "scenarios": int(
                         np.isfinite(col).sum())})
    league = pd.DataFrame(rows).sort_values("mean_rank", kind="stable").reset_index(drop=True)
    per = pd.DataFrame(point, columns=arms).assign(family=fam)
    families = per.groupby("family", sort=False).mean().T
    families.index.name = "optimizer"
    families = families.reindex(league["optimizer"]).reset_index()
    return league, families


def league_tables(v: StudyView) -> dict[str, Table]:
    got = rank_frame(v)
    if got is None:
        return {}
    league, families = got
    pct = int(round(100 * v.level))
    recs = [{"rank": i + 1, "optimizer": r.optimizer,
             "mean rank": fmt.interval(r.mean_rank, r.low, r.high, 2),
             "first places": f"{r.first_places} of {r.scenarios}"}
            for i, r in enumerate(league.itertuples())]
    caption = (
        "Each optimizer's mean rank over the ranked scenarios: in each scenario the optimizers "
        "are ranked by their mean headline online accuracy over seeds (the original labels for "
        "label noise; 1 = best, ties share the average rank). Interval: a "
        f"{pct} % percentile bootstrap, resampling the seeds of each scenario (paired across "
        "optimizers: one seed is one stream). Ranks order the means; a difference of ranks is "
        "not a test (the comparison table is). Scenarios without a learnable signal are left "
        "out.")
    fam_display = families.copy()
    for c in fam_display.columns[1:]:
        fam_display[c] = fam_display[c].map(lambda x: fmt.num(x, 1))
    return {
        "league": Table("league", "League: mean rank over scenarios", caption, league,
                        pd.DataFrame(recs)),
        "league_families": Table("league_families", "Mean rank per scenario family",
                                 "The mean rank of each optimizer within each scenario family "
                                 "(the same ranks as the league).", families, fam_display),
    }


def build(v: StudyView) -> StudyView:
    """Compute every table into ``v.tables`` (and ``v.values``, ``v.summary``,
    ``v.comparison``, ``v.phase_summary``); returns ``v``."""
    v.values = run_values(v)
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
    if v.tuning is not None and len(v.tuning):
        v.tables["tuning"] = tuning_table(v)
    v.tables.update(league_tables(v))
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
