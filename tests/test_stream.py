import pytest
import torch

import shiftsim as ss
from shiftsim.stream import Stream


def test_sampling_without_replacement_within_a_pass_and_reshuffled(digits):
    sc = ss.Scenario(digits, [ss.Phase(200), ss.Phase(50)], batch_size=32, eval_every=0)
    st = Stream(sc, seed=0)
    plan = st.plan(0)
    per_pass = len(digits) // 32  # 44 full batches per pass
    first = plan.index[:per_pass].flatten()
    second = plan.index[per_pass:2 * per_pass].flatten()
    assert first.unique().numel() == first.numel() == per_pass * 32
    assert second.unique().numel() == second.numel()
    assert not torch.equal(first, second)  # reshuffled
    # a new phase starts a fresh pass, drawn independently
    p1 = st.plan(1).index[:per_pass].flatten() if st.plan(1).steps >= per_pass else \
        st.plan(1).index.flatten()
    assert p1.unique().numel() == p1.numel()


def test_labels_fixed_per_sample_within_a_phase_and_redrawn_from_originals(digits):
    sc = ss.label_flip_tasks(digits, rate=0.5, mode="other", tasks=3, steps_per_task=100,
                             batch_size=32)
    st = Stream(sc, seed=1)
    tables = []
    for k in (1, 2):
        plan = st.plan(k)
        idx, y = plan.index.flatten(), plan.y.flatten()
        table = torch.full((len(digits),), -1)
        table[idx] = y
        # a sample seen twice in a phase has the same label both times
        assert torch.equal(table[idx], y)
        # exactly round(0.5 * n_c) flipped per class, relative to the original labels
        assert torch.equal(plan.y_true.flatten(), digits.y_train[idx])
        tables.append(st.regime(sc.regime_of[k]).labels)
    for t in tables:
        flipped = t != digits.y_train
        counts = torch.bincount(digits.y_train[flipped], minlength=10)
        expected = torch.floor(0.5 * torch.bincount(digits.y_train, minlength=10) + 0.5)
        assert torch.equal(counts, expected.long())
    # phase 2 is a fresh draw, not a flip of phase 1's labels
    assert not torch.equal(tables[0], tables[1])


def test_recurring_regime_has_identical_tables(digits):
    sc = ss.recurring(digits, [[], [ss.LabelFlip(1.0), ss.PixelPermutation(1.0)]], cycles=2,
                      steps_per_phase=20)
    st = Stream(sc, seed=0)
    a, b = st.plan(1), st.plan(3)
    assert a.regime is b.regime
    x = digits.x_train[:5]
    reg = a.regime
    assert torch.equal(reg.inputs(torch.arange(5), st.noise), reg.inputs(torch.arange(5), st.noise))
    assert not torch.equal(reg.inputs(torch.arange(5), st.noise), x)


def test_gradual_ramp_mixes_regimes_with_the_stated_probability(digits):
    sc = ss.Scenario(digits, [ss.Phase(10), ss.Phase(400, [ss.LabelFlip(1.0)],
                                                       transition=ss.Gradual(400))],
                     batch_size=64, eval_every=0)
    st = Stream(sc, seed=0)
    plan = st.plan(1)
    frac = plan.n_new.double() / 64
    p = torch.tensor(ss.Gradual(400).probabilities())
    # averaged over 100-step blocks the fraction of new-regime samples tracks p(s)
    for lo in range(0, 400, 100):
        assert float(frac[lo:lo + 100].mean()) == pytest.approx(float(p[lo:lo + 100].mean()),
                                                                abs=0.03)
    # new-regime samples carry the new (permuted) labels, old ones the old labels
    for s in (50, 200):
        m = plan.is_new(s)
        y, yt = plan.y[s], plan.y_true[s]
        assert bool((y[m] != yt[m]).all()) and bool((y[~m] == yt[~m]).all())


