"""The report's findings: a short list a researcher reads in thirty seconds.

What it says, in order (docs/metrics.md, "Comparing optimizers in a study"):

1. how the numbers were judged: seeds per cell, the baseline, the Holm-adjusted family — or
   that there are too few seeds to judge anything;
2. at most one line per scenario family: the range of the headline accuracy, how many
   comparisons are significant, and what the family's axis means;
3. the significant differences, each with its effect, interval, wins and adjusted p-value —
   nothing else is called better or worse, and no adjective is used for a difference that does
   not survive the adjustment;
4. scenarios that cannot be ranked (no learnable signal) or whose regimes conflict;
5. runs that did not finish normally.

Text uses ``**bold**`` (Markdown; the HTML writer converts it).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from . import _format as fmt
from .statistics import ALPHA, METRICS, MIN_SEEDS
from .view import StudyView

#: most optimizer × scenario lines of significant differences (the rest: tables/comparison.csv)
MAX_LISTED = 12


def _judging(v: StudyView) -> list[str]:
    seeds = v.runs_with_metrics().groupby(["scenario", "optimizer"])["seed"].nunique()
    lo, hi = (int(seeds.min()), int(seeds.max())) if len(seeds) else (0, 0)
    n = f"{lo}" if lo == hi else f"{lo}–{hi}"
    comp = v.comparison if v.comparison is not None else pd.DataFrame()
    judged = int(comp["judged"].sum()) if len(comp) else 0
    if hi < MIN_SEEDS:
        return [f"{n} seed{'s' if hi != 1 else ''} per optimizer and scenario: fewer than "
                f"{MIN_SEEDS}, so the tables show the numbers but no difference is judged. Run "
                "more seeds for verdicts."]
    if len(v.arms) < 2:
        return [f"{n} seeds per scenario; one optimizer, so nothing is compared."]
    firsts = v.first_places
    k = int((firsts["p"].notna() & ~firsts["duplicate"].astype(bool)).sum()) \
        if firsts is not None and len(firsts) else 0
    league = (f" together with the league's {k} first-place test{'s' if k != 1 else ''} (top "
              "against runner-up)") if k else ""
    return [f"{n} seeds per optimizer and scenario (the seed is the unit of replication). Each "
            f"optimizer is compared with **{v.baseline}**"
            + (" of its own model" if v.baseline_arms else "") + f" paired by seed; the {judged} "
            f"comparisons are Holm-adjusted{league or ' together'} (α = {ALPHA}), and only "
            "those that survive are called better or worse."] + _recovery_power(v)


def _recovery_power(v: StudyView) -> list[str]:
    """A sentence when no recovery-time comparison could have been called better or worse: the
    smallest p a Wilcoxon signed-rank test over n seeds can give (2 / 2^n, every seed one way)
    lies above the Holm threshold at which the family's step-down stopped."""
    comp = v.comparison
    if comp is None or comp.empty:
        return []
    rec = comp[comp["judged"].astype(bool) & (comp["test"] == "wilcoxon")]
    if rec.empty:
        return []
    firsts = v.first_places
    p_all = comp.loc[comp["judged"].astype(bool), "p_holm"]
    if firsts is not None and len(firsts):
        p_all = pd.concat([p_all, firsts.loc[~firsts["duplicate"].astype(bool),
                                             "p_holm"].dropna()])
    family, rejected = int(p_all.notna().sum()), int((p_all <= ALPHA).sum())
    if family == rejected:
        return []
    threshold = ALPHA / (family - rejected)  # where Holm's step-down stopped
    n = int(rec["n"].max())
    smallest = 2 * 0.5 ** n
    if smallest <= threshold:
        return []
    if smallest > ALPHA:  # too few seeds for the test itself, adjustment or not
        return [f"Recovery times are compared with a Wilcoxon signed-rank test, whose smallest "
                f"possible p-value over {n} seeds is {smallest:.4f} (every seed one way), above "
                f"α = {ALPHA} even before any adjustment: no recovery-time difference can be "
                f"called better or worse with {n} seeds. Run more seeds for those verdicts."]
    return [f"Recovery times are compared with a Wilcoxon signed-rank test, whose smallest "
            f"possible p-value over {n} seeds is {smallest:.4f} (every seed one way); Holm over "
            f"this family stopped at a threshold of {threshold:.2g}, so no recovery-time "
            f"difference could be called better or worse with {n} seeds, however consistent. "
            "Read their intervals and seed counts in the comparison table; the recovery "
            "deficit, tested with a t test, measures the same slowness."]


