"""The native per-member arithmetic of the TAM and MoMo row kernels (``rowmath.c``,
``shiftsim.optim._native.tam_coefs`` / ``momo_coefs``): torch's numbers bit for bit (on CPUs
whose torch kernels fuse multiply-adds, as x86-64 with AVX2 and ARM64 do), for every member
count (torch's vectorised and scalar loops), dtype, float and per-member hyperparameters and
the guarded cases; the inputs it leaves to torch; and whole fleets with and without it."""

from __future__ import annotations

import pytest
import torch

import shiftsim as ss
from shiftsim.fleet import run_fleet
from shiftsim.optim import _native
from shiftsim.optim._kernels import exact, host, negative, one_minus, one_plus_product
from shiftsim.optim.momo import _one, _ratio, _step_sizes
from shiftsim.optim.tam import _positive, _scaled, _smooth

DTYPES = [torch.float32, torch.float64]
# 1 and 7: torch's scalar loop only; 16, 32: its vector loop only; 17, 45: both
MEMBERS = [1, 7, 16, 17, 32, 45]


@pytest.fixture
def split(native):
    """``split(threads)``: with 2 threads, every row split across two threads however few
    (torch's thread count 2; the Python pool's threshold and the library's OpenMP one, for the
    whole row steps, at 1); restored afterwards."""
    undo = []

    def apply(threads):
        if threads == 2:
            undo.append((torch.get_num_threads(), _native.SPLIT_FROM,
                         _native._rows_parallel_from(1)))
            torch.set_num_threads(2)
            _native.SPLIT_FROM = 1

    yield apply
    for threads, split_from, parallel_from in undo:
        torch.set_num_threads(threads)
        _native.SPLIT_FROM = split_from
        _native._rows_parallel_from(parallel_from)


def _same(got, want):
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True)


def _counter(name):
    """``_native.<name>`` wrapped to count its calls that applied (a result other than None
    or False) in ``calls["n"]``: ``(calls, wrapper)``."""
    calls = {"n": 0}
    fn = getattr(_native, name)

    def counted(*args, **kwargs):
        out = fn(*args, **kwargs)
        calls["n"] += out is not None and out is not False
        return out

    return calls, counted


def _hyper(kind, value, spread, K, dtype):
    """A float, or per-member values around it (an exact tensor, as a fleet's group holds)."""
    if kind == "float":
        return value
    return exact([value * (1 + spread * i / K) for i in range(K)], torch.zeros((), dtype=dtype))


