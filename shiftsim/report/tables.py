"""The report's display tables: each a :class:`~shiftsim.report.document.Table` of numbers
(written as CSV) and their formatted text (Markdown and HTML) with a caption saying how every
number was made. :func:`build` computes every frame (:mod:`~shiftsim.report.frames`) and table
of a :class:`~shiftsim.report.view.StudyView`."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from ..metrics.names import format_severity
from . import _format as fmt
from .document import Table
from .frames import (
    comparison_frame,
    family_adjust,
    first_place_frame,
    kind_frame,
    kind_values,
    phase_frame,
    rank_frame,
    reduced_shifts,
    run_values,
    summary_frame,
)
from .statistics import ALPHA, METRICS, MIN_SEEDS
from .view import StudyView

__all__ = ["Table", "build", "comparison_table", "heldout_table", "kind_table", "league_tables",
           "phase_table", "runs_table", "summary_table", "tuning_table"]


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
        if g.get("shift_kinds", 0) > 1:  # shifts of several kinds: reduced per kind
            rec["recovery (steps)"] = rec["censored"] = rec["deficit"] = "per kind"
        else:
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
        + ("; label-noise scenarios, and partial permute or pair flips below 50 % (noise "
           "around the original concept), are judged on the original labels, so their "
           "recovery and deficit columns are the clean-label ones" if show_true else "")
        + ". Recovery: each run's shifts of one kind reduced to their median (a scenario with "
        "shifts of several kinds: 'per kind', in the table Recovery by kind of shift), then the "
        "median over seeds "
        f"[{pct} % bootstrap interval], counting runs that never recovered as +∞ (∞ in an "
        "interval: more than 2.5 % of the resamples never recover); *undefined when half or "
        "more of the seeds never recover; 'never' when none does. A shift is recovered when "
        "the 20-step trailing accuracy, after first falling below the target for 5 steps, "
        "stays at or above it for 20 steps; the target is chance + 90 % of the way from chance "
        "to the common reference (the best mean plateau any optimizer reached, capped at the "
        "ceiling), the same for every optimizer. Censored: seeds that never recovered / seeds "
        "with shifts. Deficit: mean shortfall below the reference over each shifted phase. "
        "ms/step: mean wall time per step of the runs, a one-off build of shiftsim's C library "
        "left out; the runs of one fleet share its time equally (machine noise: shown, never "
        "used for a verdict)." + _diverged_note(df))
    return Table("summary", "Summary per scenario and optimizer", caption, df,
                 pd.DataFrame(recs))


def kind_table(v: StudyView, df: pd.DataFrame) -> Table:
    """Recovery, drop and deficit per kind of shift, for scenarios whose shifts are of several
    kinds (:func:`~shiftsim.report.frames.kind_frame`)."""
    recs = []
    for r in df.itertuples():
        g = r._asdict()
        sfx = "_true" if v.kind_noise.get((r.scenario, r.shift_kind), False) else ""
        recs.append({
            **_keys(v, r.scenario), "shift kind": r.shift_kind, "optimizer": r.optimizer,
            "recovery (steps)": _recovery_text(
                g[f"recovery_steps{sfx}"], g[f"recovery_steps{sfx}_low"],
                g[f"recovery_steps{sfx}_high"], g[f"censored{sfx}"], g[f"shifts{sfx}"]),
            "censored": _censored_text(g[f"censored{sfx}"], g[f"shifts{sfx}"]),
            "drop": fmt.interval(g[f"drop{sfx}"], g[f"drop{sfx}_low"], g[f"drop{sfx}_high"]),
            "deficit": fmt.interval(g[f"deficit{sfx}"], g[f"deficit{sfx}_low"],
                                    g[f"deficit{sfx}_high"])})
    pct = int(round(100 * v.level))
    caption = (
        "For scenarios whose shifts are of several kinds (e.g. a rotation, then a label "
        "permutation): each run's shifts of one kind reduced to their median, then aggregated "
        "over seeds per kind, so a fast kind and a slow one are never averaged into one number. "
        "A kind is what changes at the shift: the types of the shifts that differ between the "
        "phase before and the phase after (a shift away and the shift back are one kind). "
        f"Recovery: median over seeds [{pct} % bootstrap interval], never-recovered seeds as "
        f"+∞; drop and deficit: mean over seeds [{pct} % Student-t interval]. A kind of label "
        "noise (or of partial permute or pair flips below 50 %) is judged on the original "
        "labels, every other kind on the stream's (label_noise in the CSV). Otherwise the "
        "same definitions as the summary.")
    return Table("kinds", "Recovery by kind of shift", caption, df, pd.DataFrame(recs))


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
        if r.n and isinstance(r.untestable, str) and r.untestable:
            diff, won = fmt.DASH, f"{r.ties} tied of {r.n}"
        elif r.n:
            diff = fmt.interval(r.difference, r.low, r.high, m.digits, sign=True)
            diff += m.unit if diff != fmt.DASH else ""
            if diff != fmt.DASH and bool(r.median_undefined):
                diff += " ‡"
            won = f"{r.wins} / {r.losses} / {r.ties} of {r.n}"
        else:
            diff, won = fmt.DASH, "no pairs"
        recs.append({**_keys(v, r.scenario), "optimizer": r.optimizer,
                     "metric": r.metric_label, f"difference vs {v.baseline}": diff,
                     "won / lost / tied (seeds)": won, "p (Holm)": _p_text(r.p_holm),
                     "verdict": r.verdict})
    pct = int(round(100 * v.level))
    judged = int(df["judged"].sum()) if len(df) else 0
    firsts = v.first_places
    n_first = int((firsts["p"].notna() & ~firsts["duplicate"].astype(bool)).sum()) \
        if firsts is not None and len(firsts) else 0
    caption = (
        f"Each optimizer against the baseline {v.baseline} ({v.baseline_reason}), paired by "
        f"seed. Accuracies, deficits, ACC, BWT, forgetting: mean difference [{pct} % Student-t "
        "interval], paired t test. Recovery time: median difference [bootstrap interval], "
        "Wilcoxon signed-rank test, a seed that never recovered counting as the phase length "
        "(‡: half or more of one side's seeds never recover, so that side's median is "
        "undefined and the difference rests on this convention); where on every seed both "
        "sides never recover, or the shift hurt neither, there is nothing to test ('not "
        "compared', outside the Holm family). "
        "Won / lost / tied: seeds where the optimizer is better / worse / equal. "
        + (f"The p-values are Holm-adjusted over all {judged} comparisons of this report"
           + (f" and the league's {n_first} first-place tests" if n_first else "")
           if judged else "No comparison could be judged, so no p-value is adjusted")
        + "; the "
        f"verdict is 'better' or 'worse' only when the adjusted p-value is at most {ALPHA}, "
        "else 'no detectable difference with n seeds'"
        f"; with fewer than {MIN_SEEDS} seeds nothing is judged. The intervals are each "
        "comparison's own, not adjusted, so one that leaves out 0 can go with 'no detectable "
        "difference'. Unadjusted p-values are in tables/comparison.csv.")
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
        noise = bool(getattr(r, "original_labels", r.label_kind == "noise"))
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
               "label-noise phases, and partial permute or pair flips below 50 %, the "
               "recovery on the original labels is shown too: it is the one that matters "
               "there.")
    return Table("phases", "Per phase", caption, df, pd.DataFrame(recs))


def runs_table(v: StudyView) -> Table:
    known = ("run_id", "scenario", "severity", "optimizer", "optimizer_name", "lr", "model",
             "seed", "stage", "status", "diverged_step", "steps", "steps_run", "online_acc",
             "online_acc_true", "acc", "bwt", "forgetting", "anytime_acc", "total_s",
             "ms_per_step", "device", "machine", "error")
    # the study's own label columns (a view, a dataset, a custom axis) after the model
    extra = [c for c in v.runs.columns if c not in known and c != "optimizer_label"]
    at = known.index("seed")
    cols = [c for c in (*known[:at], *extra, *known[at:]) if c in v.runs.columns]
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


#: the columns of a tuning table that are not hyperparameters
TUNING_COLUMNS = frozenset({"scenario", "model", "optimizer", "metric", "value", "worst", "n",
                            "eligible", "tolerance", "tolerance_low", "tolerance_high",
                            "tolerance_open", "at_edge", "scope", "tuned_on", "chance"})


def hyperparameter_columns(tuning: pd.DataFrame) -> list[str]:
    """The tuned hyperparameters' columns of a tuning table (``lr``, ...)."""
    return [c for c in tuning.columns if c not in TUNING_COLUMNS]


