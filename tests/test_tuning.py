"""Tune, then test: grids, selection, tolerance, stages in the store, resume, reports, the CLI.

The selection and the tolerance are checked against values computed here by hand from the
tuning runs the store holds."""

from __future__ import annotations

import json
import math
import os
import textwrap

import numpy as np
import pandas as pd
import pytest

import shiftsim as ss
from shiftsim import store
from shiftsim.errors import ShiftsimError
from shiftsim.report import REPORT_FILE, report
from shiftsim.study import InProcess, Study, Tuning, flip_rates
from shiftsim.study.tuning import DEFAULT_LRS, choose, curve, points, select, tolerance, widen

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data():
    return ss.data.digits()


@pytest.fixture(scope="module")
def scenarios(data):
    # a noise scenario (tuned on the original labels) and a concept one
    return flip_rates(data, [1.0], mode="permute", tasks=2, steps_per_task=60,
                      batch_size=16) | flip_rates(data, [0.5], mode="other", tasks=2,
                                                  steps_per_task=60, batch_size=16)


GRID = {"sgdm": {"lr": [0.003, 0.03, 0.3]}, "tam": {"lr": [0.01, 0.1, 1.0]}}


def tuned_study(scenarios, **tuning):
    kw = {"grid": GRID, "seeds": 2, **tuning}
    return Study("tuned", scenarios, ss.models.mlp(hidden=(16,)),
                 {"sgdm": ss.optim.spec("sgdm"), "tam": ss.optim.spec("tam")}, seeds=3,
                 tuning=Tuning(**kw))


@pytest.fixture(scope="module")
def tuned_dir(tmp_path_factory, scenarios):
    out = tmp_path_factory.mktemp("tuned")
    rep = tuned_study(scenarios).run(out, workers=1, progress=False)
    assert rep.ok
    return out


# -- the Tuning object --------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    ({"grid": {}}, "non-empty dict"),
    ({"grid": {"sgdm": {"lr": []}}}, r"Tuning grid\['sgdm'\]\['lr'\] is empty"),
    ({"grid": {"sgdm": {"lr": [0.1, -0.01]}}}, r"learning rate must be in \(0, inf\], got"),
    ({"grid": {"sgdm": {"lr": [0.0]}}}, r"learning rate must be in \(0, inf\], got"),
    ({"grid": {"sgdm": {"lr": [0.1, 0.1]}}}, "lists a value twice"),
    ({"grid": "everything"}, "must be 'auto' or a dict"),
    ({"scope": "global"}, "unknown tuning scope 'global'; allowed: 'per_scenario', 'shared'"),
    ({"metric": "accuracy"}, "unknown tuning metric 'accuracy'"),
    ({"seeds": 0}, "positive count"),
    ({"seeds": [1, 1]}, "Tuning seeds: seed 1 is listed twice"),
    ({"on": "x"}, "names the tuning scenario of scope='shared'"),
    ({"extend": -1}, "extend must be True, False or a number"),
])
def test_bad_tuning_is_refused(kwargs, match):
    with pytest.raises(ShiftsimError, match=match):
        Tuning(**kwargs)


def test_bad_tuning_for_a_study_is_refused_before_any_run(scenarios, tmp_path):
    opts = {"sgdm": ss.optim.spec("sgdm")}
    m = ss.models.mlp(hidden=(8,))
    with pytest.raises(ShiftsimError, match="names optimizer 'adam', which is not in the study"):
        Study("x", scenarios, m, opts, tuning=Tuning(grid={"adam": {"lr": [1e-3]}}))
    with pytest.raises(ShiftsimError, match=r"disjoint; both have \[2\]"):
        Study("x", scenarios, m, opts, seeds=3, tuning=Tuning(seeds=[2, 7]))
    with pytest.raises(ShiftsimError, match="Tuning on='nope' is not a scenario"):
        Study("x", scenarios, m, opts, tuning=Tuning(scope="shared", on="nope"))
    with pytest.raises(ShiftsimError, match="unknown hyperparameter 'betas' for optimizer"):
        Study("x", scenarios, m, opts, tuning=Tuning(grid={"sgdm": {"betas": [(0.9, 0.9)]}}))
    with pytest.raises(ShiftsimError, match="no default tuning grid for optimizer 'mine'"):
        Study("x", scenarios, m, {"mine": ss.optim.spec("torch.optim:RMSprop")},
              tuning=Tuning())
    with pytest.raises(TypeError, match="tuning must be a shiftsim Tuning"):
        Study("x", scenarios, m, opts, tuning={"grid": "auto"})
    assert not any(tmp_path.iterdir())


