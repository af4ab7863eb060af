"""Flip-rate sweep: how well do SGD with momentum, Adam and TAM track permuted labels?
Digits (embedded, no download), three tasks of 300 steps; every task after the first permutes
the labels of 0 %, 20 %, ..., 100 % of the samples. At 100 % that is a fully learnable new
concept; below it two mappings of one input are mixed, so the best reachable accuracy is
max(ρ, 1 − ρ): difficulty along this axis is U-shaped (hardest at 50 %), not growing.
6 flip rates x 3 optimizers x 3 seeds = 54 runs, about 15 s on one core.

    shiftsim study scenarios/flip_sweep.py --out results/flip-sweep
    shiftsim report results/flip-sweep --out reports/flip-sweep --baseline sgdm
"""

import shiftsim as ss
from shiftsim.study import Study, flip_rates

data = ss.data.digits()

study = Study(
    "flip-sweep",
    scenarios=flip_rates(data, rates=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0], mode="permute", tasks=3,
                         steps_per_task=300, batch_size=32, eval_every=100),
    model=ss.models.mlp(hidden=(64,)),
    # learning rates: the quickstart's small sweep on digits
    optimizers={
        "sgdm": ss.optim.spec("sgdm", lr=0.05),
        "adam": ss.optim.spec("adam", lr=1e-3),
        "tam": ss.optim.spec("tam", lr=0.1),
    },
    seeds=3,
    description=("LabelFlip(permute) rates 0-100 % on digits (partial rates mix two mappings: "
                 "ceiling max(rate, 1 - rate)): SGDM vs Adam vs TAM, 3 seeds"),
)

if __name__ == "__main__":  # python scenarios/flip_sweep.py: the same as `shiftsim study`
    study.run("results/flip-sweep")
