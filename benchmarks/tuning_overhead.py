"""Tuning adds runs, not overhead: a tuned study's evaluation runs against an untuned study's.

Two studies of the same evaluation runs (2 flip rates x sgdm, adam x 10 seeds, digits MLP):
one untuned, at fixed learning rates; one tuned first (each optimizer over 3 learning rates on
2 tuning seeds, per scenario), whose evaluation stage then runs the same number of runs. Both
run in this process with the study's default executor (fleets), into fresh results folders,
interleaved round by round (ABAB) so that machine noise hits both alike. The ratio is the
median over rounds of (seconds per evaluation run, tuned) / (seconds per run, untuned): the
selection between the stages (reading the tuning runs from the store and choosing) is included
in neither; ~1.0 means the evaluation runs cost what they cost without tuning.

    python benchmarks/tuning_overhead.py [--rounds 3] [--steps 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from _common import median, paired_ratios

import shiftsim as ss
from shiftsim.study import Study, Tuning, flip_rates


def studies(steps: int) -> tuple[Study, Study]:
    data = ss.data.digits()
    scen = flip_rates(data, [0.5, 1.0], tasks=2, steps_per_task=steps)
    model = ss.models.mlp(hidden=(64,))
    plain = Study("plain", scen, model, {"sgdm": ss.optim.spec("sgdm", lr=0.05),
                                         "adam": ss.optim.spec("adam", lr=1e-3)}, seeds=10)
    tuned = Study("tuned", scen, model, {"sgdm": ss.optim.spec("sgdm"),
                                         "adam": ss.optim.spec("adam")}, seeds=10,
                  tuning=Tuning(grid={"sgdm": {"lr": [0.01, 0.03, 0.1]},
                                      "adam": {"lr": [3e-4, 1e-3, 3e-3]}}, seeds=2))
    return plain, tuned


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    plain_s, eval_s, select_s, tune_s = [], [], [], []
    for r in range(args.rounds):
        plain, tuned = studies(args.steps)
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            rep = plain.run(f"{d}/plain", workers=1, progress=False)
            plain_s.append((time.perf_counter() - t) / rep.done)
            rep = tuned.run(f"{d}/tuned", workers=1, progress=False)
            tune_stage, eval_stage = rep.stages[0], rep.stages[-1]
            # the evaluation stage alone: from its start (after the selection) to its end
            eval_s.append((eval_stage.elapsed_s - eval_stage.started_s) / eval_stage.done)
            select_s.append(eval_stage.started_s - tune_stage.elapsed_s)
            tune_s.append((tune_stage.elapsed_s - tune_stage.started_s) / tune_stage.done)
        print(f"round {r + 1}: untuned {1000 * plain_s[-1]:.1f} ms/run, tuned: tuning "
              f"{1000 * tune_s[-1]:.1f} ms/run, evaluation {1000 * eval_s[-1]:.1f} ms/run, "
              f"selection {select_s[-1]:.2f} s", flush=True)
    ratios = paired_ratios(eval_s, plain_s)
    print(f"\nevaluation run, tuned / untuned study: median {median(ratios):.2f}x "
          f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)}); selection "
          f"{median(select_s):.2f} s per study")


if __name__ == "__main__":
    main()
