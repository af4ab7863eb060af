"""Reports: table values against metrics computed here from the traces, the documents, the
rendering in headless Chromium, atomic writing, edge cases (one seed, everything censored,
diverged and failed runs) and the CLI."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_plots import ref_trailing  # the float64 reference of the trailing accuracy

import shiftsim as ss
from shiftsim import store
from shiftsim.cli import main
from shiftsim.errors import ShiftsimError
from shiftsim.report import REPORT_FILE, report
from shiftsim.study import Study, flip_rates

W, Q = 20, 0.9  # the window and target fraction the stored metrics use


def broken_optimizer(params, lr: float = 0.1):
    """An optimizer factory that raises: every run with it fails."""
    raise RuntimeError("this optimizer is broken on purpose")


@pytest.fixture(scope="module")
def digits():
    return ss.data.digits()


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory, digits):
    """3 scenarios (permute 50 %, permute 100 %, label noise 'other' 50 %; 3 phases of 30 steps)
    x 4 optimizers (sgdm, tam, a diverging sgd, a failing factory) x 5 seeds."""
    out = tmp_path_factory.mktemp("study")
    scen = flip_rates(digits, [0.5, 1.0], mode="permute", tasks=3, steps_per_task=30,
                      batch_size=16) | flip_rates(digits, [0.5], mode="other", tasks=3,
                                                   steps_per_task=30, batch_size=16)
    study = Study("report-test", scen, ss.models.mlp(hidden=(16,)),
                  {"sgdm": ss.optim.spec("sgdm", lr=0.05), "tam": ss.optim.spec("tam", lr=0.05),
                   "huge": ss.optim.spec("sgd", lr=1e37),
                   "broken": ss.optim.spec(broken_optimizer)}, seeds=5)
    study.run(out, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def rep(study_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("rep") / "report"
    assert report(study_dir, out) == out
    return out


# -- reference computations (float64, straight from docs/metrics.md) ---------------------------

def ref_levels(trace: pd.DataFrame, col: str = "correct"):
    """(a_t, ā_t, phase, n) of one run's trace, in float64."""
    c, n, ph = (trace[k].to_numpy(np.float64) for k in (col, "n", "phase"))
    return c / n, ref_trailing(c, n, ph, W), ph, n


def ref_plateaus(trace: pd.DataFrame, col: str = "correct") -> dict[int, float]:
    a, _, ph, _ = ref_levels(trace, col)
    return {int(k): a[np.flatnonzero(ph == k)[-W:]].mean() for k in sorted(set(ph.tolist()))}


def ref_recovery(trace: pd.DataFrame, plan: pd.DataFrame, reference: dict[int, float],
                 col: str = "correct", chance_col: str = "chance"):
    """{shifted phase: (recovery steps or inf if censored, samples, drop, deficit)}, version 2:
    target χ + q (A_ref − χ); onset after 5 steps below; 20 steps at or above; collapse."""
    a, abar, ph, n = ref_levels(trace, col)
    plan = plan.drop_duplicates("phase").set_index("phase")
    out = {}
    for k in sorted(set(ph.tolist()))[1:]:
        if not plan.loc[k, "shifted"]:
            continue
        idx, prev = np.flatnonzero(ph == k), np.flatnonzero(ph == k - 1)
        pre, plateau = a[prev[-W:]].mean(), a[idx[-W:]].mean()
        chance, ref = plan.loc[k, chance_col], reference[k]
        target = chance + Q * (ref - chance)
        seg, L = abar[idx], len(idx)
        onset = next((s for s in range(L - 5 + 1)
                      if all(seg[s + j] < target - 1e-12 for j in range(5))), None)
        if onset is None:
            rec = 0
        else:
            rec = next((s for s in range(onset, L - W + 1)
                        if all(seg[s + j] >= target - 1e-12 for j in range(W))), math.inf)
        if plateau - chance < 0.05:
            rec = math.inf  # collapsed
        samples = math.inf if math.isinf(rec) else n[idx[:rec]].sum()
        out[k] = (rec, samples, pre - seg.min(), np.mean(np.maximum(0, ref - seg)))
    return out


def ref_common(res, scenario: str, col: str = "correct", cap: float | None = None):
    """{phase: min(ceiling, the best mean plateau over seeds of any optimizer)}."""
    runs = res.runs[(res.runs["scenario"] == scenario) & res.runs["status"].isin(
        ["ok", "diverged"])]
    per: dict[tuple[str, int], list[float]] = {}
    for rid, opt in zip(runs["run_id"], runs["optimizer"]):
        for k, v in ref_plateaus(res.trace(rid), col).items():
            if not math.isnan(v):
                per.setdefault((opt, k), []).append(v)
    plan = res.run_phases[res.run_phases["scenario"] == scenario].drop_duplicates("phase")
    out = {}
    for k, ceiling in zip(plan["phase"], plan["ceiling"]):
        best = max(np.mean(v) for (o, kk), v in per.items() if kk == k)
        out[int(k)] = min(cap if cap is not None else ceiling, best)
    return out


def ref_median(values):
    """Median with censored = inf; NaN when half or more are censored."""
    v = np.asarray(values, dtype=float)
    if v.size == 0 or 2 * np.isinf(v).sum() >= v.size:
        return math.nan
    return float(np.median(v))


def ref_interval(x):
    x = np.asarray(x, dtype=float)
    if x.size < 2:
        return x.mean(), math.nan, math.nan
    lo, hi = stats.t.interval(0.95, x.size - 1, loc=x.mean(), scale=stats.sem(x))
    return x.mean(), lo, hi


def ref_matrix(evals: pd.DataFrame, plan: pd.DataFrame) -> np.ndarray:
    """K × J: one column per distinct regime (in order of first appearance)."""
    end = evals[evals["phase_end"]]
    regimes = list(dict.fromkeys(plan.sort_values("phase")["regime"].tolist()))
    K = plan["phase"].nunique()
    R = np.full((K, len(regimes)), np.nan)
    for i in range(K):
        for j, r in enumerate(regimes):
            R[i, j] = end[(end["phase"] == i) & (end["regime"] == r)]["accuracy"].mean()
    return R


