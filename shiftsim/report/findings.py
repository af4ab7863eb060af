"""The report's findings: short sentences generated from the tables' numbers.

Each sentence names the best optimizer where it is best, the runner-up's number, and the paired
difference with its interval, saying plainly when the difference is within noise (the interval
contains 0) or cannot be judged (one seed). Text uses ``**bold**`` (Markdown; the HTML writer
converts it).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from . import _format as fmt
from .tables import StudyView, compare


def _interval_words(d: dict[str, Any], digits: int, unit: str, level: float, a: str, b: str
                    ) -> str:
    """``a − b: +0.060, 95 % interval 0.052..0.068 over 3 seeds: a real difference``."""
    pct = int(round(100 * level))
    n = d["n"]
    what = d.get("unit", "seeds") if n != 1 else d.get("unit", "seeds").rstrip("s")
    head = f"{a} − {b}: {fmt.signed(d['mean'], digits)}{unit}"
    if n < 2 or fmt.isnan(d["low"]):
        return f"{head} from {n} {what}, too few to tell apart from noise"
    judged = ("within noise" if d["verdict"] == "within noise"
              else "the interval excludes 0")
    return (f"{head}, {pct} % interval {fmt.num(d['low'], digits)}..{fmt.num(d['high'], digits)}"
            f"{unit} over {n} {what}: {judged}")


def _wins(d: dict[str, Any], a: str, better: str) -> str:
    unit = d.get("unit", "seeds")
    return f"{a} {better} on {d['wins_a']} of {d['n_pairs']} {unit}"


def _accuracy_sentence(v: StudyView, s: str, rows: pd.DataFrame) -> str | None:
    rows = rows[rows["online_acc"].notna()]
    if rows.empty:
        return None
    rows = rows.sort_values("online_acc", ascending=False, kind="stable")
    best = rows.iloc[0]
    if len(rows) == 1:
        alone = " (the only optimizer with results)" if len(v.arms) > 1 else ""
        return (f"At {v.severity_text(s)}, **{best.optimizer}**{alone} has an online accuracy "
                f"of {fmt.num(best.online_acc)}.")
    head = f"At {v.severity_text(s)}, **{best.optimizer}** has the highest online accuracy"
    second = rows.iloc[1]
    d = compare(v, best.optimizer, second.optimizer, s, "online_acc")
    text = (f"{head} ({fmt.num(best.online_acc)} vs {second.optimizer} "
            f"{fmt.num(second.online_acc)}")
    if d is not None and d["n"] > 0:
        text += (f"; {_interval_words(d, 3, '', v.level, best.optimizer, second.optimizer)}; "
                 f"{_wins(d, best.optimizer, 'ahead')}")
    return text + ")."


def _recovery_key(r: Any) -> tuple[float, float]:
    med = r.recovery_steps
    return (math.inf if fmt.isnan(med) else float(med), float(r.censored_fraction)
            if not fmt.isnan(r.censored_fraction) else 1.0)


def _recovery_sentence(v: StudyView, s: str, rows: pd.DataFrame) -> str | None:
    rows = rows[rows["shifts"] > 0]
    if rows.empty:
        return None
    order = sorted(rows.itertuples(), key=_recovery_key)
    best = order[0]
    where = f"At {v.severity_text(s)}"
    if fmt.isnan(best.recovery_steps):
        cens = int(rows["censored"].sum())
        total = int(rows["shifts"].sum())
        return (f"{where}, no optimizer recovers reliably: the median recovery time is undefined "
                f"for every optimizer (half or more of the shifts never regain 90 % of the "
                f"phase's plateau within the phase; censored in {cens} of {total} run × shift "
                "pairs).")
    tied = [r.optimizer for r in order if r.recovery_steps == best.recovery_steps]
    if len(tied) > 1:
        names = ", ".join(f"**{t}**" for t in tied[:-1]) + f" and **{tied[-1]}**"
        return (f"{where}, {names} recover equally fast: median "
                f"{fmt.steps(best.recovery_steps)} steps / {fmt.steps(best.recovery_samples)} "
                "samples.")
    text = (f"{where}, **{best.optimizer}** recovers fastest (median "
            f"{fmt.steps(best.recovery_steps)} steps / {fmt.steps(best.recovery_samples)} "
            "samples")
    if len(order) == 1:
        alone = " (the only optimizer with results)" if len(v.arms) > 1 else ""
        return (f"{where}, **{best.optimizer}**{alone} recovers in a median "
                f"{fmt.steps(best.recovery_steps)} steps / {fmt.steps(best.recovery_samples)} "
                "samples.")
    second = order[1]
    if fmt.isnan(second.recovery_steps):
        text += (f" vs {second.optimizer}: undefined, {second.censored} of {second.shifts} "
                 "shifts censored")
    else:
        text += f" vs {second.optimizer} {fmt.steps(second.recovery_steps)}"
    d = compare(v, best.optimizer, second.optimizer, s, "recovery_steps")
    if d is not None and d["n_pairs"] > 0:
        if d["n"] > 0:
            words = _interval_words(d, 0, " steps", v.level, best.optimizer, second.optimizer)
            text += f"; where both recovered, {words}"
        text += f"; {_wins(d, best.optimizer, 'faster')}"
    return text + ")."


def _best_by_severity(v: StudyView) -> list[str]:
    from ..plots import format_severity

    if not v.has_severity or len(v.arms) < 2 or v.summary is None:
        return []
    acc_parts, rec_parts = [], []
    for s in sorted(v.scenarios, key=lambda x: (v.families.get(x, ""), v.severity[x])):
        if math.isnan(v.severity[s]):
            continue
        rows = v.summary[v.summary["scenario"] == s]
        label = format_severity(v.severity[s], v.severity_name)
        if v.families.get(s):
            label = f"{v.families[s]} {label}"
        ok = rows[rows["online_acc"].notna()].sort_values("online_acc", ascending=False)
        if len(ok) >= 2:
            d = compare(v, ok.iloc[0].optimizer, ok.iloc[1].optimizer, s, "online_acc")
            acc_parts.append(f"{label}: **{ok.iloc[0].optimizer}**"
                             f"{_note(d, ok.iloc[1].optimizer)}")
        rec = sorted(rows[rows["shifts"] > 0].itertuples(), key=_recovery_key)
        if len(rec) >= 2:
            first = rec[0]
            if fmt.isnan(first.recovery_steps):
                rec_parts.append(f"{label}: none (undefined: half or more censored)")
            elif rec[1].recovery_steps == first.recovery_steps:
                rec_parts.append(f"{label}: a tie ({fmt.steps(first.recovery_steps)} steps)")
            else:
                d = compare(v, first.optimizer, rec[1].optimizer, s, "recovery_steps")
                rec_parts.append(f"{label}: **{first.optimizer}** "
                                 f"({fmt.steps(first.recovery_steps)} steps"
                                 f"{_note(d, rec[1].optimizer, ';')})")
    out = []
    if len(acc_parts) >= 2:
        out.append(f"Best online accuracy by {v.severity_name}: " + "; ".join(acc_parts) + ".")
    if len(rec_parts) >= 2:
        out.append(f"Fastest recovery (median) by {v.severity_name}: " + "; ".join(rec_parts)
                   + ".")
    return out


def _note(d: dict[str, Any] | None, runner_up: str, sep: str = ",") -> str:
    """How sure the lead over the runner-up is, from the paired comparison's verdict."""
    if d is None:
        return ""
    if d["verdict"] == "better":
        return f"{sep} clearly ahead of {runner_up}"
    if d["verdict"] == "within noise":
        return f"{sep} within noise of {runner_up}"
    if d["verdict"] == "not judged":
        return f"{sep} too few seeds to judge"
    return f"{sep} mixed: paired by seed it trails {runner_up}"


