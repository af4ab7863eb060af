"""The fleet row kernels' whole native steps against the torch operations they replace, toggled
in one process.

TAM, MoMo, AdaTAM(W) and AM-SGD step their members' rows in one native call each
(``shiftsim.optim._native.tam_step``, ``momo_step``, ``adatam_step``, ``amsgd_step``: sums,
per-member numbers and the update pass, member by member), Grams in one native pass
(``grams_step``). Each is checked here to leave the traces unchanged, then timed against the
code without it (the function set to "does not apply", so the row kernel takes its earlier
path: the native row sums, and torch's operations or the earlier native pieces), runs
interleaved (on, off, then off, on, ...). Printed: the run's time a step with and without, the
median of the paired ratios with every run's ratio, and the optimizer group's own time a step
(timed around each group's step).

MoMo-Adam and AM-AdamW step their members' rows in two native passes each
(``momo_adam_rows``, ``amadamw_rows``), whose sums are native where the code without them has
torch's: their traces are equal up to float rounding only, so for them the check prints the
largest loss difference over the run instead of requiring the same bits.

Two workloads: ``single`` (one member: what ``shiftsim.run`` of a ReLU MLP steps) for each
optimizer, and ``league`` (13 optimizers x ``--seeds`` members in one fleet, all the whole
steps toggled together; each group's time printed where it changed).

    python benchmarks/native_steps.py [--runs 10] [--hidden 64] [--steps 300] [--seeds 10]
                                      [--only single,league] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from _common import median, paired_ratios

import shiftsim as ss
from shiftsim.fleet import learner as fleet_learner
from shiftsim.fleet import run_fleet
from shiftsim.optim import _native

#: each optimizer's native whole step, and what it returns where it does not apply
STEPS = {"tam": ("tam_step", None), "momo": ("momo_step", None),
         "adatam": ("adatam_step", None), "adamem_sgd": ("amsgd_step", None),
         "grams": ("grams_step", False),
         "momo_adam": ("momo_adam_rows", False), "adamem_adamw": ("amadamw_rows", False)}
#: the steps whose native path rounds differently from the code without it (native sums)
ROUNDING = {"momo_adam", "adamem_adamw"}


class Toggle:
    """The native whole steps ``names`` on (as imported) or off (answering "does not apply")."""

    def __init__(self, names: list[str]) -> None:
        self.saved = {n: getattr(_native, STEPS[n][0]) for n in names}
        #: whether some of them round differently (their traces are compared up to rounding)
        self.rounding = bool(ROUNDING & set(names))

    def __call__(self, on: bool) -> None:
        for n, fn in self.saved.items():
            fname, none = STEPS[n]
            setattr(_native, fname, fn if on else (lambda *a, none=none, **k: none))


class GroupClock:
    """Seconds spent in each optimizer group's step, by the group's update function."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self.step = fleet_learner._Group.step

    def __enter__(self) -> GroupClock:
        step = self.step

        def timed(group: fleet_learner._Group, *args: object) -> object:
            t0 = time.perf_counter()
            out = step(group, *args)
            key = group.rule.update.__qualname__.split(".")[0]
            self.spent[key] = self.spent.get(key, 0.0) + time.perf_counter() - t0
            return out

        fleet_learner._Group.step = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        fleet_learner._Group.step = self.step  # type: ignore[method-assign]


def compare(run: Callable[[], list[ss.RunResult]], toggle: Toggle, runs: int, steps: int,
            clock: GroupClock) -> tuple[list[float], list[float], list[dict[str, float]],
                                        list[dict[str, float]]]:
    """Check that both ways give the same traces, then time ``runs`` interleaved runs each."""
    toggle(True)
    with_native = run()
    toggle(False)
    without = run()
    if toggle.rounding:
        gap = max(float((a.trace.loss - b.trace.loss).abs().max())
                  for a, b in zip(with_native, without))
        print(f"    (native sums: traces equal up to rounding; largest loss difference {gap:.2g})")
    elif not all(a.trace.equals(b.trace) and a.evals.equals(b.evals)
                 for a, b in zip(with_native, without)):
        raise SystemExit("the traces differ with and without the native steps")
    on, off, g_on, g_off = [], [], [], []
    for r in range(runs):
        for state in ((False, True) if r % 2 == 0 else (True, False)):
            toggle(state)
            clock.spent.clear()
            t0 = time.perf_counter()
            run()
            (on if state else off).append((time.perf_counter() - t0) / steps * 1e3)
            (g_on if state else g_off).append(dict(clock.spent))
    toggle(True)
    return on, off, g_on, g_off


def report(label: str, on: list[float], off: list[float], g_on: list[dict[str, float]],
           g_off: list[dict[str, float]], steps: int, only_changed: bool) -> None:
    ratios = paired_ratios(on, off)
    print(f"  {label:<22} {median(off):7.3f} -> {median(on):7.3f} ms a step  paired "
          f"{median(ratios):.3f} (" + " ".join(f"{r:.2f}" for r in sorted(ratios)) + ")")
    for key in g_off[0]:
        a = median([g[key] for g in g_off]) / steps * 1e3
        b = median([g[key] for g in g_on]) / steps * 1e3
        if only_changed and abs(a - b) < 0.02 * max(a, b):
            continue
        ratio = median([y[key] / x[key] for x, y in zip(g_off, g_on)])
        print(f"      group {key:<26} {a:7.3f} -> {b:7.3f} ms a step  paired {ratio:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--hidden", default="64")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=10, help="members per optimizer (league)")
    ap.add_argument("--only", default="single,league")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not _native.available():
        raise SystemExit(f"the native code is not in use here: {_native.status()}")
    hidden = tuple(int(h) for h in args.hidden.split(",") if h)
    sc = ss.label_flip_tasks(ss.data.digits(), rate=0.5, tasks=2,
                             steps_per_task=args.steps // 2)
    model = ss.models.mlp(hidden=hidden)
    steps = sc.total_steps
    print(f"native whole steps on/off — digits MLP {hidden}, {steps} steps, {args.runs} "
          f"interleaved runs, torch threads {torch.get_num_threads()}")
    clock = GroupClock()
    with clock:
        if "single" in args.only:
            print(" single runs (one member):")
            for name in STEPS:
                member = [(ss.optim.spec(name), 0)]
                out = compare(lambda m=member: run_fleet(sc, model, m), Toggle([name]),
                              args.runs, steps, clock)
                report(name, *out, steps, only_changed=False)
        if "league" in args.only:
            names = ss.optim.names()
            members = [(ss.optim.spec(n), s) for n in names for s in range(args.seeds)]
            print(f" league-like fleet ({len(names)} optimizers x {args.seeds} members):")
            out = compare(lambda: run_fleet(sc, model, members), Toggle(list(STEPS)),
                          args.runs, steps, clock)
            report(f"{len(members)} members", *out, steps, only_changed=True)


if __name__ == "__main__":
    main()
