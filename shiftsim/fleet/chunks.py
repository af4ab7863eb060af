"""How a fleet is cut into chunks that run one after another (:func:`chunk_bounds`).

A fleet's members do not depend on one another, so :func:`~shiftsim.fleet.run_fleet` may run
them as several smaller stacked programs, each over the whole scenario, one after another,
instead of one program over all of them. On the CPU with one torch thread that was faster for
small models in most runs measured (below). The likely reason, not measured directly: a
chunk's parameters, gradients and optimizer state are small enough to stay in the caches from
one step to the next, the whole fleet's are not (the gain vanished in a test where every
layout was alive in one process, so that none kept the caches to itself).
Each member's numbers are the same either way (one thread: a member's arithmetic is its own;
``tests/test_fleet.py`` checks it bit for bit).

The default cuts a ReLU MLP's fleet into near-equal chunks of at most :data:`CHUNK_BYTES` of
parameters (members sorted by optimizer group first), when at least two members fit in that.
Measured on this project's 2-core AMD EPYC (1 MiB of L2 cache per core, 32 MiB of L3 shared
with the machine's neighbours), one thread: the same members in the default chunks and as one
program (``chunk_members=K``), 5-10 rounds alternating, each run's median ratio, runs spread
within an hour (members cycling through sgdm, tam, adam and momo, the
64-unit fleet also adamem_sgd; seeds 0..K-1; label flips on digits):

============================  =======  ==============  ====================================
MLP (parameters per member)   fleet K  default chunks  time a step against one program
============================  =======  ==============  ====================================
64-128-128-10 (104 KB)        32       4 of 8          0.75x, 0.76x, 0.90x, 0.91x
64-64-10 (19 KB)              120      3 of 40         0.87x, 0.93x, 0.99x
64-256-256-10 (340 KB)        32       11 of 2-3       0.76x, 0.83x, 1.00x
============================  =======  ==============  ====================================

The chunks' own time varied less than the one program's (the 256-unit fleet: 10.2-10.5 against
10.4-13.7 ms a step over those three runs): how much the one program loses depends on how much
of the shared L3 cache the neighbours leave it. Bigger members did not gain, so they run as
one program: 64-512-512-10 (1.2 MB) in chunks of 4, 2 and 1 member 1.02x, 1.08x and 0.98x;
64-1024-1024-10 (4.4 MB) in chunks of 2 and 1 member 1.31x and 1.28x (one run each).
With two threads chunks did not pay (the 256-unit fleet in chunks of 6: 1.14x; the 64-unit in
chunks of 40: 1.22x; the 128-unit in chunks of 16: 0.90x, of 8: 1.01x; wall time), and there a
member's last bits may depend on its program's size (measured: a member alone in a chunk of
one differed from the same member in a larger program; chunks of two or more matched in that
test), so the default chunks only with one thread,
only a ReLU MLP (the programs measured), and only on the CPU.

>>> chunk_bounds(32, member_bytes=104_000, threads=1)
[(0, 8), (8, 16), (16, 24), (24, 32)]
>>> chunk_bounds(32, member_bytes=104_000, threads=2)  # more threads: one program
[(0, 32)]
>>> chunk_bounds(10, member_bytes=4_400_000, threads=1)  # fewer than 2 fit: one program
[(0, 10)]
>>> chunk_bounds(10, member_bytes=104_000, threads=2, chunk_members=4)  # asked for: always
[(0, 3), (3, 7), (7, 10)]
"""

from __future__ import annotations

import math

from ..errors import check_range

__all__ = ["CHUNK_BYTES", "chunk_bounds"]

#: the default chunk holds at most this many bytes of parameters (one torch thread, CPU)
CHUNK_BYTES = 1 << 20


def chunk_bounds(members: int, member_bytes: int, threads: int,
                 chunk_members: int | None = None) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: near-equal consecutive chunks covering ``members``.

    ``chunk_members`` given: at most that many members a chunk (``members`` or more: one
    chunk). Otherwise the default above: with one thread, at most :data:`CHUNK_BYTES` of
    parameters a chunk (``member_bytes`` each), when that holds two members or more; one chunk
    otherwise.
    """
    members = check_range(members, "members", 1, integer=True)
    if chunk_members is None:
        fit = CHUNK_BYTES // max(1, member_bytes)
        size = fit if threads == 1 and fit >= 2 else members
    else:
        size = check_range(chunk_members, "chunk_members", 1, integer=True)
    n = math.ceil(members / size)
    bounds = [round(i * members / n) for i in range(n + 1)]
    return list(zip(bounds, bounds[1:]))
