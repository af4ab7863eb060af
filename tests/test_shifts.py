import math

import numpy as np
import pytest
import torch

import shiftsim as ss
from shiftsim.shifts import SHIFT_TYPES, shift_from_dict
from shiftsim.shifts.label import choose_per_class


def _relabel(shift, y, c=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    mapping = shift.draw(c, g)
    return shift.relabel(y, c, mapping, g), mapping


Y = torch.arange(10).repeat_interleave(7)  # 7 samples of each of 10 classes


@pytest.mark.parametrize("mode", ["permute", "other", "uniform", "pair"])
@pytest.mark.parametrize("rate", [0.0, 0.3, 0.5, 1.0])
def test_label_flip_chooses_round_rate_per_class(mode, rate):
    new, mapping = _relabel(ss.LabelFlip(rate, mode), Y)
    k = math.floor(rate * 7 + 0.5)  # round(rate * n_c), halves up
    if mode == "uniform":
        # a chosen sample may draw its own class; unchosen ones never change
        changed = new != Y
        for c in range(10):
            assert int(changed[Y == c].sum()) <= k
        return
    changed = new != Y
    for c in range(10):
        assert int(changed[Y == c].sum()) == k
    if mode == "permute" and rate > 0:
        assert bool((mapping != torch.arange(10)).all())  # a derangement
        assert torch.equal(new[changed], mapping[Y[changed]])
    if mode == "pair":
        assert torch.equal(new[changed], (Y[changed] + 1) % 10)


def test_choose_per_class_counts_are_exact():
    y = torch.tensor([0] * 5 + [1] * 3 + [2] * 1)
    m = choose_per_class(y, 0.5, 3, torch.Generator().manual_seed(0))
    # round(2.5) = 3, round(1.5) = 2, round(0.5) = 1 (halves up)
    assert [int(m[y == c].sum()) for c in range(3)] == [3, 2, 1]


def test_other_mode_never_keeps_the_true_class_and_uniform_sometimes_does():
    y = torch.arange(10).repeat(500)
    other, _ = _relabel(ss.LabelFlip(1.0, "other"), y)
    assert bool((other != y).all())
    uniform, _ = _relabel(ss.LabelFlip(1.0, "uniform"), y)
    kept = float((uniform == y).float().mean())
    assert abs(kept - 0.1) < 0.02  # 1/C of uniform draws hit the true class


def test_ceilings_follow_the_spec():
    assert ss.LabelFlip(1.0, "permute").ceiling(10) == 1.0
    # a partial permute / pair mixes two mappings of one input: the majority one wins
    assert ss.LabelFlip(0.7, "pair").ceiling(10) == pytest.approx(0.7)
    for rho, c in ((0.2, 0.8), (0.5, 0.5), (0.8, 0.8)):
        assert ss.LabelFlip(rho, "permute").ceiling(10) == pytest.approx(c)
    assert ss.LabelFlip(0.4, "other").ceiling(10) == pytest.approx(0.6)
    assert ss.LabelFlip(0.95, "other").ceiling(10) == pytest.approx(0.95 / 9)
    assert ss.LabelFlip(0.5, "uniform").ceiling(4) == pytest.approx(1 - 0.5 + 0.5 / 4)
    # the noise modes' ceilings are at the nominal rate, whatever the class counts (realised
    # rates 2/4, 2/3, 3/5 would give 5/12 for other and 11/18 for uniform)
    assert ss.LabelFlip(0.5, "other").ceiling(3, counts=[4, 3, 5]) == pytest.approx(0.5)
    assert ss.LabelFlip(0.5, "uniform").ceiling(3, counts=[4, 3, 5]) == pytest.approx(
        1 - 0.5 + 0.5 / 3)
    # the expected label shares keep the realised rates (round(ρ n_c) samples move): class
    # shares 4/12, 3/12, 5/12 lose 2/12, 2/12, 3/12, each spread over the two other labels
    assert ss.LabelFlip(0.5, "other").label_shares(3, counts=[4, 3, 5]).tolist() == \
        pytest.approx([4.5 / 12, 3.5 / 12, 4 / 12])
    assert ss.LabelFlip(0.0, "other").label_kind == "none"
    assert ss.LabelFlip(0.2, "uniform").label_kind == "noise"
    assert ss.LabelFlip(0.2, "pair").label_kind == "concept + noise"
    assert ss.LabelFlip(1.0, "pair").label_kind == "concept"


def test_partial_permute_ceiling_uses_the_realised_per_class_rates():
    # 3 classes of 4, 5 and 6 samples at ρ = 0.5: round-half-up picks 2, 3 (2.5 -> 3), 3
    # -> ρ′ = .5, .6, .5 -> per class max(ρ′, 1 − ρ′) = .5, .6, .5, weighted by 4, 5, 6: 7.5/15
    flip = ss.LabelFlip(0.5, "permute")
    assert flip.realized_rates([4, 5, 6]).tolist() == pytest.approx([.5, .6, .5])
    assert flip.ceiling(3, counts=[4, 5, 6]) == pytest.approx((4 * .5 + 5 * .6 + 6 * .5) / 15)
    # with a class prior only class 1 is streamed: ceiling .6
    assert flip.ceiling(3, counts=[4, 5, 6], weights=[0, 1, 0]) == pytest.approx(.6)


def test_partial_permute_ceiling_on_digits():
    # the digits training split: ρ′_c = round(ρ n_c) / n_c; the scenario weights by class share
    d = ss.data.digits()
    counts = np.array(d.class_counts(), dtype=float)
    for rho in (0.2, 0.5, 0.8):
        sc = ss.label_flip_tasks(d, rate=rho, mode="permute", tasks=2, steps_per_task=5)
        r = np.floor(rho * counts + 0.5) / counts
        expected = float((np.maximum(r, 1 - r) * counts).sum() / counts.sum())
        assert sc.ceiling(1) == pytest.approx(expected)
        assert sc.ceiling(1) == pytest.approx(max(rho, 1 - rho), abs=0.005)
        assert sc.label_kind(1) == "concept + noise"


def test_rotate_moves_pixels_counter_clockwise_and_zero_fills():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 0, 2] = 1.0  # top centre
    r90 = ss.Rotate(90).apply(x, None, None)[0, 0]
    assert r90[2, 0] == pytest.approx(1.0, abs=1e-5)  # left centre
    assert float(r90.sum()) == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(ss.Rotate(0).apply(x, None, None), x, atol=1e-6)
    ones = torch.ones(1, 1, 6, 6)
    assert float(ss.Rotate(45).apply(ones, None, None)[0, 0, 0, 0]) < 0.5  # zero fill at corners


