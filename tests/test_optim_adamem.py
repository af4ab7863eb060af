"""Adaptive-Memory SGD and AdamW: float64 reference transcriptions of spec §4, the spec's test
vector, AdamW as the lambda = 0 / constant-beta special case, and the clipping of beta."""

from __future__ import annotations

import pytest
import torch
from test_optim_common import GROUP_OF, assert_traj_close, run_optimizer, run_reference

from shiftsim.errors import ShiftsimError
from shiftsim.optim import AdaptiveMemoryAdamW, AdaptiveMemorySGD
from shiftsim.optim.adamem import adamem_adamw, adamem_sgd


def clip(x: float, hi: float) -> float:
    return min(max(x, 0.0), hi)


def amsgd_reference(hps, lam, beta_max, lrs=None, betas_out=None):
    """Spec §4.2: one model-wide beta; coupled L2; d_0 = g_0; the gap term scaled by
    eta_{t-1} / eta_t per group. ``lrs(t, j)``: the lr of group j at step t."""
    d = None
    prev = [None, None]

    def step(t, ps, gs, loss):
        nonlocal d
        lr = [lrs(t, j) if lrs else hps[j]["lr"] for j in range(2)]
        g = [gi + hps[GROUP_OF[i]]["weight_decay"] * p for i, (p, gi) in enumerate(zip(ps, gs))]
        if d is None:
            d = [gi.clone() for gi in g]
            beta = 0.0
        else:
            gap = sum((prev[GROUP_OF[i]] / lr[GROUP_OF[i]] if lr[GROUP_OF[i]] > 0 else 0.0)
                      * float((g[i] * d[i]).sum()) for i in range(4))
            num = (1 + lam) * gap - sum(float(((d[i] - g[i]) * (g[i] + lam * d[i])).sum())
                                        for i in range(4))
            den = sum(float(((d[i] - g[i]) ** 2).sum()) for i in range(4))
            beta = clip(num / den, beta_max) if den > 0 else 0.0
            d = [(beta + lam) / (1 + lam) * d[i] + (1 - beta) / (1 + lam) * g[i]
                 for i in range(4)]
        for i, p in enumerate(ps):
            p.sub_(lr[GROUP_OF[i]] * d[i])
        prev[:] = lr
        if betas_out is not None:
            betas_out.append(beta)

    return step


def amadamw_reference(hps, lam, lrs=None, betas_out=None):
    """Spec §4.3, per tensor: v, P, M, the clipped dual beta, d, x, Pi."""
    st = None

    def step(t, ps, gs, loss):
        nonlocal st
        if st is None:
            st = [dict(d=torch.zeros_like(p), v=torch.zeros_like(p), pi=1.0, prev=None, k=0)
                  for p in ps]
        row = []
        for i, (x, g) in enumerate(zip(ps, gs)):
            hp, s = hps[GROUP_OF[i]], st[i]
            lr = lrs(t, GROUP_OF[i]) if lrs else hp["lr"]
            b1, b2 = hp["betas"]
            mu, eps = hp["weight_decay"], hp["eps"]
            s["k"] += 1
            k = s["k"]
            s["v"] = b2 * s["v"] + (1 - b2) * g * g
            P = (1 - b1 * s["pi"]) * ((s["v"] / (1 - b2 ** k)).sqrt() + eps)
            M = 1 / (P * (1 + lam * P))
            d = s["d"]
            if k == 1:
                beta = b1
            else:
                num = -float(((d - g) * (g + lam * P * d) * M).sum()) \
                    - mu * float((x * (d - g)).sum())
                if lr > 0:
                    gap = s["prev"] * float((g * (d / P + mu * x)).sum())
                    num += (1 + mu * lr) * gap / lr
                den = float(((d - g) ** 2 * M).sum())
                beta = clip(num / den, b1) if den > 0 else 0.0
            s["d"] = ((1 - beta) * g + (lam * P + beta) * d) / (1 + lam * P)
            x.mul_(1 - lr * mu).sub_(lr * s["d"] / P)
            s["pi"] *= beta
            s["prev"] = lr
            row.append(beta)
        if betas_out is not None:
            betas_out.append(row)

    return step


SGD_HP = [dict(lr=0.05, weight_decay=0.01), dict(lr=0.02, weight_decay=0.1)]
ADAMW_HP = [dict(lr=1e-2, betas=(0.89, 0.999), eps=1e-8, weight_decay=0.01),
            dict(lr=5e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)]


def schedule(t, j):
    return (0.05, 0.02)[j] * (1.0 if t <= 20 else 0.5 if t <= 40 else 0.0 if t == 41 else 0.3)


def test_am_sgd_matches_float64_reference():
    ours, diags = run_optimizer(lambda g: AdaptiveMemorySGD(g, lr=0.05, lam=0.2, beta_max=0.95),
                                60, hp0=SGD_HP[0], hp1=SGD_HP[1], diagnostics=True)
    betas: list[float] = []
    ref = run_reference(amsgd_reference(SGD_HP, 0.2, 0.95, betas_out=betas), 60)
    assert_traj_close(ours, ref)
    got = [dg["beta"].item() for dg in diags]
    assert got == pytest.approx(betas, abs=1e-9)
    assert min(betas) == 0.0 and max(betas) == 0.95 and any(0 < b < 0.95 for b in betas)
    for dg in diags:
        assert dg["momentum"].item() == pytest.approx((dg["beta"].item() + 0.2) / 1.2)


