"""Shifts of several kinds in one run (docs/metrics.md, "Kinds of shift"): a run's shifts of one
kind are reduced to their median, kinds separately; reports give such a scenario's recovery,
drop and deficit per kind and compare them per kind; tuning on the deficit takes the mean of a
run's kinds. Reference values are computed here from the stored traces (float64)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from test_report import close, ref_common, ref_interval, ref_median, ref_recovery

import shiftsim as ss
from shiftsim import metrics, store
from shiftsim.report import report
from shiftsim.report.view import view
from shiftsim.study import Study, Tuning

ROT, BOTH, FLIP = "Rotate", "LabelFlip(permute) + Rotate", "LabelFlip(permute)"


@pytest.fixture(scope="module")
def digits():
    return ss.data.digits()


def recurring(digits, steps=30):
    return ss.recurring(digits, [[], [ss.Rotate(45)], [ss.LabelFlip(1.0)]], cycles=2,
                        steps_per_phase=steps, batch_size=16, name="recurring")


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory, digits):
    """A recurring scenario (rotation, then a full permutation, cycled twice: three kinds of
    shift) and a single-kind one (rotate and back), 2 optimizers x 5 seeds."""
    out = tmp_path_factory.mktemp("kinds")
    scen = {"recurring": recurring(digits),
            "rotate": ss.covariate_drift(digits, [ss.Rotate(45), ss.Rotate(0)],
                                         steps_per_phase=30, batch_size=16, name="rotate")}
    study = Study("kinds", scen, ss.models.mlp(hidden=(16,)),
                  {"sgdm": ss.optim.spec("sgdm", lr=0.05), "adam": ss.optim.spec("adam", lr=3e-3)},
                  seeds=5)
    study.run(out, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def rep(study_dir, tmp_path_factory):
    return report(study_dir, tmp_path_factory.mktemp("rep") / "report")


def test_a_phase_names_what_changed_at_its_shift(digits):
    sc = recurring(digits, steps=10)
    assert [sc.shift_kind(k) for k in range(6)] == ["", ROT, BOTH, FLIP, ROT, BOTH]
    assert sc.phase_table()["shift_kind"].tolist() == ["", ROT, BOTH, FLIP, ROT, BOTH]
    # a shift away and the shift back are one kind; a fresh draw of the same kind too
    drift = ss.covariate_drift(digits, [ss.Rotate(30), ss.Rotate(0)], 10)
    assert [drift.shift_kind(k) for k in range(3)] == ["", ROT, ROT]
    flips = ss.label_flip_tasks(digits, 0.4, mode="pair", tasks=3, steps_per_task=10)
    assert [flips.shift_kind(k) for k in range(3)] == ["", "LabelFlip(pair)", "LabelFlip(pair)"]
    # no shift, no kind: a flip rate of 0, a repeat of the regime just left
    assert ss.label_flip_tasks(digits, 0.0, tasks=2, steps_per_task=10).shift_kind(1) == ""
    same = ss.covariate_drift(digits, [ss.Rotate(30), ss.Rotate(30)], 10)
    assert same.shift_kind(2) == ""
    # a shift that only adds a second copy of a shift in force is still of that kind
    twice = ss.covariate_drift(digits, [[ss.Rotate(30)], [ss.Rotate(30), ss.Rotate(30)]], 10)
    assert twice.has_shift(2) and twice.shift_kind(2) == ROT


def test_run_recovery_reduces_each_kind_by_its_own_median():
    rows = pd.DataFrame({
        "run_id": "r", "phase": [1, 2, 3, 4, 5], "shifted": True,
        "shift_kind": ["a", "b", "a", "a", "b"],
        "recovery_steps": [4.0, 50.0, 10.0, np.nan, 70.0],
        "recovery_samples": [40.0, 500.0, 100.0, np.nan, 700.0],
        "censored": [False, False, False, True, False],
        "drop": [0.1, 0.5, 0.3, 0.2, 0.7], "deficit": [0.01, 0.2, 0.03, 0.05, 0.4]})
    out = metrics.run_recovery(rows).set_index("shift_kind")
    # kind a: 4, 10, +inf -> median 10; drops 0.1, 0.3, 0.2 -> 0.2; deficits -> 0.03
    assert out.loc["a", "recovery_steps"] == 10.0 and out.loc["a", "recovery_samples"] == 100.0
    assert (out.loc["a", "shifts"], out.loc["a", "censored_shifts"]) == (3, 1)
    assert out.loc["a", "drop"] == pytest.approx(0.2)
    assert out.loc["a", "deficit"] == pytest.approx(0.03)
    # kind b: 50, 70 -> 60
    assert out.loc["b", "recovery_steps"] == 60.0 and not out.loc["b", "censored"]
    assert out.loc["b", "drop"] == pytest.approx(0.6)
    # without the column every shift is one kind: 4, 10, 50, 70, +inf -> 50
    one = metrics.run_recovery(rows.drop(columns="shift_kind"))
    assert one["recovery_steps"].tolist() == [50.0] and "shift_kind" not in one


def test_the_store_keeps_each_phase_kind(study_dir):
    ph = store.load(study_dir).phases
    rec = ph[ph["scenario"] == "recurring"].drop_duplicates("phase").sort_values("phase")
    assert rec["shift_kind"].tolist() == ["", ROT, BOTH, FLIP, ROT, BOTH]
    rot = ph[ph["scenario"] == "rotate"].drop_duplicates("phase").sort_values("phase")
    assert rot["shift_kind"].tolist() == ["", ROT, ROT]


def _per_kind(res, scenario):
    """{(optimizer, kind): [per seed (median recovery with inf, median drop, median deficit)]}
    from the traces, against the common reference."""
    refs = ref_common(res, scenario)
    runs = res.runs[res.runs["scenario"] == scenario]
    out: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for rid, opt in zip(runs["run_id"], runs["optimizer"]):
        plan = res.run_phases[res.run_phases["run_id"] == rid]
        kinds = dict(zip(plan["phase"], plan["shift_kind"]))
        rr = ref_recovery(res.trace(rid), plan, refs)
        for kind in dict.fromkeys(kinds[k] for k in rr):
            vals = [rr[k] for k in rr if kinds[k] == kind]
            out.setdefault((opt, kind), []).append(tuple(
                float(np.median([v[i] for v in vals])) for i in (0, 2, 3)))
    return out


def test_report_gives_recovery_drop_and_deficit_per_kind(study_dir, rep):
    res = store.load(study_dir)
    kinds = pd.read_csv(rep / "tables" / "kinds.csv")
    assert set(kinds["scenario"]) == {"recurring"}  # the single-kind scenario is not split
    ref = _per_kind(res, "recurring")
    assert set(ref) == {(o, k) for o in ("sgdm", "adam") for k in (ROT, BOTH, FLIP)}
    for (opt, kind), seeds in ref.items():
        row = kinds[(kinds["optimizer"] == opt) & (kinds["shift_kind"] == kind)].iloc[0]
        rec = [s[0] for s in seeds]
        assert close(row["recovery_steps"], ref_median(rec)), (opt, kind, rec)
        assert row["censored"] == sum(math.isinf(x) for x in rec) and row["shifts"] == 5
        for i, col in ((1, "drop"), (2, "deficit")):
            m, lo, hi = ref_interval([s[i] for s in seeds])
            assert close(row[col], m) and close(row[f"{col}_low"], lo) and \
                close(row[f"{col}_high"], hi), (opt, kind, col)
    # the summary leaves a mixed scenario's recovery to the kinds table, not one median
    summary = pd.read_csv(rep / "tables" / "summary.csv")
    mixed = summary[summary["scenario"] == "recurring"]
    assert (mixed["shift_kinds"] == 3).all() and mixed["recovery_steps"].isna().all()
    assert (mixed["shifts"] == 0).all() and mixed["deficit"].isna().all()
    single = summary[summary["scenario"] == "rotate"]
    assert (single["shift_kinds"] == 1).all() and (single["shifts"] == 5).all()
    text = (rep / "README.md").read_text()
    assert "Recovery by kind of shift" in text
    assert "| per kind | per kind | per kind |" in text


def test_comparisons_are_per_kind_in_the_holm_family(study_dir, rep):
    res = store.load(study_dir)
    comp = pd.read_csv(rep / "tables" / "comparison.csv", keep_default_na=False,
                       na_values=[""])
    mixed = comp[comp["scenario"] == "recurring"]
    rec = mixed[mixed["metric"] == "recovery_steps"]
    assert sorted(rec["shift_kind"]) == sorted([ROT, BOTH, FLIP])
    assert set(rec["metric_label"]) == {f"recovery time (steps) after {k}"
                                        for k in (ROT, BOTH, FLIP)}
    assert sorted(mixed.loc[mixed["metric"] == "deficit", "shift_kind"]) == sorted(
        [ROT, BOTH, FLIP])
    # accuracies once per scenario, with no kind
    acc = mixed[mixed["metric"] == "online_acc"]
    assert len(acc) == 1 and acc["shift_kind"].isna().all()
    # the per-kind deficit difference: paired by seed from the traces
    ref = _per_kind(res, "recurring")
    for kind in (ROT, FLIP):
        d = [a[2] - b[2] for a, b in zip(ref[("adam", kind)], ref[("sgdm", kind)])]
        row = mixed[(mixed["metric"] == "deficit") & (mixed["shift_kind"] == kind)].iloc[0]
        m, lo, hi = ref_interval(d)
        assert close(row["difference"], m) and close(row["low"], lo), kind
    judged = comp[comp["judged"].astype(bool)]
    assert len(judged) == comp["p"].notna().sum()  # every judged test in one family


def test_a_store_without_kinds_gets_them_from_the_scenario(study_dir):
    res = store.load(study_dir)
    full = view(res)
    res._phases = res.phases.drop(columns="shift_kind")  # as a store written before the column
    old = view(res)
    assert old.kinds == full.kinds == {"recurring": [ROT, BOTH, FLIP], "rotate": [ROT]}
    assert old.mixed("recurring") and not old.mixed("rotate")


def _deficit_tuned(scenario, out):
    """A study of one scenario tuned on the recovery deficit (sgdm, two learning rates, two
    tuning seeds): its store, its tuning runs' phases and a function lr -> the tuning curve's
    mean and the run ids at that rate."""
    study = Study(f"{scenario.name}-tuned", {scenario.name: scenario},
                  ss.models.mlp(hidden=(8,)), {"sgdm": ss.optim.spec("sgdm")}, seeds=1,
                  tuning=Tuning(grid={"sgdm": {"lr": [0.01, 0.1]}}, seeds=2, metric="deficit"))
    study.run(out, workers=1, progress=False)
    res = store.load(out)
    runs, curve = res.runs[res.runs["stage"] == "tune"], res.tuning_curves

    def at(lr):
        return (curve.loc[np.isclose(curve["lr"], lr), "mean"].iloc[0],
                runs.loc[np.isclose(runs["lr"], lr), "run_id"])

    return res.stage_phases("tune"), at


def test_tuning_on_the_deficit_takes_the_mean_of_a_runs_kinds(digits, tmp_path):
    tune, at = _deficit_tuned(recurring(digits, steps=20), tmp_path / "t")
    per_kind = metrics.run_recovery(tune)
    assert per_kind.groupby("run_id").size().eq(3).all()
    score = per_kind.groupby("run_id")["deficit"].mean()
    for lr in (0.01, 0.1):
        got, ids = at(lr)
        want = -score[ids].mean()  # the selection maximises the negated deficit
        assert close(got, want, 1e-12), (lr, got, want)


def test_runs_stored_before_the_column_get_their_kinds(study_dir):
    """A study extended after the column arrived: its older runs lack shift_kind; they take
    the kinds of the scenario's other runs (or of the scenario itself), no seed is lost."""
    res = store.load(study_dir)
    full = view(res)
    ph = res.phases.copy()
    seed0 = ph["run_id"].isin(res.runs.loc[res.runs["seed"] == 0, "run_id"])
    ph.loc[seed0, "shift_kind"] = np.nan
    res._phases = ph
    part = view(res)
    assert part.kinds == full.kinds
    assert part.phases["shift_kind"].tolist() == full.phases["shift_kind"].tolist()
    res._phases = ph.assign(shift_kind=np.nan)  # no run has it: from the scenario
    assert view(res).phases["shift_kind"].tolist() == full.phases["shift_kind"].tolist()