def test_gaussian_noise_has_the_stated_std_and_is_seeded():
    x = torch.zeros(200, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    out = ss.GaussianNoise(0.08).apply(x, None, g)
    assert float(out.std()) == pytest.approx(0.08, rel=0.02)
    again = ss.GaussianNoise(0.08).apply(x, None, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_blur_keeps_constants_and_mass_and_spreads_a_dot():
    const = torch.full((1, 1, 7, 7), 0.3)
    assert torch.allclose(ss.GaussianBlur(1.0).apply(const, None, None), const, atol=1e-6)
    dot = torch.zeros(1, 1, 15, 15)
    dot[0, 0, 7, 7] = 1.0
    out = ss.GaussianBlur(1.0).apply(dot, None, None)[0, 0]
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-5)
    # separable Gaussian: the neighbour / centre ratio is exp(-1/2) / 1 along an axis
    assert float(out[7, 8] / out[7, 7]) == pytest.approx(math.exp(-0.5), rel=1e-4)


def test_contrast_and_brightness_formulas():
    x = torch.tensor([[[[0.2, 0.6], [0.4, 0.8]]]])  # mean 0.5
    out = ss.Contrast(0.5).apply(x, None, None)
    assert torch.allclose(out, (x - 0.5) * 0.5 + 0.5)
    # RGB: the mean is the image's, over its three channels and pixels (2.8 / 6), not each
    # channel's
    rgb = torch.tensor([[0.0, 1.0], [0.2, 0.2], [0.6, 0.8]]).view(1, 3, 1, 2)
    m = 2.8 / 6
    want = [(v - m) * 0.5 + m for v in (0.0, 1.0, 0.2, 0.2, 0.6, 0.8)]
    assert ss.Contrast(0.5).apply(rgb, None, None).flatten().tolist() == pytest.approx(want)
    assert torch.allclose(ss.Brightness(0.1).apply(x, None, None), x + 0.1)
    rgb = torch.tensor([0.2, 0.4, 0.8]).view(1, 3, 1, 1)
    out = ss.Brightness(0.1).apply(rgb, None, None).flatten()
    # HSV value +0.1 with hue and saturation kept: channels scale by 0.9 / 0.8
    assert torch.allclose(out, torch.tensor([0.2, 0.4, 0.8]) * 0.9 / 0.8)


def test_pixel_permutation_moves_the_stated_fraction():
    shift = ss.PixelPermutation(0.5)
    perm = shift.prepare((1, 8, 8), torch.Generator().manual_seed(0))
    assert sorted(perm.tolist()) == list(range(64))
    assert int((perm != torch.arange(64)).sum()) <= 32
    x = torch.rand(3, 2, 8, 8)
    out = shift.apply(x, perm, None)
    # every channel is permuted the same way
    assert torch.equal(out.flatten(2), x.flatten(2)[:, :, perm])
    full = ss.PixelPermutation(1.0).prepare((20,), torch.Generator().manual_seed(1))
    assert int((full == torch.arange(20)).sum()) <= 5


def test_feature_scale_and_offset_per_feature():
    x = torch.ones(2, 3)
    assert ss.FeatureScale((1.0, 2.0, 3.0)).apply(x, None, None).tolist() == [[1, 2, 3]] * 2
    assert ss.FeatureOffset(-1.0).apply(x, None, None).tolist() == [[0, 0, 0]] * 2


def test_severity_presets_are_the_cifar_c_constants():
    assert [ss.GaussianNoise(severity=s).std for s in range(1, 6)] == [0.04, 0.06, 0.08, 0.09, 0.10]
    assert [ss.GaussianBlur(severity=s).sigma for s in range(1, 6)] == [0.4, 0.6, 0.7, 0.8, 1.0]
    assert [ss.Contrast(severity=s).factor for s in range(1, 6)] == [0.75, 0.5, 0.4, 0.3, 0.15]
    assert [ss.Brightness(severity=s).delta for s in range(1, 6)] == [0.05, 0.1, 0.15, 0.2, 0.3]


@pytest.mark.parametrize("shift", [
    ss.LabelFlip(0.4, "pair"), ss.ClassPrior((1, 2, 3)), ss.Rotate(severity=2),
    ss.GaussianNoise(0.1), ss.GaussianBlur(0.5), ss.Contrast(0.3), ss.Brightness(-0.1),
    ss.PixelPermutation(0.25), ss.FeatureScale((1.0, 2.0)), ss.FeatureOffset(0.5),
])
def test_shifts_round_trip_through_json(shift):
    import json

    d = json.loads(json.dumps(shift.to_dict()))
    assert shift_from_dict(d) == shift


def test_every_shift_type_is_registered():
    assert {"LabelFlip", "ClassPrior", "Rotate", "GaussianNoise", "GaussianBlur", "Contrast",
            "Brightness", "PixelPermutation", "FeatureScale", "FeatureOffset"} <= set(SHIFT_TYPES)
