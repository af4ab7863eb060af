"""Which figures a report holds, drawn with :mod:`shiftsim.plots` from the loaded study."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .. import plots
from .view import WITH_METRICS, StudyView

#: most facets / matrix rows a report draws (evenly spaced over the scenarios beyond that)
MAX_FACETS = 8


@dataclass
class Figure:
    """A report figure: file stem, title, caption and the matplotlib figure."""

    name: str
    title: str
    caption: str
    figure: plt.Figure


def _spread(items: list[Any], k: int) -> list[Any]:
    if len(items) <= k:
        return items
    idx = np.unique(np.round(np.linspace(0, len(items) - 1, k)).astype(int))
    return [items[i] for i in idx]


def _with_arm(df: pd.DataFrame, v: StudyView) -> pd.DataFrame:
    arm = dict(zip(v.runs["run_id"], v.runs["optimizer"]))
    out = df.copy()
    out["optimizer"] = out["run_id"].map(arm)
    out["scenario"] = out["scenario"].astype(str)
    return out


def _facet_column(v: StudyView) -> tuple[str, str | None, list[Any]]:
    """(column, label, order) to facet per severity, or per scenario when the severity is
    unknown or several families share severities."""
    if v.has_severity and not v.families:
        sev = sorted({x for x in v.severity.values() if not math.isnan(x)})
        if len(sev) == len({s for s in v.scenarios if not math.isnan(v.severity[s])}):
            return "severity", v.severity_name, sev
    return "scenario", "scenario", list(v.scenarios)


def _scenario_order(v: StudyView) -> list[str]:
    if v.has_severity:
        return sorted(v.scenarios, key=lambda s: (v.families.get(s, ""), math.inf if math.isnan(
            v.severity[s]) else v.severity[s]))
    return list(v.scenarios)


def build_figures(v: StudyView, results: Any, window: int = 20,
                  progress: Callable[[str], None] | None = None) -> Iterator[Figure]:
    """Draw the report's figures (those the study has data for), one at a time.

    A generator: each figure is drawn when the next one is asked for, so the caller can save
    and close it first (a league of 22 scenarios has 24 figures; matplotlib warns past 20
    open ones, and each holds its canvas in memory).
    """
    palette = plots.optimizer_palette(v.arms)
    pct = int(round(100 * v.level))
    ok_ids = v.runs.loc[v.runs["status"].isin(WITH_METRICS), "run_id"].tolist()
    traces = results.traces(run_ids=ok_ids, columns=["phase", "n", "correct", "correct_true"])
    traces = _with_arm(traces, v)
    # label-noise scenarios are judged on the original labels: their curves show those
    noisy = [s for s in v.scenarios if v.noise.get(s)]
    if noisy:
        on_true = traces["scenario"].isin(noisy).to_numpy()
        traces.loc[on_true, "correct"] = traces.loc[on_true, "correct_true"]
    values = _headline_values(v)
    noise_note = (" For label-noise scenarios (and partial permute or pair flips below "
                  "50 %) the curves and times are against the original labels." if noisy
                  else "")
    col, col_label, order = _facet_column(v)
    shown = _spread(order, MAX_FACETS)
    if len(shown) < len(order):
        traces_f = traces[traces[col].isin(shown)]
        note = f" ({len(shown)} of {len(order)} {col}s shown, evenly spaced)"
    else:
        traces_f, note = traces, ""
    single = len(order) == 1
    multi_phase = traces["phase"].max() >= 1 if len(traces) else False

    def say(name: str) -> None:
        if progress:
            progress(name)

    if multi_phase:
        say("recovery curves")
        fig = plots.recovery_curves(
            traces_f, hue="optimizer", col=None if single else col, window=window, before=window,
            level=v.level, palette=palette, col_wrap=3, col_label=col_label, hue_order=v.arms,
            col_order=shown, recovery=values, shifted=_shifted_phases(v))
        yield Figure(
            "recovery_curves", "Recovery after each shift",
            f"Online accuracy ({window}-step trailing mean within the phase) against steps since "
            f"each shift; mean over seeds and shifts with a {pct} % Student-t band; the dashed "
            "line is the shift, dotted lines the median recovery time over seeds of each "
            "optimizer (when defined; each run's shifts reduced to their median first; none "
            "for a scenario whose shifts are of several kinds, which the tables give per "
            "kind). "
            f"Negative steps: the end of the phase before{note}.{noise_note}", fig)

    say("stream accuracy")
    fig = plots.stream_accuracy(
        traces_f, v.phases, hue="optimizer", col=None if single else col, window=window,
        level=v.level, palette=palette, col_wrap=2, hue_order=v.arms, col_order=shown,
        col_label=col_label)
    yield Figure(
        "stream_accuracy", "Online accuracy over the whole stream",
        f"Online accuracy ({window}-step trailing mean within each phase) against the step, "
        f"mean over seeds with a {pct} % band; phases alternately shaded and named{note}. "
        "A × marks where a run stopped because it diverged.", fig)

    recovery = _headline_recovery(v, values)  # once, for both figures below
    if len(v.scenarios) >= 2 and multi_phase:
        say("severity curves")
        yield from _severity_figures(v, palette, values, recovery)

    if len(v.scenarios) >= 2 or len(v.arms) >= 2:
        say("heatmap")
        yield _heatmap(v, values, recovery)

    evals = results.evals_of(ok_ids)  # a tuned study's evaluation runs: not its tuning runs'
    if len(evals) and "phase_end" in evals.columns and evals["phase_end"].astype(bool).any() \
            and max(v.n_phases.values() or [0]) >= 2:
        say("accuracy matrix")
        ev = _with_arm(evals, v)  # only ok_ids' rows: runs with metrics
        rows = [s for s in _spread(_scenario_order(v), 4) if v.n_phases.get(s, 0) >= 2]
        ev = ev[ev["scenario"].isin(rows)]
        if len(ev):
            row, row_order, row_label = "scenario", rows, "scenario"
            if v.severity_identifies:
                row, row_label = "severity", v.severity_name
                row_order = [v.severity[s] for s in rows]
            fig = plots.accuracy_matrices(ev, hue="optimizer",
                                          row=None if len(rows) == 1 else row,
                                          hue_order=v.arms, row_order=row_order,
                                          row_label=row_label)
            yield Figure(
                "accuracy_matrix", "Accuracy matrix",
                "R[i, j]: held-out accuracy on the regime of phase j at the end of phase i, mean "
                "over seeds (label noise is not applied to held-out labels, so noise phases "
                "show clean accuracy)" + ("" if len(rows) == len(v.scenarios) else
                                          f"; {len(rows)} scenarios shown") + ".", fig)

    cur = v.tuning_curves
    if cur is not None and not cur.empty and "lr" in cur.columns:
        say("sensitivity")
        yield _sensitivity(v, palette, cur)

    say("diagnostics")  # reads the most severe scenario's traces (no figure: none recorded)
    diag = _diagnostics(v, results, palette, window)
    if diag is not None:
        yield diag


def _headline_values(v: StudyView) -> pd.DataFrame:
    """One row per run: the headline online accuracy and recovery (clean labels for label
    noise), runs without a shift left out of the recovery columns."""
    val = v.values.copy() if v.values is not None else pd.DataFrame(
        columns=["run_id", "scenario", "optimizer", "seed", "severity", "online_acc",
                 "recovery_steps", "recovery_samples", "censored", "shifts"])
    noisy = val["scenario"].map(lambda s: bool(v.noise.get(s))).astype(bool)
    for c in ("online_acc", "recovery_steps", "recovery_samples", "censored", "shifts"):
        if f"{c}_true" in val.columns:
            val.loc[noisy, c] = val.loc[noisy, f"{c}_true"]
    val["censored"] = val["censored"].astype(bool)
    return val


def _headline_recovery(v: StudyView, values: pd.DataFrame) -> pd.DataFrame:
    """The runs' headline recovery (clean labels for label noise), one row per run with a
    shift, and for a scenario whose shifts are of several kinds one row per run and kind, the
    scenario labelled ``"<scenario>:\n<kind>"`` (``origin``: the scenario it came from)."""
    rec = values[values["shifts"] > 0].assign(origin=lambda d: d["scenario"])
    kinds = v.kind_values
    if kinds is None or kinds.empty:
        return rec
    kinds = kinds.copy()
    noisy = pd.Series([bool(v.kind_noise.get((s, k))) for s, k in zip(kinds["scenario"],
                                                                    kinds["shift_kind"])],
                      index=kinds.index, dtype=bool)
    for c in ("recovery_steps", "recovery_samples", "censored", "shifts"):
        kinds.loc[noisy, c] = kinds.loc[noisy, f"{c}_true"]
    kinds["censored"] = kinds["censored"].astype(bool)
    kinds = kinds[kinds["shifts"] > 0].assign(
        origin=lambda d: d["scenario"],
        scenario=lambda d: d["scenario"].astype(str) + ":\n" + d["shift_kind"].astype(
            str).str.replace(" + ", "\n+ ", regex=False))
    return pd.concat([rec, kinds[[c for c in rec.columns if c in kinds.columns]]],
                     ignore_index=True)


def _shifted_phases(v: StudyView) -> pd.DataFrame | None:
    """run_id, phase of the phases that are shifts (for the recovery curves)."""
    if not len(v.phases) or "shifted" not in v.phases.columns:
        return None
    return v.phases.loc[v.phases["shifted"].astype(bool), ["run_id", "phase"]]


def _sensitivity(v: StudyView, palette: dict[str, Any], cur: pd.DataFrame) -> Figure:
    """The tuning metric against the learning rate per optimizer and tuning group, from the
    tuning curves ``cur`` (with an ``lr`` column)."""
    t = v.tuning if v.tuning is not None else pd.DataFrame()
    metric = str(t["metric"].iloc[0]) if len(t) and "metric" in t else "score"
    if metric == "deficit":
        cur = cur.assign(mean=-cur["mean"], low=-cur["high"], high=-cur["low"])
    groups = list(dict.fromkeys(cur["group"]))
    shown = _spread(groups, MAX_FACETS)
    cur = cur[cur["group"].isin(shown)]
    label = {"online_acc": "online accuracy",
             "online_acc_true": "online accuracy (original labels)",
             "deficit": "recovery deficit"}.get(metric, metric)
    if metric == "auto" or t.get("metric", pd.Series(dtype=str)).nunique() > 1:
        label = "online accuracy (original labels for noise)"
    arms = [a for a in v.arms if a in set(cur["optimizer"])] + sorted(
        set(cur["optimizer"]) - set(v.arms))
    fig = plots.sensitivity(cur, metric=label, hue="optimizer", col="group",
                            palette={**plots.optimizer_palette(arms), **palette},
                            hue_order=arms, col_order=shown,
                            col_title=lambda g: "all scenarios pooled" if g == "*" else str(g))
    note = "" if len(shown) == len(groups) else f" ({len(shown)} of {len(groups)} shown)"
    pct = int(round(100 * v.level))
    return Figure(
        "sensitivity", "Learning-rate sensitivity (tuning runs)",
        f"The selection metric against the learning rate on the tuning seeds: mean with a "
        f"{pct} % Student-t band; the star is the chosen setting, an open circle a learning "
        "rate where a tuning run diverged or failed (not eligible). The evaluation runs use "
        f"other seeds{note}.", fig)


def _severity_figures(v: StudyView, palette: dict[str, Any], values: pd.DataFrame,
                      recovery: pd.DataFrame
                      ) -> Iterator[Figure]:
    pct = int(round(100 * v.level))
    families = sorted(set(v.families.values())) if v.families else [None]
    for fam in families:
        scen = [s for s in v.scenarios if fam is None or v.families.get(s) == fam]
        rn = values[values["scenario"].isin(scen)]
        ph = recovery[recovery["origin"].isin(scen)]
        mixed = any(v.mixed(s) for s in scen)  # per kind: one point per scenario and kind
        x = "severity" if v.has_severity and rn["severity"].notna().all() and not mixed \
            else "scenario"
        x_label = v.severity_name if x == "severity" else "scenario"
        with plots.style():
            fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.6), layout="constrained")
        plots.severity_curves(ph, y="recovery_steps", x=x, hue="optimizer", level=v.level,
                              palette=palette, x_label=x_label, hue_order=v.arms, ax=axes[0])
        plots.severity_curves(rn, y="online_acc", x=x, hue="optimizer", level=v.level,
                              palette=palette, x_label=x_label, hue_order=v.arms, ax=axes[1])
        axes[0].set_title("recovery time after a shift")
        axes[1].set_title("online accuracy over the stream")
        if axes[0].get_legend() is not None:
            axes[0].get_legend().remove()
        suffix = f"_{_slug(fam)}" if fam else ""
        title = f"Recovery and accuracy against {x_label}" + (f" ({fam})" if fam else "")
        yield Figure(
            f"severity{suffix}", title,
            "Left: median recovery time over seeds (each run's shifts of one kind reduced to "
            "their median first, a scenario with several kinds shown per kind; runs that "
            "never recover count as +∞), bars from the 25th to the 75th "
            "percentile, small dots the seeds; triangles in the grey 'censored' strip mark "
            "seeds that never recovered (bigger: more) and an open circle there a median that "
            "is undefined (half or more never recover). Right: online accuracy, mean over seeds "
            f"with a {pct} % Student-t interval, dots the seeds. Label-noise scenarios "
            "and partial permute or pair flips below 50 %: original labels.", fig)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in str(text)).strip("_").lower()


def _heatmap(v: StudyView, values: pd.DataFrame, recovery: pd.DataFrame) -> Figure:
    runs = values
    mixed = any(v.mixed(s) for s in v.scenarios)
    x = "severity" if v.has_severity and not v.families and runs["severity"].notna().all() \
        and not mixed else "scenario"
    x_label = v.severity_name if x == "severity" else "scenario"
    ncols = max(runs[x].nunique(), recovery[x].nunique())
    stacked = ncols > 4  # many severities: one map above the other
    height = max(2.2, 0.45 * len(v.arms) + 1.5)
    with plots.style():
        if stacked:
            fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.8 * ncols + 3.0), 2 * height),
                                     layout="constrained")
        else:
            fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 2 * (0.8 * ncols + 2.4)), height),
                                     layout="constrained")
    plots.severity_heatmap(runs, value="online_acc", x=x, y="optimizer", x_label=x_label,
                           hue_order=v.arms, ax=axes[0])
    plots.severity_heatmap(recovery, value="recovery_steps", x=x, y="optimizer",
                           x_label=x_label, hue_order=v.arms, ax=axes[1])
    axes[0].set_title("online accuracy (mean over seeds)")
    axes[1].set_title("median recovery time (steps)")
    if stacked:
        axes[0].set_xlabel("")
    else:
        axes[1].set_ylabel("")
    first, second = ("Top", "Bottom") if stacked else ("Left", "Right")
    return Figure("heatmap", f"Optimizer × {x_label}",
                  f"{first}: mean online accuracy over seeds (higher is better). {second}: median "
                  "recovery time in steps over seeds (each run's shifts of one kind reduced to "
                  "their median first; a scenario with several kinds per kind), never "
                  "recovering counted as +∞ (lower is better; 'censored' where "
                  "half or more never recovered, 'n/a' where no run had a shift). Label-noise "
                  "scenarios and partial permute or pair flips below 50 %: original labels.",
                  fig)


def _diagnostics(v: StudyView, results: Any, palette: dict[str, Any], window: int
                 ) -> Figure | None:
    """Optimizer diagnostics (diag_* trace columns) in the most severe scenario."""
    order = _scenario_order(v)
    runs = v.runs_with_metrics()
    for s in reversed(order):
        ids = runs.loc[runs["scenario"] == s, "run_id"].tolist()
        if not ids:
            continue
        tr = results.traces(run_ids=ids)
        cols = plots.diagnostic_columns(tr)
        if not cols:
            return None  # the same optimizers run everywhere; none records diagnostics
        tr = _with_arm(tr, v)
        fig = plots.diagnostics(tr, hue="optimizer", columns=cols, window=window,
                                level=v.level, palette=palette,
                                hue_order=[a for a in v.arms if a in set(tr["optimizer"])])
        where = v.severity_text(s)
        return Figure("diagnostics", "Optimizer diagnostics",
                      f"Diagnostics the optimizers record, in {where} (scenario {s}): "
                      f"{window}-step rolling mean, mean over seeds with a "
                      f"{int(round(100 * v.level))} % band; dashed lines are the shifts. "
                      "Only optimizers that record a quantity have a line for it.", fig)
    return None
