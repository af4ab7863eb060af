"""Compiled optimizer kernels: ``torch.compile`` (Inductor) versions of the seed optimizers'
steps, with the eager kernels as the fallback.

Each optimizer class takes ``compile="auto" | True | False``. A compiled step is the same
update as the eager kernels (equal up to float rounding: Inductor fuses the elementwise ops
and orders the sums its own way), written as one plain function per optimizer over the
parameter, gradient and state lists, with the step's scalars (bias corrections, lr ...) in one
small tensor so that a learning-rate schedule does not recompile. Inductor generates one C++
(CPU) or Triton (GPU) loop per tensor that reads each buffer once per pass, where the eager
kernels make one pass per op.

**When it compiles** (the policy, [ours]). Compiling costs seconds (about 5-20 s on a 2-core
CPU the first time; Inductor's on-disk cache, on by default, makes a later process with the
same shapes load it in a few seconds), and saves milliseconds per step only on large models.

* ``compile=False``: never. ``compile=True``: from the first step, whatever the size.
* ``compile="auto"`` (the default): once the optimizer has taken :data:`COMPILE_AFTER_STEPS`
  eager steps over at least :data:`COMPILE_MIN_NUMEL` parameter elements — a run that has lasted
  that long is likely to last long enough to repay the compile (the ski-rental rule), and a
  short run (a 200-step test, a tuning trial) never pays for it. MoMo's, MoMo-Adam's and
  AM-AdamW's native steps on a CPU (below) compile nothing and are faster than their eager
  steps at every size measured, so ``"auto"`` takes them from the first step
  (:meth:`Compiled.native_first`); TAM's, AM-SGD's and AdaTAM(W)'s native steps follow the
  rule, so that a default run keeps its eager kernels' numbers (the native sums round
  differently). They were slower than the eager steps below about 85,000 parameters while their
  numbers between the passes ran in Python (one thread, a 2-core AMD EPYC: TAM 106 -> 127 us a
  step for 100 elements); as one C call each they are faster at every size measured (TAM
  107 -> 39 us for 100 elements, 197 -> 78 for 85,002; AM-SGD 128 -> 55, 222 -> 95; AdaTAM
  141 -> 39, 417 -> 99), so taking them from the first step too is a question of numbers, not of
  speed. The environment variable
  ``SHIFTSIM_COMPILE`` (``0``/``1``/``auto``) replaces ``"auto"`` for every optimizer of the
  process (an explicit ``True``/``False`` argument wins).

**Fallback.** No compiler (no C++ compiler for a CPU, no Triton for a GPU), another device, a
dtype other than float32/float64, or any error while compiling: one warning line naming the
reason, then the eager kernels for the rest of the optimizer's life, never a crash. A step the
compiled kernel does not cover (tensor hyperparameters, ``scope="tensor"``, several param
groups, parameters without a gradient, differing step counts ...) is taken by the eager
kernels silently, and the next covered step compiles or reuses the compiled kernel. Each
optimizer compiles its own copy of its kernel function (:func:`_own_copy`), so torch.compile's
recompile limit (8 shape sets per function) is per optimizer, not per process; past it, or on
any later compile error, the optimizer warns and stays eager.

**On a CPU, MoMo, TAM, AdaTAM(W), AM-SGD, MoMo-Adam and AM-AdamW** take shiftsim's own C code
instead of
Inductor's kernels (``tensorsteps.c``, built with the native row sums: nothing is compiled per
shape, so the first step costs milliseconds), where the native code is on and the tensors are
contiguous float32/float64: MoMo's whole step (:func:`shiftsim.optim._native.momo_tensors_step`),
and two passes for the others with the numbers between them: TAM's, AdaTAM(W)'s and AM-SGD's
in one call each (:func:`tam_step_native`, :func:`adatam_step_native`,
:func:`amsgd_step_native`: the numbers in C, the torch operations of :func:`_tam_numbers`,
:func:`_adatam_numbers` and :func:`_amsgd_numbers` bit for bit), MoMo-Adam's in two calls
around torch's sum of its per-tensor gamma (:func:`momo_adam_step_native`: the rest of
:func:`_momo_adam_numbers` in C, bit for bit) and AM-AdamW's in one call
(``adamem._amadamw_native``: its coefficients and per-tensor betas in C, the operations of
``adamem._am_shared_scales`` and ``adamem._am_beta_stack`` bit for bit; TAM's and AdaTAM's
smoothing of the cosine is torch's lerp, whose fused multiply-add the C code makes too: the
same bits where torch's kernel makes it, as on this x86-64 build, tested); Inductor's kernels
elsewhere (a GPU, no C compiler, ``SHIFTSIM_NATIVE=0``). Each pass is split across torch's own
threads, each thread taking the same chunks in both passes (the second in reverse, so that it
starts on what its first pass left in its core's caches). The elementwise work is the eager kernels'
torch operations, torch's bits where torch's CPU kernels fuse the same multiply-adds (tested on
this x86-64 build); the sums are chunk sums in float64, so a step equals the eager one up to
float rounding. [speed]
``benchmarks/optimizer_step.py`` (5M parameters, a 2-vCPU Intel Xeon, 9 rounds, alternating
with ``SHIFTSIM_NATIVE=0``, two runs each), against fused SGD-momentum:
MoMo 1.22x and 1.21x against Inductor's 1.93x and 1.99x (2 threads), 1.35x and 1.15x against
1.91x and 1.90x (1 thread); TAM 1.54x and 1.53x against 1.54x and 1.55x (2 threads), 1.43x and
1.43x against 1.41x and 1.41x (1 thread); AM-SGD 1.60x and 1.53x against 1.48x and 1.51x,
1.47x and 1.43x against 1.51x and 1.43x. Against fused AdamW: MoMo-Adam 1.61x and 1.68x against
2.70x and 2.60x (2 threads), 1.60x and 1.62x against 2.39x and 2.46x (1 thread); AM-AdamW
1.81x and 1.84x against 3.35x and 3.16x (2 threads), 1.61x and 1.63x against 2.36x and 2.62x (1
thread), with weight decay 0.01 1.93x and 1.89x against 3.34x and 3.23x, 1.81x and 1.77x against
3.10x and 3.32x (the least traffic of both is 10 passes to fused AdamW's 7, 1.43x; 11 for
AM-AdamW with weight decay, 1.57x). TAM's and
AM-SGD's run at Inductor's speed within this benchmark's resolution (about 10 %), the others'
well past it; first steps 0.01-0.1 s against Inductor's 0.15-7.3 s (its on-disk cache warm or
not). AdaTAM(W)'s (added later; a 2-vCPU AMD EPYC, the same protocol): AdaTAM 1.44x and 1.40x
fused AdamW against Inductor's 1.43x and 1.45x (2 threads), 1.50x and 1.36x against 1.52x and
1.54x (1 thread); AdaTAMW 1.37x and 1.37x against 1.42x and 1.39x, 1.52x and 1.39x against
1.51x and 1.52x: Inductor's speed within resolution too (its least traffic is 9 passes, 1.29x),
first steps 0.015-0.026 s against 0.31-6.5 s. Its native step is faster than its eager one at
every size measured (one thread, AdaTAMW with weight decay: 145 -> 92 us a step for 100
elements, 261 -> 141 for 85,000, 1,804 -> 604 for a million), but ``"auto"`` keeps the compile
rule for it, as for TAM (:meth:`Compiled.native_first` is MoMo's, MoMo-Adam's and AM-AdamW's),
so a default run's numbers stay its eager kernels' (the checked-in reports' AdaTAM runs on a
CNN among them).

The fleet (``run_fleet``, and ``run`` for a ReLU MLP, which steps a one-member fleet) steps the
optimizers through their eager stacked rules: ``compile`` there is accepted and ignored.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import SpecTypeError
from . import _native
from ._kernels import decay_factor

#: ``compile="auto"``: compile after this many eager steps ...
COMPILE_AFTER_STEPS = 1000
#: ... and only for at least this many parameter elements (below it a step is dispatch-bound
#: and the saving would not repay the compile within a typical run).
COMPILE_MIN_NUMEL = 1 << 20
#: the environment variable that replaces ``compile="auto"``: ``0``, ``1`` or ``auto``
ENV = "SHIFTSIM_COMPILE"
#: the dtypes the compiled kernels support
DTYPES = (torch.float32, torch.float64)
#: the device types they support
DEVICES = ("cpu", "cuda")


def check_compile(value: object) -> bool | str:
    """Validate an optimizer's ``compile`` argument: ``"auto"``, True or False.

    >>> check_compile("auto")
    'auto'
    """
    if value is True or value is False or value == "auto":
        return value  # type: ignore[return-value]
    raise SpecTypeError(f"compile must be 'auto', True or False, got {value!r}")


def compile_setting(value: bool | str) -> bool | str:
    """The effective setting: an explicit True/False as given; ``"auto"`` replaced by
    ``$SHIFTSIM_COMPILE`` when that is set (``0``/``false``/``no``, ``1``/``true``/``yes`` or
    ``auto``; anything else warns and keeps ``"auto"``).

    >>> compile_setting(False)
    False
    """
    if value != "auto":
        return value
    env = os.environ.get(ENV, "").strip().lower()
    if not env or env == "auto":
        return "auto"
    if env in ("1", "true", "yes", "on"):
        return True
    if env in ("0", "false", "no", "off"):
        return False
    warnings.warn(f"{ENV}={env!r} is not one of 0, 1, auto; using 'auto'", RuntimeWarning,
                  stacklevel=3)
    return "auto"


def missing_compiler(device: torch.device) -> str | None:
    """Why Inductor cannot compile for ``device`` here (None: it can): a CPU needs a C++
    compiler (``$CXX``, ``g++``, ``c++`` or ``clang++`` on the PATH), a GPU needs Triton."""
    if device.type == "cpu":
        names = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
        if any(n and shutil.which(n) for n in names):
            return None
        return "no C++ compiler found (CXX, g++, c++, clang++)"
    if device.type == "cuda":
        import importlib.util

        return None if importlib.util.find_spec("triton") is not None else "Triton is missing"
    return f"device {device.type!r} is not supported (only {', '.join(DEVICES)})"


def unsupported(params: Sequence[Tensor]) -> str | None:
    """Why the compiled kernels cannot take these parameters (None: they can)."""
    p0 = params[0]
    for p in params:
        if p.dtype not in DTYPES:
            return f"dtype {p.dtype} is not supported (only float32, float64)"
        if p.device.type not in DEVICES:
            return f"device {p.device.type!r} is not supported (only {', '.join(DEVICES)})"
        if p.dtype != p0.dtype or p.device != p0.device:
            return "parameters of several dtypes or devices"
    return missing_compiler(p0.device)


class Compiled:
    """One optimizer's compiled step: the policy (:func:`compile_setting`), the lazily compiled
    function and the fallback. :meth:`wanted` says whether a step should be compiled (once per
    step); ``run(params, *args)`` then calls the compiled ``fn(*args)`` and returns its result,
    or returns :data:`EAGER` when the eager kernels must take this step (the failure warned
    once).

    ``first_step_s`` is the wall time of the call that compiled (None before), which
    ``benchmarks/optimizer_step.py`` reports.
    """

    def __init__(self, fn: Callable[..., Any], who: str, setting: bool | str) -> None:
        self.fn, self.who = fn, who
        self.setting = compile_setting(setting)
        self.compiled: Callable[..., Any] | None = None
        self.failed = self.setting is False
        self.eager_steps = 0
        self.first_step_s: float | None = None

    def wanted(self, params: Sequence[Tensor]) -> bool:
        """Whether this step should be compiled (counts the eager steps under "auto")."""
        if self.failed:
            return False
        if self.compiled is not None or self.setting is True:
            return True
        self.eager_steps += 1
        if self.eager_steps <= COMPILE_AFTER_STEPS:
            return False
        if sum(p.numel() for p in params) < COMPILE_MIN_NUMEL:
            self.failed = True  # [ours] too small to repay a compile: never look again
            return False
        return True

    def native_first(self, params: Sequence[Tensor]) -> bool:
        """Whether this step tries shiftsim's native code (no compile to repay) before the
        compile policy: on a CPU, any setting but ``False`` (``"auto"`` from the first step,
        whatever the model's size). Only for the optimizers whose native step is faster than
        their eager one at every size (module notes); :meth:`wanted` decides when it does not
        apply."""
        return self.setting is not False and bool(params) and params[0].is_cpu

    def fail(self, reason: str) -> None:
        """Give up compiling: one warning line, then the eager kernels."""
        self.failed = True
        self.compiled = None
        warnings.warn(f"{self.who}: cannot compile the optimizer step ({reason}); using the "
                      "eager kernels", RuntimeWarning, stacklevel=6)

    def run(self, params: Sequence[Tensor], *args: Any) -> Any:
        """``fn(*args)`` compiled (compiling it on the first call), or :data:`EAGER` after a
        failure; call it after :meth:`wanted` said yes."""
        if self.failed:
            return EAGER
        if self.compiled is None:
            why = unsupported(params)
            if why is not None:
                self.fail(why)
                return EAGER
            import time

            t0 = time.perf_counter()
            try:
                self.compiled = torch.compile(_own_copy(self.fn), fullgraph=True, dynamic=False)
                out = self.compiled(*args)
            except Exception as e:  # noqa: BLE001 - any compile error falls back
                first = str(e).strip().splitlines()
                self.fail(f"{type(e).__name__}: {first[0][:160] if first else ''}")
                return EAGER
            self.first_step_s = time.perf_counter() - t0
            return out
        try:
            return self.compiled(*args)
        except Exception as e:  # noqa: BLE001 - a recompile (new shapes) can fail too
            first = str(e).strip().splitlines()
            self.fail(f"{type(e).__name__}: {first[0][:160] if first else ''}")
            return EAGER


#: what :meth:`Compiled.run` returns when the eager kernels must take the step
EAGER: Any = object()


def _own_copy(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with a code object of its own. torch.compile keeps its compiled graphs (and counts
    recompiles against its limit, 8 by default) per code object: with a copy each optimizer has
    its own, so one process's many model shapes never exhaust it for the others (each
    optimizer retraces once; Inductor's cache still shares the generated code)."""
    import types

    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__,
                              fn.__defaults__, fn.__closure__)


