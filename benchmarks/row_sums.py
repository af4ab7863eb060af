"""The fleet row kernels' per-member inner products: the native row sums against torch's and
against one read of each tensor (torch.sum), measured side by side in one process.

For K members of n parameters (default: the fleet of ``fleet.py --peak``, 8 members of a
64-128-128-10 MLP per optimizer group, 26,122 parameters each, and 130 members), it times the
sums TAM's row step needs (<m, g>, |g|^2 over two tensors) and MoMo's (|d|^2, <x, g>, <x, d>
over three):

* ``native``: ``shiftsim.optim._native.row_sums``, one pass over the tensors for all pairs;
* ``torch``: ``_kernels.row_dot`` per pair (torch's product into a kept buffer, then its sum:
  what the row kernels do with ``SHIFTSIM_NATIVE=0``);
* ``one read``: ``torch.sum`` of each tensor once: the memory traffic of reading each tensor
  once (the least any way of computing the sums can make), at torch's reduction speed; not a
  hardware limit (the native sums ran faster than it out of cache).

Rounds interleaved; each round times a loop of calls. Two cases per size: the tensors in cache
(the same ones every call) and out of cache (a different set of tensors every call, cycling
through more than the last-level cache holds, as in a fleet step, where the model's step runs
between two optimizer steps).

    python benchmarks/row_sums.py [--ks 8,130] [--n 26122] [--rounds 7] [--threads 1]
"""

from __future__ import annotations

import argparse

import torch
from _common import interleaved, median, paired_ratios

from shiftsim.optim import _native
from shiftsim.optim._kernels import row_dot

TAM = ((0, 1), (1, 1))
MOMO = ((0, 0), (1, 2), (1, 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", default="8,130")
    ap.add_argument("--n", type=int, default=26_122)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not _native.available():  # nothing to compare (not a failure of `make bench`)
        print(f"row sums: the native row sums are not available here ({_native.status()}); "
              "the fleet uses torch's")
        return
    print(f"row sums — n = {args.n} per member, float32, torch threads "
          f"{torch.get_num_threads()}, {args.rounds} interleaved rounds; us per call (median), "
          "ratios per round")
    print(f"  {'case':>28}  {'native':>9}  {'torch':>9}  {'one read':>10}  "
          f"{'torch/native':>12}  {'native/read':>12}")
    for k in (int(x) for x in args.ks.split(",")):
        per_set = 3 * k * args.n * 4
        sets = 1 if per_set > 64 << 20 else max(2, (96 << 20) // per_set)
        for cached in (True, False):
            count = 1 if cached else sets
            data = [[torch.randn(k, args.n) for _ in range(3)] for _ in range(count)]
            calls = max(4, min(400, int(4e8 // (3 * k * args.n))))
            for name, pairs in (("TAM", TAM), ("MoMo", MOMO)):
                width = 1 + max(i for p in pairs for i in p)

                def loop(fn, data=data, width=width, pairs=pairs, calls=calls):
                    def run():
                        for c in range(calls):
                            fn(data[c % len(data)][:width], pairs)
                    return run

                times = interleaved({
                    "native": loop(_native.row_sums),
                    "torch": loop(lambda ts, pairs: [row_dot(ts[a], ts[b]) for a, b in pairs]),
                    "read": loop(lambda ts, pairs: [t.sum() for t in ts]),
                }, rounds=args.rounds)
                us = {key: median(v) / calls * 1e6 for key, v in times.items()}
                vs_torch = median(paired_ratios(times["torch"], times["native"]))
                vs_read = median(paired_ratios(times["native"], times["read"]))
                label = f"{name} K={k} {'in cache' if cached else 'out of cache'}"
                print(f"  {label:>28}  {us['native']:9.1f}  {us['torch']:9.1f}  "
                      f"{us['read']:10.1f}  {vs_torch:11.2f}x  {vs_read:11.2f}x")


if __name__ == "__main__":
    main()
