"""A 20-scenario league benchmark's wall time: a tuned league study on one machine, end to end.

Every registered optimizer (13) x the first N digits scenarios of the league library
(``scenarios/league.py``; 20 by default: label flips at 40 % and 100 %, covariate shifts abrupt
and gradual, ...; phases of 300 steps, so a 5-task label flip is 1,500 steps), each optimizer
tuned per scenario on a 5-point learning-rate grid with 3 tuning seeds (grids not widened),
then 10 evaluation seeds: 13 x N x (15 + 10) runs (6,500 for N = 20). This is not the
checked-in robustness league (``scenarios/robustness_league.py``: 22 scenarios, phases of 200
steps, grids widened at an edge: 8,176 runs), whose time its report and docs/performance.md
give. The study runs with local fleets (the default) into a temporary folder; the script
prints the wall time, runs per second, learner-steps per second and how the time splits
between the stages, and extrapolates a subset (``--scenarios 2``) to the 20 scenarios in
proportion to the scenarios' steps (stated as an extrapolation). The project's goal: the 20
scenarios in under 10 minutes on 2 cores.

    python benchmarks/league_speed.py [--scenarios 20] [--workers 2] [--hidden 128]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import shiftsim as ss
from shiftsim.study import Study, Tuning

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scenarios"))
from league import league_scenarios  # noqa: E402

GRIDS = {"sgd": [0.003, 0.01, 0.03, 0.1, 0.3], "adam": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
         "momo": [0.03, 0.1, 0.3, 1.0, 3.0], "momo_adam": [1e-3, 3e-3, 1e-2, 3e-2, 0.1]}
FAMILY = {"sgd": "sgd", "sgdm": "sgd", "nesterov": "sgd", "tam": "sgd", "adamem_sgd": "sgd",
          "adam": "adam", "adamw": "adam", "adatam": "adam", "adatamw": "adam",
          "adamem_adamw": "adam", "grams": "adam", "momo": "momo", "momo_adam": "momo_adam"}
FULL = 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", type=int, default=FULL)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--hidden", default="128", help="MLP hidden widths, e.g. 128 or 64,64")
    ap.add_argument("--steps", type=int, default=300, help="steps per phase")
    args = ap.parse_args()
    scenarios = league_scenarios(ss.data.digits(), steps=args.steps)
    full_steps = sum(sc.total_steps for sc in list(scenarios.values())[:FULL])
    names = list(scenarios)[: args.scenarios]
    scenarios = {n: scenarios[n] for n in names}
    optimizers = {n: ss.optim.spec(n) for n in ss.optim.names()}
    hidden = tuple(int(h) for h in args.hidden.split(",") if h)
    study = Study("league-speed", scenarios, ss.models.mlp(hidden=hidden), optimizers,
                  tuning=Tuning(grid={n: {"lr": GRIDS[FAMILY[n]]} for n in optimizers},
                                seeds=3, scope="per_scenario", extend=False),
                  seeds=10)
    steps = {n: sc.total_steps for n, sc in scenarios.items()}
    runs_planned = len(optimizers) * len(scenarios) * (5 * 3 + 10)
    learner_steps = len(optimizers) * (5 * 3 + 10) * sum(steps.values())
    print(f"league: {len(optimizers)} optimizers x {len(scenarios)} digits scenarios "
          f"(steps {min(steps.values())}-{max(steps.values())}), mlp{hidden}, 5-point grids x "
          f"3 tuning seeds + 10 evaluation seeds = {runs_planned} runs, "
          f"{learner_steps / 1e6:.2f} M learner-steps; {args.workers} workers, local fleets")
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        report = study.run(out, workers=args.workers, progress=False)
        wall = time.perf_counter() - t0
    stages = ", ".join(f"{s.name.split('[')[-1].rstrip(']') if '[' in s.name else s.name}: "
                       f"ended at {s.elapsed_s:.0f} s" for s in report.stages)
    print(f"  {report.done} runs in {wall:.0f} s ({wall / 60:.1f} min): {report.done / wall:.1f} "
          f"runs/s, {learner_steps / wall:,.0f} learner-steps/s; {report.failed} failed, "
          f"{report.diverged} diverged ({stages})")
    if args.scenarios < FULL:
        est = wall * full_steps / sum(steps.values())
        print(f"  extrapolated to the {FULL} scenarios by their steps ({full_steps:,} against "
              f"{sum(steps.values()):,} here): about {est:.0f} s ({est / 60:.1f} min)  "
              "(goal < 10 min)")
    else:
        print(f"  goal < 10 min: {'met' if wall < 600 else 'not met'}")


if __name__ == "__main__":
    main()
