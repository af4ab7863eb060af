"""Native code for the fleet's row kernels and six compiled steps on a CPU: per-row inner products
of ``(K, n)`` tensors in one pass over them (:func:`row_sums`), TAM's and MoMo's per-member
arithmetic (:func:`tam_coefs`, :func:`momo_coefs`), TAM's update in one pass (:func:`tam_update`),
the whole row steps of TAM, MoMo, AdaTAM(W) and AM-SGD in one call each (:func:`tam_step`,
:func:`momo_step`, :func:`adatam_step`, :func:`amsgd_step`), Grams's step in one pass
(:func:`grams_step`), MoMo-Adam's and AM-AdamW's two passes over a fleet's rows
(:func:`momo_adam_rows`, :func:`amadamw_rows`) and their numbers between the passes
(:func:`momo_adam_coefs`, :func:`am_betas`), the compiled steps of MoMo, TAM, AdaTAM(W), AM-SGD,
MoMo-Adam and AM-AdamW over one learner's tensors (:func:`momo_tensors_step` and the passes
below it), and the switch that flushes subnormal floats on torch's threads (:func:`denormals`).

A fleet's row kernels (TAM, AdaTAM(W), MoMo, AM-SGD; see :func:`shiftsim.optim._kernels.row_dots`)
need two or three inner products per member each step. torch computes each as a product
written to memory and then summed: four passes over ``n`` elements per product. The small C
function in ``rowsums.c`` (next to this file) reads each tensor once for all of them.

**Numbers.** The order of the additions depends on ``n`` only (16 lanes, float32 blocks of 256
elements added into float64 lanes, no fused multiply-add), so a member's sums are the same bits
in a fleet of any size, at any position, with any thread count, and whatever the compiler's
optimisation and vector width (tested: ``-O0`` against ``-O3 -march=native``), on CPUs that
compute in IEEE single and double precision (x86-64, ARM64). They are not torch's bits: torch
sums in float32 in its own order, so runs with the native sums and without them agree up to
float rounding only (tested against a float64 reference, in ``tests/test_optim_native.py``). A
run's record says which its process had (``determinism["row_sums"]``, :func:`current`).

**Per-member arithmetic.** Between its passes over the rows, a TAM or MoMo row step computes a
few numbers per member from the sums (TAM's cosine, damping and momentum scale; MoMo's loss
average and step size): 20 to 30 torch operations on ``(K,)`` tensors, a few microseconds each
whatever their size. :func:`tam_coefs` and :func:`momo_coefs` (``rowmath.c``) do them in one
call; :func:`momo_adam_coefs` and :func:`am_betas` MoMo-Adam's step size and AM-AdamW's betas
between their row passes. Each torch operation is one expression there, in the same order, with
a fused multiply-add exactly where torch's CPU kernels make one (lerp, add with ``alpha``,
addcmul), so the numbers are torch's bit for bit where torch's kernels fuse them (tested on
x86-64 with AVX2, torch 2.13: 1 to 45 members, both dtypes, float and per-member
hyperparameters; a torch build that does not fuse would differ from these by float rounding).
[speed] The peak fleet of ``benchmarks/fleet.py --peak`` (32 members, 8 each of SGD-momentum,
TAM, Adam and MoMo), one thread, toggled in one process over 10 interleaved runs: 0.933x a step
(9 of 10 runs faster; the same traces).

**Fused passes.** Two of those steps' passes over the rows are also done here, torch's bits
again: TAM's update (:func:`tam_update`: the momentum's lerp, decoupled decay and the step in
one pass instead of three) and MoMo's first moment, moved toward the gradient in the pass
that sums it (``row_sums(..., lerp=)``; two passes instead of three). [speed] The same peak
fleet, toggled over 10 runs, group time a step: TAM 0.303 -> 0.268 ms, MoMo 0.374 -> 0.328;
the whole step 1.002x over 12 runs (not resolved).

**Whole row steps.** :func:`tam_step` and :func:`momo_step` make a TAM or MoMo row step
one call: member by member, its sums, its numbers and its update (the same C functions, so the
same bits as the three calls), the update reading the member's row while the sums' pass has
left it in cache, and one call's Python and checks instead of three. [speed] The peak fleet's
configuration at 16 members (4 per optimizer, one thread: a study's fleet on one of two
workers), toggled in one process, group time a step (paired ratios, 10-12 interleaved runs):
TAM 0.64, 0.73 and 0.70x (e.g. 0.185 -> 0.114 ms), MoMo 0.70, 0.79 and 0.74x (0.250 ->
0.170 ms); at 32 members TAM 0.81x, MoMo 0.85x. The whole step: medians 0.86, 0.97 and 0.92x
at 16 members, 0.99x at 32, each with rounds on both sides of 1 (not resolved).

AdaTAM(W)'s row step is one call too (:func:`adatam_step`): its sums, cosine and damping, and
one pass for its moments and parameters (torch's nine or ten operations of the eager kernel,
with the correctly rounded square root, torch's bits where its kernels fuse multiply-adds).
[speed]
A league-like fleet (130 members, 13 optimizers x 10 seeds, MLP 64, one thread), toggled in
one process over 6 runs: the AdaTAM and AdaTAMW groups (20 members) 1.055 -> 0.248 ms a step
(paired 0.23x), the whole step 0.932x (5 of 6 runs faster). AM-SGD's likewise
(:func:`amsgd_step`): in the same fleet its group (10 members) 0.382 -> 0.157 and 0.372 ->
0.165 ms a step (paired 0.41x and 0.43x; the whole step not resolved, 1.01x and 1.09x with
rounds 0.89-1.19). Grams's step, which sums nothing, is one pass (:func:`grams_step`: torch's
eleven or twelve operations): its group 0.424 -> 0.127 ms a step (paired 0.31x).

**Steps over one learner's tensors** (``tensorsteps.c``): the compiled steps of MoMo, TAM,
AdaTAM(W), AM-SGD, MoMo-Adam and AM-AdamW on a CPU (``compile=True``, or ``"auto"`` once it
applies; ``shiftsim.optim._compiled``). :func:`momo_tensors_step` is MoMo's whole step; two
passes each for the others: :func:`three_sums_tensors` and :func:`lerp_update_tensors` (TAM,
AM-SGD), :func:`three_sums_tensors` and :func:`adatam_update_tensors` (AdaTAM(W)), each pair
called as one whole step with its numbers between the passes (:func:`tam_tensors_step`,
:func:`amsgd_tensors_step`, :func:`adatam_tensors_step`), :func:`momo_adam_moments` and
:func:`momo_adam_update` (called by :func:`momo_adam_tensors_step` with the numbers between them
in C but for torch's sum of gamma), :func:`amadamw_sums` and :func:`amadamw_update` (one call:
:func:`amadamw_tensors_step`); the parameter tensors cut into chunks of :data:`CHUNK` elements
and split across torch's threads. The steps call the whole-step functions; the passes' own
Python functions are what the tests compose them from and check them against. [speed]
``benchmarks/optimizer_step.py`` (5M parameters, 2 threads, alternating with Inductor's
kernels): MoMo 1.22x and 1.21x fused SGD-momentum against 1.93x and 1.99x, MoMo-Adam 1.61x and
1.68x fused AdamW against 2.70x and 2.60x, AM-AdamW 1.81x and 1.84x against 3.35x and 3.16x;
TAM and AM-SGD at Inductor's speed within resolution (all numbers in ``_compiled``), without
its compile. The whole steps of TAM, AM-SGD and AdaTAM(W) spare the Python between the two
passes: 0.18-0.22 ms a step there, small torch operations being 3-5x slower right after a pass
over megabytes than when repeated (docs/performance.md has the measurements).

**Threads.** The library is built with OpenMP (``-fopenmp``) only where that is torch's own
runtime (GCC's libgomp, which torch's Linux wheels load: the library then links to the copy
torch has loaded instead of a second one), so its parallel loops run on torch's thread team,
awake right after torch's own parallel work. A pool of Python threads beside it gained little
on this project's 2-core machine: a prototype of MoMo's two passes, 9 rounds interleaved with
fused SGD-momentum (2 threads), took 1.74x its time split by such a pool and 1.43x on torch's
team (1.26x on one thread, where fused SGD-momentum is slower too; all on this session's
machine, a 2-vCPU Intel Xeon). Each thread takes the same
chunks in every pass of a step: with the second pass's chunks dealt out in plain reverse order
(each thread then starting on what the other had summed) TAM's step took 3.0-3.5 ms after
fused SGD-momentum's steps against 2.3-2.5 ms (5-step rounds interleaved by hand, 2 threads;
why, I did not establish: each core's own 2 MB of L2 cache is my guess). Elsewhere (clang,
another runtime in torch) the library is built without OpenMP and the tensor steps run on the
calling thread; the row functions above split rows across a pool of Python threads either way.
:func:`openmp` says which.

**Build.** The first use in a process compiles ``rowsums.c``, ``rowmath.c`` and
``tensorsteps.c`` with the system's C compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``;
about 1 s on a 2-core CPU) into a cache folder (``$SHIFTSIM_CACHE``, else
``$XDG_CACHE_HOME/shiftsim``, else ``~/.cache/shiftsim``), keyed by the sources, the compiler's
version, the OpenMP setting and the CPU's flags (a folder that cannot be written: the temporary
folder's ``shiftsim-<uid>``); later processes load it. A compiler that refuses ``-fopenmp``:
built without it. No compiler, a failed build or an unloadable library: one warning, then
torch's sums and arithmetic for the rest of the process (and Inductor's kernels for the
compiled steps). ``SHIFTSIM_NATIVE=0`` turns all of it off (``1``, the default: on where it
builds).

>>> import torch
>>> a, b = torch.ones(2, 5), torch.full((2, 5), 2.0)
>>> sums = row_sums([a, b], [(0, 1), (1, 1)])
>>> sums is None or [s.tolist() for s in sums] == [[10.0, 10.0], [20.0, 20.0]]
True
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["ENV", "MAX_PAIRS", "MAX_SEGMENTS", "MAX_TENSORS", "available", "cache_dir",
           "adatam_step", "adatam_update_tensors", "am_betas", "am_tensor_scales", "amsgd_step",
           "current", "grams_step", "momo_adam_coefs",
           "momo_coefs", "momo_step", "amadamw_sums", "amadamw_update", "lerp_update_tensors",
           "momo_adam_moments", "momo_adam_update", "momo_tensors_step", "openmp", "row_sums",
           "status", "tam_coefs", "tam_step", "tam_update", "three_sums_tensors",
           "tam_tensors_step", "amsgd_tensors_step", "adatam_tensors_step",
           "momo_adam_tensors_step", "amadamw_tensors_step"]

#: the environment variable that turns the native row sums off (``0``) or on (``1``)
ENV = "SHIFTSIM_NATIVE"
#: the most pairs one call sums, and the most tensors it reads
MAX_PAIRS = 4
MAX_TENSORS = 6
#: the most segments a row of the whole row steps (:func:`tam_step` ... :func:`grams_step`)
#: may have (``MAXSEG`` in ``rowmath.c``)
MAX_SEGMENTS = 64
#: the compiler's flags (``-march=native`` is dropped when the compiler refuses it)
#: (``-fno-math-errno``: square roots without ``errno``, so that loops of them vectorise; the
#: same numbers)
CFLAGS = ("-O3", "-std=c11", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno", "-fPIC",
          "-shared")
SOURCE = Path(__file__).with_name("rowsums.c")
#: the per-member arithmetic of the TAM and MoMo row kernels (:func:`tam_coefs`,
#: :func:`momo_coefs`), built into the same library
MATH_SOURCE = Path(__file__).with_name("rowmath.c")
#: the compiled steps' passes over one learner's tensors, split across torch's threads
#: (:func:`momo_tensors_step` ... :func:`amadamw_update`), built into the same library
TENSOR_SOURCE = Path(__file__).with_name("tensorsteps.c")
SOURCES = (SOURCE, MATH_SOURCE, TENSOR_SOURCE)
#: the flag that builds the library with OpenMP, where :func:`_openmp_flags` allows it
OPENMP = "-fopenmp"

_lock = threading.Lock()
_thread = threading.local()
_lib: ctypes.CDLL | None = None
_state: str | None = None  # None: not tried yet; "native" | "off" | "unavailable: <why>"
_setup_s = 0.0  # seconds this process spent building and loading the library


def setup_seconds() -> float:
    """Seconds this process has spent building and loading the library so far (the first use
    on a machine compiles it: 3.9 s on the project's 2-vCPU AMD EPYC with a fresh cache,
    2026-12-07; a run's loop time leaves this out, so its
    ``ms_per_step`` is the learner's, not a one-off build's)."""
    return _setup_s


def cache_dir() -> Path:
    """Where built libraries are kept: ``$SHIFTSIM_CACHE``, else ``$XDG_CACHE_HOME/shiftsim``,
    else ``~/.cache/shiftsim``."""
    env = os.environ.get("SHIFTSIM_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "shiftsim"


def _wanted() -> bool:
    value = os.environ.get(ENV, "1").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value not in ("", "1", "true", "yes", "on"):
        warnings.warn(f"{ENV}={os.environ[ENV]!r} is not one of 0/1 (off/on); using the "
                      "native row sums where they build", stacklevel=3)
    return True


def _compiler() -> str | None:
    for name in (os.environ.get("CC", ""), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _version(cc: str) -> str:
    """``cc --version``'s output."""
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True,
                               timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"{cc} --version failed: {exc}") from None


