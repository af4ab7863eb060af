"""TAM, AdaTAM, AdaTAMW: float64 reference transcriptions of spec §2, the spec's analytic
sequence and edge cases, pytorch-optimizer as an oracle where it implements the same math, and
the documented differences from it."""

from __future__ import annotations

import math

import pytest
import torch
from test_optim_common import (
    GROUP_OF,
    assert_traj_close,
    run_optimizer,
    run_reference,
)

from shiftsim.errors import ShiftsimError
from shiftsim.optim import TAM, AdaTAM, AdaTAMW, tam_lr_from_sgdm
from shiftsim.optim.tam import adatam, tam

# ----------------------------------------------------------------------------- references


def cosine(a: float, b: float, c: float) -> float:
    """S = <m, g> / (|m| |g|), 0 when a norm is 0, clipped to [-1, 1] (spec §2.2)."""
    if b == 0.0 or c == 0.0:
        return 0.0
    return max(-1.0, min(1.0, a / (math.sqrt(b) * math.sqrt(c))))


def tam_reference(hps, gamma, decoupled=False, scope="global", adam=False,
                  bias_correction=False):
    """Spec §2.1 (TAM) / §2.5 (AdaTAM, AdamW-style decay when ``decoupled``), written plainly:
    one model-wide cosine (``scope="global"``) or one per tensor."""
    m = v = None
    shat = [0.0] * 4

    def step(t, ps, gs, loss):
        nonlocal m, v
        if m is None:
            m = [torch.zeros_like(p) for p in ps]
            v = [torch.zeros_like(p) for p in ps]
        g = []
        for i, (p, gi) in enumerate(zip(ps, gs)):
            hp = hps[GROUP_OF[i]]
            g.append(gi + hp["weight_decay"] * p if not decoupled else gi)
        if scope == "global":
            s = cosine(sum(float((mi * gi).sum()) for mi, gi in zip(m, g)),
                       sum(float((mi * mi).sum()) for mi in m),
                       sum(float((gi * gi).sum()) for gi in g))
            shat[:] = [gamma * shat[0] + (1 - gamma) * s] * 4
        else:
            for i in range(4):
                s = cosine(float((m[i] * g[i]).sum()), float((m[i] * m[i]).sum()),
                           float((g[i] * g[i]).sum()))
                shat[i] = gamma * shat[i] + (1 - gamma) * s
        for i, p in enumerate(ps):
            hp = hps[GROUP_OF[i]]
            d = (1 + shat[i]) / 2
            lr, wd = hp["lr"], hp["weight_decay"]
            if not adam:
                m[i] = hp["momentum"] * m[i] + (hp["eps"] + d) * g[i]
                if decoupled:
                    p.mul_(1 - lr * wd)
                p.sub_(lr * m[i])
                continue
            b1, b2 = hp["betas"]
            m[i] = b1 * m[i] + (hp["torque_eps"] + d) * g[i]
            v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i]
            if decoupled:
                p.mul_(1 - lr * wd)
            if bias_correction:
                p.sub_(lr * (1 - b1) / (1 - b1 ** t) * m[i]
                       / ((v[i] / (1 - b2 ** t)).sqrt() + hp["eps"]))
            else:
                p.sub_(lr * m[i] / (v[i].sqrt() + hp["eps"]))

    return step


TAM_HP = [dict(lr=0.05, momentum=0.9, eps=1e-8, weight_decay=0.01),
          dict(lr=0.02, momentum=0.8, eps=1e-3, weight_decay=0.05)]
ADA_HP = [dict(lr=2e-3, betas=(0.9, 0.999), torque_eps=1e-8, eps=1e-8, weight_decay=0.01),
          dict(lr=1e-3, betas=(0.8, 0.99), torque_eps=1e-3, eps=1e-6, weight_decay=0.1)]


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("scope", ["global", "tensor"])
def test_tam_matches_float64_reference(decoupled, scope):
    ours = run_optimizer(lambda g: TAM(g, lr=0.05, gamma=0.7, scope=scope, decoupled=decoupled),
                         60, hp0=TAM_HP[0], hp1=TAM_HP[1])
    ref = run_reference(tam_reference(TAM_HP, 0.7, decoupled, scope), 60)
    assert_traj_close(ours, ref)