def test_am_sgd_kept_momentum_norm_stays_exact():
    """AM-SGD updates |d|^2 from each step's sums instead of re-reading d: after 300 float32
    steps, with a tensor sitting some steps out, it still equals the norm of the buffer."""
    gen = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.zeros(s)) for s in ((40, 30), (30,), (300, 250))]
    opt = AdaptiveMemorySGD([{"params": ps[:2]}, {"params": ps[2:]}], lr=1e-3)
    for t in range(300):
        for i, p in enumerate(ps):
            p.grad = None if (i == 1 and t % 40 == 5) else torch.randn(p.shape, generator=gen)
        opt.step()
    for j, group in enumerate(opt.param_groups):
        exact = sum(float(opt.state[p]["momentum_buffer"].double().square().sum())
                    for p in group["params"])
        kept = opt.state["global"]["momentum_sqnorm"][j].item()
        assert kept == pytest.approx(exact, rel=1e-5)


def test_am_sgd_learning_rate_schedule_scales_the_gap_term():
    def sched(t, opt):
        for j, g in enumerate(opt.param_groups):
            g["lr"] = schedule(t + 2, j)  # the lr of the next step

    ours = run_optimizer(lambda g: AdaptiveMemorySGD(g, lr=0.05), 50, hp0=SGD_HP[0],
                         hp1=SGD_HP[1], on_step=sched)
    ref = run_reference(amsgd_reference(SGD_HP, 0.1, 0.9, lrs=schedule), 50)
    assert_traj_close(ours, ref)


def test_am_adamw_matches_float64_reference():
    ours, diags = run_optimizer(lambda g: AdaptiveMemoryAdamW(g, lam=0.3), 60, hp0=ADAMW_HP[0],
                                hp1=ADAMW_HP[1], diagnostics=True)
    betas: list[list[float]] = []
    ref = run_reference(amadamw_reference(ADAMW_HP, 0.3, betas_out=betas), 60)
    assert_traj_close(ours, ref)
    for dg, row in zip(diags, betas):
        assert dg["beta"].item() == pytest.approx(sum(row) / 4, abs=1e-9)
    flat = [b for row in betas[1:] for b in row]
    assert min(flat) >= 0 and max(flat) <= 0.89
    assert any(0 < b < 0.8 for b in flat)  # not only the clip values


def test_am_adamw_schedule_and_zero_lr_step():
    def sched(t, opt):
        for j, g in enumerate(opt.param_groups):
            g["lr"] = schedule(t + 2, j) / 5

    ours = run_optimizer(lambda g: AdaptiveMemoryAdamW(g), 50, hp0=ADAMW_HP[0],
                         hp1=ADAMW_HP[1], on_step=sched)
    ref = run_reference(amadamw_reference(ADAMW_HP, 0.1, lrs=lambda t, j: schedule(t, j) / 5),
                        50)
    assert_traj_close(ours, ref)


def test_spec_vector_am_sgd():
    """Spec §4.2: f = (x1^2 + 10 x2^2) / 2, x0 = (1, 1), lr 0.05, lam 0.1, beta_max 0.9."""
    x = torch.nn.Parameter(torch.tensor([1.0, 1.0], dtype=torch.float64))
    opt = AdaptiveMemorySGD([x], lr=0.05)
    want = [((0.95, 0.5), 0.0), ((0.9002272727, 0.0227272727), 0.9),
            ((0.8547830579, -0.0309917355), 0.0)]
    for xs, beta in want:
        opt.zero_grad()
        (0.5 * (x[0] ** 2 + 10 * x[1] ** 2)).backward()
        opt.step()
        assert x.tolist() == pytest.approx(xs, abs=1e-10)
        assert opt.diagnostics()["beta"].item() == beta


def test_am_sgd_d_equal_g_gives_beta_zero_and_clipping():
    x, d = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    g = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    adamem_sgd([x], [g], [d], step=1, lr=0.1)
    torch.testing.assert_close(d, g)
    beta = adamem_sgd([x], [g.clone()], [d], step=2, lr=0.1)  # d = g
    assert beta.item() == 0.0
    torch.testing.assert_close(d, g)  # the direction is unchanged
    # with d = g and g' = k g the ratio is (k^2 + 2 lam k - lam) |g|^2 / ((1 - k)^2 |g|^2)
    for k, want in ((3.0, 0.9), (-0.1, 0.0), (0.2, 0.0), (0.5, 0.9), (-3.0, 0.51875)):
        ratio = (k * k + 0.2 * k - 0.1) / (1 - k) ** 2
        d = g.clone()
        beta = adamem_sgd([x], [k * g], [d], step=2, lr=0.1)
        assert min(max(ratio, 0.0), 0.9) == pytest.approx(want)
        assert beta.item() == pytest.approx(want, abs=1e-15)
    d = g.clone()
    beta = adamem_sgd([x], [-1.5 * g], [d], step=2, lr=0.1)  # inside the clip range
    assert beta.item() == pytest.approx((2.25 - 0.3 - 0.1) / 6.25, abs=1e-15)


