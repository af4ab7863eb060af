"""The robustness league: every registered optimizer (torch's sgd, sgdm, nesterov, adam, adamw
and shiftsim's tam, adatam, adatamw, adamem_sgd, adamem_adamw, momo, momo_adam, grams) across
the scenario library (``league.py``: every label-flip mode at 40 % and 100 %, every covariate
family at severity 3 entered abruptly and gradually, recurring regimes, a class-prior shift) on
digits, MLP(128); Fashion-MNIST too with ``SHIFTSIM_LEAGUE_FASHION=1``.

Each optimizer is tuned per scenario on a 5-point learning-rate grid over 2 decades around its
family's default (widened by a decade where the best sits at an edge; 3 tuning seeds) and
evaluated on 10 other seeds. The report's league table ranks the optimizers by their mean rank
over the scenarios (headline online accuracy: the original labels under label noise), with an
interval from resampling seeds, and per scenario family.

Shrunk to fit one 2-core machine: phases of 200 steps (tasks of the label flips, the covariate
and class-prior phases), batches of 32, and digits only: 22 scenarios x 13 optimizers x
(5 x 3 tuning + 10 evaluation) = 7,150 runs, plus the runs of widened grids: 8,176 in the
checked-in study. Rerun from scratch on a 2-core AMD EPYC on 2026-12-07, ``shiftsim study``
took about 4.5 min of wall time (its evaluation stage ended 4 min 18 s after the start); the
report's "4.9 min of run time" is the runs' own wall times added up, a fleet's shared among
its runs. A Fashion-MNIST run of the same length costs about 13x a digits run (784 inputs
instead of 64, shifts on 28 x 28 images: 413 against 31 ms of wall time a run, the 13 optimizers
x 10 seeds of the rotate and noise scenarios in fleets on 2 workers, that machine), so the
Fashion-MNIST half would add about an hour there (estimated, not run); set
``SHIFTSIM_LEAGUE_FASHION=1`` (and another ``--out``) to run the full league of 44 scenarios.
The Fashion-MNIST comparisons of this round are in the TAM study (``tam_label_flip.py``).

    shiftsim study scenarios/robustness_league.py --out results/robustness-league
    SHIFTSIM_LEAGUE_FASHION=1 shiftsim study scenarios/robustness_league.py \
        --out results/robustness-league-full
    shiftsim report results/robustness-league --out reports/robustness-league --baseline sgdm
"""

import os

from league import league_scenarios

import shiftsim as ss
from shiftsim.study import Study, Tuning

STEPS = 200
FASHION = os.environ.get("SHIFTSIM_LEAGUE_FASHION", "") == "1"
GRIDS = {
    "sgd": [0.003, 0.01, 0.03, 0.1, 0.3],
    "adam": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
    "momo": [0.03, 0.1, 0.3, 1.0, 3.0],
    "momo_adam": [1e-3, 3e-3, 1e-2, 3e-2, 0.1],
}
FAMILY = {"sgd": "sgd", "sgdm": "sgd", "nesterov": "sgd", "tam": "sgd", "adamem_sgd": "sgd",
          "adam": "adam", "adamw": "adam", "adatam": "adam", "adatamw": "adam",
          "adamem_adamw": "adam", "grams": "adam", "momo": "momo", "momo_adam": "momo_adam"}

scenarios = league_scenarios(ss.data.digits(), steps=STEPS, prefix="digits ")
if FASHION:
    scenarios = scenarios | league_scenarios(ss.data.fashion_mnist(), steps=STEPS,
                                             prefix="fashion ")
# AdaTAMW differs from AdaTAM only by its decoupled weight decay (0 by default): it runs with
# AdamW's default of 0.01 so that the league holds thirteen different update rules
optimizers = {name: ss.optim.spec(name, **({"weight_decay": 0.01} if name == "adatamw" else {}))
              for name in ss.optim.names()}

study = Study(
    "robustness-league", scenarios, ss.models.mlp(hidden=(128,)), optimizers,
    tuning=Tuning(grid={n: {"lr": GRIDS[FAMILY[n]]} for n in optimizers}, seeds=3,
                  scope="per_scenario", extend=True),
    seeds=10,
    description=(f"Every registered optimizer across {len(scenarios)} scenarios on digits"
                 + (" and Fashion-MNIST, MLP 128" if FASHION else ", MLP 128 (shrunk to fit "
                    "one 2-core machine: Fashion-MNIST left out, phases of 200 steps)")
                 + ", tuned per scenario (5-point grids over 2 decades, widened at an edge; "
                 "3 tuning seeds), 10 evaluation seeds"),
)