def ref_holm(p):
    p = np.asarray(p, dtype=float)
    order = np.argsort(p)
    adj = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adj[i] = running
    return adj


def close(a, b, tol=1e-9):
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return abs(float(a) - float(b)) <= tol


def run_level(res, rid, plan, refs, col="correct", chance_col="chance"):
    """One run's shifts reduced: (median recovery with inf, median samples, median drop,
    median deficit)."""
    rr = ref_recovery(res.trace(rid), plan, refs, col, chance_col)
    rec = ref_median_inf([v[0] for v in rr.values()])
    sam = ref_median_inf([v[1] for v in rr.values()])
    return rec, sam, np.median([v[2] for v in rr.values()]), np.median([v[3] for v in rr.values()])


def ref_median_inf(values):
    return float(np.median(np.asarray(values, dtype=float)))


# -- the tables against the reference ---------------------------------------------------------

def test_summary_table_matches_metrics_computed_from_the_traces(study_dir, rep):
    res = store.load(study_dir)
    summary = pd.read_csv(rep / "tables" / "summary.csv")
    runs = res.runs
    checked = 0
    for (scen, opt), group in runs[runs["status"] == "ok"].groupby(["scenario", "optimizer"]):
        refs = ref_common(res, scen)
        noise = scen.startswith("other")
        refs_true = ref_common(res, scen, "correct_true", cap=1.0) if noise else None
        online, online_true, recov, samples, drops, deficits = [], [], [], [], [], []
        recov_true, final, accs, bwts, forgets = [], [], [], [], []
        for rid in group["run_id"]:
            tr = res.trace(rid)
            plan = res.run_phases[res.run_phases["run_id"] == rid]
            online.append(tr["correct"].sum() / tr["n"].sum())
            online_true.append(tr["correct_true"].sum() / tr["n"].sum())
            rec, sam, drop, deficit = run_level(res, rid, plan, refs)
            recov.append(rec)
            samples.append(sam)
            drops.append(drop)
            deficits.append(deficit)
            if noise:
                recov_true.append(run_level(res, rid, plan, refs_true, "correct_true",
                                            "chance_true")[0])
            R = ref_matrix(res.evals[res.evals["run_id"] == rid], plan)
            K = len(R)  # every regime distinct here: K × K
            final.append(R[K - 1, K - 1])
            accs.append(R[K - 1].mean())
            bwts.append(np.mean([R[K - 1, j] - R[j, j] for j in range(K - 1)]))
            forgets.append(np.mean([R[j:K - 1, j].max() - R[K - 1, j] for j in range(K - 1)]))
        row = summary[(summary["scenario"] == scen) & (summary["optimizer"] == opt)].iloc[0]
        for col, values in (("online_acc", online), ("online_acc_true", online_true),
                            ("drop", drops), ("deficit", deficits), ("final_heldout", final),
                            ("acc", accs), ("bwt", bwts), ("forgetting", forgets)):
            m, lo, hi = ref_interval(values)
            assert close(row[col], m) and close(row[f"{col}_low"], lo) and \
                close(row[f"{col}_high"], hi), (scen, opt, col)
        # one value per seed: the median over the seeds' own medians
        assert close(row["recovery_steps"], ref_median(recov)), (scen, opt, recov)
        assert close(row["recovery_samples"], ref_median(samples)), (scen, opt)
        assert row["censored"] == sum(math.isinf(x) for x in recov) and row["shifts"] == 5
        assert close(row["censored_fraction"], np.mean([math.isinf(x) for x in recov]))
        assert row["recovery_steps_low"] <= row["recovery_steps"] or math.isnan(
            row["recovery_steps"])
        if noise:
            assert close(row["recovery_steps_true"], ref_median(recov_true)), (scen, opt)
        else:
            assert row["shifts_true"] == 0 and math.isnan(row["recovery_steps_true"])
        assert (row["runs"], row["ok"], row["seeds"]) == (5, 5, 5)
        checked += 1
    assert checked == 6  # 3 scenarios x (sgdm, tam)


def test_per_phase_table_matches_the_reference(study_dir, rep):
    res = store.load(study_dir)
    phases = pd.read_csv(rep / "tables" / "phases.csv")
    refs = ref_common(res, "permute 100%")
    sub = res.runs[(res.runs["scenario"] == "permute 100%") & (res.runs["optimizer"] == "tam")]
    for k in (0, 1, 2):
        acc, rec = [], []
        for rid in sub["run_id"]:
            tr = res.trace(rid)
            p = tr[tr["phase"] == k]
            acc.append(p["correct"].sum() / p["n"].sum())
            if k:
                plan = res.run_phases[res.run_phases["run_id"] == rid]
                rec.append(ref_recovery(tr, plan, refs)[k][0])
        row = phases[(phases["scenario"] == "permute 100%") & (phases["optimizer"] == "tam")
                     & (phases["phase"] == k)].iloc[0]
        m, lo, hi = ref_interval(acc)
        assert close(row["online_acc"], m) and close(row["online_acc_low"], lo)
        if k:
            assert close(row["recovery_steps"], ref_median(rec))
            assert row["censored"] == sum(math.isinf(x) for x in rec) and row["shifts"] == 5
        else:
            assert math.isnan(row["recovery_steps"]) and row["shifts"] == 0


