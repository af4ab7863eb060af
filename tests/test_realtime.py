"""The real-time stream: training schedules from declared costs, the loop that scores without
training, fleets of one cost, run ids, studies with both views, reports."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import shiftsim as ss
from shiftsim import store
from shiftsim.errors import ShiftsimError
from shiftsim.learner import TorchLearner
from shiftsim.realtime import relative_costs, train_schedule
from shiftsim.study import RunSpec, Study, flip_rates, views


@pytest.fixture(scope="module")
def data():
    return ss.data.digits()


@pytest.fixture(scope="module")
def sc(data):
    return ss.label_flip_tasks(data, rate=1.0, tasks=2, steps_per_task=60)


def test_schedules_by_hand():
    assert train_schedule(1, 4).tolist() == [True] * 4
    assert train_schedule(3, 7).tolist() == [True, False, False, True, False, False, True]
    # 4/3: credit 1 -> train (0) +.75 -> .75 skip +.75 -> 1.5 train (.5) +.75 -> 1.25 train
    #   (.25) +.75 -> 1.0 train (0) ...: 3 of every 4
    assert train_schedule(4 / 3, 8).tolist() == [True, False, True, True, True, False, True,
                                                 True]
    assert train_schedule(2.5, 1000).sum() == 400
    assert relative_costs([2.0, 4.0]) == [1.0, 2.0]
    with pytest.raises(ShiftsimError, match=r"cost must be in \[1, inf\], got 0.5"):
        train_schedule(0.5, 3)
    with pytest.raises(ShiftsimError, match=r"cost must be in \[1, inf\], got 0.9"):
        ss.optim.spec("tam", cost=0.9)
    with pytest.raises(TypeError, match="realtime must be True or False"):
        ss.Scenario(ss.data.digits(), [ss.Phase(5)], realtime="yes")


def test_declared_costs():
    from shiftsim.optim.registry import COSTS

    assert set(COSTS) == set(ss.optim.names()) and COSTS["sgd"] == 1.0
    assert all(c >= 1 for c in COSTS.values())
    s = ss.optim.spec("tam")
    assert s.effective_cost == COSTS["tam"] and s.cost is None and "cost" not in s.to_dict()
    s = ss.optim.spec("tam", cost=2.0)
    assert s.to_dict()["cost"] == 2.0 and ss.optim.OptimizerSpec.from_dict(s.to_dict()) == s
    assert s.replace(lr=0.3).cost == 2.0


def test_cost_one_is_the_plain_stream_plus_a_trained_column(sc):
    plain = ss.run(sc, ss.models.mlp(hidden=(16,)), "sgd", seed=0)
    rt = ss.run(sc.replace(realtime=True), ss.models.mlp(hidden=(16,)), "sgd", seed=0)
    assert rt.trace["trained"].all() and "trained" not in plain.trace
    pd.testing.assert_frame_equal(rt.trace.drop(columns="trained"), plain.trace)


@pytest.mark.parametrize("vectorized", [False, None])
def test_a_busy_learner_is_scored_but_not_trained(sc, vectorized):
    rt = sc.replace(realtime=True)
    opt = ss.optim.spec("sgdm", cost=3.0)
    res = ss.run(rt, ss.models.mlp(hidden=(16,)), opt, seed=1, vectorized=vectorized)
    want = train_schedule(3.0, sc.total_steps)
    assert (res.trace["trained"].to_numpy() == want).all()
    # the reference: the same learner, trained on the scheduled batches only
    stream = ss.stream.Stream(rt, seed=1, device="cpu")
    lrn = TorchLearner(ss.models.mlp(hidden=(16,)), opt)
    lrn.setup(stream.data, torch.device("cpu"), 1)
    correct, losses = [], []
    for b in stream:
        pred = torch.empty(rt.batch_size, dtype=torch.int64)
        fn = lrn.observe if want[b.step] else lrn.score
        losses.append(float(fn(b.x, b.y, pred)))
        correct.append(int((pred == b.y).sum()))
    assert res.trace["correct"].tolist() == correct or vectorized is None
    tol = 0 if vectorized is False else 1e-5
    np.testing.assert_allclose(res.trace["loss"], losses, rtol=0, atol=tol)
    if vectorized is None:  # the stacked program: the same up to float rounding
        assert np.mean(np.array(correct) == res.trace["correct"].to_numpy()) > 0.95


def test_fleets_on_a_real_time_stream_share_one_cost(sc):
    rt = sc.replace(realtime=True)
    members = [(ss.optim.spec("tam"), 0), (ss.optim.spec("tam"), 1)]
    res = ss.run_fleet(rt, ss.models.mlp(hidden=(16,)), members)
    want = train_schedule(ss.optim.spec("tam").effective_cost, sc.total_steps)
    assert all((r.trace["trained"].to_numpy() == want).all() for r in res)
    single = ss.run(rt, ss.models.mlp(hidden=(16,)), "tam", seed=1)
    pd.testing.assert_frame_equal(res[1].trace, single.trace)  # a member = its own run
    for chunk in (None, 1):  # also where each chunk would have one cost: refused before work
        with pytest.raises(ShiftsimError, match="must have equal costs"):
            ss.run_fleet(rt, ss.models.mlp(hidden=(16,)),
                         [(ss.optim.spec("tam"), 0), (ss.optim.spec("sgd"), 1)],
                         chunk_members=chunk)


def test_a_learner_that_cannot_score_is_refused(sc):
    class NoScore:
        def setup(self, data, device, seed):
            self.inner = TorchLearner(ss.models.linear(), "sgd")
            self.inner.setup(data, device, seed)

        def observe(self, x, y, pred_out):
            return self.inner.observe(x, y, pred_out)

        def predict(self, x):
            return self.inner.predict(x)

        cost = 2.0

    with pytest.raises(ShiftsimError, match="cannot score a batch without training"):
        ss.run(sc.replace(realtime=True), NoScore())


def test_run_ids_include_the_cost_on_real_time_streams_only(sc):
    model = ss.models.mlp(hidden=(8,))
    plain = RunSpec(sc, model, ss.optim.spec("tam"), 0)
    assert RunSpec(sc, model, ss.optim.spec("tam", cost=5.0), 0).run_id == plain.run_id
    assert "cost" not in plain.payload["optimizer"]
    rt = sc.replace(realtime=True)
    a = RunSpec(rt, model, ss.optim.spec("tam"), 0)
    b = RunSpec(rt, model, ss.optim.spec("tam", cost=5.0), 0)
    assert a.payload["optimizer"]["cost"] == ss.optim.spec("tam").effective_cost
    assert len({plain.run_id, a.run_id, b.run_id}) == 3
    assert RunSpec.from_dict(b.to_dict()).run_id == b.run_id


def test_a_study_with_both_views(data, tmp_path):
    scen = views(flip_rates(data, [1.0], tasks=2, steps_per_task=40))
    opts = {"sgdm": ss.optim.spec("sgdm", lr=0.05), "adam": ss.optim.spec("adam", lr=1e-3)}
    study = Study("views", scen, ss.models.mlp(hidden=(16,)), opts, seeds=2)
    # costs relative to the cheapest learner of the study (sgdm): it trains on every batch
    low = ss.optim.spec("sgdm").effective_cost
    assert study.optimizers["sgdm"].cost == 1.0
    assert study.optimizers["adam"].cost == pytest.approx(ss.optim.spec("adam").effective_cost
                                                          / low)
    plain_only = Study("views", flip_rates(data, [1.0], tasks=2, steps_per_task=40),
                       ss.models.mlp(hidden=(16,)), opts, seeds=2)
    assert {s.run_id for s in plain_only.grid()} < {s.run_id for s in study.grid()}
    study.run(tmp_path, workers=1, progress=False)
    res = store.load(tmp_path)
    assert set(res.runs["view"]) == {"plain", "real-time"}
    rt_ids = res.runs.loc[(res.runs["view"] == "real-time") & (res.runs["optimizer"] == "adam"),
                          "run_id"]
    trained = res.trace(rt_ids.iloc[0])["trained"].mean()
    assert trained == pytest.approx(1 / study.optimizers["adam"].cost, abs=0.02)
    rep = ss.report(tmp_path, tmp_path / "rep")
    summary = pd.read_csv(rep / "tables" / "summary.csv")
    assert len(summary) == 4
    assert "(real-time)" in (rep / "README.md").read_text()
