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
