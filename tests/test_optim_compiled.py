"""Compiled optimizer steps (``compile=...``, shiftsim/optim/_compiled.py): the same numbers as
the eager kernels and the float64 references, the compile policy, and the fallbacks (no
compiler, a compile error, an unsupported dtype), each faked.

Most tests replace ``torch.compile`` by the identity: the compiled path's kernel then runs as
plain Python, which checks its math and bookkeeping without paying for a compile. One test
compiles for real (tiny tensors, float64, one Inductor compile); the rest that compile are
marked slow.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from test_optim_adamem import ADAMW_HP, SGD_HP, amadamw_reference, amsgd_reference
from test_optim_common import assert_traj_close, batch_loss, init_params, run_reference
from test_optim_momo import ADAM_HP, momo_reference
from test_optim_tam import ADA_HP, TAM_HP, tam_reference

from shiftsim.errors import SpecTypeError
from shiftsim.optim import (
    TAM,
    AdaptiveMemoryAdamW,
    AdaptiveMemorySGD,
    AdaTAM,
    AdaTAMW,
    Grams,
    MoMo,
    MoMoAdam,
    _compiled,
    _native,
    adamem,
)

# importing torch's compiler stack warns about torch.jit internals (not ours)
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

# the optimizers with a compiled step: name -> factory(params, compile)
MAKERS = {
    "tam": lambda ps, c: TAM(ps, lr=0.05, gamma=0.7, weight_decay=0.01, compile=c),
    "tam_decoupled": lambda ps, c: TAM(ps, lr=0.05, weight_decay=0.01, decoupled=True,
                                       compile=c),
    "tam_eps0": lambda ps, c: TAM(ps, lr=0.05, eps=0.0, compile=c),
    "adatam": lambda ps, c: AdaTAM(ps, lr=2e-3, weight_decay=0.01, compile=c),
    "adatam_nowd": lambda ps, c: AdaTAM(ps, lr=2e-3, compile=c),
    "adatamw_bc": lambda ps, c: AdaTAMW(ps, lr=2e-3, weight_decay=0.01, bias_correction=True,
                                        compile=c),
    "grams": lambda ps, c: Grams(ps, lr=1e-2, weight_decay=0.05, compile=c),
    "grams_official": lambda ps, c: Grams(ps, lr=1e-2, eps_mode="official", compile=c),
    "adamem_sgd": lambda ps, c: AdaptiveMemorySGD(ps, lr=0.05, weight_decay=0.01, compile=c),
    "adamem_sgd_nowd": lambda ps, c: AdaptiveMemorySGD(ps, lr=0.05, lam=0.2, beta_max=0.95,
                                                       compile=c),
    "adamem_adamw": lambda ps, c: AdaptiveMemoryAdamW(ps, lr=1e-2, weight_decay=0.01,
                                                       compile=c),
    "adamem_adamw_lam0": lambda ps, c: AdaptiveMemoryAdamW(ps, lr=1e-2, lam=0.0, compile=c),
    "momo": lambda ps, c: MoMo(ps, lr=0.5, compile=c),
    "momo_bc": lambda ps, c: MoMo(ps, lr=0.5, beta=0.8, bias_correction=True, compile=c),
    "momo_adam": lambda ps, c: MoMoAdam(ps, lr=1e-2, compile=c),
    "momo_adam_wd": lambda ps, c: MoMoAdam(ps, lr=1e-2, weight_decay=0.1, compile=c),
    "momo_adam_adamw": lambda ps, c: MoMoAdam(ps, lr=1e-2, weight_decay=0.1, divide=False,
                                              compile=c),
}


def run(make, steps: int, dtype=torch.float64, compile=False):
    """One param group (the compiled kernels' case); the parameters after each step, the
    diagnostics after the last, and the optimizer."""
    ps = [torch.nn.Parameter(p) for p in init_params(dtype)]
    opt = make(ps, compile)
    traj = []
    for t in range(steps):
        opt.zero_grad()
        loss = batch_loss(ps, t)
        loss.backward()
        if opt.needs_loss:
            opt.step(loss=loss.detach() if t % 2 else float(loss.detach()))
        else:
            opt.step()
        traj.append([p.detach().clone() for p in ps])
    return traj, {k: v.clone() for k, v in opt.diagnostics().items()}, opt


@pytest.fixture(autouse=True)
def inductor_kernels(monkeypatch):
    """The native kernels that the compiled steps of MoMo, TAM, AdaTAM(W), AM-SGD, MoMo-Adam
    and AM-AdamW take on a CPU, switched off: these tests check Inductor's kernels (still taken
    where the native code is not: a GPU, no C compiler), tests/test_tensor_steps.py the native
    ones."""
    monkeypatch.setattr(_native, "momo_tensors_step", lambda *a, **kw: None)
    monkeypatch.setattr(_compiled, "tam_step_native", lambda *a, **kw: None)
    monkeypatch.setattr(_compiled, "adatam_step_native", lambda *a, **kw: None)
    monkeypatch.setattr(_compiled, "amsgd_step_native", lambda *a, **kw: None)
    monkeypatch.setattr(_compiled, "momo_adam_step_native", lambda *a, **kw: None)
    monkeypatch.setattr(adamem, "_amadamw_native", lambda *a, **kw: None)


@pytest.fixture()
def no_compile(monkeypatch):
    """``torch.compile`` as the identity (counting its calls): the compiled path, uncompiled."""
    calls = []

    def fake(fn, **kw):
        calls.append(fn.__name__)
        return fn

    monkeypatch.setattr(torch, "compile", fake)
    monkeypatch.delenv(_compiled.ENV, raising=False)
    return calls


@pytest.mark.parametrize("name", sorted(MAKERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_path_matches_eager(no_compile, name, dtype):
    eager, d_eager, _ = run(MAKERS[name], 12, dtype, compile=False)
    comp, d_comp, opt = run(MAKERS[name], 12, dtype, compile=True)
    assert no_compile == [opt._compiled.fn.__name__]  # it took the compiled path
    # float32: rounding differs (fused ops, another summation order), amplified by m / sqrt(v)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    assert_traj_close(comp, eager, **tol)
    for k in d_eager:
        torch.testing.assert_close(d_comp[k], d_eager[k], **tol)


def one_group(hp: dict) -> list[dict]:
    return [hp, hp]  # the references' two groups, both with the same hyperparameters


@pytest.mark.parametrize("decoupled", [False, True])
def test_compiled_tam_matches_float64_reference(no_compile, decoupled):
    hp = TAM_HP[0]
    ours, _, _ = run(lambda ps, c: TAM(ps, gamma=0.7, decoupled=decoupled, compile=c, **hp),
                     40, compile=True)
    assert_traj_close(ours, run_reference(tam_reference(one_group(hp), 0.7, decoupled), 40))


@pytest.mark.parametrize("cls", [AdaTAM, AdaTAMW])
@pytest.mark.parametrize("bias_correction", [False, True])
def test_compiled_adatam_matches_float64_reference(no_compile, cls, bias_correction):
    hp = ADA_HP[0]
    ours, _, _ = run(lambda ps, c: cls(ps, gamma=0.8, bias_correction=bias_correction,
                                       compile=c, **hp), 40, compile=True)
    ref = tam_reference(one_group(hp), 0.8, cls is AdaTAMW, adam=True,
                        bias_correction=bias_correction)
    assert_traj_close(ours, run_reference(ref, 40))


def test_compiled_am_sgd_matches_float64_reference(no_compile):
    hp = SGD_HP[1]
    betas: list[float] = []
    ours, _, opt = run(lambda ps, c: AdaptiveMemorySGD(ps, lam=0.2, beta_max=0.95, compile=c,
                                                       **hp), 40, compile=True)
    assert_traj_close(ours, run_reference(amsgd_reference(one_group(hp), 0.2, 0.95,
                                                          betas_out=betas), 40))
    assert opt.diagnostics()["beta"].item() == pytest.approx(betas[-1], abs=1e-9)


def test_compiled_am_adamw_matches_float64_reference(no_compile):
    hp = ADAMW_HP[1]
    ours, _, _ = run(lambda ps, c: AdaptiveMemoryAdamW(ps, lam=0.2, compile=c, **hp), 40,
                     compile=True)
    assert_traj_close(ours, run_reference(amadamw_reference(one_group(hp), 0.2), 40))


@pytest.mark.parametrize("divide", [True, False])
def test_compiled_momo_adam_matches_float64_reference(no_compile, divide):
    hp = ADAM_HP[1]
    ours, _, _ = run(lambda ps, c: MoMoAdam(ps, betas=(0.85, 0.99), eps=1e-6, divide=divide,
                                            lb=0.1, compile=c, **hp), 40, compile=True)
    ref = momo_reference(one_group(hp), adam=True, betas=(0.85, 0.99), eps=1e-6,
                         divide=divide, lb=0.1)
    assert_traj_close(ours, run_reference(ref, 40))


@pytest.mark.parametrize("bias_correction", [False, True])
def test_compiled_momo_matches_float64_reference(no_compile, bias_correction):
    """MoMo without weight decay (the compiled kernel's case) against the float64 reference;
    its first step is eager (fresh tensors), the others compiled."""
    hp = dict(lr=2.0, weight_decay=0.0)
    ours, _, opt = run(lambda ps, c: MoMo(ps, beta=0.8, lb=0.05, bias_correction=bias_correction,
                                          compile=c, **hp), 40, compile=True)
    assert no_compile == ["momo_step"] and opt._compiled.compiled is not None
    ref = momo_reference(one_group(hp), beta=0.8, lb=0.05, bias_correction=bias_correction)
    assert_traj_close(ours, run_reference(ref, 40))


def test_compiled_momo_leaves_what_it_does_not_cover_to_the_eager_kernels(no_compile):
    """Weight decay, exact_outside_changes or use_fstar: every step eager, no compile."""
    for kw in (dict(weight_decay=0.1), dict(exact_outside_changes=True), dict(use_fstar=True)):
        no_compile.clear()
        comp, _, _ = run(lambda ps, c, kw=kw: MoMo(ps, lr=0.5, compile=c, **kw), 6,
                         compile=True)
        eager, _, _ = run(lambda ps, c, kw=kw: MoMo(ps, lr=0.5, compile=c, **kw), 6)
        assert no_compile == [], kw
        assert_traj_close(comp, eager, rtol=0, atol=0)


def test_grams_spec_vector_through_the_compiled_path(no_compile):
    w = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = Grams([w], lr=1e-3, compile=True)
    for g in (1.0, -0.05, 0.3):
        w.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
    assert no_compile == ["grams_step"]
    assert w.item() == pytest.approx(-1.01945157e-3, abs=1e-11)  # spec §6.2


def test_steps_the_kernel_does_not_cover_go_eager(no_compile):
    """Several param groups, a parameter without a gradient: the eager kernels take the step,
    silently; the next covered step uses the compiled kernel again, same numbers."""
    ps = [torch.nn.Parameter(p) for p in init_params(torch.float64)]
    opt = TAM([{"params": ps[:2]}, {"params": ps[2:]}], lr=0.05, compile=True)
    batch_loss(ps, 0).backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()
    assert no_compile == []

    def trajectory(compile):
        ps = [torch.nn.Parameter(p) for p in init_params(torch.float64)]
        opt = TAM(ps, lr=0.05, weight_decay=0.01, compile=compile)
        for t in range(4):
            opt.zero_grad()
            batch_loss(ps, t).backward()
            if t == 1:
                ps[1].grad = None  # sits this step out: the eager kernels take it
            opt.step()
        return [p.detach().clone() for p in ps], opt

    (eager, _), (comp, opt) = trajectory(False), trajectory(True)
    assert no_compile == ["tam_step"]
    assert_traj_close([comp], [eager])


@pytest.mark.parametrize("cls", [TAM, AdaptiveMemorySGD])
def test_a_parameter_sitting_out_again_after_native_steps(cls):
    """TAM's and AM-SGD's kept momentum norm belongs to the tensors that last took part: the
    native step (all tensors) keeps it for all of them, so the eager plan of a step without one
    tensor's gradient must not reuse it as its own the next time that tensor sits out (it
    did: 3.3e-3 off after five steps of AM-SGD)."""
    def trajectory(compile):
        ps = [torch.nn.Parameter(p) for p in init_params(torch.float64)]
        opt = cls(ps, lr=0.05, compile=compile)
        for t in range(12):
            opt.zero_grad()
            batch_loss(ps, t).backward()
            if t % 3 == 1:
                ps[1].grad = None  # sits this step out: the eager kernels take it
            opt.step()
        return [p.detach().clone() for p in ps]

    assert_traj_close([trajectory(True)], [trajectory(False)])


# ----------------------------------------------------------------------------- policy


def test_auto_keeps_short_runs_and_small_models_eager(no_compile, monkeypatch):
    monkeypatch.setattr(_compiled, "COMPILE_AFTER_STEPS", 5)
    run(MAKERS["tam"], 4, compile="auto")  # short: never compiles
    assert no_compile == []
    _, _, opt = run(MAKERS["grams"], 8, compile="auto")  # long, but tiny: never compiles
    assert no_compile == [] and opt._compiled.failed
    monkeypatch.setattr(_compiled, "COMPILE_MIN_NUMEL", 1)
    eager, _, _ = run(MAKERS["tam"], 8, compile=False)
    comp, _, opt = run(MAKERS["tam"], 8, compile="auto")  # long enough: steps 6-8 compiled
    assert no_compile == ["tam_step"] and opt._compiled.eager_steps == 6
    assert_traj_close(comp, eager)


@pytest.mark.parametrize("env, arg, compiles", [("0", "auto", False), ("1", "auto", True),
                                                ("auto", "auto", False), ("1", False, False),
                                                ("0", True, True)])
def test_environment_variable_replaces_auto(no_compile, monkeypatch, env, arg, compiles):
    monkeypatch.setenv(_compiled.ENV, env)
    run(MAKERS["grams"], 2, compile=arg)
    assert (no_compile == ["grams_step"]) is compiles


def test_bad_settings_are_refused_or_warned(monkeypatch):
    ps = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(SpecTypeError, match="compile must be 'auto', True or False"):
        TAM(ps, lr=0.1, compile="yes")
    monkeypatch.setenv(_compiled.ENV, "maybe")
    with pytest.warns(RuntimeWarning, match="SHIFTSIM_COMPILE='maybe'"):
        assert _compiled.compile_setting("auto") == "auto"


def test_each_optimizer_compiles_its_own_copy_of_the_kernel():
    """torch.compile's graphs and recompile limit are per code object: each optimizer gets a
    copy, so many model shapes in one process never exhaust the limit for the others."""
    copy = _compiled._own_copy(_compiled.grams_step)
    assert copy.__code__ is not _compiled.grams_step.__code__
    assert copy.__name__ == "grams_step" and copy.__globals__ is _compiled.__dict__


# ----------------------------------------------------------------------------- fallbacks


def assert_falls_back(make, dtype, match: str):
    """compile=True warns once (one line, naming ``match``) and gives the eager numbers."""
    eager, _, _ = run(make, 3, dtype, compile=False)
    with pytest.warns(RuntimeWarning, match=match) as caught:
        comp, _, opt = run(make, 3, dtype, compile=True)
    assert len([w for w in caught if "cannot compile" in str(w.message)]) == 1
    assert "\n" not in str(caught[0].message)
    assert opt._compiled.failed
    assert_traj_close(comp, eager, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["tam", "adatam", "grams"])
def test_a_compile_error_falls_back_to_eager(monkeypatch, name):
    def broken(fn, **kw):
        def call(*a, **k):
            raise RuntimeError("InductorError: something went wrong\nwith a long traceback")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    assert_falls_back(MAKERS[name], torch.float64, "RuntimeError: InductorError")


def test_no_compiler_falls_back_to_eager(monkeypatch):
    monkeypatch.setattr(_compiled.shutil, "which", lambda name: None)
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled anyway"))
    assert_falls_back(MAKERS["tam"], torch.float64, "no C\\+\\+ compiler")


def test_unsupported_dtype_and_device_fall_back_to_eager(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled anyway"))
    assert_falls_back(MAKERS["grams"], torch.bfloat16, "dtype torch.bfloat16 is not supported")
    assert "not supported" in _compiled.missing_compiler(torch.device("mps"))
    assert _compiled.unsupported([torch.zeros(1, device="meta")]).startswith("device 'meta'")


# ----------------------------------------------------------------------------- real compiles


def test_really_compiled_tam_matches_eager_and_reference():
    """One Inductor compile (tiny float64 tensors): TAM's compiled step against the eager step
    and the float64 reference. Skipped where this machine has no compiler."""
    if _compiled.missing_compiler(torch.device("cpu")):
        pytest.skip("no C++ compiler")
    hp = TAM_HP[0]

    def make(ps, c):
        return TAM(ps, gamma=0.7, compile=c, **hp)

    eager, d_eager, _ = run(make, 6, compile=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback
        comp, d_comp, opt = run(make, 6, compile=True)
    assert opt._compiled.compiled is not None and opt._compiled.first_step_s > 0
    assert_traj_close(comp, eager)
    assert_traj_close(comp, run_reference(tam_reference(one_group(hp), 0.7), 6))
    torch.testing.assert_close(d_comp["damping"], d_eager["damping"], rtol=1e-12, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["adatamw_bc", "momo"])
def test_really_compiled_float32_matches_eager(name):
    if _compiled.missing_compiler(torch.device("cpu")):
        pytest.skip("no C++ compiler")
    eager, _, _ = run(MAKERS[name], 6, torch.float32, compile=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        comp, _, opt = run(MAKERS[name], 6, torch.float32, compile=True)
    assert opt._compiled.compiled is not None
    assert_traj_close(comp, eager, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- sums over more than one chunk


SUM_SIZES = [1, 4095, 4096, 4097, 3 * 4096, 10_000]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_sums_equal_plain_sums(dtype):
    """``_total`` (sum of row sums of 4,096) and ``_total64`` (float64 accumulator) give the
    sum of every element, also for sizes that are not whole chunks and for 2-d tensors."""
    g = torch.Generator().manual_seed(3)
    for n in SUM_SIZES:
        x = torch.randn(n, generator=g, dtype=torch.float64)
        exact = x.sum()
        for shaped in (x.to(dtype), x.to(dtype).view(1, n)):
            for fn in (_compiled._total, _compiled._total64):
                got = fn(shaped)
                assert got.dtype == dtype and got.dim() == 0
                torch.testing.assert_close(got.double(), exact, rtol=0, atol=n * 1e-6,
                                           msg=f"{fn.__name__}, {n} elements")


def test_really_compiled_chunked_sums_equal_plain_sums():
    """The same sums through Inductor (one compile over all the sizes, float32)."""
    if _compiled.missing_compiler(torch.device("cpu")):
        pytest.skip("no C++ compiler")
    g = torch.Generator().manual_seed(4)
    xs = [torch.randn(n, generator=g) for n in SUM_SIZES]

    def both(ts):
        return ([_compiled._total(t) for t in ts], [_compiled._total64(t * 2) for t in ts])

    plain, doubled = torch.compile(both, fullgraph=True, dynamic=False)(xs)
    for x, a, b in zip(xs, plain, doubled):
        exact = x.double().sum()
        torch.testing.assert_close(a.double(), exact, rtol=0, atol=x.numel() * 1e-6)
        torch.testing.assert_close(b.double(), 2 * exact, rtol=0, atol=x.numel() * 2e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tam", "adamem_adamw"])
def test_really_compiled_step_over_several_chunks_matches_eager(name):
    """Tensors larger than one chunk of the compiled sums (7,000 and 8,192 elements, float32):
    the compiled steps agree with the eager ones up to float32 rounding."""
    if _compiled.missing_compiler(torch.device("cpu")):
        pytest.skip("no C++ compiler")
    g = torch.Generator().manual_seed(5)
    shapes = [(70, 100), (70,), (64, 128), (64,)]
    start = [torch.randn(s, generator=g) * 0.1 for s in shapes]
    grads = [[torch.randn(s, generator=g) * 0.01 for s in shapes] for _ in range(6)]

    def trajectory(compile):
        ps = [torch.nn.Parameter(p.clone()) for p in start]
        opt = MAKERS[name](ps, compile)
        out = []
        for gs in grads:
            for p, gr in zip(ps, gs):
                p.grad = gr + 0.1 * p.detach()  # depends on the parameters: steps differ
            opt.step()
            out.append([p.detach().clone() for p in ps])
        return out, opt

    eager, _ = trajectory(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        comp, opt = trajectory(True)
    assert opt._compiled.compiled is not None
    assert_traj_close(comp, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["momo_adam", "grams"])
def test_a_deep_copy_steps_as_the_original(no_compile, name):
    """A deep copy taken mid-run and the original take the same steps after it (the copy
    carries no kept step scalars: torch's ``Optimizer.__getstate__`` leaves them out)."""
    import copy

    g = torch.Generator().manual_seed(3)
    ps = [torch.nn.Parameter(torch.randn(5, 4, generator=g)),
          torch.nn.Parameter(torch.randn(4, generator=g))]
    cls = MoMoAdam if name == "momo_adam" else Grams
    opt = cls(ps, lr=0.01, compile=True)
    grads = [[torch.randn(p.shape, generator=g) for p in ps] for _ in range(6)]

    def step(o, k):
        for p, gr in zip(o.param_groups[0]["params"], grads[k]):
            p.grad = gr.clone()
        o.step(loss=torch.tensor(1.0 + k)) if name == "momo_adam" else o.step()

    for k in range(3):
        step(opt, k)
    twin = copy.deepcopy(opt)
    for k in range(3, 6):
        step(opt, k)
        step(twin, k)
    for a, b in zip(opt.param_groups[0]["params"], twin.param_groups[0]["params"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_kept_scalars_are_rewritten_in_place_and_copies_start_empty():
    """On a CPU ``Scalars`` rewrites its tensor in place when the values change (the same
    numbers as a new tensor); a copy or a pickle starts empty instead of writing into the
    original's tensor."""
    import copy
    import pickle

    s = _compiled.Scalars()
    t = s((0.5, 2.0, 1 / 3), torch.zeros(1))
    assert s((0.25, 2.0, 0.1), torch.zeros(1)) is t
    torch.testing.assert_close(t, torch.tensor([0.25, 2.0, 0.1]), rtol=0, atol=0)
    t64 = s((0.1, 0.2, 0.3), torch.zeros(1, dtype=torch.float64))
    assert t64.dtype == torch.float64 and t64.tolist() == [0.1, 0.2, 0.3]
    for twin in (copy.deepcopy(s), pickle.loads(pickle.dumps(s))):
        assert twin.t is None and twin.values is None
        assert twin((0.7, 0.8, 0.9), torch.zeros(1)) is not t64
    assert t64.tolist() == [0.1, 0.2, 0.3]
