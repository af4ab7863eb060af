"""The fleet executor: a study's compatible runs as fleets (:func:`shiftsim.fleet.run_fleet`).

Runs that share a scenario and a model, and that can be stacked
(:func:`shiftsim.fleet.stacked_program`), are split into fleets — many learners in one
vectorized program — sized to the device's memory (and to at most
``max_members``), about as many fleets per worker as keeps every worker busy. Each fleet hands
back one :class:`~shiftsim.study.executors.Outcome` per run, exactly as a run of its own would,
so the study's store, resume, reports and run ids do not change. The remaining runs (a run
alone in its group, an optimizer the fleet cannot run) go one by one, as without fleets.

With ``workers > 1`` fleets run in spawn-started worker processes (one torch thread each by
default); with one worker, in this process. A fleet that raises is rerun one run at a time, so
an error belongs to its run; a worker that dies takes its fleet with it, which is retried once
in a fresh worker and then recorded as failed.

Numbers: an MLP fleet member's trace does not depend on which other runs share its fleet (the
same spec gives the same trace bit for bit in any fleet; its hyperparameters are tensors in
any fleet, :func:`shiftsim.optim.stacking.group_hyper`). For a ReLU MLP that is exactly the
trace ``shiftsim.run`` gives (its default is this program with one member); for other models
it equals ``shiftsim.run``'s up to float rounding of the batched matmuls (see
:mod:`shiftsim.fleet`), and ``fleet=False`` reproduces ``shiftsim.run`` bit for bit. A CNN's
convolutions, batched over the members with ``torch.func.vmap``, round differently with the
fleet's size (measured: 1e-7 relative in the loss after 36 steps). These hold on the CPU with
one torch thread, as studies run (measured with 2 threads: a fleet's gradients differ in the
last bits from a smaller fleet's). On CUDA the batched-GEMM kernels are
chosen by shape, so a member's trace may depend on its fleet's size in the last bits (and so
differ from ``run()``'s); with ``deterministic=True`` the same fleet sizes on the same GPU
model and software repeat bit for bit (:func:`shiftsim.runtime.deterministic_mode`).

>>> import shiftsim as ss
>>> sc = ss.label_flip_tasks(ss.data.digits(), rate=1.0, tasks=2, steps_per_task=20)
>>> specs = [RunSpec(sc, ss.models.mlp(hidden=(8,)), ss.optim.spec(o), s)
...          for o in ("sgdm", "adam") for s in range(3)]
>>> fleets, singles = plan_fleets(specs, workers=1, max_members=4)
>>> [len(f) for f in fleets], len(singles)
([3, 3], 0)
>>> outcomes = list(FleetExecutor(workers=1, device="cpu").run(specs))
>>> sorted(o.status for o in outcomes) == ["ok"] * 6
True
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import math
import multiprocessing as mp
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import ShiftsimError, check_range
from ..runspec import RunSpec, canonical_json
from ..runtime import prepare_deterministic_env, torch_threads
from .executors import (
    GUARD_HINT,
    Outcome,
    _freeze_heap,
    _watch_parent,
    _worker_name,
    check_portable,
    run_outcome,
)
from .signals import ignore_sigint, sigint_ignored

#: the most members of one fleet on the CPU (larger fleets gain little there) and on a GPU
MAX_MEMBERS = {"cpu": 128, "cuda": 2048}
#: fleets smaller than this are not split further to give every worker work
MIN_SPLIT = 16
#: the share of the free device memory (divided among the workers) that fleets may use
MEMORY_FRACTION = 0.5
#: what each worker process's own CUDA context takes on its GPU (kernels, cuBLAS workspace),
#: held back from the free memory the driver measures before the workers start
CUDA_CONTEXT_BYTES = 600 * 2**20


def _key(spec: RunSpec) -> str:
    """Runs with equal keys can share a fleet: the same scenario and the same model (and, on a
    real-time stream, the same cost)."""
    payload = {"scenario": spec.payload["scenario"], "model": spec.payload["model"]}
    if spec.scenario.realtime:  # one training schedule per program: one cost per fleet
        payload["cost"] = spec.optimizer.effective_cost
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:16]


def _available_bytes(device: str) -> int:
    """Free memory on ``device``: CUDA's free memory, else the host's available RAM."""
    import torch

    from ..runtime import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    try:  # pragma: no cover - not Linux
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 4 * 2**30


def plan_fleets(specs: Sequence[RunSpec], workers: int = 1, device: str = "cpu",
                max_members: int | None = None,
                memory_fraction: float = MEMORY_FRACTION, sharing: int | None = None
                ) -> tuple[list[list[RunSpec]], list[RunSpec]]:
    """Split ``specs`` into fleets and runs to go alone: ``(fleets, singles)``.

    A fleet holds runs of one scenario and one model that can be stacked
    (:func:`shiftsim.fleet.stacked_program`), at most ``max_members`` (default
    :data:`MAX_MEMBERS` for the device) and at most what ``memory_fraction`` of the free
    device memory, shared by ``workers``, holds
    (:func:`shiftsim.fleet.fleet_memory_bytes`; ``sharing``: the workers that share one
    device, default ``workers``; on CUDA each one's context, :data:`CUDA_CONTEXT_BYTES`, is
    held back first). A group larger than that is split into
    near-equal fleets; groups are also split (down to :data:`MIN_SPLIT` members) until there
    are about two fleets per worker. A group of one run goes alone.
    """
    from ..fleet import fleet_memory_bytes, stacked_program
    from ..runtime import resolve_device

    workers = check_range(workers, "workers", 1, integer=True)
    max_members = check_range(max_members, "max_members", 1, integer=True, optional=True)
    if not (isinstance(memory_fraction, (int, float)) and 0 < memory_fraction <= 1):
        raise ShiftsimError(f"memory_fraction must be in (0, 1], got {memory_fraction!r}")
    dev = resolve_device(device)
    cap = max_members if max_members is not None else MAX_MEMBERS.get(dev.type, 128)
    groups: dict[str, list[RunSpec]] = {}
    singles: list[RunSpec] = []
    ok: dict[Any, bool] = {}
    for s in specs:
        if (s.model, s.optimizer) not in ok:
            ok[s.model, s.optimizer] = stacked_program(
                s.model, s.optimizer, s.scenario.data.input_shape) is not None
        if ok[s.model, s.optimizer]:
            groups.setdefault(_key(s), []).append(s)
        else:
            singles.append(s)
    sharing = workers if sharing is None else check_range(sharing, "sharing", 1, integer=True)
    budget = 0.0
    if groups:
        free = _available_bytes(device)
        if dev.type == "cuda":
            free = max(0, free - sharing * CUDA_CONTEXT_BYTES)
        budget = memory_fraction * free / sharing
    fleetable = sum(len(g) for g in groups.values() if len(g) > 1)
    target = max(MIN_SPLIT, math.ceil(fleetable / (2 * workers))) if fleetable else 1
    fleets: list[list[RunSpec]] = []
    for group in groups.values():
        if len(group) == 1:
            singles += group
            continue
        first = group[0]
        try:
            per_member = fleet_memory_bytes(first.scenario, first.model, 1)
        except Exception:  # a model that cannot be built: its runs fail one by one
            singles += group
            continue
        size = max(1, min(cap, target, int(budget // per_member)))
        n = math.ceil(len(group) / size)
        bounds = [round(i * len(group) / n) for i in range(n + 1)]
        fleets += [group[a:b] for a, b in zip(bounds, bounds[1:])]
    fleets.sort(key=len, reverse=True)  # the largest first: the tail is the small ones
    return fleets, singles


# ----------------------------------------------------------------------------------------------
# one fleet


def run_fleet_outcomes(scenario: Any, model: Any, members: Sequence[tuple[str, Any, int]],
                       device: str = "auto", threads: int | None = None,
                       check_every: int = 64, compile: bool = False,
                       deterministic: bool = False) -> list[Outcome]:
    """Run ``members`` — ``(run_id, optimizer, seed)`` triples — as one fleet and package one
    Outcome per run, as :func:`~shiftsim.study.executors.run_outcome` does for one run. When
    the fleet runs out of device memory it is split in two halves, each run as a fleet again
    (down to single runs); when it raises anything else, its runs are run one by one (so an
    error is recorded with its own run)."""
    from ..fleet import run_fleet

    t0 = time.perf_counter()
    try:
        with torch_threads(threads):
            results = run_fleet(scenario, model, [(o, s) for _, o, s in members],
                                device=device, check_every=check_every, compile=compile,
                                deterministic=deterministic)
    except Exception as exc:
        if is_out_of_memory(exc) and len(members) > 1:
            del exc  # drop the traceback's references to the fleet's tensors
            _free_cached_memory()
            half = len(members) // 2
            return [o for part in (members[:half], members[half:])
                    for o in run_fleet_outcomes(scenario, model, part, device, threads,
                                                check_every, compile, deterministic)]
        return [run_outcome(scenario, model, o, s, rid, device, threads, deterministic)
                for rid, o, s in members]
    import torch

    wall = (time.perf_counter() - t0) / len(members)
    worker = f"{_worker_name()} fleet of {len(members)}"
    used = threads if threads is not None else torch.get_num_threads()
    out = []
    for (rid, _, _), result in zip(members, results):
        m = result.measure()
        out.append(Outcome(rid, m.status, result if m.status != "failed" else None, m.summary,
                           m.scores, m.error, m.traceback, wall, worker, used).packed())
    return out


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is torch's out-of-memory error (CUDA's, or the device-generic one)."""
    import torch

    kinds = tuple(k for k in (getattr(torch, "OutOfMemoryError", None),
                              getattr(torch.cuda, "OutOfMemoryError", None)) if k is not None)
    return bool(kinds) and isinstance(exc, kinds)


