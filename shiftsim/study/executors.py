"""Executors: run RunSpecs somewhere and hand back :class:`Outcome` values as runs finish.

An executor has one method, ``run(specs) -> Iterator[Outcome]`` (any order), and ``cancel()``.
Workers only compute; the driver alone writes the store. Three are built in:

* :class:`InProcess` — one run after another in this process (``workers=1``; debuggable).
* :class:`LocalPool` — spawn-started worker processes, one pipe each. Every worker receives the
  study's scenarios once, at start, then small task tuples (its next run ahead, so it never
  waits for the driver). A worker that dies (killed, out of memory) loses only its run in
  flight, which is retried once in a fresh worker and recorded as failed if its worker dies
  again. Workers ignore SIGINT (the driver handles Ctrl-C and stops them) and exit by
  themselves within a second when the driver dies.
* :class:`RayExecutor` — Ray tasks on the cluster at ``RAY_ADDRESS`` or on a local Ray started
  for the study; each run asks for ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs (fractions
  allowed, so several small learners share one GPU). A study on Ray runs fleets as Ray tasks
  through its subclass :class:`~shiftsim.study.ray_fleets.RayFleetExecutor` (``fleet=False``:
  this one, a task per run).

A run that raises becomes an Outcome with status ``failed`` and its error; the study goes on.
Another executor plugs in through ``Study.run(executor=...)``: it may group runs (e.g. a fleet
of learners of one architecture in one vectorised program) as long as it yields one
:class:`Outcome` per RunSpec (its ``run_id``, status, RunResult, per-phase summary and scores;
:func:`run_outcome` shows how one is made) and stops its work on ``cancel()``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import multiprocessing as mp
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait as mp_wait
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ShiftsimError, SpecTypeError, check_range
from ..runspec import RunSpec, canonical_json
from ..runtime import prepare_deterministic_env, torch_threads
from .signals import ignore_sigint, sigint_ignored

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from ..result import RunResult
    from ..scenario import Scenario

log = logging.getLogger("shiftsim.study")


@dataclass
class Outcome:
    """What a worker sends back for one run (the driver writes it to the store)."""

    run_id: str
    status: str  # ok | diverged | failed
    result: RunResult | None = None
    summary: pd.DataFrame | None = None
    scores: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None
    wall_s: float = 0.0
    worker: str = ""
    threads: int | None = None
    #: the result serialized for the store (:func:`shiftsim.store.runs.serialized_result`)
    payload: dict[str, Any] | None = None

    def packed(self) -> Outcome:
        """This outcome with its result serialized (parquet bytes, plain summary rows) in place
        of the result's DataFrames: what workers send, so that the driver only writes bytes
        (measured for a 1,500-step run: writing it took the driver 20 ms from the result,
        1.6 ms from this)."""
        if self.result is None or self.payload is not None:
            return self
        from .. import store

        payload = store.runs.serialized_result(self.run_id, self.result, self.summary)
        return dataclasses.replace(self, result=None, summary=None, payload=payload)


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def execute(spec: RunSpec, device: str = "auto", threads: int | None = None) -> RunResult:
    """Run one spec in this process: ``shiftsim.run(spec.scenario, spec.model, spec.optimizer,
    seed=spec.seed, device=device)``, with torch's intra-op threads set to ``threads`` for the
    run when given (studies use 1: the results are then bit-identical whichever backend or
    worker count runs them, and tiny models run fastest single-threaded)."""
    from ..engine import run

    if not isinstance(spec, RunSpec):
        raise SpecTypeError(f"execute() needs a RunSpec, got {type(spec).__name__}")
    with torch_threads(threads):
        return run(spec.scenario, spec.model, spec.optimizer, seed=spec.seed, device=device)


def run_outcome(scenario: Scenario, model: Any, optimizer: Any, seed: int, run_id: str,
                device: str = "auto", threads: int | None = None,
                deterministic: bool = False) -> Outcome:
    """Run one learner and package the result, its per-phase summary and scores; an exception
    becomes a ``failed`` Outcome (KeyboardInterrupt and SystemExit propagate).
    ``deterministic``: :func:`shiftsim.run`'s."""
    from .. import store
    from ..engine import run

    t0 = time.perf_counter()
    try:
        with torch_threads(threads):
            result = run(scenario, model, optimizer, seed=seed, device=device,
                         deterministic=deterministic)
            m = result.measure()
    except Exception as exc:
        error, trace = store.format_error(exc)
        return Outcome(run_id, "failed", error=error, traceback=trace,
                       wall_s=time.perf_counter() - t0, worker=_worker_name(), threads=threads)
    import torch

    return Outcome(run_id, m.status, result if m.status != "failed" else None, m.summary,
                   m.scores, m.error, m.traceback, time.perf_counter() - t0, _worker_name(),
                   threads if threads is not None else torch.get_num_threads()).packed()