def _baseline_sentences(v: StudyView) -> list[str]:
    if v.comparison is None or v.comparison.empty:
        return []
    out = []
    for arm in v.arms[1:]:
        parts = []
        for metric, words in (("online_acc", ("higher", "lower", "online accuracy")),
                              ("recovery_steps", ("faster", "slower", "recovery"))):
            c = v.comparison[(v.comparison["optimizer"] == arm)
                             & (v.comparison["metric"] == metric)]
            if c.empty:
                continue
            vc = c["verdict"].value_counts()
            n = len(c)
            bits = [f"{words[0]} in {int(vc.get('better', 0))}",
                    f"{words[1]} in {int(vc.get('worse', 0))}",
                    f"within noise in {int(vc.get('within noise', 0))}"]
            if vc.get("not judged", 0):
                bits.append(f"not judged in {int(vc.get('not judged', 0))}")
            parts.append(f"{words[2]} {', '.join(bits)} of {fmt.plural(n, 'scenario')}")
        if parts:
            out.append(f"Against the baseline **{v.baseline}**, {arm}: " + "; ".join(parts)
                       + ".")
    return out


def _status_sentences(v: StudyView) -> list[str]:
    out = []
    runs = v.runs
    for status, verb in (("diverged", "diverged (loss not finite; their metrics cover the "
                                      "steps before, marked † in the tables)"),
                         ("failed", "failed (no metrics)"),
                         ("incomplete", "{is} incomplete (no metrics)"),
                         ("pending", "never ran (no metrics)")):
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
        verb = verb.replace("{is}", "is" if len(bad) == 1 else "are")
        out.append(f"{fmt.plural(len(bad), 'run')} {verb}: {'; '.join(groups)}{first_error}.")
    return out


def findings(v: StudyView) -> list[str]:
    """The findings as a list of sentences (Markdown), most important first."""
    out: list[str] = []
    counts = v.runs["status"].value_counts()
    seeds = v.runs_with_metrics().groupby(["scenario", "optimizer"])["seed"].nunique()
    max_seeds = int(seeds.max()) if len(seeds) else 0
    if max_seeds <= 1:
        out.append("Only one seed per optimizer and scenario: no interval can be computed, so no "
                   "difference below can be told apart from noise. Run more seeds.")
    summary = v.summary if v.summary is not None else pd.DataFrame()
    order = v.scenarios
    if v.has_severity:
        order = sorted(v.scenarios, key=lambda x: (v.families.get(x, ""),
                                                   math.inf if math.isnan(v.severity[x])
                                                   else v.severity[x]))
    out += _best_by_severity(v)
    out += _baseline_sentences(v)
    out += _status_sentences(v)
    if not counts.drop(labels=["ok"], errors="ignore").sum():
        n = int(counts.sum())
        out.append("The run finished normally." if n == 1 else f"All {n} runs finished normally.")
    for s in order:  # the details, scenario by scenario
        rows = summary[summary["scenario"] == s]
        if rows.empty:
            continue
        for sentence in (_accuracy_sentence(v, s, rows), _recovery_sentence(v, s, rows)):
            if sentence:
                out.append(sentence)
    return out
