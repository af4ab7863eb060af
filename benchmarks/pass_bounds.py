"""What bounds the C passes of MoMo-Adam's and AM-AdamW's compiled steps: compute or memory.

Times each native pass (``shiftsim.optim._native``: ``momo_adam_moments`` and
``momo_adam_update``, ``amadamw_sums`` and ``amadamw_update``) and torch's fused AdamW kernel
(``torch._fused_adamw_``, called directly: no optimizer wrapper) per element, on float32
parameters, gradients and two moments (each split into four tensors) at two sizes: small enough
that they stay in the L3 cache between calls (default 1M elements: 16 MB in all, under this
project's machine's 32 MiB L3, which it shares with its neighbours) and the size of
``optimizer_step.py``'s model (5M elements, from memory). A pass whose time per element is the
same at both sizes is bound by its arithmetic (its square roots and divisions), not by
memory traffic; one that runs faster from the cache is bound by memory. Each time is the
fastest of ``--rounds`` interleaved rounds of repeated calls; the ratio printed is in-cache
over from-memory.

    python benchmarks/pass_bounds.py [--threads 1] [--small 1000000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from shiftsim.optim import _native


def tensors(n: int, parts: int = 4) -> list[list[torch.Tensor]]:
    """Parameters, gradients, first and second moments: ``parts`` tensors each, ``n`` elements
    in all."""
    g = torch.Generator().manual_seed(0)
    made = [[torch.randn(n // parts, generator=g) for _ in range(parts)] for _ in range(4)]
    made[3] = [v.abs() for v in made[3]]
    return made


def passes(n: int) -> dict[str, Callable[[], object]]:
    """Each pass on tensors of ``n`` elements (hyperparameters typical of a run)."""
    P, G, D, V = tensors(n)
    k = len(P)
    c1, c2, keep = torch.full((k,), 1.1), torch.full((k,), 1e-8), torch.full((k,), 0.1)
    steps = [torch.tensor(5.0) for _ in range(k)]
    return {
        "momo_adam first pass": lambda: _native.momo_adam_moments(
            P, G, D, V, beta1=0.9, beta2=0.999, bc2=0.5, eps=1e-8),
        "momo_adam second pass": lambda: _native.momo_adam_update(
            P, D, V, bc2=0.5, eps=1e-8, tau=1e-3),
        "amadamw first pass": lambda: _native.amadamw_sums(
            None, G, D, V, c1, c2, beta2=0.999, lam=0.1),
        "amadamw second pass": lambda: _native.amadamw_update(
            P, G, D, V, c1, c2, keep, lam=0.1, lr=1e-3),
        "torch fused AdamW": lambda: torch._fused_adamw_(
            P, G, D, V, [], steps, lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.01,
            eps=1e-8, amsgrad=False, maximize=False),
    }


def per_element(fns: dict[str, Callable[[], object]], n: int, rounds: int) -> dict[str, float]:
    """ns an element: each function's fastest round of enough calls for ~40M elements."""
    reps = max(3, int(4e7 // n))
    best = {name: float("inf") for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            for _ in range(reps):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t) / reps)
    return {name: s / n * 1e9 for name, s in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--small", type=int, default=1_000_000, help="elements kept in cache")
    ap.add_argument("--large", type=int, default=5_000_000, help="elements from memory")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not _native.available():
        raise SystemExit("the native code is unavailable here (SHIFTSIM_NATIVE=0 or no "
                         "compiler): nothing to time")
    small = per_element(passes(args.small), args.small, args.rounds)
    large = per_element(passes(args.large), args.large, args.rounds)
    print(f"ns per element, float32, {args.threads} thread(s), fastest of {args.rounds} rounds: "
          f"{args.small:,} elements (in cache) and {args.large:,} (from memory)")
    print(f"{'pass':24s} {'in cache':>9s} {'memory':>9s} {'cache/memory':>13s}")
    for name in small:
        print(f"{name:24s} {small[name]:9.3f} {large[name]:9.3f} "
              f"{small[name] / large[name]:12.2f}x")
    for label, times in (("in cache", small), ("from memory", large)):
        fused = times["torch fused AdamW"]
        both = {k: sum(t for name, t in times.items() if name.startswith(k))
                for k in ("momo_adam", "amadamw")}
        print(f"both passes {label} against torch's fused AdamW {label}: "
              + ", ".join(f"{k} {both[k] / fused:.2f}x" for k in both))


if __name__ == "__main__":
    main()