def test_default_grids_span_at_least_two_decades_with_five_points():
    for name in ss.optim.names():
        lrs = DEFAULT_LRS[name]
        assert len(lrs) >= 5 and math.log10(max(lrs) / min(lrs)) >= 2, name
        logs = np.diff(np.log10(lrs))
        assert logs.max() - logs.min() < 0.1, name  # log-spaced (1-3-10 steps)


def test_grid_points_and_widening():
    assert points({"lr": [0.1, 0.01]}) == [{"lr": 0.01}, {"lr": 0.1}]
    assert widen([0.001, 0.003, 0.01, 0.03], "high") == [0.1, 0.3]
    assert widen([0.001, 0.003, 0.01, 0.03], "low") == [0.0001, 0.0003]


# -- selection and tolerance by hand -------------------------------------------------------------

def _runs(table):
    rows = []
    for lr, scores in table.items():
        for seed, sc in enumerate(scores):
            rows.append({"group": "g", "model": "m", "optimizer": "o", "seed": seed,
                         "lr": lr, "score": sc, "status": "ok" if not math.isnan(sc) else
                         "diverged"})
    return pd.DataFrame(rows)


def test_selection_by_hand():
    # means: .5 (.01), .8 (.1: seeds .7 .9), .8 (1: seeds .78 .82), diverged (10)
    runs = _runs({0.01: [0.5, 0.5], 0.1: [0.7, 0.9], 1.0: [0.78, 0.82], 10.0: [0.9, np.nan]})
    pts = curve(runs, ["lr"])
    assert pts["mean"].tolist()[:3] == pytest.approx([0.5, 0.8, 0.8])
    assert pts["eligible"].tolist() == [True, True, True, False]
    # a tie on the mean goes to the better worst seed: .78 (lr 1) beats .7 (lr .1)
    assert pts.loc[choose(pts), "lr"] == 1.0
    choices, curves = select(runs, Tuning(grid={"o": {"lr": [0.01, 0.1, 1.0, 10.0]}}),
                             {"o": ["lr"]}, {("g", "m", "o"): {"lr": [0.01, 0.1, 1.0, 10.0]}},
                             {"g": 0.1})
    r = choices.iloc[0]
    assert r.chosen == {"lr": 1.0} and r.value == pytest.approx(0.8) and r.at_edge == ""
    # tolerance, chance .1: best - chance = .7; 95 % of it = .665 -> means ≥ .765 qualify:
    # .1 (.8) and 1 (.8) are contiguous, 10 is not eligible -> 1 decade
    assert r.tolerance == pytest.approx(1.0)
    assert r.tolerance_open == ""  # .1 .. 1 lies inside the grid: not a lower bound
    # each tuning seed's own tolerance around its own best (chance .1, so ≥ .86 qualifies):
    # seed 0 scores .5 .7 .78 .9 (its lr 10 run is ok) -> best 10, alone -> 0 decades;
    # seed 1 scores .5 .9 .82 and a diverged run -> best .1, alone -> 0 decades
    assert r.tolerance_seeds == [[0, 0.0], [1, 0.0]]
    assert curves["chosen"].tolist() == [False, False, True, False]
    # the best at the grid's top is flagged; its good range reaches the top: a lower bound
    runs = _runs({0.01: [0.5, 0.5], 0.1: [0.6, 0.6]})
    choices, _ = select(runs, Tuning(grid={"o": {"lr": [0.01, 0.1]}}), {"o": ["lr"]},
                        {("g", "m", "o"): {"lr": [0.01, 0.1]}}, {})
    assert choices.iloc[0].at_edge == "lr:high"
    assert choices.iloc[0].tolerance_open == "high"
    # a range over the whole grid is open at both ends
    runs = _runs({0.01: [0.9, 0.9], 0.1: [0.91, 0.91]})
    choices, _ = select(runs, Tuning(grid={"o": {"lr": [0.01, 0.1]}}), {"o": ["lr"]},
                        {("g", "m", "o"): {"lr": [0.01, 0.1]}}, {"g": 0.1})
    assert choices.iloc[0].tolerance == pytest.approx(1.0)
    assert choices.iloc[0].tolerance_open == "low,high"


