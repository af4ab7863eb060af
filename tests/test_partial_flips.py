"""A partial permute / pair flip below 0.5 is noise around the original concept: tuning
(protocol.md), recovery and reports all judge it on the original labels, as label noise; at 0.5
and above it is judged on the stream's labels (the flipped mapping is the concept). Reference
values are computed here from the stored traces (float64)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from test_report import close, ref_common, ref_median, run_level

import shiftsim as ss
from shiftsim import metrics, store
from shiftsim.report import report
from shiftsim.study import Study, flip_rates


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("partial")
    scen = flip_rates(ss.data.digits(), [0.3, 0.7], mode="permute", tasks=3, steps_per_task=30,
                      batch_size=16)
    study = Study("partial", scen, ss.models.mlp(hidden=(16,)),
                  {"sgdm": ss.optim.spec("sgdm", lr=0.05), "adam": ss.optim.spec("adam", lr=3e-3)},
                  seeds=5)
    study.run(out, workers=1, progress=False)
    return out


def test_the_rule():
    rule = metrics.judged_on_original
    assert rule("noise", "original") and rule("concept + noise", "original")
    assert not rule("concept + noise", "flipped") and not rule("concept", "flipped")
    assert not rule("none", "original") and not rule("concept + noise")  # unknown concept


def test_recovery_on_the_original_labels_below_one_half(study_dir):
    res = store.load(study_dir)
    ph = res.phases
    low = ph[(ph["scenario"] == "permute 30%") & ph["shifted"]]
    high = ph[(ph["scenario"] == "permute 70%") & ph["shifted"]]
    assert (low["concept"] == "original").all() and (high["concept"] == "flipped").all()
    assert low["reference_true"].notna().all() and low["target_true"].notna().all()
    assert high["reference_true"].isna().all() and high["recovery_steps_true"].isna().all()


def test_the_report_judges_below_one_half_on_the_original_labels(study_dir, tmp_path):
    res = store.load(study_dir)
    out = report(study_dir, tmp_path / "rep")
    summary = pd.read_csv(out / "tables" / "summary.csv")
    comp = pd.read_csv(out / "tables" / "comparison.csv")
    low, high = "permute 30%", "permute 70%"
    assert summary.set_index(["scenario", "optimizer"])["label_noise"].to_dict() == {
        (low, "sgdm"): True, (low, "adam"): True, (high, "sgdm"): False, (high, "adam"): False}
    assert {"online_acc_true", "recovery_steps_true", "deficit_true"} <= set(
        comp.loc[comp["scenario"] == low, "metric"])
    assert "online_acc" not in set(comp.loc[comp["scenario"] == low, "metric"])
    assert {"online_acc", "recovery_steps", "deficit"} <= set(
        comp.loc[comp["scenario"] == high, "metric"])
    assert "online_acc_true" not in set(comp.loc[comp["scenario"] == high, "metric"])
    # the clean-label recovery against the traces: target from chance_true, reference capped 1
    refs = ref_common(res, low, "correct_true", cap=1.0)
    runs = res.runs[res.runs["scenario"] == low]
    for opt, g in runs.groupby("optimizer"):
        recov = []
        for rid in g["run_id"]:
            plan = res.run_phases[res.run_phases["run_id"] == rid]
            recov.append(run_level(res, rid, plan, refs, "correct_true", "chance_true")[0])
        row = summary[(summary["scenario"] == low) & (summary["optimizer"] == opt)].iloc[0]
        assert close(row["recovery_steps_true"], ref_median(recov)), (opt, recov)
        assert row["censored_true"] == sum(math.isinf(x) for x in recov)
    text = (out / "README.md").read_text()
    assert "partial permute or pair flips below 50 %" in text


def test_runs_stored_without_the_clean_label_plan_say_so(study_dir, tmp_path):
    """Runs stored before partial flips below 0.5 were judged on the original labels lack
    those phases' clean-label chance and plateau: their clean-label recovery is undefined (not
    'not hurt', not timed against a reference of 1), and the report says why."""
    import json
    import shutil

    from shiftsim.report.findings import findings
    from shiftsim.report.tables import build
    from shiftsim.report.view import view

    old = tmp_path / "old"
    shutil.copytree(study_dir, old)
    for f in old.glob("runs/*/summary.json"):
        body = json.loads(f.read_text())
        for ph in body["phases"]:
            if ph.get("label_kind") == "concept + noise" and ph.get("concept") == "original":
                ph.update({k: None for k in ph if k.endswith("_true")})
        f.write_text(json.dumps(body))
    v = build(view(store.load(old)))
    assert v.clean_missing == ["permute 30%"]
    low = v.summary[v.summary["scenario"] == "permute 30%"]
    assert low["recovery_steps_true"].isna().all() and (low["shifts_true"] == 0).all()
    assert low["deficit_true"].isna().all()
    assert any("Clean-label recovery undefined in permute 30%" in t for t in findings(v))
    comp = v.comparison[(v.comparison["scenario"] == "permute 30%")
                        & (v.comparison["metric"] == "recovery_steps_true")]
    assert comp["verdict"].tolist() == ["not judged (no paired values)"]


def test_a_missing_clean_label_plateau_gives_no_reference_not_one():
    rows = pd.DataFrame({"scenario": "s", "optimizer": ["a", "b"], "phase": 1,
                         "plateau": [0.7, 0.8], "plateau_true": [np.nan, np.nan],
                         "ceiling": 0.9})
    ref = metrics.common_reference(rows)
    assert ref["reference"].tolist() == [0.8] and math.isnan(ref["reference_true"].iloc[0])
    rows["plateau_true"] = [0.95, 1.2]
    assert metrics.common_reference(rows)["reference_true"].tolist() == [1.0]


def test_tuning_on_the_deficit_uses_the_original_labels_below_one_half(tmp_path):
    from shiftsim.study import Tuning

    scen = flip_rates(ss.data.digits(), [0.3], mode="permute", tasks=3, steps_per_task=20,
                      batch_size=16)
    study = Study("partial-deficit", scen, ss.models.mlp(hidden=(8,)),
                  {"sgdm": ss.optim.spec("sgdm")}, seeds=1,
                  tuning=Tuning(grid={"sgdm": {"lr": [0.01, 0.1]}}, seeds=2, metric="deficit"))
    study.run(tmp_path / "t", workers=1, progress=False)
    res = store.load(tmp_path / "t")
    tune = res.stage_phases("tune")
    true = metrics.run_recovery(tune, suffix="_true").set_index("run_id")["deficit_true"]
    stream = metrics.run_recovery(tune).set_index("run_id")["deficit"]
    assert not np.allclose(true.sort_index(), stream.sort_index())  # they differ here
    runs = res.runs[res.runs["stage"] == "tune"]
    curve = res.tuning_curves
    for lr in (0.01, 0.1):
        ids = runs.loc[np.isclose(runs["lr"], lr), "run_id"]
        got = curve.loc[np.isclose(curve["lr"], lr), "mean"].iloc[0]
        assert close(got, -true[ids].mean(), 1e-12), (lr, got)


def test_an_unknown_chance_level_leaves_recovery_undefined():
    """No chance level (a plan without it): no target, so no recovery time, not 'not hurt'
    (0 steps), even with a reference; the deficit needs only the reference."""
    tr = pd.DataFrame({"step": range(10), "phase": [0] * 3 + [1] * 7, "n": 10,
                       "correct": [9, 9, 9, 2, 2, 2, 9, 9, 9, 9]})
    known = pd.DataFrame({"phase": [0, 1], "ceiling": 1.0, "chance": 0.1})
    got = metrics.recovery(tr, known, window=1, onset=2, persistence=2).iloc[0]
    assert got["recovery_steps"] == 3.0 and got["dipped"]
    unknown = known.assign(chance=np.nan)
    got = metrics.recovery(tr, unknown, window=1, onset=2, persistence=2).iloc[0]
    assert math.isnan(got["target"]) and math.isnan(got["recovery_steps"])
    assert not got["dipped"] and not got["censored"] and got["deficit"] > 0


def test_a_partial_flip_beside_pure_noise_keeps_the_scenario_ranked(tmp_path):
    """'No learnable signal' needs every phase judged on the original labels to lack it: a
    partial permute below 0.5 has one, even beside uniform labels at 100 %."""
    from shiftsim.report.view import view

    d = ss.data.digits()
    both = ss.Scenario(d, [ss.Phase(15), ss.Phase(15, [ss.LabelFlip(0.3)]),
                           ss.Phase(15, [ss.LabelFlip(1.0, "uniform")])], name="both",
                       batch_size=16)
    pure = ss.label_flip_tasks(d, 1.0, mode="uniform", tasks=2, steps_per_task=15,
                               batch_size=16, name="pure")
    Study("signal", {"both": both, "pure": pure}, ss.models.linear(), {"sgdm": "sgdm"},
          seeds=1).run(tmp_path / "s", workers=1, progress=False)
    v = view(store.load(tmp_path / "s"))
    assert v.no_signal == {"both": False, "pure": True}
