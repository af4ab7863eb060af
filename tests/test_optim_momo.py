"""MoMo and MoMo-Adam: float64 reference transcriptions of spec §5, the spec's test vectors,
momo-opt as an oracle (also with use_fstar and weight decay), and the loss handling."""

from __future__ import annotations

import warnings

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
from shiftsim.optim import MoMo, MoMoAdam
from shiftsim.optim import momo as momo_module


def dots(xs, ys) -> float:
    return sum(float((x * y).sum()) for x, y in zip(xs, ys))


def momo_reference(hps, beta=0.9, lb=0.0, bias_correction=False, use_fstar=False, adam=False,
                   betas=(0.9, 0.999), eps=1e-8, divide=True, taus=None):
    """Spec §5.2 (MoMo) and §5.3 (MoMo-Adam): global sums over all tensors; tau per group with
    the group's alpha and lambda; the f* reset before tau and the estimate after it use the
    first group's alpha, lambda and tau (spec §5.4, our choice for several groups)."""
    st = {"k": 0, "fbar": 0.0, "fstar": lb}
    d = v = gam = None

    def step(t, ps, gs, loss):
        nonlocal d, v, gam
        f = float(loss)
        st["k"] += 1
        k = st["k"]
        b = betas[0] if adam else beta
        if d is None:
            if adam or bias_correction:
                d = [torch.zeros_like(p) for p in ps]
                gam = [0.0] * 4
            else:
                d = [g.clone() for g in gs]
                gam = [float((p * g).sum()) for p, g in zip(ps, gs)]
                st["fbar"] = f
            v = [torch.zeros_like(p) for p in ps]
        st["fbar"] = b * st["fbar"] + (1 - b) * f
        for i in range(4):
            d[i] = b * d[i] + (1 - b) * gs[i]
            gam[i] = b * gam[i] + (1 - b) * float((ps[i] * gs[i]).sum())
            v[i] = betas[1] * v[i] + (1 - betas[1]) * gs[i] ** 2
        D = [(vi / (1 - betas[1] ** k)).sqrt() + eps if adam else torch.ones_like(vi)
             for vi in v]
        rho = 1 - b ** k if (adam or bias_correction) else 1.0
        dot, gamma = dots(ps, d), sum(gam)
        norm = dots(d, [di / Di for di, Di in zip(d, D)])
        fbar = st["fbar"]
        c = [1 + hp["lr"] * hp["weight_decay"] for hp in hps]
        if use_fstar:
            cap = c[0] * fbar + dot - c[0] * gamma
            if cap < c[0] * rho * st["fstar"]:
                st["fstar"] = max(cap / (2 * c[0] * rho), lb)
        tau = []
        for j, hp in enumerate(hps):
            num = c[j] * (fbar - rho * st["fstar"]) + dot - c[j] * gamma
            tau.append(min(hp["lr"] / rho, max(num, 0.0) / norm if norm > 0 else 0.0))
        if use_fstar:
            h = fbar + dot - gamma
            st["fstar"] = max((h - 0.5 * tau[0] * norm) / rho, lb)
        for i, p in enumerate(ps):
            j = GROUP_OF[i]
            lr, wd = hps[j]["lr"], hps[j]["weight_decay"]
            if adam and not divide:
                p.mul_(1 - lr * wd)
            p.sub_(tau[j] * d[i] / D[i])
            if not adam or divide:
                p.div_(c[j])
        if taus is not None:
            taus.append((tau[0], st["fstar"]))
        st["gam"] = list(gam)

    step.state = st  # type: ignore[attr-defined]
    return step


MOMO_HP = [dict(lr=5.0, weight_decay=0.01), dict(lr=1.0, weight_decay=0.1)]
ADAM_HP = [dict(lr=1e-2, weight_decay=0.01), dict(lr=3e-3, weight_decay=0.1)]