def test_gradual_inputs_come_from_the_right_regime(digits):
    sc = ss.Scenario(digits, [ss.Phase(5), ss.Phase(20, [ss.Brightness(0.5)],
                                                     transition=ss.Gradual(20))],
                     batch_size=32, eval_every=0)
    st = Stream(sc, seed=0)
    plan = st.plan(1)
    for s in (3, 15):
        x = plan.inputs(s, st.noise)
        base = digits.x_train[plan.index[s]]
        m = plan.is_new(s)
        assert torch.equal(x[~m], base[~m])
        assert torch.allclose(x[m], (base[m] + 0.5).clamp(0, 1))


def test_class_prior_sampling(digits):
    w = [1.0] + [0.0] * 8 + [3.0]
    sc = ss.Scenario(digits, [ss.Phase(200, [ss.ClassPrior(w)])], batch_size=32, eval_every=0)
    y = Stream(sc, seed=0).plan(0).y_true.flatten()
    assert set(y.unique().tolist()) == {0, 9}
    assert float((y == 9).float().mean()) == pytest.approx(0.75, abs=0.03)


def test_heldout_labels_follow_concept_shifts_only(digits):
    sc = ss.Scenario(digits, [ss.Phase(5), ss.Phase(5, [ss.LabelFlip(1.0, "permute")]),
                              ss.Phase(5, [ss.LabelFlip(1.0, "other")])], eval_size=200)
    st = Stream(sc, seed=0)
    x0, y0 = st.heldout(0)
    _, y1 = st.heldout(1)
    _, y2 = st.heldout(2)
    assert bool((y1 != y0).all())  # permute: concept, the held-out labels move too
    assert torch.equal(y2, y0)  # other: noise, held-out labels stay clean
    # the permutation is the phase's: train and held-out agree on the class mapping
    mapping = {}
    reg = st.regime(1)
    for a, b in zip(digits.y_train.tolist(), reg.labels.tolist()):
        mapping[a] = b
    assert all(mapping[a] == b for a, b in zip(y0.tolist(), y1.tolist()))


def test_heldout_labels_of_partial_concept_shifts_are_the_majority_mapping(digits):
    # a partial permute mixes π(y) and y: held out, the concept a learner should hold is the
    # majority mapping (π(y) where ρ′ ≥ 0.5, y below), so held-out accuracy has ceiling 1
    for rho in (0.2, 0.5, 0.8):
        sc = ss.label_flip_tasks(digits, rate=rho, tasks=2, steps_per_task=5, eval_size=300)
        st = Stream(sc, seed=1)
        _, y0 = st.heldout(0)
        _, y1 = st.heldout(1)
        g = torch.Generator().manual_seed(ss.stream.derive_seed(1, "regime", 1))
        pi = sc.phases[1].shifts[0].draw(10, g)  # the regime's derangement
        concept = ss.stream.heldout_concept(sc, 1, 1)
        if rho < 0.5:
            assert torch.equal(y1, y0) and torch.equal(concept, torch.arange(10))
        else:
            assert torch.equal(y1, pi[y0]) and bool((y1 != y0).all())
            assert torch.equal(concept, pi)
        # the training labels of phase 1 are the mix: about ρ of them moved, all by π
        reg = st.regime(1)
        moved = reg.labels != digits.y_train
        assert float(moved.float().mean()) == pytest.approx(rho, abs=0.01)
        assert torch.equal(reg.labels[moved], pi[digits.y_train[moved]])


def test_partial_flip_keeps_later_regime_draws(digits):
    # the held-out relabel draw is still made, so a pixel permutation drawn after it in the same
    # regime is what it was before the held-out labels changed (results stay comparable)
    sc = ss.Scenario(digits, [ss.Phase(5), ss.Phase(5, [ss.LabelFlip(0.5),
                                                        ss.PixelPermutation(1.0)])])
    st = Stream(sc, seed=0)
    g = torch.Generator().manual_seed(ss.stream.derive_seed(0, "regime", 1))
    flip = sc.phases[1].shifts[0]
    mapping = flip.draw(10, g)
    flip.relabel(digits.y_train.cpu(), 10, mapping, g)
    flip.relabel(st.y_eval_cpu, 10, mapping, g)
    perm = sc.phases[1].shifts[1].prepare(digits.input_shape, g)
    assert torch.equal(st.regime(1).static[0][1], perm)


