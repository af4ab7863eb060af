"""Engine overhead: shiftsim's run() vs a minimal hand-written predict-train loop.

Same data (digits, on the device), same model (MLP 64-256-256-10), same optimizer (SGD with
momentum, torch), same batch size (32). The hand loop shuffles per pass, gathers a batch,
predicts, counts correct predictions on the device, and trains — the least a prequential loop
can do. shiftsim's run() does that plus label tables, per-step trace buffers, held-out
evaluations (disabled here: eval_every=0, so only at the end) and its bookkeeping. Two rows for
shiftsim: ``run(vectorized=False)``, the per-step loop (a module, autograd, torch's SGD: the
overhead of the engine itself), and ``run()`` as users call it, whose default for a ReLU MLP is
the fleet's stacked program with one member (backward pass written out, no autograd graph).
Rounds are interleaved; ratios are medians of per-round ratios. Goal: <= 1.15.

    python benchmarks/engine_overhead.py [--steps 1500] [--rounds 7] [--device cpu]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _common import interleaved, median, paired_ratios

import shiftsim as ss


def hand_loop(data: ss.data.Dataset, steps: int, batch: int, seed: int, device: str) -> float:
    x_all, y_all = data.x_train.to(device), data.y_train.to(device)
    model = ss.models.mlp(hidden=(256, 256)).build(data, seed=seed).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    per_pass = len(data) // batch
    correct = torch.zeros((), dtype=torch.int64, device=device)
    perm = torch.empty(0)
    for t in range(steps):
        s = t % per_pass
        if s == 0:
            perm = torch.randperm(len(data), generator=g).to(device)
        idx = perm[s * batch:(s + 1) * batch]
        x, y = x_all[idx], y_all[idx]
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        correct += (logits.argmax(1) == y).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(correct)  # one sync at the end


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    data = ss.data.digits()
    scenario = ss.Scenario(data, [ss.Phase(args.steps)], batch_size=args.batch, eval_every=0)
    model, opt = ss.models.mlp(hidden=(256, 256)), ss.optim.spec("sgdm", lr=0.05)
    times = interleaved({
        "hand loop": lambda: hand_loop(data, args.steps, args.batch, 0, args.device),
        "shiftsim run(vectorized=False)": lambda: ss.run(scenario, model, opt, seed=0,
                                                         device=args.device, vectorized=False),
        "shiftsim run()": lambda: ss.run(scenario, model, opt, seed=0, device=args.device),
    }, rounds=args.rounds)
    hand, eager, sim = (times[k] for k in ("hand loop", "shiftsim run(vectorized=False)",
                                            "shiftsim run()"))
    print(f"engine overhead — digits, MLP 64-256-256-10, SGDM, batch {args.batch}, "
          f"{args.steps} steps, {args.rounds} interleaved rounds, device {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    for name, ts in (("hand loop", hand), ("shiftsim run(vectorized=False)", eager),
                     ("shiftsim run()", sim)):
        print(f"  {name:31s} {1000 * median(ts) / args.steps:7.3f} ms/step")
    print(f"  ratio run(vectorized=False)/hand loop: {median(paired_ratios(eager, hand)):.3f}  "
          "(goal <= 1.15)")
    print(f"  ratio run()/hand loop:                 {median(paired_ratios(sim, hand)):.3f}")


if __name__ == "__main__":
    main()