@pytest.mark.parametrize("bias_correction", [False, True])
@pytest.mark.parametrize("use_fstar", [False, True])
def test_momo_matches_float64_reference(bias_correction, use_fstar):
    lb = 0.05 if use_fstar else 0.0
    ours, diags = run_optimizer(
        lambda g: MoMo(g, beta=0.8, lb=lb, bias_correction=bias_correction,
                       use_fstar=use_fstar), 60, hp0=MOMO_HP[0], hp1=MOMO_HP[1],
        needs_loss=True, diagnostics=True)
    taus: list[tuple[float, float]] = []
    ref = run_reference(momo_reference(MOMO_HP, 0.8, lb, bias_correction, use_fstar,
                                       taus=taus), 60)
    assert_traj_close(ours, ref)
    for dg, (tau, fstar) in zip(diags, taus):
        assert dg["step_size"].item() == pytest.approx(tau, rel=1e-10, abs=1e-14)
        assert dg["fstar"].item() == pytest.approx(fstar, rel=1e-10, abs=1e-14)
    if use_fstar:
        assert any(f > lb for _, f in taus)
    caps = [5.0 / (1 - 0.8 ** k if bias_correction else 1) for k in range(1, 61)]
    assert all(t <= c + 1e-12 for (t, _), c in zip(taus, caps))
    if use_fstar or not bias_correction:  # (with bias correction alone the cap always binds)
        assert any(t < 0.9 * c for (t, _), c in zip(taus, caps))


@pytest.mark.parametrize("divide", [True, False])
@pytest.mark.parametrize("use_fstar", [False, True])
def test_momo_adam_matches_float64_reference(divide, use_fstar):
    ours = run_optimizer(lambda g: MoMoAdam(g, betas=(0.85, 0.99), eps=1e-6, divide=divide,
                                            use_fstar=use_fstar, lb=0.1), 60,
                         hp0=ADAM_HP[0], hp1=ADAM_HP[1], needs_loss=True)
    ref = run_reference(momo_reference(ADAM_HP, adam=True, betas=(0.85, 0.99), eps=1e-6,
                                       divide=divide, use_fstar=use_fstar, lb=0.1), 60)
    assert_traj_close(ours, ref)


def _quadratic_run(opt, x, steps):
    out = []
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * (x[0] ** 2 + 10 * x[1] ** 2)
        loss.backward()
        opt.step(loss=loss)
        out.append((opt.diagnostics()["step_size"].item(), x.tolist()))
    return out


def test_spec_vectors():
    """Spec §5.5: f = (x1^2 + 10 x2^2) / 2, x0 = (1, 1)."""
    x = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    got = _quadratic_run(MoMo([x], lr=1.0), x, 3)
    assert [t for t, _ in got] == pytest.approx([0.0544554455, 0.0016418908, 0.0017429252],
                                                abs=1e-10)
    assert got[0][1] == pytest.approx([0.9455445545, 0.4554455446], abs=1e-10)
    assert got[1][1] == pytest.approx([0.9439116046, 0.4399207352], abs=1e-10)
    x = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    got = _quadratic_run(MoMoAdam([x], lr=1e-2), x, 3)
    assert [t for t, _ in got] == pytest.approx([0.1, 0.0526315789, 0.0369003690], abs=1e-10)
    assert [xs[0] for _, xs in got] == pytest.approx([0.9900000001, 0.9800027461,
                                                      0.9700100995], abs=1e-10)


def test_loss_below_the_lower_bound_means_no_step():
    x = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt = MoMo([x], lr=1.0, lb=10.0)  # f(x0) = 5.5 < lb
    got = _quadratic_run(opt, x, 2)
    assert got[0][0] == 0.0 and got[1][0] == 0.0 and x.tolist() == [1.0, 1.0]
    x = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    got = _quadratic_run(MoMoAdam([x], lb=10.0), x, 2)
    assert got[-1][0] == 0.0 and x.tolist() == [1.0, 1.0]


def test_zero_gradient_gives_no_step_not_nan():
    x = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    for opt in (MoMo([x]), MoMoAdam([x])):
        x.grad = torch.zeros(3, dtype=torch.float64)
        opt.step(loss=1.0)
        assert opt.diagnostics()["step_size"].item() == 0.0
        assert x.tolist() == [0.0, 0.0, 0.0]