@pytest.mark.parametrize("cls", [AdaTAM, AdaTAMW])
@pytest.mark.parametrize("bias_correction", [False, True])
def test_adatam_matches_float64_reference(cls, bias_correction):
    ours = run_optimizer(lambda g: cls(g, gamma=0.8, bias_correction=bias_correction), 60,
                         hp0=ADA_HP[0], hp1=ADA_HP[1])
    ref = run_reference(tam_reference(ADA_HP, 0.8, cls is AdaTAMW, adam=True,
                                      bias_correction=bias_correction), 60)
    assert_traj_close(ours, ref)


@pytest.mark.parametrize("scope", ["global", "tensor"])
def test_tam_scaled_momentum_with_a_parameter_sitting_out(scope):
    """A tensor without a gradient for some steps keeps its momentum m unchanged (the scaled
    form has to rescale it); compared with a plain transcription that holds m itself."""
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(2)]
    ps = [torch.nn.Parameter(x.clone()) for x in xs]
    betas = [0.9, 0.5]
    opt = TAM([{"params": ps[:1]}, {"params": ps[1:], "momentum": betas[1]}], lr=0.1,
              scope=scope)
    m = [torch.zeros(4, 3, dtype=torch.float64) for _ in xs]
    shat = [0.0, 0.0]
    for t in range(12):
        gs = [torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in xs]
        live = [0] if t in (4, 5, 9) else [0, 1]
        for i, p in enumerate(ps):
            p.grad = gs[i].clone() if i in live else None
        opt.step()
        parts = {i: (float((m[i] * gs[i]).sum()), float((m[i] * m[i]).sum()),
                     float((gs[i] * gs[i]).sum())) for i in live}
        if scope == "global":
            s = cosine(*(sum(v[k] for v in parts.values()) for k in range(3)))
            shat[0] = shat[1] = 0.9 * shat[0] + 0.1 * s
        else:
            for i in live:
                shat[i] = 0.9 * shat[i] + 0.1 * cosine(*parts[i])
        for i in live:
            m[i] = betas[i] * m[i] + (1e-8 + (1 + shat[i]) / 2) * gs[i]
            xs[i] -= 0.1 * m[i]
        for i, p in enumerate(ps):
            torch.testing.assert_close(p.detach(), xs[i], rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(opt.momentum_buffer(p), m[i], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("scope", ["global", "tensor"])
def test_tam_kept_momentum_norm_stays_exact(scope):
    """TAM updates |m/sigma|^2 from each step's sums instead of re-reading the momentum: after
    300 float32 steps (with fully opposed and zero gradients mixed in) it still equals the
    norm of the buffer."""
    gen = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.zeros(s)) for s in ((40, 30), (30,), (300, 250))]
    opt = TAM([{"params": ps[:2]}, {"params": ps[2:], "momentum": 0.99}], lr=1e-3,
              scope=scope)
    prev = None
    for t in range(300):
        gs = [torch.randn(p.shape, generator=gen) + 0.3 for p in ps]
        if t % 50 == 7:
            gs = [-g for g in prev]
        if t % 50 == 30:
            gs = [torch.zeros_like(g) for g in gs]
        for p, g in zip(ps, gs):
            p.grad = g
        opt.step()
        prev = gs
    glob = opt.state["global"]
    if scope == "global":
        for j, group in enumerate(opt.param_groups):
            exact = sum(float(opt.state[p]["momentum_avg"].double().square().sum())
                        for p in group["params"])
            assert glob["momentum_sqnorm"][j].item() == pytest.approx(exact, rel=1e-5)
    else:
        for p in ps:
            exact = float(opt.state[p]["momentum_avg"].double().square().sum())
            assert opt.state[p]["momentum_sqnorm"].item() == pytest.approx(exact, rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", [
    dict(lr=[0.01, 0.1, 0.3, 1.0], wd=[0.0] * 4, decoupled=False, eps=[1e-8] * 4),
    dict(lr=[0.1] * 4, wd=[0.01] * 4, decoupled=False, eps=[1e-8] * 4),
    dict(lr=[0.1, 0.2, 0.1, 0.2], wd=[0.01, 0.0, 0.1, 0.01], decoupled=True, eps=[1e-3] * 4),
    dict(lr=[0.1] * 4, wd=[0.0] * 4, decoupled=False, eps=[0.0, 1e-8, 0.0, 1e-3]),
    dict(lr=[0.1] * 4, wd=[0.0] * 4, decoupled=False, eps=[0.0] * 4, n=70_000, steps=8),
])
def test_fleet_rows_step_is_tams_scaled_form(dtype, case, row_sums):
    """The fleet steps TAM (model-wide cosine) through ``_tam_rows``, one row per member:
    with torch's row sums bit for bit the numbers of the functional ``tam`` in its scaled form,
    with the native ones equal up to rounding (per-member hyperparameters, coupled and
    decoupled decay, eps 0 (the guarded lerp weight), a zero gradient row, and a row above the
    multi-tensor size (the one-tensor-at-a-time path))."""
    from shiftsim.optim._kernels import exact
    from shiftsim.optim.tam import _tam_stacked, _tam_stacked_init

    case = dict(case)
    n, steps, k = case.pop("n", 300), case.pop("steps", 30), 4
    like = torch.zeros((), dtype=dtype)
    hp = {"lr": exact(case["lr"], like), "momentum": exact([0.9, 0.5, 0.9, 0.99], like),
          "gamma": exact([0.9], like), "eps": exact(case["eps"], like),
          "weight_decay": exact(case["wd"], like) if any(case["wd"]) else 0}
    flags = {"scope": "global", "decoupled": case["decoupled"]}
    gen = torch.Generator().manual_seed(0)
    pa = torch.randn(k, n, generator=gen, dtype=dtype)
    pb = pa.clone()
    sa, sb = _tam_stacked_init([pa], hp, flags), _tam_stacked_init([pb], hp, flags)
    assert "momentum_scale" in sa
    for t in range(steps):
        g = torch.randn(k, n, generator=gen, dtype=dtype)
        g[1] = 0 if t % 7 == 3 else g[1]
        da = _tam_stacked(sa, [pa], [g.clone()], None, hp, flags)[0]
        db = tam([pb], [g.clone()], sb["momentum_buffers"], sb["smoothed_cosine"], lr=hp["lr"],
                 momentum=hp["momentum"], gamma=hp["gamma"], eps=hp["eps"],
                 weight_decay=hp["weight_decay"], decoupled=case["decoupled"], learner_dims=1,
                 momentum_scale=sb["momentum_scale"], momentum_sqnorm=sb["momentum_sqnorm"])
        assert row_sums(da, db)
        assert row_sums(pa, pb) and row_sums(sa["momentum_buffers"][0],
                                                   sb["momentum_buffers"][0])
        for key in ("momentum_scale", "momentum_sqnorm", "smoothed_cosine"):
            assert row_sums(sa[key], sb[key]), key
    assert not torch.equal(pa, torch.randn(k, n, generator=torch.Generator().manual_seed(0),
                                           dtype=dtype))  # it moved


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", [
    dict(lr=[1e-3, 1e-2, 1e-4, 1e-3], wd=[0.01] * 4, decoupled=False),
    dict(lr=[1e-3] * 4, wd=[0.01, 0.0, 0.1, 0.01], decoupled=True),
    dict(lr=[1e-3] * 4, wd=[0.0] * 4, decoupled=False, bias_correction=False),
    dict(lr=[1e-3] * 4, wd=[0.01] * 4, decoupled=True, n=70_000, steps=6),
])
def test_fleet_rows_step_is_adatam(dtype, case, row_sums):
    """The fleet steps AdaTAM(W) with a model-wide cosine through ``_adatam_rows`` (one row
    per member): with torch's row sums bit for bit the functional ``adatam``, with the native
    ones equal up to rounding (per-member hyperparameters, coupled and decoupled decay, with
    and without bias correction, a zero gradient row, the one-tensor-at-a-time size)."""
    from shiftsim.optim._kernels import exact
    from shiftsim.optim.tam import _adatam_stacked, adatam_init

    case = dict(case)
    n, steps, k = case.pop("n", 300), case.pop("steps", 25), 4
    bias_correction = case.pop("bias_correction", True)
    like = torch.zeros((), dtype=dtype)
    hp = {"lr": exact(case["lr"], like), "beta1": exact([0.9, 0.8, 0.9, 0.95], like),
          "beta2": exact([0.999] * k, like), "gamma": exact([0.9], like),
          "torque_eps": exact([1e-8] * k, like), "eps": exact([1e-8, 1e-6, 1e-8, 1e-8], like),
          "weight_decay": exact(case["wd"], like) if any(case["wd"]) else 0}
    flags = {"scope": "global", "bias_correction": bias_correction}
    update = _adatam_stacked(case["decoupled"]).update
    gen = torch.Generator().manual_seed(0)
    pa = torch.randn(k, n, generator=gen, dtype=dtype)
    pb = pa.clone()
    sa, sb = adatam_init([pa], learner_dims=1), adatam_init([pb], learner_dims=1)
    for t in range(steps):
        g = torch.randn(k, n, generator=gen, dtype=dtype)
        g[1] = 0 if t % 7 == 3 else g[1]
        da = update(sa, [pa], [g.clone()], None, hp, flags)[0]
        sb["step"] += 1
        db = adatam([pb], [g.clone()], sb["exp_avg"], sb["exp_avg_sq"], sb["smoothed_cosine"],
                    step=sb["step"], lr=hp["lr"], beta1=hp["beta1"], beta2=hp["beta2"],
                    gamma=hp["gamma"], torque_eps=hp["torque_eps"], eps=hp["eps"],
                    weight_decay=hp["weight_decay"], decoupled=case["decoupled"],
                    bias_correction=bias_correction, learner_dims=1)
        assert row_sums(da, db) and row_sums(pa, pb)
        for key in ("exp_avg", "exp_avg_sq"):
            assert row_sums(sa[key][0], sb[key][0]), key
        assert row_sums(sa["smoothed_cosine"], sb["smoothed_cosine"])


