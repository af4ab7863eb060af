"""The functional kernels: ``learner_dims=1`` on K stacked learners equals K separate runs
(per-learner reductions, per-learner hyperparameters as ``(K,)`` tensors), and the kernels'
foreach and tensor-by-tensor paths agree."""

from __future__ import annotations

import pytest
import torch

from shiftsim.errors import ShiftsimError
from shiftsim.optim.adamem import adamem_adamw, adamem_sgd
from shiftsim.optim.grams import grams
from shiftsim.optim.momo import momo, momo_adam
from shiftsim.optim.tam import adatam, tam

SHAPES = [(6, 5), (6,), (3, 6)]
K = 3
LRS = [0.03, 0.01, 0.05]


def zeros(ps):
    return [torch.zeros_like(p) for p in ps]


def acc(ps, ld, *lead, fill=0.0):
    shape = (*lead, ps[0].shape[0]) if ld else lead
    return torch.full(shape, fill, dtype=ps[0].dtype)


class Kernel:
    """State and one step of a functional kernel, for learner_dims 0 or 1."""

    def __init__(self, name, ps, ld, **hp):
        self.name, self.ps, self.ld, self.hp = name, ps, ld, hp
        n = len(ps)
        self.a, self.b = zeros(ps), zeros(ps)
        if name in ("tam", "adatam"):
            self.s = acc(ps, ld) if hp.get("scope", "global") == "global" else acc(ps, ld, n)
        if hp.pop("scaled", False):  # TAM's scaled momentum form
            hp["momentum_scale"] = self.s.clone()
            hp["momentum_sqnorm"] = self.s.clone()
        if hp.pop("kept_norm", False):  # AM-SGD keeping |d|^2
            hp["momentum_sqnorm"] = acc(ps, ld)
        if name == "adamem_adamw":
            self.pi = acc(ps, ld, n, fill=1.0)
        if name in ("momo", "momo_adam"):
            self.gam, self.fbar, self.fstar = acc(ps, ld, n), acc(ps, ld), acc(ps, ld, fill=0.1)

    def step(self, t, gs, loss):
        ps, a, b, hp, ld = self.ps, self.a, self.b, self.hp, self.ld
        if self.name == "tam":
            return tam(ps, gs, a, self.s, learner_dims=ld, **hp)
        if self.name == "adatam":
            return adatam(ps, gs, a, b, self.s, step=t, learner_dims=ld, **hp)
        if self.name == "adamem_sgd":
            return adamem_sgd(ps, gs, a, step=t, learner_dims=ld, **hp)
        if self.name == "adamem_adamw":
            return adamem_adamw(ps, gs, a, b, self.pi, step=t, learner_dims=ld, **hp)
        if self.name == "momo":
            return momo(ps, gs, a, self.gam, self.fbar, self.fstar, loss, step=t,
                        learner_dims=ld, lb=0.1, **hp)
        if self.name == "momo_adam":
            return momo_adam(ps, gs, a, b, self.gam, self.fbar, self.fstar, loss, step=t,
                             learner_dims=ld, lb=0.1, **hp)
        return grams(ps, gs, a, b, step=t, learner_dims=ld, **hp)


CASES = {
    "tam": dict(momentum=0.9, weight_decay=0.01),
    "tam_tensor_decoupled": dict(momentum=0.8, weight_decay=0.1, scope="tensor",
                                 decoupled=True),
    "tam_scaled": dict(momentum=0.9, weight_decay=0.01, scaled=True),
    "tam_scaled_tensor": dict(momentum=0.7, scope="tensor", decoupled=True, weight_decay=0.1,
                              scaled=True),
    "adatam": dict(weight_decay=0.01, bias_correction=True),
    "adatamw_tensor": dict(weight_decay=0.1, decoupled=True, scope="tensor"),
    "adamem_sgd": dict(weight_decay=0.01, lam=0.2),
    "adamem_sgd_kept_norm": dict(lam=0.1, kept_norm=True),
    "adamem_adamw": dict(weight_decay=0.01),
    "momo": dict(weight_decay=0.01),
    "momo_bias_fstar": dict(bias_correction=True, use_fstar=True),
    "momo_adam": dict(weight_decay=0.01, use_fstar=True),
    "momo_adam_nodivide": dict(weight_decay=0.1, divide=False),
    "grams": dict(weight_decay=0.01),
    "grams_official": dict(eps_mode="official"),
}


def kernel_name(case):
    for name in ("adamem_adamw", "adamem_sgd", "momo_adam", "adatam", "momo", "tam", "grams"):
        if case.startswith(name):
            return name
    return "adatam"  # adatamw_tensor