def scenario_table(specs: Sequence[RunSpec]) -> tuple[dict[str, Scenario], list[tuple]]:
    """Deduplicate the specs' scenarios: ``({key: scenario}, [task tuples])``.

    A task tuple is ``(run_id, scenario_key, model, optimizer, seed)``: small to send, while
    each scenario (with its dataset) is sent once per worker.
    """
    import hashlib

    table: dict[str, Scenario] = {}
    by_id: dict[int, str] = {}
    tasks = []
    for s in specs:
        key = by_id.get(id(s.scenario))
        if key is None:
            key = hashlib.sha256(canonical_json(s.payload["scenario"]).encode()).hexdigest()[:16]
            table.setdefault(key, s.scenario)
            by_id[id(s.scenario)] = key
        tasks.append((s.run_id, key, s.model, s.optimizer, s.seed))
    return table, tasks


def check_portable(scenarios: Iterable[Scenario]) -> None:
    """Raise a one-line error before any worker process starts when a scenario holds a shift
    whose class the workers cannot import (a class defined in a study file run by ``shiftsim
    study``, or inside a function): spawned workers receive the scenarios pickled, and pickle
    sends a class by its import path."""
    import pickle

    seen: set[type] = set()
    for sc in scenarios:
        for phase in sc.phases:
            for shift in phase.shifts:
                cls = type(shift)
                if cls in seen:
                    continue
                seen.add(cls)
                try:
                    pickle.dumps(cls)
                except (pickle.PicklingError, AttributeError, TypeError):
                    where = ("the study file" if cls.__module__ == "__shiftsim__"
                             else f"{cls.__module__}.{cls.__qualname__}")
                    raise ShiftsimError(
                        f"shift {cls.__name__} is defined in {where}, which worker processes "
                        f"cannot import; define it in a module on the Python path (e.g. a "
                        f"file beside the study, with PYTHONPATH set to its folder) and import "
                        f"it from there, or run the study in this process (workers=1)"
                    ) from None


class Executor(Protocol):
    """Runs specs and yields one :class:`Outcome` per spec as runs finish. It may also define
    ``check(specs)``, which :meth:`~shiftsim.study.Study.run` calls before it writes anything
    (:class:`LocalPool`'s refuses shifts the worker processes cannot import)."""

    def run(self, specs: Sequence[RunSpec]) -> Iterator[Outcome]: ...

    def cancel(self) -> None: ...


# ----------------------------------------------------------------------------------------------
# in-process


class InProcess:
    """Runs specs one after another in this process."""

    name = "in-process"

    def __init__(self, device: str = "auto", threads: int | None = 1,
                 deterministic: bool = False) -> None:
        self.device, self.threads, self.deterministic = device, threads, deterministic

    def run(self, specs: Sequence[RunSpec]) -> Iterator[Outcome]:
        with torch_threads(self.threads):
            for s in specs:
                yield run_outcome(s.scenario, s.model, s.optimizer, s.seed, s.run_id,
                                  self.device, None, self.deterministic)

    def cancel(self) -> None:
        pass


# ----------------------------------------------------------------------------------------------
# local process pool


def _freeze_heap() -> None:
    """Take what a worker has built before its first run (torch, shiftsim, the scenarios and
    their data: most of its heap) out of the garbage collector's periodic full passes
    (``gc.freeze()``): those objects live as long as the worker anyway, and later full passes
    then traverse only what the runs create. Workers only: never the user's own process
    (``workers=1`` runs there). [speed] The robustness league's 8 worker processes (a 2-core
    AMD EPYC): full passes 8.3 s in all before, 1.6 s after (most of it while importing)."""
    import gc

    gc.freeze()


def _watch_parent(parent_pid: int) -> None:
    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:  # re-parented: the driver died
                os._exit(3)

    threading.Thread(target=watch, name="shiftsim-parent-watch", daemon=True).start()


def _worker_main(conn: Any, scenarios: dict[str, Scenario], device: str, threads: int | None,
                 parent_pid: int, deterministic: bool = False) -> None:
    """A pool worker: serve tasks until told to stop, then exit at once (the interpreter's
    orderly teardown of torch, pandas and pyarrow takes seconds and there is nothing to save:
    every result has been sent)."""
    code = 0
    try:
        _serve(conn, scenarios, device, threads, parent_pid, deterministic)
    except BaseException:  # a bug here, not in a run (runs report their own errors)
        code = 1
        with contextlib.suppress(Exception):
            traceback.print_exc()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _serve(conn: Any, scenarios: dict[str, Scenario], device: str, threads: int | None,
           parent_pid: int, deterministic: bool = False) -> None:
    """Receive task tuples, send back Outcomes, until told to stop."""
    ignore_sigint()  # Ctrl-C is the driver's business
    if deterministic:
        prepare_deterministic_env()  # before CUDA starts in this process
    _watch_parent(parent_pid)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    _freeze_heap()
    conn.send(("ready", os.getpid()))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        run_id, key, model, optimizer, seed = task
        out = run_outcome(scenarios[key], model, optimizer, seed, run_id, device, None,
                          deterministic)
        try:
            conn.send(("done", out))
        except (BrokenPipeError, OSError):
            return
        except Exception as exc:  # an unpicklable result: report it instead
            conn.send(("done", Outcome(run_id, "failed", error=f"cannot send the result back: "
                                       f"{type(exc).__name__}: {exc}", worker=_worker_name())))


@dataclass
class _Slot:
    proc: Any
    conn: Any
    ready: bool = False
    #: the tasks sent to it and not yet answered: the first is running, the others wait in
    #: its pipe (so it never waits for the driver between two runs)
    tasks: collections.deque = field(default_factory=collections.deque)
    started: float = 0.0
    stopping: bool = False  # told to exit (no work left for it)
    device: str = "auto"


GUARD_HINT = ("worker processes start by importing your script; if you run a study from a "
              "script, put the call under `if __name__ == \"__main__\":`")


class LocalPool:
    """A spawn-safe process pool of ``workers`` processes (one pipe each).

    Each worker is sent up to ``prefetch`` tasks ahead (default 2: the run it is running and
    the next one), so it starts its next run while the driver writes the last result. A worker
    that dies loses its running run (retried ``retries`` times in a fresh worker, then recorded
    as failed); the tasks waiting in its pipe go back to the queue. ``devices``: the device of
    each worker (:func:`~shiftsim.study.gpus.plan_workers`: GPUs round-robin); a new worker
    takes the device the fewest live workers use. Default: ``device`` for every worker.
    """

    name = "local"

    def __init__(self, workers: int, device: str = "auto", threads: int | None = 1,
                 retries: int = 1, start_timeout: float = 300.0, prefetch: int = 2,
                 deterministic: bool = False, devices: Sequence[str] | None = None) -> None:
        workers = check_range(workers, "workers", 1, integer=True)
        prefetch = check_range(prefetch, "prefetch", 1, integer=True)
        self.workers, self.device, self.threads = workers, device, threads
        self.deterministic = deterministic
        self.devices = tuple(devices) if devices else (device,)
        self.retries, self.start_timeout, self.prefetch = retries, start_timeout, prefetch
        self._slots: list[_Slot] = []

    def _next_device(self) -> str:
        """The device the fewest live workers use (the first such in ``devices``' order)."""
        live = [s.device for s in self._slots if not s.stopping]
        return min(dict.fromkeys(self.devices), key=lambda d: live.count(d))

    def _start(self, ctx: Any, table: dict[str, Scenario]) -> _Slot:
        here, there = ctx.Pipe(duplex=True)
        device = self._next_device()
        proc = ctx.Process(target=_worker_main, name="shiftsim-worker", daemon=True,
                           args=(there, table, device, self.threads, os.getpid(),
                                 self.deterministic))
        with sigint_ignored():  # a worker starts with Ctrl-C ignored
            proc.start()
        there.close()
        slot = _Slot(proc, here, started=time.monotonic(), device=device)
        self._slots.append(slot)
        return slot

    def _retire(self, slot: _Slot) -> None:
        if slot in self._slots:
            self._slots.remove(slot)
        try:
            slot.conn.close()
        except OSError:  # pragma: no cover
            pass
        if slot.proc.is_alive():
            slot.proc.terminate()
        slot.proc.join(timeout=5)

    def check(self, specs: Sequence[RunSpec]) -> None:
        """Raise, before anything is written, what :meth:`run` would raise on starting: a
        shift class the worker processes cannot import (:func:`check_portable`)."""
        check_portable(scenario_table(specs)[0].values())

    def run(self, specs: Sequence[RunSpec]) -> Iterator[Outcome]:
        table, tasks = scenario_table(specs)
        check_portable(table.values())
        ctx = mp.get_context("spawn")
        pending = collections.deque(tasks)
        deaths: collections.Counter[str] = collections.Counter()
        finished = False
        try:
            for _ in range(min(self.workers, len(pending))):
                self._start(ctx, table)
            while pending or any(s.tasks for s in self._slots):
                for s in self._slots:
                    if not s.ready or s.stopping:
                        continue
                    try:
                        while pending and len(s.tasks) < self.prefetch:
                            s.tasks.append(pending.popleft())
                            s.conn.send(s.tasks[-1])
                        if not s.tasks:  # no work left for it: it exits while others finish
                            s.stopping = True
                            s.conn.send(None)
                    except OSError:
                        pass  # the worker died: seen below through its sentinel
                waitables = [s.conn for s in self._slots] + [s.proc.sentinel for s in self._slots]
                mp_wait(waitables, timeout=1.0)
                for s in list(self._slots):
                    msg = None
                    try:
                        if s.conn.poll():
                            msg = s.conn.recv()
                    except (EOFError, OSError):
                        msg = None
                    if msg is not None:
                        if msg[0] == "ready":
                            s.ready = True
                        else:
                            done = msg[1]
                            s.tasks = collections.deque(t for t in s.tasks if t[0] != done.run_id)
                            yield done
                        continue
                    if s.proc.is_alive():
                        if not s.ready and time.monotonic() - s.started > self.start_timeout:
                            raise ShiftsimError(f"a worker process did not start within "
                                                f"{self.start_timeout:.0f} s")
                        continue
                    code = s.proc.exitcode
                    self._retire(s)
                    if s.stopping and not s.tasks:
                        continue  # it exited as told
                    # the worker died
                    if not s.ready:
                        raise ShiftsimError(f"a worker process exited (code {code}) before it "
                                            f"started; {GUARD_HINT}")
                    if s.tasks:
                        running, *waiting = s.tasks
                        pending.extendleft(reversed(waiting))  # never started: no retry used
                        run_id = running[0]
                        deaths[run_id] += 1
                        how = (f"killed by signal {-code}" if code is not None and code < 0
                               else f"exit code {code}")
                        log.warning("worker running %s died (%s)", run_id, how)
                        if deaths[run_id] > self.retries:
                            yield Outcome(run_id, "failed", error=(
                                f"the worker process died while running this run ({how}), "
                                f"{deaths[run_id]} times; out of memory?"), worker="")
                        else:
                            pending.appendleft(running)
                # replace dead workers while there is work for them
                active = [x for x in self._slots if not x.stopping]
                busy = sum(bool(x.tasks) for x in active)
                for _ in range(min(self.workers, len(pending) + busy) - len(active)):
                    self._start(ctx, table)
            finished = True
        finally:
            self._shutdown(graceful=finished)

    def _shutdown(self, graceful: bool) -> None:
        slots, self._slots = list(self._slots), []
        for s in slots:
            if graceful:
                try:
                    s.conn.send(None)
                except OSError:
                    pass
            elif s.proc.is_alive():
                s.proc.terminate()
        deadline = time.monotonic() + (10 if graceful else 3)
        for s in slots:
            s.proc.join(timeout=max(0.1, deadline - time.monotonic()))
            if s.proc.is_alive():
                s.proc.kill()
                s.proc.join(timeout=2)
            try:
                s.conn.close()
            except OSError:  # pragma: no cover
                pass

    def cancel(self) -> None:
        self._shutdown(graceful=False)


# ----------------------------------------------------------------------------------------------
# Ray


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ShiftsimError("backend='ray' needs Ray: pip install 'shiftsim[ray]'") from None
    return ray


def _ray_task(scenario: Scenario, model: Any, optimizer: Any, seed: int, run_id: str,
              device: str, threads: int | None, deterministic: bool = False) -> Outcome:
    if deterministic:
        prepare_deterministic_env()
    return run_outcome(scenario, model, optimizer, seed, run_id, device, threads,
                       deterministic)


#: the GPUs a ``device="auto"`` task asks for on a Ray cluster with GPUs when ``gpus_per_run``
#: is 0 (two tasks share a GPU, as two local workers do)
AUTO_GPUS_PER_RUN = 0.5


class RayExecutor:
    """Ray tasks: on the cluster at ``RAY_ADDRESS`` when set, else on a local Ray started with
    ``workers`` CPUs (and shut down afterwards). At most ``workers`` runs are in flight (default:
    the cluster's CPUs / ``cpus_per_run``). With ``device="auto"`` and ``gpus_per_run=0`` on a
    cluster with GPUs each task asks for :data:`AUTO_GPUS_PER_RUN` GPUs (Ray hides the GPUs
    from a task that asks for none, so "auto" would otherwise mean the CPU there)."""

    name = "ray"

    def __init__(self, workers: int | None, device: str = "auto", threads: int | None = 1,
                 gpus_per_run: float = 0.0, cpus_per_run: float = 1.0, max_retries: int = 1,
                 address: str | None = None, deterministic: bool = False) -> None:
        self.workers, self.device, self.threads = workers, device, threads
        self.deterministic = deterministic
        self.gpus_per_run, self.cpus_per_run = gpus_per_run, cpus_per_run
        self.max_retries = max_retries
        self.address = address if address is not None else os.environ.get("RAY_ADDRESS")
        self._ray: Any = None
        self._in_flight: dict[Any, tuple] = {}
        self._started = False

    def connect(self) -> Any:
        """Connect to Ray (start a local one when needed) and check the cluster can run the
        tasks; returns the ``ray`` module. :meth:`run` connects by itself."""
        ray = import_ray()
        if not ray.is_initialized():
            quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
            if self.address:
                ray.init(address=self.address, **quiet)
            else:
                ray.init(num_cpus=self.workers or os.cpu_count() or 1, include_dashboard=False,
                         **quiet)
                self._started = True
        self._ray = ray
        gpus = float(ray.cluster_resources().get("GPU", 0))
        if self.gpus_per_run > gpus:  # the tasks would wait for ever
            self.close()
            raise ShiftsimError(f"gpus_per_run={self.gpus_per_run:g} but the Ray cluster has "
                                f"{gpus:g} GPUs; use gpus_per_run=0 (CPU) or a cluster with "
                                "GPUs (RAY_ADDRESS)")
        if gpus and not self.gpus_per_run and self.device == "auto":
            # a task that asks for no GPU sees none (Ray sets CUDA_VISIBLE_DEVICES=''), so
            # "auto" would quietly run on the CPUs of a GPU cluster: ask for a share instead
            self.gpus_per_run = AUTO_GPUS_PER_RUN
            log.info("the Ray cluster has %g GPUs: device='auto' tasks ask for %g GPU each "
                     "(pass gpus_per_run to choose, device='cpu' for none)", gpus,
                     AUTO_GPUS_PER_RUN)
        return ray

    def close(self) -> None:
        """Shut down the local Ray this executor started (a cluster is left alone)."""
        if self._started and self._ray is not None:
            self._ray.shutdown()
        self._started = False

    def _slots(self, ray: Any) -> int:
        """Tasks in flight at most: ``workers``, or the cluster's CPUs over ``cpus_per_run``."""
        if self.workers is not None:
            return self.workers
        cpus = float(ray.cluster_resources().get("CPU", 1))
        return max(1, int(cpus / max(self.cpus_per_run, 1e-9)))

    def _drain(self, ray: Any, tasks: Sequence[Any], limit: int,
               submit: Callable[[Any], Any]) -> Iterator[tuple[Any, Any, str | None]]:
        """Submit ``tasks`` (``submit(task)`` returns its object ref) with at most ``limit``
        in flight; yield ``(task, result, None)`` as each finishes, or ``(task, None,
        error)`` when its worker died after its retries."""
        pending = collections.deque(tasks)
        while pending or self._in_flight:
            while pending and len(self._in_flight) < limit:
                t = pending.popleft()
                self._in_flight[submit(t)] = t
            done, _ = ray.wait(list(self._in_flight), num_returns=1, timeout=1.0)
            for ref in done:
                t = self._in_flight.pop(ref)
                try:
                    out, error = ray.get(ref), None
                except Exception as exc:  # the worker died after its retries, ...
                    msg = " ".join(str(exc).split())[:2000]
                    out, error = None, f"{type(exc).__name__}: {msg}"
                yield t, out, error

    def run(self, specs: Sequence[RunSpec]) -> Iterator[Outcome]:
        ray = self.connect()
        finished = False
        try:
            table, tasks = scenario_table(specs)
            refs = {key: ray.put(sc) for key, sc in table.items()}
            submit = ray.remote(_ray_task).options(
                num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run,
                max_retries=self.max_retries, name="shiftsim-run").remote
            for t, out, error in self._drain(ray, tasks, self._slots(ray), lambda t: submit(
                    refs[t[1]], t[2], t[3], t[4], t[0], self.device, self.threads,
                    self.deterministic)):
                yield out if error is None else Outcome(t[0], "failed",
                                                        error=f"Ray task failed: {error}")
            finished = True
        finally:
            if not finished:
                self.cancel()
            self.close()

    def cancel(self) -> None:
        ray, refs = self._ray, list(self._in_flight)
        self._in_flight.clear()
        if ray is None:
            return
        for ref in refs:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # already finished or gone
                pass
