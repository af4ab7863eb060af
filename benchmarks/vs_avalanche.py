"""Per-step time: shiftsim vs Avalanche's Naive strategy on the same online stream.

Same stream (digits, one clean phase, shiftsim's batches exported with
``to_avalanche_online``: one mini-experience per shiftsim batch, in shiftsim's order), same
model and initial weights (an MLP 64-H-10 built by shiftsim from the run seed), same optimizer
(torch SGD), same batch size. Rows:

* ``avalanche Naive``: ``strategy.train(exp)`` for every mini-experience, as an Avalanche user
  runs an online stream (``EvaluationPlugin(loggers=[])`` and no metrics, the least Avalanche
  does per step). It only trains: it does not score the batch before training.
* ``avalanche Naive + scoring``: the same, plus a no-grad forward pass that scores each batch
  before training: the work shiftsim's engine does (prequential accuracy).
* ``plain PyTorch loop``: forward, count, loss, backward, step over the same pre-gathered
  batches; no trace, no evaluation. The floor for any eager-mode engine: it bounds the
  single-learner ratio at Avalanche / floor.
* ``shiftsim run()``: the engine as users call it (setup and trace collection included). For
  this ReLU MLP its default is the stacked program of ``shiftsim.fleet`` with one member
  (forward and backward written out as batched matmuls in one function run by TorchScript,
  no autograd graph).
* ``shiftsim run(vectorized=False)``: the engine's plain per-step loop (a module, autograd,
  ``optimizer.step()``), the one that matches Avalanche bit for bit.
* ``shiftsim run(AvalancheLearner(Naive))``: the Avalanche strategy inside shiftsim's engine.
* ``shiftsim fleet (K seeds)``: K learners in one vectorised program, per learner-step.

The script checks that the rows compute the same thing (the same correct-prediction counts
at every step and the same final weights for Avalanche and run(vectorized=False); for the
stacked program, the share of steps with the same correct count) before printing times. Rounds
are interleaved; ratios are medians of per-round ratios. Goal: Avalanche Naive / shiftsim
run() >= 8 on CPU.

    python benchmarks/vs_avalanche.py [--steps 1000] [--rounds 5] [--hidden 32] [--batch 10]
                                      [--threads 1] [--fleet 8]
"""

from __future__ import annotations

import argparse
import warnings

import torch
from _common import interleaved, median, paired_ratios

import shiftsim as ss
from shiftsim.fleet import run_fleet
from shiftsim.integrations.avalanche import AvalancheLearner, import_avalanche, to_avalanche_online
from shiftsim.learner import TorchLearner, build_model


def avalanche_naive(stream: list, scenario: ss.Scenario, model_spec: ss.models.ModelSpec,
                    opt_spec: ss.optim.OptimizerSpec, seed: int, score: bool
                    ) -> tuple[list[torch.Tensor], torch.nn.Module]:
    """Avalanche's Naive over the exported online stream; the correct counts when scoring."""
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    model = build_model(model_spec, scenario.data, seed)  # shiftsim's initial weights
    strategy = Naive(model=model, optimizer=opt_spec.build(model.parameters()),
                     criterion=torch.nn.CrossEntropyLoss(), train_mb_size=scenario.batch_size,
                     train_epochs=1, evaluator=EvaluationPlugin(loggers=[]), device="cpu")
    correct = []
    for exp, x, y in stream:
        if score:
            with torch.no_grad():
                correct.append((model(x).argmax(1) == y).sum())
        strategy.train(exp, shuffle=False)
    return correct, model


def plain_loop(stream: list, scenario: ss.Scenario, model_spec: ss.models.ModelSpec,
               opt_spec: ss.optim.OptimizerSpec, seed: int) -> torch.Tensor:
    """The least a prequential loop can do over the same (pre-gathered) batches: forward,
    count correct, cross-entropy, backward, step; no trace, no evaluation, no bookkeeping."""
    model = build_model(model_spec, scenario.data, seed)
    opt = opt_spec.build(model.parameters())
    correct = torch.zeros((), dtype=torch.int64)
    for _, x, y in stream:
        logits = model(x)
        correct += (logits.argmax(1) == y).sum()
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return correct


