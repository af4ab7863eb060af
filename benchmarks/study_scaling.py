"""Study scaling: the same CPU study run with 2 local workers vs 1, side by side.

A study of small learners on digits (flip rates x optimizers x seeds), one torch thread per run
as studies use, one learner per run (``fleet=False``; ``--fleet`` measures the default path
instead, where runs of one scenario and model share fleets). ``workers=1`` runs the runs one
after another in this process; ``workers=2`` runs them in a pool of 2 spawn-started worker
processes, and the driver writes every result to the store. Each round runs both into fresh
results folders, in ABBA order so that drifting load on a shared machine hits both alike; the
ratio is the median of per-round ratios of wall times, end to end (worker start-up, runs and
writing the store). Both must give the same results. Goal on 2 cores: >= 1.7x.

Each configuration's CPU seconds (this process and its workers) are printed too, and the cores
it got (CPU / wall): on a machine shared with other jobs the second worker may get no second
core (Linux's autogroup scheduler shares the CPUs per session, not per process), and then no
process pool can scale; measure on an otherwise idle machine. A worker costs about 4 s of CPU
to start (importing torch and shiftsim, and torch.optim's first use imports torch._dynamo),
which the study's length must amortise.

    python benchmarks/study_scaling.py [--seeds 8] [--steps 400] [--rounds 2] [--fleet]

``--backends`` compares instead, side by side on 2 workers, the runs per second of the local
pool with one learner per run, the local pool with fleets (the default) and Ray with fleets
(each fleet one Ray task, on a local Ray started for the study; skipped without the ray extra),
and checks that the three store the same results.

    python benchmarks/study_scaling.py --backends [--seeds 8] [--steps 400] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import pandas as pd
from _common import median

import shiftsim as ss
from shiftsim import store
from shiftsim.study import Study, default_workers, flip_rates


def make_study(seeds: int, steps: int) -> Study:
    data = ss.data.digits()
    return Study("scaling", flip_rates(data, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], tasks=3,
                                       steps_per_task=steps),
                 model=ss.models.mlp(hidden=(128, 128)),
                 optimizers={"sgdm": ss.optim.spec("sgdm", lr=0.05),
                             "adam": ss.optim.spec("adam", lr=1e-3)},
                 seeds=seeds)


def _cpu_s() -> float:
    """CPU seconds used by this process and its finished children (the pool's workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed_run(study: Study, workers: int, root: str, fleet: bool, backend: str = "local"
              ) -> tuple[float, float, pd.DataFrame]:
    """(wall seconds, CPU seconds, the runs) of one study run into a fresh folder."""
    out = tempfile.mkdtemp(prefix=f"w{workers}-", dir=root)
    cpu, t = _cpu_s(), time.perf_counter()
    rep = study.run(out, workers=workers, backend=backend, progress=False, device="cpu",
                    fleet=None if fleet else False)
    elapsed, cpu = time.perf_counter() - t, _cpu_s() - cpu
    if not rep.ok or rep.done != len(study):
        raise SystemExit(f"the study did not complete: {rep.line()}")
    runs = store.load(out).runs.drop(columns=["total_s", "ms_per_step"])
    return elapsed, cpu, runs.sort_values("run_id").reset_index(drop=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=400, help="steps per task (3 tasks)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--fleet", action="store_true",
                    help="the default path instead: runs of one scenario and model in fleets")
    ap.add_argument("--backends", action="store_true",
                    help="runs per second of the local pool, local fleets and Ray fleets")
    args = ap.parse_args()
    study = make_study(args.seeds, args.steps)
    if args.backends:
        compare_backends(study, args.rounds)
        return
    how = "in fleets (the default)" if args.fleet else "one learner per run (fleet=False)"
    print(f"{study}; {3 * args.steps} steps per run, mlp 64-128-128-10, {how}, 1 torch thread; "
          f"{default_workers()} cores available, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as root:
        warm = Study("warm-up", study.scenarios, model=ss.models.mlp(hidden=(128, 128)),
                     optimizers=["sgdm"], seeds=1)
        timed_run(warm, 1, root, args.fleet)  # untimed: imports and first-call set-up
        times: dict[int, list[float]] = {1: [], 2: []}
        results: dict[int, pd.DataFrame] = {}
        for r in range(args.rounds):
            for workers in (1, 2) if r % 2 == 0 else (2, 1):
                elapsed, cpu, results[workers] = timed_run(study, workers, root, args.fleet)
                times[workers].append(elapsed)
                print(f"  round {r + 1}: workers={workers}: {elapsed:6.1f} s wall, {cpu:6.1f} s "
                      f"CPU (it got {cpu / elapsed:.2f} cores; load average "
                      f"{os.getloadavg()[0]:.1f})", flush=True)
        pd.testing.assert_frame_equal(results[1], results[2],  # same results either way
                                      check_exact=not args.fleet)
    ratios = [a / b for a, b in zip(times[1], times[2])]
    n = len(study)
    print(f"workers=1: {median(times[1]):.1f} s ({1e3 * median(times[1]) / n:.0f} ms/run)   "
          f"workers=2: {median(times[2]):.1f} s ({1e3 * median(times[2]) / n:.0f} ms/run)")
    print(f"speed-up 2 workers vs 1: {median(ratios):.2f}x (median of {len(ratios)} rounds: "
          f"{', '.join(f'{x:.2f}' for x in ratios)}; goal >= 1.7x on 2 cores)")


def compare_backends(study: Study, rounds: int) -> None:
    """Runs per second on 2 workers: local one-by-one, local fleets, Ray fleets."""
    configs = [("local, one learner per run", "local", False),
               ("local, fleets", "local", True)]
    try:
        import ray  # noqa: F401
        configs.append(("ray, fleets (one task per fleet)", "ray", True))
    except ImportError:
        print("ray is not installed (pip install 'shiftsim[ray]'): its row is skipped")
    n = len(study)
    print(f"{study}; 2 workers, 1 torch thread per run; load average "
          f"{os.getloadavg()[0]:.1f}")
    times: dict[str, list[float]] = {name: [] for name, *_ in configs}
    results: dict[str, pd.DataFrame] = {}
    with tempfile.TemporaryDirectory() as root:
        for r in range(rounds):
            order = configs if r % 2 == 0 else configs[::-1]
            for name, backend, fleet in order:
                if backend == "ray" and r == 0:  # untimed: the local Ray's start
                    timed_run(study, 2, root, fleet, backend)
                elapsed, _, results[name] = timed_run(study, 2, root, fleet, backend)
                times[name].append(elapsed)
    first = results[configs[0][0]]
    for name, *_ in configs:
        pd.testing.assert_frame_equal(results[name].drop(columns=["machine"], errors="ignore"),
                                      first.drop(columns=["machine"], errors="ignore"),
                                      check_exact=False)
        t = median(times[name])
        print(f"  {name:36s} {t:6.1f} s  {n / t:6.1f} runs/s")
    print("  (same results on every row; wall times end to end, median over rounds)")


if __name__ == "__main__":
    main()