def test_adatam_tensor_scope_matches_reference():
    ours = run_optimizer(lambda g: AdaTAM(g, scope="tensor"), 50, hp0=ADA_HP[0], hp1=ADA_HP[1])
    ref = run_reference(tam_reference(ADA_HP, 0.9, adam=True, scope="tensor"), 50)
    assert_traj_close(ours, ref)


# ----------------------------------------------------------------------------- spec §2.2


def _steps(opt, w, grads):
    out = []
    for g in grads:
        w.grad = g.clone()
        opt.step()
        out.append(opt.diagnostics()["damping"].item())
    return out


def test_constant_gradient_sequence():
    """S_1 = 0, then S_t = 1: d_t = 1 - gamma^(t-1) / 2 = 0.5, 0.55, 0.595, ..."""
    w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = TAM([w], lr=0.1)
    g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    d = _steps(opt, w, [g] * 6)
    assert d == pytest.approx([1 - 0.9 ** (t - 1) / 2 for t in range(1, 7)], abs=1e-15)
    assert d[:3] == pytest.approx([0.5, 0.55, 0.595], abs=1e-15)
    # m_t = 0.9 m_{t-1} + (1e-8 + d_t) g; theta = -lr * sum m
    m, theta = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for dt in d:
        m = 0.9 * m + (1e-8 + dt) * g
        theta -= 0.1 * m
    torch.testing.assert_close(w.detach(), theta, rtol=1e-14, atol=1e-15)