def tuning_table(v: StudyView) -> Table:
    """The tuned settings: per scenario and optimizer the chosen hyperparameters, the selection
    metric's mean over the tuning seeds, the tolerance in decades and edge flags."""
    from ..study.tuning import describe_chosen

    df = v.tuning if v.tuning is not None else pd.DataFrame()
    hp = hyperparameter_columns(df)
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
        if isinstance(r.get("tolerance_open"), str) and r["tolerance_open"]:
            tol = "≥ " + tol  # the good range reaches the grid's end: a lower bound
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
        "grid's spacing limits the resolution; ≥: the good range reaches the end of the grid, "
        "so the tolerance is a lower bound. Δ tolerance: the difference to the baseline's "
        "tolerance with a 95 % interval from the paired bootstrap (both resampled on the same "
        "tuning seeds); where either tolerance is a lower bound, the true difference may be "
        "larger or smaller. A best value at the edge of its grid may lie outside it.")
    return Table("tuning", "Tuned settings", caption, df, pd.DataFrame(recs))


def league_tables(v: StudyView) -> dict[str, Table]:
    got = rank_frame(v)
    if got is None:
        return {}
    league, families = got
    pct = int(round(100 * v.level))
    several = league["league"].nunique() > 1
    recs_league = []
    for _, g in league.groupby("league", sort=True):
        for i, r in enumerate(g.itertuples()):
            rec = {"league": f"{r.league + 1} ({r.league_scenarios} scenarios)"} \
                if several else {}
            recs_league.append({**rec, "rank": i + 1, "optimizer": r.optimizer,
                                "mean rank": fmt.interval(r.mean_rank, r.low, r.high, 2),
                                "first places": f"{r.first_places} of {r.scenarios}",
                                "tied for first": f"{r.tied_first} of {r.scenarios}"})
    caption = (
        "Each optimizer's mean rank over the ranked scenarios: in each scenario the optimizers "
        "are ranked by their mean headline online accuracy over seeds (the original labels for "
        "label noise and partial permute or pair flips below 50 %; 1 = best, ties share the "
        "average rank). Interval: a "
        f"{pct} % percentile bootstrap, resampling the seeds of each scenario (paired across "
        "optimizers: one seed is one stream). Ranks order the means; a difference of ranks is "
        "not a test (the comparison table is). First places: the scenarios where the "
        "optimizer's mean is significantly above the runner-up's (a paired t test over the "
        "seeds, Holm-adjusted with every comparison of this report, α = "
        f"{ALPHA:g}); where it is not, the top two tie for first (tied for first). Scenarios "
        "without a learnable signal are left out."
        + (" Optimizers that never share a scenario (the arms of different models here) are "
           "ranked in separate leagues, each over its own scenarios: a rank compares only "
           "within one league." if several else ""))
    out = {}
    firsts = v.first_places
    if firsts is not None and len(firsts):
        recs = []
        for r in firsts.itertuples():
            clear = not fmt.isnan(r.p_holm) and r.p_holm <= ALPHA and r.lead > 0
            recs.append({**_keys(v, r.scenario), "top": r.top or fmt.DASH,
                         "runner-up": r.runner_up or fmt.DASH,
                         "lead": fmt.signed(r.lead, 3) if not fmt.isnan(r.lead) else fmt.DASH,
                         "seeds": r.n,
                         "p (Holm)": _p_text(r.p_holm) + (" *" if r.duplicate else ""),
                         "first place": "clear" if clear else (
                             "tied" if r.runner_up else fmt.DASH)})
        out["first_places"] = Table(
            "first_places", "League: first place against the runner-up",
            "In each ranked scenario the optimizer with the top mean headline online accuracy "
            "against the runner-up: the lead (difference of the means over seeds), a paired t "
            "test over the seeds, its p-value Holm-adjusted with every comparison of this "
            f"report (α = {ALPHA:g}). 'clear': a first place; 'tied': the two tie for first. "
            "*: the top and the runner-up are an optimizer and its baseline, so the test is "
            "that comparison's and is counted once in the family.",
            firsts, pd.DataFrame(recs))
    fam_display = families.copy()
    for c in fam_display.columns[1:]:
        fam_display[c] = fam_display[c].map(lambda x: fmt.num(x, 1))
    return {
        "league": Table("league", "League: mean rank over scenarios", caption, league,
                        pd.DataFrame(recs_league)),
        "league_families": Table("league_families", "Mean rank per scenario family",
                                 "The mean rank of each optimizer within each scenario family "
                                 "(the same ranks as the league).", families, fam_display),
        **out,
    }


def build(v: StudyView) -> StudyView:
    """Compute every table into ``v.tables`` (and ``v.values``, ``v.summary``,
    ``v.comparison``, ``v.phase_summary``); returns ``v``."""
    reduced = reduced_shifts(v)
    v.values = run_values(v, reduced)
    v.kind_values = kind_values(v, reduced)
    v.summary = summary_frame(v)
    v.phase_summary = phase_frame(v)
    # one Holm family: the comparisons with the baseline and the league's first-place tests
    v.comparison, v.first_places = family_adjust(comparison_frame(v), first_place_frame(v))
    v.tables = {
        "summary": summary_table(v, v.summary),
        "heldout": heldout_table(v, v.summary),
        "comparison": comparison_table(v, v.comparison),
        "phases": phase_table(v, v.phase_summary),
        "runs": runs_table(v),
    }
    if any(v.mixed(s) for s in v.scenarios):
        v.tables["kinds"] = kind_table(v, kind_frame(v))
    if v.tuning is not None and len(v.tuning):
        v.tables["tuning"] = tuning_table(v)
    v.tables.update(league_tables(v))
    return v
