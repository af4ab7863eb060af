"""Fleets as Ray tasks: a study's runs planned into fleets as on the local backend, each fleet
one Ray task, the driver alone writing the store.

:class:`RayFleetExecutor` groups the runs as :class:`~shiftsim.study.fleet_executor.
FleetExecutor` does (:func:`~shiftsim.study.fleet_executor.plan_fleets`: one scenario and one
model per fleet, split so every Ray worker has work) and sends each fleet, or each run that
goes alone, as one task asking for ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs (per fleet:
a fleet is one program on one device). The task sizes its fleet where it runs: it measures the
free memory of its own device and splits a fleet that would not fit
(:func:`run_sized_fleet`); a fleet that still runs out of memory is split in halves
(:func:`~shiftsim.study.fleet_executor.run_fleet_outcomes`). Every run's outcome comes back to
the driver, which writes it, so traces are the local backend's bit for bit (one torch thread
per task) and nothing is written twice.

A worker killed mid-fleet: Ray retries the task (``max_retries``, default 1) in a fresh
worker; when it dies again every run of the fleet is recorded as failed with Ray's cause, and
a resumed study runs them again (``retry_failed=True``).

>>> import shiftsim as ss
>>> sc = ss.label_flip_tasks(ss.data.digits(), rate=1.0, tasks=2, steps_per_task=20)
>>> specs = [RunSpec(sc, ss.models.mlp(hidden=(8,)), ss.optim.spec("sgdm"), s) for s in range(4)]
>>> [(kind, len(members)) for kind, _, _, members in fleet_tasks(specs, 2)[1]]
[('fleet', 4)]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ..runspec import RunSpec
from .executors import Outcome, RayExecutor
from .fleet_executor import (
    MAX_MEMBERS,
    MEMORY_FRACTION,
    _available_bytes,
    _execute,
    _key,
    plan_fleets,
)

__all__ = ["RayFleetExecutor", "fleet_tasks", "run_sized_fleet"]


def fleet_tasks(specs: Sequence[RunSpec], workers: int, device_type: str = "cpu",
                max_members: int | None = None) -> tuple[dict[str, Any], list[tuple]]:
    """``({scenario key: scenario}, [(kind, key, model, members)])``: the specs as fleets
    (``kind`` "fleet") and runs that go alone ("single"), ``members`` ``(run_id, optimizer,
    seed)`` triples. Planned in the driver by shape only (at most :data:`MAX_MEMBERS` of
    ``device_type``); each task checks its memory where it runs."""
    cap = max_members if max_members is not None else MAX_MEMBERS.get(device_type, 128)
    fleets, singles = plan_fleets(specs, workers, "cpu", cap, memory_fraction=1.0)
    table: dict[str, Any] = {}
    tasks: list[tuple] = []
    for kind, runs in [("fleet", f) for f in fleets] + [("single", [s]) for s in singles]:
        key = _key(runs[0])
        table.setdefault(key, runs[0].scenario)
        tasks.append((kind, key, runs[0].model, [(r.run_id, r.optimizer, r.seed) for r in runs]))
    return table, tasks


def run_sized_fleet(kind: str, scenario: Any, model: Any, members: list[tuple[str, Any, int]],
                    device: str, threads: int | None, check_every: int = 64,
                    compile: bool = False, deterministic: bool = False,
                    memory_fraction: float = MEMORY_FRACTION) -> list[Outcome]:
    """Run one planned task where it is: a fleet larger than ``memory_fraction`` of this
    device's free memory holds is split into fleets that fit, run one after another."""
    from ..fleet import fleet_memory_bytes

    if kind == "fleet" and len(members) > 1:
        try:
            per = fleet_memory_bytes(scenario, model, 1)
            fits = max(1, int(memory_fraction * _available_bytes(device) // per))
        except Exception:  # the fleet itself will say what is wrong
            fits = len(members)
        if fits < len(members):
            n = -(-len(members) // fits)
            bounds = [round(i * len(members) / n) for i in range(n + 1)]
            return [o for a, b in zip(bounds, bounds[1:])
                    for o in _execute("fleet" if b - a > 1 else "single", scenario, model,
                                      members[a:b], device, threads, check_every, compile,
                                      deterministic)]
    return _execute(kind, scenario, model, members, device, threads, check_every, compile,
                    deterministic)


def _ray_fleet_task(scenario: Any, kind: str, model: Any, members: list[tuple[str, Any, int]],
                    device: str, threads: int | None, check_every: int, compile: bool,
                    deterministic: bool) -> list[Outcome]:
    from ..runtime import prepare_deterministic_env, torch_threads

    if deterministic:
        prepare_deterministic_env()  # before CUDA starts in this worker
    with torch_threads(threads):
        return run_sized_fleet(kind, scenario, model, members, device, threads, check_every,
                               compile, deterministic)


class RayFleetExecutor(RayExecutor):
    """Ray tasks of fleets (see the module docstring); what ``Study.run(backend="ray")`` uses
    when some runs can share a fleet. Arguments as :class:`RayExecutor`'s (``cpus_per_run``
    and ``gpus_per_run`` are per task: per fleet), plus ``max_members``, ``check_every`` and
    ``compile`` as :class:`~shiftsim.study.fleet_executor.FleetExecutor`'s."""

    name = "ray"

    def __init__(self, workers: int | None, device: str = "auto", threads: int | None = 1,
                 gpus_per_run: float = 0.0, cpus_per_run: float = 1.0, max_retries: int = 1,
                 address: str | None = None, deterministic: bool = False,
                 max_members: int | None = None, check_every: int = 64,
                 compile: bool = False) -> None:
        super().__init__(workers, device, threads, gpus_per_run, cpus_per_run, max_retries,
                         address, deterministic)
        self.max_members, self.check_every, self.compile = max_members, check_every, compile
        self.fleets: list[int] = []  # the sizes of the fleets of the last run()

    def run(self, specs: Sequence[RunSpec]) -> Iterator[Outcome]:
        ray = self.connect()
        finished = False
        try:
            limit = self._slots(ray)
            target = "cuda" if self.gpus_per_run else "cpu"
            table, tasks = fleet_tasks(specs, limit, target, self.max_members)
            self.fleets = [len(t[3]) for t in tasks if t[0] == "fleet"]
            refs = {key: ray.put(sc) for key, sc in table.items()}
            submit = ray.remote(_ray_fleet_task).options(
                num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run,
                max_retries=self.max_retries, name="shiftsim-fleet").remote
            for t, outs, error in self._drain(ray, tasks, limit, lambda t: submit(
                    refs[t[1]], t[0], t[2], t[3], self.device, self.threads,
                    self.check_every, self.compile, self.deterministic)):
                if error is not None:
                    what = f"its fleet of {len(t[3])} runs" if t[0] == "fleet" else "it"
                    outs = [Outcome(rid, "failed", error=f"Ray task failed running {what}: "
                                    f"{error}") for rid, _, _ in t[3]]
                yield from outs
            finished = True
        finally:
            if not finished:
                self.cancel()
            self.close()