def test_tolerance_by_hand():
    lrs = np.array([1e-3, 1e-2, 1e-1, 1.0, 10.0])
    means = np.array([0.2, 0.86, 0.9, 0.88, 0.3])
    ok = np.ones(5, bool)
    # chance .1: 95 % of (.9 - .1) = .76 above chance -> ≥ .86: 1e-2 .. 1 -> 2 decades
    assert tolerance(lrs, means, ok, 2, 0.1) == pytest.approx(2.0)
    # chance .5: ≥ .5 + .95 · .4 = .88 -> .1 .. 1 -> 1 decade
    assert tolerance(lrs, means, ok, 2, 0.5) == pytest.approx(1.0)
    # a gap breaks the range: 1e-2 qualifies but .1 is not eligible -> only the best
    ok[1] = False
    assert tolerance(lrs, means, ok, 2, 0.1) == pytest.approx(1.0)


# -- a tuned study end to end ------------------------------------------------------------------

def test_stages_seeds_and_the_chosen_setting(tuned_dir, scenarios):
    res = store.load(tuned_dir)
    runs = res.runs
    tune, ev = runs[runs["stage"] == "tune"], runs[runs["stage"] == "eval"]
    assert len(tune) == 2 * 2 * 3 * 2 and len(ev) == 2 * 2 * 3  # scen x opt x grid x seeds
    assert set(tune["seed"]).isdisjoint(set(ev["seed"])) and set(ev["seed"]) == {0, 1, 2}
    t = res.tuning
    assert len(t) == 4 and set(t["scope"]) == {"per_scenario"}
    for (scen, opt), g in tune.groupby(["scenario", "optimizer"]):
        noisy = scen.startswith("other")
        col = "online_acc_true" if noisy else "online_acc"  # the protocol's metric
        means = g.groupby("lr")[col].mean()
        worst = g.groupby("lr")[col].min()
        best = means.max()
        tied = means[means >= best - 1e-12].index
        want = worst.loc[tied].idxmax()
        row = t[(t["scenario"] == scen) & (t["optimizer"] == opt)].iloc[0]
        assert row["lr"] == want and row["value"] == pytest.approx(best)
        assert row["metric"] == col
        # the evaluation runs use exactly that setting
        lrs = ev[(ev["scenario"] == scen) & (ev["optimizer"] == opt)]["lr"].unique()
        assert lrs.tolist() == [want]
        edge = "lr:low" if want == min(GRID[opt]["lr"]) else (
            "lr:high" if want == max(GRID[opt]["lr"]) else "")
        assert row["at_edge"] == edge


def test_rerun_recomputes_nothing_and_resume_redoes_only_missing(tuned_dir, scenarios, tmp_path):
    import shutil

    rep = tuned_study(scenarios).run(tuned_dir, workers=1, progress=False)
    assert rep.done == 0 and rep.skipped == rep.total == 36
    copy = tmp_path / "copy"
    shutil.copytree(tuned_dir, copy)
    res = store.load(copy)
    ev = res.runs[res.runs["stage"] == "eval"]["run_id"].tolist()
    tune = res.runs[res.runs["stage"] == "tune"]["run_id"].tolist()
    for rid in (ev[0], ev[5], tune[3]):  # killed mid-write: no summary.json
        (copy / "runs" / rid / "summary.json").unlink()
    rep = tuned_study(scenarios).run(copy, workers=1, progress=False)
    assert rep.done == 3 and rep.ok
    assert store.load(copy).tuning.equals(store.load(tuned_dir).tuning)


