"""The claims index: the seed papers' claims, each tested on the reproduction studies' stored
evaluation runs, written to ``reports/README.md``.

Every claim is a comparison of two optimizers in each setting (scenario x model x view) of a
study: paired by seed over its evaluation seeds (10; 20 in the Adaptive-Memory study, whose
claims are about recovery times), a paired t test for accuracies and deficits, a Wilcoxon
signed-rank test for recovery times (a seed that never recovered counts as the phase length),
all of them adjusted together with Holm-Bonferroni (alpha 0.05). With 10 seeds the smallest
two-sided Wilcoxon p-value is 2/1024 = 0.002, which Holm over more than 25 tests lets through
only after rejecting all but 24 of the others: that is why the recovery-time claims are tested
on 20 seeds. A setting *supports* a claim when the adjusted test rejects in the claimed
direction, *contradicts* it when it rejects in the other, and shows *no detectable difference*
otherwise; a recovery comparison where on every seed neither optimizer recovers, or the shift
hurt neither, is no test: *not applicable*, outside the family. MoMo's claim is
about the width of the good learning-rate range (the tolerance, from the tuning runs): there the
test is a Wilcoxon signed-rank test of each tuning seed's own tolerance difference (paired by
seed), in the same Holm family; the interval beside it is the 95 % paired-bootstrap interval of
the difference of the tolerances of the mean curves. With n tuning seeds its smallest two-sided
p-value is 2/2^n, so a tolerance claim needs enough tuning seeds to pass the adjustment. A
tolerance whose good range reaches the end of its grid is a lower bound: where the baseline's
is one, a wider tolerance is not a verdict (the baseline's may be wider than measured), and the
setting stays inconclusive. Settings without a learnable signal are left out.

    python scenarios/claims.py [--results results] [--out reports/README.md]
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shiftsim import metrics, store
from shiftsim.report import frames
from shiftsim.report.statistics import ALPHA, METRICS, paired
from shiftsim.report.view import StudyView, view
from shiftsim.store import tuning_file


@dataclass(frozen=True)
class Claim:
    key: str
    text: str
    paper: str
    study: str            # results/<study> and reports/<study>
    a: str                # the optimizer the claim is about
    b: str                # what it is compared with
    metric: str           # a METRICS column ("online_acc" is the headline: clean for noise)
    kind: str = "test"    # "test" (evaluation seeds) or "tolerance" (tuning seeds)


CLAIMS = [
    Claim("tam", "TAM reaches a higher online accuracy than SGD with momentum under heavy label "
          "flipping (80 %, 100 %)", "Malviya et al. 2024, arXiv 2412.18790", "tam-label-flip",
          "tam", "sgdm", "online_acc"),
    Claim("adatam", "AdaTAM reaches a higher online accuracy than Adam under heavy label "
          "flipping", "Malviya et al. 2024, arXiv 2412.18790", "tam-label-flip", "adatam",
          "adam", "online_acc"),
    Claim("momo", "MoMo keeps its accuracy over a wider learning-rate range than SGD with "
          "momentum", "Schaipp et al. 2024, arXiv 2305.07583", "momo-lr-robustness", "momo",
          "sgdm", "tolerance", "tolerance"),
    Claim("momo_adam", "MoMo-Adam keeps its accuracy over a wider learning-rate range than "
          "Adam", "Schaipp et al. 2024, arXiv 2305.07583", "momo-lr-robustness", "momo_adam",
          "adam", "tolerance", "tolerance"),
    Claim("amsgd", "Adaptive-Memory SGD recovers from drift faster than SGD with momentum",
          "Topollai & Choromanska 2025, arXiv 2510.04988", "adaptive-memory-drift",
          "adamem_sgd", "sgdm", "recovery_steps"),
    Claim("amsgd-deficit", "Adaptive-Memory SGD loses less accuracy to drift than SGD with "
          "momentum (recovery deficit)", "Topollai & Choromanska 2025, arXiv 2510.04988",
          "adaptive-memory-drift", "adamem_sgd", "sgdm", "deficit"),
    Claim("amadamw", "Adaptive-Memory AdamW recovers from drift faster than AdamW",
          "Topollai & Choromanska 2025, arXiv 2510.04988", "adaptive-memory-drift",
          "adamem_adamw", "adamw", "recovery_steps"),
    Claim("stale", "Stale momentum hurts tracking: plain SGD recovers from drift faster than "
          "SGD with momentum", "the premise of Topollai & Choromanska 2025",
          "adaptive-memory-drift", "sgd", "sgdm", "recovery_steps"),
]


def tests(claim: Claim, v: StudyView) -> list[dict]:
    """One paired comparison per setting of the study (not Holm-adjusted yet)."""
    out = []
    values = v.values if v.values is not None else frames.run_values(v)
    for s in v.scenarios:
        if v.no_signal.get(s) or (claim.metric != "online_acc" and not v.shifted.get(s)):
            continue
        col = v.headline(s, claim.metric)
        m = METRICS[col]
        if v.mixed(s) and col in frames._KIND_METRICS:  # run_values leaves them empty there
            raise SystemExit(f"claim {claim.key!r}: {s!r} has shifts of several kinds, which "
                             "the claims index does not compare per kind yet")
        sub = values[values["scenario"] == s]
        arms_a = [a for a in v.arms if a.split(" [")[0] == claim.a]
        for arm_a in arms_a:
            arm_b = arm_a.replace(claim.a, claim.b, 1)
            ra, rb = sub[sub["optimizer"] == arm_a], sub[sub["optimizer"] == arm_b]
            if ra.empty or rb.empty:
                continue
            kw = {}
            if m.recovery:
                cen = col.replace("recovery_steps", "censored")
                cap = float(v.phases.loc[v.phases["scenario"] == s, "steps"].max())
                kw = {"censored_a": frames._by_seed(ra, cen).astype(bool),
                      "censored_b": frames._by_seed(rb, cen).astype(bool), "cap": cap}
            d = paired(frames._by_seed(ra, col), frames._by_seed(rb, col), m, **kw)
            out.append({"claim": claim.key, "setting": f"{s}" + (
                f" [{arm_a.split(' [')[1]}" if " [" in arm_a else ""),
                "metric": m.label, "higher_is_better": m.higher_is_better, **d})
    return out


def tolerance_tests(claim: Claim, results_dir: Path) -> list[dict]:
    body = tuning_file.read(results_dir)
    diffs = tuning_file.tolerance_differences(body, claim.b)
    if not any("tolerance_seeds" in c for c in body["choices"]):
        raise SystemExit(f"{results_dir}/tuning.json has no per-seed tolerances: resume "
                         f"the study once (it selects again and rewrites it)")
    out = []
    for r in diffs[diffs["optimizer"] == claim.a].itertuples():
        # a tolerance whose good range reaches its grid's end is a lower bound: the baseline's
        # may be wider than measured (no "wider" verdict), the optimizer's too (no "narrower")
        out.append({"claim": claim.key, "setting": r.scenario,
                    "metric": "tolerance (decades)", "higher_is_better": True,
                    "difference": r.difference, "low": r.low, "high": r.high, "n": r.n,
                    "wins": r.wins, "losses": r.losses, "p": r.p,
                    "bound_a": bool(r.open), "bound_b": bool(r.baseline_open)})
    return out


def verdicts(rows: pd.DataFrame) -> pd.DataFrame:
    """Holm over every claim test with a p-value; the verdict in the claim's direction."""
    rows = rows.copy()
    has_p = rows["p"].notna() if "p" in rows else pd.Series(False, index=rows.index)
    rows["p_holm"] = np.nan
    rows["verdict"] = "inconclusive"  # without a p-value (fewer than two pairs): no test
    if "untestable" in rows:  # recovery where neither side recovers, or neither is hurt
        none = rows["untestable"].fillna("").astype(str) != ""
        rows.loc[none, "verdict"] = "not applicable"
        rows.loc[none, "note"] = rows.loc[none, "untestable"]
    if has_p.any():
        rows.loc[has_p, "p_holm"] = metrics.holm(rows.loc[has_p, "p"].to_numpy(float))
    for i, r in rows[has_p].iterrows():
        better = (r["difference"] > 0) == bool(r["higher_is_better"]) if r["difference"] \
            else r["wins"] > r["losses"]
        if r["p_holm"] <= ALPHA:  # else it stays "inconclusive"
            rows.loc[i, "verdict"] = "supported" if better else "contradicted"
        bound = r.get("bound_b") if better else r.get("bound_a")
        if rows.loc[i, "verdict"] != "inconclusive" and pd.notna(bound) and bool(bound):
            rows.loc[i, "verdict"] = "inconclusive"
            rows.loc[i, "note"] = ("the " + ("baseline's" if better else "optimizer's")
                                   + " tolerance is a lower bound: its good range reaches "
                                   "its grid's end")
    return rows