def test_first_step_is_half_a_gradient_step():
    w = torch.nn.Parameter(torch.ones(2, 2, dtype=torch.float64))
    opt = TAM([w], lr=0.1, eps=0.0)
    w.grad = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(w.detach(), 1 - 0.05 * w.grad, rtol=0, atol=1e-16)
    assert opt.diagnostics()["cosine"].item() == 0.0


def test_zero_gradient_decays_momentum_and_cosine():
    w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = TAM([w], lr=1.0, eps=0.0)
    g = torch.tensor([1.0, 1.0], dtype=torch.float64)
    _steps(opt, w, [g, g])  # shat = 0.1 after step 2, m = 0.9 * 0.5 g + 0.55 g = g
    x = w.detach().clone()
    d = _steps(opt, w, [torch.zeros(2, dtype=torch.float64)])
    assert opt.diagnostics()["cosine"].item() == pytest.approx(0.09, abs=1e-15)
    assert d[0] == pytest.approx(0.545, abs=1e-15)
    torch.testing.assert_close(w.detach(), x - 0.9 * g)  # m just decays by beta
    assert torch.isfinite(w).all()


def test_fully_opposed_gradient():
    """g_2 = -g_1: S_2 = -1, shat_2 = -0.1, d_2 = 0.45, m_2 = 0.9 * 0.5 g - 0.45 g = 0."""
    w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = TAM([w], lr=1.0, eps=0.0)
    g = torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64)
    d = _steps(opt, w, [g, -g])
    assert d == pytest.approx([0.5, 0.45], abs=1e-15)
    assert opt.diagnostics()["cosine"].item() == pytest.approx(-0.1, abs=1e-15)
    torch.testing.assert_close(w.detach(), -0.5 * g, rtol=0, atol=1e-15)  # m_2 = 0: no move
    # with a torque epsilon the opposed gradient still contributes
    w2 = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt2 = TAM([w2], lr=1.0, eps=0.1)
    _steps(opt2, w2, [g, -g])
    torch.testing.assert_close(w2.detach(), -0.6 * g - (0.9 * 0.6 - 0.55) * g)