def test_store_phases_use_the_common_reference(study_dir):
    res = store.load(study_dir)
    refs = ref_common(res, "permute 50%")
    ph = res.phases[(res.phases["scenario"] == "permute 50%") & (res.phases["phase"] >= 1)
                    & (res.phases["status"] == "ok")]
    for k in (1, 2):
        assert np.allclose(ph.loc[ph["phase"] == k, "reference"], refs[k], atol=1e-12)
    # the stored per-run rows are each run against its own plateau
    own = res.run_phases.merge(ph[["run_id", "phase"]], on=["run_id", "phase"])
    assert np.allclose(own["reference"], own["plateau"], atol=1e-12)


def test_paired_comparison_against_the_baseline(study_dir, rep):
    res = store.load(study_dir)
    comp = pd.read_csv(rep / "tables" / "comparison.csv")
    runs = res.runs.set_index(["scenario", "optimizer", "seed"])
    # the family: every judged comparison of the report and the league's first-place tests,
    # Holm-adjusted together
    judged = comp[comp["judged"]]
    assert len(judged) == comp["p"].notna().sum() > 0
    firsts = pd.read_csv(rep / "tables" / "first_places.csv")
    fp = firsts.loc[~firsts["duplicate"], "p"].dropna()
    family = ref_holm(np.concatenate([judged["p"].to_numpy(), fp.to_numpy()]))
    assert np.allclose(judged["p_holm"], family[:len(judged)], atol=1e-12)
    assert np.allclose(firsts.loc[fp.index, "p_holm"], family[len(judged):], atol=1e-12)
    # a first-place test between an optimizer and its baseline is that comparison: once
    for r in firsts[firsts["duplicate"]].itertuples():
        hit = judged[(judged["scenario"] == r.scenario)
                     & judged["metric"].str.startswith("online_acc")
                     & judged["optimizer"].isin([r.top, r.runner_up])
                     & judged["baseline"].isin([r.top, r.runner_up])]
        assert len(hit) == 1 and close(hit["p"].iloc[0], r.p, 1e-12)
        assert close(hit["p_holm"].iloc[0], r.p_holm, 1e-12)
    assert firsts["duplicate"].any()  # tam and sgdm are the top two somewhere here
    for scen, col in (("permute 50%", "online_acc"), ("permute 100%", "online_acc"),
                      ("other 50%", "online_acc_true")):
        d = np.array([runs.loc[(scen, "tam", s), col] - runs.loc[(scen, "sgdm", s), col]
                      for s in range(5)])
        row = comp[(comp["scenario"] == scen) & (comp["optimizer"] == "tam")
                   & (comp["metric"] == col)].iloc[0]
        m, lo, hi = ref_interval(d)
        assert row["baseline"] == "sgdm"
        assert close(row["difference"], m) and close(row["low"], lo) and close(row["high"], hi)
        assert close(row["p"], stats.ttest_1samp(d, 0).pvalue)
        assert (row["wins"], row["losses"]) == (int((d > 0).sum()), int((d < 0).sum()))
        want = f"no detectable difference with {row['n']} seeds" if row["p_holm"] > 0.05 else (
            "better" if m > 0 else "worse")
        assert row["verdict"] == want
    # noise scenarios are judged on the original labels, concept ones on the stream's
    assert "online_acc_true" in set(comp.loc[comp["scenario"] == "other 50%", "metric"])
    assert "online_acc" not in set(comp.loc[comp["scenario"] == "other 50%", "metric"])
    assert "online_acc_true" not in set(comp.loc[comp["scenario"] == "permute 50%", "metric"])
    # recovery: one value per seed (its shifts' median), censored = the phase length, Wilcoxon
    refs = ref_common(res, "permute 100%")
    plan = res.run_phases[res.run_phases["scenario"] == "permute 100%"]
    vals = {o: [run_level(res, runs.loc[("permute 100%", o, s), "run_id"],
                          plan[plan["run_id"] == runs.loc[("permute 100%", o, s), "run_id"]],
                          refs)[0] for s in range(5)] for o in ("tam", "sgdm")}
    capped = {o: np.minimum(np.asarray(v), 30.0) for o, v in vals.items()}
    d = capped["tam"] - capped["sgdm"]
    row = comp[(comp["scenario"] == "permute 100%") & (comp["optimizer"] == "tam")
               & (comp["metric"] == "recovery_steps")].iloc[0]
    assert row["n"] == 5 and row["test"] == "wilcoxon"
    assert close(row["difference"], np.median(d))
    assert row["wins"] == int((d < 0).sum()) and row["losses"] == int((d > 0).sum())
    nz = d[d != 0]
    if nz.size >= 2 and not np.all(nz == nz[0]):
        assert close(row["p"], stats.wilcoxon(nz).pvalue)
    # diverged and failed arms: compared where they have values, never silently dropped
    assert set(comp["optimizer"]) >= {"tam", "huge"}