def test_interrupted_tuning_resumes_before_any_evaluation_run(scenarios, tmp_path):
    class Interrupting(InProcess):
        def run(self, specs):
            for i, out in enumerate(super().run(specs)):
                if i == 5:
                    raise KeyboardInterrupt
                yield out

    study = tuned_study(scenarios)
    with pytest.raises(KeyboardInterrupt):
        study.run(tmp_path, progress=False, executor=Interrupting("cpu"))
    res = store.load(tmp_path)
    assert res.counts()["ok"] == 5 and (res.runs["stage"] == "tune").all()
    assert res.tuning.empty  # nothing chosen before every tuning run is in
    rep = tuned_study(scenarios).run(tmp_path, workers=1, progress=False)
    assert rep.ok and rep.done == 36 - 5


def test_shared_scope_on_one_scenario_and_pooled(scenarios, tmp_path):
    study = tuned_study(scenarios, scope="shared", on="permute 100%")
    study.run(tmp_path / "on", workers=1, progress=False)
    res = store.load(tmp_path / "on")
    tune = res.runs[res.runs["stage"] == "tune"]
    assert set(tune["scenario"]) == {"permute 100%"}
    t = res.tuning
    assert len(t) == 4 and set(t["tuned_on"]) == {"permute 100%"}
    for opt, g in t.groupby("optimizer"):  # one setting everywhere
        assert g["lr"].nunique() == 1
        ev = res.runs[(res.runs["stage"] == "eval") & (res.runs["optimizer"] == opt)]
        assert set(ev["lr"]) == set(g["lr"])
    pooled = tuned_study(scenarios, scope="shared", metric="online_acc")
    pooled.run(tmp_path / "pool", workers=1, progress=False)
    res = store.load(tmp_path / "pool")
    tune = res.runs[res.runs["stage"] == "tune"]
    for opt, g in res.tuning.groupby("optimizer"):
        means = tune[tune["optimizer"] == opt].groupby("lr")["online_acc"].mean()
        assert g["lr"].iloc[0] == means.idxmax()  # the pooled mean over both scenarios
        assert set(g["tuned_on"]) == {"all scenarios pooled"}


def test_extend_widens_the_grid_at_the_edge(data, tmp_path):
    sc = {"permute 100%": ss.label_flip_tasks(data, rate=1.0, tasks=2, steps_per_task=60,
                                              batch_size=16)}
    # sgdm at lr 1e-3 and 3e-3 on 120 steps: the best is the largest -> widen upward by a
    # decade at the grid's own points (1e-2, 3e-2), once
    study = Study("ext", sc, ss.models.mlp(hidden=(16,)), {"sgdm": ss.optim.spec("sgdm")},
                  seeds=1, tuning=Tuning(grid={"sgdm": {"lr": [1e-3, 3e-3]}}, seeds=2,
                                         extend=1))
    study.run(tmp_path, workers=1, progress=False)
    res = store.load(tmp_path)
    tune = res.runs[res.runs["stage"] == "tune"]
    assert sorted(set(tune["lr"])) == pytest.approx([1e-3, 3e-3, 1e-2, 3e-2])
    chosen = res.tuning["lr"].iloc[0]
    assert chosen >= 1e-2
    ev = res.runs[res.runs["stage"] == "eval"]
    assert ev["lr"].tolist() == [chosen]


def test_deficit_and_function_metrics(scenarios, tmp_path):
    study = tuned_study(scenarios, metric="deficit", seeds=1)
    study.run(tmp_path / "d", workers=1, progress=False)
    res = store.load(tmp_path / "d")
    assert set(res.tuning["metric"]) == {"deficit"}
    assert (res.tuning["value"] <= 0).all()  # scores are negated deficits

    def loss_free(runs):  # a function of the runs table, higher is better
        return -runs["steps_run"].astype(float) + runs["online_acc"]

    study = tuned_study(scenarios, metric=loss_free, seeds=1)
    study.run(tmp_path / "f", workers=1, progress=False)
    assert set(store.load(tmp_path / "f").tuning["metric"]) == {"loss_free"}