def _free_cached_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------
# worker processes

_SCENARIOS: dict[str, Any] = {}
#: this worker's device, when the executor assigns devices per worker (GPUs round-robin)
_WORKER: dict[str, Any] = {}


def _init_worker(scenarios: dict[str, Any], threads: int | None, parent_pid: int,
                 deterministic: bool = False, devices: tuple[str, ...] = (),
                 counter: Any = None) -> None:
    ignore_sigint()  # Ctrl-C is the driver's business
    if devices and counter is not None:  # the i-th worker started takes devices[i % n]
        with counter.get_lock():
            i = counter.value
            counter.value += 1
        _WORKER["device"] = devices[i % len(devices)]
    if deterministic:
        prepare_deterministic_env()  # before CUDA starts in this process
    _watch_parent(parent_pid)  # exit when the driver dies
    _SCENARIOS.update(scenarios)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    _freeze_heap()


def _execute(kind: str, scenario: Any, model: Any, members: list[tuple[str, Any, int]],
             device: str, threads: int | None, check_every: int, compile: bool,
             deterministic: bool = False) -> list[Outcome]:
    if kind == "fleet":
        return run_fleet_outcomes(scenario, model, members, device, threads, check_every,
                                  compile, deterministic)
    return [run_outcome(scenario, model, o, s, rid, device, threads, deterministic)
            for rid, o, s in members]