def sequence(steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [([torch.randn(K, *s, generator=g, dtype=torch.float64) + 0.2 for s in SHAPES],
             torch.rand(K, generator=g, dtype=torch.float64) + 0.5) for _ in range(steps)]


def init(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(K, *s, generator=g, dtype=torch.float64) * 0.5 for s in SHAPES]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("tensor_lr", [False, True])
def test_stacked_learners_equal_separate_runs(case, tensor_lr):
    name, hp = kernel_name(case), dict(CASES[case])
    lr = {"momo": 1.0, "momo_adam": 1e-2}.get(name, 1e-2)
    seq = sequence(25)
    stacked = init()
    lrs = [lr * f for f in (1.0, 0.5, 2.0)] if tensor_lr else [lr] * K
    big = Kernel(name, stacked, 1, lr=torch.tensor(lrs, dtype=torch.float64) if tensor_lr
                 else lr, **hp)
    singles = [Kernel(name, [p[k].clone() for p in init()], 0, lr=lrs[k], **hp)
               for k in range(K)]
    for t, (gs, loss) in enumerate(seq, 1):
        out = big.step(t, gs, loss)
        outs = [s.step(t, [g[k] for g in gs], loss[k]) for k, s in enumerate(singles)]
        for k, s in enumerate(singles):
            for p_big, p in zip(stacked, s.ps):
                torch.testing.assert_close(p_big[k], p, rtol=1e-12, atol=1e-14)
            if out is not None:
                torch.testing.assert_close(out[..., k], outs[k], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("case", list(CASES))
def test_kernel_paths_agree(case, monkeypatch):
    """foreach=True, False and None (per tensor; a 300x250 tensor takes the loop path)."""
    monkeypatch.setattr(__import__(__name__), "SHAPES", [(300, 250), *SHAPES])
    name = kernel_name(case)
    runs = []
    for foreach in (True, False, None):
        ps = [p[0].clone().float() for p in init()]
        kern = Kernel(name, ps, 0, lr=1e-2, foreach=foreach, **CASES[case])
        for t, (gs, loss) in enumerate(sequence(10), 1):
            kern.step(t, [g[0].float() for g in gs], loss[0].float())
        runs.append(ps)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


def test_learner_dims_is_checked():
    p = [torch.zeros(2, 3)]
    with pytest.raises(ShiftsimError, match="learner_dims must be 0 or 1, got 2"):
        tam(p, p, zeros(p), torch.zeros(()), lr=0.1, learner_dims=2)


@pytest.mark.parametrize("lam", [0.1, 0.0])
def test_am_adamw_chunked_tensor_matches_whole(lam, monkeypatch):
    """AM-AdamW's tensor-by-tensor path splits a large tensor into chunks (two passes: the
    sums, then the update with P and W recomputed per chunk); with chunks of 4096 elements the
    300x250 tensor takes that path and must follow the unchunked multi-tensor path (float64:
    only the order of the partial sums differs)."""
    import shiftsim.optim.adamem as am

    monkeypatch.setattr(__import__(__name__), "SHAPES", [(300, 250), *SHAPES])
    runs = []
    for foreach, chunk in ((True, am.CHUNK), (False, 4096)):
        monkeypatch.setattr(am, "CHUNK", chunk)
        ps = [p[0].clone() for p in init()]
        curv = [torch.rand(p.shape, generator=torch.Generator().manual_seed(3),
                           dtype=p.dtype) * 4 for p in ps]
        kern = Kernel("adamem_adamw", ps, 0, lr=0.1, foreach=foreach, lam=lam,
                      weight_decay=0.01)
        betas = []
        for t, (noise, _) in enumerate(sequence(30), 1):  # a noisy quadratic: g = h x + n
            gs = [h * p + 0.05 * n[0] for h, p, n in zip(curv, ps, noise)]
            betas.append(kern.step(t, gs, None))
        runs.append((ps, torch.stack(betas)))
    (pa, ba), (pb, bb) = runs
    inside = (ba[1:, 0] > 0) & (ba[1:, 0] < 0.89)
    assert inside.sum() >= 5  # the chunked tensor's beta is not just a clip value
    torch.testing.assert_close(ba, bb, rtol=1e-10, atol=1e-12)
    for a, b in zip(pa, pb):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_host_coefficients_are_python_float_arithmetic_per_member_cast_once():
    """A fleet's hyperparameter tensors remember the members' exact values; a rule's scalar
    coefficient computed through host() is each member's Python-float value rounded once to
    the tensor's dtype (here Adam's bias correction at step 7, where float32 tensor arithmetic
    rounds every operation), 0-d when the members agree, remembered when asked."""
    from shiftsim.optim._kernels import exact, exact_values, host, one_minus, sqrt_

    def size(lr, b1, b2, t):
        return -lr * sqrt_(1 - b2 ** t) / (1 - b1 ** t)

    like = torch.zeros(())
    lr, b1, b2 = exact([0.1, 0.3, 0.1], like), exact([0.9] * 3, like), exact([0.999] * 3, like)
    assert exact_values(lr) == (0.1, 0.3, 0.1) and exact_values(b1) == 0.9 and b1.dim() == 0
    got = host(size, lr, b1, b2, 7, keep=False)
    want = [-x * (1 - 0.999 ** 7) ** 0.5 / (1 - 0.9 ** 7) for x in (0.1, 0.3, 0.1)]
    assert torch.equal(got, torch.tensor(want, dtype=torch.float32))
    assert exact_values(got) == tuple(want)  # chains on the exact values, not the rounded
    tensor_math = size(lr, b1, b2, 7)  # what 0-d/(K,) tensor arithmetic gives instead
    assert not torch.equal(tensor_math, got)
    assert host(size, 0.1, 0.9, 0.999, 7) == want[0]  # floats: plain Python
    w = host(one_minus, b1)
    assert w.dim() == 0 and w.item() == pytest.approx(0.1) and host(one_minus, b1) is w
    plain = torch.tensor(0.9)  # no exact values: tensor arithmetic
    assert torch.equal(host(one_minus, plain), 1 - plain)
    # two varied hyperparameters: each member's own combination (evaluated once per distinct one)
    b2v = exact([0.999, 0.99, 0.99], like)
    got = host(size, lr, b1, b2v, 7, keep=False)
    want = [size(x, 0.9, y, 7) for x, y in ((0.1, 0.999), (0.3, 0.99), (0.1, 0.99))]
    assert exact_values(got) == tuple(want)
    assert torch.equal(got, torch.tensor(want, dtype=torch.float32))
    same = host(size, exact([0.1, 0.1], like), b1, b2, 7, keep=False)  # equal values: 0-d
    assert same.dim() == 0 and exact_values(same) == size(0.1, 0.9, 0.999, 7)


def test_sqrt_is_correctly_rounded_and_takes_zeros_and_denormals():
    """The kernels' square root equals the float64 square root rounded once to float32 (the
    correctly rounded one), for values across the whole exponent range, zeros, denormals and
    strided views, in place too; float64 equals torch's on values whose roots are exact."""
    from shiftsim.optim._kernels import foreach_sqrt, foreach_sqrt_, sqrt

    g = torch.Generator().manual_seed(0)
    bits = torch.randint(0, 0x7F800000, (200_000,), generator=g, dtype=torch.int64)
    x = bits.to(torch.int32).view(torch.float32)
    x[:1000] = 0.0
    x[1000:2000] = torch.full((1000,), 1e-40)  # denormals
    want = x.double().sqrt().float()
    assert torch.equal(sqrt(x), want)
    assert torch.equal(sqrt(x.view(400, 500).T).T.reshape(-1), want)  # a strided view
    y = x.clone()
    assert sqrt(y, out=y) is y and torch.equal(y, want)
    a, b = x[:100].clone(), x[100:300].clone()
    assert all(torch.equal(r, w) for r, w in zip(foreach_sqrt([a, b]), [want[:100], want[100:300]]))
    foreach_sqrt_([a, b])
    assert torch.equal(a, want[:100]) and torch.equal(b, want[100:300])
    squares = torch.arange(1000, dtype=torch.float64) ** 2
    assert torch.equal(sqrt(squares), torch.arange(1000, dtype=torch.float64))
    half = torch.tensor([4.0, 9.0], dtype=torch.bfloat16)  # not numpy's: torch.sqrt
    assert torch.equal(sqrt(half), torch.tensor([2.0, 3.0], dtype=torch.bfloat16))


def test_row_dot_is_vecdot_bit_for_bit():
    """``row_dot`` writes the product into a kept buffer and sums it: the numbers of
    ``torch.linalg.vecdot`` (what ``dot`` calls) for float32 and float64 rows of many sizes,
    the buffer reused across calls and replaced when the shape changes; other dtypes go
    through ``dot``."""
    import threading

    from shiftsim.optim._kernels import default_scratch, dot, row_dot

    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        for k, n in ((1, 4810), (8, 26_122), (130, 4810), (3, 70_000), (2, 7)):
            a = torch.randn(k, n, generator=gen).to(dtype)
            b = torch.randn(k, n, generator=gen).to(dtype)
            assert torch.equal(row_dot(a, b), torch.linalg.vecdot(a, b))
            assert torch.equal(row_dot(b, b), dot(b, b, 1))  # the same buffer again
    assert len(default_scratch()._shaped) <= 16
    seen = []  # another thread gets its own buffers
    t = threading.Thread(target=lambda: (row_dot(a, b), seen.append(default_scratch()._shaped)))
    t.start()
    t.join()
    assert seen and seen[0] is not default_scratch()._shaped and len(seen[0]) == 1

    other = []
    t = threading.Thread(target=lambda: other.append(default_scratch()))
    t.start()
    t.join()
    assert default_scratch() is default_scratch() and other[0] is not default_scratch()
    h = torch.randn(3, 5, generator=gen).to(torch.bfloat16)
    assert row_dot(h, h).dtype == torch.float32
    assert torch.equal(row_dot(h, h), dot(h, h, 1))