def test_report_of_a_tuned_study(tuned_dir, tmp_path):
    out = report(tuned_dir, tmp_path / "rep")
    tuning = pd.read_csv(out / "tables" / "tuning.csv")
    assert len(tuning) == 4 and {"lr", "metric", "tolerance", "at_edge"} <= set(tuning.columns)
    runs = pd.read_csv(out / "tables" / "runs.csv")
    assert len(runs) == 12  # evaluation runs only, and the table says so
    assert runs["stage"].tolist() == ["eval"] * 12
    cols = list(runs.columns)  # the study's own labels (flip_mode) before the seed and stage
    assert cols[cols.index("model") + 1:cols.index("stage") + 1] == ["flip_mode", "seed", "stage"]
    meta = json.loads((out / REPORT_FILE).read_text())
    assert "sensitivity" in meta["figures"]
    assert (out / "figures" / "sensitivity.png").stat().st_size > 1000
    assert any("tuned setting" in f for f in meta["findings"])
    md = (out / "README.md").read_text()
    assert "- **tuning**: per scenario" in md and "## Tuned settings" in md
    # a tolerance whose good range reaches the end of its grid is shown as a lower bound
    body = json.loads((tuned_dir / "tuning.json").read_text())
    shown = dict(zip(zip(tuning["scenario"], tuning["optimizer"]), tuning["tolerance_open"]))
    assert len(shown) == 4
    for c in body["choices"]:
        assert (shown[(c["group"], c["optimizer"])] if isinstance(
            shown[(c["group"], c["optimizer"])], str) else "") == c["tolerance_open"]
    assert md.count("| ≥ ") == sum(bool(c["tolerance_open"]) for c in body["choices"])
    # one marked open (a copy of the folder): its tolerance is printed as a lower bound
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tuned_dir, copy)
    body["choices"][0]["tolerance_open"] = "high"
    (copy / "tuning.json").write_text(json.dumps(body))
    md = (report(copy, tmp_path / "rep2") / "README.md").read_text()
    assert md.count("| ≥ ") == 1 + sum(bool(c["tolerance_open"]) for c in body["choices"][1:])


def test_cli_runs_a_tuned_study_file(tmp_path):
    from shiftsim.cli import main

    f = tmp_path / "tuned_study.py"
    f.write_text(textwrap.dedent("""
        import shiftsim as ss
        from shiftsim.study import Study, Tuning
        sc = ss.label_flip_tasks(ss.data.digits(), rate=1.0, tasks=2, steps_per_task=30,
                                 batch_size=16)
        study = Study("cli-tuned", [sc], ss.models.mlp(hidden=(8,)),
                      {"sgdm": ss.optim.spec("sgdm")}, seeds=1,
                      tuning=Tuning(grid={"sgdm": {"lr": [0.01, 0.1]}}, seeds=1))
    """))
    assert main(["study", str(f), "--out", str(tmp_path / "res"), "--workers", "1"]) == 0
    res = store.load(tmp_path / "res")
    assert sorted(res.runs["stage"]) == ["eval", "tune", "tune"]
    bad = tmp_path / "bad_study.py"
    bad.write_text(f.read_text().replace("seeds=1,\n", "seeds=[1000000],\n", 1))
    assert main(["study", str(bad), "--out", str(tmp_path / "r2")]) == 2


def test_flip_sweep_study_file_is_tuned():
    from shiftsim.study import study_from_file

    study = study_from_file(os.path.join(ROOT, "scenarios", "flip_sweep.py"))
    assert study.tuning is not None and len(study.seeds) >= 10
    assert set(study.tuning.tuning_seeds()).isdisjoint(study.seeds)


def test_untuned_runs_are_evaluation_runs(data, tmp_path):
    sc = ss.label_flip_tasks(data, rate=1.0, tasks=2, steps_per_task=20)
    Study("plain", [sc], ss.models.mlp(hidden=(8,)), {"sgdm": ss.optim.spec("sgdm")},
          seeds=1).run(tmp_path, workers=1, progress=False)
    res = store.load(tmp_path)
    assert res.runs["stage"].tolist() == ["eval"] and res.tuning.empty
    with pytest.raises(ShiftsimError, match="tuning is done"):
        Study("t", [sc], ss.models.mlp(hidden=(8,)), {"sgdm": ss.optim.spec("sgdm")},
              tuning=Tuning(seeds=1)).evaluation_grid()


