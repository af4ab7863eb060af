"""The C allocator's settings for tensor-sized temporaries: :func:`keep_freed_memory`.

On Linux with glibc, ``malloc`` serves a large block (above a threshold that starts at
128 KiB) with a fresh ``mmap`` and hands it back with ``munmap`` when it is freed, and gives the
free memory at the top of its heap back to the system as soon as it exceeds 128 KiB. A torch
operation that makes a temporary tensor of a few MB therefore gets fresh pages on every
step, and the kernel zeroes each page on its first touch: for the compiled AM-AdamW step over
a 5M-parameter model that cost more than the step itself (measured below). glibc raises the
threshold by itself after some frees, but that depends on the order of earlier allocations,
so the same step can take twice as long in one process as in another.

:func:`keep_freed_memory` fixes both settings (``mallopt``): blocks up to 32 MiB (glibc's
largest threshold) come from the heap, and up to 256 MiB of free memory at the heap's top is
kept for the next step. Measured on this project's 2-core machine (one thread, the AM-AdamW
compiled step over the 5.0M-parameter MLP of ``benchmarks/optimizer_step.py``): 21.2 ms a step
with glibc's defaults, 10.0 ms with both settings, 23.1 ms and 28.5 ms with only one of them.
The cost: the process keeps up to 256 MiB of freed memory for reuse instead of returning it
at once (blocks above 32 MiB, and free memory at the top beyond 256 MiB, are still returned).
``import shiftsim`` applies it; set the environment variable ``SHIFTSIM_ALLOCATOR=system`` to
leave the allocator as it is (``shiftsim``, the default, applies it). Nothing happens on other
systems or C libraries (jemalloc or tcmalloc preloaded: they do not read these settings).

>>> isinstance(keep_freed_memory(), bool)  # True where it applied (Linux, glibc)
True
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings

__all__ = ["ENV", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

#: the environment variable that turns the tuning off (``system``)
ENV = "SHIFTSIM_ALLOCATOR"
#: blocks up to this size come from the heap (glibc's upper limit for the setting on 64-bit)
MMAP_THRESHOLD = 32 << 20
#: free memory at the heap's top kept for reuse
TRIM_THRESHOLD = 256 << 20

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Apply the settings above once per process; True when glibc took them, False where
    they do not apply (not Linux, no glibc, ``SHIFTSIM_ALLOCATOR=system``)."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    choice = os.environ.get(ENV, "").strip().lower()
    if choice not in ("", "shiftsim", "system"):
        warnings.warn(f"{ENV}={os.environ[ENV]!r} is not one of 'shiftsim' (the default: keep "
                      "freed memory for reuse) or 'system' (leave the allocator as it is); "
                      "using 'shiftsim'", stacklevel=3)
    if choice == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