def _vectors(K, dtype, seed, case):
    gen = torch.Generator().manual_seed(seed)

    def r(scale=1.0, low=0.0):
        return torch.rand(K, generator=gen, dtype=dtype) * scale + low

    mg, gg, sq, shat, scale = r(2, -1), r(), r(), r(2, -1), r()
    if case == "zero norms":  # |m|^2 |g|^2 = 0: the cosine 0
        sq[: K // 2 + 1] = 0
        gg[K // 2:] = 0
    elif case == "nan":
        mg[0] = float("nan")
    return mg, gg, sq, shat, scale


def _tam_torch(mg, gg, sq, shat, scale, gamma, eps, beta, lr):
    part = (mg, sq, gg)
    d = _smooth([part], [scale], shat, gamma, "global")
    w, step = _scaled(d + eps, scale, beta, lr, part, sq, _positive(eps))
    return d, w, step


@pytest.mark.parametrize("K", MEMBERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["float", "tensor"])
@pytest.mark.parametrize("case", ["random", "zero norms", "nan", "eps 0"])
def test_tam_coefs_are_torchs_bits(native, K, dtype, kind, case):
    """The damping, lerp weight and step, and the updated cosine, scale and kept |m|^2,
    against the torch code they replace (``_smooth``, ``_scaled``): the same bits. eps = 0
    takes the guarded division (sigma may be 0)."""
    lr, beta = _hyper(kind, 0.1, 1.0, K, dtype), _hyper(kind, 0.9, 0.05, K, dtype)
    gamma = _hyper(kind, 0.9, 0.05, K, dtype)
    eps = 0.0 if case == "eps 0" else _hyper(kind, 1e-8, 1.0, K, dtype)
    for seed in range(3):
        vecs = _vectors(K, dtype, seed, case)
        mg, gg = vecs[:2]
        if case == "eps 0":
            vecs[4][: K // 2 + 1] = 0  # sigma = d with scale 0: d may be 0 (shat = -1)
            vecs[3][:1] = -1
        ours = [t.clone() for t in vecs[2:]]
        theirs = [t.clone() for t in vecs[2:]]
        got = _native.tam_coefs(mg, gg, *ours, host(one_minus, gamma), eps, beta,
                                host(negative, lr), _positive(eps))
        assert got is not None
        want = _tam_torch(mg, gg, *theirs, gamma, eps, beta, lr)
        _same(list(got) + ours, list(want) + theirs)


def _momo_torch(f, la, gam, xg, xd, dd, fstar, beta, lr, wd):
    w = host(one_minus, beta)
    la.copy_(la * beta + f * w)
    gam.mul_(beta).add_(xg * w)
    tau = _step_sizes([{"lr": lr, "weight_decay": wd}], loss_avg=la, fstar=fstar, dot_xd=xd,
                      gamma=gam.sum(0), norm=dd, rho=1.0, lb=0.0, use_fstar=False)[0]
    return tau, -tau


@pytest.mark.parametrize("K", MEMBERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["float", "tensor"])
@pytest.mark.parametrize("decay", [False, True])
@pytest.mark.parametrize("case", ["random", "zero norms", "nan"])
def test_momo_coefs_are_torchs_bits(native, K, dtype, kind, decay, case):
    """The step size (and its negative), the loss average and gamma against the torch code
    they replace (``_momo_rows``' updates and ``_step_sizes``): the same bits, with and
    without weight decay (c = 1 + lr wd, its products skipped when it is 1)."""
    lr, beta = _hyper(kind, 0.5, 1.0, K, dtype), _hyper(kind, 0.9, 0.05, K, dtype)
    wd = _hyper(kind, 0.01, 1.0, K, dtype) if decay else 0.0
    gen = torch.Generator().manual_seed(K)
    for _ in range(3):
        f, la, xg, xd, dd = (torch.rand(K, generator=gen, dtype=dtype) * 2 - 0.5
                             for _ in range(5))
        gam = torch.rand(1, K, generator=gen, dtype=dtype) - 0.5
        fstar = torch.zeros(K, dtype=dtype)
        if case == "zero norms":
            dd[: K // 2 + 1] = 0
        elif case == "nan":
            xg[0] = float("nan")
        c = host(one_plus_product, lr, wd)
        cap = host(_ratio, lr, 1.0, keep=False)
        if isinstance(cap, torch.Tensor):
            cap = cap.to(dtype)
        ours, theirs = [la.clone(), gam.clone()], [la.clone(), gam.clone()]
        got = _native.momo_coefs(f, ours[0], beta, host(one_minus, beta), xg, xd, dd, ours[1],
                                 fstar, c, _one(c), cap)
        assert got is not None
        want = _momo_torch(f, theirs[0], theirs[1], xg, xd, dd, fstar, beta, lr, wd)
        _same(list(got) + ours, list(want) + theirs)


def test_a_hand_computed_tam_step(native):
    """One member: cos = <m, g> / sqrt(|m|^2 |g|^2) = 3 / sqrt(4 * 9) = 0.5; shat = 0 + 0.5
    (0.5 - 0) = 0.25 (gamma 0.5); d = 0.625; sigma = 0.5 * 1 + 0.625 = 1.125; w = d / sigma =
    5/9; step = -0.1 * 1.125; |m_new|^2 = ((1 - w) 4 + 2 w 3)(1 - w) + w^2 9."""
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    sq, shat, scale = t(4.0), t(0.0), t(1.0)
    d, w, step = _native.tam_coefs(t(3.0), t(9.0), sq, shat, scale, 0.5, 0.0, 0.5, -0.1, False)
    assert shat.item() == 0.25 and d.item() == 0.625 and scale.item() == 1.125
    assert w.item() == pytest.approx(5 / 9, abs=1e-15)
    assert step.item() == pytest.approx(-0.1125, abs=1e-15)
    u = 1 - 5 / 9
    assert sq.item() == pytest.approx((u * 4 + 2 * (5 / 9) * 3) * u + (5 / 9) ** 2 * 9, abs=1e-14)


def test_a_hand_computed_momo_step(native):
    """One member, beta 0.5: loss average 0.5 * 1 + 0.5 * 3 = 2, gamma 0.5 * 2 + 0.5 * 4 = 3;
    tau = min(lr, max(0, f_avg - f* + <x, d> - gamma) / |d|^2) = min(10, (2 + 5 - 3) / 2) = 2;
    with lr 1 the cap: 1."""
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    for lr, want in ((10.0, 2.0), (1.0, 1.0)):
        la, gam = t(1.0), t(2.0)
        tau, neg = _native.momo_coefs(t(3.0), la, 0.5, 0.5, t(4.0), t(5.0), t(2.0), gam,
                                      t(0.0), 1.0, True, lr)
        assert (la.item(), gam.item(), tau.item(), neg.item()) == (2.0, 3.0, want, -want)


@pytest.mark.parametrize("why, change", [
    ("float16", lambda a: {**a, "mg": a["mg"].half()}),
    ("a strided vector", lambda a: {**a, "gg": torch.ones(8, dtype=torch.float64)[::2]}),
    ("a vector of another length", lambda a: {**a, "shat": torch.zeros(5, dtype=torch.float64)}),
    ("a hyperparameter of another dtype", lambda a: {**a, "eps": torch.zeros(4)}),
    ("a hyperparameter of another length", lambda a: {**a, "beta": torch.zeros(3).double()}),
    ("a hyperparameter that is not a number", lambda a: {**a, "neg_lr": "0.1"}),
])
def test_inputs_left_to_torch(native, why, change):
    args = {name: torch.zeros(4, dtype=torch.float64)
            for name in ("mg", "gg", "sqnorm", "shat", "scale")}
    args.update(lerp_weight=0.1, eps=1e-8, beta=0.9, neg_lr=-0.1, positive=True)
    assert _native.tam_coefs(**args) is not None
    assert _native.tam_coefs(**change(args)) is None, why


def test_off_leaves_the_arithmetic_to_torch(monkeypatch):
    monkeypatch.setenv(_native.ENV, "0")
    _native._reset()
    try:
        z = torch.zeros(3)
        assert _native.tam_coefs(z, z, z, z, z, 0.1, 1e-8, 0.9, -0.1, True) is None
        assert _native.momo_coefs(z, z, 0.9, 0.1, z, z, z, z, z, 1.0, True, 0.1) is None
    finally:
        monkeypatch.undo()
        _native._reset()


@pytest.mark.parametrize("name", ["tam", "momo"])
def test_fleets_with_and_without_the_native_arithmetic_are_the_same(native, monkeypatch, name):
    """A fleet of 18 members (more than one vector of torch's loop) varying the learning rate
    and the momentum, over 150 steps: the same traces bit for bit whether the row kernel takes
    its whole step from one native call (counted: once a step past MoMo's first; its sums,
    per-member numbers and fused passes) or all of it from torch's operations (and torch's
    row sums' bits are compared elsewhere: the native sums stay on here)."""
    calls, counted = _counter(f"{name}_step")

    key = "momentum" if name == "tam" else "beta"
    members = [(ss.optim.spec(name, lr=0.05 * (1 + i % 3), **{key: 0.8 + 0.01 * i}), i % 5)
               for i in range(18)]
    sc = ss.label_flip_tasks(ss.data.digits(), rate=0.5, tasks=2, steps_per_task=75)
    model = ss.models.mlp(hidden=(16,))
    monkeypatch.setattr(_native, f"{name}_step", counted)
    with_native = run_fleet(sc, model, members, device="cpu")
    assert calls["n"] == 150 - (name == "momo")
    monkeypatch.setattr(_native, f"{name}_step", lambda *a, **k: None)
    monkeypatch.setattr(_native, f"{name}_coefs", lambda *a, **k: None)
    monkeypatch.setattr(_native, "tam_update", lambda *a, **k: False)
    sums = _native.row_sums
    monkeypatch.setattr(_native, "row_sums",
                        lambda ts, pairs, lerp=None: None if lerp is not None else sums(ts, pairs))
    with_torch = run_fleet(sc, model, members, device="cpu")
    for a, b in zip(with_native, with_torch):
        assert a.trace.equals(b.trace) and a.evals.equals(b.evals)



SPLITS = [(301,), (7, 1, 16, 17, 255, 5), (256, 45)]


def _rows(K, widths, dtype, gen, count):
    """``count`` tensors as segments ``(K, n_s)``, every other one a strided view."""
    out = []
    for j in range(count):
        whole = torch.randn(K, sum(widths) + (3 if j % 2 else 0), generator=gen, dtype=dtype)
        out.append(list(whole[:, :sum(widths)].split(widths, 1)))
    return out


def _weights(kind, K, dtype, gen):
    if kind == "float small":
        return 0.1
    if kind == "float large":
        return 0.7
    w = torch.rand(K, generator=gen, dtype=dtype)  # per member, both sides of 0.5
    w[0], w[-1] = 0.25, 0.75
    return w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("widths", SPLITS, ids=lambda w: f"{len(w)}-segments")
@pytest.mark.parametrize("kind", ["float small", "float large", "per member"])
@pytest.mark.parametrize("threads", [1, 2])
def test_sums_after_a_lerp_are_torchs_lerp_then_the_sums(native, split, dtype, widths, kind,
                                                         threads):
    """``row_sums(..., lerp=(0, 2, w))`` moves the first tensor toward the third in the sums'
    pass: the moved tensor is torch's ``_foreach_lerp_`` bit for bit, and the sums are the
    native sums of the moved tensor (rows split across two threads too)."""
    split(threads)
    gen = torch.Generator().manual_seed(len(widths))
    K = 9
    D, P, G = _rows(K, widths, dtype, gen, 3)
    w = _weights(kind, K, dtype, gen)
    pairs = ((0, 0), (1, 2), (1, 0))
    theirs = [t.clone() for t in D]
    if isinstance(w, torch.Tensor):
        torch._foreach_lerp_(theirs, G, [w.view(-1, 1)] * len(theirs))
    else:
        torch._foreach_lerp_(theirs, G, w)
    want = [s.clone() for s in _native.row_sums((theirs, P, G), pairs)]
    got = _native.row_sums((D, P, G), pairs, lerp=(0, 2, w))
    _same(D, theirs)
    _same(got, want)


def test_a_lerp_it_cannot_take_changes_nothing(native):
    gen = torch.Generator().manual_seed(0)
    D, P, G = _rows(4, (10, 6), torch.float32, gen, 3)
    before = [t.clone() for t in D]
    for lerp in [(0, 2, torch.full((4,), 0.1, dtype=torch.float64)),  # another dtype
                 (0, 2, torch.full((3,), 0.1)),  # another member count
                 (0, 0, 0.1), (0, 5, 0.1), (0, 2, "0.1")]:
        assert _native.row_sums((D, P, G), ((0, 0),), lerp=lerp) is None, lerp
    _same(D, before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("widths", SPLITS, ids=lambda w: f"{len(w)}-segments")
@pytest.mark.parametrize("shrink", [None, "float", "per member"])
@pytest.mark.parametrize("threads", [1, 2])
def test_tam_update_is_torchs_three_passes(native, split, dtype, widths, shrink, threads):
    """The momentum's lerp, the decoupled decay's scaling and the step's addcmul in one pass:
    torch's ``_foreach_lerp_``, ``_foreach_mul_`` and ``_foreach_addcmul_`` bit for bit, with
    weights on both sides of 0.5 (torch's two lerp formulas)."""
    split(threads)
    gen = torch.Generator().manual_seed(7)
    K = 9
    P, G, M = _rows(K, widths, dtype, gen, 3)
    w = _weights("per member", K, dtype, gen)
    step = -torch.rand(K, generator=gen, dtype=dtype)
    factor = {None: None, "float": 0.999,
              "per member": 1 - torch.rand(K, generator=gen, dtype=dtype) / 100}[shrink]
    tp, tm = [t.clone() for t in P], [t.clone() for t in M]
    torch._foreach_lerp_(tm, G, [w.view(-1, 1)] * len(tm))
    if isinstance(factor, torch.Tensor):
        torch._foreach_mul_(tp, [factor.view(-1, 1)] * len(tp))
    elif factor is not None:
        torch._foreach_mul_(tp, factor)
    torch._foreach_addcmul_(tp, tm, [step.view(-1, 1)] * len(tp))
    assert _native.tam_update(P, G, M, w, step, factor)
    _same(M, tm)
    _same(P, tp)


def test_a_tam_update_it_cannot_take_changes_nothing(native):
    gen = torch.Generator().manual_seed(1)
    P, G, M = _rows(4, (10, 6), torch.float32, gen, 3)
    w, step = torch.full((4,), 0.1), torch.full((4,), -0.1)
    before = [t.clone() for t in P + M]
    assert not _native.tam_update(P, G[:1], M, w, step)  # split otherwise
    assert not _native.tam_update(P, G, M, w.double(), step)  # another dtype
    assert not _native.tam_update(P, G, M, w[:3], step)  # another member count
    assert not _native.tam_update(P, G, M, w, step, "0.9")
    assert not _native.tam_update([], [], [], w, step)
    _same(P + M, before)


def test_float_hyperparameters_outlive_the_kept_arrays(native, monkeypatch):
    """With room for one kept float, every new float drops the ones before it, within one
    call: the calls still see their values (each holds its arrays until it is done; a pointer
    alone would read freed memory, which gave wrong numbers in 200 of 200 trials of this kind
    before the fix)."""
    monkeypatch.setattr(_native, "_HYPER_LIMIT", 1)
    dtype, K = torch.float64, 5
    for trial in range(20):
        gamma, eps = 0.9 - trial * 1e-3, 1e-8 + trial * 1e-9
        beta, lr = 0.9 - trial * 1e-4, 0.05 + trial * 1e-4
        vecs = _vectors(K, dtype, trial, "random")
        ours, theirs = [t.clone() for t in vecs[2:]], [t.clone() for t in vecs[2:]]
        got = _native.tam_coefs(*vecs[:2], *ours, 1 - gamma, eps, beta, -lr, True)
        want = _tam_torch(*vecs[:2], *theirs, gamma, eps, beta, lr)
        _same(list(got) + ours, list(want) + theirs)
        f, la, xg, xd, dd = (torch.rand(K, dtype=dtype) for _ in range(5))
        gam, fstar = torch.rand(1, K, dtype=dtype), torch.zeros(K, dtype=dtype)
        ours, theirs = [la.clone(), gam.clone()], [la.clone(), gam.clone()]
        got = _native.momo_coefs(f, ours[0], beta, 1 - beta, xg, xd, dd, ours[1], fstar,
                                 1 + lr * eps, False, lr)
        want = _momo_torch(f, theirs[0], theirs[1], xg, xd, dd, fstar, beta, lr, eps)
        _same(list(got) + ours, list(want) + theirs)


# ------------------------------------------------- whole row steps (tam_step, momo_step)

#: segment splits of a row: one, several (heads and tails of the 16 lanes), and a split of
#: more segments than the native whole step takes (the caller then makes three calls)
STEP_SPLITS = [(301,), (7, 1, 16, 17, 255, 5), (256, 45)]


def _tam_inputs(K, widths, dtype, seed, hyper, eps0=False):
    gen = torch.Generator().manual_seed(seed)
    P, G, M = _rows(K, widths, dtype, gen, 3)
    mg, gg, sq, shat, scale = _vectors(K, dtype, seed, "random")
    sq.copy_(_native.row_sums((M,), ((0, 0),))[0])  # the kept |m|^2 of the momentum given
    gamma, eps = _hyper(hyper, 0.9, 0.1, K, dtype), 0.0 if eps0 else _hyper(hyper, 1e-8, 1, K,
                                                                                dtype)
    beta, lr = _hyper(hyper, 0.9, 0.05, K, dtype), _hyper(hyper, 0.05, 1, K, dtype)
    return [P, G, M], [sq, shat, scale], (gamma, eps, beta, lr)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("widths", STEP_SPLITS, ids=lambda w: f"{len(w)}-segments")
@pytest.mark.parametrize("hyper", ["float", "tensor"])
@pytest.mark.parametrize("shrink", [None, "float", "per member"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("K", [1, 9, 17])
def test_tam_step_is_the_three_calls_bit_for_bit(native, split, dtype, widths, hyper,
                                                 shrink, threads, K):
    """:func:`_native.tam_step` (member by member: sums, numbers, update) against
    :func:`row_sums`, :func:`tam_coefs` and :func:`tam_update` over all members in turn (each
    tested against torch above): the same parameters, momenta, kept vectors and results, for
    float and per-member hyperparameters, decoupled decay as a float or per member, and the
    rows split across two threads."""
    split(threads)
    (P, G, M), vecs, (gamma, eps, beta, lr) = _tam_inputs(K, widths, dtype, K, hyper)
    gen = torch.Generator().manual_seed(3)
    factor = {None: None, "float": 0.999,
              "per member": 1 - torch.rand(K, generator=gen, dtype=dtype) / 100}[shrink]
    theirs = [[t.clone() for t in ts] for ts in (P, M)], [v.clone() for v in vecs]
    (tp, tm), (tsq, tshat, tscale) = theirs
    mg, gg = (s.clone() for s in _native.row_sums((tm, G), ((0, 1), (1, 1))))
    args = (host(one_minus, gamma), eps, beta, host(negative, lr), _positive(eps))
    want = [t.clone() for t in _native.tam_coefs(mg, gg, tsq, tshat, tscale, *args)]
    assert _native.tam_update(tp, G, tm, want[1], want[2], factor)
    got = _native.tam_step(P, G, M, *vecs, *args, factor)
    assert got is not None
    _same(got, want)
    _same(P + M + vecs, tp + tm + [tsq, tshat, tscale])


def test_tam_step_with_eps_0_is_the_three_calls(native):
    """eps = 0: the guarded weight. Two members have sigma = 0 (m = -g, so the cosine is -1;
    the smoothed cosine -1, so the damping and c = d + eps are 0; a zero scale): their weight is
    the guard's 1, the same numbers as the three calls; a third has m = 0 (sigma = c)."""
    K, dtype = 6, torch.float32
    (P, G, M), vecs, (gamma, eps, beta, lr) = _tam_inputs(K, (40, 9), dtype, 5, "float", True)
    for g, m in zip(G, M):
        g[:2] = 0
        m[2] = 0
    G[0][:2, 0] = 1.0  # |g| = 1, m = -g: <m, g> = -1 exactly
    for g, m in zip(G, M):
        m[:2] = -g[:2]
    vecs[1][:2] = -1.0  # the smoothed cosine
    vecs[2][:3] = 0  # the scale
    vecs[0].copy_(_native.row_sums((M,), ((0, 0),))[0])
    tp, tm, tv = [t.clone() for t in P], [t.clone() for t in M], [v.clone() for v in vecs]
    args = (host(one_minus, gamma), eps, beta, host(negative, lr), _positive(eps))
    mg, gg = (s.clone() for s in _native.row_sums((tm, G), ((0, 1), (1, 1))))
    want = [t.clone() for t in _native.tam_coefs(mg, gg, *tv, *args)]
    assert _native.tam_update(tp, G, tm, want[1], want[2])
    got = _native.tam_step(P, G, M, *vecs, *args)
    _same(got, want)
    _same(P + M + vecs, tp + tm + tv)
    d, w, _ = got
    assert d[:2].eq(0).all() and w[:2].eq(1).all() and w[2] == 1  # the guard, and sigma = c


def _momo_inputs(K, widths, dtype, seed, hyper, decay):
    gen = torch.Generator().manual_seed(seed)
    D, P, G = _rows(K, widths, dtype, gen, 3)
    f = torch.rand(K, generator=gen, dtype=dtype) + 1
    la, fstar = torch.rand(K, generator=gen, dtype=dtype) + 1, torch.zeros(K, dtype=dtype)
    gam = torch.rand(1, K, generator=gen, dtype=dtype)
    beta, lr = _hyper(hyper, 0.9, 0.05, K, dtype), _hyper(hyper, 0.3, 1, K, dtype)
    wd = _hyper(hyper, 0.01, 1, K, dtype) if decay else 0.0
    w, c = host(one_minus, beta), host(one_plus_product, lr, wd)
    cap = host(_ratio, lr, 1.0, keep=False)
    cap = cap.to(dtype) if isinstance(cap, torch.Tensor) else cap
    shrink = host(_ratio, 1, c) if decay else None
    return [D, P, G], [f, la, gam, fstar], (beta, w, c, _one(c), cap, shrink)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("widths", STEP_SPLITS, ids=lambda w: f"{len(w)}-segments")
@pytest.mark.parametrize("hyper", ["float", "tensor"])
@pytest.mark.parametrize("decay", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("K", [1, 9, 17])
def test_momo_step_is_the_sums_the_numbers_and_torchs_update(native, split, dtype, widths,
                                                             hyper, decay, threads, K):
    """:func:`_native.momo_step` against ``row_sums(..., lerp=)``, :func:`momo_coefs` and
    torch's update (``_foreach_addcmul_``, then ``_foreach_mul_`` by ``1 / (1 + lr wd)``) over
    all members in turn: the same first moments, parameters, loss averages, gammas and step
    sizes bit for bit, float and per-member hyperparameters, with and without weight decay,
    the rows split across two threads."""
    split(threads)
    (D, P, G), (f, la, gam, fstar), (beta, w, c, c_one, cap, shrink) = _momo_inputs(
        K, widths, dtype, K + 1, hyper, decay)
    td, tp, tla, tgam = [t.clone() for t in D], [t.clone() for t in P], la.clone(), gam.clone()
    dd, xg, xd = (s.clone() for s in _native.row_sums((td, tp, G), ((0, 0), (1, 2), (1, 0)),
                                                      lerp=(0, 2, w)))
    want = [t.clone() for t in _native.momo_coefs(f, tla, beta, w, xg, xd, dd, tgam, fstar, c,
                                                  c_one, cap)]
    torch._foreach_addcmul_(tp, td, [want[1].view(-1, 1)] * len(tp))
    if isinstance(shrink, torch.Tensor):
        torch._foreach_mul_(tp, [shrink.view(-1, 1)] * len(tp))
    elif shrink is not None:
        torch._foreach_mul_(tp, shrink)
    got = _native.momo_step(D, P, G, f, la, beta, w, gam, fstar, c, c_one, cap, shrink)
    assert got is not None
    _same(got, want)
    _same(D + P + [la, gam], td + tp + [tla, tgam])


def test_whole_steps_they_cannot_take_change_nothing(native):
    """More segments than :data:`MAX_SEGMENTS`, another dtype, another member count, a
    hyperparameter it cannot read: None, nothing changed (the row kernels then make the three
    calls, or use torch)."""
    K, dtype = 4, torch.float32
    many = (2,) * (_native.MAX_SEGMENTS + 1)
    for widths in [many, (10, 6)]:
        (P, G, M), vecs, (gamma, eps, beta, lr) = _tam_inputs(K, widths, dtype, 0, "float")
        before = [t.clone() for t in P + M + vecs]
        args = [1 - gamma, eps, beta, -lr, True]
        cases = [(P, G, M, *vecs, *args)] if widths == many else [
            (P, G[:1], M, *vecs, *args),  # split otherwise
            (P, G, M, *[v.double() for v in vecs], *args),  # another dtype
            (P, G, M, *[v[:3] for v in vecs], *args),  # another member count
            (P, G, M, *vecs, "0.1", *args[1:]),
            (P, G, M, *vecs, *args, "0.9")]
        for case in cases:
            assert _native.tam_step(*case) is None
        _same(P + M + vecs, before)
        (D, P, G), (f, la, gam, fstar), (beta, w, c, c_one, cap, shrink) = _momo_inputs(
            K, widths, dtype, 1, "float", True)
        before = [t.clone() for t in D + P + [la, gam]]
        cases = [(D, P, G, f, la, beta, w, gam, fstar, c, c_one, cap, shrink)] \
            if widths == many else [
            (D, P, G, f.double(), la, beta, w, gam, fstar, c, c_one, cap, shrink),
            (D, P, G[:1], f, la, beta, w, gam, fstar, c, c_one, cap, shrink),
            (D, P, G, f, la, beta, w, gam, fstar, c, c_one, cap, "0.9")]
        for case in cases:
            assert _native.momo_step(*case) is None
        _same(D + P + [la, gam], before)


@pytest.mark.parametrize("name", ["tam", "momo"])
def test_fleets_with_whole_steps_and_with_three_calls_are_the_same(native, monkeypatch, name):
    """A fleet of 18 members with per-member learning rates, momenta and (decoupled) weight
    decay over 150 steps: the same traces bit for bit with the whole native step (counted) and
    with the three native calls it replaces."""
    calls, counted = _counter(f"{name}_step")

    key = "momentum" if name == "tam" else "beta"
    extra = {"decoupled": True} if name == "tam" else {}
    members = [(ss.optim.spec(name, lr=0.05 * (1 + i % 3), weight_decay=0.01 * (i % 2),
                              **{key: 0.8 + 0.01 * i}, **extra), i % 5) for i in range(18)]
    sc = ss.label_flip_tasks(ss.data.digits(), rate=0.5, tasks=2, steps_per_task=75)
    model = ss.models.mlp(hidden=(16, 8))
    monkeypatch.setattr(_native, f"{name}_step", counted)
    whole = run_fleet(sc, model, members, device="cpu")
    assert calls["n"] == 150 - (name == "momo")
    monkeypatch.setattr(_native, f"{name}_step", lambda *a, **k: None)
    three = run_fleet(sc, model, members, device="cpu")
    for a, b in zip(whole, three):
        assert a.trace.equals(b.trace) and a.evals.equals(b.evals)



# ------------------------------------------------------------- AdaTAM(W) (adatam_step)

def _adatam_case(K, widths, dtype, seed, kind, decay):
    """Rows P, G, M, V (V >= 0, some exact zeros as a never-moving input gives), a smoothed
    cosine, and a fleet group's hyperparameters: exact tensors, 0-d (shared) or one per
    member."""
    gen = torch.Generator().manual_seed(seed)
    P, G, M, V = _rows(K, widths, dtype, gen, 4)
    for v in V:
        v.copy_(v.square() / 100)
        v[:, :1] = 0
    shat = torch.rand(K, generator=gen, dtype=dtype) * 2 - 1
    like = torch.zeros((), dtype=dtype)

    def h(value, spread):
        return exact([value] * K if kind == "shared" else
                     [value * (1 + spread * i / K) for i in range(K)], like)

    hp = {"lr": h(1e-3, 1), "gamma": h(0.9, 0.1), "torque_eps": h(1e-8, 1), "eps": h(1e-8, 1),
          "beta1": h(0.9, 0.05), "beta2": h(0.999, 0.0005),
          "weight_decay": h(0.01, 1) if decay else 0.0}
    return [P, G, M, V], shat, hp


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("widths", [(301,), (7, 1, 16, 17, 255, 5)],
                         ids=lambda w: f"{len(w)}-segments")
@pytest.mark.parametrize("kind", ["shared", "per member"])
@pytest.mark.parametrize("decay", ["none", "decoupled", "coupled"])
@pytest.mark.parametrize("bias_correction", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_adatam_step_is_torchs_operations(native, monkeypatch, split, dtype, widths, kind, decay,
                                          bias_correction, threads):
    """:func:`_adatam_rows` with the whole native step against its torch operations
    (``adatam_step`` off: torch's updates after the same native sums), three steps: the same
    parameters, moments, smoothed cosine and damping bit for bit, for shared and per-member
    hyperparameters, no, decoupled and coupled decay, with and without bias correction, the
    rows split across two threads."""
    from shiftsim.optim.tam import _adatam_rows
    split(threads)
    K = 9
    tensors, shat, hp = _adatam_case(K, widths, dtype, len(widths), kind, decay != "none")
    theirs = [[t.clone() for t in ts] for ts in tensors], shat.clone()
    flags = {"bias_correction": bias_correction}
    calls, counted = _counter("adatam_step")

    for step in (1, 2, 7):
        monkeypatch.setattr(_native, "adatam_step", counted)
        d = _adatam_rows(*tensors, shat, step, hp, decay != "coupled", flags).clone()
        monkeypatch.setattr(_native, "adatam_step", lambda *a, **k: None)
        want = _adatam_rows(*theirs[0], theirs[1], step, hp, decay != "coupled", flags)
        _same([d, shat], [want, theirs[1]])
        for ours, ref in zip(tensors, theirs[0]):
            _same(ours, ref)
    assert calls["n"] == 3


def test_an_adatam_step_it_cannot_take_changes_nothing(native):
    K, dtype = 4, torch.float32
    for widths in [(2,) * (_native.MAX_SEGMENTS + 1), (10, 6)]:
        (P, G, M, V), shat, hp = _adatam_case(K, widths, dtype, 0, "shared", False)
        before = [t.clone() for t in P + M + V + [shat]]
        args = (0.1, 1e-8, 0.9, 0.999, 0.001, 1e-8)
        size = torch.full((K,), -1e-3)
        cases = [(P, G, M, V, shat, *args, size)]
        if len(widths) == 2:
            cases = [(P, G, M, V[:1], shat, *args, size),  # split otherwise
                     (P, G, M, V, shat.double(), *args, size),  # another dtype
                     (P, G, M, V, shat[:3], *args, size),  # another member count
                     (P, G, M, V, shat, *args, -1e-3),  # a float step: torch's other formula
                     (P, G, M, V, shat, "0.1", *args[1:], size)]
        for case in cases:
            assert _native.adatam_step(*case) is None
        _same(P + M + V + [shat], before)




# --------------------------------------------------------------------- AM-SGD (amsgd_step)

def _amsgd_case(K, widths, dtype, seed, kind, decay):
    gen = torch.Generator().manual_seed(seed)
    P, G, D = _rows(K, widths, dtype, gen, 3)
    like = torch.zeros((), dtype=dtype)

    def h(value, spread):
        return exact([value] * K if kind == "shared" else
                     [value * (1 + spread * i / K) for i in range(K)], like)

    hp = {"lr": h(0.05, 1), "lam": h(0.1, 1), "beta_max": h(0.9, 0.05),
          "weight_decay": h(0.01, 1) if decay else 0.0}
    return [P, G, D], hp


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("widths", [(301,), (7, 1, 16, 17, 255, 5)],
                         ids=lambda w: f"{len(w)}-segments")
@pytest.mark.parametrize("kind", ["shared", "per member"])
@pytest.mark.parametrize("decay", [False, True])
@pytest.mark.parametrize("case", ["random", "d = g", "lr 0"])
@pytest.mark.parametrize("threads", [1, 2])
def test_amsgd_step_is_torchs_operations(native, monkeypatch, split, dtype, widths, kind, decay,
                                         case, threads):
    """:func:`_amsgd_rows` with the whole native step against its torch operations
    (``amsgd_step`` off: torch's arithmetic and passes after the same native sums), three steps:
    the same parameters, momenta and betas bit for bit; with members whose momentum equals
    their gradient (the guarded division: beta 0) and a learning-rate ratio of 0 (lr 0),
    lerp weights on both sides of 0.5, the rows split across two threads."""
    from shiftsim.optim.adamem import _amsgd_rows, lr_ratio
    split(threads)
    K = 9
    (P, G, D), hp = _amsgd_case(K, widths, dtype, len(widths), kind, decay)
    if case == "d = g":
        for d, g in zip(D, G):
            d[:3] = g[:3]
    if case == "lr 0":
        hp["lr"] = exact([0.0] + [0.05] * (K - 1), torch.zeros((), dtype=dtype))
    ratio = lr_ratio(hp["lr"])
    theirs = [[t.clone() for t in ts] for ts in (P, G, D)]
    calls, counted = _counter("amsgd_step")

    for _ in range(3):
        monkeypatch.setattr(_native, "amsgd_step", counted)
        beta = _amsgd_rows(P, G, D, ratio, hp).clone()
        monkeypatch.setattr(_native, "amsgd_step", lambda *a, **k: None)
        want = _amsgd_rows(*theirs, ratio, hp)
        _same([beta] + P + D, [want] + theirs[0] + theirs[2])
    assert calls["n"] == 3
    if case == "d = g" and not decay:
        assert beta[:3].eq(0).all()


def test_an_amsgd_step_it_cannot_take_changes_nothing(native):
    K, dtype = 4, torch.float32
    for widths in [(2,) * (_native.MAX_SEGMENTS + 1), (10, 6)]:
        (P, G, D), hp = _amsgd_case(K, widths, dtype, 0, "shared", False)
        before = [t.clone() for t in P + D]
        args = (1.0, 0.1, 1.1, 0.9, 0.9, -0.05)
        cases = [(P, G, D, *args)]
        if len(widths) == 2:
            cases = [(P, G[:1], D, *args),  # split otherwise
                     (P, G, D, torch.ones(3), *args[1:]),  # another member count
                     (P, G, D, torch.ones(K, dtype=torch.float64), *args[1:]),  # another dtype
                     (P, G, D, *args[:5], "-0.05")]
        for case in cases:
            assert _native.amsgd_step(*case) is None
        _same(P + D, before)




# ------------------------------------------------------------------------ Grams (grams_step)

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("widths", [(301,), (7, 1, 16, 17, 255, 5)],
                         ids=lambda w: f"{len(w)}-segments")
@pytest.mark.parametrize("kind", ["shared", "per member"])
@pytest.mark.parametrize("decay", [False, True])
@pytest.mark.parametrize("official", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_grams_step_is_torchs_operations(native, monkeypatch, split, dtype, widths, kind, decay,
                                         official, threads):
    """A fleet's Grams step (:func:`_grams_stacked`) with the native pass against torch's
    operations (``grams_step`` off), three steps: the same parameters and moments bit for bit;
    gradients with exact zeros and a NaN (``sign`` is +0 for both), lerp weights on both sides
    of 0.5, both epsilon modes, the rows split across two threads."""
    from shiftsim.optim.grams import _grams_stacked, grams_init
    split(threads)
    K = 9
    gen = torch.Generator().manual_seed(len(widths))
    P, G = _rows(K, widths, dtype, gen, 2)
    G[-1][1, -1] = float("nan")
    like = torch.zeros((), dtype=dtype)

    def h(value, spread):
        return exact([value] * K if kind == "shared" else
                     [value * (1 + spread * i / K) for i in range(K)], like)

    b1 = h(0.9, 0.05) if kind == "shared" else exact([0.3 + 0.05 * i for i in range(K)], like)
    hp = {"lr": h(1e-3, 1), "beta1": b1, "beta2": h(0.999, 0.0005), "eps": h(1e-6, 1),
          "weight_decay": h(0.01, 1) if decay else 0.0}
    flags = {"eps_mode": "official" if official else "paper", "track_flips": False}
    ours, theirs = grams_init(P), grams_init(P)
    tp = [t.clone() for t in P]
    calls, counted = _counter("grams_step")

    for i in range(3):
        if i == 1:  # exact zeros where the momentum is not 0
            G[0][:, :2] = 0
        monkeypatch.setattr(_native, "grams_step", counted)
        _grams_stacked(ours, P, G, torch.zeros(K, dtype=dtype), hp, flags)
        monkeypatch.setattr(_native, "grams_step", lambda *a, **k: False)
        _grams_stacked(theirs, tp, G, torch.zeros(K, dtype=dtype), hp, flags)
        for key in ("exp_avg", "exp_avg_sq"):
            _same(ours[key], theirs[key])
        _same(P, tp)
    assert calls["n"] == 3


def test_a_grams_step_it_cannot_take_changes_nothing(native):
    K, dtype = 4, torch.float32
    gen = torch.Generator().manual_seed(0)
    for widths in [(2,) * (_native.MAX_SEGMENTS + 1), (10, 6)]:
        P, G, M, V = _rows(K, widths, dtype, gen, 4)
        before = [t.clone() for t in P + M + V]
        size = torch.full((K,), -1e-3)
        args = (0.1, 0.999, 0.001, 1e-8)
        cases = [(P, G, M, V, *args, size)]
        if len(widths) == 2:
            cases = [(P, G, M, V[:1], *args, size),  # split otherwise
                     (P, G, M, V, *args, size[:3]),  # another member count
                     (P, G, M, V, *args, size.double()),  # another dtype
                     (P, G, M, V, *args, -1e-3),  # a float step: torch's other formula
                     (P, G, M, V, "0.1", *args[1:], size), ([], [], [], [], *args, size)]
        for case in cases:
            assert not _native.grams_step(*case)
        _same(P + M + V, before)


def _fleet_members(name):
    """12 members of ``name`` with per-member learning rates, weight decay and betas (AM-SGD:
    lambdas and clips); Grams also one member tracking its flips (torch's path, one group
    apart)."""
    if name == "adamem_sgd":
        return [(ss.optim.spec(name, lr=0.05 * (1 + i % 3), weight_decay=0.01 * (i % 2),
                               lam=0.1 * (1 + i % 4), beta_max=0.9 - 0.1 * (i % 2)), i % 5)
                for i in range(12)]
    members = [(ss.optim.spec(name, lr=1e-3 * (1 + i % 3), weight_decay=0.01 * (i % 2),
                              betas=(0.9 - 0.01 * (i % 4), 0.999)), i % 5) for i in range(12)]
    if name == "grams":
        members.append((ss.optim.spec("grams", track_flips=True), 0))
    return members


@pytest.mark.parametrize("name, step, calls_expected", [
    ("adatam", "adatam_step", 120), ("adatamw", "adatam_step", 120),
    ("adamem_sgd", "amsgd_step", 119),  # every step past the first (plain SGD)
    ("grams", "grams_step", 120)])  # the member tracking flips: not counted
def test_fleets_with_the_native_step_and_with_torchs_operations_are_the_same(
        native, monkeypatch, name, step, calls_expected):
    """A fleet of 12 members with per-member hyperparameters over 120 steps: the same traces
    bit for bit with the native step (counted) and with torch's operations."""
    calls, counted = _counter(step)
    sc = ss.label_flip_tasks(ss.data.digits(), rate=0.5, tasks=2, steps_per_task=60)
    model = ss.models.mlp(hidden=(16, 8))
    members = _fleet_members(name)
    monkeypatch.setattr(_native, step, counted)
    native_step = run_fleet(sc, model, members, device="cpu")
    assert calls["n"] == calls_expected
    monkeypatch.setattr(_native, step, lambda *a, **k: None if step != "grams_step" else False)
    torch_ops = run_fleet(sc, model, members, device="cpu")
    for a, b in zip(native_step, torch_ops):
        assert a.trace.equals(b.trace) and a.evals.equals(b.evals)


def test_the_native_steps_benchmark_runs_and_finds_the_same_traces(native):
    """``benchmarks/native_steps.py`` (tiny): every toggle leaves the traces unchanged (it
    stops otherwise; MoMo-Adam's and AM-AdamW's, with native sums, equal up to rounding) and
    prints each single run's and the league's times and groups."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "native_steps.py"),
                          "--runs", "1", "--steps", "20", "--seeds", "1", "--hidden", "4"],
                         capture_output=True, text=True, timeout=300, cwd=root)
    assert out.returncode == 0, out.stderr
    for name in ("tam", "momo", "adatam", "adamem_sgd", "grams", "momo_adam", "adamem_adamw",
                 "13 members"):
        assert f"  {name} " in out.stdout
    assert "group _adatam_stacked" in out.stdout and "paired" in out.stdout
    # the two steps with native sums are compared up to rounding, the gap printed
    assert out.stdout.count("traces equal up to rounding; largest loss difference") == 3


# ------------------------------------------------------------ MoMo-Adam (momo_adam_rows)

def _momo_adam_case(K, widths, dtype, seed, kind, decay):
    """Rows P, G, D, V (V >= 0, some exact zeros), MoMo-Adam's stacked state over them and a
    fleet group's hyperparameters (exact tensors: 0-d shared, or one per member)."""
    from shiftsim.optim.momo import momo_adam_init

    tensors, _, hp = _adatam_case(K, widths, dtype, seed, kind, decay)
    P, G, D, V = tensors
    state = momo_adam_init(P, lb=0.0, learner_dims=1)
    state["grad_avg"], state["grad_avg_sq"] = D, V
    like = torch.zeros((), dtype=dtype)
    hp = {"lr": hp["lr"] * 10, "beta1": hp["beta1"], "beta2": hp["beta2"], "eps": hp["eps"],
          "lb": 0.0, "weight_decay": hp["weight_decay"]}
    loss = torch.rand(K, generator=torch.Generator().manual_seed(seed + 1), dtype=dtype) + 1
    return P, G, state, hp, loss, like


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("widths", [(301,), (7, 1, 16, 17, 255, 5)],
                         ids=lambda w: f"{len(w)}-segments")
@pytest.mark.parametrize("kind", ["shared", "per member"])
@pytest.mark.parametrize("decay", ["none", "decoupled", "proximal"])
@pytest.mark.parametrize("threads", [1, 2])
def test_momo_adam_rows_passes_are_torchs_operations(native, split, dtype, widths, kind, decay,
                                                     threads):
    """The two native passes against torch's operations of :func:`momo_adam` with the same
    step sizes: the moments ``d``, ``v`` and the parameters bit for bit (the direction's
    square root correctly rounded, as the eager kernel's numpy one); the sums against float64
    (per segment <p, g>, per row <p, d> and <d, q>); rows split across two threads."""
    from shiftsim.optim._kernels import sqrt
    from shiftsim.optim.momo import _bias_correction, _inverse_decay

    split(threads)
    K = 9
    P, G, state, hp, _, _ = _momo_adam_case(K, widths, dtype, 3, kind, decay != "none")
    D, V = state["grad_avg"], state["grad_avg_sq"]
    p0, d0, v0 = ([t.clone() for t in ts] for ts in (P, D, V))
    p_before = torch.cat(P, 1).double()
    w1, w2 = host(one_minus, hp["beta1"]), host(one_minus, hp["beta2"])
    bc2 = host(_bias_correction, hp["beta2"], 3, keep=False)
    lr, wd = hp["lr"], hp["weight_decay"]
    pre = host(lambda a, b: 1 - a * b, lr, wd) if decay == "decoupled" else None
    post = host(_inverse_decay, lr, wd) if decay == "proximal" else None
    ntau = -torch.rand(K, generator=torch.Generator().manual_seed(5), dtype=dtype) / 100
    seen = {}

    def numbers(xg, xd, dq):
        seen.update(xg=xg.clone(), xd=xd.clone(), dq=dq.clone())
        return ntau

    assert _native.momo_adam_rows(P, G, D, V, w1, hp["beta2"], w2, bc2, hp["eps"], pre, post,
                                  numbers)

    def col(h, t):
        return h.view(-1, 1) if isinstance(h, torch.Tensor) and h.dim() else h

    for s in range(len(widths)):
        p, g, d, v = p0[s], G[s], d0[s], v0[s]
        d.lerp_(g, col(w1, d))
        v.mul_(col(hp["beta2"], v))
        v.addcmul_(g, torch.mul(g, col(w2, g)))
        q = sqrt(torch.div(v, col(bc2, v))).add_(col(hp["eps"], v))
        q = torch.div(d, q)
        xg = (p.double() * g.double()).sum(1)
        tol = 1e-6 if dtype is torch.float32 else 1e-14
        assert torch.allclose(seen["xg"][s].double(), xg, rtol=0,
                              atol=tol * float((p.double() * g.double()).abs().sum()) + 1e-30)
        if pre is not None:
            p.mul_(col(pre, p))
        p.addcmul_(q, ntau.view(-1, 1))
        if post is not None:
            p.mul_(col(post, p))
        _same([D[s], V[s], P[s]], [d, v, p])
    d_new, v_new = (torch.cat(ts, 1) for ts in (D, V))
    q_new = torch.div(d_new, sqrt(torch.div(v_new, col(bc2, v_new))).add_(col(hp["eps"],
                                                                              v_new)))
    for got, x, y in ((seen["xd"], p_before, d_new.double()),
                      (seen["dq"], d_new.double(), q_new.double())):
        tol = 1e-6 if dtype is torch.float32 else 1e-14
        bound = tol * (x * y).abs().sum(1) + 1e-30
        assert bool(((got.double() - (x * y).sum(1)).abs() <= bound).all())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["shared", "per member"])
@pytest.mark.parametrize("decay, divide", [(False, True), (True, True), (True, False)])
@pytest.mark.parametrize("use_fstar", [False, True])
def test_momo_adam_rows_step_equals_momo_adam_up_to_rounding(native, monkeypatch, dtype, kind,
                                                             decay, divide, use_fstar):
    """A fleet group's MoMo-Adam step with the native passes against :func:`momo_adam`'s
    operations (the native code off), three steps from the same state: the moments bit for
    bit; the step sizes, gamma, the loss average, f* and the parameters equal up to float
    rounding (the sums are the native ones)."""
    from shiftsim.optim.momo import _momo_adam_stacked

    K, widths = 9, (7, 1, 16, 17, 255, 5)
    P, G, state, hp, loss, _ = _momo_adam_case(K, widths, dtype, 4, kind, decay)
    theirs = {k: ([t.clone() for t in v] if isinstance(v, list) else
                  v.clone() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
    P2 = [t.clone() for t in P]
    flags = {"rows": True, "divide": divide, "use_fstar": use_fstar}
    calls, counted = _counter("momo_adam_rows")
    # the step size's numerator c (f - f*) + <x, d> - c gamma cancels: float32 sums 1e-7 apart
    # come out up to 2e-4 apart there (seen), and the parameters follow
    rtol = 1e-3 if dtype is torch.float32 else 1e-10
    for _ in range(3):
        monkeypatch.setattr(_native, "momo_adam_rows", counted)
        tau, fstar = _momo_adam_stacked(state, P, G, loss, hp, flags)
        monkeypatch.setattr(_native, "momo_adam_rows", lambda *a, **k: False)
        want_tau, want_fstar = _momo_adam_stacked(theirs, P2, G, loss, hp, flags)
        _same(state["grad_avg"] + state["grad_avg_sq"], theirs["grad_avg"] + theirs["grad_avg_sq"])
        for got, want in ((tau, want_tau), (fstar, want_fstar), (state["grad_dot_w"],
                          theirs["grad_dot_w"]), (state["loss_avg"], theirs["loss_avg"])):
            torch.testing.assert_close(got, want, rtol=rtol, atol=1e-12)
        for a, b in zip(P, P2):  # parameters of order 1: rounding is absolute near 0
            torch.testing.assert_close(a, b, rtol=rtol, atol=1e-6 if dtype is torch.float32
                                       else 1e-12)
    assert calls["n"] == 3


def test_a_momo_adam_rows_step_it_cannot_take_changes_nothing(native):
    K, dtype = 4, torch.float32
    P, G, state, hp, _, _ = _momo_adam_case(K, (10, 6), dtype, 0, "shared", False)
    D, V = state["grad_avg"], state["grad_avg_sq"]
    before = [t.clone() for t in P + D + V]
    args = (0.1, 0.999, 0.001, 0.5, 1e-8, None, None)

    def numbers(xg, xd, dq):  # pragma: no cover - must not be reached
        raise AssertionError("a step that does not apply must not compute")

    strided = [t.t().contiguous().t() for t in P]  # columns: not rows of contiguous elements
    for case in [(P, G, D, V[:1]),  # split otherwise
                 (P, G, D, [v.double() for v in V]),  # another dtype
                 (strided, G, D, V),
                 ([t[:3] for t in P], G, D, V)]:  # another member count
        assert not _native.momo_adam_rows(*case, *args, numbers)
    assert not _native.momo_adam_rows(P, G, D, V, "0.1", *args[1:], numbers)
    many = [list(t.split(1, 1)) for t in (torch.zeros(K, _native.MAX_SEGMENTS + 1),) * 4]
    assert not _native.momo_adam_rows(*many, *args, numbers)
    _same(P + D + V, before)


# ------------------------------------------------------------ AM-AdamW (amadamw_rows)

def _amadamw_case(K, widths, dtype, seed, kind, decay):
    """Rows P, G, D, V as :func:`_adatam_case` makes them (V >= 0, exact zeros), their
    preconditioner coefficients c1, c2 ``(S, K)`` and a fleet group's hyperparameters."""
    tensors, _, hp = _adatam_case(K, widths, dtype, seed, kind, decay)
    gen = torch.Generator().manual_seed(seed + 7)
    S = len(widths)
    c1 = 1 + torch.rand(S, K, generator=gen, dtype=dtype)
    c2 = torch.rand(S, K, generator=gen, dtype=dtype) * 1e-8
    like = torch.zeros((), dtype=dtype)
    lam = exact([0.1] * K if kind == "shared" else [0.1 * (1 + i / K) for i in range(K)], like)
    return tensors, c1, c2, hp, lam


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("widths", [(301,), (7, 1, 16, 17, 255, 5)],
                         ids=lambda w: f"{len(w)}-segments")
@pytest.mark.parametrize("kind", ["shared", "per member"])
@pytest.mark.parametrize("decay", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_amadamw_rows_passes_are_torchs_operations(native, split, dtype, widths, kind, decay,
                                                   threads):
    """The two native passes against AM-AdamW's eager operations with tensor hyperparameters
    (:func:`~shiftsim.optim.adamem._am_precond`, ``_am_metric``, the lerp weight, torch's
    ``div_`` and ``addcdiv_``) given the same betas: the moments and parameters bit for bit;
    the sums against float64; rows split across two threads."""
    from shiftsim.optim._kernels import decay_factor
    from shiftsim.optim.adamem import _am_metric, _am_precond

    split(threads)
    K = 9
    (P, G, D, V), c1, c2, hp, lam = _amadamw_case(K, widths, dtype, 3, kind, decay)
    p0, d0, v0 = ([t.clone() for t in ts] for ts in (P, D, V))
    b2, w2 = hp["beta2"], host(one_minus, hp["beta2"])
    shrink = host(decay_factor, hp["lr"], hp["weight_decay"]) if decay else None
    nlr = host(negative, hp["lr"])
    beta = torch.rand(len(widths), K, generator=torch.Generator().manual_seed(9), dtype=dtype)
    seen = {}

    def betas(sums):
        seen["sums"] = sums.clone()
        return beta, None

    assert _native.amadamw_rows(P, G, D, V, c1, c2, b2, w2, lam, True, decay, shrink, nlr,
                                betas)

    def col(h):
        return h.view(-1, 1) if isinstance(h, torch.Tensor) and h.dim() else h

    tol = 1e-6 if dtype is torch.float32 else 1e-14
    for s in range(len(widths)):
        x, g, d, v = p0[s], G[s], d0[s], v0[s]
        x_before = x.double()
        v.mul_(col(b2))
        v.addcmul_(g, torch.mul(g, col(w2)))
        Pm = _am_precond(v, torch.empty_like(v), c1[s].view(-1, 1), c2[s].view(-1, 1), 1)
        Wm = _am_metric(Pm, torch.empty_like(v), lam, 1)
        dt = (d - g)
        refs = [(d / Pm).double() * g.double(), (d / Pm).double() * d.double(),
                (dt / Wm).double() * dt.double(), x_before * g.double(),
                x_before * d.double()]
        assert seen["sums"].shape == (len(widths), 5 if decay else 3, K)
        for r, ref in enumerate(refs[:seen["sums"].shape[1]]):
            bound = tol * ref.abs().sum(1) + 1e-30
            assert bool(((seen["sums"][s, r].double() - ref.sum(1)).abs() <= bound).all())
        a = torch.div(Pm, Wm).mul_((1 - beta[s]).view(-1, 1))
        d.lerp_(g, a)
        if shrink is not None:
            x.mul_(col(shrink))
        den = Pm.clone().div_(col(nlr))
        x.addcdiv_(d, den)
        _same([V[s], D[s], P[s]], [v, d, x])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["shared", "per member"])
@pytest.mark.parametrize("decay", [False, True])
def test_amadamw_rows_step_equals_adamem_adamw_up_to_rounding(native, monkeypatch, dtype, kind,
                                                              decay):
    """A fleet group's AM-AdamW step with the native passes against :func:`adamem_adamw`'s
    operations (the native code off), three steps from the same state (the first one's beta
    fixed at its maximum): the second moments bit for bit; the betas, first moments and
    parameters equal up to float rounding (the sums are the native ones)."""
    from shiftsim.optim.adamem import _amadamw_stacked, adamem_adamw_init

    K, widths = 9, (7, 1, 16, 17, 255, 5)
    (P, G, _, _), _, _, hp, lam = _amadamw_case(K, widths, dtype, 4, kind, decay)
    P = [p.contiguous() for p in P]
    G = [g.contiguous() for g in G]
    hp = {**hp, "lam": lam}
    state = adamem_adamw_init(P, learner_dims=1)
    theirs = {k: ([t.clone() for t in v] if isinstance(v, list) else
                  v.clone() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
    P2 = [t.clone() for t in P]
    calls, counted = _counter("amadamw_rows")
    rtol = 1e-3 if dtype is torch.float32 else 1e-10
    for _ in range(3):
        monkeypatch.setattr(_native, "amadamw_rows", counted)
        (got,) = _amadamw_stacked(state, P, G, None, hp, {})
        monkeypatch.setattr(_native, "amadamw_rows", lambda *a, **k: False)
        (want,) = _amadamw_stacked(theirs, P2, G, None, hp, {})
        _same(state["exp_avg_sq"], theirs["exp_avg_sq"])
        torch.testing.assert_close(got, want, rtol=rtol, atol=1e-6)
        for a, b in zip(state["exp_avg"] + P, theirs["exp_avg"] + P2):
            torch.testing.assert_close(a, b, rtol=rtol, atol=1e-6 if dtype is torch.float32
                                       else 1e-12)
    assert calls["n"] == 3


def test_an_amadamw_rows_step_it_cannot_take_changes_nothing(native):
    K, dtype = 4, torch.float32
    (P, G, D, V), c1, c2, hp, lam = _amadamw_case(K, (10, 6), dtype, 0, "shared", True)
    before = [t.clone() for t in P + D + V]
    nlr = host(negative, hp["lr"])

    def betas(sums):  # pragma: no cover - must not be reached
        raise AssertionError("a step that does not apply must not compute")

    rest = (0.999, 0.001, lam, True, True, None)
    strided = [t.t().contiguous().t() for t in P]
    for case in [(P, G, D, V[:1], c1, c2), (P, G, D, [v.double() for v in V], c1, c2),
                 (strided, G, D, V, c1, c2), (P, G, D, V, c1[:1], c2),
                 (P, G, D, V, c1.double(), c2)]:
        assert not _native.amadamw_rows(*case, *rest, nlr, betas)
    assert not _native.amadamw_rows(P, G, D, V, c1, c2, *rest, -1e-3, betas)  # a float lr
    assert not _native.amadamw_rows(P, G, D, V, c1, c2, "0.999", *rest[1:], nlr, betas)
    _same(P + D + V, before)


# ------------------------------- MoMo-Adam's and AM-AdamW's numbers between their row passes

def _momo_adam_torch(f, la, gam, xg, xd, dq, fstar, beta1, lr, wd, step):
    from shiftsim.optim.momo import _momo_adam_taus

    tau = _momo_adam_taus([{"lr": lr, "weight_decay": wd}], xg, xd, dq, gam=gam, loss_avg=la,
                          fstar=fstar, f=f, beta1=beta1, step=step, lb=0.0,
                          use_fstar=False)[0]
    return tau, -tau


def _momo_adam_native(f, la, gam, xg, xd, dq, fstar, beta1, lr, wd, step):
    from shiftsim.optim.momo import _bias_correction, _cap

    rho = host(_bias_correction, beta1, step, keep=False)
    c = host(one_plus_product, lr, wd)
    return _native.momo_adam_coefs(f, la, gam, xg, xd, dq, fstar, beta1,
                                   host(one_minus, beta1), rho, _one(rho), c, _one(c),
                                   _cap(host(_ratio, lr, rho, keep=False), la.dtype))


@pytest.mark.parametrize("K", MEMBERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["float", "tensor"])
@pytest.mark.parametrize("decay", [False, True])
@pytest.mark.parametrize("S", [1, 6, 20])
@pytest.mark.parametrize("case", ["random", "zero norms", "nan", "rho 1"])
def test_momo_adam_coefs_are_torchs_bits(native, K, dtype, kind, decay, S, case):
    """MoMo-Adam's step size (and its negative), loss average and per-segment gamma against
    the torch code they replace (:func:`~shiftsim.optim.momo._momo_adam_taus` without f*), at
    steps 1, 2 and 7 (the bias correction rho = 1 - beta1^t; "rho 1": beta1 = 0, its product
    skipped), with and without weight decay (c = 1 + lr wd), 1 to 20 segments: the same
    bits."""
    lr = _hyper(kind, 0.5, 1.0, K, dtype)
    beta1 = 0.0 if case == "rho 1" else _hyper(kind, 0.9, 0.05, K, dtype)
    wd = _hyper(kind, 0.01, 1.0, K, dtype) if decay else 0.0
    gen = torch.Generator().manual_seed(K + S)
    for step in (1, 2, 7):
        f, la, xd, dq, fstar = (torch.rand(K, generator=gen, dtype=dtype) * 2 - 0.5
                                for _ in range(5))
        xg, gam = (torch.rand(S, K, generator=gen, dtype=dtype) - 0.5 for _ in range(2))
        if case == "zero norms":
            dq[: K // 2 + 1] = 0
        elif case == "nan":
            xg[-1, 0] = float("nan")
        ours, theirs = [la.clone(), gam.clone()], [la.clone(), gam.clone()]
        got = _momo_adam_native(f, *ours, xg, xd, dq, fstar, beta1, lr, wd, step)
        assert got is not None
        want = _momo_adam_torch(f, *theirs, xg, xd, dq, fstar, beta1, lr, wd, step)
        _same(list(got) + ours, list(want) + theirs)


def test_a_hand_computed_momo_adam_step_size(native):
    """One member, two segments, beta1 0.5 at step 1 (rho = 0.5): gamma = (0.5 * 1 + 0.5 * 3)
    + (0.5 * 2 + 0.5 * 4) = 2 + 3 = 5, the loss average 0.5 * 3 + 0.5 * 1 = 2; f* = 2: gap =
    2 - 0.5 * 2 = 1; tau = min(lr / rho, max(0, 1 + <x, d> - gamma) / norm) = min(20, (1 + 6 -
    5) / 4) = 0.5; with lr 0.1 the cap 0.2."""
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    for lr, want in ((10.0, 0.5), (0.1, 0.2)):
        la, gam = t(1.0), t(1.0, 2.0).view(2, 1)
        tau, neg = _momo_adam_native(t(3.0), la, gam, t(3.0, 4.0).view(2, 1), t(6.0), t(4.0),
                                     t(2.0), 0.5, lr, 0.0, 1)
        assert gam.flatten().tolist() == [2.0, 3.0] and la.item() == 2.0
        assert tau.item() == pytest.approx(want, abs=1e-15) and neg.item() == -tau.item()


def test_momo_adam_numbers_it_cannot_take_change_nothing(native):
    z, zs = torch.zeros(4), torch.zeros(3, 4)
    args = dict(loss=z, loss_avg=z.clone(), gam=zs.clone(), xg=zs, xd=z, dq=z, fstar=z,
                beta1=0.9, weight1=0.1, rho=0.1, rho_one=False, c=1.0, c_one=True, cap=1.0)
    assert _native.momo_adam_coefs(**args) is not None
    for change in [{"xg": torch.zeros(2, 4)},  # another segment count than gamma's
                   {"gam": zs.double()}, {"xd": torch.zeros(5)},
                   {"gam": torch.zeros(4, 3).t()},  # not contiguous
                   {"beta1": torch.full((4,), 0.9, dtype=torch.float64)},  # another dtype
                   {"cap": "1.0"}]:
        before = (args["loss_avg"].clone(), args["gam"].clone())
        assert _native.momo_adam_coefs(**{**args, **change}) is None, change
        _same([args["loss_avg"], args["gam"]], before)


def _am_torch(sums, lr, wd, b1, first, pi):
    from shiftsim.optim.adamem import _am_beta_stack

    beta = _am_beta_stack(sums, lr=lr, prev_lr=lr, wd=wd, beta1_max=b1, first=first,
                          fixed_beta=None)
    pi.mul_(beta)
    return beta, 1 - beta


def _am_native(sums, lr, wd, b1, first, pi, decay):
    return _native.am_betas(sums, with_p=decay, first=first, lr=lr, wd=wd,
                            cwl=host(one_plus_product, wd, lr) if decay else 1.0, beta_max=b1,
                            pi=pi)


@pytest.mark.parametrize("K", MEMBERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["float", "tensor"])
@pytest.mark.parametrize("decay", [False, True])
@pytest.mark.parametrize("case", ["random", "first", "zero den", "nan", "lr not positive"])
def test_am_betas_are_torchs_bits(native, K, dtype, kind, decay, case):
    """AM-AdamW's betas per segment and member, 1 - beta and the product of the betas against
    the torch code they replace (:func:`~shiftsim.optim.adamem._am_beta_stack` as
    ``_amadamw_rows`` calls it, then ``pi.mul_``): the same bits, with and without the
    parameters' sums (weight decay), on the first step, for zero denominators, a NaN, and
    learning rates of 0 or below (torch's guarded division)."""
    like = torch.zeros((), dtype=dtype)
    S, R = 5, 5 if decay else 3
    lr = exact([0.01], like) if kind == "float" else _hyper("tensor", 0.01, 1.0, K, dtype)
    if case == "lr not positive":
        lr = exact([0.0], like) if kind == "float" else \
            exact([0.0 if i % 3 == 0 else -0.01 if i % 3 == 1 else 0.02 for i in range(K)], like)
    wd = _hyper(kind, 0.01, 1.0, K, dtype) if decay else 0.0
    b1 = _hyper(kind, 0.9, -0.1, K, dtype)
    gen = torch.Generator().manual_seed(K)
    for _ in range(3):
        sums = torch.randn(S, R, K, generator=gen, dtype=dtype)
        sums[:, 2] = sums[:, 2].abs() + 0.1  # the denominators: positive
        if case == "zero den":
            sums[:, 2, : K // 2 + 1] = 0
        elif case == "nan":
            sums[0, 0, 0] = float("nan")
        pi = torch.rand(S, K, generator=gen, dtype=dtype)
        ours, theirs = pi.clone(), pi.clone()
        got = _am_native(sums, lr, wd, b1, case == "first", ours, decay)
        assert got is not None
        want = _am_torch(sums, lr, wd, b1, case == "first", theirs)
        _same(list(got) + [ours], list(want) + [theirs])


def test_a_hand_computed_am_beta(native):
    """q1 = <g, d/P> = 1, q2 = <d, d/P> = 3, den = 4, lr 0.1: num = 4 - (3 - 1) + 0.1 * 1 / 0.1
    = 3, beta = 3 / 4 (below beta_max 0.9); pi 2 -> 1.5. With weight decay 0.5 and the
    parameters' sums x1 = 2, x2 = 4: num = 2 - 0.5 (4 - 2) + (1 + 0.5 * 0.1) (0.1 (1 + 0.5 *
    2)) / 0.1 = 1 + 2.1 = 3.1, beta = 0.775."""
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    lr = exact([0.1], torch.zeros((), dtype=torch.float64))
    pi = t(2.0).view(1, 1)
    beta, keep = _am_native(t(1.0, 3.0, 4.0).view(1, 3, 1), lr, 0.0, 0.9, False, pi, False)
    assert (beta.item(), keep.item(), pi.item()) == (0.75, 0.25, 1.5)
    beta, _ = _am_native(t(1.0, 3.0, 4.0, 2.0, 4.0).view(1, 5, 1), lr, 0.5, 0.9, False, None,
                         True)
    assert beta.item() == pytest.approx(0.775, abs=1e-15)


def test_am_betas_it_cannot_take_change_nothing(native):
    like = torch.zeros(())
    sums, pi, lr = torch.rand(2, 3, 4), torch.ones(2, 4), exact([0.01], like)
    args = dict(with_p=False, first=False, lr=lr, wd=0.0, cwl=1.0, beta_max=0.9, pi=pi)
    assert _native.am_betas(sums, **args) is not None
    pi.fill_(1.0)
    for s, change in [(sums, {"lr": 0.01}),  # a float lr: the eager formula differs
                      (sums, {"with_p": True}),  # 3 sums where 5 are needed
                      (sums.double(), {}), (sums.transpose(0, 2).contiguous().transpose(0, 2), {}),
                      (sums, {"pi": torch.ones(3, 4)}), (sums, {"pi": pi.double()}),
                      (sums, {"beta_max": torch.full((4,), 0.9, dtype=torch.float64)})]:
        assert _native.am_betas(s, **{**args, **change}) is None, change
    _same([pi], [torch.ones(2, 4)])


@pytest.mark.parametrize("name", ["momo_adam", "adamem_adamw"])
def test_fleets_with_and_without_the_native_numbers_are_the_same(native, monkeypatch, name):
    """A fleet of 18 members varying the learning rate, beta1 and the weight decay, over 150
    steps: the same traces bit for bit whether MoMo-Adam's numbers between its row passes
    (:func:`_native.momo_adam_coefs`) or AM-AdamW's betas (:func:`_native.am_betas`) come
    from the native call (counted: every step; MoMo-Adam's members with f* estimation, a
    group of their own, take torch's) or from torch's operations."""
    fn = "momo_adam_coefs" if name == "momo_adam" else "am_betas"
    calls, counted = _counter(fn)
    extra = ({"use_fstar": True} if name == "momo_adam" else {"weight_decay": 0.01})
    members = [(ss.optim.spec(name, lr=(0.05 if name == "momo_adam" else 1e-3) * (1 + i % 3),
                              betas=(0.8 + 0.01 * i, 0.999), **(extra if i % 2 else {})),
                i % 5)
               for i in range(18)]
    sc = ss.label_flip_tasks(ss.data.digits(), rate=0.5, tasks=2, steps_per_task=75)
    model = ss.models.mlp(hidden=(16,))
    monkeypatch.setattr(_native, fn, counted)
    with_native = run_fleet(sc, model, members, device="cpu")
    assert calls["n"] == 150  # one group (MoMo-Adam: the one without f* estimation)
    monkeypatch.setattr(_native, fn, lambda *a, **k: None)
    with_torch = run_fleet(sc, model, members, device="cpu")
    for a, b in zip(with_native, with_torch):
        assert a.trace.equals(b.trace) and a.evals.equals(b.evals)