def test_league_first_places_need_a_significant_lead_over_the_runner_up(study_dir):
    from shiftsim.report.frames import rank_frame
    from shiftsim.report.tables import build
    from shiftsim.report.view import view

    v = build(view(store.load(study_dir)))
    league, _ = rank_frame(v, n_boot=10)
    arms = list(league["optimizer"])
    # by hand: in each ranked scenario the top mean against the runner-up, paired t over the
    # seeds (scipy), Holm over the scenarios; a clear first place only where it rejects
    tops, ps = [], []
    for s in [s for s in v.scenarios if not v.no_signal.get(s)]:
        sub = v.values[v.values["scenario"] == s]
        t = sub.pivot_table(index="seed", columns="optimizer", values=v.headline(
            s, "online_acc"), aggfunc="first")[[a for a in arms]]
        order = t.mean().sort_values(ascending=False, kind="stable").index
        d = (t[order[0]] - t[order[1]]).dropna()
        tops.append((order[0], order[1]))
        ps.append(stats.ttest_rel(t[order[0]], t[order[1]], nan_policy="omit").pvalue
                  if d.nunique() > 1 else min(1.0, 2 * 0.5 ** len(d)))
    # Holm in the report's whole family: the judged comparisons with the baseline, then these
    # (one that is a comparison with the baseline, on the same accuracy, counted once)
    comp = v.comparison[v.comparison["judged"]]
    judged = comp["p"].to_numpy()
    dup = v.first_places["duplicate"].to_numpy(bool)
    adj_all = ss.metrics.holm(np.concatenate([judged, np.asarray(ps)[~dup]]))
    adj = np.empty(len(ps))
    adj[~dup] = adj_all[len(judged):]
    for i in np.flatnonzero(dup):
        a, b = tops[i]
        hit = comp[(comp["scenario"] == v.first_places["scenario"].iloc[i])
                   & comp["metric"].str.startswith("online_acc")
                   & (((comp["optimizer"] == a) & (comp["baseline"] == b))
                      | ((comp["optimizer"] == b) & (comp["baseline"] == a)))]
        assert np.isclose(hit["p"].iloc[0], ps[i], atol=1e-12)  # truly the same test
        adj[i] = adj_all[list(comp.index).index(hit.index[0])]
    assert np.allclose(v.first_places["p"], ps, atol=1e-12)
    first = {a: 0 for a in arms}
    tied = {a: 0 for a in arms}
    for (a, b), q in zip(tops, adj):
        if q <= 0.05:
            first[a] += 1
        else:
            tied[a] += 1
            tied[b] += 1
    got = league.set_index("optimizer")
    assert got["first_places"].to_dict() == first and got["tied_first"].to_dict() == tied
    assert (got["first_places"] + got["tied_first"]).sum() >= len(tops)


def test_diverged_and_failed_runs_are_counted_and_listed(study_dir, rep):
    summary = pd.read_csv(rep / "tables" / "summary.csv").set_index(["scenario", "optimizer"])
    for scen in ("permute 50%", "permute 100%", "other 50%"):
        assert tuple(summary.loc[(scen, "huge"), ["runs", "ok", "diverged", "failed"]]) == \
            (5, 0, 5, 0)
        assert tuple(summary.loc[(scen, "broken"), ["runs", "ok", "diverged", "failed"]]) == \
            (5, 0, 0, 5)
        assert math.isnan(summary.loc[(scen, "broken"), "online_acc"])
        assert summary.loc[(scen, "huge"), "online_acc"] >= 0  # metrics of the steps it ran
    runs = pd.read_csv(rep / "tables" / "runs.csv")
    assert len(runs) == 60 and runs["status"].value_counts().to_dict() == {
        "ok": 30, "diverged": 15, "failed": 15}
    md = (rep / "README.md").read_text()
    assert "0 ok, 5 diverged" in md and "0 ok, 5 failed" in md
    assert "this optimizer is broken on purpose" in md
    assert "15 runs diverged" in md and "15 runs failed" in md
    meta = json.loads((rep / REPORT_FILE).read_text())
    assert meta["counts"] == {"ok": 30, "diverged": 15, "failed": 15, "incomplete": 0,
                              "pending": 0}


def test_display_tables_and_findings(rep):
    md = (rep / "README.md").read_text()
    summary = pd.read_csv(rep / "tables" / "summary.csv").set_index(["scenario", "optimizer"])
    comp = pd.read_csv(rep / "tables" / "comparison.csv")
    r = summary.loc[("permute 50%", "sgdm")]
    # the formatted cell is the CSV's numbers
    cell = f"{r['online_acc']:.3f} [{r['online_acc_low']:.3f}, {r['online_acc_high']:.3f}]"
    assert cell.replace("-", "−") in md
    assert "## Findings" in md and "## Summary per scenario and optimizer" in md
    assert "## Held-out accuracy, ACC, BWT and forgetting" in md
    assert "## Paired comparison against the baseline (sgdm)" in md
    # the caption says the p-values are adjusted and the intervals are not
    assert f"Holm-adjusted over all {int(comp['judged'].sum())} comparisons" in md
    assert "The intervals are each comparison's own, not adjusted" in md
    findings = json.loads((rep / REPORT_FILE).read_text())["findings"]
    assert findings[0].startswith("5 seeds per optimizer and scenario")
    assert f"the {int(comp['judged'].sum())} comparisons are Holm-adjusted" in findings[0]
    # at most one line per scenario family (here one: the flip rate), U-shape explained
    fam = [f for f in findings if "across optimizers" in f]
    assert len(fam) == 2 and any("U-shaped" in f for f in fam)  # permute and other families
    # every optimizer x scenario with a significant comparison gets one line, and only those
    sig = comp[comp["verdict"].isin(["better", "worse"])]
    stated = [f for f in findings if re.match(r"\*\*\w+\*\* vs sgdm at ", f)]
    pairs = sig.groupby(["optimizer", "scenario"]).size()
    assert len(stated) == min(len(pairs), 12)
    for f in stated:
        m = re.match(r"\*\*(\w+)\*\* vs sgdm at (\w+), flip rate (\d+) %: (better|worse) "
                     "in ", f)
        assert m, f
        scen = f"{m[2]} {m[3]}%"
        assert (m[1], scen) in pairs.index, f
    if sig.empty:
        assert any("survives the adjustment" in f for f in findings)
    for f in findings:  # no unadjusted adjectives
        assert "clearly" not in f and "fastest" not in f and "within noise" not in f


