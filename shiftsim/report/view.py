"""The study as the report sees it: :func:`view` turns a loaded study into a
:class:`StudyView` — one ``optimizer`` label per arm, the scenarios and optimizers in the study's
order, the baseline, the severity axis, and what each scenario allows (label noise, conflicting
regimes, no learnable signal)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ShiftsimError
from ..metrics import original_label_rows
from ..metrics.names import format_severity
from .document import Table
from .statistics import METRICS

__all__ = ["NO_SIGNAL_MARGIN", "WITH_METRICS", "StudyView", "order_frame", "view"]

#: statuses whose runs have metrics (a diverged run's metrics cover the steps before it)
WITH_METRICS = ("ok", "diverged")

#: a noise phase whose ceiling is this close to chance carries no learnable signal
NO_SIGNAL_MARGIN = 0.05

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
    #: scenarios judged on the original labels whose stored runs lack the clean-label chance
    #: level (runs stored before partial flips below 0.5 were judged that way): their
    #: clean-label recovery is undefined until the study is run again into a new folder
    clean_missing: list[str] = field(default_factory=list)
    #: (scenario, kind) -> True when that kind's shifts are judged on the original labels
    kind_noise: dict[tuple[str, str], bool] = field(default_factory=dict)
    #: per scenario, the kinds of its shifts in phase order
    #: (:meth:`shiftsim.Scenario.shift_kind`); a run's shifts are reduced per kind
    kinds: dict[str, list[str]] = field(default_factory=dict)
    #: a tuned study's selection and grid scores (None without tuning)
    tuning: pd.DataFrame | None = None
    tuning_curves: pd.DataFrame | None = None
    tolerance_vs_baseline: pd.DataFrame | None = None
    values: pd.DataFrame | None = None
    #: one row per run and shift kind (:func:`~shiftsim.report.frames.kind_values`)
    kind_values: pd.DataFrame | None = None
    tables: dict[str, Table] = field(default_factory=dict)
    summary: pd.DataFrame | None = None
    comparison: pd.DataFrame | None = None
    #: the league's first-place tests with their p-values adjusted in the report's family
    #: (:func:`~shiftsim.report.frames.family_adjust`); None before the tables are built
    first_places: pd.DataFrame | None = None
    #: with one baseline per model (a baseline named by its optimizer in a study of several
    #: models), the baseline arms; empty when ``baseline`` is itself the one baseline arm
    baseline_arms: tuple[str, ...] = ()

    def baseline_of(self, arm: str) -> str:
        """The baseline arm ``arm`` is compared with: the one baseline, or with one baseline
        per model the baseline of ``arm``'s model (``sgdm [cnn]`` for ``tam [cnn]``; a model
        without a baseline run names an arm that has no runs, so nothing is compared)."""
        if not self.baseline_arms:
            return self.baseline
        return f"{self.baseline} [{arm.partition(' [')[2]}"

    def is_baseline(self, arm: str) -> bool:
        return arm == self.baseline or arm in self.baseline_arms
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

    def kind_headline(self, scenario: str, kind: str, column: str) -> str:
        """The column a kind of shift of a scenario is judged on: the clean-label twin when
        that kind's shifts are label noise (or partial flips below 0.5)."""
        base = column.removesuffix("_true")
        twin = f"{base}_true"
        return twin if self.kind_noise.get((scenario, kind)) and twin in METRICS else base

    def mixed(self, scenario: str) -> bool:
        """True when the scenario's shifts are of several kinds (its recovery, drop and
        deficit are then reported and compared per kind)."""
        return len(self.kinds.get(scenario, ())) > 1

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
    baseline_arms: tuple[str, ...] = ()
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
            models = [a.partition(" [")[2] for a in by_name]
            if len(by_name) == 1:
                baseline = by_name[0]
            elif by_name and all(models) and len(set(models)) == len(models):
                # one baseline per model: each arm is compared with its own model's baseline
                baseline_arms = tuple(by_name)
                reason = "given; one per model"
            else:
                raise ShiftsimError(f"unknown baseline {baseline!r}; allowed: "
                                    f"{', '.join(repr(a) for a in arms)}")
    first = list(baseline_arms) or [baseline]
    arms = first + [a for a in arms if a not in first]
    scenarios = [str(s) for s in _first_order(runs["scenario"])]
    sev = runs.groupby("scenario", sort=False)["severity"].first()
    severity = {str(s): float(sev.get(s, math.nan)) for s in scenarios}
    # a tuned study's report uses its evaluation runs: their phases alone (the common
    # reference is per scenario and stage, so the tuning runs' traces are not read)
    phases = results.stage_phases("eval") if tuned else results.phases
    if len(phases):  # (the merge below makes a new frame: the loaded one is not changed)
        phases = phases.merge(runs[["run_id", "optimizer", "optimizer_label"]].rename(
            columns={"optimizer": "_arm"}), on="run_id", how="left")
        phases["optimizer"] = phases["_arm"]
        phases = phases.drop(columns="_arm")
        phases["scenario"] = phases["scenario"].astype(str)
        phases = phases[phases["status"].isin(WITH_METRICS)].reset_index(drop=True)
    if len(phases) and ("shift_kind" not in phases.columns
                        or phases["shift_kind"].isna().any()):  # runs stored before it
        phases = _with_shift_kinds(results, runs, phases)
    n_phases, noise, shifted, no_signal, partial, kinds = {}, {}, {}, {}, {}, {}
    clean_missing: list[str] = []
    kind_noise: dict[tuple[str, str], bool] = {}
    for s in scenarios:
        ps = phases[phases["scenario"] == s] if len(phases) else phases
        n_phases[s] = int(ps["phase"].nunique()) if len(ps) else 0
        kind = ps["label_kind"].astype(str) if "label_kind" in ps.columns else pd.Series(
            dtype=str)
        shift = ps["shifted"].astype(bool) if "shifted" in ps.columns else ps["phase"] > 0
        original = original_label_rows(ps)
        # judged on the original labels: label noise, a partial permute / pair below 0.5
        noise[s] = bool(len(ps) and (original & shift).any())
        if noise[s] and "chance_true" in ps.columns and \
                ps.loc[original & shift, "chance_true"].isna().any():
            clean_missing.append(s)
        partial[s] = bool(len(ps) and (kind == "concept + noise").any())
        shifted[s] = bool(len(ps) and shift.any())
        kinds[s] = _first_order(ps.loc[shift, "shift_kind"].astype(str).sort_index()
                                ) if len(ps) and "shift_kind" in ps.columns else []
        for k in kinds[s]:
            kind_noise[(s, k)] = bool((original & shift
                                       & (ps["shift_kind"].astype(str) == k)).any())
        if noise[s] and {"ceiling", "chance"} <= set(ps.columns):
            noisy = ps[shift & original]  # every phase judged on the original labels
            no_signal[s] = bool(len(noisy)) and bool(
                ((noisy["ceiling"] - noisy["chance"]) < NO_SIGNAL_MARGIN).all())
        else:
            no_signal[s] = False
    study = getattr(results, "study", None)
    name = (study or {}).get("name") or getattr(getattr(results, "path", None), "name", "study")
    return StudyView(runs=runs, phases=phases, arms=arms, baseline=baseline,
                     baseline_reason=reason, scenarios=scenarios, severity=severity,
                     severity_name=_severity_name(runs, study), families=_families(runs),
                     n_phases=n_phases, noise=noise, level=level, name=str(name), study=study,
                     shifted=shifted, no_signal=no_signal, partial_concept=partial,
                     max_acc=_max_acc(results, runs, phases), kinds=kinds,
                     clean_missing=clean_missing, kind_noise=kind_noise,
                     tuning=getattr(results, "tuning", None) if tuned else None,
                     tuning_curves=getattr(results, "tuning_curves", None) if tuned else None,
                     tolerance_vs_baseline=_tolerance_differences(results, baseline)
                     if tuned else None, baseline_arms=baseline_arms)


