"""MoMo's native step over one learner's tensors (``shiftsim/optim/tensorsteps.c``,
``shiftsim.optim._native.momo_tensors_step``), the step ``MoMo(compile=True)`` takes on a CPU:
the numbers of the Inductor kernel's function (run as plain torch) up to float rounding, the
first moments bit for bit, the sums against float64, the same bits with one thread and two,
the float64 reference through the class, the inputs it leaves to the other kernels, and the
build: OpenMP only as torch's own runtime, and a compiler without OpenMP."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
from test_optim_common import assert_traj_close, run_reference
from test_optim_compiled import one_group, run
from test_optim_momo import momo_reference
from test_optim_native import fresh  # noqa: F401 - the fixture

from shiftsim.optim import MoMo, _compiled, _native

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


# ------------------------------------------------------------------------ through the class


@pytest.fixture()
def counted(monkeypatch):
    """``torch.compile`` refused (the native kernel must not need it) and the native step's
    calls that applied counted."""
    calls = {"n": 0}
    step = _native.momo_tensors_step

    def count(*args, **kwargs):
        out = step(*args, **kwargs)
        calls["n"] += out is not None
        return out

    def no_compile(*args, **kwargs):
        raise AssertionError("torch.compile called")

    monkeypatch.setattr(_native, "momo_tensors_step", count)
    monkeypatch.setattr(torch, "compile", no_compile)
    monkeypatch.delenv(_compiled.ENV, raising=False)
    return calls


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias_correction", [False, True])
def test_momo_compiled_on_a_cpu_is_the_native_step(counted, dtype, bias_correction):
    def make(ps, c):
        return MoMo(ps, lr=0.5, beta=0.8, bias_correction=bias_correction, compile=c)

    eager, d_eager, _ = run(make, 12, dtype, compile=False)
    calls = counted["n"]
    comp, d_comp, opt = run(make, 12, dtype, compile=True)
    assert counted["n"] - calls == 11 and opt._compiled.compiled is None  # steps 2..12
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    assert_traj_close(comp, eager, **tol)
    for k in d_eager:
        torch.testing.assert_close(d_comp[k], d_eager[k], **tol)


@pytest.mark.parametrize("bias_correction", [False, True])
def test_momo_native_step_matches_float64_reference(counted, bias_correction):
    hp = dict(lr=2.0, weight_decay=0.0)
    ours, _, _ = run(lambda ps, c: MoMo(ps, beta=0.8, lb=0.05, bias_correction=bias_correction,
                                        compile=c, **hp), 40, compile=True)
    assert counted["n"] == 39
    ref = momo_reference(one_group(hp), beta=0.8, lb=0.05, bias_correction=bias_correction)
    assert_traj_close(ours, run_reference(ref, 40))


def test_momo_auto_takes_the_native_step_as_it_would_compile(counted, monkeypatch):
    """``compile="auto"``: eager for the first COMPILE_AFTER_STEPS steps, native after (the
    model here counts as large enough)."""
    monkeypatch.setattr(_compiled, "COMPILE_AFTER_STEPS", 3)
    monkeypatch.setattr(_compiled, "COMPILE_MIN_NUMEL", 1)
    run(lambda ps, c: MoMo(ps, lr=0.5, compile=c), 8, compile="auto")
    assert counted["n"] == 4  # steps 5..8 (step 1 is each tensor's first: eager)


# ------------------------------------------------------------------------------ the build


def _gomp_paths() -> set[str]:
    return {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
            if "libgomp" in line}


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="no /proc/self/maps")
def test_openmp_is_torchs_own_runtime():
    """Where torch runs on GCC's OpenMP, the library is built with it and loads torch's copy:
    one libgomp in the process."""
    if not _native._torch_libgomp():
        pytest.skip("torch's parallel backend is not libgomp here")
    cc = _native._compiler()
    assert cc is not None
    if _native._openmp_flags(_native._version(cc)):
        assert _native.openmp()
    assert len(_gomp_paths()) == 1


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