def _signed(x: float, digits: int) -> str:
    """``x`` with its sign, never a negative zero: −0.4 steps shows as +0."""
    return f"{round(float(x), digits) + 0.0:+.{digits}f}".replace("-", "−")


def _effect(r: pd.Series, digits: int) -> str:
    if r["difference"] is None or math.isnan(r["difference"]):
        return "—"
    txt = _signed(r["difference"], digits)
    if not (math.isnan(r["low"]) or math.isnan(r["high"])):
        low, high = (_signed(r[k], digits).lstrip("+") for k in ("low", "high"))
        txt += f" [{low}, {high}]"
    return txt


def write(rows: pd.DataFrame, out: Path, seeds: int) -> None:
    lines = ["# Reproductions: the seed papers' claims, tested", "",
             "Each claim below is tested in every setting of its study (scenario × model × "
             "view), on evaluation seeds the tuning never saw, with every optimizer at its own "
             "tuned learning rate. " + __doc__.split("\n\n")[1].replace("\n", " "), "",
             "| claim | paper | settings | verdict | median effect [range] | report |",
             "|---|---|---|---|---|---|"]
    for c in CLAIMS:
        r = rows[rows["claim"] == c.key]
        if r.empty:
            lines.append(f"| {c.text} | {c.paper} | — | not run yet | — | "
                         f"[{c.study}]({c.study}/README.md) |")
            continue
        counts = r["verdict"].value_counts()
        seeds = int(r["n"].max()) if "n" in r and r["n"].notna().any() else seeds
        parts = [f"{int(counts.get(k, 0))} {w}" for k, w in
                 (("supported", "supported"), ("contradicted", "contradicted"),
                  ("inconclusive", "no detectable difference"),
                  ("not applicable", "not applicable")) if counts.get(k, 0)]
        digits = 2 if c.kind == "tolerance" else (0 if "recovery" in c.metric else 3)
        eff = r.loc[r["verdict"] != "not applicable", "difference"].astype(float)
        med, lo, hi = (_signed(f(eff), digits) for f in (np.nanmedian, np.nanmin, np.nanmax))
        effect = f"{med} [{lo}, {hi}]"
        what = r["metric"].iloc[0]
        overall = _overall(counts, seeds)
        lines.append(f"| {c.text} | {c.paper} | {len(r)} ({what}) | **{overall}**: "
                     f"{', '.join(parts)} | {effect} | [{c.study}]({c.study}/README.md) |")
    lines += ["", "Overall verdict: *supported* when more than half of the settings support "
              "the claim and none contradicts it; *supported in some settings* when fewer do; "
              "*not supported* when some setting contradicts it and none supports it; *mixed* "
              "when both happen; *inconclusive at n seeds* when no setting shows a detectable "
              "difference (n: evaluation seeds, or tuning seeds for the tolerance). A setting "
              "where a recovery comparison is no test (on every seed neither optimizer "
              "recovers, or the shift hurt neither) is *not applicable* and does not count. The "
              "robustness league ranks every registered optimizer across the scenario library: "
              "[robustness-league](robustness-league/README.md).", "",
              "## Every setting", "",
              "A setting's 95 % interval is its own (a Student-t interval of the mean "
              "difference for accuracies and deficits, a percentile-bootstrap interval of the "
              "median difference for recovery times), not widened for the number of tests, "
              "while the p-value and the verdict are Holm-adjusted over all the claims' tests: a "
              "setting whose interval leaves out 0 can still be inconclusive. The family here "
              "(every claim's tests) is not a study report's (every comparison of that report), "
              "so a setting can reach a verdict here and not in its study's report, or the other "
              "way round. For the tolerance "
              "claims the seeds are the tuning seeds, and a tolerance whose good range reaches "
              "the end of its grid is a lower bound.", ""]
    for c in CLAIMS:
        r = rows[rows["claim"] == c.key]
        if r.empty:
            continue
        digits = 2 if c.kind == "tolerance" else (0 if "recovery" in c.metric else 3)
        lines += [f"### {c.text}", "", f"{c.paper}; study [{c.study}]({c.study}/README.md); "
                  f"{c.a} − {c.b}.", "", "| setting | metric | difference [95 % interval] | "
                  "seeds better | p (Holm) | verdict |", "|---|---|--:|--:|--:|---|"]
        for _, x in r.iterrows():
            better = f"{int(x['wins'])}/{int(x['n'])}" if "wins" in x and not pd.isna(
                x.get("wins")) else "—"
            p = x.get("p_holm")
            p = "—" if p is None or pd.isna(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")
            note = x.get("note")
            noted = isinstance(note, str) and bool(note)
            word = "no detectable difference" if x["verdict"] == "inconclusive" and not noted \
                else x["verdict"]
            verdict = word + (f" ({note})" if noted else "")
            lines.append(f"| {x['setting']} | {x['metric']} | {_effect(x, digits)} | {better} "
                         f"| {p} | {verdict} |")
        lines.append("")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _overall(counts: pd.Series, seeds: int) -> str:
    """The claim's verdict over its settings; a setting where the comparison is no test
    (neither side recovers, or the shift hurt neither) does not count."""
    n = int(counts.drop(labels=["not applicable"], errors="ignore").sum())
    sup, con = int(counts.get("supported", 0)), int(counts.get("contradicted", 0))
    if sup and con:
        return "mixed"
    if sup:
        return "supported" if 2 * sup > n else "supported in some settings"
    if con:
        return "not supported"
    return f"inconclusive at {seeds} seeds"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="results")
    ap.add_argument("--out", default="reports/README.md")
    args = ap.parse_args()
    rows = []
    views: dict[str, StudyView] = {}
    for c in CLAIMS:
        folder = Path(args.results) / c.study
        if not (folder / "study.json").is_file():
            continue
        if c.kind == "tolerance":
            rows += tolerance_tests(c, folder)
            continue
        if c.study in views and views[c.study] is None:
            continue
        if c.study not in views:
            res = store.load(folder)
            if not (res.runs["stage"] == "eval").any() or not res.complete:
                print(f"{c.study}: not complete yet, left out")
                continue
            views[c.study] = view(res)
            views[c.study].values = frames.run_values(views[c.study])
        rows += tests(c, views[c.study])
    df = verdicts(pd.DataFrame(rows)) if rows else pd.DataFrame(columns=["claim"])
    write(df, Path(args.out), 10)
    print(f"wrote {args.out}: {len(df)} settings of {df['claim'].nunique()} claims")


if __name__ == "__main__":
    main()