def test_loss_argument_forms():
    x = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    for loss in (5.5, 5.5 * torch.ones(()), torch.tensor([5.5]), 11 / 2):
        y = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
        opt = MoMo([y])
        y.grad = torch.tensor([1.0, 10.0], dtype=torch.float64)
        assert opt.step(loss=loss) is loss
        assert y.tolist() == pytest.approx([0.9455445545, 0.4554455446], abs=1e-10)
    opt = MoMo([x])
    with pytest.raises(ShiftsimError, match=r"needs the loss value: call MoMo.step\(loss=loss\)"):
        opt.step()
    with pytest.raises(ShiftsimError, match="not both"):
        opt.step(lambda: torch.tensor(1.0), loss=1.0)
    with pytest.raises(ShiftsimError, match=r"the loss must be a scalar, got shape \(2,\)"):
        opt.step(loss=torch.ones(2))
    with pytest.raises(TypeError, match="the loss must be a tensor or a number, got 'x'"):
        opt.step(loss="x")


def test_state_keeps_the_global_scalars():
    x = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt = MoMo([x], use_fstar=True, lb=0.25)
    _quadratic_run(opt, x, 3)
    st = opt.state_dict()["state"]["global"]
    assert st["step"] == 3
    assert st["loss_avg"].item() > 0 and st["fstar"].item() >= 0.25
    assert opt.diagnostics()["fstar"] is opt.state["global"]["fstar"]


# ----------------------------------------------------------------------------- momo-opt oracle


def _oracle_run(ours_cls, theirs_cls, steps, dtype=torch.float64, two_groups=True, **kw):
    ps_a = [torch.nn.Parameter(p) for p in init_params(dtype)]
    ps_b = [torch.nn.Parameter(p) for p in init_params(dtype)]
    hp = ADAM_HP if ours_cls is MoMoAdam else MOMO_HP
    def groups(ps):
        return groups_of(ps, hp[0], hp[1]) if two_groups else [{"params": ps, **hp[0]}]

    a, b = ours_cls(groups(ps_a), **kw), theirs_cls(groups(ps_b), **kw)
    for t in range(steps):
        for ps, opt in ((ps_a, a), (ps_b, b)):
            opt.zero_grad()
            loss = batch_loss(ps, t)
            loss.backward()
            opt.step(loss=loss)
        yield ps_a, ps_b, a, b


@pytest.mark.parametrize("kw", [{}, {"bias_correction": True}, {"beta": 0.5, "lb": 0.1}])
def test_momo_opt_oracle(kw):
    momo = pytest.importorskip("momo")
    rtol = 1e-5 if kw.get("bias_correction") else 1e-11  # its gamma is float32 there
    with pytest.warns(UserWarning, match="More than one param group"):
        for ps_a, ps_b, _, _ in _oracle_run(MoMo, momo.Momo, 40, **kw):
            for x, y in zip(ps_a, ps_b):
                torch.testing.assert_close(x, y, rtol=rtol, atol=rtol * 1e-2)


@pytest.mark.parametrize("kw", [{}, {"bias_correction": True}, {"use_fstar": True, "lb": 0.05}])
def test_momo_opt_oracle_without_weight_decay(kw):
    """Without weight decay MoMo never reads the parameters for <x, g> (module notes): the
    same steps as momo-opt all the same, one or two param groups. In float32 it is compared
    with momo-opt in float64 (it stays closer to that than momo-opt in float32 does)."""
    momo = pytest.importorskip("momo")
    for dtype, two in ((torch.float64, False), (torch.float32, False), (torch.float64, True)):
        if two and kw.get("use_fstar"):
            continue  # momo-opt re-estimates f* once per group
        ps_a = [torch.nn.Parameter(p) for p in init_params(dtype)]
        ps_b = [torch.nn.Parameter(p) for p in init_params(torch.float64)]

        def groups(ps, two=two):
            return groups_of(ps, {"lr": 2.0}, {"lr": 0.5}) if two else ps

        a, b = MoMo(groups(ps_a), **kw), momo.Momo(groups(ps_b), **kw)
        if dtype == torch.float32:
            rtol, atol = 1e-4, 1e-6
        else:  # momo-opt keeps gamma_i in float32 with bias correction
            rtol = atol = 1e-5 if kw.get("bias_correction") else 1e-11
        for t in range(40):
            for ps, opt in ((ps_a, a), (ps_b, b)):
                opt.zero_grad()
                loss = batch_loss(ps, t)
                loss.backward()
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "More than one param group")
                    opt.step(loss=loss)
            for x, y in zip(ps_a, ps_b):
                torch.testing.assert_close(x.double(), y, rtol=rtol, atol=atol)
        assert 0 < a.diagnostics()["step_size"].item()


