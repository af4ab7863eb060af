"""The claims index (scenarios/claims.py): paired tests per setting, one Holm family, verdicts
in the claim's direction, the tolerance claims tested over the tuning seeds in the same family."""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import shiftsim as ss
from shiftsim import store
from shiftsim.report.view import view
from shiftsim.study import Study, Tuning, flip_rates

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _claims():
    spec = importlib.util.spec_from_file_location(
        "claims", os.path.join(ROOT, "scenarios", "claims.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["claims"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("claims")
    study = Study("claims-test", flip_rates(ss.data.digits(), [1.0], tasks=2, steps_per_task=40),
                  ss.models.mlp(hidden=(16,)),
                  {"sgdm": ss.optim.spec("sgdm"), "tam": ss.optim.spec("tam")}, seeds=5,
                  tuning=Tuning(grid={"sgdm": {"lr": [0.01, 0.1]}, "tam": {"lr": [0.03, 0.3]}},
                                seeds=3))
    study.run(out, workers=1, progress=False)
    return out


def test_paired_tests_per_setting_and_one_holm_family(results):
    c = _claims()
    claim = c.Claim("t", "TAM beats SGDM", "paper", "claims-test", "tam", "sgdm", "online_acc")
    v = view(store.load(results))
    rows = c.tests(claim, v)
    assert len(rows) == 1 and rows[0]["n"] == 5
    runs = store.load(results).runs
    ev = runs[runs["stage"] == "eval"].set_index(["optimizer", "seed"])["online_acc"]
    d = np.array([ev[("tam", s)] - ev[("sgdm", s)] for s in range(5)])
    assert rows[0]["difference"] == pytest.approx(d.mean())
    assert rows[0]["p"] == pytest.approx(stats.ttest_1samp(d, 0).pvalue)
    # a family of three: Holm multiplies the smallest p by 3
    fam = pd.DataFrame([{**rows[0], "claim": k} for k in "abc"])
    fam.loc[1, "p"], fam.loc[2, "p"] = 0.5, 0.9
    out = c.verdicts(fam)
    assert out.loc[0, "p_holm"] == pytest.approx(min(1.0, 3 * rows[0]["p"]))
    want = "inconclusive" if out.loc[0, "p_holm"] > 0.05 else (
        "supported" if d.mean() > 0 else "contradicted")
    assert out.loc[0, "verdict"] == want and out.loc[1, "verdict"] == "inconclusive"


def test_overall_verdicts():
    c = _claims()
    v = pd.Series
    assert c._overall(v({"supported": 3, "inconclusive": 1}), 10) == "supported"
    assert c._overall(v({"supported": 1, "inconclusive": 5}), 10) == \
        "supported in some settings"
    assert c._overall(v({"supported": 1, "contradicted": 1}), 10) == "mixed"
    assert c._overall(v({"contradicted": 1, "inconclusive": 2}), 10) == "not supported"
    assert c._overall(v({"inconclusive": 4}), 10) == "inconclusive at 10 seeds"
    # a setting where the recovery comparison is no test does not count: 3 of 5, not 3 of 6
    assert c._overall(v({"supported": 3, "inconclusive": 2, "not applicable": 1}), 20) == \
        "supported"


def test_a_recovery_comparison_without_a_test_is_not_applicable():
    c = _claims()
    rows = pd.DataFrame({"difference": [0.0, -5.0], "low": [0.0, -9.0], "high": [0.0, -1.0],
                         "n": [20, 20], "wins": [0, 15], "losses": [0, 2], "p": [np.nan, 1e-4],
                         "higher_is_better": [False, False],
                         "untestable": ["the shift hurt neither side on any seed", ""]})
    out = c.verdicts(rows)
    assert out["verdict"].tolist() == ["not applicable", "supported"]
    assert out.loc[0, "note"] == "the shift hurt neither side on any seed"
    assert out.loc[1, "p_holm"] == pytest.approx(1e-4)  # alone in the family


def test_tolerance_claims_are_tested_over_the_tuning_seeds_in_the_holm_family(results):
    import json

    from shiftsim.metrics import holm, paired_p_value

    c = _claims()
    claim = c.Claim("m", "wider", "paper", "claims-test", "tam", "sgdm", "tolerance",
                    "tolerance")
    rows = c.tolerance_tests(claim, results)
    assert len(rows) == 1
    r = rows[0]
    assert r["low"] <= r["difference"] <= r["high"] or np.isnan(r["low"])
    # the test: each tuning seed's own tolerance, paired by seed (from tuning.json)
    body = json.loads((results / "tuning.json").read_text())
    own = {c_["optimizer"]: dict(map(tuple, c_["tolerance_seeds"])) for c_ in body["choices"]}
    d = np.array([own["tam"][s] - own["sgdm"][s] for s in own["tam"]])
    assert r["n"] == d.size and (r["wins"], r["losses"]) == ((d > 0).sum(), (d < 0).sum())
    assert r["p"] == paired_p_value(d, "wilcoxon")
    # and it is judged with the other claims' tests, Holm-adjusted together
    v = view(store.load(results))
    acc = c.tests(c.Claim("t", "TAM beats SGDM", "paper", "claims-test", "tam", "sgdm",
                          "online_acc"), v)
    out = c.verdicts(pd.DataFrame(acc + rows))
    tol = out[out["claim"] == "m"].iloc[0]
    assert tol["p_holm"] == pytest.approx(holm([acc[0]["p"], r["p"]])[1])
    wider = r["difference"] > 0 or (r["difference"] == 0 and r["wins"] > r["losses"])
    # a lower bound on the side that would lose (the baseline's for "wider") leaves it open
    bounded = r["bound_b"] if wider else r["bound_a"]
    assert tol["verdict"] == ("inconclusive" if tol["p_holm"] > 0.05 or bounded else
                              "supported" if wider else "contradicted")
    # the bound rule by hand: a significant "wider" against a baseline whose range reaches its
    # grid's end is inconclusive, with the reason; against a closed one it is supported
    fake = pd.DataFrame([{**r, "p": 1e-6, "difference": 1.0, "bound_a": False,
                          "bound_b": b} for b in (True, False)])
    got = c.verdicts(fake)
    assert got["verdict"].tolist() == ["inconclusive", "supported"]
    # the bounds as numpy booleans (a frame of tolerance rows only) and a row without a
    # p-value (fewer than two tuning seeds): no test, inconclusive
    fake = pd.DataFrame([{**r, "p": p, "difference": 1.0, "bound_a": False, "bound_b": True}
                         for p in (1e-6, np.nan)]).astype({"bound_a": bool, "bound_b": bool})
    assert c.verdicts(fake)["verdict"].tolist() == ["inconclusive", "inconclusive"]
    assert "lower bound" in got.loc[0, "note"]


def test_the_index_is_written(results, tmp_path):
    c = _claims()
    claim = c.Claim("t", "TAM beats SGDM", "paper", "claims-test", "tam", "sgdm", "online_acc")
    v = view(store.load(results))
    df = c.verdicts(pd.DataFrame(c.tests(claim, v)))
    c.CLAIMS = [claim]
    c.write(df, tmp_path / "README.md", 5)
    text = (tmp_path / "README.md").read_text()
    assert "| TAM beats SGDM | paper | 1 (online accuracy) |" in text
    assert "[claims-test](claims-test/README.md)" in text and "## Every setting" in text
    # the per-setting intervals are said to be unadjusted, the verdicts Holm-adjusted
    assert "not widened for the number of tests" in text and "Holm-adjusted" in text