def test_documents_are_self_contained_and_link_existing_files(rep):
    html = (rep / "index.html").read_text()
    assert "<script" not in html and "<link" not in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "@media print" in html
    imgs = re.findall(r'<img src="data:image/png;base64,([^"]+)" width="(\d+)" height="(\d+)"',
                      html)
    meta = json.loads((rep / REPORT_FILE).read_text())
    assert len(imgs) == len(meta["figures"]) >= 6
    assert {"recovery_curves", "stream_accuracy", "heatmap", "accuracy_matrix",
            "diagnostics"} <= set(meta["figures"])
    assert any(n.startswith("severity") for n in meta["figures"])
    for data, w, h in imgs:
        png = base64.b64decode(data)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and int(w) > 200 and int(h) > 100
    md = (rep / "README.md").read_text()
    for link in re.findall(r"\]\(([^)]+)\)", md):
        assert (rep / link).is_file(), link
    for name in meta["figures"]:
        assert (rep / "figures" / f"{name}.png").stat().st_size > 1000
        assert ET.parse(rep / "figures" / f"{name}.svg").getroot().tag.endswith("svg")
    for name in ("summary", "heldout", "comparison", "phases", "runs"):
        for ext in ("csv", "md", "html"):
            assert (rep / "tables" / f"{name}.{ext}").is_file()
    assert not [p for p in rep.parent.iterdir() if p.name.startswith(".")]  # no temp folders


# -- headless Chromium ---------------------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


@pytest.fixture(scope="session")
def chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env,
                       capture_output=True, timeout=600)
        exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium is not installed and cannot be installed here (needs root and "
                    "apt-get: `apt-get install -y chromium`, or `make system-packages`)")
    return exe


def run_chromium(exe, tmp_path, *args, timeout=90):
    profile = tmp_path / "chromium-profile"
    cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.browser
def test_report_renders_in_headless_chromium(chromium, rep, tmp_path):
    from PIL import Image

    url = (rep / "index.html").resolve().as_uri()
    shot = tmp_path / "shot.png"
    run_chromium(chromium, tmp_path, "--window-size=1366,3000", f"--screenshot={shot}", url)
    img = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert img.shape[:2] == (3000, 1366)
    white = (img > 245).all(axis=2).mean()
    assert 0.3 < white < 0.97  # a page with text and figures, not blank
    assert img.std() > 20
    # a copy with a probe script: every image decoded, none broken
    probe = rep / "probe.html"
    probe.write_text((rep / "index.html").read_text().replace("</body>", (
        "<script>window.addEventListener('load', () => { const imgs = [...document.images];"
        " const bad = imgs.filter(i => !i.complete || i.naturalWidth === 0);"
        " document.body.setAttribute('data-probe', `images=${imgs.length} broken=${bad.length}"
        " width=${document.documentElement.scrollWidth}`); });</script></body>")))
    try:
        dom = run_chromium(chromium, tmp_path, "--virtual-time-budget=5000", "--dump-dom",
                           probe.resolve().as_uri()).stdout
    finally:
        probe.unlink()
    m = re.search(r'data-probe="images=(\d+) broken=(\d+) width=(\d+)"', dom)
    assert m, dom[-500:]
    n_figs = len(json.loads((rep / REPORT_FILE).read_text())["figures"])
    assert (int(m[1]), int(m[2])) == (n_figs, 0)
    # printing: a multi-page PDF
    pdf = tmp_path / "report.pdf"
    run_chromium(chromium, tmp_path, "--no-pdf-header-footer", f"--print-to-pdf={pdf}", url)
    data = pdf.read_bytes()
    assert data[:5] == b"%PDF-" and len(re.findall(rb"/Type\s*/Page[^s]", data)) >= 3


# -- edge cases ---------------------------------------------------------------------------------

def test_single_seed_report_and_baseline_by_registry_name(tmp_path, digits):
    study = Study("one-seed", flip_rates(digits, [0.0, 1.0], tasks=2, steps_per_task=30),
                  ss.models.mlp(hidden=(16,)), {"momentum": "sgdm", "ADAM": "adam"}, seeds=[4])
    study.run(tmp_path / "res", workers=1, progress=False)
    out = report(tmp_path / "res", tmp_path / "rep", baseline="adam")  # the registry name
    s = pd.read_csv(out / "tables" / "summary.csv")
    assert s["online_acc_low"].isna().all() and s["seeds"].eq(1).all()
    c = pd.read_csv(out / "tables" / "comparison.csv")
    assert (c["optimizer"] == "momentum").all() and (c["baseline"] == "ADAM").all()
    assert c["verdict"].str.startswith("not judged").all() and not c["judged"].any()
    # flip rate 0 is no shift: no recovery comparison there
    assert "recovery_steps" not in set(c.loc[c["scenario"] == "permute 0%", "metric"])
    meta = json.loads((out / REPORT_FILE).read_text())
    assert meta["optimizers"] == ["ADAM", "momentum"]
    assert meta["findings"][0].startswith("1 seed per optimizer and scenario: fewer than 5")
    assert not any(" better than " in f or " worse than " in f for f in meta["findings"])


def test_all_censored_report(tmp_path, digits):
    # phases of 15 steps are shorter than the 20-step persistence: every dip stays censored
    study = Study("censored", flip_rates(digits, [0.5, 1.0], tasks=2, steps_per_task=15),
                  ss.models.mlp(hidden=(16,)), {"sgdm": "sgdm", "tam": "tam"}, seeds=2)
    study.run(tmp_path / "res", workers=1, progress=False)
    out = report(tmp_path / "res", tmp_path / "rep")
    s = pd.read_csv(out / "tables" / "summary.csv")
    s = s[s["scenario"] == "permute 100%"]  # a full permutation always dips
    assert s["recovery_steps"].isna().all() and (s["censored_fraction"] == 1.0).all()
    md = (out / "README.md").read_text()
    assert "| never |" in md
    meta = json.loads((out / REPORT_FILE).read_text())
    assert {"recovery_curves", "heatmap"} <= set(meta["figures"])


def test_unknown_baseline(study_dir, tmp_path):
    with pytest.raises(ShiftsimError, match=r"unknown baseline 'nope'; allowed: 'sgdm', 'tam', "
                                            r"'huge', 'broken'"):
        report(study_dir, tmp_path / "r2", baseline="nope")
    assert not (tmp_path / "r2").exists()


# -- writing ------------------------------------------------------------------------------------