def test_momo_without_weight_decay_carries_only_offsets(monkeypatch):
    """Without weight decay (and exact_outside_changes=False, the default) MoMo carries only
    v_i = <x_i, d_i> - gamma_i: no pass reads the parameters, yet the steps are the reference's
    (float64, 40 steps), also through a switch to weight decay and back mid-run (the state is
    converted: <x_i, d_i> recomputed, gamma_i = <x_i, d_i> - v_i, exact as no parameter was
    changed outside). A change outside the optimizer warns and keeps the offset."""
    reads: list[tuple[bool, bool]] = []
    real = momo_module._momo_sums

    def spy(*a, **kw):
        reads.append((kw["xg"], kw["xd"]))
        return real(*a, **kw)

    monkeypatch.setattr(momo_module, "_momo_sums", spy)
    hps = [dict(lr=5.0, weight_decay=0.0), dict(lr=1.0, weight_decay=0.0)]
    opt, ps, ref, ref_ps = _momo_and_reference(hps)
    for t in range(40):
        decay = 20 <= t < 25
        for j, group in enumerate(opt.param_groups):
            group["weight_decay"] = hps[j]["weight_decay"] = 0.05 if decay else 0.0
        _step_both(opt, ps, ref, ref_ps, t)
        assert opt.state["global"]["offsets"] == (not decay)
    assert reads == [(20 <= t < 25, False) for t in range(40) for _ in range(2)]
    for i, p in enumerate(ps):  # the offsets are exact
        st = opt.state[p]
        exact = float((p.detach() * st["grad_avg"]).sum()) - ref.state["gam"][i]
        assert st["x_dot_d"].item() == pytest.approx(exact, rel=1e-9, abs=1e-12)
    with torch.no_grad():
        ps[0].mul_(0.5)
    opt.zero_grad()
    loss = batch_loss(ps, 40)
    loss.backward()
    with pytest.warns(UserWarning, match=r"MoMo: 1 parameter\(s\) \(first of shape \(5, 4\)\) "
                      "changed outside the optimizer.*exact_outside_changes=True"):
        opt.step(loss=loss)
    assert opt.state["global"]["step"] == 41


def test_momo_loads_a_checkpoint_without_the_carried_sums():
    """A state saved before MoMo carried <x_i, d_i> (no ``x_dot_d``, no ``offsets``) loads:
    the sums are recomputed from the loaded moments, and the run continues as the reference."""
    hps = [dict(lr=5.0, weight_decay=0.0), dict(lr=1.0, weight_decay=0.0)]
    opt, ps, ref, ref_ps = _momo_and_reference(hps)
    for t in range(10):
        _step_both(opt, ps, ref, ref_ps, t)
    opt.state["global"]["offsets"] = False  # what an older state_dict held: gamma_i only
    for p in ps:  # (gamma_i is exact after an exact step; here: from v = <x, d> - gamma)
        st = opt.state[p]
        st["grad_dot_w"] = float((p.detach() * st["grad_avg"]).sum()) - st["x_dot_d"]
    old = opt.state_dict()
    old["state"]["global"].pop("offsets")
    for st in old["state"].values():
        st.pop("x_dot_d", None)
    opt = MoMo(groups_of(ps, hps[0], hps[1]))
    opt.load_state_dict(old)
    for t in range(10, 20):
        _step_both(opt, ps, ref, ref_ps, t)


