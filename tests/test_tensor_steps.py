"""The native steps over one learner's tensors (``shiftsim/optim/tensorsteps.c``), which the
compiled steps of MoMo, TAM, AdaTAM(W), AM-SGD, MoMo-Adam and AM-AdamW take on a CPU: MoMo's
whole step (``_native.momo_tensors_step``) against the Inductor kernel's function (run as plain
torch) up to float rounding, the first moments bit for bit, the sums against float64, the same
bits with one thread and two; TAM's, AdaTAM(W)'s and AM-SGD's two passes
(``three_sums_tensors``, then ``lerp_update_tensors`` or ``adatam_update_tensors``) and the
others' against float64 sums and torch's elementwise operations bit for bit, and the first
three's whole steps (one call each) and MoMo-Adam's step (two calls) against those passes with
torch's numbers between them;
each optimizer through its class against its eager step and the float64 reference; the
inputs they leave to the other kernels; and the build: OpenMP only as torch's own runtime, and
a compiler without OpenMP."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
from test_optim_adamem import ADAMW_HP, SGD_HP, amadamw_reference, amsgd_reference
from test_optim_common import assert_traj_close, run_reference
from test_optim_compiled import MAKERS, one_group, run
from test_optim_momo import ADAM_HP, momo_reference
from test_optim_native import fresh  # noqa: F401 - the fixture
from test_optim_tam import ADA_HP, TAM_HP, tam_reference

from shiftsim.optim import (
    TAM,
    AdaptiveMemoryAdamW,
    AdaptiveMemorySGD,
    AdaTAM,
    AdaTAMW,
    MoMo,
    MoMoAdam,
    _compiled,
    _native,
)
from shiftsim.optim._kernels import sqrt as exact_sqrt

pytestmark = pytest.mark.skipif(not _native.available(), reason="no native code here")

DTYPES = [torch.float32, torch.float64]
# one element; a few; more than one chunk; several chunks and a tail; a tensor of one chunk
SIZES = [(1,), (7, 5), (200, 300), (3, _native.CHUNK * 2 + 3), (_native.CHUNK,)]


def _case(dtype, beta=0.9, seed=0, sizes=SIZES):
    """Parameters, gradients, first moments, offsets, loss average, loss, f*, in ``dtype``."""
    g = torch.Generator().manual_seed(seed)

    def r(shape, scale=1.0):
        return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    P = [r(s) for s in sizes]
    G = [r(s, 0.1) for s in sizes]
    D = [r(s, 0.1) for s in sizes]
    kept = r((len(sizes),), 0.01)
    return P, G, D, kept, torch.tensor(2.5, dtype=dtype), torch.tensor(2.0, dtype=dtype), \
        torch.tensor(0.1, dtype=dtype)


def _clone(case):
    return [[t.clone() for t in x] if isinstance(x, list) else x.clone() for x in case]


def _native_step(case, beta, rho=1.0, cap=1.0):
    P, G, D, kept, loss_avg, f, fstar = case
    tau = _native.momo_tensors_step(P, G, D, kept, loss_avg, f, fstar, beta=beta, rho=rho,
                                    cap=cap)
    assert tau is not None
    return tau


def _plain_step(case, beta, rho=1.0, cap=1.0):
    """The Inductor kernel's function run as plain torch (what compile=True runs elsewhere)."""
    P, G, D, kept, loss_avg, f, fstar = case
    h = torch.tensor([beta, 1 - beta, rho, cap], dtype=loss_avg.dtype)
    tau, new_kept, avg = _compiled.momo_step(P, G, D, kept, loss_avg, fstar, f, h)
    kept.copy_(new_kept)
    loss_avg.copy_(avg)
    return tau


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", [0.9, 0.3])  # lerp weights 0.1 and 0.7: torch's two formulas
@pytest.mark.parametrize("cap", [1.0, 1e-4])  # the step size free, and capped
def test_the_step_is_the_compiled_kernels_up_to_rounding(dtype, beta, cap):
    case = _case(dtype, beta)
    mine, theirs = _clone(case), _clone(case)
    tau = _native_step(mine, beta, rho=0.9, cap=cap)
    want = _plain_step(theirs, beta, rho=0.9, cap=cap)
    tol = dict(rtol=1e-5, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-12, atol=0)
    torch.testing.assert_close(tau, want, **tol)
    if cap < 1:
        assert tau.item() == pytest.approx(cap)
    for a, b in zip(mine[2], theirs[2]):  # the first moments: torch's lerp, bit for bit
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(mine[0], theirs[0]):
        torch.testing.assert_close(a, b, **tol)
    for j in (3, 4):  # the offsets and the loss average
        torch.testing.assert_close(mine[j], theirs[j], **tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_sums_are_the_float64_sums(dtype):
    """tau and the offsets against float64 arithmetic on the same first moments (rounded once
    or a few times in float32, not accumulated in it)."""
    beta = 0.9
    case = _case(dtype)
    P0, D0, kept0 = [p.clone() for p in case[0]], case[2], case[3].clone()
    D64 = [d.double().lerp(g.double(), 1 - beta) for d, g in zip(D0, case[1])]
    sq = torch.stack([(d * d).sum() for d in D64])
    la = 2.5 * beta + 2.0 * (1 - beta)
    u = kept0.double() * beta
    tau64 = max(la - 0.1 + u.sum().item(), 0.0) / sq.sum().item()
    tau = _native_step(case, beta)
    rtol = 1e-5 if dtype == torch.float32 else 1e-13
    assert tau.item() == pytest.approx(tau64, rel=rtol)
    torch.testing.assert_close(case[3].double(), u - tau64 * sq, rtol=rtol, atol=1e-7)
    for p, p0, d in zip(case[0], P0, D64):
        torch.testing.assert_close(p.double(), p0.double() - tau64 * d, rtol=rtol, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_same_bits_with_one_thread_and_two(dtype):
    threads = torch.get_num_threads()
    out = []
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            case = _case(dtype, seed=4)
            tau = _native_step(case, 0.9)
            out.append((tau, case))
    finally:
        torch.set_num_threads(threads)
    for tau, case in out[1:]:
        torch.testing.assert_close(tau, out[0][0], rtol=0, atol=0)
        for mine, first in zip(case, out[0][1]):
            for a, b in zip(mine if isinstance(mine, list) else [mine],
                            first if isinstance(first, list) else [first]):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_no_norm_no_step_and_nan_as_the_compiled_kernel():
    """First moments and gradients all zero: tau = 0, the parameters stay; a NaN loss: tau
    NaN, as the compiled kernel's function gives."""
    case = _case(torch.float32)
    for t in case[1] + case[2]:
        t.zero_()
    P0 = [p.clone() for p in case[0]]
    assert _native_step(case, 0.9).item() == 0.0
    for p, p0 in zip(case[0], P0):
        torch.testing.assert_close(p, p0, rtol=0, atol=0)
    mine, theirs = _case(torch.float32), _case(torch.float32)
    mine[5].fill_(float("nan"))
    theirs[5].fill_(float("nan"))
    assert torch.isnan(_native_step(mine, 0.9)) and torch.isnan(_plain_step(theirs, 0.9))


def _unchanged(case, before):
    for x, y in zip(case, before):
        for a, b in zip(x if isinstance(x, list) else [x], y if isinstance(y, list) else [y]):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("what", ["non-contiguous", "float16", "mixed dtypes", "sizes differ",
                                  "offsets of another length", "tensor beta", "no tensors"])
def test_what_it_does_not_take_is_left_unchanged(what):
    case = _case(torch.float32)
    P, G, D, kept, loss_avg, f, fstar = case
    beta: object = 0.9
    if what == "non-contiguous":
        G[2] = G[2].t().contiguous().t()
    elif what == "float16":
        case = [[t.half() for t in x] if isinstance(x, list) else x.half() for x in case]
        P, G, D, kept, loss_avg, f, fstar = case
    elif what == "mixed dtypes":
        D[1] = D[1].double()
    elif what == "sizes differ":
        G[0] = torch.zeros(2)
    elif what == "offsets of another length":
        kept = torch.zeros(len(P) + 1)
    elif what == "tensor beta":
        beta = torch.tensor(0.9)
    elif what == "no tensors":
        P, G, D, kept = [], [], [], torch.zeros(0)
    before = _clone([P, G, D, kept, loss_avg, f, fstar])
    assert _native.momo_tensors_step(P, G, D, kept, loss_avg, f, fstar, beta=beta, rho=1.0,
                                     cap=1.0) is None
    _unchanged([P, G, D, kept, loss_avg, f, fstar], before)


def test_native_code_off_is_none(monkeypatch):
    monkeypatch.setattr(_native, "_math_library", lambda dtype: None)
    case = _case(torch.float32)
    before = _clone(case)
    P, G, D, kept, loss_avg, f, fstar = case
    assert _native.momo_tensors_step(P, G, D, kept, loss_avg, f, fstar, beta=0.9, rho=1.0,
                                     cap=1.0) is None
    _unchanged(case, before)


# ------------------------------------------------------------- TAM's and AM-SGD's two passes


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("coupled", [False, True])
def test_three_sums_are_the_float64_sums(dtype, coupled):
    M, G, P = _case(dtype, seed=2)[2], _case(dtype, seed=3)[1], _case(dtype, seed=3)[0]
    wd = 0.05
    got = _native.three_sums_tensors(M, G, P if coupled else None, wd)
    assert got is not None and got.dtype == dtype and got.shape == (3,)
    Gw = [g.add(p, alpha=wd) if coupled else g for g, p in zip(G, P)]  # torch's add, alpha
    m64, g64 = torch.cat([m.double().flatten() for m in M]), \
        torch.cat([g.double().flatten() for g in Gw])
    want = torch.stack([(m64 * g64).sum(), (m64 * m64).sum(), (g64 * g64).sum()])
    scale = torch.stack([(m64 * g64).abs().sum(), (m64 * m64).sum(), (g64 * g64).sum()])
    eps = 1e-6 if dtype == torch.float32 else 1e-14
    assert ((got.double() - want).abs() <= eps * scale).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_three_sums_the_same_bits_with_one_thread_and_two(dtype):
    M, G, P = _case(dtype, seed=2)[2], _case(dtype, seed=3)[1], _case(dtype, seed=3)[0]
    threads = torch.get_num_threads()
    try:
        got = []
        for n in (1, 2):
            torch.set_num_threads(n)
            got.append(_native.three_sums_tensors(M, G, P, 0.01))
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(got[0], got[1], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight", [0.1, 0.7])  # torch's two lerp formulas
@pytest.mark.parametrize("decay", ["none", "coupled", "decoupled"])
def test_the_update_pass_is_torchs_operations_bit_for_bit(dtype, weight, decay):
    """m <- lerp(m, g', w), p <- p shrink, p <- p + step m: torch's lerp_, mul_ and add_ with
    alpha (g' = g.add(p, alpha=wd) with coupled decay), bit for bit."""
    P, G, M = _case(dtype, seed=5)[:3]
    wd, step = 0.03, -0.0123
    mine = [[t.clone() for t in x] for x in (P, G, M)]
    assert _native.lerp_update_tensors(*mine, weight, step,
                                       coupled_wd=wd if decay == "coupled" else None,
                                       shrink=1 - 0.1 * wd if decay == "decoupled" else None)
    for p, g, m in zip(P, G, M):
        gw = g.add(p, alpha=wd) if decay == "coupled" else g
        m.lerp_(gw, weight)
        if decay == "decoupled":
            p.mul_(1 - 0.1 * wd)
        p.add_(m, alpha=step)
    for got, want in zip(mine, (P, G, M)):
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decay", ["none", "coupled", "decoupled"])
def test_adatam_update_pass_is_torchs_operations_bit_for_bit(dtype, decay):
    """AdaTAM(W)'s second pass against its eager kernel's operations (``tam._adatam_update``
    with float hyperparameters): m <- m b1 + g' c, v <- v b2 + (1 - b2) g'^2, p <- p shrink,
    p <- p + size m / (sqrt(v) + eps) with the correctly rounded square root, bit for bit;
    second moments and gradients with exact zeros among them."""
    P, G, M = _case(dtype, seed=7)[:3]
    V = [(g * 2).square() for g in _case(dtype, seed=8)[1]]
    G[2][0, :50] = 0.0
    V[2][0, :40] = 0.0
    c, wd, size, eps, b1, b2 = torch.tensor(0.6123, dtype=dtype), 0.03, -1.3e-3, 1e-8, 0.9, 0.999
    mine = [[t.clone() for t in x] for x in (P, G, M, V)]
    assert _native.adatam_update_tensors(
        *mine, c=c.item(), beta1=b1, beta2=b2, eps=eps, size=size,
        coupled_wd=wd if decay == "coupled" else None,
        shrink=1 - 0.1 * wd if decay == "decoupled" else None)
    for p, g, m, v in zip(P, G, M, V):
        gw = g.add(p, alpha=wd) if decay == "coupled" else g
        m.mul_(b1).addcmul_(gw, c)
        v.mul_(b2).addcmul_(gw, gw, value=1 - b2)
        if decay == "decoupled":
            p.mul_(1 - 0.1 * wd)
        den = exact_sqrt(v).add_(eps)
        p.addcdiv_(m, den, value=size)
    for got, want in zip(mine, (P, G, M, V)):
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_passes_leave_what_they_do_not_take():
    """Each call has one defect, the rest valid (the last lines: without it they apply)."""
    P, G, M = _case(torch.float32)[:3]
    before = _clone([P, G, M])
    strided = [g.t().contiguous().t() if g.dim() == 2 else g for g in G]  # G[2]: not contiguous
    assert not strided[2].is_contiguous()
    assert _native.three_sums_tensors(M, strided) is None
    assert _native.three_sums_tensors(M, [g.half() for g in G]) is None
    assert _native.three_sums_tensors(M, G[:-1]) is None
    assert _native.three_sums_tensors(M, G, P, wd=torch.tensor(0.1)) is None
    assert not _native.lerp_update_tensors(P, strided, M, 0.1, -0.1)
    assert not _native.lerp_update_tensors(P, [g.double() for g in G], M, 0.1, -0.1)
    assert not _native.lerp_update_tensors(P, G, M, torch.tensor(0.1), -0.1)
    assert not _native.lerp_update_tensors([], [], [], 0.1, -0.1)
    ada = dict(c=0.5, beta1=0.9, beta2=0.99, eps=1e-8, size=-0.01)
    assert not _native.adatam_update_tensors(P, strided, M, M, **ada)
    assert not _native.adatam_update_tensors(P, G, M, [m.double() for m in M], **ada)
    assert not _native.adatam_update_tensors(P, G, M, M[:-1], **ada)
    assert not _native.adatam_update_tensors(P, G, M, M, **{**ada, "c": torch.tensor(0.5)})
    assert not _native.adatam_update_tensors(P, G, M, M, **ada, shrink=torch.tensor(0.9))
    assert not _native.adatam_update_tensors([], [], [], [], **ada)
    _unchanged([P, G, M], before)
    assert _native.three_sums_tensors(M, G, P, wd=0.1) is not None
    assert _native.lerp_update_tensors(*_clone([P, G, M]), 0.1, -0.1)
    assert _native.adatam_update_tensors(*_clone([P, G, M, M]), **ada)


# ------------------------------------------ TAM's, AdaTAM(W)'s and AM-SGD's whole steps


def _same(got, want):
    """The same bits (NaN where NaN)."""
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


def _all_same(got_lists, want_lists):
    """:func:`_same` for every tensor of lists of tensors."""
    for xs, ys in zip(got_lists, want_lists, strict=True):
        for a, b in zip(xs, ys, strict=True):
            _same(a, b)


def _whole_case(dtype, seed):
    """Small tensors whose sums give numbers all over their range: random gradients, moments
    that point with them, against them or anywhere (seed by seed), one exact zero momentum."""
    g = torch.Generator().manual_seed(seed)
    sizes = [(3,), (2, 5)] if seed % 3 else [(5,), (3, 4), (1,)]
    P, G, M = _case(dtype, seed=seed, sizes=sizes)[:3]
    kind = seed % 4
    if kind == 1:
        M = [gr * (0.5 + torch.rand((), generator=g).item()) for gr in G]  # with the gradient
    elif kind == 2:
        M = [-gr for gr in G]  # against it: cosine -1, the damping can reach 0
    elif kind == 3:
        M = [torch.zeros_like(gr) for gr in G]  # no momentum yet: no cosine
    V = [(gr * 3).square() for gr in _case(dtype, seed=seed + 50, sizes=sizes)[1]]
    u = torch.rand(6, generator=g, dtype=torch.float64)
    return P, G, M, V, u


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decay", ["none", "coupled", "decoupled"])
def test_tam_whole_step_is_its_passes_with_torchs_numbers_between(dtype, decay):
    """``tam_tensors_step`` = ``three_sums_tensors``, ``_compiled._tam_numbers`` (torch's
    operations on 0-d tensors), then ``lerp_update_tensors``: the same bits, the state too,
    over 40 cases (damping down to 0, a scale of 0 with eps = 0: the guarded weight)."""
    for seed in range(40):
        P, G, M, _, u = _whole_case(dtype, seed)
        lr, wd = 0.01 + u[0].item(), 0.03
        eps = 0.0 if seed % 2 or seed % 8 == 2 else 0.1 * u[1].item()
        h = torch.tensor([lr, 0.5 + 0.5 * u[2].item(), u[3].item(), eps, wd], dtype=dtype)
        shat = torch.tensor(-1.0 if seed % 4 == 2 else 2 * u[4].item() - 1, dtype=dtype)
        scale = torch.tensor(0.0 if seed % 8 == 2 else 3 * u[5].item(), dtype=dtype)
        sq = torch.tensor(7.0, dtype=dtype)
        coupled = dict(coupled_wd=wd if decay == "coupled" else None,
                       shrink=1 - lr * wd if decay == "decoupled" else None)
        ref = [[t.clone() for t in x] for x in (P, G, M)]
        sums = _native.three_sums_tensors(ref[2], ref[1], ref[0] if decay == "coupled" else None,
                                          wd)
        d, shat2, sig, sqnorm, w, step = _compiled._tam_numbers(*sums.unbind(0), scale, shat,
                                                               h, eps > 0)
        assert _native.lerp_update_tensors(*ref, w.item(), step.item(), **coupled)
        mine = [[t.clone() for t in x] for x in (P, G, M)]
        states = [t.clone() for t in (shat, scale, sq)]
        got = _native.tam_tensors_step(*mine, h, *states, positive=eps > 0, **coupled)
        assert got is not None and got.shape == () and got.dtype == dtype
        for a, b in zip([got, *states], [d, shat2, sig, sqnorm]):
            _same(a, b)
        _all_same(mine, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decay", ["none", "coupled", "decoupled"])
def test_adatam_whole_step_is_its_passes_with_torchs_numbers_between(dtype, decay):
    """``adatam_tensors_step`` = ``three_sums_tensors``, ``_compiled._adatam_numbers``, then
    ``adatam_update_tensors``: the same bits, over 40 cases."""
    for seed in range(40):
        P, G, M, V, u = _whole_case(dtype, seed)
        lr, wd, b1, b2, eps = 1e-3 + u[0].item(), 0.03, 0.9, 0.999, 1e-8
        size = -lr * (1 - b1)
        h = torch.tensor([size, b1, b2, u[3].item(), 0.1 * u[1].item(), eps, wd, lr],
                         dtype=dtype)
        shat = torch.tensor(-1.0 if seed % 4 == 2 else 2 * u[4].item() - 1, dtype=dtype)
        coupled = dict(coupled_wd=wd if decay == "coupled" else None,
                       shrink=1 - lr * wd if decay == "decoupled" else None)
        ref = [[t.clone() for t in x] for x in (P, G, M, V)]
        sums = _native.three_sums_tensors(ref[2], ref[1], ref[0] if decay == "coupled" else None,
                                          wd)
        d, shat2, c = _compiled._adatam_numbers(*sums.unbind(0), shat, h[3], h[4])
        assert _native.adatam_update_tensors(*ref, c=c.item(), beta1=b1, beta2=b2, eps=eps,
                                             size=size, **coupled)
        mine = [[t.clone() for t in x] for x in (P, G, M, V)]
        state = shat.clone()
        got = _native.adatam_tensors_step(*mine, h, state, beta1=b1, beta2=b2, eps=eps,
                                          size=size, **coupled)
        assert got is not None and got.shape == () and got.dtype == dtype
        _same(got, d)
        _same(state, shat2)
        _all_same(mine, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("coupled", [False, True])
def test_amsgd_whole_step_is_its_passes_with_torchs_numbers_between(dtype, coupled):
    """``amsgd_tensors_step`` = ``three_sums_tensors``, ``_compiled._amsgd_numbers``, then
    ``lerp_update_tensors``: the same bits, over 40 cases (the momentum equal to the gradient:
    no curvature, beta 0; ratios that clip beta at 0 and at beta_max)."""
    for seed in range(40):
        P, G, D, _, u = _whole_case(dtype, seed)
        if seed % 5 == 4:
            D = [g.clone() for g in G]  # d = g: den = 0
        lr, wd = 0.01 + u[0].item(), 0.03
        tol = 32 * torch.finfo(dtype).eps
        h = torch.tensor([lr, wd, u[1].item(), 0.5 + 0.5 * u[2].item(), 4 * u[3].item() - 1,
                          tol], dtype=dtype)
        sq = torch.tensor(7.0, dtype=dtype)
        ref = [[t.clone() for t in x] for x in (P, G, D)]
        sums = _native.three_sums_tensors(ref[2], ref[1], ref[0] if coupled else None, wd)
        beta, sqnorm, w = _compiled._amsgd_numbers(*sums.unbind(0), h)
        assert _native.lerp_update_tensors(*ref, w.item(), -lr,
                                           coupled_wd=wd if coupled else None)
        mine = [[t.clone() for t in x] for x in (P, G, D)]
        state = sq.clone()
        got = _native.amsgd_tensors_step(*mine, h, state, step=-lr,
                                         coupled_wd=wd if coupled else None)
        assert got is not None and got.shape == () and got.dtype == dtype
        _same(got, beta)
        _same(state, sqnorm)
        _all_same(mine, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decay", ["none", "decoupled", "proximal"])
def test_momo_adam_step_is_its_passes_with_torchs_numbers_between(dtype, decay):
    """``momo_adam_tensors_step`` = ``momo_adam_moments``, ``_compiled._momo_adam_numbers``
    (torch's operations), then ``momo_adam_update``: the same bits, the state too, over 40
    cases (losses under and over the averages: step sizes of 0, capped and in between)."""
    for seed in range(40):
        P, G, D, V, u = _whole_case(dtype, seed)
        lr, wd, b1, b2, s = 0.01 + u[0].item(), 0.05, 0.9, 0.999, 1 + seed
        bc2, eps, rho = 1 - b2 ** s, 1e-8, 1 - b1 ** s
        h = torch.tensor([b1, b2, bc2, eps, rho, lr / rho, 1 + lr * wd, 1 - lr * wd],
                         dtype=dtype)
        f = torch.tensor(4 * u[1].item(), dtype=dtype)
        loss_avg = torch.tensor(2 * u[2].item(), dtype=dtype)
        fstar = torch.tensor(0.1 * u[3].item(), dtype=dtype)
        gam = (torch.rand(len(P), generator=torch.Generator().manual_seed(seed),
                          dtype=torch.float64) - 0.5).to(dtype)
        on = decay != "none"
        shrink = 1 - lr * wd if decay == "decoupled" else None
        inverse = 1 / (1 + lr * wd) if decay == "proximal" else None
        ref = [[t.clone() for t in x] for x in (P, G, D, V)]
        xg, xd, dq = _native.momo_adam_moments(*ref, beta1=b1, beta2=b2, bc2=bc2, eps=eps)
        tau, gam2, la2 = _compiled._momo_adam_numbers(xg, xd, dq, gam, loss_avg, fstar, f, h,
                                                     on)
        assert _native.momo_adam_update(ref[0], ref[2], ref[3], bc2=bc2, eps=eps,
                                        tau=tau.item(), shrink=shrink, inverse=inverse)
        mine = [[t.clone() for t in x] for x in (P, G, D, V)]
        states = [t.clone() for t in (loss_avg, gam)]
        got = _native.momo_adam_tensors_step(*mine, h, f, states[0], fstar, states[1],
                                             decay=on, beta1=b1, beta2=b2, bc2=bc2, eps=eps,
                                             shrink=shrink, inverse=inverse)
        assert got is not None and got.shape == () and got.dtype == dtype
        for a, b in zip([got, *states], [tau, la2, gam2]):
            _same(a, b)
        _all_same(mine, ref)


def test_the_whole_steps_leave_what_they_do_not_take():
    """One defect each (the rest valid): nothing changes and None comes back; without it they
    apply."""
    P, G, M = _case(torch.float32)[:3]
    V = [m.abs() for m in M]
    h = torch.tensor([0.01, 0.9, 0.1, 1e-8, 0.0, 1e-8, 0.0, 0.01])
    one = torch.zeros(())
    before = _clone([P, G, M, V, h, one])
    strided = [g.t().contiguous().t() if g.dim() == 2 else g for g in G]
    ada = dict(beta1=0.9, beta2=0.99, eps=1e-8, size=-0.01)
    assert _native.tam_tensors_step(P, strided, M, h, one, one, one, positive=True) is None
    assert _native.tam_tensors_step(P, G, M, h.double(), one, one, one, positive=True) is None
    assert _native.tam_tensors_step(P, G, M, h[:3], one, one, one, positive=True) is None
    assert _native.tam_tensors_step(P, G, M, h, torch.zeros(2), one, one, positive=True) is None
    assert _native.tam_tensors_step(P, G, M, h, one, one, one.double(), positive=True) is None
    assert _native.tam_tensors_step(P, G, M, h, one, one, one, positive=True,
                                    shrink=torch.tensor(0.9)) is None
    assert _native.tam_tensors_step([], [], [], h, one, one, one, positive=True) is None
    assert _native.adatam_tensors_step(P, G, M, V[:-1], h, one, **ada) is None
    assert _native.adatam_tensors_step(P, G, M, V, h[:4], one, **ada) is None
    assert _native.adatam_tensors_step(P, G, M, V, h, one, **{**ada, "eps": torch.tensor(0.)}) \
        is None
    assert _native.amsgd_tensors_step(P, G, M, h[:5], one, step=-0.01) is None
    assert _native.amsgd_tensors_step(P, G, [m.double() for m in M], h, one, step=-0.01) is None
    assert _native.amsgd_tensors_step(P, G, M, h, one, step=torch.tensor(-0.01)) is None
    adam = dict(decay=True, beta1=0.9, beta2=0.99, bc2=0.5, eps=1e-8)
    gam = torch.zeros(len(P))
    assert _native.momo_adam_tensors_step(P, G, M, V, h, one, one, one, gam[:-1], **adam) is None
    assert _native.momo_adam_tensors_step(P, G, M, V, h[:6], one, one, one, gam, **adam) is None
    assert _native.momo_adam_tensors_step(P, G, M, V, h, one.double(), one, one, gam, **adam) \
        is None
    assert _native.momo_adam_tensors_step(P, G, M, V, h, one, one, one, gam, **adam,
                                          shrink=torch.tensor(0.9)) is None
    _unchanged([P, G, M, V, h, one, gam], before + [torch.zeros(len(P))])
    assert _native.tam_tensors_step(*_clone([P, G, M]), h, *_clone([one] * 3),
                                    positive=True) is not None
    assert _native.adatam_tensors_step(*_clone([P, G, M, V]), h, one.clone(), **ada) is not None
    assert _native.amsgd_tensors_step(*_clone([P, G, M]), h, one.clone(), step=-0.01) \
        is not None
    assert _native.momo_adam_tensors_step(*_clone([P, G, M, V]), h, one, one.clone(), one,
                                          gam.clone(), **adam) is not None


# --------------------------------------------------------------------- MoMo-Adam's passes


def _adam_case(dtype, seed=6):
    P, G, D = _case(dtype, seed=seed)[:3]
    V = [(g * g * 3).abs() for g in _case(dtype, seed=seed + 1)[1]]
    V[0].view(-1)[:5] = 0  # exact zeros, as second moments hold where a gradient is always 0
    return P, G, D, V


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta1", [0.9, 0.3])  # lerp weights 0.1 and 0.7
def test_momo_adam_moments_are_torchs_and_the_sums_float64s(dtype, beta1):
    """The moments: torch's lerp_, mul_ and addcmul_ bit for bit; the sums against float64
    arithmetic on the new moments."""
    b2, bc2, eps = 0.99, 1 - 0.99 ** 7, 1e-6
    P, G, D, V = _adam_case(dtype)
    mine = [[t.clone() for t in x] for x in (P, G, D, V)]
    got = _native.momo_adam_moments(*mine, beta1=beta1, beta2=b2, bc2=bc2, eps=eps)
    assert got is not None
    xg, xd, dq = got
    for d, g, v in zip(D, G, V):
        d.lerp_(g, 1 - beta1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
    for got_t, want in zip(mine[2:], (D, V)):
        for a, b in zip(got_t, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    q64 = [d.double() / ((v.double() / bc2).sqrt() + eps) for d, v in zip(D, V)]
    rtol = 1e-5 if dtype == torch.float32 else 1e-13
    want_xg = torch.stack([(p.double() * g.double()).sum() for p, g in zip(P, G)])
    scale_xg = torch.stack([(p.double() * g.double()).abs().sum() for p, g in zip(P, G)])
    assert ((xg.double() - want_xg).abs() <= rtol * scale_xg).all()
    want_xd = sum((p.double() * d.double()).sum() for p, d in zip(P, D))
    scale_xd = sum((p.double() * d.double()).abs().sum() for p, d in zip(P, D))
    assert abs(xd.item() - want_xd.item()) <= rtol * scale_xd.item()
    want_dq = sum((d.double() * q).sum() for d, q in zip(D, q64))
    assert dq.item() == pytest.approx(want_dq.item(), rel=rtol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decay", ["none", "decoupled", "proximal"])
def test_momo_adam_update_is_torchs_operations_bit_for_bit(dtype, decay):
    """p * shrink, p.addcmul_(d / (sqrt(v / bc2) + eps), -tau), p * inverse: the eager
    kernel's operations (its correctly rounded square root), bit for bit."""
    bc2, eps, tau, lr, wd = 1 - 0.99 ** 7, 1e-6, 0.0123, 0.01, 0.1
    P, _, D, V = _adam_case(dtype)
    mine = [p.clone() for p in P]
    shrink = 1 - lr * wd if decay == "decoupled" else None
    inverse = 1 / (1 + lr * wd) if decay == "proximal" else None
    assert _native.momo_adam_update(mine, D, V, bc2=bc2, eps=eps, tau=tau, shrink=shrink,
                                    inverse=inverse)
    ntau = torch.tensor(-tau, dtype=dtype)
    for p, d, v in zip(P, D, V):
        q = exact_sqrt(torch.div(v, bc2)).add_(eps)
        q = torch.div(d, q)
        if shrink is not None:
            p.mul_(shrink)
        p.addcmul_(q, ntau)
        if inverse is not None:
            p.mul_(inverse)
    for a, b in zip(mine, P):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_momo_adam_sums_the_same_bits_with_one_thread_and_two(dtype):
    threads = torch.get_num_threads()
    got = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            got.append(_native.momo_adam_moments(*_adam_case(dtype), beta1=0.9, beta2=0.99,
                                                 bc2=0.5, eps=1e-8))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*got):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_momo_adam_passes_leave_what_they_do_not_take():
    P, G, D, V = _adam_case(torch.float32)
    before = _clone([P, G, D, V])
    hp = dict(beta1=0.9, beta2=0.99, bc2=0.5, eps=1e-8)
    assert _native.momo_adam_moments(P, G, D, [v.double() for v in V], **hp) is None
    assert _native.momo_adam_moments(P, G, D, V[:-1], **hp) is None
    assert _native.momo_adam_moments(P, G, D, V, **{**hp, "eps": torch.tensor(1e-8)}) is None
    assert not _native.momo_adam_update(P, D, [v.t() if v.dim() == 2 else v for v in V],
                                        bc2=0.5, eps=1e-8, tau=0.1)
    assert not _native.momo_adam_update(P, D, V, bc2=0.5, eps=1e-8, tau=torch.tensor(0.1))
    _unchanged([P, G, D, V], before)
    assert _native.momo_adam_moments(*_clone([P, G, D, V]), **hp) is not None  # without them
    assert _native.momo_adam_update(*_clone([P, D, V]), bc2=0.5, eps=1e-8, tau=0.1)


# ---------------------------------------------------------------------- AM-AdamW's passes


def _am_coefs(n, dtype, seed=9):
    g = torch.Generator().manual_seed(seed)
    c1 = (torch.rand(n, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    return c1, (c1 * 1e-8).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lam", [0.1, 0.0])
@pytest.mark.parametrize("decay", [True, False])
def test_amadamw_sums_are_the_eager_kernels_up_to_rounding(dtype, lam, decay):
    """The second moments: torch's mul_ and addcmul_ bit for bit; the sums: the eager
    kernel's _am_sums (torch's products and dots) up to float rounding."""
    b2 = 0.999
    P, G, D, V = _adam_case(dtype)
    c1, c2 = _am_coefs(len(P), dtype)
    mine = [[t.clone() for t in x] for x in (P, G, D, V)]
    got = _native.amadamw_sums(mine[0] if decay else None, *mine[1:], c1, c2, beta2=b2, lam=lam)
    assert got is not None and got.shape == (len(P), 5 if decay else 3)
    want = []
    for i, (p, g, d, v) in enumerate(zip(P, G, D, V)):
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        pre = exact_sqrt(v.double()) * c1[i].double() + c2[i].double()
        met = pre + lam * pre * pre
        t = d.double() - g.double()
        u = d.double() / pre
        row = [(u * g.double()).sum(), (u * d.double()).sum(), (t * t / met).sum()]
        if decay:
            row += [(p.double() * g.double()).sum(), (p.double() * d.double()).sum()]
        want.append(torch.stack(row))
    for a, b in zip(mine[3], V):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    rtol = 1e-4 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got.double(), torch.stack(want), rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lam", [0.1, 0.0])
@pytest.mark.parametrize("decay", [True, False])
def test_amadamw_update_is_the_eager_kernels_operations_bit_for_bit(dtype, lam, decay):
    """P = sqrt(v) c1 + c2, W = addcmul(P, P, P, lam), d.lerp_(g, (P / W) (1 - beta)),
    p * (1 - lr wd), p.addcdiv_(d, P, -lr): the eager kernel's operations, bit for bit."""
    lr, wd = 0.01, 0.05
    P, G, D, V = _adam_case(dtype)
    n = len(P)
    c1, c2 = _am_coefs(n, dtype)
    keep = torch.linspace(0.05, 0.95, n, dtype=dtype)  # 1 - beta: both lerp formulas
    mine = [[t.clone() for t in x] for x in (P, D)]
    assert _native.amadamw_update(mine[0], G, mine[1], V, c1, c2, keep, lam=lam, lr=lr,
                                  shrink=1 - lr * wd if decay else None)
    for i, (p, g, d, v) in enumerate(zip(P, G, D, V)):
        pre = exact_sqrt(v).mul_(c1[i]).add_(c2[i])
        if lam:
            met = torch.addcmul(pre, pre, pre, value=lam)
            d.lerp_(g, torch.div(pre, met).mul_(keep[i]))
        else:
            d.lerp_(g, keep[i])
        if decay:
            p.mul_(1 - lr * wd)
        p.addcdiv_(d, pre, value=-lr)
    for got, want in zip(mine, (P, D)):
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lam", [0.1, 0.0])
@pytest.mark.parametrize("decay", [True, False])
def test_amadamw_whole_step_is_its_passes_with_the_eager_betas_between(dtype, lam, decay):
    """``amadamw_tensors_step`` = ``adamem._am_shared_scales`` (the coefficients from pi),
    ``amadamw_sums``, ``adamem._am_beta_stack`` (the eager kernel's operations with float
    hyperparameters), then ``amadamw_update``: the same bits, pi too, over 30 cases (betas of
    0, clipped at the cap and between; lr 0: no gap term; pi from 0 to 1, steps 2 to 31)."""
    from shiftsim.optim.adamem import _am_beta_stack, _am_shared_scales, _inv_sqrt_bc
    for seed in range(30):
        P, G, D, V, u = _whole_case(dtype, seed)
        V = [v.abs() for v in V]
        n = len(P)
        lr = 0.0 if seed % 10 == 9 else 0.01 + u[0].item()
        prev, wd, b1, b2 = 0.01 + u[1].item(), 0.05 if decay else 0.0, 0.5 + 0.5 * u[2].item(), 0.99
        eps, t = (1e-8, 1e-3)[seed % 2], 2 + seed
        pi = torch.rand(n, generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64).to(dtype)
        c1, c2 = _am_shared_scales(pi, b1, b2, t, eps, dtype)
        shrink = 1 - lr * wd if decay else None
        ref = [[x.clone() for x in y] for y in (P, G, D, V)]
        sums = _native.amadamw_sums(ref[0] if decay else None, *ref[1:], c1, c2, beta2=b2,
                                    lam=lam)
        betas = _am_beta_stack(sums, lr=lr, prev_lr=prev, wd=wd, beta1_max=b1, first=False,
                               fixed_beta=None)
        assert _native.amadamw_update(ref[0], ref[1], ref[2], ref[3], c1, c2,
                                      (1 - betas).to(dtype), lam=lam, lr=lr, shrink=shrink)
        mine = [[x.clone() for x in y] for y in (P, G, D, V)]
        state = pi.clone()
        got = _native.amadamw_tensors_step(*mine, state, decay=decay, lr=lr, prev=prev, wd=wd,
                                           beta1=b1, beta2=b2, lam=lam, eps=eps,
                                           scale=_inv_sqrt_bc(b2, t), shrink=shrink)
        assert got is not None and got.shape == (n,) and got.dtype == dtype
        _same(got, betas)
        _same(state, pi * betas)
        _all_same(mine, ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_amadamw_scales_are_torchs(dtype):
    """The whole step's coefficients in C (``am_tensor_scales``): torch's bits for
    ``_am_shared_scales`` (1 - b1 pi, times s and times eps, each float rounded to the dtype)
    over 203 products of past betas (0, 1 and between) and three sets of hyperparameters."""
    from shiftsim.optim.adamem import _am_shared_scales, _inv_sqrt_bc
    pi = torch.cat([torch.rand(200, generator=torch.Generator().manual_seed(1),
                               dtype=torch.float64), torch.tensor([0.0, 1.0, 0.5])]).to(dtype)
    for b1, b2, t, eps in [(0.9, 0.999, 7, 1e-8), (0.95, 0.99, 2, 1e-3), (0.3, 0.5, 40, 0.1)]:
        got = _native.am_tensor_scales(pi, b1, _inv_sqrt_bc(b2, t), eps)
        if got is None:
            pytest.skip("native code unavailable")
        want = _am_shared_scales(pi, b1, b2, t, eps, dtype)
        _same(got[0], want[0])
        _same(got[1], want[1])


def test_amadamw_passes_leave_what_they_do_not_take():
    P, G, D, V = _adam_case(torch.float32)
    c1, c2 = _am_coefs(len(P), torch.float32)
    before = _clone([P, G, D, V])
    am = dict(decay=True, lr=0.01, prev=0.01, wd=0.01, beta1=0.9, beta2=0.9, lam=0.1, eps=1e-8,
              scale=1.2)
    pi = torch.ones(len(P))
    assert _native.amadamw_tensors_step(P, G, D, V, pi[:-1], **am) is None
    assert _native.amadamw_tensors_step(P, G, D, V, pi.double(), **am) is None
    assert _native.amadamw_tensors_step(P, G, D, V, pi, **{**am, "lr": torch.tensor(1.)}) is None
    assert _native.amadamw_tensors_step(P, G, D, V, pi, **{**am, "eps": torch.tensor(1.)}) is None
    assert _native.amadamw_tensors_step(P, G, D, V[:-1], pi, **am) is None
    assert torch.equal(pi, torch.ones(len(P)))
    assert _native.amadamw_sums(P, G, D, V, c1[:-1], c2, beta2=0.9, lam=0.1) is None
    assert _native.amadamw_sums(P, G, D, V, c1.double(), c2, beta2=0.9, lam=0.1) is None
    assert _native.amadamw_sums(P, G, D[:-1], V, c1, c2, beta2=0.9, lam=0.1) is None
    assert not _native.amadamw_update(P, G, D, V, c1, c2, c1[:-1], lam=0.1, lr=0.1)
    assert not _native.amadamw_update(P, G, D, V, c1, c2, c1, lam=torch.tensor(0.1), lr=0.1)
    _unchanged([P, G, D, V], before)
    assert _native.amadamw_sums(*_clone([P, G, D, V]), c1, c2, beta2=0.9, lam=0.1) is not None
    assert _native.amadamw_update(*_clone([P, G, D, V]), c1, c2, c1, lam=0.1, lr=0.1)


# ------------------------------------------------------------------------ through the class


@pytest.fixture()
def counted(monkeypatch):
    """``torch.compile`` refused (the native kernels must not need it) and the native steps'
    calls that applied counted: ``calls["momo"]`` (MoMo's whole step), ``calls["sums"]``
    (TAM's, AdaTAM(W)'s and AM-SGD's whole steps, which begin with the sums' pass)."""
    calls = {"momo": 0, "sums": 0, "adam": 0, "amw": 0}

    def counter(key, fn):
        def count(*args, **kwargs):
            out = fn(*args, **kwargs)
            calls[key] += out is not None
            return out
        return count

    def no_compile(*args, **kwargs):
        raise AssertionError("torch.compile called")

    monkeypatch.setattr(_native, "momo_tensors_step",
                        counter("momo", _native.momo_tensors_step))
    for name in ("tam_tensors_step", "adatam_tensors_step", "amsgd_tensors_step"):
        monkeypatch.setattr(_native, name, counter("sums", getattr(_native, name)))
    monkeypatch.setattr(_native, "momo_adam_tensors_step",
                        counter("adam", _native.momo_adam_tensors_step))
    monkeypatch.setattr(_native, "amadamw_tensors_step",
                        counter("amw", _native.amadamw_tensors_step))
    monkeypatch.setattr(torch, "compile", no_compile)
    monkeypatch.delenv(_compiled.ENV, raising=False)
    return calls


@pytest.mark.parametrize("bias_correction", [False, True])
def test_momo_native_step_matches_float64_reference(counted, bias_correction):
    hp = dict(lr=2.0, weight_decay=0.0)
    ours, _, _ = run(lambda ps, c: MoMo(ps, beta=0.8, lb=0.05, bias_correction=bias_correction,
                                        compile=c, **hp), 40, compile=True)
    assert counted["momo"] == 39
    ref = momo_reference(one_group(hp), beta=0.8, lb=0.05, bias_correction=bias_correction)
    assert_traj_close(ours, run_reference(ref, 40))


@pytest.mark.parametrize("name, kernel, steps", [
    ("momo", "momo", 7), ("momo_adam", "adam", 8), ("adamem_adamw", "amw", 7),
    ("tam", "sums", 0), ("adamem_sgd", "sums", 0), ("adatam", "sums", 0)])
def test_auto_takes_the_native_steps_that_are_faster_from_the_first_step(counted, name,
                                                                         kernel, steps):
    """``compile="auto"`` (the default) on a CPU, a model far below COMPILE_MIN_NUMEL and a run
    far shorter than COMPILE_AFTER_STEPS: MoMo's, MoMo-Adam's and AM-AdamW's native steps
    from their first covered step (counted: nothing to compile, and faster than their eager
    steps at every size measured); TAM's, AM-SGD's and AdaTAM's, faster too, keep the compile
    policy (eager here) so that a default run keeps its numbers. With
    ``compile=False`` or the native code off, eager (no compile either: the model is small)."""
    run(MAKERS[name], 8, compile="auto")
    assert counted[kernel] == steps
    run(MAKERS[name], 8, compile=False)
    assert counted[kernel] == steps


def test_auto_without_the_native_code_keeps_the_compile_policy(counted, monkeypatch):
    monkeypatch.setenv(_native.ENV, "0")
    _native._reset()
    try:
        _, _, opt = run(MAKERS["momo_adam"], 8, compile="auto")
        assert counted["adam"] == 0 and opt._compiled.eager_steps == 8
    finally:
        monkeypatch.undo()
        _native._reset()


@pytest.mark.parametrize("name, kernel, steps", [
    ("momo", "momo", 11), ("momo_bc", "momo", 11),  # MoMo's first step is eager (fresh)
    ("tam", "sums", 12), ("tam_decoupled", "sums", 12), ("tam_eps0", "sums", 12),
    ("adatam", "sums", 12), ("adatamw_bc", "sums", 12), ("adatam_nowd", "sums", 12),
    ("adamem_sgd", "sums", 11), ("adamem_sgd_nowd", "sums", 11),  # AM-SGD's first: eager
    ("momo_adam", "adam", 12), ("momo_adam_wd", "adam", 12), ("momo_adam_adamw", "adam", 12),
    ("adamem_adamw", "amw", 11), ("adamem_adamw_lam0", "amw", 11)])  # AM-AdamW's first: eager
@pytest.mark.parametrize("dtype", DTYPES)
def test_compiled_steps_on_a_cpu_take_the_native_code(counted, name, kernel, steps, dtype):
    """MoMo's, TAM's, AdaTAM(W)'s, AM-SGD's, MoMo-Adam's and AM-AdamW's compiled steps on a
    CPU: the native code (counted), no Inductor compile, the eager step's numbers up to float
    rounding."""
    eager, d_eager, _ = run(MAKERS[name], 12, dtype, compile=False)
    calls = counted[kernel]
    comp, d_comp, opt = run(MAKERS[name], 12, dtype, compile=True)
    assert counted[kernel] - calls == steps and opt._compiled.compiled is None
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    assert_traj_close(comp, eager, **tol)
    for k in d_eager:
        torch.testing.assert_close(d_comp[k], d_eager[k], **tol)


@pytest.mark.parametrize("name, entry, kernel", [("adamem_adamw", "beta_prod", "amw"),
                                                 ("momo_adam", "grad_dot_w", "adam")])
def test_native_steps_keep_their_per_tensor_state_as_views_of_one_vector(counted, name, entry,
                                                                         kernel):
    """AM-AdamW's products of past betas and MoMo-Adam's gammas: after native steps, each
    tensor's state entry is a view of one vector that the steps update in place (one storage,
    no new tensors a step); the steps' numbers are those of the eager kernels up to rounding
    (``test_compiled_steps_on_a_cpu_take_the_native_code``)."""
    _, _, opt = run(MAKERS[name], 6, compile=True)
    assert counted[kernel] >= 5
    entries = [opt.state[p][entry] for p in opt.param_groups[0]["params"]]
    assert len({t.untyped_storage().data_ptr() for t in entries}) == 1
    before = [t.item() for t in entries]
    p0 = opt.param_groups[0]["params"][0]
    p0.grad = torch.ones_like(p0)
    for p in opt.param_groups[0]["params"][1:]:
        p.grad = torch.full_like(p, 0.5)
    opt.step(loss=1.0) if opt.needs_loss else opt.step()
    after = [opt.state[p][entry] for p in opt.param_groups[0]["params"]]
    assert all(a is b for a, b in zip(after, entries))  # the same views, updated in place
    assert [t.item() for t in after] != before


def test_amadamw_native_step_takes_a_product_set_from_outside(counted):
    """An entry of the kept vector replaced from outside (as a loaded state or a user's hand
    would): the next native step stacks the entries again and uses the new value (pi <- pi
    beta with the replaced pi), and the entries are views of one vector again."""
    _, _, opt = run(MAKERS["adamem_adamw"], 4, compile=True)
    calls = counted["amw"]
    ps = opt.param_groups[0]["params"]
    replaced = torch.tensor(0.5, dtype=ps[0].dtype)
    opt.state[ps[1]]["beta_prod"] = replaced
    for p in ps:
        p.grad = torch.full_like(p, 0.25)
    opt.step()
    assert counted["amw"] == calls + 1
    st = opt.state[ps[1]]
    assert st["beta_prod"] is not replaced and replaced.item() == 0.5
    assert st["beta_prod"].item() == (replaced * st["beta"]).item()
    assert len({opt.state[p]["beta_prod"].untyped_storage().data_ptr() for p in ps}) == 1


def test_the_pass_bounds_benchmark_runs():
    """``benchmarks/pass_bounds.py`` (tiny sizes): every pass timed, in cache and from
    memory."""
    import subprocess
    import sys
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "pass_bounds.py"),
                          "--small", "8000", "--large", "16000", "--rounds", "1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in ("momo_adam first pass", "amadamw second pass", "torch fused AdamW",
                 "both passes from memory"):
        assert name in out.stdout


@pytest.mark.parametrize("decoupled", [False, True])
def test_tam_native_passes_match_float64_reference(counted, decoupled):
    hp = TAM_HP[0]
    ours, _, _ = run(lambda ps, c: TAM(ps, gamma=0.7, decoupled=decoupled, compile=c, **hp),
                     40, compile=True)
    assert counted["sums"] == 40
    assert_traj_close(ours, run_reference(tam_reference(one_group(hp), 0.7, decoupled), 40))


@pytest.mark.parametrize("cls", [AdaTAM, AdaTAMW])
@pytest.mark.parametrize("bias_correction", [False, True])
def test_adatam_native_passes_match_float64_reference(counted, cls, bias_correction):
    hp = ADA_HP[0]
    ours, _, _ = run(lambda ps, c: cls(ps, gamma=0.8, bias_correction=bias_correction,
                                       compile=c, **hp), 40, compile=True)
    assert counted["sums"] == 40
    ref = tam_reference(one_group(hp), 0.8, cls is AdaTAMW, adam=True,
                        bias_correction=bias_correction)
    assert_traj_close(ours, run_reference(ref, 40))


def test_am_sgd_native_passes_match_float64_reference(counted):
    hp = SGD_HP[1]
    betas: list[float] = []
    ours, _, opt = run(lambda ps, c: AdaptiveMemorySGD(ps, lam=0.2, beta_max=0.95, compile=c,
                                                       **hp), 40, compile=True)
    assert counted["sums"] == 39
    assert_traj_close(ours, run_reference(amsgd_reference(one_group(hp), 0.2, 0.95,
                                                          betas_out=betas), 40))
    assert opt.diagnostics()["beta"].item() == pytest.approx(betas[-1], abs=1e-9)


@pytest.mark.parametrize("divide", [True, False])
def test_momo_adam_native_passes_match_float64_reference(counted, divide):
    hp = ADAM_HP[1]
    ours, _, _ = run(lambda ps, c: MoMoAdam(ps, betas=(0.85, 0.99), eps=1e-6, divide=divide,
                                            lb=0.1, compile=c, **hp), 40, compile=True)
    assert counted["adam"] == 40
    ref = momo_reference(one_group(hp), adam=True, betas=(0.85, 0.99), eps=1e-6,
                         divide=divide, lb=0.1)
    assert_traj_close(ours, run_reference(ref, 40))


def test_amadamw_native_passes_match_float64_reference(counted):
    hp = ADAMW_HP[1]
    ours, _, _ = run(lambda ps, c: AdaptiveMemoryAdamW(ps, lam=0.2, compile=c, **hp), 40,
                     compile=True)
    assert counted["amw"] == 39
    assert_traj_close(ours, run_reference(amadamw_reference(one_group(hp), 0.2), 40))


# ------------------------------------------------------------------------------ the build


def _gomp_paths() -> set[str]:
    return {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
            if "libgomp" in line}


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="no /proc/self/maps")
def test_openmp_is_torchs_own_runtime():
    """Where torch runs on GCC's OpenMP, the library is built with it and loads torch's copy:
    one ``libgomp.so.1`` in the process, torch's (other packages may bring their own, renamed
    copies, as scikit-learn's wheels do: those are not ours)."""
    if not _native._torch_libgomp():
        pytest.skip("torch's parallel backend is not libgomp here")
    cc = _native._compiler()
    assert cc is not None
    if _native._openmp_flags(_native._version(cc)):
        assert _native.openmp()
    ours = {path for path in _gomp_paths() if Path(path).name == "libgomp.so.1"}
    assert len(ours) == 1 and Path(torch.__file__).parent in Path(ours.pop()).parents


def test_openmp_flags_only_for_gcc_with_torchs_libgomp(monkeypatch):
    gcc = "cc (Debian 12.2.0-14) 12.2.0\nCopyright (C) 2022 Free Software Foundation, Inc.\n"
    clang = "clang version 16.0.6\nTarget: x86_64-pc-linux-gnu\n"
    monkeypatch.setattr(_native, "_torch_libgomp", lambda: True)
    assert _native._openmp_flags(gcc) == [_native.OPENMP]
    assert _native._openmp_flags("gcc (GCC) 13.2.0\n") == [_native.OPENMP]
    assert _native._openmp_flags(clang) == []
    monkeypatch.setattr(_native, "_torch_libgomp", lambda: False)
    assert _native._openmp_flags(gcc) == []


@pytest.mark.usefixtures("fresh")
def test_a_compiler_without_openmp_builds_the_library_without_it(monkeypatch, tmp_path):
    """A compiler that refuses -fopenmp: the library is built without it (the loops on the
    calling thread), silently, and gives the same bits."""
    cc = _native._compiler()
    if cc is None:
        pytest.skip("no C compiler")
    want = _case(torch.float32, seed=7)
    tau_want = _native_step(want, 0.9)  # the library as built here (OpenMP where it can)
    monkeypatch.setenv("SHIFTSIM_CACHE", str(tmp_path / "other-cache"))
    _native._reset()
    wrapper = tmp_path / "cc-without-openmp"
    wrapper.write_text("#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = -fopenmp ] && "
                       "echo 'error: unsupported option -fopenmp' >&2 && exit 1; done\n"
                       f"exec {cc} \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("CC", str(wrapper))
    monkeypatch.setattr(_native, "_torch_libgomp", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _native.available()
    assert not _native.openmp()
    got = _case(torch.float32, seed=7)
    torch.testing.assert_close(_native_step(got, 0.9), tau_want, rtol=0, atol=0)
    for x, y in zip(got, want):
        for a, b in zip(x if isinstance(x, list) else [x], y if isinstance(y, list) else [y]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