def test_adatam_first_step_is_large():
    """m_1 = g/2, sqrt(v_1) = sqrt(1 - beta2) |g|: about 15.8 lr sign(g) (spec §2.5)."""
    w = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = AdaTAM([w], lr=1e-3)
    w.grad = torch.tensor([3.0, -0.2, 1e-3, -50.0], dtype=torch.float64)
    opt.step()
    want = -1e-3 * (0.5 + 1e-8) * w.grad / (math.sqrt(1e-3) * w.grad.abs() + 1e-8)
    torch.testing.assert_close(w.detach(), want, rtol=1e-12, atol=0)
    assert abs(w[0].item()) / 1e-3 == pytest.approx(15.81, abs=0.01)


def test_tam_lr_from_sgdm_is_a_labelled_heuristic():
    assert tam_lr_from_sgdm(0.05) == pytest.approx(0.1)
    assert tam_lr_from_sgdm(0.05, expected_damping=0.8) == pytest.approx(0.0625)
    assert "heuristic" in tam_lr_from_sgdm.__doc__.lower()
    with pytest.raises(ShiftsimError, match="expected_damping"):
        tam_lr_from_sgdm(0.05, expected_damping=0.0)


def test_scope_and_gamma_are_shared_by_all_groups():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ShiftsimError, match="gamma must be the same in every param group"):
        TAM([{"params": [a]}, {"params": [b], "gamma": 0.5}], lr=0.1)
    with pytest.raises(ShiftsimError, match="unknown scope 'layer'"):
        TAM([a], lr=0.1, scope="layer")


# ----------------------------------------------------------------------------- oracles


