"""The learners' relative costs for the real-time stream, measured side by side.

A real-time stream (``Scenario(realtime=True)``, after Ghunaim et al., CVPR 2023) does not wait
for a slow learner: a learner of cost c trains on every c-th batch. shiftsim declares each
registered optimizer's cost as a fixed number (``OptimizerEntry.cost``, so that runs stay
reproducible); this script measures what the numbers stand for: the wall time of one full
training step (forward, cross-entropy, backward, optimizer step; batch 32, one torch thread) on
a ~5M-parameter MLP (1024-2048-1024-768-10), relative to the same step with plain SGD, every
optimizer in this process, interleaved over rounds (median of per-round ratios).

    python benchmarks/learner_cost.py [--rounds 5] [--steps 10]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _common import interleaved, median, paired_ratios

import shiftsim as ss
from shiftsim.optim.registry import REGISTRY


def make_step(name: str, sizes: list[int], steps: int):
    torch.manual_seed(0)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers[:-1])
    spec = ss.optim.spec(name)
    opt = spec.build(net.parameters())
    needs_loss = spec.needs_loss
    x = torch.randn(32, sizes[0])
    y = torch.randint(0, sizes[-1], (32,))

    def run() -> None:
        for _ in range(steps):
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step(loss=loss.detach()) if needs_loss else opt.step()

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    sizes = [1024, 2048, 1024, 768, 10]
    names = list(REGISTRY)
    times = interleaved({n: make_step(n, sizes, args.steps) for n in names}, rounds=args.rounds)
    base = times["sgd"]
    print(f"{'optimizer':<14} {'ms/step':>8} {'measured':>9} {'declared':>9}")
    for n in names:
        ms = 1000 * median(times[n]) / args.steps
        ratio = median(paired_ratios(times[n], base))
        print(f"{n:<14} {ms:8.2f} {ratio:8.2f}x {REGISTRY[n].cost:8.2f}x")


if __name__ == "__main__":
    main()
