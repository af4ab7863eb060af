"""``shiftsim demo`` / ``make demo``: the quickstart scenario with a few optimizers.

Runs the quickstart (:mod:`shiftsim.quickstart`, which ``scenarios/quickstart.py``
re-exports) for each of its optimizers and seeds, prints the per-phase summary table, writes a
recovery-curve PNG, stores the runs (``OUT/results``) and writes their comparative report
(``OUT/report/index.html``).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pandas as pd

from .errors import ShiftsimError
from .scenario import Gradual, Phase


def shorten(phase: Phase, factor: int) -> Phase:
    """The same phase with ``factor`` times fewer steps (and a proportionally shorter ramp)."""
    steps = max(1, phase.steps // factor)
    tr = phase.transition
    if isinstance(tr, Gradual):
        tr = dataclasses.replace(tr, width=max(1, min(steps, tr.width // factor)))
    return dataclasses.replace(phase, steps=steps, transition=tr)


def run_demo(out: Path, quick: bool = False, seeds: int = 2) -> int:
    from . import engine
    from .plots import recovery_curves
    from .quickstart import model, optimizers, scenario

    if out.exists() and not out.is_dir():
        raise ShiftsimError(f"--out {str(out)!r} exists and is not a folder")
    if quick:  # a fifth of the steps, ramps included: for tests
        scenario = scenario.replace(phases=[shorten(p, 5) for p in scenario.phases])
        seeds = 1
    scenario.describe()
    print()
    t0 = time.perf_counter()
    summaries, traces, finished = [], [], []
    for label, opt in optimizers.items():
        for seed in range(seeds):
            res = engine.run(scenario, model, opt, seed=seed, device="auto")
            finished.append((label, opt, seed, res))
            s = res.summary().assign(optimizer=label, seed=seed)
            summaries.append(s)
            traces.append(res.trace.assign(optimizer=label, seed=seed, run_id=f"{label}-{seed}"))
            flag = f" DIVERGED at step {res.diverged_step}" if res.diverged else ""
            print(f"  {label:<12} seed {seed}: online accuracy {res.online_accuracy:.3f} "
                  f"({res.timings['ms_per_step']:.2f} ms/step){flag}")
    table, common = _table(finished, pd.concat(summaries, ignore_index=True))
    print(f"\nper phase over {seeds} seed(s): mean online and held-out accuracy; recovery = "
          "median steps until the 20-step trailing accuracy, after dipping, holds 90 % of the "
          "way from chance to the best plateau any optimizer reached (the same target for "
          "every optimizer); 'never' = not within the phase:")
    with pd.option_context("display.width", 160, "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))
    out.mkdir(parents=True, exist_ok=True)
    names = dict(enumerate(p.name for p in scenario.phases))
    marks = common[common["shifted"]].assign(shift=lambda d: d["phase"])
    fig = recovery_curves(pd.concat(traces, ignore_index=True), hue="optimizer", col="shift",
                          hue_order=list(optimizers), col_title=lambda k: f"into {names[k]!r}",
                          recovery=marks)
    png = out / "recovery_curves.png"
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(png)
    table.to_csv(out / "summary.csv", index=False)
    print(f"\nwrote {png} and {out / 'summary.csv'} in {time.perf_counter() - t0:.1f} s")
    _write_report(out, scenario, model, finished)
    return 0


def _table(finished: list, summaries: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per optimizer and phase: means of the accuracies, recovery against the common reference
    (the same target for every optimizer, docs/metrics.md), median over seeds; and every run's
    summary against that reference."""
    from . import metrics

    ref = metrics.common_reference(summaries.assign(scenario="demo"))
    mapping = dict(zip(ref["phase"], ref["reference"]))
    mapping_true = dict(zip(ref["phase"], ref["reference_true"]))
    rows = []
    for label, _, seed, res in finished:
        s = res.summary(reference=mapping, reference_true=mapping_true)
        rows.append(s.assign(optimizer=label, seed=seed))
    common = pd.concat(rows, ignore_index=True)
    out = []
    for (label, k, name), g in common.groupby(["optimizer", "phase", "name"], sort=False):
        shifted = bool(g["shifted"].any())
        med = metrics.median_recovery(g["recovery_steps"], g["censored"]) if shifted else None
        if med is None:
            rec = "-" if k == 0 else "no shift"
        elif med != med:  # NaN: half or more never recovered
            rec = "never" if g["censored"].all() else "undefined"
        else:
            rec = f"{med:g}"
        onset = g["onset_steps"].median() if shifted and g["dipped"].any() else float("nan")
        out.append({"optimizer": label, "phase": k, "name": name,
                    "online_acc": g["online_acc"].mean(), "recovery_steps": rec,
                    "dip_at": onset, "drop": g["drop"].mean(),
                    "heldout_acc": g["heldout_acc"].mean()})
    return pd.DataFrame(out), common


def _write_report(out: Path, scenario, model, finished: list) -> None:
    """Store the demo's runs as a results folder and write its comparative report."""
    import shutil

    from . import store
    from .report import describe, report
    from .runspec import RunSpec

    t0 = time.perf_counter()
    results = out / "results"
    shutil.rmtree(results, ignore_errors=True)  # only this demo's runs, not an older demo's
    runs = []
    for label, opt, seed, res in finished:
        labels = {"scenario": scenario.name, "model": model.label, "optimizer": label,
                  "optimizer_name": opt.name, "seed": seed}
        spec = RunSpec(scenario, model, opt, seed, labels)
        store.write_result(results, res, spec)
        runs.append({"run_id": spec.run_id, "labels": spec.label_dict})
    # study.json keeps the optimizers' order (the first is the report's baseline)
    store.write_study(results, {"name": "demo", "runs": runs,
                                "description": "shiftsim demo: the quickstart scenario"})
    path = report(results, out / "report")
    print(f"{describe(path)} in {time.perf_counter() - t0:.1f} s")