NOISY = "LabelFlip(other) + Rotate"


def noisy_recurring(digits, steps=30):
    """Rotation, then 30 % label noise: the rotation kinds are judged on the stream's labels,
    the noise kind on the original ones."""
    return ss.recurring(digits, [[], [ss.Rotate(45)], [ss.LabelFlip(0.3, "other")]], cycles=2,
                        steps_per_phase=steps, batch_size=16, name="noisy")


def test_each_kind_is_judged_on_its_own_labels(digits, tmp_path):
    study = Study("noisy-kinds", {"noisy": noisy_recurring(digits)}, ss.models.mlp(hidden=(16,)),
                  {"sgdm": ss.optim.spec("sgdm", lr=0.05), "adam": ss.optim.spec("adam", lr=3e-3)},
                  seeds=5)
    study.run(tmp_path / "s", workers=1, progress=False)
    out = report(tmp_path / "s", tmp_path / "r")
    kinds = pd.read_csv(out / "tables" / "kinds.csv")
    assert set(kinds["shift_kind"]) == {ROT, NOISY, "LabelFlip(other)"}
    noisy = kinds.set_index(["shift_kind", "optimizer"])["label_noise"]
    assert noisy[NOISY].all() and not noisy[ROT].any() and not noisy["LabelFlip(other)"].any()
    # the rotation kind has its stream values; the noise kind its clean-label ones
    rot = kinds[kinds["shift_kind"] == ROT]
    assert (rot["shifts"] == 5).all() and (rot["shifts_true"] == 0).all()
    assert (kinds.loc[kinds["shift_kind"] == NOISY, "shifts_true"] == 5).all()
    comp = pd.read_csv(out / "tables" / "comparison.csv", keep_default_na=False,
                       na_values=[""])
    rec = comp[comp["metric"].str.startswith("recovery_steps")].set_index("shift_kind")
    assert rec.loc[ROT, "metric"] == "recovery_steps" and rec.loc[ROT, "n"] == 5
    assert rec.loc[NOISY, "metric"] == "recovery_steps_true" and rec.loc[NOISY, "n"] == 5
    dfc = comp[comp["metric"].str.startswith("deficit")].set_index("shift_kind")
    assert dfc.loc[ROT, "metric"] == "deficit" and dfc.loc[NOISY, "metric"] == "deficit_true"


def test_tuning_on_the_deficit_takes_each_kinds_own_labels(digits, tmp_path):
    tune, at = _deficit_tuned(noisy_recurring(digits, steps=20), tmp_path / "t")
    stream = metrics.run_recovery(tune).set_index(["run_id", "shift_kind"])["deficit"]
    true = metrics.run_recovery(tune, suffix="_true").set_index(
        ["run_id", "shift_kind"])["deficit_true"]
    for lr in (0.01, 0.1):
        got, ids = at(lr)
        scores = [np.mean([true[(rid, NOISY)], stream[(rid, ROT)],
                           stream[(rid, "LabelFlip(other)")]]) for rid in ids]
        assert close(got, -np.mean(scores), 1e-12), (lr, got, scores)