def test_each_figure_is_closed_before_the_next_is_drawn(study_dir, tmp_path):
    """A report of many scenarios drew every figure before writing any (24 in the league:
    matplotlib's 'more than 20 figures' warning); now each is written and closed first."""
    import warnings

    import matplotlib as mpl
    import matplotlib.pyplot as plt

    plt.close("all")
    with mpl.rc_context({"figure.max_open_warning": 1}), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = report(study_dir, tmp_path / "r")
    assert len(list((out / "figures").glob("*.png"))) >= 4
    assert not [w for w in caught if "figures have been opened" in str(w.message)]
    assert plt.get_fignums() == []


def test_nothing_partial_is_left_when_writing_fails(study_dir, rep, tmp_path, monkeypatch):
    import shiftsim.report.figures as figures

    out = tmp_path / "r"
    shutil.copytree(rep, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def boom(*a, **k):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(figures, "build_figures", boom)
    with pytest.raises(RuntimeError, match="figure failed"):
        report(study_dir, out)
    with pytest.raises(RuntimeError):
        report(study_dir, tmp_path / "fresh")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no temp folder, no 'fresh'
    monkeypatch.undo()
    report(study_dir, out, baseline="tam")  # an earlier report is replaced in one rename
    assert json.loads((out / REPORT_FILE).read_text())["baseline"] == "tam"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_refuses_folders_that_are_not_reports(study_dir, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("keep me")
    with pytest.raises(ShiftsimError, match="is not empty and holds no shiftsim report"):
        report(study_dir, tmp_path / "notes")
    assert (tmp_path / "notes" / "thesis.tex").read_text() == "keep me"
    with pytest.raises(ShiftsimError, match="would replace the study folder"):
        report(study_dir, study_dir)
    with pytest.raises(ShiftsimError, match="would replace the study folder"):
        report(study_dir, study_dir.parent)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ShiftsimError, match="exists and is not a folder"):
        report(study_dir, tmp_path / "file")
    with pytest.raises(ShiftsimError, match="does not exist"):
        report(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(TypeError, match="out_dir must be a folder path"):
        report(study_dir, 3)
    with pytest.raises(ShiftsimError, match="level must be a number in"):
        report(study_dir, tmp_path / "o", level=95)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ShiftsimError, match="is empty"):
        report(empty, tmp_path / "o")


def test_package_is_callable_as_ss_report(study_dir, tmp_path):
    import shiftsim.report as pkg

    assert callable(pkg) and ss.report in (pkg, pkg.report)
    with pytest.raises(ShiftsimError, match="unknown baseline 'x'"):
        pkg(study_dir, tmp_path / "a", baseline="x")  # the package calls report()


# -- the command line ---------------------------------------------------------------------------

def test_cli_report(study_dir, tmp_path, capsys):
    assert main(["report", str(study_dir), "--out", str(tmp_path / "r"), "--baseline",
                 "tam"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wrote {tmp_path / 'r' / 'index.html'}") and "baseline tam" in line
    assert "30 ok, 15 diverged, 15 failed" in line
    assert main(["report", str(study_dir), "--out", str(tmp_path / "r2"), "--baseline",
                 "zzz"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown baseline 'zzz'; allowed:")
    assert main(["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r3")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


def test_cli_report_shows_its_stages_on_a_terminal(study_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["report", str(study_dir), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr()
    stages = out.err.strip().splitlines()
    assert stages[0].startswith("report: loading the study (") and stages[0].endswith(" s)")
    assert "report: figure: recovery curves (" in out.err and "report: findings (" in out.err
    assert re.search(r"\(\d+ ok, .*\) in \d+\.\d s$", out.out.strip())
    assert main(["report", str(study_dir), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_cli_report_of_a_study_where_every_run_failed(tmp_path, digits, capsys):
    study = Study("all-failed", [ss.label_flip_tasks(digits, rate=1.0, tasks=2,
                                                     steps_per_task=10)],
                  ss.models.mlp(hidden=(8,)), {"broken": ss.optim.spec(broken_optimizer)},
                  seeds=2)
    study.run(tmp_path / "res", workers=1, progress=False)
    capsys.readouterr()
    assert main(["report", str(tmp_path / "res"), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no run of the study has results to report (2 failed)" in err[0]
    assert "broken on purpose" in err[0]
    assert not (tmp_path / "rep").exists()


@pytest.mark.slow
def test_demo_ends_by_writing_a_report(tmp_path, capsys):
    from shiftsim.demo import run_demo

    assert run_demo(tmp_path / "demo", quick=True) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"wrote {tmp_path / 'demo' / 'report' / 'index.html'}")
    meta = json.loads((tmp_path / "demo" / "report" / REPORT_FILE).read_text())
    assert meta["study"] == "demo" and meta["baseline"] == "sgdm"  # the quickstart's first
    assert meta["counts"]["ok"] == len(meta["optimizers"]) >= 3
    assert "recovery_curves" in meta["figures"]


def test_one_incomplete_run_and_one_figure_are_singular(tmp_path, digits):
    from shiftsim.report import describe

    study = Study("single", [ss.label_flip_tasks(digits, rate=1.0, tasks=2, steps_per_task=30)],
                  ss.models.mlp(hidden=(8,)), {"sgdm": "sgdm", "adam": "adam"}, seeds=1)
    study.run(tmp_path / "s", workers=1, progress=False)
    victim = study.grid()[1].run_id
    trace = tmp_path / "s" / "runs" / victim / "trace.parquet"
    trace.write_bytes(trace.read_bytes()[:100])
    out = report(tmp_path / "s", tmp_path / "r")
    md = (out / "README.md").read_text()
    assert "1 run is incomplete (no metrics): adam in flip-permute-1 (seed 0)." in md
    assert "are incomplete" not in md
    meta = json.loads((out / REPORT_FILE).read_text())
    meta.update(figures=meta["figures"][:1], tables=meta["tables"][:1])
    (out / REPORT_FILE).write_text(json.dumps(meta))
    assert ": 1 figure, 1 table, baseline sgdm (1 ok, 1 incomplete)" in describe(out)


@pytest.mark.parametrize("arms", [{"sgdm": "sgdm"},
                                  {"sgdm": "sgdm", "sparse": "torch.optim.SparseAdam"}],
                         ids=["one run", "one surviving run"])
def test_a_report_of_one_run_warns_about_nothing(tmp_path, digits, arms):
    import warnings

    study = Study("one", flip_rates(digits, [1.0], tasks=3, steps_per_task=30),
                  ss.models.mlp(hidden=(8,)), arms, seeds=1)
    study.run(tmp_path / "s", workers=1, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # seaborn, matplotlib, numpy, pandas: none may warn
        report(tmp_path / "s", tmp_path / "r")
    assert json.loads((tmp_path / "r" / REPORT_FILE).read_text())["counts"]["ok"] == 1


def test_a_baseline_named_by_its_optimizer_is_one_per_model(tmp_path):
    """With several models, ``baseline="sgdm"`` compares each arm with sgdm of its own model."""
    from shiftsim.report import frames
    from shiftsim.report.view import view

    data = ss.data.digits()
    study = Study("two-models", flip_rates(data, [1.0], tasks=2, steps_per_task=30),
                  models={"wide": ss.models.mlp(hidden=(16,)),
                          "narrow": ss.models.mlp(hidden=(4,))},
                  optimizers={"sgdm": ss.optim.spec("sgdm"), "adam": ss.optim.spec("adam")},
                  seeds=5)
    study.run(tmp_path / "r", workers=1, progress=False)
    v = view(store.load(tmp_path / "r"), baseline="sgdm")
    assert v.baseline == "sgdm" and v.baseline_reason == "given; one per model"
    assert set(v.baseline_arms) == {"sgdm [wide]", "sgdm [narrow]"}
    assert v.baseline_of("adam [narrow]") == "sgdm [narrow]"
    comp = frames.comparison_frame(v)
    assert set(comp["optimizer"]) == {"adam [wide]", "adam [narrow]"}
    pairs = set(zip(comp["optimizer"], comp["baseline"]))
    assert pairs == {("adam [wide]", "sgdm [wide]"), ("adam [narrow]", "sgdm [narrow]")}
    # the paired difference is against the own model's baseline, seed by seed
    runs = v.runs.set_index(["optimizer", "seed"])["online_acc"]
    want = np.mean([runs["adam [narrow]", s] - runs["sgdm [narrow]", s] for s in range(5)])
    row = comp[(comp["optimizer"] == "adam [narrow]") & (comp["metric"] == "online_acc")]
    assert math.isclose(float(row["difference"].iloc[0]), want, rel_tol=1e-9, abs_tol=1e-12)
    with pytest.raises(ShiftsimError, match="unknown baseline 'tam'"):
        view(store.load(tmp_path / "r"), baseline="tam")


def test_a_recovery_comparison_that_is_no_test_stays_out_of_the_family():
    from shiftsim.report.statistics import METRICS, paired, verdict

    m = METRICS["recovery_steps"]
    seeds = range(6)
    zero, nan = pd.Series(0.0, index=seeds), pd.Series(np.nan, index=seeds)
    no, yes = pd.Series(False, index=seeds), pd.Series(True, index=seeds)
    kw = {"cap": 300.0}
    unhurt = paired(zero, zero, m, censored_a=no, censored_b=no, **kw)
    never = paired(nan, nan, m, censored_a=yes, censored_b=yes, **kw)
    both = pd.Series([0.0, 0.0, 0.0, np.nan, np.nan, np.nan], index=seeds)
    cen = pd.Series([False] * 3 + [True] * 3, index=seeds)
    mixed = paired(both, both, m, censored_a=cen, censored_b=cen, **kw)
    assert unhurt["untestable"] == "the shift hurt neither side on any seed"
    assert never["untestable"] == "neither side recovers on any seed"
    assert mixed["untestable"].startswith("on every seed both sides")
    assert all(math.isnan(d["p"]) for d in (unhurt, never, mixed))
    # one seed where a side recovered after a dip: a test again
    some = paired(pd.Series([0.0] * 5 + [40.0], index=seeds), zero, m, censored_a=no,
                  censored_b=no, **kw)
    assert some["untestable"] == "" and some["p"] == 1.0  # one non-zero difference
    row = {**never, "judged": False, "p_holm": np.nan, "higher_is_better": False}
    assert verdict(row) == "not compared: neither side recovers on any seed"
    assert verdict({**row, "n": 3}) == "not judged (fewer than 5 seeds)"


def test_the_findings_say_when_no_recovery_difference_could_pass():
    from types import SimpleNamespace

    from shiftsim.report.findings import _recovery_power

    comp = pd.DataFrame({"judged": True, "test": ["t"] * 30 + ["wilcoxon"] * 10,
                         "n": 10, "p_holm": [0.001] * 2 + [0.5] * 38})
    v = SimpleNamespace(comparison=comp, first_places=None)
    text = _recovery_power(v)
    # 2 of 40 rejected: Holm stopped at 0.05 / 38 = 0.0013 < 2 / 2^10 = 0.00195
    assert len(text) == 1 and "0.0020" in text[0] and "0.0013" in text[0]
    comp.loc[:37, "p_holm"] = 0.001  # 38 rejected: the threshold 0.05 / 2 is reachable
    assert _recovery_power(SimpleNamespace(comparison=comp, first_places=None)) == []


def test_an_unreadable_study_file_is_refused_not_ignored(study_dir, tmp_path, capsys):
    """Without study.json the report would name another baseline, drop the study's order and
    call a tuned study untuned: a damaged study.json is an error that says how to mend it."""
    broken = tmp_path / "s"
    shutil.copytree(study_dir, broken)
    (broken / "study.json").write_text("{bad")
    with pytest.raises(ShiftsimError, match="study.json' is unreadable .*shiftsim study"):
        store.load(broken)
    assert main(["report", str(broken), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "unreadable" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_a_tuned_reports_header_never_shows_an_untuned_setting(tmp_path):
    from types import SimpleNamespace

    from shiftsim.report import _optimizer_text

    runs = pd.DataFrame({"optimizer": ["sgdm", "tam"], "optimizer_label": ["sgdm", "tam"]})
    axes = {"optimizers": {"sgdm": {"optimizer": {"name": "sgdm", "hparams": {
        "lr": 0.05, "momentum": 0.9}}}, "tam": {"optimizer": {"name": "tam", "hparams": {
            "lr": 0.1}}}}}
    tuning = pd.DataFrame({"scenario": "s", "optimizer": ["sgdm", "tam"], "lr": [0.03, 0.3],
                           "metric": "auto", "value": 0.8})
    v = SimpleNamespace(study={"axes": axes}, arms=["sgdm", "tam"], runs=runs, tuning=tuning)
    assert _optimizer_text(v) == "sgdm = sgdm(lr=tuned, momentum=0.9); tam = tam(lr=tuned)"
    v.tuning = None
    assert _optimizer_text(v) == "sgdm = sgdm(lr=0.05, momentum=0.9); tam = tam(lr=0.1)"


def test_a_family_line_ranges_each_scenarios_headline_accuracy(study_dir):
    from shiftsim.report import _format as fmt
    from shiftsim.report.findings import _family_lines
    from shiftsim.report.tables import build
    from shiftsim.report.view import view

    v = build(view(store.load(study_dir)))
    lines = {line.split(":")[0]: line for line in _family_lines(v)}
    other = v.summary[v.summary["scenario"] == "other 50%"]["online_acc_true"].dropna()
    want = f"{fmt.num(other.min())}–{fmt.num(other.max())}"
    line = next(t for k, t in lines.items() if k.lower().startswith("other"))
    assert f"online accuracy (original labels) {want} across" in line
    perm = v.summary[v.summary["scenario"].str.startswith("permute")]["online_acc"].dropna()
    line = next(t for k, t in lines.items() if k.lower().startswith("permute"))
    assert f"online accuracy {fmt.num(perm.min())}–{fmt.num(perm.max())} across" in line
    # one family mixing label noise and concept shifts: each scenario by its own headline
    v.families = {}
    v.no_signal = {**v.no_signal, "permute 100%": True}  # as if it had no learnable signal
    (line,) = _family_lines(v)
    vals = pd.concat([v.summary.loc[v.summary["scenario"] == "permute 50%", "online_acc"],
                      other]).dropna()
    assert (f"online accuracy (original labels for label noise) {fmt.num(vals.min())}–"
            f"{fmt.num(vals.max())} across optimizers (the 1 without a learnable signal left "
            "out)") in line


def test_arms_that_never_share_a_scenario_are_ranked_in_separate_leagues(tmp_path, digits):
    from shiftsim.report.frames import rank_frame, run_values
    from shiftsim.report.view import view

    scen = flip_rates(digits, [0.0, 0.5, 1.0, 0.2], mode="permute", tasks=2,
                      steps_per_task=10, batch_size=8)
    wide = {"permute 0%", "permute 50%"}
    study = Study("leagues", scen, models={"wide": ss.models.mlp(hidden=(8,)),
                                           "narrow": ss.models.linear()},
                  optimizers={o: o for o in ("sgdm", "adam", "sgd")}, seeds=2,
                  where=lambda r: (r["scenario"] in wide) == (r["model"] == "wide"))
    study.run(tmp_path / "s", workers=1, progress=False)
    v = view(store.load(tmp_path / "s"), baseline="sgdm")
    v.values = run_values(v)
    league, _ = rank_frame(v, n_boot=5)
    assert league["league"].tolist() == [0, 0, 0, 1, 1, 1]
    for _, g in league.groupby("league"):
        assert len({a.split(" [")[1] for a in g["optimizer"]}) == 1  # one model per league
        assert (g["scenarios"] == 2).all()
        assert sorted(g["mean_rank"]) == g["mean_rank"].tolist()
        assert g["mean_rank"].sum() == pytest.approx(6.0)  # ranks 1-3 in each scenario
    text = report(tmp_path / "s", tmp_path / "r").joinpath("README.md").read_text()
    assert "ranked in separate leagues" in text and "| league | rank |" in text
    assert "| 1 (2 scenarios) | 1 |" in text and "| 2 (2 scenarios) | 1 |" in text
    assert league["league_scenarios"].tolist() == [2] * 6


def test_an_optimizer_missing_from_one_scenario_stays_in_its_league(study_dir):
    """Leagues are groups of optimizers linked by shared scenarios, not equal scenario sets:
    an optimizer without values in one scenario is still ranked with the others."""
    from shiftsim.report.frames import rank_frame, run_values
    from shiftsim.report.view import view

    v = view(store.load(study_dir))
    v.values = run_values(v)
    drop = (v.values["optimizer"] == "tam") & (v.values["scenario"] == "permute 50%")
    v.values.loc[drop, ["online_acc", "online_acc_true"]] = np.nan
    league, _ = rank_frame(v, n_boot=5)
    assert set(league["league"]) == {0}
    assert league.set_index("optimizer").loc["tam", "scenarios"] == \
        league["scenarios"].max() - 1


def test_the_findings_say_when_too_few_seeds_for_any_recovery_verdict():
    from types import SimpleNamespace

    from shiftsim.report.findings import _recovery_power

    comp = pd.DataFrame({"judged": True, "test": ["t", "wilcoxon"], "n": 5,
                         "p_holm": [0.5, 0.5]})
    (text,) = _recovery_power(SimpleNamespace(comparison=comp, first_places=None))
    assert "0.0625" in text and "even before any adjustment" in text