def _tuning_lines(v: StudyView) -> list[str]:
    t = v.tuning
    if t is None or t.empty:
        return []
    scope = str(t["scope"].iloc[0]) if "scope" in t else ""
    how = ("on each scenario separately" if scope == "per_scenario"
           else f"once ({t['tuned_on'].iloc[0]}) and used on every scenario")
    info = (v.study or {}).get("tuning") or {}
    n = len(info.get("seeds") or [])
    out = [f"Each optimizer ran at its own tuned setting, chosen {how} on {n} tuning seeds "
           "that the evaluation never saw (table: Tuned settings)."]
    edge = t[t["at_edge"].fillna("").astype(str) != ""] if "at_edge" in t else t.iloc[0:0]
    if len(edge):
        cells = ", ".join(f"{r.optimizer} in {r.scenario}" for r in edge.head(6).itertuples())
        more = " …" if len(edge) > 6 else ""
        verb = "sits at the edge of its grid" if len(edge) == 1 else \
            "sit at the edge of their grid"
        out.append(f"{fmt.plural(len(edge), 'tuned setting')} {verb} "
                   f"({cells}{more}): the best may lie outside it; widen the grid "
                   "(Tuning(extend=True)) before trusting those comparisons.")
    return out


def _family_of(v: StudyView, s: str) -> str:
    return v.families.get(s) or (v.severity_name if v.has_severity else "all scenarios")