def _tolerance_differences(results: Any, baseline: str) -> pd.DataFrame | None:
    from ..store import tuning_file

    path = getattr(results, "path", None)
    return tuning_file.tolerance_differences(tuning_file.read(path), baseline) if path \
        else None


def _with_shift_kinds(results: Any, runs: pd.DataFrame, phases: pd.DataFrame) -> pd.DataFrame:
    """``phases`` with each phase's ``shift_kind``, from the scenario of one run per scenario,
    where runs stored before they recorded it lack it (the whole column, or the rows of older
    runs of a study that was extended later). A scenario that cannot be rebuilt here (a dataset
    given as tensors) keeps one kind for all its shifts."""
    from ..scenario import Scenario

    have = phases["shift_kind"] if "shift_kind" in phases.columns else pd.Series(
        np.nan, index=phases.index, dtype=object)
    kind = have.astype(object).copy()
    # a phase's kind is the scenario's: first from the runs of the scenario that recorded it
    known = phases[have.notna()].drop_duplicates(["scenario", "phase"]).set_index(
        ["scenario", "phase"])["shift_kind"] if have.notna().any() else pd.Series(dtype=object)
    missing = have.isna()
    if len(known):
        keys = pd.MultiIndex.from_frame(phases.loc[missing, ["scenario", "phase"]])
        kind[missing] = known.reindex(keys).to_numpy()
    for s, ps in phases[kind.isna()].groupby("scenario", sort=False):
        sub = runs[runs["scenario"] == s]
        try:
            spec = results.spec(sub["run_id"].iloc[0])
            table = Scenario.from_dict(spec["scenario"]).phase_table()
        except Exception:  # no spec, a dataset that is not here: one kind
            kind[ps.index] = np.where(ps["shifted"].astype(bool), "shift", "") \
                if "shifted" in ps.columns else "shift"
            continue
        kind[ps.index] = ps["phase"].map(dict(zip(table["phase"], table["shift_kind"])))
    return phases.assign(shift_kind=kind.fillna("").astype(str))


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
