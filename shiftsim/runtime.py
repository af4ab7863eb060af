"""Where torch runs a run: its device (:func:`resolve_device`), its intra-op threads
(:func:`torch_threads`), the determinism policy (:func:`deterministic_mode`) and what a run
records about the device (:func:`device_facts`, :func:`determinism_flags`).

Small on purpose: the run loop, the engine and the study's executors all use these, and
importing this module loads no torch until a function is called.

>>> resolve_device("cpu")
device(type='cpu')
>>> import torch
>>> before = torch.get_num_threads()
>>> with torch_threads(1):
...     torch.get_num_threads()
1
>>> torch.get_num_threads() == before
True
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .errors import ShiftsimError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["CUBLAS_WORKSPACE", "DENORMALS_ENV", "DENORMAL_MODES", "cpu_seeded", "denormal_mode",
           "denormals", "determinism_flags", "deterministic_mode", "device_facts",
           "frozen_heap", "prepare_deterministic_env", "resolve_device", "torch_threads"]

#: the ``CUBLAS_WORKSPACE_CONFIG`` deterministic mode sets when it is unset (what the CUDA
#: documentation gives for reproducible cuBLAS results)
CUBLAS_WORKSPACE = ":4096:8"


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU; anything else is checked and returned."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ShiftsimError(f"unknown device {device!r}; allowed: 'auto', 'cpu', 'cuda', "
                            "'cuda:N', 'mps'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ShiftsimError(f"device {device!r} asked for, but CUDA is not available here; "
                            "use device='auto' or 'cpu'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ShiftsimError(f"device {device!r} asked for, but MPS is not available here")
    return dev


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)`` (None: leave it as it is)."""
    if threads is None:
        yield
        return
    import torch

    old = torch.get_num_threads()
    if old != threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the garbage collector's full passes off every object that exists now, for the
    block (``gc.freeze()``): long-lived objects (a study's run states and specs, torch's and
    shiftsim's own) are then not traversed again at every full pass. At its end everything is
    unfrozen (``gc.unfreeze()``), so that garbage which was among the frozen objects is
    collected from then on. Where objects are frozen already (an enclosing block, a study's
    worker process, the caller's own ``gc.freeze()``) it does nothing: freezing again there
    would keep the garbage of the time until the outer freeze ends, which in a worker process
    is never. [speed] A study's driver holds each run's state and spec (about 80
    objects a run) for a stage, and a tuning selection loads every run so far: over the 8,200
    runs of ``scenarios/robustness_league.py`` (one run each, a 2-core AMD EPYC) its full
    passes took 13.3 s (45 passes, up to 0.5 s each) before the stage and selection blocks
    (``study.runner``) and the recompute of recovery from arrays (``store.results``), 4.8 s
    after.

    >>> import gc
    >>> with frozen_heap():
    ...     gc.get_freeze_count() > 0
    True
    >>> gc.get_freeze_count()
    0
    """
    import gc

    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


#: the environment variable that says how runs treat subnormal floats on the CPU
DENORMALS_ENV = "SHIFTSIM_DENORMALS"
#: ``ieee``: kept, as torch keeps them (the default); ``flush``: flushed to zero
DENORMAL_MODES = ("ieee", "flush")


def denormal_mode() -> str:
    """How runs treat subnormal floats (magnitudes below 1.2e-38 in float32, 2.2e-308 in
    float64) on the CPU: ``$SHIFTSIM_DENORMALS``, ``ieee`` (unset or empty: the default) or
    ``flush``, in any case.

    >>> denormal_mode() in DENORMAL_MODES
    True
    """
    import os

    raw = os.environ.get(DENORMALS_ENV, "")
    value = raw.strip().lower() or "ieee"
    if value not in DENORMAL_MODES:
        raise ShiftsimError(f"{DENORMALS_ENV}={raw!r} is not a mode; allowed: 'ieee' (the "
                            "default: subnormal floats kept, as torch keeps them), 'flush' "
                            "(flushed to zero: faster on CPUs that slow down on them)")
    return value


@contextlib.contextmanager
def denormals(mode: str | None = None) -> Iterator[str]:
    """Run the block with subnormal floats flushed to zero (``mode="flush"``) or kept (``"ieee"``,
    which changes nothing); None: :func:`denormal_mode`. Yields the mode in effect, which a run
    records (``info["determinism"]["denormals"]``).

    Flushing sets the processor's flush-to-zero and denormals-are-zero modes on the calling
    thread and on every thread of torch's intra-op team (:func:`shiftsim.optim._native.denormals`:
    x86-64 and ARM64, where shiftsim's native library builds and shares torch's OpenMP
    runtime; the native row sums' own worker threads follow the calling thread), and puts the
    previous state back afterwards. Where that cannot be done on every thread, it is done only
    with one torch thread (the native library, or torch's own ``set_flush_denormal``, turned
    off again afterwards: the calling thread is then the only one computing) and otherwise
    warns and keeps IEEE subnormals (a run's numbers must not depend on which thread computed
    what). It concerns CPU arithmetic only; GPUs keep their own settings.

    Why: some processors compute with subnormal operands or results far more slowly than with
    normal ones (this project's Intel Xeon among them), and long runs make many: where a
    gradient stays 0 (a dead ReLU unit), a momentum decays by 0.9 a step into the subnormals and
    stays there (0.9 times the smallest ones rounds back to themselves), moving its parameter
    by at most lr x 6e-45 a step. Measured on a 2-core Intel Xeon,
    one thread: a fleet of 32 MLPs 64-128-128-10 over 3,000 steps (sgdm, tam, adam, momo)
    took 5.64 ms a step with IEEE subnormals and 2.78 ms flushed, with the same traces bit for
    bit (the optimizers' steps took 4-5x longer than over the first 400 steps, the model's
    the same); single runs of the default MLP over 2,000 steps 1.04-2.4x faster (AdaTAM 1.01 ->
    0.43 ms a step, SGD-momentum 0.41 -> 0.26; docs/performance.md has them all). On
    a 2-core AMD EPYC the same 3,000-step fleet's optimizer steps took as long either way
    (0.15-0.30 ms a step each, by piece): flushing pays only on processors that slow down. The
    numbers can differ where a subnormal value would have mattered (it is then 0 instead of
    below 1.2e-38 in float32).

    >>> import torch
    >>> tiny = torch.tensor([1e-38])
    >>> with denormals("flush") as mode:
    ...     mode, (tiny * 0.5).item()
    ('flush', 0.0)
    >>> (tiny * 0.5).item() > 0
    True
    """
    import warnings

    import torch

    mode = denormal_mode() if mode is None else mode
    if mode not in DENORMAL_MODES:
        raise ShiftsimError(f"denormals mode {mode!r}; allowed: {', '.join(DENORMAL_MODES)}")
    if mode == "ieee":
        yield "ieee"
        return
    from .optim import _native

    one = torch.get_num_threads() == 1
    # torch's other threads are reachable where the library shares torch's OpenMP runtime
    before = _native.denormals(True) if one or _native.openmp() else None
    if before is not None:
        try:
            yield "flush"
        finally:
            _native.denormals(before)
        return
    if one and torch.set_flush_denormal(True):
        try:
            yield "flush"
        finally:
            torch.set_flush_denormal(False)
        return
    warnings.warn(f"{DENORMALS_ENV}=flush: subnormals cannot be flushed on every thread here "
                  "(no native library with torch's OpenMP runtime, or another processor); "
                  "running with IEEE subnormals", RuntimeWarning, stacklevel=3)
    yield "ieee"


def prepare_deterministic_env() -> None:
    """Set ``CUBLAS_WORKSPACE_CONFIG`` (to :data:`CUBLAS_WORKSPACE`) when it is unset.

    cuBLAS reads it when torch makes its first cuBLAS handle, so a worker process calls this
    before CUDA starts (the study's workers do, first thing); it stays set afterwards, on
    purpose, since a later change would not reach the handles already made.
    """
    import os

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


def determinism_flags() -> dict[str, Any]:
    """The torch settings that decide whether CUDA results are reproducible, as they are now.

    >>> sorted(determinism_flags())  # doctest: +NORMALIZE_WHITESPACE
    ['cublas_workspace_config', 'cudnn_benchmark', 'cudnn_deterministic',
     'deterministic_algorithms', 'tf32_cudnn', 'tf32_matmul']
    """
    import os

    import torch

    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


@contextlib.contextmanager
def deterministic_mode(enabled: bool = True) -> Iterator[None]:
    """Run the block under torch's deterministic settings (``enabled=False``: as they are).

    Sets ``torch.use_deterministic_algorithms(True, warn_only=True)`` (an op without a
    deterministic kernel warns instead of failing the run), cuDNN deterministic with its
    benchmark (autotuning) off, TF32 off for matmuls and cuDNN, and ``CUBLAS_WORKSPACE_CONFIG``
    (:func:`prepare_deterministic_env`); every torch setting is restored afterwards.

    What it buys: on CUDA, the same spec, seed, device model, driver, CUDA/cuDNN and torch
    versions (and, for a fleet, the same fleet size: batched-GEMM kernels are chosen by shape)
    give the same trace bit for bit, provided no "nondeterministic" warning was raised. On the
    CPU it changes nothing: CPU kernels are deterministic for a fixed number of threads.

    >>> import torch
    >>> with deterministic_mode():
    ...     torch.are_deterministic_algorithms_enabled()
    True
    >>> torch.are_deterministic_algorithms_enabled()
    False
    """
    if not enabled:
        yield
        return
    import torch

    prepare_deterministic_env()
    old = (torch.are_deterministic_algorithms_enabled(),
           torch.is_deterministic_algorithms_warn_only_enabled(),
           torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
           torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old[0], warn_only=old[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old[2], old[3]
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old[4], old[5]


def device_facts(device: torch.device) -> dict[str, Any]:
    """What a run records about its device: its type, name and the CUDA / cuDNN versions
    (None off CUDA).

    >>> import torch
    >>> device_facts(torch.device("cpu"))
    {'device_type': 'cpu', 'device_name': 'cpu', 'cuda': None, 'cudnn': None}
    """
    import torch

    if device.type != "cuda":
        return {"device_type": device.type, "device_name": device.type, "cuda": None,
                "cudnn": None}
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"device_type": "cuda", "device_name": torch.cuda.get_device_name(device),
            "cuda": torch.version.cuda, "cudnn": cudnn}


_SEEDED = threading.RLock()


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's threads: a lock one of them held is free."""
    global _SEEDED
    _SEEDED = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def cpu_seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU generator seeded with ``seed``, restored afterwards.

    Unlike ``torch.manual_seed`` this leaves every CUDA generator alone (that one also seeds
    the caller's CUDA generators, or queues the seed for when CUDA starts), so building a
    model changes no random state of the caller's.

    >>> import torch
    >>> before = torch.random.get_rng_state()
    >>> with cpu_seeded(0):
    ...     a = torch.rand(1)
    >>> with cpu_seeded(0):
    ...     b = torch.rand(1)
    >>> bool(a == b), bool((torch.random.get_rng_state() == before).all())
    (True, True)
    """
    import torch

    # the generator is the process's: threads that build models at once (a fleet's lanes) take
    # turns, so that none draws from another's seed
    with _SEEDED, torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield
