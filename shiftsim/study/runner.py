"""Running a study: the runs not yet complete in a results folder, written as they arrive.

:func:`run_study` is :meth:`shiftsim.study.Study.run`: it checks its arguments and that every
model fits every dataset before any work, locks the folder, picks an executor (fleets, the
in-process executor, a local pool or Ray) and runs its checks (``check(specs)``: a shift the
worker processes cannot import), writes ``study.json``, writes each run's outcome to
the store as it arrives (Ctrl-C deferred while a run is written), refreshes the indexes and
returns a :class:`StudyRunReport`. A tuned study runs in stages: tuning runs, the selection
(:mod:`~shiftsim.study.selection`, written to ``tuning.json``), then the evaluation runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import store
from ..checks import check_model_fits
from ..errors import ShiftsimError, SpecTypeError, allowed, check_range
from ..runspec import RunSpec
from ..runtime import denormal_mode, frozen_heap, resolve_device
from .executors import (
    GUARD_HINT,
    Executor,
    InProcess,
    LocalPool,
    Outcome,
    RayExecutor,
    import_ray,
)
from .fleet_executor import FleetExecutor, plan_fleets
from .gpus import WorkerPlan, cores, plan_workers
from .grid import StudyGrid
from .ray_fleets import RayFleetExecutor
from .signals import defer_sigint

__all__ = ["BACKENDS", "StudyRunReport", "default_workers", "run_study"]

BACKENDS = ("local", "ray")


def default_workers(device: str = "cpu", gpus_per_run: float = 0.0) -> int:
    """The default number of local workers: the cores this process may use on the CPU, and
    on CUDA :data:`~shiftsim.study.gpus.WORKERS_PER_GPU` per GPU (``1 / gpus_per_run`` when
    given; :func:`~shiftsim.study.gpus.plan_workers`)."""
    return plan_workers(device, None, gpus_per_run).workers


@dataclass
class StudyRunReport:
    """What one :meth:`Study.run` did. ``done``: runs finished now; ``skipped``: already
    complete; ``failed`` / ``diverged``: such runs in the store (now or kept from earlier);
    ``remaining``: runs still not complete (after an interrupt)."""

    name: str
    out_dir: Path
    total: int
    done: int = 0
    skipped: int = 0
    failed: int = 0
    diverged: int = 0
    remaining: int = 0
    kept_failed: int = 0
    elapsed_s: float = 0.0
    interrupted: bool = False
    backend: str = "local"
    workers: int = 1
    #: a tuned study's stages (tuning, widened grids, evaluation), each with its own counts;
    #: ``started_s`` and ``elapsed_s`` of each count from the start of the whole run
    stages: list[StudyRunReport] = dataclasses.field(default_factory=list)
    started_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Every run is complete and none failed."""
        return self.failed == 0 and self.remaining == 0 and not self.interrupted

    @property
    def complete(self) -> int:
        return self.total - self.remaining

    @property
    def complete_stage(self) -> bool:
        """Every run of this stage is complete (failed ones included): the next may start."""
        return self.remaining == 0 and not self.interrupted

    def line(self) -> str:
        parts = [f"{self.name}: {self.complete}/{self.total} runs complete"]
        now = []
        if self.done:
            now.append(f"{self.done} ran now")
        if self.skipped:
            now.append(f"{self.skipped} already complete")
        if now:
            parts[0] += f" ({', '.join(now)})"
        if self.diverged:
            parts.append(f"{self.diverged} diverged")
        if self.failed:
            kept = (f", {self.kept_failed} kept from earlier — retry_failed=True reruns them"
                    if self.kept_failed else "")
            parts.append(f"{self.failed} FAILED{kept}")
        if self.interrupted:
            parts.append(f"INTERRUPTED, {self.remaining} left (run again to resume)")
        elif self.remaining:
            parts.append(f"{self.remaining} not complete")
        parts.append(f"{_duration(self.elapsed_s)} -> {self.out_dir}")
        return "; ".join(parts)

    def __str__(self) -> str:
        return self.line()


def _duration(s: float) -> str:
    if s < 60:
        return f"{s:.1f}s"
    m, s = divmod(int(round(s)), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"



def run_study(study: StudyGrid, out_dir: str | os.PathLike, workers: int | None = None,
              backend: str = "local", resume: bool = True, progress: bool = True, *,
              retry_failed: bool = False, device: str = "auto", threads: int | None = 1,
              gpus_per_run: float = 0.0, executor: Executor | None = None,
              fleet: bool | None = None, deterministic: bool = False) -> StudyRunReport:
    """Run every run of ``study`` not yet complete in ``out_dir`` (the arguments:
    :meth:`shiftsim.study.Study.run`)."""
    if not isinstance(deterministic, bool):
        raise SpecTypeError(f"deterministic must be True or False, got {deterministic!r}")
    if backend not in BACKENDS:
        raise allowed(backend, "backend", BACKENDS)
    if workers is not None:  # None: the default, one per core
        workers = check_range(workers, "workers", 1, integer=True)
    threads = check_range(threads, "threads", 1, integer=True, optional=True)
    if isinstance(gpus_per_run, bool) or not isinstance(gpus_per_run, (int, float)) or not (
            math.isfinite(gpus_per_run) and gpus_per_run >= 0):
        raise ShiftsimError(f"gpus_per_run must be a number >= 0 (fractions share a GPU), "
                            f"got {gpus_per_run!r}")
    if not isinstance(device, str):
        raise SpecTypeError(f"device must be a string such as 'auto' or 'cpu', got {device!r}")
    denormal_mode()  # a bad $SHIFTSIM_DENORMALS fails here, before any folder or run
    plan = None
    if backend == "local" and executor is None:  # checks device and gpus_per_run here
        plan = plan_workers(device, workers, gpus_per_run)
    elif backend == "ray" and executor is None and device.startswith("cuda") \
            and not gpus_per_run:
        raise ShiftsimError(f"device={device!r} on Ray needs gpus_per_run > 0 (e.g. 1, or 0.25 "
                            "to share a GPU by 4 runs): Ray hides the GPUs from tasks that ask "
                            "for none")
    if mp.parent_process() is not None and \
            getattr(sys.modules.get("__main__"), "__name__", "") == "__mp_main__":
        raise ShiftsimError(f"study.run() called while a worker process was starting; "
                            f"{GUARD_HINT}")
    if fleet is not None and not isinstance(fleet, bool):
        raise SpecTypeError(f"fleet must be True, False or None, got {fleet!r}")
    if fleet and executor is not None:
        raise ShiftsimError("fleet=True runs fleets with shiftsim's executors (local or Ray); "
                            "use fleet=False with a custom executor=")
    if backend == "ray" and executor is None:
        import_ray()  # fail before touching the folder when Ray is missing
    pairs = {(id(s.data), m): (s.data, m) for s in study.scenarios.values()
             for m in study.models.values()}
    for data, m in pairs.values():  # before any work: every model fits every dataset
        check_model_fits(m, data)
    out = store.check_out_dir(out_dir)
    made = _missing_folders(out)
    t0 = time.perf_counter()
    try:
        with store.lock(out):
            return _run(study, out, workers, backend, resume, progress, retry_failed, device,
                        threads, gpus_per_run, executor, t0, fleet, deterministic, plan)
    except BaseException:  # refused before anything was written: leave no folder behind
        _remove_unused(made)
        raise


def _missing_folders(out: Path) -> list[Path]:
    """The folders of ``out``'s path that do not exist yet, the deepest first."""
    missing = []
    while not out.is_dir() and out.parent != out:
        missing.append(out)
        out = out.parent
    return missing


def _remove_unused(made: list[Path]) -> None:
    """Remove the folders this study run created (``made``, the deepest first) if the deepest
    holds nothing but the lock file: a run refused before it wrote anything (a shift that the
    workers cannot import, ...) leaves nothing behind."""
    if not made or not made[0].is_dir():
        return
    with contextlib.suppress(OSError):
        if {p.name for p in made[0].iterdir()} <= {store.LOCK_FILE}:
            (made[0] / store.LOCK_FILE).unlink(missing_ok=True)
            for folder in made:
                folder.rmdir()


def _run(study: StudyGrid, out: Path, workers: int | None, backend: str, resume: bool,
         progress: bool, retry_failed: bool, device: str, threads: int | None,
         gpus_per_run: float, executor: Executor | None, t0: float, fleet: bool | None = None,
         deterministic: bool = False, plan: WorkerPlan | None = None) -> StudyRunReport:
    old = store.read_study(out)
    if old is not None and old.get("name") not in (None, study.name):
        raise ShiftsimError(f"{str(out)!r} holds the results of study {old.get('name')!r}, "
                            f"not {study.name!r}; use another folder")
    if plan is None:
        plan = WorkerPlan(cores(), (device,) * cores()) if workers is None else \
            WorkerPlan(workers, (device,) * workers)
    n_workers = plan.workers
    ray_executor = None
    if executor is None and backend == "ray":
        if fleet is False:
            executor = ray_executor = RayExecutor(workers, device, threads, gpus_per_run,
                                                  deterministic=deterministic)
        else:  # fleets (and the runs that go alone) as Ray tasks
            executor = ray_executor = RayFleetExecutor(workers, device, threads, gpus_per_run,
                                                       deterministic=deterministic)
    device_type = _device_type(device, backend, executor is not None and ray_executor is None)

    def stage(specs: list[RunSpec], label: str) -> StudyRunReport:
        nonlocal old
        states = store.scan(out, [s.run_id for s in specs])
        redo = {"pending", "incomplete"} | ({"failed"} if retry_failed else set())
        todo = [s for s in specs if not resume or states[s.run_id].status in redo]
        counts = {st: 0 for st in store.STATUSES}
        todo_ids = {s.run_id for s in todo}
        for s in specs:
            if s.run_id not in todo_ids:
                counts[states[s.run_id].status] += 1
        ex = executor
        where = device_type
        if ray_executor is not None and ex is ray_executor and todo:
            ray_executor.connect()  # fail before writing anything: unreachable, no GPUs
            if where is None:  # "auto" on Ray: CUDA exactly when the tasks get GPUs
                where = "cuda" if ray_executor.gpus_per_run else "cpu"
        check_device(out, states, todo_ids, where)  # before anything is written
        if ex is None:
            n = min(n_workers, len(todo))
            if todo and fleet is not False and (
                    fleet or plan_fleets(todo, n, plan.devices[0], sharing=plan.per_device)[0]):
                ex = FleetExecutor(n, device, threads, deterministic=deterministic,
                                   devices=plan.devices[:n])
            elif n <= 1:
                ex = InProcess(plan.devices[0] if plan.devices else device, threads,
                               deterministic)
            else:
                ex = LocalPool(n, device, threads, deterministic=deterministic,
                               devices=plan.devices[:n])
        check = getattr(ex, "check", None)
        if todo and check is not None:  # e.g. a shift the workers cannot import: before
            check(todo)  # study.json, the indexes or the status line
        with frozen_heap():  # the run states and specs live as long as the stage (runtime)
            report = _execute(study, out, old, specs, todo, counts, ex, n_workers, progress,
                              t0, {rid: st.status for rid, st in states.items()}, label,
                              where)
        old = store.read_study(out)
        return report

    try:
        if study.tuning is None:
            return stage(study.grid(), study.name)
        return _tune_then_test(study, out, stage)
    finally:
        if ray_executor is not None:
            ray_executor.close()


def _device_type(device: str, backend: str, custom: bool) -> str | None:
    """The device type the runs will run on, as far as the driver can tell before it connects
    to anything: None for ``device="auto"`` on Ray (decided once connected: CUDA exactly when
    the tasks ask for GPUs). On the local backend the device is checked here, so a study asking
    for CUDA where there is none stops at once; a custom executor's named device need not
    exist here."""
    import torch

    if device == "auto" and backend == "ray" and not custom:
        return None
    if backend == "ray" or custom:
        if device == "auto":
            return resolve_device(device).type
        try:
            return torch.device(device).type
        except (RuntimeError, TypeError):
            return None
    return resolve_device(device).type


def recorded_device_type(state: store.RunState) -> str | None:
    """The device type a complete run ran on, from its ``summary.json``: its ``device``
    (``"cuda:0"`` -> ``"cuda"``), ``"cpu"`` for a run written before devices were checked, and
    None for a failed run that recorded none (it ran nothing worth keeping apart)."""
    summary = state.summary or {}
    recorded = summary.get("device")
    if recorded:
        return str(recorded).split(":", 1)[0]
    return None if state.status == "failed" else "cpu"


def check_device(out: Path, states: dict[str, store.RunState], todo: set[str],
                 device_type: str | None) -> None:
    """Refuse to resume a results folder whose kept runs ran on another device type: random
    draws (noise, batch order) differ between CPU and CUDA generators, so a study would
    silently mix results from two devices. The run ids do not name the device (CPU ids stay
    what they were), so this check is what keeps a folder on one device type."""
    if device_type is None:
        return
    for rid, st in states.items():
        if rid in todo or not st.complete:
            continue
        was = recorded_device_type(st)
        if was is not None and was != device_type:
            raise ShiftsimError(
                f"{str(out)!r} holds runs made on {was!r} (e.g. run {rid}) and this study runs "
                f"on {device_type!r}; resuming would mix devices (their random draws differ): "
                f"use device={was!r}, another folder, or resume=False to redo every run")


def _tune_then_test(study: StudyGrid, out: Path, stage: Any) -> StudyRunReport:
    """Run the tuning runs, select (widening the grid where asked), write ``tuning.json``,
    then run the evaluation runs."""
    from . import selection

    assert study.tuning is not None
    study.set_selection(None)
    reports = [stage(study.tuning_grid(), f"{study.name} [tune]")]
    for round_ in range(study.tuning.extend + 1):
        if not reports[-1].complete_stage:
            return _merged(study.name, out, reports)  # interrupted or incomplete: resume
        with frozen_heap():  # what the selection loads is new: full passes skip the rest
            choices, curves = selection.select_from_store(study, out)
        wider = selection.widenings(study, choices) if round_ < study.tuning.extend else {}
        if not wider:
            break
        study.widen(wider)
        reports.append(stage(study.tuning_grid(), f"{study.name} [tune, wider grid]"))
    study.set_selection(choices)
    selection.write(study, out, choices, curves)
    reports.append(stage(study.grid(), f"{study.name} [eval]"))
    return _merged(study.name, out, reports)


def _execute(study: StudyGrid, out: Path, old: dict[str, Any] | None, specs: list[RunSpec],
             todo: list[RunSpec], counts: dict[str, int], executor: Executor,
             n_workers: int, progress: bool, t0: float, statuses: dict[str, str],
             label: str | None = None, device_type: str | None = None) -> StudyRunReport:
    store.clean_tmp(out)  # left by a process killed while writing study.json or an index
    desc = study.to_dict()
    if old is None or {k: old.get(k) for k in desc} != store.plain(desc):
        store.write_study(out, desc)
    report = StudyRunReport(label or study.name, out, len(specs),
                            started_s=time.perf_counter() - t0,
                            skipped=len(specs) - len(todo),
                            kept_failed=counts["failed"], backend=getattr(
                                executor, "name", type(executor).__name__),
                            workers=n_workers)
    bar = _progress(progress, label or study.name, len(specs), report.skipped)
    by_id = {s.run_id: s for s in todo}
    left = set(by_id)
    outcomes = executor.run(todo) if todo else iter(())
    try:
        for outcome in outcomes:
            spec = by_id.get(outcome.run_id)
            if spec is None or outcome.run_id not in left:
                continue  # not ours, or a duplicate (never written twice)
            with defer_sigint():
                _write(out, spec, outcome, device_type)
                left.discard(outcome.run_id)
                report.done += 1
                counts[outcome.status] += 1
                if bar is not None:
                    bar.update(1)
                    post = {k: counts[k] for k in ("failed", "diverged") if counts[k]}
                    if post:
                        bar.set_postfix(post, refresh=False)
    except KeyboardInterrupt:
        report.interrupted = True
        executor.cancel()
        raise
    finally:
        close = getattr(outcomes, "close", None)
        if close is not None:
            close()
        if bar is not None:
            bar.close()
        report.failed = counts["failed"]
        report.diverged = counts["diverged"]
        report.remaining = len(left) + counts["incomplete"] + counts["pending"]
        report.elapsed_s = time.perf_counter() - t0
        if report.done or store.indexes_stale(out, statuses):
            with contextlib.suppress(Exception):
                store.write_indexes(out)
        print(report.line(), flush=True)
    return report


def _progress(enabled: bool, name: str, total: int, initial: int) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=name, unit="run", dynamic_ncols=True,
                smoothing=0.1)


def _write(out: Path, spec: RunSpec, o: Outcome, device_type: str | None = None) -> Path:
    extra = {"wall_s": o.wall_s, "worker": o.worker, "threads": o.threads}
    if o.status == "failed" and device_type is not None:  # where it was meant to run
        extra["device"] = device_type
    # [ours, speed] no fsync per file (5 per run, about 60 % of writing one): a kill leaves the
    # page cache intact, and after a power loss a run whose files did not reach the disk fails
    # the sizes and checksums its summary.json lists, so a resumed study redoes it
    return store.write_run(out, spec.run_id, spec=spec.to_dict(), labels=spec.label_dict,
                           status=o.status, result=o.result, summary=o.summary, scores=o.scores,
                           error=o.error, traceback=o.traceback, extra=extra, fsync=False,
                           payload=o.payload)


def _merged(name: str, out: Path, reports: list[StudyRunReport]) -> StudyRunReport:
    """One report for a study run in stages (tuning, evaluation): the last stage's totals
    (which list every run), the stages' work added up."""
    last = reports[-1]
    return StudyRunReport(
        name, out, last.total, done=sum(r.done for r in reports),
        skipped=max(0, last.skipped - sum(r.done for r in reports[:-1])),
        failed=last.failed, diverged=last.diverged, remaining=last.remaining,
        kept_failed=last.kept_failed, elapsed_s=last.elapsed_s,
        interrupted=any(r.interrupted for r in reports), backend=last.backend,
        workers=last.workers, stages=list(reports))