@pytest.mark.parametrize("kw", [{}, {"divide": False}, {"betas": (0.8, 0.99), "eps": 1e-6}])
def test_momo_opt_adam_oracle(kw):
    momo = pytest.importorskip("momo")
    with pytest.warns(UserWarning, match="More than one param group"):
        for ps_a, ps_b, _, _ in _oracle_run(MoMoAdam, momo.MomoAdam, 40, **kw):
            for x, y in zip(ps_a, ps_b):
                # momo-opt keeps MomoAdam's gamma_i in float32
                torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("cls_name", ["Momo", "MomoAdam"])
def test_momo_opt_oracle_use_fstar(cls_name):
    """use_fstar with one param group (momo-opt re-estimates f* once per group)."""
    momo = pytest.importorskip("momo")
    ours_cls = MoMo if cls_name == "Momo" else MoMoAdam
    kw = {"use_fstar": True, "lb": 0.05, "weight_decay": 0.02}
    for ps_a, ps_b, a, b in _oracle_run(ours_cls, getattr(momo, cls_name), 40,
                                        two_groups=False, **kw):
        for x, y in zip(ps_a, ps_b):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-8)
        assert a.diagnostics()["fstar"].item() == pytest.approx(b.state["fstar"], rel=1e-5)
    assert b.state["fstar"] > 0.05


def test_shared_hyperparameters():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ShiftsimError, match="beta must be the same in every param group"):
        MoMo([{"params": [a]}, {"params": [b], "beta": 0.5}])
    with pytest.raises(ShiftsimError, match="lb must be finite"):
        MoMoAdam([a], lb=float("inf"))


def _momo_and_reference(hps, **kw):
    """MoMo over two param groups (hyperparameters ``hps``) and the float64 reference, each
    with its own copy of the initial parameters: ``(opt, params, reference, ref_params)``."""
    ps = [torch.nn.Parameter(p) for p in init_params()]
    return MoMo(groups_of(ps, hps[0], hps[1]), **kw), ps, momo_reference(hps), init_params()


def _step_both(opt, ps, ref, ref_ps, t):
    """Step ``opt`` on ``ps`` and the float64 reference on ``ref_ps`` with batch ``t``; the
    parameters must agree."""
    opt.zero_grad()
    loss = batch_loss(ps, t)
    loss.backward()
    opt.step(loss=loss)
    leaves = [p.clone().requires_grad_(True) for p in ref_ps]
    rl = batch_loss(leaves, t)
    ref(t + 1, ref_ps, torch.autograd.grad(rl, leaves), rl.detach())
    for a, b in zip(ps, ref_ps):
        torch.testing.assert_close(a.detach(), b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("wd", "exact"), [(0.0, True), (0.01, False)])