def test_auto_metric_scores_the_labels_that_carry_the_concept(data):
    from shiftsim.study.selection import _noise

    # other (noise) and a partial permute below 0.5: the original labels are the concept;
    # a partial permute of 0.5 or more moves every class's majority: score the stream's labels
    rows = []
    for name, flip in (("other", ss.LabelFlip(0.5, "other")), ("p30", ss.LabelFlip(0.3)),
                       ("p80", ss.LabelFlip(0.8)), ("p100", ss.LabelFlip(1.0))):
        sc = ss.Scenario(data, [ss.Phase(5), ss.Phase(5, [flip])])
        rows.append(sc.phase_table().assign(scenario=name))
    noise = _noise(pd.concat(rows, ignore_index=True))
    assert noise == {"other": True, "p30": True, "p80": False, "p100": False}


def test_partial_flip_below_half_is_tuned_on_the_original_labels_end_to_end(data, tmp_path):
    # the store keeps each phase's concept ("original" / "flipped") as text, so the selection
    # sees it: a permute of 0.3 is tuned on online_acc_true, one of 0.8 on the stream's labels
    # (the store once read that column as a number, lost it, and tuned both on the stream)
    scs = flip_rates(data, [0.3, 0.8], mode="permute", tasks=2, steps_per_task=20,
                     batch_size=8)
    Study("partial", scs, ss.models.mlp(hidden=(8,)), {"sgdm": ss.optim.spec("sgdm")},
          seeds=1, tuning=Tuning(grid={"sgdm": {"lr": [0.01, 0.1]}}, seeds=1, extend=False)
          ).run(tmp_path, workers=1, progress=False)
    res = store.load(tmp_path)
    concept = res.run_phases.drop_duplicates(["scenario", "phase"]).set_index(
        ["scenario", "phase"])["concept"]
    assert concept.tolist() == ["original", "original", "original", "flipped"]
    metric = res.tuning.set_index("scenario")["metric"]
    assert metric.to_dict() == {scs_name: m for scs_name, m in zip(
        scs, ["online_acc_true", "online_acc"])}


def test_readme_tuning_example_runs(tmp_path, monkeypatch, capsys):
    import re

    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
                 if "ss.Tuning(" in b)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {"__name__": "__main__"})
    out = capsys.readouterr().out
    assert "{'tune': 24, 'eval': 20}" in out and "tolerance" in out


def _bootstrap_by_loop(X, OK, lrs, chance, n_boot=1000, seed=0):
    """The tolerance bootstrap one resample at a time (the definition the vectorized
    ``_bootstrap_tolerance`` must reproduce exactly)."""
    import warnings

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        idx = rng.integers(0, X.shape[0], X.shape[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            means = np.nanmean(X[idx], axis=0)
        elig = OK[idx].all(axis=0)
        cand = np.flatnonzero(elig & ~np.isnan(means))
        if cand.size == 0:
            out.append(math.nan)
            continue
        best = int(cand[np.argmax(means[cand])])
        out.append(tolerance(lrs, means, elig, best, chance))
    return out


@pytest.mark.parametrize("seeds, chance", [(3, 0.1), (5, None), (10, 0.5)])
def test_vectorized_tolerance_bootstrap_equals_the_loop(seeds, chance):
    from shiftsim.study.tuning import _bootstrap_tolerance

    rng = np.random.default_rng(seeds)
    lrs = np.array([1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3])
    rows = []
    for s in range(seeds):
        for i, lr in enumerate(lrs):
            score = 0.9 - 0.1 * abs(i - 2.5) + rng.normal(0, 0.03)
            bad = rng.random() < 0.15  # diverged or not eligible
            nan = rng.random() < 0.1
            rows.append({"seed": s, "lr": lr, "score": math.nan if nan else score,
                         "ok": not bad})
    g = pd.DataFrame(rows)
    low, high, boot = _bootstrap_tolerance(g, lrs, chance)
    X = g.pivot_table(index="seed", columns="lr", values="score", aggfunc="first"
                      ).reindex(columns=lrs).to_numpy(np.float64)
    OK = g.pivot_table(index="seed", columns="lr", values="ok", aggfunc="all").reindex(
        columns=lrs).fillna(False).astype(bool).to_numpy(bool)
    ref = _bootstrap_by_loop(X, OK, lrs, chance)
    assert len(boot) == len(ref) == 1000
    assert np.array_equal(np.array(boot), np.array(ref), equal_nan=True)
    vals = np.array([v for v in ref if not math.isnan(v)])
    assert (low, high) == (float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975)))