def _range(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return fmt.DASH
    lo, hi = float(values.min()), float(values.max())
    return fmt.num(lo) if abs(hi - lo) < 5e-4 else f"{fmt.num(lo)}–{fmt.num(hi)}"


def _family_lines(v: StudyView) -> list[str]:
    if v.summary is None or v.summary.empty:
        return []
    from ..metrics.names import format_severity

    comp = v.comparison if v.comparison is not None else pd.DataFrame()
    fams: dict[str, list[str]] = {}
    for s in v.scenarios:
        fams.setdefault(_family_of(v, s), []).append(s)
    out = []
    for fam, scen in fams.items():
        # each scenario's headline accuracy (original labels for label noise); scenarios
        # without a learnable signal are not ranked, so they stay out of the range
        ranked = [s for s in scen if not v.no_signal.get(s)]
        rows = v.summary[v.summary["scenario"].isin(ranked)]
        head = pd.Series([r[v.headline(r["scenario"], "online_acc")]
                          for _, r in rows.iterrows()], dtype=float)
        noisy = [bool(v.noise.get(s)) for s in ranked]
        what = "online accuracy" + (" (original labels)" if noisy and all(noisy) else
                                    " (original labels for label noise)" if any(noisy) else "")
        sev = sorted(v.severity[s] for s in scen if not math.isnan(v.severity.get(s, math.nan)))
        named = fam not in (v.severity_name, "all scenarios")
        where = fam if named else ""
        if sev and len(scen) > 1:
            span = (f"{v.severity_name} {format_severity(sev[0], v.severity_name)} to "
                    f"{format_severity(sev[-1], v.severity_name)}")
            where = f"{where} ({span})" if named else span
        elif len(scen) > 1:
            where = f"{where} ({len(scen)} scenarios)" if named else f"{len(scen)} scenarios"
        elif not named:
            where = scen[0]
        text = f"{where[:1].upper()}{where[1:]}: {what} {_range(head)} across optimizers"
        if len(ranked) < len(scen):
            text += f" (the {len(scen) - len(ranked)} without a learnable signal left out)"
        c = comp[comp["scenario"].isin(scen)] if len(comp) else comp
        if len(c) and c["judged"].any():
            sig = int(c["verdict"].isin(["better", "worse"]).sum())
            text += (f"; {sig} of {int(c['judged'].sum())} comparisons with {v.baseline} "
                     "significant")
        if any(v.partial_concept.get(s) for s in scen):
            text += ("; a partial permute or pair flip mixes two mappings of one input, so its "
                     "ceiling is max(ρ, 1 − ρ) and difficulty along the flip rate is U-shaped "
                     "(hardest at 50 %), not growing")
        out.append(text + ".")
    return out


def _effect(r: Any) -> str:
    m = METRICS[r.metric]
    diff = fmt.signed(r.difference, m.digits) + m.unit
    if not (fmt.isnan(r.low) or fmt.isnan(r.high)):
        diff += f" [{fmt.num(r.low, m.digits)}, {fmt.num(r.high, m.digits)}]"
    p = "< 0.001" if r.p_holm < 0.001 else f"= {r.p_holm:.3f}"
    label = getattr(r, "metric_label", None) or m.label  # with the kind of shift, if any
    return f"{label} {diff} ({r.wins}/{r.n} seeds, p {p})"


def _significant(v: StudyView) -> list[str]:
    """One line per optimizer and scenario with significant differences, strongest first."""
    comp = v.comparison
    if comp is None or comp.empty or not comp["judged"].any():
        return []
    sig = comp[comp["verdict"].isin(["better", "worse"])]
    if sig.empty:
        return [f"No difference from {v.baseline} survives the adjustment: no detectable "
                f"difference with these seeds in any of the {int(comp['judged'].sum())} "
                "comparisons."]
    groups = []
    for (arm, scen), g in sig.groupby(["optimizer", "scenario"], sort=False):
        g = g.sort_values("p_holm", kind="stable")
        parts = []
        for verdict in ("better", "worse"):
            rows = g[g["verdict"] == verdict]
            if len(rows):
                parts.append(f"{verdict} in " + "; ".join(_effect(r) for r in rows.itertuples()))
        groups.append((float(g["p_holm"].min()), -len(g),
                       f"**{arm}** vs {v.baseline_of(arm)} at {v.severity_text(scen)}: "
                       + "; ".join(parts) + "."))
    groups.sort(key=lambda x: (x[0], x[1]))
    out = [text for *_, text in groups[:MAX_LISTED]]
    if len(groups) > MAX_LISTED:
        rest = sum(1 for _ in groups[MAX_LISTED:])
        out.append(f"… and significant differences for {rest} more optimizer × scenario pairs "
                   "(tables/comparison.csv).")
    out.append("Effects are paired differences against the baseline (mean, or median for "
               "recovery times) with 95 % intervals, the seeds where the optimizer was "
               "better, and the Holm-adjusted p-value; every other comparison shows no "
               "detectable difference.")
    return out


def _scenario_notes(v: StudyView) -> list[str]:
    out = []
    if v.clean_missing:
        out.append(f"Clean-label recovery undefined in {', '.join(v.clean_missing[:6])}"
                   f"{' …' if len(v.clean_missing) > 6 else ''}: these runs were stored before "
                   "shiftsim recorded the clean-label chance level of partial permute or pair "
                   "flips below 50 %; run the study again into a new folder to compute it "
                   "(accuracies are unaffected).")
    none = [s for s in v.scenarios if v.no_signal.get(s)]
    if none:
        out.append(f"Not ranked: {', '.join(none)} — the stream's labels carry no information "
                   "about the original classes (label noise at its ceiling), so clean-label "
                   "accuracy rewards not learning; no comparison is made there.")
    conflict = [s for s in v.scenarios if v.conflicting(s) and v.n_phases.get(s, 0) > 2]
    if conflict:
        bounds = ", ".join(f"{s} {fmt.num(v.max_acc[s])}" for s in conflict[:6])
        more = " …" if len(conflict) > 6 else ""
        out.append(f"Conflicting regimes (one input, several labels): ACC cannot exceed "
                   f"{bounds}{more}; negative BWT is forced there, so BWT and forgetting are "
                   "not compared.")
    return out


def _status_sentences(v: StudyView) -> list[str]:
    out = []
    runs = v.runs
    for status, verb in (("diverged", "diverged (loss not finite; their metrics cover the "
                                      "steps before, marked † in the tables)"),
                         ("failed", "failed (no metrics)"),
                         ("incomplete", "incomplete (no metrics)"),
                         ("pending", "never run (no metrics)")):
        bad = runs[runs["status"] == status]
        if bad.empty:
            continue
        groups = []
        for (s, arm), g in bad.groupby(["scenario", "optimizer"], sort=False):
            seeds = ", ".join(str(x) for x in sorted(g["seed"].dropna().tolist()))
            groups.append(f"{arm} in {s} (seed {seeds})")
        first_error = ""
        if status == "failed":
            errs = bad["error"].dropna()
            if len(errs):
                first_error = f"; first error: {str(errs.iloc[0])[:160]}"
        n = len(bad)
        verb = verb if status in ("diverged", "failed") else f"{'is' if n == 1 else 'are'} {verb}"
        out.append(f"{fmt.plural(n, 'run')} {verb}: {'; '.join(groups[:8])}"
                   f"{' …' if len(groups) > 8 else ''}{first_error}.")
    return out


def findings(v: StudyView) -> list[str]:
    """The findings as a list of sentences (Markdown), most important first."""
    out = _judging(v)
    out += _tuning_lines(v)
    out += _family_lines(v)
    out += _significant(v)
    out += _scenario_notes(v)
    out += _status_sentences(v)
    counts = v.runs["status"].value_counts()
    if not counts.drop(labels=["ok"], errors="ignore").sum():
        n = int(counts.sum())
        out.append("The run finished normally." if n == 1 else f"All {n} runs finished normally.")
    return out
