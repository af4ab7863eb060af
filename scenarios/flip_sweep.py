"""Flip-rate sweep: how well do SGD with momentum, Adam and TAM track permuted labels, each at
its own tuned learning rate?

Digits (embedded, no download), three tasks of 300 steps; every task after the first permutes
the labels of 0 %, 20 %, ..., 100 % of the samples. At 100 % that is a fully learnable new
concept; below it two mappings of one input are mixed, so the best reachable accuracy is
max(ρ, 1 − ρ): difficulty along this axis is U-shaped (hardest at 50 %), not growing.

Protocol: each optimizer is tuned per flip rate on its family's default learning-rate grid
(7 points over 3 decades, widened by a decade where the best sits at an edge) with 3 tuning
seeds, then evaluated on 10 other seeds.
6 flip rates x 3 optimizers x (7 x 3 tuning + 10 evaluation) runs = 558 runs, plus the runs
of any widened grid.

    shiftsim study scenarios/flip_sweep.py --out results/flip-sweep
    shiftsim report results/flip-sweep --out reports/flip-sweep --baseline sgdm
"""

import shiftsim as ss
from shiftsim.study import Study, Tuning, flip_rates

data = ss.data.digits()

study = Study(
    "flip-sweep",
    scenarios=flip_rates(data, rates=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0], mode="permute", tasks=3,
                         steps_per_task=300, batch_size=32, eval_every=100),
    model=ss.models.mlp(hidden=(64,)),
    optimizers={"sgdm": ss.optim.spec("sgdm"), "adam": ss.optim.spec("adam"),
                "tam": ss.optim.spec("tam")},  # learning rates: tuned
    tuning=Tuning(grid="auto", seeds=3, scope="per_scenario", extend=True),
    seeds=10,
    description=("LabelFlip(permute) rates 0-100 % on digits (partial rates mix two mappings: "
                 "ceiling max(rate, 1 - rate)): SGDM vs Adam vs TAM, each tuned per rate "
                 "(3 tuning seeds), 10 evaluation seeds"),
)

if __name__ == "__main__":  # python scenarios/flip_sweep.py: the same as `shiftsim study`
    study.run("results/flip-sweep")
