"""GPU-aware local studies: how many worker processes, and which device each one uses.

On the CPU a study runs one worker per core. On CUDA each GPU gets :data:`WORKERS_PER_GPU`
workers by default (``gpus_per_run=f`` gives ``1 / f`` per GPU instead: 0.25 -> 4 workers
share a GPU), and workers are assigned to the GPUs round-robin (``cuda:0``, ``cuda:1``,
``cuda:0`` ...). ``device="cuda:N"`` keeps every worker on GPU N.

>>> plan_workers("cpu", None, cpus=2)
WorkerPlan(workers=2, devices=('cpu', 'cpu'))
>>> plan_workers("cpu", 3).devices
('cpu', 'cpu', 'cpu')
>>> plan_workers("cpu", 1, gpus_per_run=0.5)
Traceback (most recent call last):
...
shiftsim.errors.ShiftsimError: gpus_per_run=0.5 needs a CUDA device, but device 'cpu' ...
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from ..errors import ShiftsimError
from ..runtime import resolve_device

__all__ = ["WORKERS_PER_GPU", "WorkerPlan", "cores", "plan_workers"]

#: default worker processes per GPU: one trains while the other assembles and sends results
WORKERS_PER_GPU = 2


def cores() -> int:
    """The number of cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class WorkerPlan:
    """``workers`` processes; ``devices[i]`` is the device of the i-th worker started."""

    workers: int
    devices: tuple[str, ...]

    @property
    def per_device(self) -> int:
        """The most workers that share one device (its memory is divided among them)."""
        return max(self.devices.count(d) for d in set(self.devices)) if self.devices else 1


def plan_workers(device: str, workers: int | None, gpus_per_run: float = 0.0,
                 cpus: int | None = None) -> WorkerPlan:
    """The local workers of a study on ``device``: how many (``workers``, or the default for
    the device) and each one's device (CUDA GPUs round-robin; anything else as given).

    ``gpus_per_run`` (0 < f <= 1, CUDA only) sets the default workers per GPU to ``1 / f``;
    0 keeps :data:`WORKERS_PER_GPU`. ``cpus``: the CPU default (the cores this process may
    use when None). ``torch.cuda.device_count()`` says how many GPUs there are.
    """
    import torch

    dev = resolve_device(device)
    n_cpus = cores() if cpus is None else cpus
    if dev.type != "cuda":
        if gpus_per_run:
            raise ShiftsimError(f"gpus_per_run={gpus_per_run:g} needs a CUDA device, but "
                                f"device {device!r} runs on the {dev.type.upper()}; use "
                                f"gpus_per_run=0 or device='cuda'")
        n = n_cpus if workers is None else workers
        return WorkerPlan(n, (device,) * n)
    if gpus_per_run > 1:
        raise ShiftsimError(f"gpus_per_run={gpus_per_run:g}: a local run uses one GPU; use a "
                            "value in (0, 1] (a fraction: GPUs shared by 1/f runs)")
    gpus = [dev.index] if dev.index is not None else \
        list(range(max(1, torch.cuda.device_count())))
    per_gpu = WORKERS_PER_GPU if not gpus_per_run else max(1, math.floor(1 / gpus_per_run + 1e-9))
    n = len(gpus) * per_gpu if workers is None else workers
    return WorkerPlan(n, tuple(f"cuda:{gpus[i % len(gpus)]}" for i in range(n)))