def test_pytorch_optimizer_adatam_on_a_one_element_parameter():
    """For one one-element parameter, pytorch-optimizer's dim-0 normalisation is sign(.), so its
    per-element alignment is the cosine; with torque_eps == eps the two agree (spec §2.8)."""
    po = pytest.importorskip("pytorch_optimizer")
    for decouple, cls in ((True, AdaTAMW), (False, AdaTAM)):
        a = torch.nn.Parameter(torch.tensor([0.7], dtype=torch.float64))
        b = torch.nn.Parameter(torch.tensor([0.7], dtype=torch.float64))
        ours = cls([a], lr=1e-2, torque_eps=1e-8, eps=1e-8, weight_decay=0.1)
        theirs = po.AdaTAM([b], lr=1e-2, eps=1e-8, weight_decay=0.1, weight_decouple=decouple,
                           foreach=False)
        gen = torch.Generator().manual_seed(3)
        for _ in range(40):
            g = torch.randn(1, generator=gen, dtype=torch.float64) + 0.3
            a.grad, b.grad = g.clone(), g.clone()  # coupled decay writes into b.grad
            ours.step()
            theirs.step()
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-12, atol=1e-15)


def test_documented_differences_from_pytorch_optimizer_tam():
    po = pytest.importorskip("pytorch_optimizer")
    g = torch.tensor([[1.0, 2.0], [-1.0, 0.5]], dtype=torch.float64)
    # 1. first step: their buffer starts at m_0 = g_1, so they move about (beta + 1/2) lr g
    a = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    b = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    ours, theirs = TAM([a], lr=0.1, eps=0.0), po.TAM([b], lr=0.1, eps=0.0)
    a.grad, b.grad = g.clone(), g.clone()
    ours.step()
    theirs.step()
    torch.testing.assert_close(a.detach(), -0.05 * g)
    corr = (g / g.norm(dim=0)) ** 2  # their per-element, dim-0 normalised "alignment"
    torch.testing.assert_close(b.detach(), -0.1 * (0.9 + (1 + 0.1 * corr) / 2) * g)
    assert ((b.detach() / (-0.1 * g)) > 1.4).all()
    # 2. coupled weight decay: theirs adds it to p.grad after the update (no effect on the step)
    ref = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    c = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    plain = po.TAM([ref], lr=0.1)
    coupled = po.TAM([c], lr=0.1, weight_decay=0.5, weight_decouple=False)
    ours_p = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    ours_o = TAM([ours_p], lr=0.1, weight_decay=0.5)
    for p in (ref, c, ours_p):
        p.grad = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    plain.step()
    coupled.step()
    ours_o.step()
    assert torch.equal(ref.detach(), c.detach())  # their coupled decay was a no-op
    torch.testing.assert_close(ours_p.detach(), 1 - 0.05 * (torch.tensor([1.0, -1.0, 0.5],
                                                                        dtype=torch.float64)
                                                            + 0.5))
    # 3. alignment: theirs is per element along dim 0, near 1/2 for noisy aligned gradients;
    # the model-wide cosine damps much less (spec §2.3: 0.503 vs 0.704)
    gen = torch.Generator().manual_seed(0)
    x = torch.nn.Parameter(torch.zeros(64, 32, dtype=torch.float64))
    y = torch.nn.Parameter(torch.zeros(64, 32, dtype=torch.float64))
    ours, theirs = TAM([x], lr=1e-3), po.TAM([y], lr=1e-3, foreach=False)
    d_ours, d_theirs = [], []
    for _ in range(100):
        g = torch.randn(64, 32, generator=gen, dtype=torch.float64) + 0.5
        x.grad, y.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
        d_ours.append(ours.diagnostics()["damping"].item())
        d_theirs.append(((1 + theirs.state[y]["s"]) / 2).mean().item())
    assert sum(d_theirs[-20:]) / 20 == pytest.approx(0.503, abs=0.01)
    assert sum(d_ours[-20:]) / 20 == pytest.approx(0.70, abs=0.03)


# ----------------------------------------------------------------------------- kernels


def test_functional_kernels_doctest_shapes():
    p, g = torch.zeros(2), torch.tensor([1.0, -1.0])
    m, s = torch.zeros(2), torch.zeros(())
    assert tam([p], [g], [m], s, lr=0.1).item() == 0.5
    m, v = torch.zeros(2), torch.zeros(2)
    assert adatam([p], [g], [m], [v], torch.zeros(()), step=1, lr=1e-3).item() == 0.5