def _task(kind: str, key: str, model: Any, members: list[tuple[str, Any, int]],
          device: str, *opts: Any) -> list[Outcome]:
    """A worker's task: the scenario comes from the table the worker got at start, the device
    from the worker's assignment when it has one."""
    return _execute(kind, _SCENARIOS[key], model, members, _WORKER.get("device", device), *opts)


class FleetExecutor:
    """Runs a study's specs as fleets (see the module docstring); an executor for
    :meth:`shiftsim.Study.run`, which uses it with ``fleet=True``.

    Args:
        workers: worker processes (1: in this process).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` ...
        threads: torch intra-op threads per worker (default 1).
        max_members: the most runs per fleet (default :data:`MAX_MEMBERS` for the device).
        memory_fraction: the share of free device memory fleets may use, over all workers.
        check_every, compile: passed to :func:`shiftsim.fleet.run_fleet`.
        retries: how often a fleet whose worker died is retried in a fresh worker.
        deterministic: run every fleet under :func:`shiftsim.runtime.deterministic_mode`.
        devices: the device of each worker process (:func:`~shiftsim.study.gpus.plan_workers`:
            GPUs round-robin); default ``device`` for all. Fleets are sized for the memory of
            one device shared by the workers assigned to it.
    """

    name = "fleet"

    def __init__(self, workers: int = 1, device: str = "auto", threads: int | None = 1,
                 max_members: int | None = None, memory_fraction: float = MEMORY_FRACTION,
                 check_every: int = 64, compile: bool = False, retries: int = 1,
                 deterministic: bool = False, devices: Sequence[str] | None = None) -> None:
        workers = check_range(workers, "workers", 1, integer=True)
        self.workers, self.device, self.threads = workers, device, threads
        self.deterministic = deterministic
        self.devices = tuple(devices)[:workers] if devices else ()
        self.max_members, self.memory_fraction = max_members, memory_fraction
        self.check_every, self.compile, self.retries = check_every, compile, retries
        self._pool: cf.ProcessPoolExecutor | None = None
        self.fleets: list[int] = []  # the sizes of the fleets of the last run()
        #: the plan made by check(): (run ids, scenario table, tasks), used by the next run()
        self._checked: tuple[list[str], dict[str, Any], list[tuple]] | None = None

    def _tasks(self, specs: Sequence[RunSpec]) -> tuple[dict[str, Any], list[tuple]]:
        used = self.devices or (self.device,) * self.workers
        sharing = max(used.count(d) for d in set(used))
        fleets, singles = plan_fleets(specs, self.workers, used[0], self.max_members,
                                      self.memory_fraction, sharing)
        self.fleets = [len(f) for f in fleets]
        table: dict[str, Any] = {}
        tasks: list[tuple] = []

        def add(kind: str, runs: list[RunSpec]) -> None:
            key = _key(runs[0])
            table.setdefault(key, runs[0].scenario)
            tasks.append((kind, key, runs[0].model,
                          [(r.run_id, r.optimizer, r.seed) for r in runs]))

        for f in fleets:
            add("fleet", f)
        for s in singles:
            add("single", [s])
        return table, tasks

    def check(self, specs: Sequence[RunSpec]) -> None:
        """Raise, before anything is written, what :meth:`run` would raise on starting: a
        shift class the worker processes cannot import, when the runs go to a pool (more than
        one worker and more than one task). The plan is kept for :meth:`run`."""
        table, tasks = self._tasks(specs)
        self._checked = ([s.run_id for s in specs], table, tasks)
        if self.workers > 1 and len(tasks) > 1:
            check_portable(table.values())

    def run(self, specs: Sequence[RunSpec]) -> Iterator[Outcome]:
        checked, self._checked = self._checked, None
        if checked is not None and checked[0] == [s.run_id for s in specs]:
            table, tasks = checked[1], checked[2]
        else:
            table, tasks = self._tasks(specs)
        opts = (self.device, self.threads, self.check_every, self.compile, self.deterministic)
        if self.workers == 1 or len(tasks) == 1:
            if self.devices:
                opts = (self.devices[0], *opts[1:])
            with torch_threads(self.threads):
                for kind, key, model, members in tasks:
                    yield from _execute(kind, table[key], model, members, *opts)
            return
        yield from self._run_pool(table, tasks, opts)

    def _run_pool(self, table: dict[str, Any], tasks: list[tuple], opts: tuple
                  ) -> Iterator[Outcome]:
        check_portable(table.values())
        ctx = mp.get_context("spawn")
        pending = list(tasks)
        tries: dict[int, int] = {}
        while pending:
            pool = self._pool = cf.ProcessPoolExecutor(
                min(self.workers, len(pending)), mp_context=ctx, initializer=_init_worker,
                initargs=(table, self.threads, os.getpid(), self.deterministic, self.devices,
                          ctx.Value("i", 0) if self.devices else None))
            retry: list[tuple] = []
            clean = False
            try:
                try:  # a worker that dies while starting: most likely an unguarded script
                    with sigint_ignored():
                        first = pool.submit(os.getpid)
                    first.result()
                except cf.process.BrokenProcessPool:
                    raise ShiftsimError(f"a fleet worker process exited before it started; "
                                        f"{GUARD_HINT}") from None
                with sigint_ignored():  # submit() starts the workers: they inherit it
                    futures = {pool.submit(_task, *t, *opts): t for t in pending}
                for fut in cf.as_completed(futures):
                    task = futures[fut]
                    try:
                        outcomes = fut.result()
                    except cf.process.BrokenProcessPool:  # the worker died: out of memory?
                        n = tries[id(task)] = tries.get(id(task), 0) + 1
                        if n > self.retries:
                            yield from self._died(task)
                        else:
                            retry.append(task)
                        continue
                    yield from outcomes
                clean = True
            finally:
                self._close(pool, wait=clean)
            pending = retry

    @staticmethod
    def _died(task: tuple) -> Iterator[Outcome]:
        kind, _, _, members = task
        what = f"its fleet of {len(members)} runs" if kind == "fleet" else "this run"
        for rid, _, _ in members:
            yield Outcome(rid, "failed", error=(
                f"the worker process died while running {what}, again after a retry; out of "
                "memory? run the study with fleet=False or a smaller max_members"), worker="")

    def _close(self, pool: cf.ProcessPoolExecutor, wait: bool) -> None:
        if not wait:
            for p in list((getattr(pool, "_processes", None) or {}).values()):
                if p.is_alive():
                    p.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        if self._pool is pool:
            self._pool = None

    def cancel(self) -> None:
        pool = self._pool
        if pool is not None:
            self._close(pool, wait=False)