@pytest.mark.parametrize("seed", range(5))
def test_seed_tables_are_pandas_pivot_tables(seed):
    """The bootstrap's seed x learning-rate tables: pandas' pivot_table numbers ("first"
    non-NaN score, "all" ok) on random groups with NaN scores, missing and repeated (seed, lr)
    cells and a learning rate outside the line; a seed without any score keeps its row in
    both tables (pivot_table dropped it from the scores only, misaligning the two)."""
    from shiftsim.study.tuning import _seed_tables

    rng = np.random.default_rng(seed)
    lrs = np.array([1e-3, 1e-2, 0.1, 1.0])
    rows = []
    for s in rng.permutation(6):
        for lr in [*lrs, 3.0]:
            for _ in range(int(rng.integers(0, 3))):  # 0, 1 or 2 runs in this cell
                rows.append({"seed": int(s), "lr": float(lr), "ok": bool(rng.random() < 0.8),
                             "score": math.nan if rng.random() < 0.2 else float(rng.random())})
    g = pd.DataFrame(rows)
    X, OK = _seed_tables(g, lrs)
    want_x = g.pivot_table(index="seed", columns="lr", values="score", aggfunc="first")
    want_ok = g.pivot_table(index="seed", columns="lr", values="ok", aggfunc="all")
    seeds = np.unique(g["seed"])
    want_x = want_x.reindex(index=seeds, columns=lrs).to_numpy(np.float64)
    want_ok = want_ok.reindex(index=seeds, columns=lrs).fillna(False).astype(bool).to_numpy()
    assert np.array_equal(X, want_x, equal_nan=True) and np.array_equal(OK, want_ok)
    lost = g.assign(score=np.where(g["seed"] == seeds[0], math.nan, g["score"]))
    X2, OK2 = _seed_tables(lost, lrs)
    assert X2.shape == OK2.shape == (len(seeds), len(lrs)) and np.isnan(X2[0]).all()
    assert np.array_equal(OK2, OK)


def _curve_by_groups(rows, hp_names):
    """``curve`` as it was written first, a frame per grid point (the reference)."""
    from shiftsim import metrics

    out = []
    for key, g in rows.groupby(list(hp_names), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        ok = g["status"].eq("ok") & g["score"].notna()
        mean, low, high = metrics.mean_interval(g.loc[ok, "score"])
        out.append({**dict(zip(hp_names, key)), "mean": mean, "low": low, "high": high,
                    "worst": float(g.loc[ok, "score"].min()) if ok.any() else math.nan,
                    "n": int(ok.sum()), "runs": int(len(g)), "eligible": bool(ok.all())})
    return pd.DataFrame(out)


@pytest.mark.parametrize("seed", range(4))
def test_curve_is_the_per_point_groupby(seed):
    """``curve`` from arrays equals the per-point groupby it replaced, exactly: one and two
    tuned hyperparameters, a NaN grid value, failed and diverged runs, NaN scores, a point
    with no usable run, rows in random order."""
    from shiftsim.study.tuning import curve

    rng = np.random.default_rng(seed)
    rows = pd.DataFrame({
        "lr": rng.choice([1e-3, 1e-2, 0.1, math.nan], size=60),
        "momentum": rng.choice([0.0, 0.9], size=60),
        "seed": rng.integers(0, 5, size=60),
        "status": rng.choice(["ok", "ok", "ok", "diverged", "failed"], size=60),
        "score": np.where(rng.random(60) < 0.15, math.nan, rng.random(60)),
    })
    rows.loc[rows["lr"] == 0.1, "status"] = "failed"  # a point with no usable run
    for names in (["lr"], ["lr", "momentum"], ["momentum", "lr"]):
        got, want = curve(rows, names), _curve_by_groups(rows, names)
        pd.testing.assert_frame_equal(got, want, check_exact=True)
    empty = rows.iloc[:0]
    assert len(curve(empty, ["lr"])) == len(_curve_by_groups(empty, ["lr"])) == 0