def test_max_average_accuracy_of_conflicting_regimes(digits):
    # permute at rate 1 in 3 tasks: no classifier is right on all three mappings of one input
    sc = ss.label_flip_tasks(digits, rate=1.0, tasks=3, steps_per_task=5)
    bound = ss.stream.max_average_accuracy(sc, 0)
    assert 1 / 3 <= bound < 0.5
    # with a rotation in the second regime the inputs differ: everything can be learned
    sc = ss.Scenario(digits, [ss.Phase(5), ss.Phase(5, [ss.LabelFlip(1.0), ss.Rotate(90)])])
    assert ss.stream.max_average_accuracy(sc, 0) == 1.0


def test_iteration_matches_plans_and_is_deterministic(tiny_scenario):
    a = list(Stream(tiny_scenario, seed=3))
    b = list(Stream(tiny_scenario, seed=3))
    c = list(Stream(tiny_scenario, seed=4))
    assert len(a) == 90 and [x.step for x in a] == list(range(90))
    assert all(torch.equal(x.x, y.x) and torch.equal(x.y, y.y) for x, y in zip(a, b))
    assert not all(torch.equal(x.index, y.index) for x, y in zip(a, c))


def _drawn_chance(stream, sc, phase):
    """By hand from the label table: class shares w_c split over the labels of class c."""
    labels = stream.regime(sc.regime_of[phase]).labels.cpu()
    counts = torch.bincount(stream.y_train_cpu, minlength=10).double()
    w = torch.tensor(sc.class_shares(phase))
    shares = torch.zeros(10, dtype=torch.float64)
    for c in range(10):
        labs = labels[stream.y_train_cpu == c]
        shares += w[c] * torch.bincount(labs, minlength=10).double() / counts[c]
    return float(shares.max())


def test_a_runs_chance_level_is_that_of_the_labels_its_stream_drew(digits):
    # a class prior of 10:1 and a full permute: the derangement moves the big class's share
    # (10/19) to another label, whose share it becomes; the expectation over derangements
    # (the scenario's plan) spreads it over all nine other labels instead
    prior = ss.ClassPrior((10,) + (1,) * 9)
    sc = ss.Scenario(digits, [ss.Phase(20), ss.Phase(20, [ss.LabelFlip(1.0), prior])],
                     batch_size=16)
    stream = Stream(sc, seed=3, device="cpu")
    assert stream.chance(1) == pytest.approx(10 / 19)
    assert stream.chance(1) == pytest.approx(_drawn_chance(stream, sc, 1))
    assert sc.chance(1) < 0.11  # the expectation understates it
    # a partial permute under the same prior: the big class keeps 1 − ρ′ of its share and
    # its label gets the flipped part of the class the derangement maps onto it
    part = ss.Scenario(digits, [ss.Phase(20), ss.Phase(20, [ss.LabelFlip(0.3), prior])])
    for seed in (0, 1):
        st = Stream(part, seed=seed, device="cpu")
        assert st.chance(1) == pytest.approx(_drawn_chance(st, part, 1))
        assert 0.7 * 10 / 19 < st.chance(1) < 0.7 * 10 / 19 + 0.3 / 19 + 0.01
    # a run records it in its phase plan (the clean phase keeps the class shares' maximum)
    res = ss.run(sc, ss.models.mlp(hidden=(8,)), ss.optim.spec("sgdm", lr=0.05), seed=3,
                 device="cpu")
    assert res.phases["chance"].tolist() == pytest.approx([sc.chance(0), 10 / 19])
