"""Grams: a float64 reference transcription of spec §6.1, the spec's test vector, and both
public implementations as oracles (pytorch-optimizer: paper eps; grams-pytorch: official eps)."""

from __future__ import annotations

import math

import pytest
import torch
from test_optim_common import (
    GROUP_OF,
    assert_traj_close,
    batch_loss,
    groups_of,
    init_params,
    run_optimizer,
    run_reference,
)

from shiftsim.errors import ShiftsimError
from shiftsim.optim import Grams
from shiftsim.optim.grams import grams


def grams_reference(hps, eps_mode="paper"):
    m = v = None

    def step(t, ps, gs, loss):
        nonlocal m, v
        if m is None:
            m = [torch.zeros_like(p) for p in ps]
            v = [torch.zeros_like(p) for p in ps]
        for i, (p, g) in enumerate(zip(ps, gs)):
            hp = hps[GROUP_OF[i]]
            b1, b2 = hp["betas"]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            if eps_mode == "paper":
                u = (m[i] / (1 - b1 ** t)) / ((v[i] / (1 - b2 ** t)).sqrt() + hp["eps"])
            else:  # eps added to sqrt(v) before the bias correction
                u = math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m[i] / (v[i].sqrt() + hp["eps"])
            p.sub_(hp["lr"] * (torch.sign(g) * u.abs() + hp["weight_decay"] * p))

    return step


HP = [dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01),
      dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.1)]


@pytest.mark.parametrize("eps_mode", ["paper", "official"])
def test_matches_float64_reference(eps_mode):
    ours = run_optimizer(lambda g: Grams(g, eps_mode=eps_mode), 60, hp0=HP[0], hp1=HP[1])
    ref = run_reference(grams_reference(HP, eps_mode), 60)
    assert_traj_close(ours, ref)


def test_spec_vector():
    """Spec §6.2: theta_0 = 0, gradients (1, -0.05, 0.3), lr 1e-3, defaults."""
    for mode, want in (("paper", [-9.99999e-4, -3.6795745e-4, -1.01945157e-3]),
                       ("official", [-9.99968e-4, -3.6794590e-4, -1.01942138e-3])):
        w = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
        opt = Grams([w], lr=1e-3, eps_mode=mode)
        got = []
        for g in (1.0, -0.05, 0.3):
            w.grad = torch.tensor([g], dtype=torch.float64)
            opt.step()
            got.append(w.item())
        assert got == pytest.approx(want, rel=6e-7)  # the digits the spec prints
    # at step 2 Grams follows sign(g) < 0 (moves +0.632 lr), where Adam follows sign(m) > 0
    assert got[1] - got[0] == pytest.approx(0.632e-3, abs=1e-6)


def test_zero_gradient_coordinate_does_not_move():
    w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = Grams([w], lr=1e-2)
    w.grad = torch.tensor([1.0, 1.0], dtype=torch.float64)
    opt.step()
    x = w.detach().clone()
    w.grad = torch.tensor([0.0, 1.0], dtype=torch.float64)
    opt.step()
    assert w[0].item() == x[0].item() and w[1].item() < x[1].item()


def test_flip_fraction_diagnostic():
    w = torch.nn.Parameter(torch.zeros(4))
    opt = Grams([w], track_flips=True)
    assert list(opt.diagnostics()) == ["flip_fraction"]
    w.grad = torch.tensor([1.0, 1.0, 1.0, 1.0])
    opt.step()
    w.grad = torch.tensor([-0.01, 1.0, -0.01, 1.0])  # m stays positive in coordinates 0, 2
    opt.step()
    assert opt.diagnostics()["flip_fraction"].item() == 0.5
    assert Grams([w]).diagnostics() == {}


def test_eps_mode_is_checked():
    with pytest.raises(ShiftsimError, match="unknown eps_mode 'adam'; allowed: 'paper'"):
        Grams([torch.nn.Parameter(torch.zeros(1))], eps_mode="adam")


# ----------------------------------------------------------------------------- oracles


