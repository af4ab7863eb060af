"""The stacked feed hands every member exactly its own stream's draws.

The reference is each stream's step-by-step draw (:meth:`PhasePlan.inputs`); the feed gathers
blocks of steps at once, for members in any order and sharing seeds, from one shared input
table or from the streams' own pre-shifted tables stacked (a per-seed pixel permutation).
"""

from __future__ import annotations

import pytest
import torch

import shiftsim as ss
from shiftsim import feed as feed_mod
from shiftsim.feed import StackedFeed
from shiftsim.stream import Stream


def _scenarios(digits):
    return {
        "shared table": ss.label_flip_tasks(digits, rate=1.0, tasks=2, steps_per_task=11),
        "per-seed tables": ss.covariate_drift(digits, [ss.PixelPermutation(1.0)], 11),
    }


@pytest.mark.parametrize("name", ["shared table", "per-seed tables"])
@pytest.mark.parametrize("flat", [False, True])
def test_blocks_equal_each_streams_draws(digits, monkeypatch, name, flat):
    monkeypatch.setattr(feed_mod, "BLOCK_STEPS", 4)  # 11 steps: blocks of 4, 4 and 3
    sc = _scenarios(digits)[name]
    streams = [Stream(sc, seed, "cpu") for seed in (0, 1, 2)]
    members = [2, 0, 2, 1, 0]  # reordered, seeds shared
    feed = StackedFeed(streams, members, flat=flat)
    for k in range(len(sc.phases)):
        batches = feed.phase(k)
        assert batches.fast
        if name == "per-seed tables" and k == 1:
            assert batches.offset is not None  # the stacked tables
        plans = [st.plan(k) for st in streams]
        for s in range(batches.steps):
            got = batches.inputs(s)
            want = torch.stack([plans[m].inputs(s, streams[m].noise) for m in members])
            if flat:
                want = want.flatten(2)
            assert got.shape == want.shape
            assert torch.equal(got, want), (name, k, s)
            assert torch.equal(batches.labels(s), torch.stack([plans[m].y[s] for m in members]))


def _count_predictions(monkeypatch):
    """Count the held-out predictions of the stacked learner (what run() and fleets use)."""
    from shiftsim.fleet.learner import StackedLearner

    calls = []
    predict = StackedLearner.predict

    def counted(self, x):
        calls.append(x)
        return predict(self, x)

    monkeypatch.setattr(StackedLearner, "predict", counted)
    return calls


def test_regimes_without_input_shifts_are_scored_once_per_evaluation(digits, monkeypatch):
    """Label-only regimes share the held-out inputs, so one evaluation predicts them once; the
    scores equal those of separate copies of the inputs (predicted once per regime)."""
    from shiftsim.loop import EvalSchedule

    sc = ss.label_flip_tasks(digits, rate=1.0, tasks=3, steps_per_task=30, eval_every=20,
                             eval_size=100)
    model, members = ss.models.mlp(hidden=(16,)), [("sgdm", 0), ("adam", 1), ("sgdm", 1)]
    calls = _count_predictions(monkeypatch)
    shared = ss.run_fleet(sc, model, members, device="cpu")
    schedule = EvalSchedule(sc)
    assert len(calls) == len(schedule.at) < len(schedule.rows)  # once per evaluation step
    single = ss.run(sc, model, "sgdm", seed=0, device="cpu")
    assert single.evals.equals(shared[0].evals)

    # the same runs with each regime's inputs a copy of their own
    monkeypatch.setattr(Stream, "clean_eval_inputs",
                        property(lambda st: st.data.x_test.index_select(0, st.eval_index)))
    calls.clear()
    copied = ss.run_fleet(sc, model, members, device="cpu")
    assert len(calls) == len(schedule.rows)
    for a, b in zip(shared, copied):
        assert a.evals.equals(b.evals)
    # one prediction, each regime's own labels: at a phase end the regimes score differently
    end = shared[0].evals[shared[0].evals.step == 30]
    assert list(end.regime) == [0, 1, 2] and end.correct.nunique() == 3


def test_regimes_with_input_shifts_are_scored_each(digits, monkeypatch):
    from shiftsim.loop import EvalSchedule

    sc = ss.covariate_drift(digits, [ss.Rotate(90), ss.Rotate(180)], 30, eval_every=20,
                            eval_size=100)
    calls = _count_predictions(monkeypatch)
    ss.run_fleet(sc, ss.models.mlp(hidden=(16,)), [("sgdm", 0), ("sgdm", 1)], device="cpu")
    assert len(calls) == len(EvalSchedule(sc).rows)
