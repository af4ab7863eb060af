"""How a fleet is cut into chunks (:func:`chunk_bounds`) and how many run at once
(:func:`lane_count`).

A fleet's members do not depend on one another, so :func:`~shiftsim.fleet.run_fleet` may run
them as several smaller stacked programs, each over the whole scenario, one after another
(or, with two torch threads, two at a time: lanes, below), instead of one program over all of
them. On the CPU with one torch thread that was faster for
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
With two threads chunks run one after another did not pay (the 256-unit fleet in chunks of 6:
1.14x; the 64-unit in chunks of 40: 1.22x; the 128-unit in chunks of 16: 0.90x, of 8: 1.01x;
wall time), and there a member's last bits may depend on its program's size (measured: a
member alone in a chunk of one differed from the same member in a larger program; chunks of
two or more matched in that test), so with more than one thread chunks run in lanes or not at
all; the default chunks only a ReLU MLP (the programs measured), and only on the CPU.

**Lanes** (:func:`lane_count`). With two torch threads the default runs the chunks side by
side instead, two at a time, each on its own Python thread with one torch thread: a lane's
numbers are then a one-thread run's, so a member's results are the same bits as with one thread
(``tests/test_fleet.py``), and no operation is split across threads. Python's GIL lets only one
lane run Python at a time (torch's operations run without it), so lanes can only pay where a
member's arithmetic outweighs its share of the loop's Python (the likely reason small members
lost below; not measured directly): the default takes members of at least
:data:`LANE_MEMBER_BYTES` of parameters. Measured on the same machine, two threads, the
default (lanes) against the same members as one program on both threads (``chunk_members=K``),
4-8 rounds alternating with a one-thread run, each run's median ratio, two runs:

============================  =======  ===================  ===============  ============
MLP (parameters per member)   fleet K  default              against one      one thread
                                                            program (2 thr)  (default)
============================  =======  ===================  ===============  ============
64-128-128-10 (104 KB)        32       4 chunks, 2 lanes    0.60x, 0.57x     0.94x, 0.89x
64-128-128-10 (104 KB)        8        2 chunks, 2 lanes    0.62x, 0.60x     0.72x, 0.71x
64-256-256-10 (340 KB)        32       12 chunks, 2 lanes   0.64x, 0.86x     1.11x, 1.53x
64-512-512-10 (1.2 MB)        16       2 chunks, 2 lanes    0.95x, 0.96x     1.64x, 1.70x
64-1024-1024-10 (4.4 MB)      8        2 chunks, 2 lanes    0.97x, 0.96x     1.71x, 1.72x
64-128-128-10 (104 KB)        2        2 chunks, 2 lanes    1.03x (one run)  1.04x
============================  =======  ===================  ===============  ============

Small fleets of these members neither gained nor lost (later, 8 rounds, two runs): 4 of MLP
64-128-128-10 0.97x and 0.94x, 6 of them 1.04x and 1.00x, 2 of MLP 64-256-256-10 1.01x and
1.00x. Members of MLP 64-64-10 (19 KB), in lanes (``lanes=2``) against one program on both
threads (6-8 rounds, two runs each): 4 members 1.44x and 1.57x the time, 8 members 1.21x and
1.26x, 16 members 1.20x and 1.20x, 32 members 0.97x and 1.13x, 60 members 0.94x and 0.79x,
120 members 0.87x and 0.87x: they gain only in large fleets, so members below
:data:`LANE_MEMBER_BYTES` run as one program on torch's threads by default (``lanes=2``
asks). More than :data:`LANE_THREADS` threads were not measured (a machine with two cores):
there the default keeps one program, and ``run_fleet(lanes=n)`` asks for lanes.

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

__all__ = ["CHUNK_BYTES", "LANE_MEMBER_BYTES", "LANE_THREADS", "chunk_bounds", "lane_count"]

#: the default chunk holds at most this many bytes of parameters (one torch thread, CPU)
CHUNK_BYTES = 1 << 20
#: the default runs chunks in lanes only with at most this many torch threads (the machine
#: measured had 2 cores; with more lanes their Python would contend more for the GIL)
LANE_THREADS = 2
#: ... and only for members of at least this many bytes of parameters (smaller ones lost:
#: likely their arithmetic is too little next to the loop's Python, which lanes take turns at)
LANE_MEMBER_BYTES = 64 << 10


def lane_count(members: int, member_bytes: int, threads: int, lanes: int | None = None) -> int:
    """How many chunks run at once, each on its own Python thread with one torch thread.

    ``lanes`` given: that many, at most one a member. Otherwise the default above: with 2 to
    :data:`LANE_THREADS` torch threads and members of at least :data:`LANE_MEMBER_BYTES` of
    parameters, one lane a thread; else 1 (chunks one after another, on torch's threads).

    >>> lane_count(32, member_bytes=104_000, threads=2), lane_count(32, 19_000, threads=2)
    (2, 1)
    >>> lane_count(32, 104_000, threads=1), lane_count(32, 104_000, threads=8, lanes=4)
    (1, 4)
    """
    members = check_range(members, "members", 1, integer=True)
    if lanes is not None:
        return min(check_range(lanes, "lanes", 1, integer=True), members)
    if 2 <= threads <= LANE_THREADS and member_bytes >= LANE_MEMBER_BYTES:
        return min(threads, members)
    return 1


def chunk_bounds(members: int, member_bytes: int, threads: int,
                 chunk_members: int | None = None, lanes: int = 1) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: near-equal consecutive chunks covering ``members``.

    ``chunk_members`` given: at most that many members a chunk (``members`` or more: one
    chunk). Otherwise the default above: with one thread, or in ``lanes`` (more than one: each
    lane runs one torch thread), at most :data:`CHUNK_BYTES` of parameters a chunk
    (``member_bytes`` each), when that holds two members or more; one chunk otherwise; and in
    lanes at least one chunk a lane, their count a multiple of the lanes' (at most one a
    member), so that the lanes finish together.

    >>> chunk_bounds(32, member_bytes=104_000, threads=2, lanes=2)  # 4 chunks, 2 at once
    [(0, 8), (8, 16), (16, 24), (24, 32)]
    >>> chunk_bounds(120, member_bytes=19_000, threads=2, lanes=2)  # 3 chunks fit; 4 for 2 lanes
    [(0, 30), (30, 60), (60, 90), (90, 120)]
    >>> chunk_bounds(8, member_bytes=4_400_000, threads=2, lanes=2)  # none fits: one a lane
    [(0, 4), (4, 8)]
    """
    members = check_range(members, "members", 1, integer=True)
    lanes = check_range(lanes, "lanes", 1, integer=True)
    if chunk_members is None:
        fit = CHUNK_BYTES // max(1, member_bytes)
        size = fit if (threads == 1 or lanes > 1) and fit >= 2 else members
        n = math.ceil(members / size)
        if lanes > 1:
            n = min(members, math.ceil(max(n, lanes) / lanes) * lanes)
    else:
        size = check_range(chunk_members, "chunk_members", 1, integer=True)
        n = math.ceil(members / size)
    bounds = [round(i * members / n) for i in range(n + 1)]
    return list(zip(bounds, bounds[1:]))