def test_am_adamw_with_lam_zero_and_constant_beta_is_adamw():
    """lam = 0 and beta fixed: d is the EMA m, P = (1 - b1^t)(sqrt(v_hat) + eps): AdamW."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    w = torch.nn.Parameter(x.clone())
    ref = torch.optim.AdamW([w], lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    d, v, pi = torch.zeros_like(x), torch.zeros_like(x), torch.ones(1, dtype=torch.float64)
    for t in range(1, 31):
        g = torch.randn(4, 3, generator=gen, dtype=torch.float64)
        w.grad = g.clone()
        ref.step()
        b = adamem_adamw([x], [g], [d], [v], pi, step=t, lr=1e-2, beta1_max=0.9, lam=0.0,
                         weight_decay=0.1, fixed_beta=0.9)
        assert b.tolist() == [0.9]
        torch.testing.assert_close(x, w.detach(), rtol=1e-12, atol=1e-14)
    # the first step of the adaptive version (beta_1 = beta1_max) is AdamW's first step too
    w = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    ours = AdaptiveMemoryAdamW([w], lr=1e-3, betas=(0.89, 0.999), lam=0.0, weight_decay=0.01)
    w2 = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    ref = torch.optim.AdamW([w2], lr=1e-3, betas=(0.89, 0.999), weight_decay=0.01)
    w.grad = w2.grad = torch.tensor([1.0, -3.0, 0.2], dtype=torch.float64)
    ours.step()
    ref.step()
    torch.testing.assert_close(w.detach(), w2.detach(), rtol=1e-14, atol=0)


def test_lam_is_shared_and_checked():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ShiftsimError, match="lam must be the same in every param group"):
        AdaptiveMemorySGD([{"params": [a]}, {"params": [b], "lam": 0.5}], lr=0.1)
    with pytest.raises(ShiftsimError, match=r"beta_max must be in \[0, 1\], got 1.5"):
        AdaptiveMemorySGD([a], lr=0.1, beta_max=1.5)
    with pytest.raises(ShiftsimError, match="betas"):
        AdaptiveMemoryAdamW([a], betas=(0.9, 1.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", [
    dict(lr=[0.01, 0.1, 0.03, 0.3], wd=[0.0] * 4),
    dict(lr=[0.01] * 4, wd=[0.01, 0.0, 0.1, 0.01], lam=0.0),
    dict(lr=[0.1] * 4, wd=[0.01] * 4, n=40_000, steps=8),
    dict(lr=[0.1, 0.2, 0.1, 0.2], wd=[0.0] * 4, n=70_000, steps=6),
])
def test_fleet_rows_step_is_adamem_sgd(dtype, case, row_sums):
    """The fleet steps AM-SGD past its first step through ``_amsgd_rows`` (one row per member):
    with torch's row sums bit for bit the functional ``adamem_sgd``, with the native ones equal
    up to rounding (per-member lr, coupled decay, lam 0, zero and opposed gradient rows, the
    concatenated, large and one-tensor-at-a-time sizes)."""
    from shiftsim.optim._kernels import exact
    from shiftsim.optim.adamem import _amsgd_stacked, adamem_sgd_init, lr_ratio

    case = dict(case)
    n, steps, k = case.pop("n", 300), case.pop("steps", 30), 4
    like = torch.zeros((), dtype=dtype)
    hp = {"lr": exact(case["lr"], like), "lam": exact([case.get("lam", 0.1)], like),
          "beta_max": exact([0.9], like),
          "weight_decay": exact(case["wd"], like) if any(case["wd"]) else 0}
    gen = torch.Generator().manual_seed(0)
    pa = torch.randn(k, n, generator=gen, dtype=dtype)
    pb = pa.clone()
    sa = {**adamem_sgd_init([pa]), "lr_ratio": lr_ratio(hp["lr"])}
    sb = {**adamem_sgd_init([pb]), "lr_ratio": lr_ratio(hp["lr"])}
    for t in range(steps):
        g = torch.randn(k, n, generator=gen, dtype=dtype)
        g[1] = 0 if t % 7 == 3 else g[1]
        g[2] = -3 * sa["momentum_buffer"][0][2] if t % 9 == 5 else g[2]
        ba = _amsgd_stacked(sa, [pa], [g.clone()], None, hp, {})[0]
        sb["step"] += 1
        bb = adamem_sgd([pb], [g.clone()], sb["momentum_buffer"], step=sb["step"],
                        lr=hp["lr"], lam=hp["lam"], beta_max=hp["beta_max"],
                        weight_decay=hp["weight_decay"], lr_ratio=sb["lr_ratio"],
                        learner_dims=1)
        assert row_sums(ba, bb) and row_sums(pa, pb)
        assert row_sums(sa["momentum_buffer"][0], sb["momentum_buffer"][0])