def online_stream(scenario: ss.Scenario, seed: int) -> list:
    """The exported mini-experiences with each one's batch tensors at hand for the scoring
    pass (gathered here, outside the timing)."""
    out = []
    for exp in to_avalanche_online(scenario, seed=seed).train_stream:
        items = [exp.dataset[i] for i in range(len(exp.dataset))]
        out.append((exp, torch.stack([it[0] for it in items]),
                    torch.tensor([int(it[1]) for it in items])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fleet", type=int, default=8, help="fleet size K (0: no fleet row)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import_avalanche()
    from avalanche.training import Naive

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message="No loggers specified")
    seed = 0
    data = ss.data.digits()
    scenario = ss.Scenario(data, [ss.Phase(args.steps)], batch_size=args.batch, eval_every=0)
    model_spec = ss.models.mlp(hidden=(args.hidden,))
    opt_spec = ss.optim.spec("sgd", lr=0.05)
    stream = online_stream(scenario, seed)

    # same computation: identical correct counts per step and identical final weights
    learner = TorchLearner(model_spec, opt_spec)
    res = ss.run(scenario, learner, seed=seed, device="cpu")
    correct, model = avalanche_naive(stream, scenario, model_spec, opt_spec, seed, score=True)
    same_correct = torch.stack(correct).tolist() == res.trace["correct"].tolist()
    same_weights = all(torch.equal(a, b) for a, b in
                       zip(model.state_dict().values(), learner.model.state_dict().values()))
    if not (same_correct and same_weights):
        raise SystemExit(f"the rows do not compute the same thing (correct counts equal: "
                         f"{same_correct}, final weights equal: {same_weights})")
    stacked = ss.run(scenario, model_spec, opt_spec, seed=seed, device="cpu")
    agree = (stacked.trace["correct"] == res.trace["correct"]).mean()
    fns = {
        "avalanche Naive": lambda: avalanche_naive(stream, scenario, model_spec, opt_spec, seed,
                                                   score=False),
        "avalanche Naive + scoring": lambda: avalanche_naive(stream, scenario, model_spec, opt_spec,
                                                             seed, score=True),
        "plain PyTorch loop (the floor)": lambda: plain_loop(stream, scenario, model_spec,
                                                             opt_spec, seed),
        "shiftsim run()": lambda: ss.run(scenario, model_spec, opt_spec, seed=seed, device="cpu"),
        "shiftsim run(vectorized=False)": lambda: ss.run(scenario, model_spec, opt_spec,
                                                         seed=seed, device="cpu",
                                                         vectorized=False),
        "shiftsim run(AvalancheLearner(Naive))": lambda: ss.run(
            scenario, AvalancheLearner(Naive, model=model_spec, optimizer=opt_spec), seed=seed,
            device="cpu"),
    }
    fleet_name = f"shiftsim fleet ({args.fleet} seeds)"
    if args.fleet:
        fleet = run_fleet(scenario, model_spec, [(opt_spec, s) for s in range(args.fleet)],
                          device="cpu")
        if fleet[0].trace["correct"].tolist() != res.trace["correct"].tolist():
            print("note: the fleet's member 0 differs from run() at some steps (float rounding "
                  "of the batched matmuls)")
        fns[fleet_name] = lambda: run_fleet(scenario, model_spec,
                                            [(opt_spec, s) for s in range(args.fleet)],
                                            device="cpu")
    times = interleaved(fns, rounds=args.rounds)
    per_step = {name: [t / args.steps for t in ts] for name, ts in times.items()}
    if args.fleet:
        per_step[fleet_name] = [t / args.fleet for t in per_step[fleet_name]]
    print(f"shiftsim vs Avalanche {__import__('avalanche').__version__} Naive — digits, MLP "
          f"64-{args.hidden}-10, SGD, batch {args.batch}, {args.steps} online steps, "
          f"{args.rounds} interleaved rounds, CPU, torch threads {torch.get_num_threads()}")
    print("  same computation checked: correct counts per step and final weights identical "
          "(Avalanche vs run(vectorized=False));")
    print(f"  run() ({stacked.info['engine']}) has the same correct count on {agree:.1%} of "
          "steps (float rounding of the batched matmuls)")
    for name, ts in per_step.items():
        unit = "ms/learner-step" if name == fleet_name else "ms/step"
        print(f"  {name:40s} {1000 * median(ts):7.3f} {unit}")
    base = per_step["avalanche Naive"]
    ratio = median(paired_ratios(base, per_step["shiftsim run()"]))
    scored = median(paired_ratios(per_step["avalanche Naive + scoring"],
                                  per_step["shiftsim run()"]))
    print(f"  ratio Avalanche Naive / shiftsim run():            {ratio:5.2f}x  (goal >= 8x)")
    print(f"  ratio Avalanche Naive + scoring / shiftsim run():  {scored:5.2f}x")
    eager = median(paired_ratios(base, per_step["shiftsim run(vectorized=False)"]))
    print(f"  ratio Avalanche Naive / run(vectorized=False):     {eager:5.2f}x")
    floor = median(paired_ratios(base, per_step["plain PyTorch loop (the floor)"]))
    print(f"  ratio Avalanche Naive / plain PyTorch loop:        {floor:5.2f}x  (the most any "
          "autograd single-learner loop can reach)")
    if args.fleet:
        fr = median(paired_ratios(base, per_step[fleet_name]))
        print(f"  ratio Avalanche Naive / fleet, per learner-step:   {fr:5.2f}x")


if __name__ == "__main__":
    main()