def _vs_oracle(make_theirs, eps_mode, steps=50):
    ps_a = [torch.nn.Parameter(p) for p in init_params()]
    ps_b = [torch.nn.Parameter(p) for p in init_params()]
    ours = Grams(groups_of(ps_a, HP[0], HP[1]), eps_mode=eps_mode)
    theirs = make_theirs(groups_of(ps_b, HP[0], HP[1]))
    for t in range(steps):
        for ps, opt in ((ps_a, ours), (ps_b, theirs)):
            opt.zero_grad()
            batch_loss(ps, t).backward()
            grads = [p.grad.clone() for p in ps]
            opt.step()
            if opt is ours:  # ours leaves p.grad alone (grams-pytorch overwrites it)
                assert all(torch.equal(p.grad, g) for p, g in zip(ps, grads))
        for x, y in zip(ps_a, ps_b):
            torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-14)


def test_pytorch_optimizer_grams_oracle():
    po = pytest.importorskip("pytorch_optimizer")
    _vs_oracle(lambda g: po.Grams(g), "paper")
    _vs_oracle(lambda g: po.Grams(g, foreach=True), "paper")


def test_grams_pytorch_oracle():
    official = pytest.importorskip("grams")
    _vs_oracle(lambda g: official.Grams(g), "official")


def test_functional_kernel_per_tensor_steps():
    p, m, v = torch.zeros(2), torch.zeros(2), torch.zeros(2)
    q, mq, vq = torch.zeros(2), torch.zeros(2), torch.zeros(2)
    g = torch.tensor([1.0, -2.0])
    grams([p, q], [g, g], [m, mq], [v, vq], step=[1, 3], lr=1e-3)
    assert p.tolist() == pytest.approx([-1e-3, 1e-3], rel=1e-5)
    assert q[0].item() != p[0].item()  # step 3: other bias corrections


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", [
    dict(lr=[1e-3, 1e-2, 1e-4, 1e-3], wd=[0.01, 0.0, 0.1, 0.01], flips=True),
    dict(lr=[1e-3] * 4, wd=[0.0] * 4, official=True),
    dict(lr=[1e-3] * 4, wd=[0.01] * 4, n=70_000, steps=6, flips=True),
])
def test_fleet_rows_step_is_grams_bit_for_bit(dtype, case):
    """The fleet steps Grams through ``_grams_rows`` (one row per member): bit for bit the
    functional ``grams`` (per-member hyperparameters, decay, both eps modes, the flip
    fraction, a zero gradient row, the multi-tensor and the one-tensor-at-a-time sizes)."""
    from shiftsim.optim._kernels import exact
    from shiftsim.optim.grams import _grams_stacked, grams, grams_init

    case = dict(case)
    n, steps, k = case.pop("n", 300), case.pop("steps", 25), 4
    like = torch.zeros((), dtype=dtype)
    hp = {"lr": exact(case["lr"], like), "beta1": exact([0.9, 0.8, 0.9, 0.95], like),
          "beta2": exact([0.999, 0.99, 0.999, 0.999], like),
          "eps": exact([1e-6, 1e-8, 1e-6, 1e-6], like),
          "weight_decay": exact(case["wd"], like) if any(case["wd"]) else 0}
    flags = {"eps_mode": "official" if case.get("official") else "paper",
             "track_flips": case.get("flips", False)}
    gen = torch.Generator().manual_seed(0)
    pa = torch.randn(k, n, generator=gen, dtype=dtype)
    pb = pa.clone()
    sa, sb = grams_init([pa]), grams_init([pb])
    for t in range(steps):
        g = torch.randn(k, n, generator=gen, dtype=dtype)
        g[1] = 0 if t % 7 == 3 else g[1]
        fa = _grams_stacked(sa, [pa], [g.clone()], None, hp, flags)
        sb["step"] += 1
        fb = grams([pb], [g.clone()], sb["exp_avg"], sb["exp_avg_sq"], step=sb["step"],
                   lr=hp["lr"], beta1=hp["beta1"], beta2=hp["beta2"], eps=hp["eps"],
                   weight_decay=hp["weight_decay"], eps_mode=flags["eps_mode"],
                   learner_dims=1, track_flips=flags["track_flips"])
        assert torch.equal(pa, pb)
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(sa[key][0], sb[key][0]), key
        assert (fa == []) if fb is None else torch.equal(fa[0], fb)