def test_momo_carries_the_inner_products_and_notices_outside_changes(monkeypatch, wd, exact):
    """Exact mode (weight decay, or exact_outside_changes=True): MoMo carries <x_i, d_i> per
    tensor from step to step (no pass of its own); without weight decay it does not read the
    parameters for <x_i, g_i> either (gamma_i follows from the carried sums). A parameter
    changed in place or replaced outside the optimizer since its last step is recomputed.
    Float64 reference with such changes at steps 10 and 20; the carried <x_i, d_i> and gamma_i
    equal the exact ones at the end."""
    stale: list[list[int]] = []
    asked_xg: list[bool] = []
    real_stale, real_sums = MoMo._stale, momo_module._momo_sums

    def spy_stale(self, *a):
        out = real_stale(self, *a)
        stale.append(out)
        return out

    def spy_sums(*a, **kw):
        asked_xg.append(kw["xg"])
        return real_sums(*a, **kw)

    monkeypatch.setattr(MoMo, "_stale", spy_stale)
    monkeypatch.setattr(momo_module, "_momo_sums", spy_sums)
    hps = [dict(lr=5.0, weight_decay=wd), dict(lr=1.0, weight_decay=wd)]
    opt, ps, ref, ref_ps = _momo_and_reference(hps, exact_outside_changes=exact)
    for t in range(30):
        if t == 10:  # in place, under no_grad: the version counter moves
            with torch.no_grad():
                ps[0].mul_(0.5)
            ref_ps[0].mul_(0.5)
        if t == 20:  # storage replaced through .data
            ps[2].data = ps[2].data * 1.5
            ref_ps[2].mul_(1.5)
        _step_both(opt, ps, ref, ref_ps, t)
        assert stale[-1] == {10: [0], 20: [2]}.get(t, []), t
    assert asked_xg == [wd != 0] * 30 * 2  # two param groups
    for i, p in enumerate(ps):
        st = opt.state[p]
        exact = float((p.detach() * st["grad_avg"]).sum())
        assert st["x_dot_d"].item() == pytest.approx(exact, rel=1e-10)
        assert st["grad_dot_w"].item() == pytest.approx(ref.state["gam"][i], rel=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", [
    dict(lr=[0.1, 1.0, 3.0, 10.0], wd=[0.0] * 4, beta=[0.9, 0.5, 0.9, 0.99]),
    dict(lr=[1e-3, 1e-2, 1.0, 1e-3], wd=[0.0] * 4, beta=[0.9] * 4),  # capped at lr
    dict(lr=[1.0] * 4, wd=[0.01] * 4, beta=[0.9] * 4, lb=-1.0),
    dict(lr=[0.3, 1.0, 0.3, 1.0], wd=[0.01, 0.0, 0.1, 0.01], beta=[0.9] * 4),
    dict(lr=[1.0] * 4, wd=[0.0] * 4, beta=[0.9] * 4, n=40_000, steps=8),
    dict(lr=[1.0] * 4, wd=[0.01, 0.0, 0.01, 0.0], beta=[0.9] * 4, n=70_000, steps=6),
])
def test_fleet_rows_step_is_momo(dtype, case, row_sums):
    """The fleet steps MoMo past its first step through ``_momo_rows`` (one row per member):
    with torch's row sums bit for bit the functional ``momo``, with the native ones equal up to
    rounding (per-member hyperparameters, weight decay, a lower bound, a zero gradient row,
    steps capped at lr, the concatenated, large and one-tensor-at-a-time sizes)."""
    from shiftsim.optim._kernels import exact
    from shiftsim.optim.momo import _momo_stacked, momo, momo_init

    case = dict(case)
    n, steps, k, lb = case.pop("n", 300), case.pop("steps", 30), 4, case.pop("lb", 0.0)
    like = torch.zeros((), dtype=dtype)
    hp = {"lr": exact(case["lr"], like), "beta": exact(case["beta"], like),
          "lb": exact([lb], like),
          "weight_decay": exact(case["wd"], like) if any(case["wd"]) else 0}
    flags = {"bias_correction": False, "use_fstar": False}
    gen = torch.Generator().manual_seed(0)
    pa = torch.randn(k, n, generator=gen, dtype=dtype)
    pb = pa.clone()
    sa, sb = momo_init([pa], lb=lb, learner_dims=1), momo_init([pb], lb=lb, learner_dims=1)
    capped = False
    for t in range(steps):
        g = torch.randn(k, n, generator=gen, dtype=dtype)
        g[1] = 0 if t % 7 == 3 else g[1]
        loss = (torch.rand(k, generator=gen) * 3).to(dtype)
        ta = _momo_stacked(sa, [pa], [g.clone()], loss, hp, flags)[0]
        sb["step"] += 1
        tb = momo([pb], [g.clone()], sb["grad_avg"], sb["grad_dot_w"], sb["loss_avg"],
                  sb["fstar"], loss, step=sb["step"], lr=hp["lr"], beta=hp["beta"],
                  lb=hp["lb"], weight_decay=hp["weight_decay"], learner_dims=1)
        assert row_sums(ta, tb) and row_sums(pa, pb)
        assert row_sums(sa["grad_avg"][0], sb["grad_avg"][0])
        for key in ("grad_dot_w", "loss_avg", "fstar"):
            assert row_sums(sa[key], sb[key]), key
        capped |= bool((ta == torch.tensor(case["lr"], dtype=dtype)).any())
    assert capped == (case["lr"][0] == 1e-3)
