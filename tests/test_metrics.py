"""Metrics against values computed by hand on tiny traces (docs/metrics.md).

The hand computation is written next to each expected value so a reader can check it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from shiftsim import metrics as M
from shiftsim.errors import ShiftsimError
from shiftsim.metrics.recovery import recovery_records

approx = pytest.approx
nan = math.nan


def make_trace(correct, n=10, correct_true=None, loss=None, start_step=0):
    """A trace from per-phase lists of `correct` (batch size n, int or per-phase lists)."""
    rows = []
    step = start_step
    for k, cs in enumerate(correct):
        for i, c in enumerate(cs):
            b = n[k][i] if isinstance(n, list) else n
            ct = correct_true[k][i] if correct_true is not None else c
            lo = loss[k][i] if loss is not None else 1.0
            rows.append({"step": step, "phase": k, "n": b, "correct": c, "correct_true": ct,
                         "loss": lo, "n_new": b, "diag_gnorm": 0.1})
            step += 1
    return pd.DataFrame(rows)


def make_phases(lengths, ceilings=None, regimes=None):
    starts = np.cumsum([0, *lengths])[:-1]
    K = len(lengths)
    return pd.DataFrame({
        "phase": range(K),
        "name": [f"p{k}" for k in range(K)],
        "start": starts,
        "end": starts + np.array(lengths),
        "steps": lengths,
        "regime": regimes if regimes is not None else list(range(K)),
        "ceiling": ceilings if ceilings is not None else [1.0] * K,
        "label_kind": ["none"] * K,
        "width": [0] * K,
    })


# Trace A: 3 phases x 5 steps, b = 10.
#   a_t   phase 0: .2 .5 .8 .9 .9   phase 1: .1 .3 .6 .8 .8   phase 2: .4 .7 .9 .9 1.0
# ā_t with w = 2 (Σ correct / Σ n over the last 2 steps of the phase):
#   phase 0: 2/10=.2  7/20=.35  13/20=.65  17/20=.85  18/20=.9
#   phase 1: 1/10=.1  4/20=.2    9/20=.45  14/20=.7   16/20=.8
#   phase 2: 4/10=.4 11/20=.55  16/20=.8   18/20=.9   19/20=.95
A_CORRECT = [[2, 5, 8, 9, 9], [1, 3, 6, 8, 8], [4, 7, 9, 9, 10]]
A_TRUE = [[2, 5, 8, 9, 9], [3, 5, 7, 9, 9], [4, 7, 9, 9, 10]]
A_LOSS = [[2.0, 1.5, 1.0, 0.5, 0.5], [3.0, 2.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.5, 0.5, 0.5]]
A_ABAR2 = [.2, .35, .65, .85, .9, .1, .2, .45, .7, .8, .4, .55, .8, .9, .95]


@pytest.fixture
def trace_a():
    return make_trace(A_CORRECT, correct_true=A_TRUE, loss=A_LOSS)


@pytest.fixture
def phases_a():
    # phase 1 is a noise phase with ceiling 0.5
    return make_phases([5, 5, 5], ceilings=[1.0, 0.5, 1.0])


# ----------------------------------------------------------------------------------------------
# online accuracy


def test_online_accuracy(trace_a):
    # stream: (33 + 26 + 39) / 150 = 98/150; true: (33 + 33 + 39) / 150 = 105/150 = .7
    assert M.online_accuracy(trace_a) == approx(98 / 150)
    assert M.online_accuracy(trace_a, labels="true") == approx(0.7)
    assert math.isnan(M.online_accuracy(trace_a.iloc[:0]))


def test_phase_online_accuracy(trace_a):
    # 33/50, 26/50, 39/50; true: 33/50, 33/50, 39/50
    s = M.phase_online_accuracy(trace_a)
    assert s.index.tolist() == [0, 1, 2]
    assert s.tolist() == approx([.66, .52, .78])
    assert M.phase_online_accuracy(trace_a, labels="true").tolist() == approx([.66, .66, .78])


def test_online_accuracy_weights_by_batch_size():
    # correct (5, 20), n (10, 20): Σ correct / Σ n = 25/30; the mean of a_t would be .75
    tr = make_trace([[5, 20]], n=[[10, 20]])
    assert M.online_accuracy(tr) == approx(25 / 30)


# ----------------------------------------------------------------------------------------------
# trailing accuracy


def test_trailing_accuracy_window2(trace_a):
    assert M.trailing_accuracy(trace_a, window=2) == approx(A_ABAR2)


def test_trailing_accuracy_window3_and_1(trace_a):
    # w = 3, phase 0: .2, 7/20=.35, 15/30=.5, 22/30, 26/30 (never reaches into phase 1:
    # phase 1 starts over at 1/10 = .1, then 4/20 = .2)
    got = M.trailing_accuracy(trace_a, window=3)
    assert got[:7] == approx([.2, .35, .5, 22 / 30, 26 / 30, .1, .2])
    # w = 1 is a_t itself
    a = np.concatenate(A_CORRECT) / 10
    assert M.trailing_accuracy(trace_a, window=1) == approx(a)


def test_trailing_accuracy_window_longer_than_phase(trace_a):
    # w = 10 > L = 5: cumulative within the phase. phase 0: 2/10, 7/20, 15/30, 24/40, 33/50
    got = M.trailing_accuracy(trace_a, window=10)
    assert got[:5] == approx([.2, .35, .5, .6, .66])
    assert got[5] == approx(.1)  # restarts at the boundary


def test_trailing_accuracy_is_ratio_of_sums():
    # n = 10, 20, 10; correct = 5, 10, 10; w = 2:
    # ā0 = 5/10 = .5, ā1 = 15/30 = .5, ā2 = 20/30 (mean of a_t would be (.5 + 1)/2 = .75)
    tr = make_trace([[5, 10, 10]], n=[[10, 20, 10]])
    assert M.trailing_accuracy(tr, window=2) == approx([.5, .5, 2 / 3])


def test_trailing_accuracy_unsorted_rows_stay_aligned(trace_a):
    shuffled = trace_a.sample(frac=1.0, random_state=3)
    got = M.trailing_accuracy(shuffled, window=2)
    expected = np.array(A_ABAR2)[shuffled["step"].to_numpy()]
    assert got == approx(expected)


def test_trailing_accuracy_labels_true(trace_a):
    # phase 1 against original labels, w = 2: 3/10, 8/20, 12/20, 16/20, 18/20
    got = M.trailing_accuracy(trace_a, window=2, labels="true")
    assert got[5:10] == approx([.3, .4, .6, .8, .9])


# ----------------------------------------------------------------------------------------------
# recovery, version 2
#
# The tests down to test_recovery_unsorted_trace_equals_sorted are version 1's hand-computed
# cases where version 1 was right: the phase table has no ``chance`` (χ = 0, so the target is
# q · A_ref as before) and ``onset=1`` (every curve here starts below its target, so the onset
# is at s = 0 and R_k is version 1's). New behaviour is tested below them.


def test_recovery_default_plateau(trace_a, phases_a):
    r = M.recovery(trace_a, phases_a, onset=1, window=2)
    assert r["phase"].tolist() == [1, 2]
    assert list(r.columns) == M.RECOVERY_COLUMNS
    # phase 1: pre = mean(a3, a4) = .9; plateau = mean(a8, a9) = .8; target = .9*.8 = .72.
    #   ā = .1 .2 .45 .7 .8: only s=4 is >= .72 and 4 + m(=2) > 5 -> censored.
    #   drop = .9 - min ā (.1) = .8; deficit = (.7 + .6 + .35 + .1 + 0)/5 = .35
    p1 = r.iloc[0]
    assert (p1.pre, p1.plateau, p1.ceiling, p1.reference, p1.target) == approx(
        (.9, .8, .5, .8, .72))
    assert math.isnan(p1.recovery_steps) and math.isnan(p1.recovery_samples)
    assert bool(p1.censored) is True
    assert (p1["drop"], p1.deficit) == approx((.8, .35))
    # phase 2: pre = mean(a8, a9) = .8; plateau = mean(.9, 1.0) = .95; target = .855.
    #   ā = .4 .55 .8 .9 .95: s=3 -> ā13=.9, ā14=.95 both >= .855 -> R = 3, samples = 30.
    #   drop = .8 - .4 = .4; deficit = (.55 + .4 + .15 + .05 + 0)/5 = .23
    p2 = r.iloc[1]
    assert (p2.pre, p2.plateau, p2.target) == approx((.8, .95, .855))
    assert (p2.recovery_steps, p2.recovery_samples) == (3.0, 30.0)
    assert bool(p2.censored) is False
    assert (p2["drop"], p2.deficit) == approx((.4, .23))
    assert r["recovery_steps"].dtype == np.float64 and r["censored"].dtype == bool


def test_recovery_reference_pre(trace_a, phases_a):
    r = M.recovery(trace_a, phases_a, onset=1, window=2, reference="pre")
    # phase 1: target = .9*.9 = .81, never reached -> censored;
    #   deficit = (.8 + .7 + .45 + .2 + .1)/5 = .45
    # phase 2: target = .9*.8 = .72; ā >= .72 from s=2 (.8, .9) -> R = 2, 20 samples;
    #   deficit = (.4 + .25 + 0 + 0 + 0)/5 = .13
    assert r["target"].tolist() == approx([.81, .72])
    assert r["censored"].tolist() == [True, False]
    assert r["recovery_steps"].iloc[1] == 2.0 and r["recovery_samples"].iloc[1] == 20.0
    assert r["deficit"].tolist() == approx([.45, .13])
    assert r["drop"].tolist() == approx([.8, .4])  # drop does not depend on the reference


def test_recovery_reference_ceiling_and_ties(trace_a, phases_a):
    r = M.recovery(trace_a, phases_a, onset=1, window=2, reference="ceiling")
    # phase 1: C = .5, target = .45; ā7 = 9/20 = .45 is a tie and counts -> s=2 (.45, .7), R=2.
    #   deficit = (.4 + .3 + .05 + 0 + 0)/5 = .15
    # phase 2: C = 1, target = .9; ā13 = 18/20 = .9 is a tie -> s=3 (.9, .95), R=3.
    #   deficit = (.6 + .45 + .2 + .1 + .05)/5 = .28
    assert r["reference"].tolist() == [.5, 1.0]
    assert r["target"].tolist() == approx([.45, .9])
    assert r["recovery_steps"].tolist() == [2.0, 3.0]
    assert r["recovery_samples"].tolist() == [20.0, 30.0]
    assert r["deficit"].tolist() == approx([.15, .28])


def test_recovery_absolute_reference_and_recovery_at_zero(trace_a, phases_a):
    # absolute 0.5, q = 1: target .5. phase 1: ā >= .5 at s=3,4 -> R=3 (3+2 <= 5), 30 samples.
    #   phase 2: ā >= .5 from s=1 -> R=1, 10 samples. deficit phase 2 = (.5-.4)/5 = .02
    r = M.recovery(trace_a, phases_a, onset=1, window=2, reference=0.5, q=1.0)
    assert r["recovery_steps"].tolist() == [3.0, 1.0]
    assert r["recovery_samples"].tolist() == [30.0, 10.0]
    assert r["deficit"].tolist() == approx([.15, .02])
    # q = .5: target .25. phase 2 starts at .4 >= .25 -> R = 0, 0 samples (recovery at s=0).
    #   phase 1: .1, .2 below, then .45 .7 -> R = 2.
    r = M.recovery(trace_a, phases_a, onset=1, window=2, reference=0.5, q=0.5)
    assert r["recovery_steps"].tolist() == [2.0, 0.0]
    assert r["recovery_samples"].tolist() == [20.0, 0.0]
    assert r["censored"].tolist() == [False, False]


def test_recovery_persistence(trace_a, phases_a):
    # m = 1, plateau reference: phase 1 target .72 first met at s=4 (ā9 = .8) -> R=4, 40 samples;
    # phase 2 target .855 first met at s=3 -> R=3
    r = M.recovery(trace_a, phases_a, onset=1, window=2, persistence=1)
    assert r["recovery_steps"].tolist() == [4.0, 3.0]
    assert r["recovery_samples"].tolist() == [40.0, 30.0]
    # m = L = 5: must hold for the whole phase. target .25 (ref .5, q .5):
    #   phase 1 starts at .1 -> censored; phase 2 is >= .25 throughout -> R = 0
    r = M.recovery(trace_a, phases_a, onset=1, window=2, reference=0.5, q=0.5, persistence=5)
    assert r["censored"].tolist() == [True, False]
    assert r["recovery_steps"].iloc[1] == 0.0
    # m = 6 > L = 5: no recovery can qualify -> phase 1 (dipped at s=0) is censored; phase 2
    # never dips below .25, so the shift did not hurt: R = 0 (version 1 censored it)
    r = M.recovery(trace_a, phases_a, onset=1, window=2, reference=0.5, q=0.5, persistence=6)
    assert r["censored"].tolist() == [True, False]
    assert r["recovery_steps"].tolist()[1] == 0.0 and r["dipped"].tolist() == [True, False]


def test_recovery_default_window_is_20(trace_a, phases_a):
    # w = 20 > every phase: pre/plateau average whole phases, ā is cumulative in the phase,
    # m = 20 > L = 5 -> censored. phase 1: pre = .66 (all of phase 0), plateau = .52
    r = M.recovery(trace_a, phases_a, onset=1)
    assert r["pre"].tolist() == approx([.66, .52])
    assert r["plateau"].tolist() == approx([.52, .78])
    assert r["censored"].tolist() == [True, True]


def test_recovery_phase_shorter_than_window():
    # Trace B, w = 3: phase 0 (4 steps) a = .6 .8 .9 .9; phase 1 (2 steps) a = .3 .7;
    # phase 2 (6 steps) a = .5 .8 .8 .9 .9 .9
    tr = make_trace([[6, 8, 9, 9], [3, 7], [5, 8, 8, 9, 9, 9]])
    ph = make_phases([4, 2, 6])
    r = M.recovery(tr, ph, onset=1, window=3)
    # phase 1: pre = mean(.8, .9, .9) = 2.6/3; plateau = mean of the 2 rows there = .5;
    #   target .45; ā = .3, 10/20 = .5; m = 3 > L = 2 -> censored.
    #   drop = 2.6/3 - .3; deficit = ((.5 - .3) + 0)/2 = .1
    p1 = r.iloc[0]
    assert (p1.pre, p1.plateau, p1.target) == approx((2.6 / 3, .5, .45))
    assert bool(p1.censored) and math.isnan(p1.recovery_steps)
    assert (p1["drop"], p1.deficit) == approx((2.6 / 3 - .3, .1))
    # phase 2: pre = mean of phase 1's 2 rows = .5; plateau = mean(.9, .9, .9) = .9; target .81
    #   ā = 5/10, 13/20, 21/30, 25/30, 26/30, 27/30 -> >= .81 from s=3 on, 3 + 3 <= 6 -> R = 3
    #   drop = .5 - .5 = 0; deficit = (.4 + .25 + .2 + .9-25/30 + .9-26/30 + 0)/6
    p2 = r.iloc[1]
    assert (p2.pre, p2.plateau, p2.target) == approx((.5, .9, .81))
    assert (p2.recovery_steps, p2.recovery_samples) == (3.0, 30.0)
    assert p2["drop"] == approx(0.0, abs=1e-12)
    assert p2.deficit == approx((.4 + .25 + .2 + (.9 - 25 / 30) + (.9 - 26 / 30)) / 6)
    # the short phase with m = 1: ā = .3, .5 -> first >= .45 at s=1 -> R = 1
    r1 = M.recovery(tr, ph, onset=1, window=3, persistence=1)
    assert r1["recovery_steps"].iloc[0] == 1.0


def test_recovery_samples_with_variable_batch_size():
    # phase 0: n = 10, 10; correct = 5, 10 -> a = .5, 1.0; pre (w=2) = .75
    # phase 1: n = 10, 20, 30, 40; correct = 0, 2, 27, 36 -> a = 0, .1, .9, .9
    #   ā (w=2) = 0, 2/30, 29/50, 63/70 = .9; plateau = mean(.9, .9) = .9; target .81
    #   m = 1: first s with ā >= .81 is 3 -> samples = 10 + 20 + 30 = 60
    tr = make_trace([[5, 10], [0, 2, 27, 36]], n=[[10, 10], [10, 20, 30, 40]])
    r = M.recovery(tr, make_phases([2, 4]), onset=1, window=2, persistence=1)
    assert r["pre"].iloc[0] == approx(.75)
    assert r["recovery_steps"].iloc[0] == 3.0
    assert r["recovery_samples"].iloc[0] == 60.0
    assert r["drop"].iloc[0] == approx(.75)  # .75 - min ā (0)


def test_recovery_truncated_diverged_trace(trace_a, phases_a):
    # diverged at step 12: phase 2 has rows 10, 11 only (L = 2).
    #   plateau = mean(a10, a11) = (.4 + .7)/2 = .55, target .495; ā = .4, .55;
    #   s = 0 fails (.4), s = 1 needs 1 + 2 <= 2 -> censored. drop = .8 - .4;
    #   deficit = ((.55 - .4) + 0)/2 = .075
    r = M.recovery(trace_a[trace_a.step < 12], phases_a, onset=1, window=2)
    p2 = r.iloc[1]
    assert (p2.plateau, p2.target) == approx((.55, .495))
    assert bool(p2.censored)
    assert (p2["drop"], p2.deficit) == approx((.4, .075))
    # diverged at step 10: phase 2 has no rows, so no row for it
    r = M.recovery(trace_a[trace_a.step < 10], phases_a, onset=1, window=2)
    assert r["phase"].tolist() == [1]
    # diverged in phase 0: no rows at all, but the columns are there
    r = M.recovery(trace_a[trace_a.step < 3], phases_a, onset=1, window=2)
    assert r.empty and list(r.columns) == M.RECOVERY_COLUMNS


def test_recovery_previous_phase_absent(trace_a, phases_a):
    # phase 0 rows missing: phase 1 has no pre-shift level
    tr = trace_a[trace_a.phase > 0]
    r = M.recovery(tr, phases_a, onset=1, window=2)
    p1 = r.iloc[0]
    assert math.isnan(p1.pre) and math.isnan(p1["drop"])
    assert p1.plateau == approx(.8) and bool(p1.censored)  # plateau reference still works
    # reference "pre" is undefined there: NaN target/time/deficit, not censored
    r = M.recovery(tr, phases_a, onset=1, window=2, reference="pre")
    p1 = r.iloc[0]
    assert math.isnan(p1.target) and math.isnan(p1.recovery_steps) and math.isnan(p1.deficit)
    assert bool(p1.censored) is False
    assert r["recovery_steps"].iloc[1] == 2.0  # phase 2 unaffected (see reference="pre" test)


def test_recovery_unsorted_trace_equals_sorted(trace_a, phases_a):
    r1 = M.recovery(trace_a, phases_a, onset=1, window=2)
    r2 = M.recovery(trace_a.sample(frac=1.0, random_state=0), phases_a, onset=1, window=2)
    pd.testing.assert_frame_equal(r1, r2)


def _v2_phases(width=0, chance=0.1, label_kind="none", shifted=True):
    return pd.DataFrame({"phase": [0, 1], "ceiling": 1.0, "chance": chance,
                         "chance_true": chance, "label_kind": ["none", label_kind],
                         "shifted": [False, shifted], "width": [0, width]})


def _v2_trace(a0, a1, n=100, true1=None):
    """w = 1 traces: a_t = correct_t / n is ā_t itself."""
    c0 = [round(x * n) for x in a0]
    c1 = [round(x * n) for x in a1]
    t1 = c1 if true1 is None else [round(x * n) for x in true1]
    return make_trace([c0, c1], n=n, correct_true=[c0, t1])


def test_recovery_v2_gradual_dip_after_early_batches():
    # phase 1 is a gradual shift (ramp width 4); its first batches still score well and the
    # curve dips only later. w = 1, m = 3, m_on = 2, χ = .1, own plateau .9:
    #   target = .1 + .9 · (.9 − .1) = .82
    #   a (= ā): .9 .85 .88 | .6 .5 .55 .8 | .9 .9 .9 .9 .9
    #   onset: first s with ā_s, ā_{s+1} < .82 -> s = 3
    #   R: first s ≥ 3 with 3 steps ≥ .82 -> s = 7, counted from the ramp's first step
    #   below = 7 − 3 = 4; after the ramp = 7 − 4 = 3; samples = 7 · 100
    # (version 1 gave R = 0: .9, .85, .88 are three steps above .9 · .9 = .81)
    a1 = [.9, .85, .88, .6, .5, .55, .8, .9, .9, .9, .9, .9]
    tr = _v2_trace([.9, .9, .9], a1)
    r = M.recovery(tr, _v2_phases(width=4), window=1, persistence=3, onset=2).iloc[0]
    assert r.target == approx(.82)
    assert bool(r.dipped) and r.onset_steps == 3.0
    assert (r.recovery_steps, r.below_steps, r.after_ramp_steps) == (7.0, 4.0, 3.0)
    assert r.recovery_samples == 700.0 and not r.censored and not r.collapsed
    assert (r.onset_samples, r.below_samples, r.after_ramp_samples) == (300.0, 400.0, 300.0)
    # drop = pre (.9) − min (.5); deficit = Σ max(0, .9 − a) / 12 = 1.22 / 12
    assert (r["drop"], r.deficit) == approx((.4, 1.22 / 12))
    # an abrupt shift reports no after-ramp time
    r = M.recovery(tr, _v2_phases(width=0), window=1, persistence=3, onset=2).iloc[0]
    assert r.recovery_steps == 7.0 and math.isnan(r.after_ramp_steps)
    assert math.isnan(r.after_ramp_samples)
    # lengths in samples with batches of different sizes: b_t = 10, 20, ... 120 in phase 1,
    # the same accuracies (w = 1: ā_t = a_t); onset 3, R 7, ramp 4:
    #   onset: 10 + 20 + 30 = 60; below (steps 3-6): 40 + 50 + 60 + 70 = 220;
    #   recovery: 60 + 220 = 280; after the ramp (steps 4-6): 50 + 60 + 70 = 180
    sizes = [10 * (i + 1) for i in range(len(a1))]
    tr = make_trace([[90] * 3, [round(a * b) for a, b in zip(a1, sizes)]],
                    n=[[100] * 3, sizes])
    r = M.recovery(tr, _v2_phases(width=4), window=1, persistence=3, onset=2).iloc[0]
    assert (r.onset_steps, r.recovery_steps) == (3.0, 7.0)
    assert (r.onset_samples, r.below_samples, r.recovery_samples, r.after_ramp_samples) == (
        60.0, 220.0, 280.0, 180.0)


def test_recovery_v2_first_batches_above_target_then_dip():
    # label noise: the first 4 noisy batches happen to sit above target, then it dips.
    # absolute reference .9, χ = .1 -> target .82; m = 3, m_on = 2.
    #   a: .85 .86 .84 .83 | .5 .45 .5 | .86 .88 .9 .9 .9 -> onset 4, R = 7 (version 1: 0)
    a1 = [.85, .86, .84, .83, .5, .45, .5, .86, .88, .9, .9, .9]
    tr = _v2_trace([.9, .9, .9], a1)
    r = M.recovery(tr, _v2_phases(), window=1, persistence=3, onset=2, reference=.9).iloc[0]
    assert (r.onset_steps, r.recovery_steps, r.below_steps) == (4.0, 7.0, 3.0)
    # a dip shorter than m_on is no onset: only .5 below the target -> R = 0, not dipped
    a1 = [.85, .86, .5, .83, .85, .86, .9, .9]
    r = M.recovery(_v2_trace([.9] * 3, a1), _v2_phases(), window=1, persistence=3, onset=2,
                   reference=.9).iloc[0]
    assert r.recovery_steps == 0.0 and not r.dipped and math.isnan(r.onset_steps)
    assert r.below_steps == 0.0 and r.recovery_samples == 0.0
    assert r.below_samples == 0.0 and math.isnan(r.onset_samples)


def test_recovery_v2_collapse_is_censored():
    # a learner that ends the phase at chance: plateau .1 = χ -> collapsed; its own plateau
    # would give target .1 and "recover" at once; version 2 censors it whatever the reference.
    a1 = [.1, .12, .09, .1, .11, .1, .1, .1]
    tr = _v2_trace([.9, .9, .9], a1)
    for ref in ("plateau", .9, "pre"):
        r = M.recovery(tr, _v2_phases(), window=1, persistence=3, onset=2, reference=ref).iloc[0]
        assert bool(r.collapsed) and bool(r.censored), ref
        assert math.isnan(r.recovery_steps) and math.isnan(r.recovery_samples)
    # plateau .14: within .05 of chance -> still a collapse; .16 is not
    assert M.recovery(_v2_trace([.9] * 3, [.14] * 6), _v2_phases(), window=1).loc[0, "collapsed"]
    assert not M.recovery(_v2_trace([.9] * 3, [.16] * 6), _v2_phases(), window=1
                          ).loc[0, "collapsed"]
    # exactly .05 above chance is not a collapse (A_plat − χ < .05 is false), although
    # .15 − .1 is 0.04999999999999999 in floating point
    assert .15 - .1 < .05
    assert not M.recovery(_v2_trace([.9] * 3, [.15] * 6), _v2_phases(), window=1
                          ).loc[0, "collapsed"]
    # a collapse is censored whatever the reference, an undefined (NaN) one included; a
    # learner that did not collapse keeps an undefined recovery there
    r = M.recovery(tr, _v2_phases(), window=1, reference={1: math.nan}).iloc[0]
    assert bool(r.collapsed) and bool(r.censored) and math.isnan(r.recovery_steps)
    r = M.recovery(_v2_trace([.9] * 3, [.9] * 6), _v2_phases(), window=1,
                   reference={1: math.nan}).iloc[0]
    assert not r.collapsed and not r.censored and math.isnan(r.recovery_steps)


def test_recovery_v2_target_normalised_to_chance():
    # binary task, χ = .5: reference .6, q = .9 -> target .5 + .9 · .1 = .59 (version 1: .54);
    # a = .55 .55 .55 .6 .6 .6: onset at 0 (m_on = 2), recovered at 3 (m = 3); under version 1's
    # target .54 it would have been R = 0
    tr = _v2_trace([.6] * 3, [.55, .55, .55, .6, .6, .6])
    r = M.recovery(tr, _v2_phases(chance=.5), window=1, persistence=3, onset=2).iloc[0]
    assert r.target == approx(.59) and r.recovery_steps == 3.0
    assert r.deficit == approx(.05 * 3 / 6)


def test_recovery_v2_clean_labels_for_noise_phases():
    # a noise phase: stream labels are partly random, the clean-label curve is what matters.
    # stream a: .3 .3 .3 .3 .3 .3 (its own plateau .3, χ .1 -> target .28: never below, R = 0)
    # clean a: .2 .2 .9 .9 .9 .9 (plateau .9 -> target .82: onset 0, R = 2)
    tr = _v2_trace([.9] * 3, [.3] * 6, true1=[.2, .2, .9, .9, .9, .9])
    r = M.recovery(tr, _v2_phases(label_kind="noise"), window=1, persistence=3,
                   onset=2).iloc[0]
    assert r.recovery_steps == 0.0 and not r.dipped
    assert r.plateau_true == approx(.9) and r.target_true == approx(.82)
    assert bool(r.dipped_true) and r.recovery_steps_true == 2.0
    assert r.pre_true == approx(.9) and r.drop_true == approx(.7)
    # a concept phase has no clean-label recovery (its clean labels are the old concept)
    r = M.recovery(tr, _v2_phases(label_kind="concept"), window=1).iloc[0]
    assert math.isnan(r.recovery_steps_true) and math.isnan(r.plateau_true)
    assert not r.censored_true


def test_recovery_v2_no_shift_has_no_recovery():
    # flip rate 0: the phase changes nothing -> no recovery values (not "recovers in 0 steps")
    tr = _v2_trace([.9] * 3, [.5, .5, .9, .9, .9])
    r = M.recovery(tr, _v2_phases(shifted=False), window=1, persistence=2, onset=2).iloc[0]
    assert not r.shifted and math.isnan(r.recovery_steps) and not r.censored
    assert math.isnan(r["drop"]) and math.isnan(r.target)
    assert r.plateau == approx(.9)  # levels are still reported


def test_recovery_v2_equals_v1_on_clean_abrupt_shifts():
    # version 1: R = the first s with m steps ≥ q · plateau. On abrupt shifts that hurt at once
    # (the curve starts below the target for ≥ m_on steps) with χ = 0 both give the same times.
    def v1(abar, plateau, q=.9, m=20):
        ok = abar >= q * plateau - 1e-12
        for s in range(abar.size - m + 1):
            if ok[s:s + m].all():
                return float(s)
        return nan

    rng = np.random.default_rng(1)
    for trial in range(20):
        L = 200
        depth = rng.uniform(.15, .5)
        tau = rng.uniform(5, 60)
        t = np.arange(L)
        acc = .9 - depth * np.exp(-t / tau) + rng.normal(0, .01, L)
        c1 = np.clip(np.round(acc * 32), 0, 32).astype(int)
        c0 = np.full(50, 29)
        tr = make_trace([list(c0), list(c1)], n=32)
        ph = make_phases([50, L])  # no chance column: χ = 0
        r = M.recovery(tr, ph).iloc[0]
        abar = M.trailing_accuracy(tr)[50:]
        expected = v1(abar, r.plateau)
        assert r.dipped, trial
        assert (r.recovery_steps == expected) or (math.isnan(expected) and r.censored), trial


def test_recovery_v2_reference_mapping_and_common():
    # two optimizers × two seeds on one scenario; plateaus of phase 1: a .8/.9, b .6/.7;
    # ceiling .8 -> common reference min(.8, max(.85, .65)) = .8; phase 2: min(1, .95) = .95
    rows = pd.DataFrame({
        "scenario": "s", "optimizer": ["a", "a", "b", "b"] * 2, "seed": [0, 1, 0, 1] * 2,
        "phase": [1] * 4 + [2] * 4, "plateau": [.8, .9, .6, .7, .9, 1.0, .5, .6],
        "plateau_true": [.5, .5, .7, nan, .9, .9, .9, .9], "ceiling": [.8] * 4 + [1.0] * 4})
    ref = M.common_reference(rows)
    assert ref["phase"].tolist() == [1, 2]
    assert ref["reference"].tolist() == approx([.8, .95])
    # clean labels: best mean plateau_true (NaN skipped): phase 1 max(.5, .7) = .7
    assert ref["reference_true"].tolist() == approx([.7, .9])
    # every learner is then timed against the same target (trace A, phase 1: target .9 · .8)
    mapping = dict(zip(ref["phase"], ref["reference"]))
    tr = make_trace(A_CORRECT, correct_true=A_TRUE, loss=A_LOSS)
    r = M.recovery(tr, make_phases([5, 5, 5]), window=2, reference=mapping)
    assert r["reference"].tolist() == approx([.8, .95])
    assert r["target"].tolist() == approx([.72, .855])
    with pytest.raises(ShiftsimError, match="common"):
        M.recovery(tr, make_phases([5, 5, 5]), reference="common")


@pytest.mark.parametrize("seed", range(6))
def test_plan_recovery_records_are_recovery_records(seed):
    """The arrays entry point (a study's recompute over many runs) gives the rows of
    recovery_records for the same trace and plan, bit for bit: random traces of 3-5 phases,
    label noise (clean-label rows), gradual widths, unshifted phases, a phase absent from the
    trace, references of every kind."""
    from shiftsim.metrics.recovery import plan_recovery_records

    rng = np.random.default_rng(seed)
    k = int(rng.integers(3, 6))
    lengths = [int(x) for x in rng.integers(8, 40, size=k)]
    n = [[int(b) for b in rng.integers(4, 17, size=m)] for m in lengths]
    correct = [[int(rng.integers(0, b + 1)) for b in row] for row in n]
    true = [[int(rng.integers(0, b + 1)) for b in row] for row in n]
    trace = make_trace(correct, n=n, correct_true=true)
    if seed % 3 == 2:  # a run that diverged in its last phase: that phase has no rows
        trace = trace[trace["phase"] < k - 1].reset_index(drop=True)
    phases = make_phases(lengths, ceilings=[float(x) for x in rng.uniform(0.5, 1.0, size=k)])
    phases["label_kind"] = rng.choice(["none", "noise", "permute"], size=k)
    phases["width"] = rng.choice([0, 5], size=k)
    phases["shifted"] = rng.random(k) > 0.2
    phases["chance"] = 0.1
    phases["chance_true"] = 0.1
    options = [{}, {"reference": "pre", "window": 5}, {"reference": "ceiling", "onset": 3},
               {"reference": {j: 0.7 for j in range(k)}, "reference_true": 0.6, "q": 0.8,
                "persistence": 4}][seed % 4]
    want = recovery_records(trace, phases.sample(frac=1, random_state=seed), **options)
    plan = {int(r["phase"]): {c: r[c] for c in ("shifted", "label_kind", "chance",
                                                  "chance_true", "ceiling", "width")}
            for r in phases.to_dict("records")}
    corrects = {c: trace[c].to_numpy() for c in ("correct", "correct_true")}
    got = plan_recovery_records(trace["n"].to_numpy(), trace["phase"].to_numpy(), corrects,
                                plan, **options)
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for key in w:
            assert (g[key] == w[key]) or (g[key] != g[key] and w[key] != w[key]), key
    with pytest.raises(ShiftsimError, match="unknown recovery option 'windw'"):
        plan_recovery_records(trace["n"].to_numpy(), trace["phase"].to_numpy(), corrects,
                              plan, windw=3)


def test_run_recovery_reduces_shifts_within_a_run():
    # run r1: shifts recover at 4, 10, censored -> median of (4, 10, inf) = 10, not censored;
    # run r2: 6, censored, censored -> median inf -> censored; phase 4 of r2 is no shift
    rows = pd.DataFrame({
        "run_id": ["r1"] * 3 + ["r2"] * 4, "phase": [1, 2, 3, 1, 2, 3, 4],
        "shifted": [True] * 6 + [False],
        "recovery_steps": [4, 10, nan, 6, nan, nan, nan],
        "recovery_samples": [40, 100, nan, 60, nan, nan, nan],
        "censored": [False, False, True, False, True, True, False],
        "drop": [.1, .2, .3, .4, .5, .6, .7], "deficit": .1})
    out = M.run_recovery(rows).set_index("run_id")
    assert out.loc["r1", "recovery_steps"] == 10.0 and not out.loc["r1", "censored"]
    assert out.loc["r1", "recovery_samples"] == 100.0
    assert math.isnan(out.loc["r2", "recovery_steps"]) and out.loc["r2", "censored"]
    assert out["shifts"].tolist() == [3, 3] and out["censored_shifts"].tolist() == [1, 2]
    assert out["drop"].tolist() == approx([.2, .5])
    # drops and deficits are reduced by the median over the run's shifts too, not the mean:
    # deficits .1, .1, .1, .9 -> .1 (the mean would be .3); drops .1, .2, .3, .8 -> .25
    skew = pd.DataFrame({"run_id": "r", "phase": [1, 2, 3, 4], "shifted": True,
                         "recovery_steps": 5.0, "recovery_samples": 50.0, "censored": False,
                         "drop": [.1, .2, .3, .8], "deficit": [.1, .1, .1, .9]})
    out = M.run_recovery(skew).iloc[0]
    assert (out["drop"], out["deficit"]) == approx((.25, .1))


def test_summarize_v2_columns(trace_a, phases_a):
    s = M.summarize(trace_a, phases_a)
    assert list(s.columns) == M.SUMMARY_COLUMNS
    for c in ("recovery_steps", "recovery_samples", "target", "censored", "drop", "deficit",
              "dipped", "collapsed", "onset_steps", "below_steps", "after_ramp_steps",
              "chance", "shifted", "recovery_steps_true"):
        assert c in s.columns
    assert s["shifted"].tolist() == [False, True, True]


def test_max_average_accuracy():
    # three regimes on the same inputs: identity, π1, π2 (C = 3, equal classes)
    # class 0: labels 0, 1, 1 -> best answer agrees with 2 regimes; class 1: 1, 2, 0 -> 1;
    # class 2: 2, 0, 2 -> 2. max ACC = (2 + 1 + 2) / (3 · 3) = 5/9
    maps = [[0, 1, 2], [1, 2, 0], [1, 0, 2]]
    assert M.max_average_accuracy(maps, ["x"] * 3, [1, 1, 1]) == approx(5 / 9)
    # class weights: class 1 twice as common -> (2 + 2·1 + 2) / 4 / 3 = 6/12
    assert M.max_average_accuracy(maps, ["x"] * 3, [1, 2, 1]) == approx(.5)
    # regimes on different inputs can all be learned
    assert M.max_average_accuracy(maps, ["a", "b", "c"], [1, 1, 1]) == 1.0


def test_holm():
    # sorted .01, .02, .04, .3 (m = 4): .04, .06, .08, .3 -> monotone; NaN not counted
    p = [.04, .01, nan, .3, .02]
    assert M.holm(p).tolist() == approx([.08, .04, nan, .3, .06], nan_ok=True)
    assert M.holm([]).size == 0
    assert M.holm([.5, .9]).tolist() == approx([1.0, 1.0])


def test_paired_p_value():
    from scipy import stats

    d = [.1, .05, .2, -.02, .12, .08]
    assert M.paired_p_value(d) == approx(stats.ttest_1samp(d, 0).pvalue)
    assert M.paired_p_value(d, "wilcoxon") == approx(stats.wilcoxon(d).pvalue)
    assert math.isnan(M.paired_p_value([.1]))
    assert M.paired_p_value([0, 0, 0], "wilcoxon") == 1.0
    with pytest.raises(ShiftsimError, match="paired test"):
        M.paired_p_value(d, "z")


def test_wilcoxon_p_values_are_scipys_bit_for_bit():
    """Tied magnitudes with up to 13 differences: counted over the 2^n sign flips
    (_signed_rank_flips_p) instead of scipy's enumeration, the same p-values bit for bit; the
    other cases are scipy's own (exact distribution without ties, normal approximation with
    ties beyond 13)."""
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(0)
    counted = 0
    for _ in range(60):
        n = int(rng.integers(2, 21))
        d = rng.integers(-8, 9, size=n) * rng.choice([1.0, 0.5, 2.5, 3.0])
        d = d[d != 0]
        if d.size < 2 or np.all(d == d[0]):
            continue
        counted += d.size <= 13 and np.unique(np.abs(d)).size < d.size
        assert M.paired_p_value(d, "wilcoxon") == float(wilcoxon(d).pvalue), d
    assert counted > 15  # (2,441 of 2,441 the same when written)
    # the 2^n flips by hand, n = 4, magnitudes 1 1 2 3 (ranks 1.5 1.5 3 4), all positive:
    # the sum 10 is the largest of 16, 2 * 1/16
    assert M.paired_p_value([1.0, 1.0, 2.0, 3.0], "wilcoxon") == 0.125


def test_median_interval():
    # the interval comes from resampling seeds; it contains the median and is reproducible
    times, cens = [10, 12, 11, 40, 9, 13, 10, 11, 12, 14], [False] * 10
    med, low, high = M.median_interval(times, cens, seed=3)
    assert med == 11.5 and low <= med <= high and high <= 40
    assert M.median_interval(times, cens, seed=3) == (med, low, high)
    # 4 of 10 censored: median defined (the 5th and 6th of 10) but the upper bound is +inf
    med, low, high = M.median_interval([10, 12, 11, 9, 13, 14, nan, nan, nan, nan],
                                       [False] * 6 + [True] * 4)
    assert med == 13.5 and math.isinf(high)
    assert math.isnan(M.median_interval([3], [False])[1])


@pytest.mark.parametrize("n", [2, 3, 7, 10, 20])
def test_median_interval_equals_the_numpy_median_bootstrap(n):
    """The bootstrap medians are the sorted resamples' middle pair: the same numbers as
    np.median of each resample (odd and even sizes, censored runs as +inf)."""
    rng = np.random.default_rng(n)
    times = rng.integers(1, 60, size=n).astype(float)
    cens = rng.random(n) < 0.3
    times[cens] = nan
    x = np.where(cens, np.inf, times)
    draws = np.random.default_rng(5).integers(0, n, size=(10_000, n))
    meds = np.median(x[draws], axis=1)
    meds = np.where(np.isnan(meds), np.inf, meds)
    low = float(np.quantile(meds, 0.025, method="lower"))
    high = float(np.quantile(meds, 0.975, method="higher"))
    assert M.median_interval(times, cens, seed=5)[1:] == (low, high)


# ----------------------------------------------------------------------------------------------
# held-out evaluations
#
# Evaluations for trace A (regimes 0, 1, 2); periodic ones cover the regimes seen so far,
# phase-end ones (steps 5, 10, 15) cover all:
#   step  phase  end   r0    r1    r2
#     2     0     .    .5
#     4     0     .    .7
#     5     0     x    .8    .1    .2
#     7     1     .    .4    .5
#     9     1     .    .6    .7
#    10     1     x    .6    .8    .3
#    12     2     .    .5    .6    .6
#    14     2     .    .55   .5    .8
#    15     2     x    .5    .7    .9
EVAL_ROWS = [
    (2, 0, False, {0: .5}), (4, 0, False, {0: .7}), (5, 0, True, {0: .8, 1: .1, 2: .2}),
    (7, 1, False, {0: .4, 1: .5}), (9, 1, False, {0: .6, 1: .7}),
    (10, 1, True, {0: .6, 1: .8, 2: .3}),
    (12, 2, False, {0: .5, 1: .6, 2: .6}), (14, 2, False, {0: .55, 1: .5, 2: .8}),
    (15, 2, True, {0: .5, 1: .7, 2: .9}),
]


def make_evals(rows=EVAL_ROWS, size=20):
    out = []
    for step, phase, end, accs in rows:
        for regime, acc in accs.items():
            out.append({"step": step, "phase": phase, "regime": regime, "n": size,
                        "correct": round(acc * size), "accuracy": acc, "phase_end": end})
    return pd.DataFrame(out)


@pytest.fixture
def evals_a():
    return make_evals()


def test_accuracy_matrix(evals_a, phases_a):
    R = M.accuracy_matrix(evals_a, phases_a)
    assert R.shape == (3, 3)
    assert R.index.tolist() == [0, 1, 2] and R.columns.tolist() == [0, 1, 2]
    assert R.to_numpy() == approx(np.array([[.8, .1, .2], [.6, .8, .3], [.5, .7, .9]]))


def test_acc_bwt_forgetting(evals_a, phases_a):
    R = M.accuracy_matrix(evals_a, phases_a)
    # ACC = (.5 + .7 + .9)/3 = .7
    assert M.average_accuracy(R) == approx(.7)
    # BWT = ((.5 - .8) + (.7 - .8))/2 = -.2
    assert M.backward_transfer(R) == approx(-.2)
    # f0 = max(R00, R10) - R20 = .8 - .5 = .3; f1 = max(R11) - R21 = .8 - .7 = .1; F = .2
    assert M.forgetting(R) == approx(.2)


def test_two_task_bwt_is_minus_half():
    # R = [[1, 0], [.5, 1]]: task 0 drops from 1.0 to .5 after task 1.
    # BWT = (R10 - R00)/1 = .5 - 1 = -.5 (continuum 1.2.7 reports 0.0 here)
    # F = max(R00) - R10 = .5; ACC = (.5 + 1)/2 = .75
    R = [[1.0, 0.0], [0.5, 1.0]]
    assert M.backward_transfer(R) == approx(-0.5)
    assert M.forgetting(R) == approx(0.5)
    assert M.average_accuracy(R) == approx(0.75)
    assert M.backward_transfer(np.array(R)) == approx(-0.5)
    assert M.backward_transfer(pd.DataFrame(R)) == approx(-0.5)


def test_forgetting_uses_best_earlier_accuracy_not_first():
    # regime 0: .6 at its end, .9 after phase 1, .4 at the end -> f0 = .9 - .4 = .5 (BWT uses the
    # end-of-own-phase value: .4 - .6 = -.2); regime 1: f1 = max(R11=.8, R21=.7) - .5 = .3
    # F = (.5 + .3)/2 = .4; BWT (j < K-1 only) = ((.4 - .6) + (.5 - .8))/2 = -.25
    R = [[.6, .1, .1], [.9, .8, .1], [.4, .5, .7]]
    assert M.forgetting(R) == approx((.5 + .3) / 2)
    assert M.backward_transfer(R) == approx(-.25)


def test_matrix_metrics_single_phase_and_bad_shape():
    assert M.average_accuracy([[.9]]) == approx(.9)
    assert math.isnan(M.backward_transfer([[.9]]))
    assert math.isnan(M.forgetting([[.9]]))
    assert math.isnan(M.average_accuracy(np.zeros((0, 0))))
    with pytest.raises(ShiftsimError, match="square"):
        M.backward_transfer([[1.0, 0.5]])


def test_missing_phase_end_evals(evals_a, phases_a):
    # the run diverged during phase 2: no phase-end evaluation at step 15
    ev = evals_a[evals_a.step < 15]
    R = M.accuracy_matrix(ev, phases_a)
    assert R.iloc[:2].to_numpy() == approx(np.array([[.8, .1, .2], [.6, .8, .3]]))
    assert R.iloc[2].isna().all()
    assert math.isnan(M.average_accuracy(R))
    assert math.isnan(M.backward_transfer(R))
    assert math.isnan(M.forgetting(R))
    # no evaluations at all (empty frame with or without columns)
    for empty in (evals_a.iloc[:0], pd.DataFrame()):
        assert M.accuracy_matrix(empty, phases_a).isna().all().all()
        assert M.min_accuracy(empty, phases_a).isna().all()
        assert math.isnan(M.anytime_accuracy(empty, phases_a))
        wc = M.worst_case_accuracy(empty, phases_a)
        assert wc.empty and list(wc.columns) == ["step", "phase", "acc", "min_acc", "wc_acc"]


def test_min_accuracy(evals_a, phases_a):
    # min-ACC_0: regime 0 at evaluations with phase > 0: .4 .6 .6 .5 .55 .5 -> .4
    #   (the phase-end evaluation of phase 0 itself, .8, is not "after" phase 0)
    # min-ACC_1: regime 1 with phase > 1: .6 .5 .7 -> .5; min-ACC_2: none -> NaN
    s = M.min_accuracy(evals_a, phases_a)
    assert s.index.tolist() == [0, 1, 2]
    assert s.iloc[:2].tolist() == approx([.4, .5])
    assert math.isnan(s.iloc[2])


def test_worst_case_accuracy(evals_a, phases_a):
    wc = M.worst_case_accuracy(evals_a, phases_a)
    assert wc["step"].tolist() == [2, 4, 5, 7, 9, 10, 12, 14, 15]
    assert wc["phase"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # phase 0: WC = acc(r0): .5 .7 .8
    # step 7:  acc(r1) = .5, min-ACC_0 so far = .4            -> .5*.5 + .5*.4 = .45
    # step 9:  acc(r1) = .7, min-ACC_0 = min(.4, .6) = .4      -> .35 + .2 = .55
    # step 10: acc(r1) = .8, min-ACC_0 = .4                    -> .4 + .2 = .6
    # step 12: acc(r2) = .6, min-ACC_0 = .4, min-ACC_1 = .6 -> mean .5 -> .6/3 + 2/3*.5
    # step 14: acc(r2) = .8, min-ACC_1 = min(.6, .5) = .5 -> mean .45 -> .8/3 + 2/3*.45
    # step 15: acc(r2) = .9, mean(.4, .5) = .45                -> .3 + .3 = .6
    expected = [.5, .7, .8, .45, .55, .6, .6 / 3 + 2 / 3 * .5, .8 / 3 + 2 / 3 * .45, .6]
    assert wc["wc_acc"].tolist() == approx(expected)
    assert wc["acc"].tolist() == approx([.5, .7, .8, .5, .7, .8, .6, .8, .9])
    assert wc["min_acc"].iloc[:3].isna().all()
    assert wc["min_acc"].iloc[3:].tolist() == approx([.4, .4, .4, .5, .45, .45])


def test_anytime_accuracy(evals_a, phases_a):
    # per point, mean over the regimes seen so far (phase-end rows of unseen regimes left out):
    #   2: .5   4: .7   5: .8 (r0 only)   7: (.4+.5)/2   9: (.6+.7)/2   10: (.6+.8)/2
    #   12: (.5+.6+.6)/3   14: (.55+.5+.8)/3   15: (.5+.7+.9)/3
    points = [.5, .7, .8, .45, .65, .7, 1.7 / 3, 1.85 / 3, .7]
    assert M.anytime_accuracy(evals_a, phases_a) == approx(sum(points) / 9)  # = 17.05/27


def test_recurring_regime(phases_a):
    # phases 0 and 2 share regime 0. Phase-end evaluations only:
    #   step 5 (phase 0): r0 .8, r1 .1; step 10: r0 .6, r1 .8; step 15: r0 .9, r1 .7
    ph = make_phases([5, 5, 5], regimes=[0, 1, 0])
    ev = make_evals([(5, 0, True, {0: .8, 1: .1}), (10, 1, True, {0: .6, 1: .8}),
                     (15, 2, True, {0: .9, 1: .7})])
    R = M.accuracy_matrix(ev, ph)
    # one column per distinct regime: the repeat shares regime 0's column
    assert R.columns.tolist() == [0, 1] and R.index.tolist() == [0, 1, 2]
    assert R.to_numpy() == approx(np.array([[.8, .1], [.6, .8], [.9, .7]]))
    # ACC over the 2 distinct regimes = (.9 + .7)/2 (counting regime 0 twice would give 2.5/3)
    assert M.average_accuracy(R) == approx(.8)
    # the last phase trains regime 0, so BWT and forgetting are over regime 1 only:
    #   BWT = R[2, 1] - R[1, 1] = .7 - .8; f_1 = max(R[1, 1]) - R[2, 1] = .1
    assert M.backward_transfer(R) == approx(-.1)
    assert M.forgetting(R) == approx(.1)
    # anytime: 5 -> .8 (r0); 10 -> (.6+.8)/2 = .7; 15 -> regimes {0, 1} counted once:
    #   (.9+.7)/2 = .8; mean = 2.3/3
    assert M.anytime_accuracy(ev, ph) == approx(2.3 / 3)


def test_duplicate_eval_rows_are_averaged(phases_a):
    # a periodic and a phase-end evaluation at the same step: one point, accuracies averaged
    ev = make_evals([(5, 0, False, {0: .6}), (5, 0, True, {0: .8, 1: .1, 2: .2})])
    wc = M.worst_case_accuracy(ev, phases_a)
    assert wc["step"].tolist() == [5] and wc["acc"].tolist() == approx([.7])
    assert M.accuracy_matrix(ev, phases_a).iloc[0].tolist() == approx([.8, .1, .2])


# ----------------------------------------------------------------------------------------------
# summarize


def test_summarize(trace_a, phases_a, evals_a):
    s = M.summarize(trace_a, phases_a, evals_a, window=2, onset=1)
    assert list(s.columns) == M.SUMMARY_COLUMNS
    assert s["phase"].tolist() == [0, 1, 2]
    assert s["name"].tolist() == ["p0", "p1", "p2"]
    assert s["start"].tolist() == [0, 5, 10]
    assert s["steps"].tolist() == [5, 5, 5] and s["steps_run"].tolist() == [5, 5, 5]
    assert s["samples"].tolist() == [50, 50, 50]
    assert s["online_acc"].tolist() == approx([.66, .52, .78])
    assert s["online_acc_true"].tolist() == approx([.66, .66, .78])
    # loss: mean per step: 5.5/5, 8/5, 3.5/5
    assert s["loss"].tolist() == approx([1.1, 1.6, .7])
    # phase 0 plateau = mean(.9, .9); recovery values as in test_recovery_default_plateau
    assert s["plateau"].tolist() == approx([.9, .8, .95])
    assert s["ceiling"].tolist() == [1.0, .5, 1.0]
    assert math.isnan(s["pre"].iloc[0]) and s["pre"].iloc[1:].tolist() == approx([.9, .8])
    assert math.isnan(s["target"].iloc[0])
    assert s["censored"].tolist() == [False, True, False]
    assert s["recovery_steps"].iloc[:2].isna().all() and s["recovery_steps"].iloc[2] == 3.0
    assert s["recovery_samples"].iloc[2] == 30.0
    assert s["drop"].iloc[1:].tolist() == approx([.8, .4])
    assert s["deficit"].iloc[1:].tolist() == approx([.35, .23])
    assert math.isnan(s["drop"].iloc[0]) and math.isnan(s["deficit"].iloc[0])
    # heldout = diagonal of R: .8, .8, .9
    assert s["heldout_acc"].tolist() == approx([.8, .8, .9])
    assert s["censored"].dtype == bool and s["steps_run"].dtype == np.int64


def test_summarize_without_evals_and_defaults(trace_a, phases_a):
    s = M.summarize(trace_a, phases_a, onset=1)
    assert s["heldout_acc"].isna().all()
    # default window 20: phase 0 plateau = .66 (all of it), everything censored (m = 20 > 5)
    assert s["plateau"].tolist() == approx([.66, .52, .78])
    assert s["censored"].tolist() == [False, True, True]


def test_summarize_truncated_run(trace_a, phases_a, evals_a):
    # diverged at step 12: phase 2 ran 2 steps
    s = M.summarize(trace_a[trace_a.step < 12], phases_a, evals_a[evals_a.step <= 12], window=2,
                    onset=1)
    assert s["steps"].tolist() == [5, 5, 5] and s["steps_run"].tolist() == [5, 5, 2]
    assert s["samples"].tolist() == [50, 50, 20]
    assert s["online_acc"].iloc[2] == approx(11 / 20)
    assert s["loss"].iloc[2] == approx(1.0)
    assert bool(s["censored"].iloc[2]) and s["deficit"].iloc[2] == approx(.075)
    assert math.isnan(s["heldout_acc"].iloc[2])  # no phase-end evaluation of phase 2
    # diverged at step 10: phase 2 has no rows -> NaN metrics, zero counts
    s = M.summarize(trace_a[trace_a.step < 10], phases_a, window=2, onset=1)
    last = s.iloc[2]
    assert (last.steps_run, last.samples) == (0, 0)
    for col in ("online_acc", "online_acc_true", "loss", "pre", "plateau", "target",
                "recovery_steps", "recovery_samples", "drop", "deficit"):
        assert math.isnan(last[col]), col
    assert bool(last.censored) is False and last.ceiling == 1.0
    # empty trace: every phase present with zero counts
    s = M.summarize(trace_a.iloc[:0], phases_a)
    assert s["steps_run"].tolist() == [0, 0, 0] and s["online_acc"].isna().all()


# ----------------------------------------------------------------------------------------------
# purity and input errors


def test_functions_do_not_mutate_inputs(trace_a, phases_a, evals_a):
    shuffled = trace_a.sample(frac=1.0, random_state=1)
    copies = [x.copy() for x in (shuffled, phases_a, evals_a)]
    M.trailing_accuracy(shuffled, window=2)
    M.recovery(shuffled, phases_a, window=2)
    M.summarize(shuffled, phases_a, evals_a, window=2)
    M.worst_case_accuracy(evals_a, phases_a)
    M.anytime_accuracy(evals_a, phases_a)
    for before, after in zip(copies, (shuffled, phases_a, evals_a)):
        pd.testing.assert_frame_equal(before, after)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda t, p: M.recovery(t.drop(columns="correct"), p), "missing column.*'correct'"),
        (lambda t, p: M.recovery(t, p.drop(columns="ceiling")), "missing column.*'ceiling'"),
        (lambda t, p: M.recovery(t, p, window=0), r"window must be a positive integer, got 0"),
        (lambda t, p: M.trailing_accuracy(t, window=2.5), "window must be a positive integer"),
        (lambda t, p: M.recovery(t, p, q=0), r"q must be in \(0, 1\], got 0"),
        (lambda t, p: M.recovery(t, p, q=1.5), r"q must be in \(0, 1\], got 1.5"),
        (lambda t, p: M.recovery(t, p, reference="best"), "unknown reference 'best'"),
        (lambda t, p: M.recovery(t, p, reference=1.5), r"reference must be in \[0, 1\]"),
        (lambda t, p: M.recovery(t, p, reference=None), "reference must be 'plateau'"),
        (lambda t, p: M.recovery(t, p, persistence=0), "persistence must be a positive integer"),
        (lambda t, p: M.online_accuracy(t, labels="clean"), "unknown labels 'clean'"),
        (lambda t, p: M.summarize(t, p, windw=3), "unknown summarize option 'windw'"),
        (lambda t, p: recovery_records(t, p, windw=3), "unknown recovery option 'windw'"),
        (lambda t, p: M.summarize(t, p, window=-1), "window must be a positive integer"),
        (lambda t, p: M.recovery(t.to_dict(), p), "trace must be a pandas DataFrame"),
        (lambda t, p: M.recovery(t, p.iloc[:2]), r"trace has phase\(s\) \[2\]"),
        (lambda t, p: M.recovery(t.assign(phase=t.phase[::-1].to_numpy()), p),
         "must not decrease"),
        (lambda t, p: M.recovery(t.assign(step=t.step // 2), p), "more than once"),
        (lambda t, p: M.accuracy_matrix(make_evals().drop(columns="phase_end"), p),
         "missing column.*'phase_end'"),
        (lambda t, p: M.mean_interval([1, 2], level=1.0), "level must be in"),
        (lambda t, p: M.mean_interval([1, 2], method="normal"), "unknown interval method"),
        (lambda t, p: M.median_recovery([1, 2], [False]), "same length"),
        (lambda t, p: M.median_recovery([1, 2], [False, None]), "missing value"),
        (lambda t, p: M.paired_difference([1, 2], [1]), "same length"),
    ],
)
def test_bad_input_raises(trace_a, phases_a, call, match):
    with pytest.raises(ShiftsimError, match=match):
        call(trace_a, phases_a)


def test_errors_are_value_errors(trace_a, phases_a):
    with pytest.raises(ValueError):
        M.recovery(trace_a, phases_a, q=2)


# ----------------------------------------------------------------------------------------------
# study-level aggregation


def test_mean_interval_t():
    # [1, 2, 3]: mean 2, s = 1, t_{.975, 2} = 4.3027 (t table) -> 2 ± 4.3027/√3 = 2 ± 2.4841
    mean, low, high = M.mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert (low, high) == approx((2 - 2.48414, 2 + 2.48414), abs=1e-4)
    # level .9: t_{.95, 2} = 2.9200 -> 2 ± 1.6859
    _, low, high = M.mean_interval([1.0, 2.0, 3.0], level=0.9)
    assert (low, high) == approx((2 - 1.68587, 2 + 1.68587), abs=1e-4)
    # identical values: zero-width interval
    assert M.mean_interval([.5, .5, .5]) == approx((.5, .5, .5))


def test_mean_interval_bootstrap():
    m, low, high = M.mean_interval([2.0, 2.0, 2.0], method="bootstrap")
    assert (m, low, high) == (2.0, 2.0, 2.0)
    x = [0.0, 1.0, 0.0, 1.0, 1.0]
    m, low, high = M.mean_interval(x, method="bootstrap", seed=5, n_boot=2000)
    assert m == approx(.6) and 0.0 <= low < .6 < high <= 1.0
    assert M.mean_interval(x, method="bootstrap", seed=5, n_boot=2000) == (m, low, high)


def test_mean_interval_single_seed_and_nan():
    m, low, high = M.mean_interval([0.7])
    assert m == 0.7 and math.isnan(low) and math.isnan(high)
    m, low, high = M.mean_interval([0.7], method="bootstrap")
    assert m == 0.7 and math.isnan(low) and math.isnan(high)
    assert all(math.isnan(v) for v in M.mean_interval([]))
    # NaN values are ignored: [1, NaN, 3] -> mean 2 over 2 values
    assert M.mean_interval([1.0, nan, 3.0])[0] == 2.0


def test_median_recovery():
    # 3, 5, +inf -> median 5
    assert M.median_recovery([3, 5, nan], [False, False, True]) == 5.0
    # even count, fewer than half censored: 2, 4, 6, inf -> (4 + 6)/2 = 5
    assert M.median_recovery([2, 4, 6, nan], [False, False, False, True]) == 5.0
    # exactly half censored: 3, 7, inf, inf -> undefined
    assert math.isnan(M.median_recovery([3, 7, nan, nan], [False, False, True, True]))
    # all censored -> undefined
    assert math.isnan(M.median_recovery([nan, nan], [True, True]))
    # a censored run's time is ignored even when given
    assert M.median_recovery([1, 2, 99], [False, False, True]) == 2.0
    # a run that never reached the phase (NaN, not censored) is left out: 3, 5 -> 4
    assert M.median_recovery([3, 5, nan], [False, False, False]) == 4.0
    # single seed
    assert M.median_recovery([4], [False]) == 4.0
    assert math.isnan(M.median_recovery([nan], [True]))
    assert math.isnan(M.median_recovery([], []))


def test_median_recovery_from_summaries(trace_a, phases_a):
    # three "seeds": phase 2 recovers at 3 (trace A), censored (diverged at 12), 0 (q = .5 abs)
    s1 = M.summarize(trace_a, phases_a, window=2, onset=1)
    s2 = M.summarize(trace_a[trace_a.step < 12], phases_a, window=2, onset=1)
    s3 = M.summarize(trace_a, phases_a, window=2, reference=0.5, q=0.5, onset=1)
    p2 = pd.concat([s.iloc[[2]] for s in (s1, s2, s3)])
    # 3, inf, 0 -> median 3; censored fraction 1/3
    assert M.median_recovery(p2["recovery_steps"], p2["censored"]) == 3.0
    assert M.censored_fraction(p2["censored"]) == approx(1 / 3)


def test_censored_fraction():
    assert M.censored_fraction([True, False, False, True]) == .5
    assert M.censored_fraction(np.array([True])) == 1.0
    assert math.isnan(M.censored_fraction([]))


def test_paired_difference():
    # by seed: 0: .8 - .6 = .2; 1: .7 - .75 = -.05; 2: .9 - .9 = 0
    a = pd.Series({0: .8, 1: .7, 2: .9})
    b = pd.Series({2: .9, 0: .6, 1: .75})  # other order: paired by seed, not position
    d = M.paired_difference(a, b)
    # mean .05; s² = ((.15)² + (.1)² + (.05)²)/2 = .0175; se = √(.0175/3) = .076376;
    # half = 4.30265 * .076376 = .328617
    assert d["mean"] == approx(.05)
    assert (d["low"], d["high"]) == approx((.05 - .328617, .05 + .328617), abs=1e-5)
    assert (d["wins_a"], d["wins_b"], d["ties"], d["n"]) == (1, 1, 1, 3)
    # lower is better (e.g. recovery times): the wins swap
    d = M.paired_difference(a, b, higher_is_better=False)
    assert (d["wins_a"], d["wins_b"], d["ties"]) == (1, 1, 1)
    d = M.paired_difference([3.0, 5.0], [4.0, 4.0], higher_is_better=False)
    assert (d["wins_a"], d["wins_b"], d["mean"]) == (1, 1, 0.0)


def test_paired_difference_missing_seeds_and_single_pair():
    # seeds only in one side and NaN pairs are dropped: seeds 0 and 1 remain (.2, .1)
    a = pd.Series({0: .8, 1: .7, 2: nan, 5: .9})
    b = pd.Series({0: .6, 1: .6, 2: .5, 7: .1})
    d = M.paired_difference(a, b)
    assert d["n"] == 2 and d["mean"] == approx(.15) and d["wins_a"] == 2
    d = M.paired_difference([0.8], [0.6])  # one seed: no interval
    assert d["n"] == 1 and d["mean"] == approx(.2) and math.isnan(d["low"])
    assert math.isnan(d["high"])


# ----------------------------------------------------------------------------------------------
# scale


def test_long_trace_is_vectorised():
    # 100k steps in 10 phases: a plateau that is reached and held; must be quick and exact
    T, K = 100_000, 10
    rng = np.random.default_rng(0)
    correct = rng.integers(0, 33, T)
    tr = pd.DataFrame({"step": np.arange(T), "phase": np.repeat(np.arange(K), T // K),
                       "n": 32, "correct": correct, "correct_true": correct, "loss": 1.0})
    ph = make_phases([T // K] * K)
    s = M.summarize(tr, ph, window=20)
    assert len(s) == K and s["steps_run"].sum() == T
    abar = M.trailing_accuracy(tr, window=20)
    # spot-check one value by hand-style sum: step 12_345 (phase 1, starts at 10_000)
    t = 12_345
    assert abar[t] == approx(correct[t - 19:t + 1].sum() / (20 * 32))
    # first step of phase 1 only averages itself
    assert abar[10_000] == approx(correct[10_000] / 32)


def test_accuracy_matrix_equals_a_grouped_mean():
    """R is the mean of the phase-end rows per (phase, regime), NaN skipped, rows outside the
    plan left out: against pandas' groupby on random evaluations (exact where a cell has at
    most two rows, as in real runs; pandas sums longer groups with compensation)."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        K = int(rng.integers(1, 6))
        ph = pd.DataFrame({"phase": np.arange(K), "regime": rng.integers(0, 4, K)})
        n = int(rng.integers(0, 30))
        ev = pd.DataFrame({"step": rng.integers(0, 50, n), "phase": rng.integers(0, K + 1, n),
                           "regime": rng.integers(0, 5, n),
                           "accuracy": np.where(rng.random(n) < 0.1, np.nan, rng.random(n)),
                           "phase_end": rng.random(n) < 0.7})
        R = M.accuracy_matrix(ev, ph)
        regs = list(dict.fromkeys(ph["regime"].tolist()))
        end = ev[ev["phase_end"]]
        ref = end.groupby(["phase", "regime"])["accuracy"].mean()
        rows = end.groupby(["phase", "regime"]).size()
        for k in range(K):
            for j, r in enumerate(regs):
                want = ref.get((k, r), math.nan)
                got = R.iloc[k, j]
                if math.isnan(want):
                    assert math.isnan(got)
                elif rows.get((k, r), 0) <= 2:
                    assert got == want
                else:
                    assert got == pytest.approx(want, rel=1e-15, abs=1e-15)