def _torch_libgomp() -> bool:
    """Whether torch's parallel backend is OpenMP and a library named ``libgomp.so.1`` (GCC's
    runtime under its own soname, which is what ``-fopenmp`` links) is loaded in this process,
    read from ``/proc/self/maps`` (False where that cannot be read). Wheels that ship a renamed
    copy (``libgomp-<hash>.so.1``, as auditwheel names it) do not count: a library linked to
    ``libgomp.so.1`` would load a second runtime beside it."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return False
    try:
        return _gcc_libgomp(Path("/proc/self/maps").read_text())
    except OSError:
        return False


def _gcc_libgomp(maps: str) -> bool:
    """Whether the memory map ``maps`` (``/proc/self/maps``'s text) holds a file named
    ``libgomp.so.1``.

    >>> _gcc_libgomp("7f3e30e00000-7f3e30e37000 r-xp 0 fe:00 5 /x/torch/lib/libgomp.so.1")
    True
    >>> _gcc_libgomp("7f3e30e00000-7f3e30e37000 r-xp 0 fe:00 5 /x/libgomp-e985bcbb.so.1.0.0")
    False
    """
    return any(line.rsplit("/", 1)[-1] == "libgomp.so.1" for line in maps.splitlines())


def _openmp_flags(version: str) -> list[str]:
    """``[OPENMP]`` where the library built with it shares torch's OpenMP runtime: the compiler
    is GCC (whose ``-fopenmp`` links ``libgomp.so.1``, the soname of the copy torch has already
    loaded, so the dynamic loader reuses that one) and torch runs its parallel work on libgomp.
    Anything else (clang links another runtime; torch built with its own thread pool or with
    Intel's OpenMP) would start a second thread pool beside torch's: no OpenMP there
    (``tensorsteps.c`` then runs on the calling thread)."""
    gcc = "Free Software Foundation" in version or version.lower().startswith("gcc")
    return [OPENMP] if gcc and _torch_libgomp() else []


def _target(cc: str, version: str, openmp: Sequence[str]) -> Path:
    """The cached library's path for this source, compiler, CPU and OpenMP setting."""
    key = hashlib.sha256(b"\0".join([*(src.read_bytes() for src in SOURCES), repr(CFLAGS).encode(),
                                     repr(version.splitlines()[:1]).encode(),
                                     repr(list(openmp)).encode(), platform.machine().encode(),
                                     _cpu_flags().encode()]))
    return cache_dir() / f"rowsums-{key.hexdigest()[:16]}.so"


def _path(cc: str) -> tuple[Path, list[str]]:
    """The cached library's path for compiler ``cc`` here, and the OpenMP flags it is built
    with."""
    version = _version(cc)
    openmp = _openmp_flags(version)
    return _target(cc, version, openmp), openmp


def _build(cc: str, target: Path, openmp: Sequence[str] = ()) -> None:
    """Compile the library into ``target`` (a new file, renamed into place: a library another
    process has loaded is never written over), with ``openmp``'s flags where the compiler
    takes them; raises RuntimeError naming the failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".rowsums-", suffix=".so")
    os.close(fd)
    errors = []
    try:
        tries = [(arch, omp) for arch in (["-march=native"], [])
                 for omp in ([list(openmp)] + ([[]] if openmp else []))]
        for arch, omp in tries:
            cmd = [cc, *CFLAGS, *arch, *omp, *map(str, SOURCES), "-o", tmp, "-lm"]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            except (OSError, subprocess.SubprocessError) as exc:
                errors.append(str(exc))
                continue
            if proc.returncode == 0:
                os.replace(tmp, target)  # atomic: a concurrent build writes the same bytes
                return
            errors.append(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip()
                          else f"exit status {proc.returncode}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    raise RuntimeError(f"{cc} could not build {', '.join(src.name for src in SOURCES)}: "
                       f"{errors[-1]}")


_ptr, _i64, _int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
#: a whole row step's first arguments (segments, lengths, row length, pointers, strides, rows
#: k0..k1, K), and one hyperparameter (pointer, stride)
_ROWS, _HYPER = [_int, _ptr, _i64, _ptr, _ptr, _i64, _i64, _i64], [_ptr, _i64]
#: the C entry points (``shiftsim_<name>_f32`` and ``_f64``): result type and argument types
#: (a pointer with its stride: ``_ptr, _i64``)
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "rowsums": (_int, [_ptr, _ptr, _int, _ptr, _int, _ptr, _ptr, _i64, _i64, _ptr, _i64, _int,
                       _int, _ptr, _i64]),
    "tam_coefs": (None, [_i64, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _i64, _ptr, _i64, _ptr, _i64,
                         _int, _ptr, _i64, _int, _ptr, _ptr, _ptr]),
    "tam_update": (None, [_int, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _i64, _ptr, _ptr, _ptr,
                          _i64]),
    "momo_coefs": (None, [_i64, _ptr, _ptr, _ptr, _i64, _ptr, _i64, _ptr, _ptr, _ptr, _ptr, _ptr,
                          _ptr, _i64, _int, _ptr, _i64, _ptr, _ptr]),
    "momo_adam_averages": (None, [_i64, _i64, _ptr, _ptr, _ptr, _ptr, *_HYPER * 2]),
    "momo_adam_coefs": (None, [_i64, *[_ptr] * 5, _int, _int, _ptr, _ptr, *_HYPER * 3]),
    "am_betas": (None, [_i64, _i64, _ptr, _int, _int, _ptr, _ptr, _ptr, *_HYPER * 4]),
    "am_tensor_scales": (None, [_i64, _ptr, *[ctypes.c_double] * 3, _ptr, _ptr]),
    # the whole row steps (rowmath.c): the segments, their lengths, the row's length, the
    # pointers and strides, the rows k0..k1 and K (Grams: neither the row's length nor K),
    # each function's own vectors and flags, then its hyperparameters (:func:`_hyper_args`)
    "tam_step": (_int, [*_ROWS, *[_ptr] * 4, _int, _int, *[_ptr] * 3, *_HYPER * 5]),
    "momo_step": (_int, [*_ROWS, *[_ptr] * 5, _int, _ptr, _ptr, *_HYPER * 5]),
    "adatam_step": (_int, [*_ROWS, *[_ptr] * 3, *_HYPER * 8]),
    "amsgd_step": (_int, [*_ROWS, _ptr, _ptr, *_HYPER * 7]),
    "grams_step": (_int, [_int, _ptr, _ptr, _ptr, _i64, _i64, *_HYPER * 6]),
    # tensorsteps.c: threads, tensors, their pointers, the chunks, scratch, the state, the loss
    # and f*, the float hyperparameters, tau
    "momo_tensors": (None, [_int, _i64, _ptr, _ptr, _ptr, _i64, _ptr, _ptr, _ptr, _ptr, _ptr,
                            _ptr, _ptr, _ptr, _ptr, _ptr, *[ctypes.c_double] * 4, _ptr]),
    "three_sums_tensors": (None, [_int, _ptr, _ptr, _ptr, ctypes.c_double, _i64, _ptr, _ptr,
                                  _ptr, _ptr, _ptr]),
    "lerp_update_tensors": (None, [_int, _ptr, _ptr, _ptr, _i64, _ptr, _ptr, _ptr,
                                   ctypes.c_double, ctypes.c_double, _int, ctypes.c_double,
                                   _int, ctypes.c_double]),
    "adatam_update_tensors": (None, [_int, _ptr, _ptr, _ptr, _ptr, _i64, _ptr, _ptr, _ptr,
                                     *[ctypes.c_double] * 6, _int, ctypes.c_double, _int,
                                     ctypes.c_double]),
    # the whole steps of TAM, AM-SGD and AdaTAM(W) (tensorsteps.c): threads, tensors, the
    # chunks, scratch, the decay, the hyperparameters, the state, the outputs
    "tam_tensors_step": (None, [_int, _ptr, _ptr, _ptr, _i64, _ptr, _ptr, _ptr, _ptr, _int,
                                ctypes.c_double, _int, ctypes.c_double, _ptr, _int, _ptr, _ptr,
                                _ptr, _ptr]),
    "amsgd_tensors_step": (None, [_int, _ptr, _ptr, _ptr, _i64, _ptr, _ptr, _ptr, _ptr, _int,
                                  ctypes.c_double, ctypes.c_double, _ptr, _ptr, _ptr]),
    "adatam_tensors_step": (None, [_int, _ptr, _ptr, _ptr, _ptr, _i64, _ptr, _ptr, _ptr, _ptr,
                                   _int, ctypes.c_double, _int, ctypes.c_double, _ptr,
                                   *[ctypes.c_double] * 5, _ptr, _ptr]),
    "amadamw_tensors_step": (None, [_int, _i64, _ptr, _ptr, _ptr, _ptr, _i64, _ptr, _ptr, _ptr,
                                    _ptr, _ptr, _ptr, _ptr, *[ctypes.c_double] * 4, _int, _int,
                                    *[ctypes.c_double] * 5, _int, _ptr, _ptr, _ptr, _ptr, _int,
                                    ctypes.c_double, ctypes.c_double]),
    "momo_adam_tensors_first": (None, [_int, _i64, _ptr, _ptr, _ptr, _ptr, _i64, _ptr, _ptr,
                                       _ptr, _ptr, _ptr, *[ctypes.c_double] * 5, _ptr, _ptr,
                                       _ptr, _ptr, _ptr, _ptr]),
    "momo_adam_tensors_second": (None, [_int, _ptr, _ptr, _ptr, _i64, _ptr, _ptr, _ptr,
                                        ctypes.c_double, ctypes.c_double, _int, ctypes.c_double,
                                        _int, ctypes.c_double, _ptr, _int, _ptr, _ptr, _ptr,
                                        _ptr, _ptr]),
    "momo_adam_moments": (None, [_int, _i64, _ptr, _ptr, _ptr, _ptr, _i64, _ptr, _ptr, _ptr,
                                 _ptr, _ptr, *[ctypes.c_double] * 5, _ptr, _ptr]),
    "momo_adam_update": (None, [_int, _ptr, _ptr, _ptr, _i64, _ptr, _ptr, _ptr,
                                *[ctypes.c_double] * 3, _int, ctypes.c_double, _int,
                                ctypes.c_double]),
    # MoMo-Adam over a fleet's rows (tensorsteps.c): the segments, lengths, pointers, strides,
    # rows k0..k1 (and K), hyperparameters, outputs
    "momo_adam_rows": (None, [_int, _ptr, _ptr, _ptr, _i64, _i64, _i64, *_HYPER * 5, _ptr,
                              _ptr, _ptr]),
    "momo_adam_rows_update": (None, [_int, _ptr, _ptr, _ptr, _i64, _i64, *_HYPER * 2, _ptr,
                                     *_HYPER * 2]),
    "amadamw_rows": (None, [_int, _ptr, _ptr, _ptr, _i64, _i64, _i64, _ptr, _ptr,
                            *_HYPER * 3, _int, _int, _ptr]),
    "amadamw_rows_update": (None, [_int, _ptr, _ptr, _ptr, _i64, _i64, _i64, _ptr, _ptr,
                                   *_HYPER, _int, _ptr, *_HYPER * 2]),
    "amadamw_sums": (None, [_int, _i64, _ptr, _ptr, _ptr, _ptr, _i64, _ptr, _ptr, _ptr, _ptr,
                            _ptr, _ptr, _ptr, ctypes.c_double, ctypes.c_double, _int, _ptr]),
    "amadamw_update": (None, [_int, _ptr, _ptr, _ptr, _ptr, _i64, _ptr, _ptr, _ptr, _ptr, _ptr,
                              ctypes.c_double, _int, _ptr, _int, ctypes.c_double,
                              ctypes.c_double]),
}


def _fn(lib: ctypes.CDLL, name: str, dtype: torch.dtype) -> Any:
    """The library's ``shiftsim_<name>`` for ``dtype`` (``_f32`` or ``_f64``)."""
    return getattr(lib, f"shiftsim_{name}_{'f32' if dtype is torch.float32 else 'f64'}")


def _load() -> ctypes.CDLL:
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler (set $CC, or install cc, gcc or clang)")
    path, openmp = _path(cc)
    if not path.exists():
        try:
            _build(cc, path, openmp)
        except OSError:  # the cache folder cannot be written: this user's temporary folder
            path = Path(tempfile.gettempdir()) / f"shiftsim-{_user()}" / path.name
            if not path.exists():
                _build(cc, path, openmp)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:  # a damaged file in the cache: build it again once
        path.unlink(missing_ok=True)
        _build(cc, path, openmp)
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as exc:
            raise RuntimeError(f"cannot load {path}: {exc}") from None
    for name, (restype, argtypes) in _SIGNATURES.items():
        for suffix in ("f32", "f64"):
            fn = getattr(lib, f"shiftsim_{name}_{suffix}")
            fn.restype, fn.argtypes = restype, argtypes
    lib.shiftsim_openmp.restype, lib.shiftsim_openmp.argtypes = _int, []
    lib.shiftsim_denormals.restype, lib.shiftsim_denormals.argtypes = _int, [_int]
    lib.shiftsim_thread_denormals.restype = _int
    lib.shiftsim_thread_denormals.argtypes = [_int]
    ctypes.c_int64.in_dll(lib, "shiftsim_rows_parallel_from").value = ROWS_PARALLEL_FROM
    return lib


def _user() -> str:
    try:
        return str(os.getuid())
    except AttributeError:  # pragma: no cover - not on POSIX
        return os.environ.get("USERNAME", "user")


def _library() -> ctypes.CDLL | None:
    global _lib, _state, _setup_s
    if _state is None:
        with _lock:
            if _state is None:
                if not _wanted():
                    _state = "off"
                else:
                    t0 = time.perf_counter()
                    try:
                        _lib = _load()
                        _state = "native"
                    except Exception as exc:  # any build or load failure: torch's sums
                        _state = f"unavailable: {exc}"
                        warnings.warn(f"shiftsim's native row sums are unavailable ({exc}); "
                                      "using torch's (same math, other rounding)",
                                      RuntimeWarning, stacklevel=4)
                    finally:
                        _setup_s += time.perf_counter() - t0
    return _lib


def available() -> bool:
    """Whether the native row sums are on and built (builds them on the first call)."""
    return _library() is not None


def status() -> str:
    """``"native"``, ``"off"`` (``SHIFTSIM_NATIVE=0``) or ``"unavailable: <why>"`` (builds
    the library on the first call)."""
    _library()
    assert _state is not None
    return _state


def current() -> str:
    """What this process uses so far, without building: :func:`status`'s answer, or
    ``"unused"`` when nothing has asked for the native row sums yet (a run's record keeps
    it: ``determinism["row_sums"]``)."""
    return _state if _state is not None else "unused"


def _reset() -> None:
    """Forget the library and the decision (tests: the next call decides again)."""
    global _lib, _state
    with _lock:
        _lib, _state = None, None


_DTYPES = (torch.float32, torch.float64)
_pair_arrays: dict[Any, tuple[ctypes.Array, ctypes.Array, int]] = {}


def _pairs(pairs: Sequence[tuple[int, int]], count: int
           ) -> tuple[ctypes.Array, ctypes.Array, int] | None:
    """The pairs as two C int arrays and their largest index (kept by the pairs' tuple), or
    None when there are none or more than :data:`MAX_PAIRS`; an index outside the ``count``
    tensors is an error."""
    key = tuple((int(a), int(b)) for a, b in pairs)
    if not 0 < len(key) <= MAX_PAIRS:
        return None
    if any(not 0 <= i < count for pair in key for i in pair):
        raise IndexError(f"row_sums: pairs {list(key)} name a tensor outside 0..{count - 1}")
    int_array = ctypes.c_int * len(key)
    arrays = (int_array(*[a for a, _ in key]), int_array(*[b for _, b in key]),
              max(i for pair in key for i in pair))
    if isinstance(pairs, tuple) and len(_pair_arrays) < 64:
        _pair_arrays[pairs] = arrays
    return arrays


def row_sums(tensors: Sequence[Tensor | Sequence[Tensor]], pairs: Sequence[tuple[int, int]],
             lerp: tuple[int, int, object] | None = None) -> tuple[Tensor, ...] | None:
    """``sum_i tensors[a][k, i] * tensors[b][k, i]`` for each pair ``(a, b)`` and row ``k``:
    one ``(K,)`` tensor per pair, in the tensors' dtype; or None where the native sums do not
    apply (off or unavailable; not all CPU tensors of one float32/float64 dtype and one
    ``(K, n)`` shape with contiguous rows; more than :data:`MAX_PAIRS` pairs or
    :data:`MAX_TENSORS` tensors), and the caller sums with torch.

    A tensor may also be given as its segments: a list of ``(K, n_s)`` tensors whose rows, one
    after another, are its rows (a fleet keeps each parameter of its members in its own block).
    Then every tensor is given so, split the same way; the sums are the same bits as those of
    the segments concatenated.

    The results are views of a buffer the calling thread keeps per (pairs, K, dtype): valid
    until its next call with as many pairs of as many rows (the row kernels use them within
    their step). [speed] A fresh tensor and its views cost more than the call (6-8 us against
    2.5 us, measured). From :data:`SPLIT_FROM` elements on, the rows are split across torch's
    thread count (``torch.get_num_threads()``), the caller's thread summing the first part;
    a row's sums are the same bits whichever thread computes them.

    ``lerp=(t, u, w)``: first move tensor ``t`` toward tensor ``u`` in place, in the same pass,
    ``x_t <- lerp(x_t, x_u, w)`` (torch's ``lerp_`` bit for bit where torch's kernel fuses its
    multiply-add, as :func:`tam_coefs` says; ``w`` a float or one weight per row), and sum the
    moved values. With None returned nothing was moved."""
    arrays = _pair_arrays.get(pairs) if isinstance(pairs, tuple) else None
    if arrays is None or arrays[2] >= len(tensors):
        arrays = _pairs(pairs, len(tensors))
        if arrays is None:
            return None
    if len(tensors) > MAX_TENSORS or not tensors:
        return None
    split = not isinstance(tensors[0], Tensor)
    for t in tensors:
        if isinstance(t, Tensor) is split:  # all tensors whole, or all as segments
            return None
    layout = _layout(tensors if split else [(t,) for t in tensors])  # type: ignore[misc]
    if layout is None:
        return None
    dtype, K = layout.dtype, layout.K
    lib = _lib if _state is not None else _library()  # built only for inputs it can sum
    if lib is None:
        return None
    moved: tuple[int, int, int, int] = (-1, -1, 0, 0)
    if lerp is not None:
        t, u, weight = lerp
        hyper = _hyper(weight, K, dtype)  # its owner held until the sums are done
        if hyper is None or not (0 <= t < len(tensors) and 0 <= u < len(tensors)) or t == u:
            return None
        moved = (t, u, hyper[0], hyper[1])
    n = layout.n
    kept = getattr(_thread, "outs", None)
    if kept is None:
        kept = _thread.outs = {}
    slot = kept.get((len(pairs), K, dtype))
    if slot is None:
        if len(kept) >= 16:
            kept.clear()
        buf = torch.empty(len(pairs), K, dtype=dtype)
        slot = kept[(len(pairs), K, dtype)] = (buf, tuple(buf.unbind(0)))
    out, views = slot
    fn = _fn(lib, "rowsums", dtype)
    _by_rows(K, K * n * len(tensors), lambda lo, hi: _call(fn, layout, arrays, lo, hi, out, moved))
    return views


def _by_rows(K: int, elements: int, call: Any) -> None:
    """``call(lo, hi)`` for rows ``lo:hi`` of ``K``: all at once below :data:`SPLIT_FROM`
    ``elements``, else the rows split across torch's thread count, the caller's thread taking
    the first part (rows are independent: the same bits whichever thread computes a row)."""
    parts = 1 if elements < SPLIT_FROM else _parts(K)
    if parts == 1:
        call(0, K)
        return
    bounds = [K * i // parts for i in range(parts + 1)]
    # the pool's threads treat subnormals as the calling thread does (see denormals)
    lib = _library()
    flush = lib.shiftsim_thread_denormals(-1) if lib is not None else -1

    def task(lo: int, hi: int) -> None:
        if flush >= 0:
            lib.shiftsim_thread_denormals(flush)
        call(lo, hi)

    futures = [_pool().submit(task, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:])]
    call(0, bounds[1])
    for fut in futures:
        fut.result()


class _Layout:
    """Where a call's tensors lie: each given as S segments ``(K, n_s)`` (split alike), their
    data pointers and row strides (tensor by tensor, segment by segment) and C arrays of those
    and of the segments' lengths, made once per set of tensors (:func:`_layout`)."""

    __slots__ = ("dtype", "K", "lens", "n", "ptrs", "lds", "c_ptrs", "c_lds", "c_lens",
                 "_each")

    def __init__(self, dtype: torch.dtype, K: int, lens: list[int], ptrs: list[int],
                 lds: list[int]) -> None:
        self.dtype, self.K, self.lens, self.n = dtype, K, lens, sum(lens)
        self.ptrs, self.lds = ptrs, lds
        self.c_ptrs = (ctypes.c_void_p * len(ptrs))(*ptrs)
        self.c_lds = (ctypes.c_int64 * len(lds))(*lds)
        self.c_lens = (ctypes.c_int64 * len(lens))(*lens)
        self._each: list[tuple[ctypes.Array, ctypes.Array]] | None = None

    def each(self) -> list[tuple[ctypes.Array, ctypes.Array]]:
        """Each tensor's own C arrays of pointers and strides (made once)."""
        if self._each is None:
            S = len(self.lens)
            self._each = [self.rows_from(0, 0, j, 1) for j in range(len(self.ptrs) // S)]
        return self._each

    def rows_from(self, lo: int, size: int, first: int = 0, count: int | None = None
                  ) -> tuple[ctypes.Array, ctypes.Array]:
        """The pointers (and strides) of tensors ``first .. first + count - 1`` moved to row
        ``lo`` (elements of ``size`` bytes)."""
        S = len(self.lens)
        stop = len(self.ptrs) if count is None else (first + count) * S
        ptrs, lds = self.ptrs[first * S:stop], self.lds[first * S:stop]
        return ((ctypes.c_void_p * len(ptrs))(*[p + lo * ld * size for p, ld in zip(ptrs, lds)]),
                (ctypes.c_int64 * len(lds))(*lds))


def _measure(lists: Sequence[Sequence[Tensor]]) -> _Layout | None:
    """The :class:`_Layout` of ``lists`` (each tensor's segments), or None unless they are CPU
    tensors of one float32/float64 dtype, each list split alike into ``(K, n_s)`` segments with
    contiguous rows."""
    first = lists[0]
    if not first or first[0].dim() != 2:
        return None
    dtype, K = first[0].dtype, first[0].shape[0]
    if dtype not in _DTYPES:
        return None
    lens = []
    for seg in first:
        if seg.dim() != 2 or seg.shape[0] != K:
            return None
        lens.append(seg.shape[1])
    ptrs, lds = [], []
    for segs in lists:
        if len(segs) != len(lens):
            return None
        for seg, n in zip(segs, lens):
            if not isinstance(seg, Tensor) or seg.dtype is not dtype or seg.dim() != 2 \
                    or seg.shape[0] != K or seg.shape[1] != n or not seg.is_cpu:
                return None
            ld, inner = seg.stride()
            if inner != 1 and n > 1:
                return None
            ptrs.append(seg.data_ptr())
            lds.append(ld)
    return _Layout(dtype, K, lens, ptrs, lds)


_layouts: dict[tuple[int, ...], tuple[tuple[weakref.ref, ...], _Layout]] = {}


def _layout(lists: Sequence[Sequence[Tensor]]) -> _Layout | None:
    """:func:`_measure`, kept for the same tensors: a call on the tensor objects of an earlier
    one, each still at the data pointer it had then, reuses that call's layout (checked by
    weak references and the pointers; the fleet's row kernels call with the same tensors every
    step, and none of them changes its shape or strides in place). [speed] :func:`row_sums` on
    tiny rows (3 tensors x 6 segments, one thread): 25.5 -> 12.5 us a call."""
    flat = [seg for segs in lists for seg in segs]
    key = (*map(len, lists), -1, *map(id, flat))
    hit = _layouts.get(key)
    if hit is not None:
        refs, layout = hit
        if all(r() is t for r, t in zip(refs, flat)) \
                and all(t.data_ptr() == p for t, p in zip(flat, layout.ptrs)):
            return layout
    layout = _measure(lists)
    if layout is not None:
        if len(_layouts) >= 64:
            _layouts.clear()
        _layouts[key] = (tuple(weakref.ref(t) for t in flat), layout)
    return layout


def _call(fn: Any, layout: _Layout, arrays: tuple[Any, Any, int], lo: int, hi: int, out: Tensor,
          moved: tuple[int, int, int, int]) -> None:
    """Rows ``lo:hi`` (ctypes releases the GIL during the call); ``moved``: the lerp's
    ``(tensor, toward, weight pointer, weight stride)`` (tensor -1: none)."""
    size = out.element_size()
    t, u, weight, weight_step = moved
    c_ptrs, c_lds = layout.c_ptrs, layout.c_lds
    if lo:
        c_ptrs, c_lds = layout.rows_from(lo, size)
        weight += lo * weight_step * size
    rc = fn(c_ptrs, c_lds, len(layout.lens), layout.c_lens, len(arrays[0]), arrays[0],
            arrays[1], hi - lo, layout.n, out.data_ptr() + lo * size, layout.K, t, u,
            weight or None, weight_step)
    if rc != 0:  # pragma: no cover - the checks above keep the C side's preconditions
        raise RuntimeError(f"native row sums failed (code {rc})")


#: elements read (rows x columns x tensors) from which the rows are split across torch's
#: thread count (below it a thread's hand-off costs more than it saves)
SPLIT_FROM = 1 << 20
_pool_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def _parts(rows: int) -> int:
    """How many parts the rows of a call above :data:`SPLIT_FROM` are split into."""
    return max(1, min(rows, torch.get_num_threads()))


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's threads: a new pool (and locks) on first use,
    instead of handing work to threads that do not exist there."""
    global _executor, _pool_lock, _lock
    _executor, _pool_lock, _lock = None, threading.Lock(), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        with _pool_lock:
            if _executor is None:
                _executor = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1),
                                               thread_name_prefix="shiftsim-rowsums")
    return _executor


# ------------------------------------------------------------------ per-member arithmetic


def _vector(t: object, K: int, dtype: torch.dtype) -> bool:
    """Whether ``t`` is a CPU tensor of ``dtype`` whose K elements lie one after another."""
    return isinstance(t, Tensor) and t.dtype is dtype and t.is_cpu and t.numel() == K \
        and t.is_contiguous()


_hyper_arrays: dict[tuple[float, torch.dtype], Tensor] = {}
#: the most float hyperparameters kept as arrays (then the kept ones are dropped)
_HYPER_LIMIT = 256


def _hyper(value: object, K: int, dtype: torch.dtype) -> tuple[int, int, Tensor] | None:
    """A hyperparameter as ``(pointer, stride, owner)`` for the C side: a float as a kept
    one-element array of its value in ``dtype`` (rounded as torch rounds a Python scalar in an
    operation on ``dtype`` tensors; stride 0), a tensor of one value or one per member (its
    elements in ``dtype``); None for anything else. The caller holds ``owner`` until the call
    is done: the kept arrays may be dropped by a later :func:`_hyper` (a pointer alone would
    then point at freed memory)."""
    if isinstance(value, Tensor):
        if value.dtype is not dtype or not value.is_cpu or not value.is_contiguous() \
                or value.numel() not in (1, K):
            return None
        return value.data_ptr(), int(value.numel() == K and K > 1), value
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    key = (float(value), dtype)
    arr = _hyper_arrays.get(key)
    if arr is None:
        if len(_hyper_arrays) >= _HYPER_LIMIT:
            _hyper_arrays.clear()
        arr = _hyper_arrays[key] = torch.tensor([float(value)], dtype=dtype)
    return arr.data_ptr(), 0, arr


def _outputs(name: str, count: int, K: int, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """``count`` ``(K,)`` output vectors kept by the calling thread per (name, K, dtype)."""
    kept = getattr(_thread, "coefs", None)
    if kept is None:
        kept = _thread.coefs = {}
    views = kept.get((name, K, dtype))
    if views is None:
        if len(kept) >= 16:
            kept.clear()
        views = kept[(name, K, dtype)] = tuple(torch.empty(count, K, dtype=dtype).unbind(0))
    return views


def _math_library(dtype: torch.dtype) -> ctypes.CDLL | None:
    """The library, when the native code is on, built, and ``dtype`` is one it computes in."""
    if dtype not in _DTYPES:
        return None
    return _lib if _state is not None else _library()


def tam_coefs(mg: Tensor, gg: Tensor, sqnorm: Tensor, shat: Tensor, scale: Tensor,
              lerp_weight: object, eps: object, beta: object, neg_lr: object, positive: bool
              ) -> tuple[Tensor, Tensor, Tensor] | None:
    r"""The per-member arithmetic of TAM's fleet row step (:func:`~shiftsim.optim.tam._tam_rows`)
    in one native call: from the sums ``mg`` :math:`= \langle m, g\rangle` and ``gg``
    :math:`= \lVert g\rVert^2` and the kept ``sqnorm`` :math:`= \lVert m\rVert^2`, updates the
    smoothed cosine ``shat`` (``lerp_weight`` :math:`= 1 - \gamma`), the momentum's ``scale``
    :math:`\sigma \leftarrow \beta\sigma + c` (:math:`c = \epsilon + d`) and ``sqnorm`` in
    place and returns ``(d, w, step)``: the damping, the lerp weight :math:`c/\sigma` and
    ``neg_lr`` :math:`\cdot\,\sigma`. The numbers of torch's operations in
    :func:`~shiftsim.optim.tam._smooth` and :func:`~shiftsim.optim.tam._scaled`, bit for bit
    where torch's CPU kernels fuse multiply-adds (tested). ``(K,)`` tensors of one
    float32/float64 dtype; a hyperparameter is a float or a tensor of one value or one per
    member (``beta``: a float takes torch's ``add(alpha=)``, a tensor a product and a sum, as
    the torch code does). The results are views of vectors the calling thread keeps (valid
    until its next call for as many members). None where it does not apply (the native code
    off or unavailable, other shapes, dtypes or devices); the caller then uses torch."""
    dtype, K = shat.dtype, shat.numel()
    lib = _math_library(dtype)
    if lib is None or not all(_vector(t, K, dtype) for t in (mg, gg, sqnorm, shat, scale)):
        return None
    hps = [_hyper(h, K, dtype) for h in (lerp_weight, eps, beta, neg_lr)]  # owners held
    if any(h is None for h in hps):
        return None
    (lw, lw_s, _), (ep, ep_s, _), (be, be_s, _), (lr, lr_s, _) = hps  # type: ignore[misc]
    d, w, step = _outputs("tam", 3, K, dtype)
    fn = _fn(lib, "tam_coefs", dtype)
    fn(K, mg.data_ptr(), gg.data_ptr(), sqnorm.data_ptr(), shat.data_ptr(), scale.data_ptr(),
       lw, lw_s, ep, ep_s, be, be_s, int(not isinstance(beta, Tensor)), lr, lr_s,
       int(positive), d.data_ptr(), w.data_ptr(), step.data_ptr())
    return d, w, step


def momo_coefs(loss: Tensor, loss_avg: Tensor, beta: object, weight: object, xg: Tensor,
               xd: Tensor, dd: Tensor, gamma: Tensor, fstar: Tensor, c: object, c_one: bool,
               cap: object) -> tuple[Tensor, Tensor] | None:
    r"""The per-member arithmetic of MoMo's fleet row step past the first
    (:func:`~shiftsim.optim.momo._momo_rows`) in one native call: from the losses and the sums
    ``dd`` :math:`= \lVert d\rVert^2`, ``xg`` :math:`= \langle x, g\rangle`, ``xd``
    :math:`= \langle x, d\rangle`, updates ``loss_avg`` and ``gamma`` in place (weights
    ``beta`` and ``weight`` :math:`= 1 - \beta`) and returns ``(tau, -tau)``, the step size
    capped at ``cap`` (the learning rate), with ``c`` :math:`= 1 + \eta\lambda` (``c_one``: it
    is exactly 1 and its products are skipped, as :func:`~shiftsim.optim.momo._step_sizes`
    does). The numbers of torch's operations there, bit for bit (tested); the conditions and
    the kept results as in :func:`tam_coefs`."""
    dtype, K = loss_avg.dtype, loss_avg.numel()
    lib = _math_library(dtype)
    if lib is None or not all(_vector(t, K, dtype) for t in (loss, loss_avg, xg, xd, dd, gamma,
                                                             fstar)):
        return None
    hps = [_hyper(h, K, dtype) for h in (beta, weight, c, cap)]  # owners held
    if any(h is None for h in hps):
        return None
    (be, be_s, _), (wt, wt_s, _), (cc, cc_s, _), (cp, cp_s, _) = hps  # type: ignore[misc]
    tau, neg = _outputs("momo", 2, K, dtype)
    fn = _fn(lib, "momo_coefs", dtype)
    fn(K, loss.data_ptr(), loss_avg.data_ptr(), be, be_s, wt, wt_s, xg.data_ptr(),
       xd.data_ptr(), dd.data_ptr(), gamma.data_ptr(), fstar.data_ptr(), cc, cc_s, int(c_one),
       cp, cp_s, tau.data_ptr(), neg.data_ptr())
    return tau, neg


def momo_adam_coefs(loss: Tensor, loss_avg: Tensor, gam: Tensor, xg: Tensor, xd: Tensor,
                    dq: Tensor, fstar: Tensor, beta1: object, weight1: object, rho: object,
                    rho_one: bool, c: object, c_one: bool, cap: object
                    ) -> tuple[Tensor, Tensor] | None:
    r"""MoMo-Adam's numbers between its fleet row passes without :math:`f^*` estimation
    (:func:`~shiftsim.optim.momo._momo_adam_rows`) in two native calls around torch's
    ``gam.sum(0)``: from the losses ``(K,)``, the per-segment sums ``xg`` :math:`= \langle x_s,
    g_s\rangle` ``(S, K)``, ``xd`` :math:`= \langle x, d\rangle` and the norm ``dq``
    :math:`= \langle d, q\rangle`, updates ``gam`` ``(S, K)`` and ``loss_avg`` in place (weights
    ``beta1`` and ``weight1`` :math:`= 1 - \beta_1`) and returns ``(tau, -tau)``: the step size
    of the gap :math:`\bar f - \rho f^*` (``rho`` :math:`= 1 - \beta_1^t`; ``rho_one``: it is
    exactly 1, its product skipped), with ``c`` :math:`= 1 + \eta\lambda` (``c_one`` as in
    :func:`momo_coefs`), capped at ``cap`` :math:`= \eta/\rho`. The numbers of torch's
    operations in :func:`~shiftsim.optim.momo._momo_adam_taus`, bit for bit (tested); torch sums
    gamma over the segments because the order of its sum is its own. The results are kept
    vectors, overwritten by the next call (as :func:`tam_coefs`'). None, changing nothing,
    where it does not apply (the native code off; other dtypes, devices or shapes; a
    hyperparameter of another dtype)."""
    dtype, K = loss_avg.dtype, loss_avg.numel()
    lib = _math_library(dtype)
    if lib is None or not all(_vector(t, K, dtype) for t in (loss, loss_avg, xd, dq, fstar)):
        return None
    if not all(isinstance(t, Tensor) and t.dtype is dtype and t.is_cpu and t.is_contiguous()
               and t.dim() == 2 and t.shape[1] == K for t in (gam, xg)) \
            or gam.shape != xg.shape:
        return None
    hyper = _hyper_args((beta1, weight1, rho, c, cap), K, dtype)  # owners held
    if hyper is None:
        return None
    args = hyper[0]
    _fn(lib, "momo_adam_averages", dtype)(gam.shape[0], K, loss.data_ptr(), loss_avg.data_ptr(),
                                          gam.data_ptr(), xg.data_ptr(), *args[:4])
    gamma = gam.sum(0)
    tau, neg = _outputs("momo_adam", 2, K, dtype)
    _fn(lib, "momo_adam_coefs", dtype)(K, loss_avg.data_ptr(), fstar.data_ptr(), xd.data_ptr(),
                                       dq.data_ptr(), gamma.data_ptr(), int(rho_one), int(c_one),
                                       tau.data_ptr(), neg.data_ptr(), *args[4:])
    return tau, neg


def am_betas(sums: Tensor, *, with_p: bool, first: bool, lr: object, wd: object, cwl: object,
             beta_max: object, pi: Tensor | None = None) -> tuple[Tensor, Tensor] | None:
    r"""AM-AdamW's betas over a fleet's rows (:func:`~shiftsim.optim.adamem._amadamw_rows`) in
    one native call, from the first pass's sums ``(S, R, K)`` (:func:`amadamw_rows`; ``R`` 5
    ``with_p``, else 3): :func:`~shiftsim.optim.adamem._am_beta_parts` with the previous lr the
    current one and ``lr`` a tensor, ``cwl`` :math:`= 1 + \eta\,\mathrm{wd}` (the weight
    decay's factor; read only ``with_p``), ``first``: the first step (every beta
    ``beta_max``). Returns ``(beta, 1 - beta)``, each ``(S, K)``; multiplies ``pi``
    (``(S, K)``, when given) by beta in place.
    torch's operations there bit for bit (tested). None, changing nothing, where it does not
    apply (the native code off; other dtypes, devices or shapes; a hyperparameter of another
    dtype)."""
    dtype = sums.dtype
    lib = _math_library(dtype)
    if lib is None or not isinstance(lr, Tensor) or sums.dim() != 3 or not sums.is_cpu \
            or not sums.is_contiguous() or sums.shape[1] != (5 if with_p else 3):
        return None
    S, _, K = sums.shape
    if pi is not None and not (isinstance(pi, Tensor) and pi.dtype is dtype and pi.is_cpu
                               and pi.is_contiguous() and pi.shape == (S, K)):
        return None
    hyper = _hyper_args((lr, wd, cwl, beta_max), K, dtype)  # owners held
    if hyper is None:
        return None
    beta, keep = torch.empty(2, S, K, dtype=dtype).unbind(0)
    _fn(lib, "am_betas", dtype)(S, K, sums.data_ptr(), int(with_p), int(first), beta.data_ptr(),
                                keep.data_ptr(), None if pi is None else pi.data_ptr(),
                                *hyper[0])
    return beta, keep


def tam_update(P: Sequence[Tensor], G: Sequence[Tensor], M: Sequence[Tensor], w: Tensor,
               step: Tensor, shrink: object = None) -> bool:
    r"""TAM's row update in one pass (:func:`~shiftsim.optim.tam._tam_rows`): for the members'
    rows given as segments (lists of ``(K, n_s)`` tensors, split alike, as :func:`row_sums`
    takes them), ``M <- lerp(M, G, w)``, then ``P <- P * shrink`` (when given: a float or one
    factor per member) and ``P <- P + M * step``, with ``w`` and ``step`` ``(K,)``. torch's
    ``_foreach_lerp_``, ``_foreach_mul_`` and ``_foreach_addcmul_`` bit for bit where torch's
    kernels fuse their multiply-adds (tested; see :func:`tam_coefs`), in one pass over the
    rows instead of three. Returns False, changing nothing, where it does not
    apply (the native code off or unavailable; other shapes, dtypes or devices); the caller
    then uses torch."""
    if not P:
        return False
    dtype = P[0].dtype
    lib = _math_library(dtype)
    K = w.numel()
    if lib is None or not (_vector(w, K, dtype) and _vector(step, K, dtype)):
        return False
    layout = _layout((P, G, M))
    if layout is None or layout.K != K:  # (its dtype is P's)
        return False
    factor = (0, 0, None) if shrink is None else _hyper(shrink, K, dtype)  # owner held
    if factor is None:
        return False
    fn = _fn(lib, "tam_update", dtype)
    S, size = len(layout.lens), w.element_size()
    each = layout.each()
    c_ld = [lds for _, lds in each]

    def rows(lo: int, hi: int) -> None:
        p, g, m = (layout.rows_from(lo, size, j, 1)[0] if lo else each[j][0] for j in range(3))
        fn(S, layout.c_lens, p, c_ld[0], g, c_ld[1], m, c_ld[2], hi - lo,
           w.data_ptr() + lo * size, step.data_ptr() + lo * size,
           (factor[0] + lo * factor[1] * size) or None, factor[1])

    _by_rows(K, K * layout.n * 3, rows)
    return True


def _step_layout(lists: Sequence[Sequence[Tensor]], K: int | None = None) -> _Layout | None:
    """The layout of a whole row step's tensors, or None where the step does not apply (see
    :func:`_measure`; ``K`` rows when given; at most :data:`MAX_SEGMENTS` segments)."""
    layout = _layout(lists)
    if layout is None or (K is not None and layout.K != K) \
            or len(layout.lens) > MAX_SEGMENTS:
        return None
    return layout


_NO_DECAY = object()


def _hyper_args(values: Sequence[object], K: int, dtype: torch.dtype,
                shrink: object = _NO_DECAY) -> tuple[list[Any], list[Tensor]] | None:
    """Hyperparameters for a whole row step's last arguments: each as its :func:`_hyper`
    pointer and stride, then (when given) the decay factor ``shrink``, None passed as a null
    pointer; with the arrays the pointers point into, which the caller holds until its call is
    done. None when one cannot be read."""
    got = [_hyper(h, K, dtype) for h in values]
    if shrink is not _NO_DECAY:
        got.append((None, 0, None) if shrink is None else _hyper(shrink, K, dtype))
    if any(h is None for h in got):
        return None
    return [v for h in got for v in h[:2]], [h[2] for h in got]  # type: ignore[index]


#: the elements (rows x row length x tensors) from which a whole row step splits its rows
#: across torch's OpenMP team (at least two rows; where the library has OpenMP, :func:`openmp`).
#: (the tensor steps' threshold, :data:`PARALLEL_FROM`, measured there). Measured above it
#: (the row steps of TAM, MoMo, Grams and AM-SGD, 2 threads against one, 2,000 calls, one
#: process, 2-core Intel Xeon): 72k elements 6-10 % faster split, 115k 13-18 %, 627k (8
#: members of an MLP 64-128-128-10) 1.8-2.1x; below it not measured split
ROWS_PARALLEL_FROM = 1 << 16


def _rows_parallel_from(elements: int) -> int:
    """Set the library's threshold for splitting a whole row step's rows (tests split small
    steps with 1); returns the previous one. Builds the library on the first call."""
    lib = _library()
    if lib is None:
        return ROWS_PARALLEL_FROM
    cell = ctypes.c_int64.in_dll(lib, "shiftsim_rows_parallel_from")
    before, cell.value = cell.value, elements
    return before


def _rows_call(fn: Any, layout: _Layout, args: tuple[Any, ...], what: str, count: int,
               sums: bool = True) -> None:
    """Call a whole row step (``fn``: ``rowmath.c``'s ``shiftsim_<name>_step``) on the rows of
    ``layout`` (``count`` tensors), split across threads: by the C side on torch's OpenMP
    team where the library has it (:func:`openmp`; from :data:`ROWS_PARALLEL_FROM`
    elements), else as :func:`_by_rows` splits them. Its arguments: the segments, their
    lengths, (with ``sums``: the row's length), pointers and strides, the rows ``lo..hi``
    (with ``sums``: and ``K``), then ``args``."""
    K = layout.K

    def rows(lo: int, hi: int) -> None:
        head = (len(layout.lens), layout.c_lens, layout.n, layout.c_ptrs, layout.c_lds, lo, hi,
                K) if sums else (len(layout.lens), layout.c_lens, layout.c_ptrs, layout.c_lds,
                                 lo, hi)
        rc = fn(*head, *args)
        if rc != 0:  # pragma: no cover - the callers' checks keep the C side's preconditions
            raise RuntimeError(f"native {what} step failed (code {rc})")

    if openmp():  # the C side splits the rows across torch's OpenMP team (rowmath.c FOR_ROWS)
        rows(0, K)
    else:
        _by_rows(K, K * layout.n * count, rows)


def tam_step(P: Sequence[Tensor], G: Sequence[Tensor], M: Sequence[Tensor], sqnorm: Tensor,
             shat: Tensor, scale: Tensor, lerp_weight: object, eps: object, beta: object,
             neg_lr: object, positive: bool, shrink: object = None
             ) -> tuple[Tensor, Tensor, Tensor] | None:
    r"""TAM's whole row step in one call: for each member in turn, its sums
    :math:`\langle m, g\rangle` and :math:`\lVert g\rVert^2` (:func:`row_sums`), its numbers
    (:func:`tam_coefs`) and its update (:func:`tam_update`), so that the update finds the row
    in cache where the sums' pass left it. The same C functions on the same numbers: the same
    bits as those three calls (tested), which it replaces in
    :func:`~shiftsim.optim.tam._tam_rows`. Arguments as theirs; returns ``(d, w, step)`` as
    :func:`tam_coefs` does (kept vectors), or None, changing nothing, where one of the three
    would not apply or a row has more than :data:`MAX_SEGMENTS` segments."""
    dtype, K = shat.dtype, shat.numel()
    lib = _math_library(dtype)
    if lib is None or not P or P[0].dtype is not dtype \
            or not all(_vector(t, K, dtype) for t in (sqnorm, shat, scale)):
        return None
    layout = _step_layout((P, G, M), K)
    hyper = _hyper_args((lerp_weight, eps, beta, neg_lr), K, dtype, shrink)  # owners held
    if layout is None or hyper is None:
        return None
    (sums, _), (d, w, step) = _outputs("tam_sums", 2, K, dtype), _outputs("tam", 3, K, dtype)
    fn = _fn(lib, "tam_step", dtype)
    args = (sums.data_ptr(), sqnorm.data_ptr(), shat.data_ptr(), scale.data_ptr(),
            int(not isinstance(beta, Tensor)), int(positive), d.data_ptr(), w.data_ptr(),
            step.data_ptr(), *hyper[0])
    _rows_call(fn, layout, args, "TAM", 3)
    return d, w, step


def momo_step(D: Sequence[Tensor], P: Sequence[Tensor], G: Sequence[Tensor], loss: Tensor,
              loss_avg: Tensor, beta: object, weight: object, gamma: Tensor, fstar: Tensor,
              c: object, c_one: bool, cap: object, shrink: object = None
              ) -> tuple[Tensor, Tensor] | None:
    r"""MoMo's whole row step past the first (:func:`~shiftsim.optim.momo._momo_rows`) in one
    call: for each member in turn, its first moment ``D`` moved toward ``G`` and its sums
    :math:`\lVert d\rVert^2`, :math:`\langle x, g\rangle`, :math:`\langle x, d\rangle`
    (``row_sums(..., lerp=)``), its numbers (:func:`momo_coefs`) and its update
    :math:`x \leftarrow x - \tau d`, then :math:`x \leftarrow x \cdot` ``shrink`` (when
    given: :math:`1/(1 + \eta\lambda)`, a float or one per member), torch's
    ``_foreach_addcmul_`` and ``_foreach_mul_`` bit for bit where torch's kernels fuse the
    multiply-add (see :func:`tam_coefs`), in one pass. The same bits as the sums, the
    coefficients and torch's update in turn (tested). Returns ``(tau, -tau)`` as
    :func:`momo_coefs` does, or None, changing nothing, where those would not apply or a row
    has more than :data:`MAX_SEGMENTS` segments."""
    dtype, K = loss_avg.dtype, loss_avg.numel()
    lib = _math_library(dtype)
    if lib is None or not P or P[0].dtype is not dtype \
            or not all(_vector(t, K, dtype) for t in (loss, loss_avg, gamma, fstar)):
        return None
    layout = _step_layout((D, P, G), K)
    hyper = _hyper_args((beta, weight, c, cap), K, dtype, shrink)  # owners held
    if layout is None or hyper is None:
        return None
    (sums, _, _), (tau, neg) = _outputs("momo_sums", 3, K, dtype), _outputs("momo", 2, K, dtype)
    fn = _fn(lib, "momo_step", dtype)
    args = (sums.data_ptr(), loss.data_ptr(), loss_avg.data_ptr(), gamma.data_ptr(),
            fstar.data_ptr(), int(c_one), tau.data_ptr(), neg.data_ptr(), *hyper[0])
    _rows_call(fn, layout, args, "MoMo", 3)
    return tau, neg


def adatam_step(P: Sequence[Tensor], G: Sequence[Tensor], M: Sequence[Tensor],
                V: Sequence[Tensor], shat: Tensor, lerp_weight: object, torque_eps: object,
                beta1: object, beta2: object, weight2: object, eps: object, size: Tensor,
                shrink: object = None) -> Tensor | None:
    r"""AdaTAM(W)'s whole row step with a model-wide cosine
    (:func:`~shiftsim.optim.tam._adatam_rows`) in one call: for each member in turn, its sums
    :math:`\langle m, g\rangle`, :math:`\lVert m\rVert^2`, :math:`\lVert g\rVert^2`
    (:func:`row_sums`), the smoothed cosine ``shat`` (updated in place; ``lerp_weight``
    :math:`= 1 - \gamma`) and damping :math:`d`, :math:`c = d +` ``torque_eps``, then one pass
    over its row: :math:`m \leftarrow \beta_1 m + c\,g`, :math:`v \leftarrow \beta_2 v +
    g\,(w_2 g)` (``weight2`` :math:`= 1 - \beta_2`), :math:`p \leftarrow p \cdot`
    ``shrink`` (decoupled decay, when given), :math:`p \leftarrow p + m / ((\sqrt v +
    \epsilon) / s)` with ``size`` :math:`s` (a tensor: the step, ``-lr`` with its bias
    correction) and ``eps`` (bias-corrected as the caller's). torch's operations of
    :func:`~shiftsim.optim.tam._adatam_update` with tensor hyperparameters, bit for bit where
    torch's kernels fuse the multiply-adds (see :func:`tam_coefs`; the square root correctly
    rounded, as the eager kernels' numpy one), in one pass instead of nine or ten (with decay;
    tested). Returns the damping (a kept vector, as :func:`tam_coefs`'s), or None, changing
    nothing, where it does not apply (as :func:`tam_step`; ``size`` not a tensor)."""
    dtype, K = shat.dtype, shat.numel()
    lib = _math_library(dtype)
    if lib is None or not P or P[0].dtype is not dtype or not _vector(shat, K, dtype) \
            or not isinstance(size, Tensor):
        return None
    layout = _step_layout((P, G, M, V), K)
    hyper = _hyper_args((lerp_weight, torque_eps, beta1, beta2, weight2, eps, size), K, dtype,
                        shrink)  # owners held
    if layout is None or hyper is None:
        return None
    (sums, _, _), (d,) = _outputs("adatam_sums", 3, K, dtype), _outputs("adatam", 1, K, dtype)
    fn = _fn(lib, "adatam_step", dtype)
    args = (sums.data_ptr(), shat.data_ptr(), d.data_ptr(), *hyper[0])
    _rows_call(fn, layout, args, "AdaTAM", 4)
    return d


def amsgd_step(P: Sequence[Tensor], G: Sequence[Tensor], D: Sequence[Tensor], ratio: object,
               lam: object, lam1: object, one_minus_lam: object, beta_max: object,
               neg_lr: object) -> Tensor | None:
    r"""AM-SGD's whole row step past the first (:func:`~shiftsim.optim.adamem._amsgd_rows`) in
    one call: for each member in turn, its sums :math:`\langle d, g\rangle`,
    :math:`\lVert g\rVert^2`, :math:`\lVert d\rVert^2` (:func:`row_sums`), its
    :math:`\beta` (torch's operations of :func:`~shiftsim.optim.adamem._am_weight` with
    ``ratio`` :math:`= \eta_{t-1}/\eta_t`, ``lam`` :math:`\lambda`, ``lam1``
    :math:`= 1 + \lambda`, ``one_minus_lam`` and ``beta_max``, in order: no fused
    multiply-adds there), then one pass: :math:`d \leftarrow \operatorname{lerp}(d, g,
    (1 - \beta)/(1 + \lambda))`, :math:`p \leftarrow p + d \cdot` ``neg_lr`` (torch's
    ``_foreach_lerp_`` and ``_foreach_addcmul_``, bit for bit where its kernels fuse the
    multiply-adds: see :func:`tam_coefs`; tested). Returns :math:`\beta` (a kept vector, as
    :func:`tam_coefs`'s), or None, changing nothing, where it does not apply (as
    :func:`tam_step`)."""
    dtype = P[0].dtype if P else None
    lib = _math_library(dtype) if dtype is not None else None
    if lib is None:
        return None
    layout = _step_layout((P, G, D))
    if layout is None:
        return None
    K = layout.K
    # 32 machine epsilons: the tolerance of torch's where(den > tol, ...) in _am_weight
    hyper = _hyper_args((ratio, lam, lam1, one_minus_lam, beta_max,
                         32 * torch.finfo(dtype).eps, neg_lr), K, dtype)  # owners held
    if hyper is None:
        return None
    (sums, _, _), (beta,) = _outputs("amsgd_sums", 3, K, dtype), _outputs("amsgd", 1, K, dtype)
    fn = _fn(lib, "amsgd_step", dtype)
    args = (sums.data_ptr(), beta.data_ptr(), *hyper[0])
    _rows_call(fn, layout, args, "AM-SGD", 3)
    return beta


def _rows_setup(lists: Sequence[Sequence[Tensor]]) -> tuple[ctypes.CDLL, _Layout] | None:
    """The library and the layout of a row step's tensors (the first list's dtype), or None
    where it does not apply (no tensors, no library for the dtype, a layout
    :func:`_step_layout` refuses)."""
    if not lists[0]:
        return None
    lib = _math_library(lists[0][0].dtype)
    layout = _step_layout(lists) if lib is not None else None
    return None if layout is None else (lib, layout)


def grams_step(P: Sequence[Tensor], G: Sequence[Tensor], M: Sequence[Tensor],
               V: Sequence[Tensor], weight1: object, beta2: object, weight2: object, eps: object,
               size: Tensor, shrink: object = None) -> bool:
    r"""Grams's step of the members' rows in one pass (:func:`~shiftsim.optim.grams.grams` with
    tensor hyperparameters, ``learner_dims=1``): :math:`m \leftarrow \operatorname{lerp}(m,
    g, w_1)`, :math:`v \leftarrow \beta_2 v + g\,(w_2 g)`, :math:`u = m / (\sqrt v +
    \epsilon)`, :math:`p \leftarrow p \cdot` ``shrink`` (when given), :math:`p \leftarrow p +
    \lvert u\rvert\,(\operatorname{sign}(g)\,s)` with ``size`` :math:`s` a tensor (the step
    with its bias correction) and ``eps`` as the caller's. torch's eleven operations (twelve
    with decay) bit for bit where its kernels fuse the multiply-adds (see :func:`tam_coefs`;
    the square root correctly rounded, as the eager kernels' numpy one), in one pass (tested).
    Returns False, changing nothing, where it does not apply (as :func:`tam_update`; more than
    :data:`MAX_SEGMENTS` segments; ``size`` not a tensor: torch's formula for a float
    differs)."""
    got = _rows_setup((P, G, M, V)) if isinstance(size, Tensor) else None
    if got is None:
        return False
    lib, layout = got
    dtype = P[0].dtype
    hyper = _hyper_args((weight1, beta2, weight2, eps, size), layout.K, dtype,
                        shrink)  # owners held
    if hyper is None:
        return False
    fn = _fn(lib, "grams_step", dtype)
    _rows_call(fn, layout, tuple(hyper[0]), "Grams", 4, sums=False)
    return True



def momo_adam_rows(P: Sequence[Tensor], G: Sequence[Tensor], D: Sequence[Tensor],
                   V: Sequence[Tensor], w1: object, beta2: object, w2: object, bc2: object,
                   eps: object, pre: object, post: object,
                   numbers: Callable[[Tensor, Tensor, Tensor], Tensor]) -> bool:
    r"""MoMo-Adam's step over a fleet's rows (:func:`~shiftsim.optim.momo._momo_adam_rows`), two
    passes member by member (``tensorsteps.c``), split across torch's OpenMP team as the whole
    row steps are. The first: :math:`d \leftarrow` ``lerp(d, g, w1)``, :math:`v \leftarrow
    \beta_2 v + g\,(w_2 g)` (torch's ``lerp_``, ``mul_`` and ``addcmul_``: one fused
    multiply-add), the direction :math:`q = d / (\sqrt{v / b_2} + \epsilon)` (``bc2``
    :math:`= b_2`; a true division, the correctly rounded square root), and the sums
    :math:`\langle p, g\rangle` per segment (the rows' parameter tensors), :math:`\langle p,
    d\rangle` and :math:`\langle d, q\rangle` per row (each segment's sum as ADAM_MOMENTS
    makes it, float64 across segments: the same bits for any member count, place or thread
    count; not torch's). ``numbers(xg (S, K), xd (K,), dq (K,))`` gives :math:`-\tau` per
    member; the second pass: :math:`p \leftarrow p\cdot` ``pre`` (decoupled decay; None:
    none), :math:`p \leftarrow p - \tau q` (torch's ``addcmul_``), :math:`p \leftarrow
    p\cdot` ``post`` (proximal decay; None: none). The elementwise work is torch's operations
    of :func:`~shiftsim.optim.momo.momo_adam` one expression each (its bits where torch's
    kernels fuse the same multiply-adds: tested). False, changing nothing, where it does not
    apply (as :func:`tam_step`)."""
    got = _rows_setup((P, G, D, V))
    if got is None:
        return False
    lib, layout = got  # both passes take it (the second skips G)
    dtype = P[0].dtype
    K, S = layout.K, len(layout.lens)
    hyper = _hyper_args((w1, beta2, w2, bc2, eps), K, dtype)  # owners held
    decay = [(None, 0, None) if h is None else _hyper(h, K, dtype) for h in (pre, post)]
    if hyper is None or any(h is None for h in decay):
        return False
    xg, sums = torch.empty(S, K, dtype=dtype), torch.empty(2, K, dtype=dtype)
    _fn(lib, "momo_adam_rows", dtype)(S, layout.c_lens, layout.c_ptrs, layout.c_lds, 0, K, K,
                                       *hyper[0], xg.data_ptr(), sums[0].data_ptr(),
                                       sums[1].data_ptr())
    neg = numbers(xg, sums[0], sums[1]).to(dtype).contiguous()
    if neg.numel() != K:  # pragma: no cover - the caller's numbers are one per member
        raise RuntimeError(f"MoMo-Adam's step sizes: {neg.numel()} values for {K} members")
    _fn(lib, "momo_adam_rows_update", dtype)(  # hyper[0][6:]: bc2's and eps's arrays
        S, layout.c_lens, layout.c_ptrs, layout.c_lds, 0, K, *hyper[0][6:], neg.data_ptr(),
        *[v for h in decay for v in h[:2]])  # type: ignore[index]
    return True


def amadamw_rows(P: Sequence[Tensor], G: Sequence[Tensor], D: Sequence[Tensor],
                 V: Sequence[Tensor], c1: Tensor, c2: Tensor, beta2: object, w2: object,
                 lam: object, use_lam: bool, with_p: bool, shrink: object, nlr: object,
                 betas: Callable[[Tensor], tuple[Tensor, Tensor | None]]) -> bool:
    r"""AM-AdamW's step over a fleet's rows (:func:`~shiftsim.optim.adamem._amadamw_rows`): two
    passes member by member (``tensorsteps.c``), split across torch's OpenMP team as the whole
    row steps are. Each row is S segments, one per parameter tensor; ``c1``, ``c2``: ``(S, K)``,
    the preconditioner's coefficients per tensor and member. The first pass: :math:`v \leftarrow
    \beta_2 v + g\,(w_2 g)`, :math:`P = \sqrt v\,c_1 + c_2`, :math:`W = P + \lambda P^2`
    (``use_lam``) and the eager kernel's sums per tensor and member (``(S, 5, K)`` with the
    parameters' two where ``with_p``, else ``(S, 3, K)``; native: float64 per segment, rounded
    once; not torch's). ``betas(sums)`` gives :math:`\beta` ``(S, K)`` and :math:`1 - \beta`
    (None: computed here); the second pass: :math:`d \leftarrow` ``lerp(d, g, (1 - beta) P /
    W)`` (``(1 - beta)`` without ``use_lam``), :math:`p \leftarrow p\cdot` ``shrink`` (None:
    none), :math:`p \leftarrow p + d / (P / \text{nlr})` (``nlr`` :math:`= -\eta`, a tensor:
    torch's ``div_`` and ``addcdiv_``). The elementwise work is the eager kernel's torch
    operations with tensor hyperparameters, one expression each (tested bit for bit). False,
    changing nothing, where it does not apply (as :func:`tam_step`; ``nlr`` not a tensor: the
    eager kernel's formula for a float differs)."""
    got = _rows_setup((P, G, D, V)) if isinstance(nlr, Tensor) else None
    if got is None:
        return False
    lib, layout = got
    dtype = P[0].dtype
    K, S = layout.K, len(layout.lens)
    if not all(isinstance(c, Tensor) and c.dtype is dtype and c.is_cpu and c.shape == (S, K)
               for c in (c1, c2)):
        return False
    c1, c2 = c1.contiguous(), c2.contiguous()
    first = _hyper_args((beta2, w2, lam), K, dtype)  # owners held
    tail = _hyper_args((nlr,), K, dtype, shrink)
    if first is None or tail is None:
        return False
    R = 5 if with_p else 3
    sums = torch.empty(S, R, K, dtype=dtype)
    _fn(lib, "amadamw_rows", dtype)(S, layout.c_lens, layout.c_ptrs, layout.c_lds, 0, K, K,
                                     c1.data_ptr(), c2.data_ptr(), *first[0], int(use_lam),
                                     int(with_p), sums.data_ptr())
    beta, keep = betas(sums)
    keep = (1 - beta if keep is None else keep).to(dtype).contiguous()
    if keep.shape != (S, K):  # pragma: no cover - the caller's betas are one per tensor/member
        raise RuntimeError(f"AM-AdamW's betas: shape {tuple(keep.shape)} for {(S, K)}")
    shrink_ptr, nlr_ptr = tail[0][2:], tail[0][:2]  # first[0][4:] below: lam's array
    _fn(lib, "amadamw_rows_update", dtype)(S, layout.c_lens, layout.c_ptrs, layout.c_lds, 0,
                                            K, K, c1.data_ptr(), c2.data_ptr(), *first[0][4:],
                                            int(use_lam), keep.data_ptr(), *shrink_ptr,
                                            *nlr_ptr)
    return True


# ------------------------------------------------------ whole steps over one learner's tensors

#: the chunk length (elements) of the tensor steps (``tensorsteps.c``): a tensor's sums add
#: its chunks' sums in order, so their bits depend on it (not on the thread count)
CHUNK = 1 << 15
#: the elements from which a tensor step is split across torch's threads, two chunks (below it
#: one thread). Measured (MoMo's step on one tensor, 2 threads, medians of 5 x 200 calls):
#: 2^14 elements 21.9 us split against 20.2 on one thread (one chunk: nothing to split, the
#: team's start is the cost), 2^16 25.4 against 30.4, 2^17 32.2 against 50.8
PARALLEL_FROM = 1 << 16


def denormals(flush: bool | None = None) -> bool | None:
    """Flush subnormal floats to zero (``flush=True``; as results and as inputs) or keep IEEE
    subnormals (False) on the calling thread and every thread of the OpenMP team, which is
    torch's intra-op team where the library shares torch's runtime (:func:`openmp`); None
    changes nothing. Returns the calling thread's state before, or None where this cannot be
    done: no library, or a processor other than x86-64 and ARM64. Builds the library on the
    first call. See :func:`shiftsim.runtime.denormals`, which runs use."""
    lib = _library()
    if lib is None:
        return None
    before = lib.shiftsim_denormals(-1 if flush is None else int(flush))
    return None if before < 0 else bool(before)


def flushing_threads() -> int | None:
    """How many threads of the OpenMP team (the calling thread among them; all of torch's
    intra-op threads where the library shares torch's runtime) flush subnormals to zero now
    (:func:`denormals`); None where that cannot be read (no library, another processor)."""
    lib = _library()
    if lib is None:
        return None
    count = lib.shiftsim_denormals(-2)
    return None if count < 0 else count


def openmp() -> bool:
    """Whether the library splits the tensor steps across torch's threads (built with torch's
    OpenMP runtime; see ``_openmp_flags``). Builds it on the first call."""
    lib = _library()
    if lib is None:
        return False
    got = getattr(lib, "_shiftsim_openmp", None)
    if got is None:
        got = lib._shiftsim_openmp = bool(lib.shiftsim_openmp())
    return got


class _Chunks:
    """The chunks of a list of tensors of these element counts: chunk ``c`` is elements
    ``lo[c] .. hi[c] - 1`` of tensor ``tix[c]`` (C arrays, made once per counts)."""

    __slots__ = ("count", "tix", "lo", "hi", "total")

    def __init__(self, numels: tuple[int, ...]) -> None:
        tix, lo, hi = [], [], []
        for t, n in enumerate(numels):
            for start in range(0, n, CHUNK):
                tix.append(t)
                lo.append(start)
                hi.append(min(n, start + CHUNK))
        self.count, self.total = len(tix), sum(numels)
        self.tix, self.lo, self.hi = ((ctypes.c_int64 * len(v))(*v) for v in (tix, lo, hi))


_chunk_sets: dict[tuple[int, ...], _Chunks] = {}


def _tensor_lists(lists: Sequence[Sequence[Tensor]], dtype: torch.dtype
                  ) -> tuple[tuple[int, ...], list[ctypes.Array]] | None:
    """The element counts of ``lists`` (lists of one length, tensor ``i`` of each of one size)
    and a C array of each list's data pointers, or None unless every tensor is a contiguous
    CPU tensor of ``dtype`` with at least one element."""
    first = lists[0]
    numels = tuple(t.numel() for t in first)
    if not numels or min(numels) == 0:
        return None
    arrays = []
    for ts in lists:
        if len(ts) != len(numels):
            return None
        for t, n in zip(ts, numels):
            if not isinstance(t, Tensor) or t.dtype is not dtype or not t.is_cpu \
                    or t.numel() != n or not t.is_contiguous():
                return None
        arrays.append((ctypes.c_void_p * len(ts))(*[t.data_ptr() for t in ts]))
    return numels, arrays


def _chunks(numels: tuple[int, ...]) -> _Chunks:
    """The :class:`_Chunks` of tensors of these sizes (kept)."""
    chunks = _chunk_sets.get(numels)
    if chunks is None:
        if len(_chunk_sets) >= 64:
            _chunk_sets.clear()
        chunks = _chunk_sets[numels] = _Chunks(numels)
    return chunks


def _threads(chunks: _Chunks) -> int:
    """torch's thread count from :data:`PARALLEL_FROM` elements on, else 1."""
    return torch.get_num_threads() if chunks.total >= PARALLEL_FROM else 1


def _scratch(chunks: _Chunks, width: int, n: int) -> tuple[Tensor, Tensor]:
    """A tensor step's float64 scratch: ``width`` sums per chunk, and ``width`` per tensor for
    their totals (new each call: two threads may step at once)."""
    return (torch.empty(width * chunks.count, dtype=torch.float64),
            torch.empty(width * n, dtype=torch.float64))


def _floats(*values: object) -> bool:
    """Whether every value is a Python number (not a bool, not a tensor)."""
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _optional(value: object, absent: float) -> tuple[int, float]:
    """An optional float (checked by :func:`_floats`) as the C side takes it: ``(1, value)``,
    or ``(0, absent)`` for None.

    >>> _optional(None, 1.0), _optional(0.5, 1.0)
    ((0, 1.0), (1, 0.5))
    """
    return (0, absent) if value is None else (1, float(value))  # type: ignore[arg-type]


def _tensor_call(lists: Sequence[Sequence[Tensor]], dtype: torch.dtype
                 ) -> tuple[ctypes.CDLL, list[ctypes.Array], _Chunks] | None:
    """What a tensor step needs for ``lists`` in ``dtype``: the library, each list's C array of
    pointers and the chunks; None where it does not apply (see :func:`_tensor_lists`)."""
    lib = _math_library(dtype)
    found = None if lib is None or not lists[0] else _tensor_lists(lists, dtype)
    if found is None:
        return None
    numels, arrays = found
    return lib, arrays, _chunks(numels)  # type: ignore[return-value]


def momo_tensors_step(P: Sequence[Tensor], G: Sequence[Tensor], D: Sequence[Tensor],
                      kept: Tensor, loss_avg: Tensor, f: Tensor, fstar: Tensor, *, beta: float,
                      rho: float, cap: float) -> Tensor | None:
    r"""MoMo's step over one learner's tensors without weight decay, the offsets carried (the
    step of :func:`~shiftsim.optim._compiled.momo_step`, which :class:`~shiftsim.optim.MoMo`
    takes with ``compile=True``) in two passes over them, split across torch's threads where
    the library has OpenMP (:func:`openmp`): the first moments ``D`` moved toward the gradients
    ``G`` (torch's lerp) and their squares summed per tensor, then ``P`` updated by
    :math:`-\tau D` (torch's add with alpha). ``kept``: the offsets :math:`v_i = \langle x_i,
    d_i\rangle - \gamma_i`, ``(n,)``; ``loss_avg``, ``f`` (the loss), ``fstar``: one element
    each; updated in place with ``D`` and ``P``. Returns :math:`\tau` (0-d), or None, changing
    nothing, where it does not apply (native code off or unavailable, not all contiguous CPU
    tensors of one float32/float64 dtype, a hyperparameter that is not a number).

    Equal to the eager and the Inductor kernels up to float rounding: the first moments are
    torch's bits, the sums are ``tensorsteps.c``'s (the same bits whatever the thread count;
    tested).
    """
    dtype = loss_avg.dtype
    if len(kept) != len(P) or not all(_vector(t, 1, dtype) for t in (loss_avg, f, fstar)) \
            or not _vector(kept, len(P), dtype) or not _floats(beta, rho, cap):
        return None
    call = _tensor_call((P, G, D), dtype)
    if call is None:
        return None
    lib, (ps, gs, ds), chunks = call
    threads = _threads(chunks)
    part, totals = _scratch(chunks, 1, len(P))
    sq, tau = torch.empty(len(P), dtype=dtype), torch.empty((), dtype=dtype)
    _fn(lib, "momo_tensors", dtype)(
        threads, len(P), ps, gs, ds, chunks.count, chunks.tix, chunks.lo, chunks.hi,
        part.data_ptr(), totals.data_ptr(), sq.data_ptr(), kept.data_ptr(), loss_avg.data_ptr(),
        f.data_ptr(), fstar.data_ptr(), float(beta), 1.0 - float(beta), float(rho), float(cap),
        tau.data_ptr())
    return tau


def three_sums_tensors(M: Sequence[Tensor], G: Sequence[Tensor],
                       P: Sequence[Tensor] | None = None, wd: float = 0.0) -> Tensor | None:
    r"""The first pass of TAM's and AM-SGD's compiled step on a CPU: :math:`\langle m,
    g\rangle`, :math:`\lVert m\rVert^2`, :math:`\lVert g\rVert^2` over all the tensors, as one
    ``(3,)`` tensor of their dtype, with :math:`g + \lambda p` for :math:`g` where ``P`` is
    given (coupled weight decay ``wd``; torch's add with alpha), in one pass split across
    torch's threads (see :func:`momo_tensors_step` for the sums' order: the same bits at any
    thread count). None where it does not apply (as :func:`momo_tensors_step`); reads only.

    >>> out = three_sums_tensors([torch.ones(3)], [torch.full((3,), 2.0)])
    >>> out is None or out.tolist() == [6.0, 3.0, 12.0]
    True
    """
    call = None if not M or not _floats(wd) else \
        _tensor_call((M, G) if P is None else (M, G, P), M[0].dtype)
    if call is None:
        return None
    lib, arrays, chunks = call
    dtype = M[0].dtype
    part = torch.empty(3 * chunks.count, dtype=torch.float64)
    out = torch.empty(3, dtype=dtype)
    fn = _fn(lib, "three_sums_tensors", dtype)
    fn(_threads(chunks), arrays[0], arrays[1], arrays[2] if P is not None else None, float(wd),
       chunks.count, chunks.tix, chunks.lo, chunks.hi, part.data_ptr(), out.data_ptr())
    return out


def lerp_update_tensors(P: Sequence[Tensor], G: Sequence[Tensor], M: Sequence[Tensor],
                        weight: float, step: float, *, coupled_wd: float | None = None,
                        shrink: float | None = None) -> bool:
    r"""The second pass of TAM's and AM-SGD's compiled step on a CPU, element by element:
    :math:`g' = g + \lambda p` (``coupled_wd``; else :math:`g' = g`), :math:`m \leftarrow`
    ``lerp(m, g', weight)``, :math:`p \leftarrow p\cdot` ``shrink`` (decoupled weight decay,
    when given), :math:`p \leftarrow p +` ``step`` :math:`m`, torch's lerp and add with alpha
    (fused multiply-adds, as torch's CPU kernels), split across torch's threads. False where it
    does not apply (as :func:`momo_tensors_step`), changing nothing."""
    floats = _floats(weight, step, 0.0 if coupled_wd is None else coupled_wd,
                     1.0 if shrink is None else shrink)
    call = _tensor_call((P, G, M), P[0].dtype) if P and floats else None
    if call is None:
        return False
    lib, (ps, gs, ms), chunks = call
    dtype = P[0].dtype
    fn = _fn(lib, "lerp_update_tensors", dtype)
    fn(_threads(chunks), ps, gs, ms, chunks.count, chunks.tix, chunks.lo, chunks.hi,
       float(weight), float(step), *_optional(coupled_wd, 0.0), *_optional(shrink, 1.0))
    return True


def _whole_step_call(lists: Sequence[Sequence[Tensor]], h: Tensor, numbers: int,
                     width: int, state: Sequence[Tensor], *floats: object
                     ) -> tuple[ctypes.CDLL, list[ctypes.Array], _Chunks, Tensor, Tensor] | None:
    """What a whole tensor step (:func:`tam_tensors_step` ...) needs: the library, the pointer
    arrays, the chunks, its float64 scratch (3 sums a chunk) and its output vector (``width``
    numbers of the tensors' dtype); None unless ``h`` (at least ``numbers`` numbers), the
    ``state`` (one number each) and the tensors are contiguous CPU tensors of one float dtype
    and ``floats`` are numbers."""
    dtype = lists[0][0].dtype if lists[0] else None
    if dtype is None or not _floats(*floats) or not isinstance(h, Tensor) \
            or not _vector(h, h.numel(), dtype) or h.numel() < numbers \
            or not all(_vector(t, 1, dtype) for t in state):
        return None
    call = _tensor_call(lists, dtype)
    if call is None:
        return None
    lib, arrays, chunks = call
    return (lib, arrays, chunks, torch.empty(3 * chunks.count, dtype=torch.float64),
            torch.empty(width, dtype=dtype))


def tam_tensors_step(P: Sequence[Tensor], G: Sequence[Tensor], M: Sequence[Tensor], h: Tensor,
                     shat: Tensor, scale: Tensor, sq: Tensor, *, positive: bool,
                     coupled_wd: float | None = None, shrink: float | None = None
                     ) -> Tensor | None:
    r"""TAM's compiled step on a CPU in one call: :func:`three_sums_tensors`, the numbers of
    :func:`~shiftsim.optim._compiled.tam_step` between its passes (``rowmath.c``: torch's
    operations there, bit for bit where torch's lerp makes the same fused multiply-add, as on
    this project's x86-64 build: tested), then :func:`lerp_update_tensors`, without returning
    to Python in between. ``h``: :func:`~shiftsim.optim._compiled.tam_step`'s ``(lr, momentum,
    1 - gamma, eps, ...)`` as a tensor of the tensors' dtype; ``shat``, ``scale``
    (:math:`\sigma`) and ``sq`` (:math:`\lVert\tilde m\rVert^2`): one-element state tensors,
    updated in place; ``positive``: ``eps > 0``. Returns the damping (a new 0-d tensor), or
    None, changing nothing, where it does not apply (as :func:`momo_tensors_step`).

    >>> p, g, m = [torch.ones(2)], [torch.ones(2)], [torch.zeros(2)]
    >>> h = torch.tensor([0.5, 0.9, 0.1, 0.0])
    >>> shat, scale, sq = torch.zeros(()), torch.zeros(()), torch.zeros(())
    >>> d = tam_tensors_step(p, g, m, h, shat, scale, sq, positive=False)
    >>> d is None or (d.item(), m[0].tolist(), p[0].tolist()) == (0.5, [1.0] * 2, [0.75] * 2)
    True
    """
    call = None if not P else _whole_step_call(
        (P, G, M), h, 4, 6, (shat, scale, sq), 0.0 if coupled_wd is None else coupled_wd,
        1.0 if shrink is None else shrink)
    if call is None:
        return None
    lib, (ps, gs, ms), chunks, part, out = call
    _fn(lib, "tam_tensors_step", P[0].dtype)(
        _threads(chunks), ps, gs, ms, chunks.count, chunks.tix, chunks.lo, chunks.hi,
        part.data_ptr(), *_optional(coupled_wd, 0.0), *_optional(shrink, 1.0), h.data_ptr(),
        int(bool(positive)), shat.data_ptr(), scale.data_ptr(), sq.data_ptr(), out.data_ptr())
    return out[3]


def amsgd_tensors_step(P: Sequence[Tensor], G: Sequence[Tensor], D: Sequence[Tensor],
                       h: Tensor, sq: Tensor, *, step: float, coupled_wd: float | None = None
                       ) -> Tensor | None:
    r"""AM-SGD's compiled step on a CPU in one call (as :func:`tam_tensors_step`): the sums,
    the numbers of :func:`~shiftsim.optim._compiled.amsgd_step` (``h``: its ``(lr,
    weight_decay, lam, beta_max, lr_ratio, tol)``), then :func:`lerp_update_tensors` with
    ``step`` (:math:`-\eta`). ``sq`` (:math:`\lVert d\rVert^2`) is updated in place.
    Returns :math:`\beta_t` (a new 0-d tensor), or None, changing nothing, where it does not
    apply."""
    call = None if not P else _whole_step_call(
        (P, G, D), h, 6, 5, (sq,), step, 0.0 if coupled_wd is None else coupled_wd)
    if call is None:
        return None
    lib, (ps, gs, ds), chunks, part, out = call
    _fn(lib, "amsgd_tensors_step", P[0].dtype)(
        _threads(chunks), ps, gs, ds, chunks.count, chunks.tix, chunks.lo, chunks.hi,
        part.data_ptr(), *_optional(coupled_wd, 0.0), float(step), h.data_ptr(),
        sq.data_ptr(), out.data_ptr())
    return out[3]


def adatam_tensors_step(P: Sequence[Tensor], G: Sequence[Tensor], M: Sequence[Tensor],
                        V: Sequence[Tensor], h: Tensor, shat: Tensor, *, beta1: float,
                        beta2: float, eps: float, size: float, coupled_wd: float | None = None,
                        shrink: float | None = None) -> Tensor | None:
    r"""AdaTAM(W)'s compiled step on a CPU in one call (as :func:`tam_tensors_step`): the
    sums, the numbers of :func:`~shiftsim.optim._compiled.adatam_step` (``h``: its ``(size,
    beta1, beta2, 1 - gamma, torque_eps, ...)``), then :func:`adatam_update_tensors` with the
    floats given. ``shat`` is updated in place. Returns the damping (a new 0-d tensor), or
    None, changing nothing, where it does not apply."""
    call = None if not P else _whole_step_call(
        (P, G, M, V), h, 5, 5, (shat,), beta1, beta2, eps, size,
        0.0 if coupled_wd is None else coupled_wd, 1.0 if shrink is None else shrink)
    if call is None:
        return None
    lib, (ps, gs, ms, vs), chunks, part, out = call
    _fn(lib, "adatam_tensors_step", P[0].dtype)(
        _threads(chunks), ps, gs, ms, vs, chunks.count, chunks.tix, chunks.lo, chunks.hi,
        part.data_ptr(), *_optional(coupled_wd, 0.0), *_optional(shrink, 1.0), h.data_ptr(),
        float(beta1), float(beta2), 1.0 - float(beta2), float(eps), float(size),
        shat.data_ptr(), out.data_ptr())
    return out[3]


def adatam_update_tensors(P: Sequence[Tensor], G: Sequence[Tensor], M: Sequence[Tensor],
                          V: Sequence[Tensor], *, c: float, beta1: float, beta2: float,
                          eps: float, size: float, coupled_wd: float | None = None,
                          shrink: float | None = None) -> bool:
    r"""The second pass of AdaTAM(W)'s compiled step on a CPU (the first is
    :func:`three_sums_tensors`), element by element as its eager kernel with float
    hyperparameters: :math:`g' = g + \lambda p` (``coupled_wd``; else :math:`g' = g`),
    :math:`m \leftarrow \beta_1 m + c\,g'` (``c``: the damping plus the torque epsilon;
    torch's ``mul_`` and ``addcmul_``), :math:`v \leftarrow \beta_2 v + (1-\beta_2) g'^2`
    (``mul_``, ``addcmul_``), :math:`p \leftarrow p\cdot` ``shrink`` (decoupled weight decay,
    when given), :math:`p \leftarrow p +` ``size`` :math:`m / (\sqrt v + \epsilon)` (the
    correctly rounded square root, then torch's ``addcdiv_``), split across torch's threads:
    torch's bits (tested). False, changing nothing, where it does not apply (as
    :func:`momo_tensors_step`).

    >>> p, g, m = [torch.ones(2)], [torch.full((2,), 2.0)], [torch.ones(2)]
    >>> v = [torch.full((2,), 0.5)]
    >>> done = adatam_update_tensors(p, g, m, v, c=0.5, beta1=0.5, beta2=0.5, eps=0.0,
    ...                              size=-0.25)
    >>> not done or (m[0].tolist(), v[0].tolist(), p[0].tolist()) == ([1.5] * 2, [2.25] * 2,
    ...                                                                [0.75] * 2)
    True
    """
    floats = _floats(c, beta1, beta2, eps, size, 0.0 if coupled_wd is None else coupled_wd,
                     1.0 if shrink is None else shrink)
    call = _tensor_call((P, G, M, V), P[0].dtype) if P and floats else None
    if call is None:
        return False
    lib, (ps, gs, ms, vs), chunks = call
    fn = _fn(lib, "adatam_update_tensors", P[0].dtype)
    fn(_threads(chunks), ps, gs, ms, vs, chunks.count, chunks.tix, chunks.lo, chunks.hi,
       float(c), float(beta1), float(beta2), 1.0 - float(beta2), float(eps), float(size),
       *_optional(coupled_wd, 0.0), *_optional(shrink, 1.0))
    return True


def momo_adam_moments(P: Sequence[Tensor], G: Sequence[Tensor], D: Sequence[Tensor],
                      V: Sequence[Tensor], *, beta1: float, beta2: float, bc2: float,
                      eps: float) -> tuple[Tensor, Tensor, Tensor] | None:
    r"""The first pass of MoMo-Adam's compiled step on a CPU, element by element as its eager
    kernel (torch's bits for the moments): :math:`d \leftarrow` ``lerp(d, g, 1 - beta1)``,
    :math:`v \leftarrow \beta_2 v + (1 - \beta_2) g^2` (torch's ``mul_`` and ``addcmul_``),
    and with :math:`q = d / (\sqrt{v / b_2} + \epsilon)` (``bc2`` :math:`= b_2`, the second
    moment's bias correction; the correctly rounded square root) the sums
    :math:`\langle p, g\rangle` per tensor, :math:`\langle p, d\rangle` and
    :math:`\langle d, q\rangle` over all of them, in one pass split across torch's threads:
    ``(xg (n,), xd (), dq ())`` in the tensors' dtype. None, changing nothing, where it does not
    apply (as :func:`momo_tensors_step`)."""
    if not P or not _floats(beta1, beta2, bc2, eps):
        return None
    dtype = P[0].dtype
    call = _tensor_call((P, G, D, V), dtype)
    if call is None:
        return None
    lib, (ps, gs, ds, vs), chunks = call
    part, totals = _scratch(chunks, 3, len(P))
    xg, out = torch.empty(len(P), dtype=dtype), torch.empty(2, dtype=dtype)
    _fn(lib, "momo_adam_moments", dtype)(
        _threads(chunks), len(P), ps, gs, ds, vs, chunks.count, chunks.tix, chunks.lo,
        chunks.hi, part.data_ptr(), totals.data_ptr(), 1.0 - float(beta1), float(beta2),
        1.0 - float(beta2), float(bc2), float(eps), xg.data_ptr(), out.data_ptr())
    return xg, out[0], out[1]


def momo_adam_update(P: Sequence[Tensor], D: Sequence[Tensor], V: Sequence[Tensor], *,
                     bc2: float, eps: float, tau: float, shrink: float | None = None,
                     inverse: float | None = None) -> bool:
    r"""The second pass of MoMo-Adam's compiled step on a CPU, element by element as its eager
    kernel: :math:`p \leftarrow p\cdot` ``shrink`` (decoupled weight decay, when given),
    :math:`p \leftarrow p - \tau q` (torch's ``addcmul_``; :math:`q` as in
    :func:`momo_adam_moments`), :math:`p \leftarrow p\cdot` ``inverse`` (proximal weight
    decay, :math:`1/(1 + \eta\lambda)`, when given), split across torch's threads. False,
    changing nothing, where it does not apply."""
    if not P or not _floats(bc2, eps, tau, 1.0 if shrink is None else shrink,
                            1.0 if inverse is None else inverse):
        return False
    dtype = P[0].dtype
    call = _tensor_call((P, D, V), dtype)
    if call is None:
        return False
    lib, (ps, ds, vs), chunks = call
    fn = _fn(lib, "momo_adam_update", dtype)
    fn(_threads(chunks), ps, ds, vs, chunks.count, chunks.tix, chunks.lo, chunks.hi,
       float(bc2), float(eps), -float(tau), *_optional(shrink, 1.0), *_optional(inverse, 1.0))
    return True


def momo_adam_tensors_step(P: Sequence[Tensor], G: Sequence[Tensor], D: Sequence[Tensor],
                           V: Sequence[Tensor], h: Tensor, f: Tensor, loss_avg: Tensor,
                           fstar: Tensor, gam: Tensor, *, decay: bool, beta1: float,
                           beta2: float, bc2: float, eps: float, shrink: float | None = None,
                           inverse: float | None = None) -> Tensor | None:
    r"""MoMo-Adam's compiled step on a CPU in two native calls around torch's ``gam.sum()``:
    :func:`momo_adam_moments`'s pass and the averages, the step size, then
    :func:`momo_adam_update`'s pass, with the numbers of
    :func:`~shiftsim.optim._compiled._momo_adam_numbers` (``h``: its ``(beta1, beta2, 1 -
    beta2^s, eps, rho, lr / rho, 1 + lr wd, ...)``; ``decay``: weight decay in the step size)
    computed in C with torch's bits (``rowmath.c``). ``gam`` (the per-tensor :math:`\gamma_i`,
    ``(n,)``) and ``loss_avg`` are updated in place; ``f``: the loss. Returns :math:`\tau` (a
    new 0-d tensor), or None, changing nothing, where it does not apply (as
    :func:`momo_tensors_step`)."""
    call = None if not P else _whole_step_call(
        (P, G, D, V), h, 7, 1, (f, loss_avg, fstar), beta1, beta2, bc2, eps,
        1.0 if shrink is None else shrink, 1.0 if inverse is None else inverse)
    dtype = P[0].dtype if P else None
    if call is None or not _vector(gam, len(P), dtype):
        return None
    lib, (ps, gs, ds, vs), chunks, part, tau = call
    totals = torch.empty(3 * len(P), dtype=torch.float64)
    xg, sums = torch.empty(len(P), dtype=dtype), torch.empty(2, dtype=dtype)
    _fn(lib, "momo_adam_tensors_first", dtype)(
        _threads(chunks), len(P), ps, gs, ds, vs, chunks.count, chunks.tix, chunks.lo,
        chunks.hi, part.data_ptr(), totals.data_ptr(), 1.0 - float(beta1), float(beta2),
        1.0 - float(beta2), float(bc2), float(eps), xg.data_ptr(), sums.data_ptr(),
        h.data_ptr(), f.data_ptr(), loss_avg.data_ptr(), gam.data_ptr())
    gamma = gam.sum()  # torch's order, as _momo_adam_numbers
    _fn(lib, "momo_adam_tensors_second", dtype)(
        _threads(chunks), ps, ds, vs, chunks.count, chunks.tix, chunks.lo, chunks.hi,
        float(bc2), float(eps), *_optional(shrink, 1.0), *_optional(inverse, 1.0), h.data_ptr(),
        int(bool(decay)), loss_avg.data_ptr(), fstar.data_ptr(), sums.data_ptr(),
        gamma.data_ptr(), tau.data_ptr())
    return tau[0]


def amadamw_sums(P: Sequence[Tensor] | None, G: Sequence[Tensor], D: Sequence[Tensor],
                 V: Sequence[Tensor], c1: Tensor, c2: Tensor, *, beta2: float, lam: float
                 ) -> Tensor | None:
    r"""The first pass of AM-AdamW's compiled step on a CPU, element by element as its eager
    kernel: :math:`v \leftarrow \beta_2 v + (1 - \beta_2) g^2` (torch's ``mul_`` and
    ``addcmul_``: its bits), the preconditioner :math:`P = \sqrt v\,c_1 + c_2` and metric
    :math:`W = P + \lambda P^2` (``c1``, ``c2``: one per tensor, ``(n,)``), and per tensor the
    eager kernel's sums :math:`\langle d/P, g\rangle`, :math:`\langle d/P, d\rangle`,
    :math:`\langle (d-g)/W, d-g\rangle`, and where ``P`` is given :math:`\langle p, g\rangle`,
    :math:`\langle p, d\rangle`: ``(n, 5)`` (``(n, 3)`` without ``P``) in the tensors' dtype,
    in one pass split across torch's threads. None, changing nothing, where it does not
    apply."""
    if not G or not _floats(beta2, lam):
        return None
    dtype, n = G[0].dtype, len(G)
    if not (_vector(c1, n, dtype) and _vector(c2, n, dtype)):
        return None
    call = _tensor_call((G, D, V) if P is None else (G, D, V, P), dtype)
    if call is None:
        return None
    lib, arrays, chunks = call
    R = 3 if P is None else 5
    part, totals = _scratch(chunks, 5, n)
    sums = torch.empty(n, R, dtype=dtype)
    _fn(lib, "amadamw_sums", dtype)(
        _threads(chunks), n, None if P is None else arrays[3], arrays[0], arrays[1], arrays[2],
        chunks.count, chunks.tix, chunks.lo, chunks.hi, part.data_ptr(), totals.data_ptr(),
        c1.data_ptr(), c2.data_ptr(), float(beta2), float(lam), int(lam != 0), sums.data_ptr())
    return sums


def amadamw_tensors_step(P: Sequence[Tensor], G: Sequence[Tensor], D: Sequence[Tensor],
                         V: Sequence[Tensor], pi: Tensor, *, decay: bool, lr: float,
                         prev: float, wd: float, beta1: float, beta2: float, lam: float,
                         eps: float, scale: float, shrink: float | None = None
                         ) -> Tensor | None:
    r"""AM-AdamW's compiled step on a CPU in one call: the passes' coefficients :math:`c_1 =
    (1 - \beta_1\Pi)\,s`, :math:`c_2 = (1 - \beta_1\Pi)\,\epsilon` from ``pi`` (:math:`\Pi`,
    the per-tensor products of past betas, ``(n,)``; ``scale`` :math:`s = 1/\sqrt{1 -
    \beta_2^t}`) as :func:`~shiftsim.optim.adamem._am_shared_scales` computes them, then
    :func:`amadamw_sums` (with the parameters' sums where ``decay``), each tensor's
    :math:`\beta` as :func:`~shiftsim.optim.adamem._am_beta_parts` computes it with float
    hyperparameters (``lr``, ``prev``: the previous lr, ``wd``, ``beta1``: its cap), then
    :func:`amadamw_update`, without returning to Python in between (the numbers in C, with
    torch's bits). ``pi`` is multiplied by the betas in place. Returns the betas (``(n,)``, a
    new tensor), or None, changing nothing, where it does not apply."""
    if not P:
        return None
    dtype, n = P[0].dtype, len(P)
    hp = (prev, wd, 1 + wd * lr, lr, beta1)
    if not _floats(*hp, beta2, lam, eps, scale, 1.0 if shrink is None else shrink) \
            or not _vector(pi, n, dtype):
        return None
    call = _tensor_call((P, G, D, V), dtype)
    if call is None:
        return None
    lib, (ps, gs, ds, vs), chunks = call
    part, totals = _scratch(chunks, 5, n)
    out = torch.empty(9, n, dtype=dtype)  # rows: betas, keep, c1, c2, then the sums (5 n)
    row, width = out.data_ptr(), n * out.element_size()
    _fn(lib, "amadamw_tensors_step", dtype)(
        _threads(chunks), n, ps, gs, ds, vs, chunks.count, chunks.tix, chunks.lo, chunks.hi,
        part.data_ptr(), totals.data_ptr(), row + 2 * width, row + 3 * width, float(scale),
        float(eps), float(beta2), float(lam), int(lam != 0), int(bool(decay)), *map(float, hp),
        int(lr != 0), row + 4 * width, row, row + width, pi.data_ptr(), *_optional(shrink, 1.0),
        -float(lr))
    return out[0]


def am_tensor_scales(pi: Tensor, beta1: float, scale: float, eps: float
                     ) -> tuple[Tensor, Tensor] | None:
    r"""AM-AdamW's coefficients as :func:`amadamw_tensors_step` computes them in C: :math:`c_1 =
    (1 - \beta_1\Pi)\,s`, :math:`c_2 = (1 - \beta_1\Pi)\,\epsilon` for the products of past
    betas ``pi`` (``(n,)``), torch's bits for
    :func:`~shiftsim.optim.adamem._am_shared_scales`; None where the native code does not
    apply. (The whole step computes them itself; this is how the tests check them.)

    >>> got = am_tensor_scales(torch.tensor([1.0, 0.5]), 0.5, 2.0, 0.25)
    >>> got is None or [t.tolist() for t in got] == [[1.0, 1.5], [0.125, 0.1875]]
    True
    """
    lib = _math_library(pi.dtype) if isinstance(pi, Tensor) else None
    if lib is None or not _vector(pi, pi.numel(), pi.dtype) or not _floats(beta1, scale, eps):
        return None
    c1, c2 = torch.empty_like(pi), torch.empty_like(pi)
    _fn(lib, "am_tensor_scales", pi.dtype)(pi.numel(), pi.data_ptr(), float(beta1),
                                            float(scale), float(eps), c1.data_ptr(),
                                            c2.data_ptr())
    return c1, c2


def amadamw_update(P: Sequence[Tensor], G: Sequence[Tensor], D: Sequence[Tensor],
                   V: Sequence[Tensor], c1: Tensor, c2: Tensor, keep: Tensor, *, lam: float,
                   lr: float, shrink: float | None = None) -> bool:
    r"""The second pass of AM-AdamW's compiled step on a CPU, element by element as its eager
    kernel: :math:`P` and :math:`W` again (:func:`amadamw_sums`), :math:`d \leftarrow`
    ``lerp(d, g, a)`` with :math:`a = (1-\beta)\,P/W` (``keep`` :math:`= 1 - \beta`, one per
    tensor; :math:`a = 1 - \beta` when ``lam`` is 0), :math:`p \leftarrow p\cdot` ``shrink``
    (decoupled weight decay, when given), :math:`p \leftarrow p - \eta\, d / P` (torch's
    ``addcdiv_``), split across torch's threads. False, changing nothing, where it does not
    apply."""
    if not P or not _floats(lam, lr, 1.0 if shrink is None else shrink):
        return False
    dtype, n = P[0].dtype, len(P)
    if not all(_vector(t, n, dtype) for t in (c1, c2, keep)):
        return False
    call = _tensor_call((P, G, D, V), dtype)
    if call is None:
        return False
    lib, (ps, gs, ds, vs), chunks = call
    fn = _fn(lib, "amadamw_update", dtype)
    fn(_threads(chunks), ps, gs, ds, vs, chunks.count, chunks.tix, chunks.lo, chunks.hi,
       c1.data_ptr(), c2.data_ptr(), float(lam), int(lam != 0), keep.data_ptr(),
       *_optional(shrink, 1.0), -float(lr))
    return True