class Scalars:
    """The step's scalars as one tensor on the parameters' device, in the accumulation dtype
    (so a schedule changes values, not the compiled graph); rewritten only when they change,
    on a CPU in place (the steps read it before they return; MoMo-Adam's and Grams' bias
    corrections change every step, and the call took 53 us a step making a new tensor against
    13 us in place, timed inside MoMo-Adam's step at 5M parameters), elsewhere as a new tensor
    (a device may still be reading the old one).

    >>> s = Scalars()
    >>> t = s((0.5, 2.0), torch.zeros(1))
    >>> s((0.25, 2.0), torch.zeros(1)) is t, t.tolist()
    (True, [0.25, 2.0])
    """

    __slots__ = ("values", "t", "cpu")

    def __init__(self) -> None:
        self.values: tuple[float, ...] | None = None
        self.t: Tensor | None = None
        self.cpu: Any = None  # a C array over a CPU tensor's numbers (it keeps the tensor)

    def __call__(self, values: Sequence[float], like: Tensor) -> Tensor:
        vals = tuple(float(v) for v in values)
        t = self.t
        if t is None or vals != self.values or t.device != like.device:
            dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
            if self.cpu is not None and t is not None and t.device == like.device \
                    and t.dtype == dtype and len(self.cpu) == len(vals):
                self.cpu[:] = vals  # each value rounded to the dtype, as torch.tensor does
            else:
                self.t = t = torch.tensor(vals, dtype=dtype, device=like.device)
                ctype = ctypes.c_double if dtype == torch.float64 else ctypes.c_float
                self.cpu = None if t.device.type != "cpu" else \
                    (ctype * len(vals)).from_address(t.data_ptr())
            self.values = vals
        return self.t

    def __reduce__(self) -> tuple[type, tuple[()]]:
        """A copy or a pickle starts empty (it is a cache, and its C array would point into
        the original's tensor)."""
        return Scalars, ()


# ----------------------------------------------------------------- the kernels
#
# Plain functions over lists (each param group's tensors); ``h`` holds the scalars. Reductions
# accumulate in the accumulation dtype (float32, float64 for float64), as the eager kernels.
# The kernels mutate the tensor lists in place but *return* the new 0-d state (the caller
# copies it in): torch 2.13's Inductor drops in-place writes to 0-d float64 inputs on the CPU
# (``s.copy_(s + 1)`` compiled leaves ``s`` unchanged), so no kernel writes one.


def _acc(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


#: the row length of :func:`_total`'s sum of row sums (Inductor's own limit for a plain
#: float32 sum, above which it switches to its slower cascade summation)
CHUNK = 4096


def _total(x: Tensor) -> Tensor:
    """``x.sum()`` as the sum of its row sums over rows of :data:`CHUNK` elements (plus the
    tail), for sums of the kernel's *inputs*.

    Inductor compiles ``x.sum()`` over more than 4,096 float32 elements to a cascade
    summation that runs at about half the memory bandwidth; the sum of row sums is a plain
    vectorized loop (measured: the three sums of TAM's cosine over 5M parameters, 2 threads,
    1.71 ms cascade, 1.08 ms as row sums). Same value up to rounding (for <m, g> and |m|^2 of
    random 5M-element buffers, relative errors 1.3e-6 and 9.5e-9 as row sums against 3.4e-6
    and 3.6e-7 for the cascade, float64 as truth). Where the summed terms are computed from state
    the kernel also updates, use :func:`_total64`: the row view would make Inductor store them."""
    flat = x.reshape(-1)
    n = flat.numel()
    k = n - n % CHUNK
    if k == 0:
        return flat.sum()
    total = flat[:k].view(-1, CHUNK).sum(1).sum()
    return total + flat[k:].sum() if k < n else total


def _total64(x: Tensor) -> Tensor:
    """``x.sum()`` accumulated in float64 (the result in ``x``'s dtype): Inductor sums a
    float64 accumulator in a plain vectorized loop, fused with the elementwise work that
    computes ``x`` (no cascade summation, no stored terms)."""
    return x.sum(dtype=torch.float64).to(x.dtype)


# [speed] The kernels whose update needs a model-wide sum first (TAM, AdaTAM, AM-SGD) update
# the tensors in the reverse of the order the sums read them, so the update starts on the
# tensors the sums read last, which are likely still in the cache (same numbers: each
# tensor's update is its own). TAM over 5M parameters, 2 threads, three interleaved runs
# against the forward order: 1.65x/1.59x/1.63x -> 1.56x/1.43x/1.59x fused SGD-momentum; AM-SGD
# and AdaTAM within noise.


def _sums(ms: Sequence[Tensor], gs: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """``<m, g>``, ``|m|^2``, ``|g|^2`` summed over the tensors."""
    acc = _acc(gs[0])
    mg = mm = gg = torch.zeros((), dtype=acc, device=gs[0].device)
    for m, g in zip(ms, gs):
        m32, g32 = m.to(acc), g.to(acc)
        mg = mg + _total(m32 * g32)
        mm = mm + _total(m32 * m32)
        gg = gg + _total(g32 * g32)
    return mg, mm, gg


def _cosine(mg: Tensor, mm: Tensor, gg: Tensor) -> Tensor:
    den2 = mm * gg
    return torch.where(den2 > 0, mg * den2.rsqrt(), 0.0).clamp(-1.0, 1.0)


def _tam_numbers(mg: Tensor, mm: Tensor, gg: Tensor, scale: Tensor, shat: Tensor, h: Tensor,
                 positive: bool) -> tuple[Tensor, ...]:
    r"""TAM's numbers between its two passes (:func:`tam_step`): the damping, the new
    :math:`\hat s`, :math:`\sigma` and :math:`\lVert\tilde m\rVert^2`, the momentum's lerp
    weight and the step's factor."""
    lr, beta, w_gamma, eps = h[0], h[1], h[2], h[3]
    shat = torch.lerp(shat, _cosine(mg, mm, gg), w_gamma)
    d = shat * 0.5 + 0.5
    c = d + eps
    sig = scale * beta + c
    w = c / sig if positive else torch.where(sig > 0, c / sig, 1.0)
    u = 1 - w
    sqnorm = ((u * mm + 2 * w * mg) * u + w * w * gg).clamp_min(0.0)
    return d, shat, sig, sqnorm, w, sig * -lr


def tam_step(ps: list[Tensor], gs: list[Tensor], ms: list[Tensor], scale: Tensor,
             shat: Tensor, h: Tensor, coupled: bool, decoupled: bool, positive: bool
             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""TAM (scaled form, global cosine, one param group), as ``tam._tam_blocks``.

    ``h = (lr, momentum, 1 - gamma, eps, weight_decay)``. Updates params and ``ms`` (the
    scaled momenta :math:`\tilde m`) in place; returns the damping and the new
    :math:`\hat s`, :math:`\sigma` (``scale``) and :math:`\lVert\tilde m\rVert^2`."""
    lr, wd = h[0], h[4]
    if coupled:
        gs = [g + wd * p for p, g in zip(ps, gs)]
    mg, mm, gg = _sums(ms, gs)
    d, shat, sig, sqnorm, w, step = _tam_numbers(mg, mm, gg, scale, shat, h, positive)
    for p, g, m in reversed(list(zip(ps, gs, ms))):  # reversed: see above _sums
        m.lerp_(g, w.to(m.dtype))
        if decoupled:
            p.mul_(1 - lr * wd)
        p.add_(m * step.to(p.dtype))
    return d, shat, sig, sqnorm


def _adatam_numbers(mg: Tensor, mm: Tensor, gg: Tensor, shat: Tensor, w_gamma: Tensor,
                    teps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""AdaTAM's numbers between its two passes (:func:`adatam_step`): the damping, the new
    :math:`\hat s` and the momentum's gradient factor ``d + torque_eps``."""
    shat = torch.lerp(shat, _cosine(mg, mm, gg), w_gamma)
    d = shat * 0.5 + 0.5
    return d, shat, d + teps


def adatam_step(ps: list[Tensor], gs: list[Tensor], ms: list[Tensor], vs: list[Tensor],
                shat: Tensor, h: Tensor, coupled: bool, decoupled: bool
                ) -> tuple[Tensor, Tensor]:
    r"""AdaTAM(W) (global cosine, one param group), as ``tam._adatam_blocks``.

    ``h = (size, beta1, beta2, 1 - gamma, torque_eps, eps_t, weight_decay, lr)``: ``size`` is
    the step's factor (``-lr``, or with bias correction ``-lr (1-b1) sqrt(1-b2^t)/(1-b1^t)``)
    and ``eps_t`` the denominator's epsilon (times ``sqrt(1-b2^t)`` with bias correction).
    Returns the damping and the new :math:`\hat s`."""
    size, b1, b2, w_gamma, teps, eps, wd, lr = (h[i] for i in range(8))
    if coupled:
        gs = [g + wd * p for p, g in zip(ps, gs)]
    mg, mm, gg = _sums(ms, gs)
    d, shat, c = _adatam_numbers(mg, mm, gg, shat, w_gamma, teps)
    for p, g, m, v in reversed(list(zip(ps, gs, ms, vs))):  # reversed: see above _sums
        m.mul_(b1).add_(g * c.to(g.dtype))
        v.mul_(b2).add_(g * g * (1 - b2))
        if decoupled:
            p.mul_(1 - lr * wd)
        p.add_(m / (v.sqrt() + eps) * size)
    return d, shat


def grams_step(ps: list[Tensor], gs: list[Tensor], ms: list[Tensor], vs: list[Tensor],
               h: Tensor, decay: bool) -> None:
    """Grams (one param group, one step count), as ``grams._grams_blocks``.

    ``h = (size, 1 - beta1, beta2, eps_t, shrink)``: ``size = -lr sqrt(1-b2^t)/(1-b1^t)``,
    ``eps_t`` the denominator's epsilon for the eps mode, ``shrink = 1 - lr wd``."""
    size, w1, b2, eps, shrink = h[0], h[1], h[2], h[3], h[4]
    for p, g, m, v in zip(ps, gs, ms, vs):
        m.lerp_(g, w1)
        v.mul_(b2).add_(g * g * (1 - b2))
        u = (m / (v.sqrt() + eps)).abs()
        if decay:
            p.mul_(shrink)
        p.add_(u * torch.sign(g) * size)


def momo_step(ps: list[Tensor], gs: list[Tensor], ds: list[Tensor], kept: Tensor,
              loss_avg: Tensor, fstar: Tensor, f: Tensor, h: Tensor
              ) -> tuple[Tensor, Tensor, Tensor]:
    r"""MoMo without weight decay (one param group, every tensor past its first step,
    ``use_fstar=False``, the offsets carried), as ``momo._momo_blocks``'s ``only_v`` path.

    ``kept``: the per-tensor offsets :math:`v_i = \langle x_i, d_i\rangle - \gamma_i`, shape
    ``(n,)``; ``f``: the loss (0-d). ``h = (beta, 1 - beta, rho, lr / rho)``. Updates params
    and ``ds`` in place; returns :math:`\tau`, the new offsets and the new :math:`\bar f`."""
    beta, w, rho, cap = h[0], h[1], h[2], h[3]
    acc = _acc(gs[0])
    dd = []
    for d, g in zip(ds, gs):
        d.lerp_(g, w.to(d.dtype))
        d32 = d.to(acc)
        dd.append(_total64(d32 * d32))
    sq = torch.stack(dd).to(kept.dtype)
    loss_avg = loss_avg * beta + f * (1 - beta)
    u = kept * beta  # <x_k, d_k> - gamma_k per tensor (c = 1)
    norm = sq.sum()
    num = loss_avg - rho * fstar + u.sum()
    pos = norm > 0
    tau = torch.minimum(torch.where(pos, num.clamp_min(0) / torch.where(pos, norm, 1.0), 0.0),
                        cap)
    for p, d in zip(ps, ds):
        p.add_(d * -tau.to(p.dtype))
    return tau, u - tau * sq, loss_avg


def _momo_adam_numbers(xg: Tensor, dot_xd: Tensor, norm: Tensor, gam: Tensor,
                       loss_avg: Tensor, fstar: Tensor, f: Tensor, h: Tensor, decay: bool
                       ) -> tuple[Tensor, Tensor, Tensor]:
    r"""MoMo-Adam's numbers between its two passes (:func:`momo_adam_step`) from the per-tensor
    :math:`\langle x_i, g_i\rangle` (``xg``), :math:`\langle x, d\rangle` and
    :math:`\lVert d\rVert^2_{D^{-1}}` (``norm``): :math:`\tau`, the new :math:`\gamma_i` and
    the new :math:`\bar f`."""
    b1, rho, cap, c = h[0], h[4], h[5], h[6]
    gam = gam * b1 + xg * (1 - b1)
    loss_avg = f * (1 - b1) + loss_avg * b1
    gamma = gam.sum()
    gap = loss_avg - rho * fstar
    num = c * gap + dot_xd - c * gamma if decay else gap + dot_xd - gamma
    pos = norm > 0
    ratio = torch.where(pos, num.clamp_min(0) / torch.where(pos, norm, 1.0), 0.0)
    return torch.minimum(ratio, cap), gam, loss_avg


def momo_adam_step(ps: list[Tensor], gs: list[Tensor], ds: list[Tensor], vs: list[Tensor],
                   gam: Tensor, loss_avg: Tensor, fstar: Tensor, f: Tensor, h: Tensor,
                   decay: bool, divide: bool) -> tuple[Tensor, Tensor, Tensor]:
    r"""MoMo-Adam (one param group, one step count, ``use_fstar=False``), as
    ``momo._momo_adam_blocks``.

    ``gam``: the per-tensor :math:`\gamma_i`, shape ``(n,)``; ``f``: the loss (0-d).
    ``h = (beta1, beta2, 1 - beta2^s, eps, rho, lr / rho, c = 1 + lr wd, 1 - lr wd)``. Updates
    params, ``ds``, ``vs`` in place; returns :math:`\tau`, the new :math:`\gamma_i` and the new
    :math:`\bar f`.

    [speed] One graph: Inductor sums in one pass (reads p, g, d, v) and recomputes the new
    moments in the update's pass (reads them again, writes p, d, v): 11 passes. Two graphs, the
    first writing the moments, made 13 (its loops do not store from a loop that sums) and
    measured slower: 2.09-2.59x fused AdamW against 1.74-2.05x (kernels alone, three runs,
    one of them at one thread)."""
    b1, b2, bc2, eps, c, shrink = h[0], h[1], h[2], h[3], h[6], h[7]
    xg, xd, dq = [], [], []
    for p, g, d, v in zip(ps, gs, ds, vs):
        xg.append(_total64(p * g))
        d.lerp_(g, 1 - b1)
        v.mul_(b2).add_(g * g * (1 - b2))
        xd.append(_total64(p * d))
        dq.append(_total64(d * d / ((v / bc2).sqrt() + eps)))
    tau, gam, loss_avg = _momo_adam_numbers(torch.stack(xg), torch.stack(xd).sum(),
                                            torch.stack(dq).sum(), gam, loss_avg, fstar, f, h,
                                            decay)
    for p, d, v in zip(ps, ds, vs):  # D^-1 d again (recomputed: cheaper than kept, measured)
        if decay and not divide:
            p.mul_(shrink)
        p.add_(d / ((v / bc2).sqrt() + eps) * -tau.to(p.dtype))
        if decay and divide:
            p.div_(c)
    return tau, gam, loss_avg


def _amsgd_numbers(a: Tensor, e: Tensor, bb: Tensor, h: Tensor
                   ) -> tuple[Tensor, Tensor, Tensor]:
    r"""AM-SGD's numbers between its two passes (:func:`amsgd_step`) from :math:`\langle d,
    g\rangle`, :math:`\lVert d\rVert^2`, :math:`\lVert g\rVert^2`: :math:`\beta_t`, the new
    :math:`\lVert d\rVert^2` and the lerp weight."""
    lam, beta_max, ratio, tolf = h[2], h[3], h[4], h[5]
    num = (1 + lam) * (a * ratio) - ((1 - lam) * a + lam * e - bb)
    den = e - 2 * a + bb
    beta = torch.where(den > tolf * (e + bb), num / den, 0.0).clamp_min(0.0)
    beta = torch.minimum(beta, beta_max)
    w = (1 - beta) / (1 + lam)
    u = 1 - w
    sqnorm = ((u * e + 2 * w * a) * u + w * w * bb).clamp_min(0.0)
    return beta, sqnorm, w


def amsgd_step(ps: list[Tensor], gs: list[Tensor], ds: list[Tensor], h: Tensor,
               coupled: bool) -> tuple[Tensor, Tensor]:
    r"""AM-SGD (one param group, every tensor past its first step), as
    ``adamem._amsgd_blocks``.

    ``h = (lr, weight_decay, lam, beta_max, lr_ratio, tol)`` with ``tol`` the rounding guard's
    factor :math:`32\,\epsilon_{mach}`. Updates params and ``ds`` in place; returns
    :math:`\beta_t` and the new :math:`\lVert d\rVert^2`."""
    lr, wd = h[0], h[1]
    if coupled:
        gs = [g + wd * p for p, g in zip(ps, gs)]
    a, e, bb = _sums(ds, gs)  # <d, g>, |d|^2, |g|^2
    beta, sqnorm, w = _amsgd_numbers(a, e, bb, h)
    for p, g, d in reversed(list(zip(ps, gs, ds))):  # reversed: see above _sums
        d.lerp_(g, w.to(d.dtype))
        p.add_(d * -lr)
    return beta, sqnorm


def amadamw_step(ps: list[Tensor], gs: list[Tensor], ds: list[Tensor], vs: list[Tensor],
                 pi: Tensor, h: Tensor, decay: bool, use_lam: bool, gap: bool
                 ) -> tuple[Tensor, Tensor]:
    r"""AM-AdamW (one param group, one step count and previous lr for all tensors, past the
    first step), as ``adamem._amadamw_blocks``: one :math:`\beta` per tensor from its five
    sums.

    ``pi``: the per-tensor :math:`\Pi`, shape ``(n,)``. ``h = (lr, prev_lr, weight_decay,
    beta1_max, beta2, eps, lam, 1/sqrt(1 - beta2^t))``; ``gap``: ``lr != 0`` (the gap term).
    Updates params, ``ds``, ``vs`` in place; returns the betas and the new :math:`\Pi`, both
    ``(n,)``."""
    lr, prev, wd, b1, b2, eps, lam, sbc2 = (h[i] for i in range(8))
    acc = _acc(gs[0])
    betas = []
    for i, (p, g, d, v) in enumerate(zip(ps, gs, ds, vs)):
        v.mul_(b2).add_(g * g * (1 - b2))
        k1 = 1 - b1 * pi[i]
        P = v.sqrt() * (k1 * sbc2) + k1 * eps
        W = P + lam * P * P if use_lam else P
        T = (d - g).to(acc)
        U = d.to(acc) / P
        sd = _total64(T * T / W)
        q1 = _total64(U * g)
        q2 = _total64(U * d)
        num = sd - (q2 - q1)
        if decay:
            x1 = _total64(p.to(acc) * g)
            num = num - wd * (_total64(p.to(acc) * d) - x1)
        else:
            x1 = 0 * sd
        if gap:
            num = num + (1 + wd * lr) * (prev * (q1 + wd * x1)) / lr
        beta = torch.minimum(torch.where(sd > 0, num / sd, 0.0).clamp_min(0.0), b1)
        betas.append(beta)
        weight = P / W * (1 - beta) if use_lam else 1 - beta
        d.lerp_(g, weight.to(d.dtype))
        if decay:
            p.mul_(1 - lr * wd)
        p.add_(d / P * -lr)
    bs = torch.stack(betas)
    return bs, pi * bs


# ------------------------------ the CPU kernels of TAM, AM-SGD and MoMo-Adam: native passes


def tam_step_native(ps: list[Tensor], gs: list[Tensor], ms: list[Tensor], scale: Tensor,
                    shat: Tensor, sq: Tensor, h: Tensor, coupled: bool, decoupled: bool,
                    positive: bool, *, lr: float, wd: float) -> Tensor | None:
    r""":func:`tam_step` on a CPU in one native call (``_native.tam_tensors_step``: its two
    passes with :func:`tam_step`'s numbers between them, torch's bits; ``lr``, ``wd``: ``h``'s
    as floats): updates the params, ``ms`` and the state ``scale``, ``shat`` and ``sq`` (the
    new :math:`\lVert\tilde m\rVert^2`) in place and returns the damping; None, changing
    nothing, where it does not apply."""
    return _native.tam_tensors_step(ps, gs, ms, h, shat, scale, sq, positive=positive,
                                    coupled_wd=wd if coupled else None,
                                    shrink=decay_factor(lr, wd) if decoupled else None)


def adatam_step_native(ps: list[Tensor], gs: list[Tensor], ms: list[Tensor],
                       vs: list[Tensor], shat: Tensor, h: Tensor, coupled: bool,
                       decoupled: bool, *, size: float, beta1: float, beta2: float,
                       eps: float, lr: float, wd: float) -> Tensor | None:
    """:func:`adatam_step` on a CPU in one native call (``_native.adatam_tensors_step``, as
    :func:`tam_step_native`; the floats: ``h``'s): updates the params, the moments and ``shat``
    in place and returns the damping; None, changing nothing, where it does not apply."""
    return _native.adatam_tensors_step(
        ps, gs, ms, vs, h, shat, beta1=beta1, beta2=beta2, eps=eps, size=size,
        coupled_wd=wd if coupled else None, shrink=decay_factor(lr, wd) if decoupled else None)


def amsgd_step_native(ps: list[Tensor], gs: list[Tensor], ds: list[Tensor], sq: Tensor,
                      h: Tensor, coupled: bool, *, lr: float, wd: float) -> Tensor | None:
    r""":func:`amsgd_step` on a CPU in one native call (``_native.amsgd_tensors_step``, as
    :func:`tam_step_native`): updates the params, ``ds`` and ``sq`` (the new
    :math:`\lVert d\rVert^2`) in place and returns :math:`\beta_t`; None, changing nothing,
    where it does not apply."""
    return _native.amsgd_tensors_step(ps, gs, ds, h, sq, step=-lr,
                                      coupled_wd=wd if coupled else None)


def momo_adam_step_native(ps: list[Tensor], gs: list[Tensor], ds: list[Tensor],
                          vs: list[Tensor], gam: Tensor, loss_avg: Tensor, fstar: Tensor,
                          f: Tensor, h: Tensor, decay: bool, divide: bool, *, beta1: float,
                          beta2: float, bc2: float, eps: float, lr: float, wd: float
                          ) -> Tensor | None:
    """:func:`momo_adam_step` on a CPU by the native passes with its numbers between them
    (``_native.momo_adam_tensors_step``: two calls around torch's sum of ``gam``; the floats:
    ``h``'s): updates the params, the moments, ``gam`` and ``loss_avg`` in place and returns
    :math:`\tau`; None, changing nothing, where it does not apply."""
    return _native.momo_adam_tensors_step(
        ps, gs, ds, vs, h, f, loss_avg, fstar, gam, decay=decay, beta1=beta1, beta2=beta2,
        bc2=bc2, eps=eps, shrink=decay_factor(lr, wd) if decay and not divide else None,
        inverse=1 / (1 + lr * wd) if decay and divide else None)
