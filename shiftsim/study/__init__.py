"""Robustness studies: scenarios x models x optimizers x seeds, run in parallel, resumable.

A :class:`Study` is a grid of :class:`RunSpec` (each with a stable content hash as its run id;
:mod:`~shiftsim.study.grid`); :meth:`Study.run` (:mod:`~shiftsim.study.runner`) runs the runs
not yet complete in ``out_dir`` — in this process (``workers=1``), in a spawn-safe pool of
local processes (``backend="local"``, the default; on CUDA GPUs assigned round-robin,
:mod:`~shiftsim.study.gpus`) or as Ray tasks (``backend="ray"``; fleets as tasks,
:mod:`~shiftsim.study.ray_fleets`) — and
the driver alone writes each result to the store (:mod:`shiftsim.store`) as it arrives. Resume
is the default: complete runs are skipped, so a second run of a complete study does nothing,
and a study killed at any moment loses at most the runs in flight.

Failed runs (the run raised) are complete-but-failed: they are recorded with their error and
kept on resume; ``retry_failed=True`` runs them again. Diverged runs (non-finite loss) are
results and are never rerun. Every run uses one torch thread by default (``threads=1``), so on
the CPU a spec gives the same trace bit for bit in-process, in the pool and on Ray (on CUDA:
with ``deterministic=True``, the same GPU model and software, and the same fleet sizes).

>>> import tempfile, shiftsim as ss
>>> data = ss.data.digits()
>>> study = Study("mini", scenarios=flip_rates(data, [0.0, 1.0], tasks=2, steps_per_task=30),
...               model=ss.models.mlp(hidden=(16,)), optimizers=lr_grid("sgdm", [0.05]),
...               seeds=2)
>>> study
Study('mini': 2 scenarios x 1 model x 1 optimizer x 2 seeds = 4 runs)
>>> with tempfile.TemporaryDirectory() as out:
...     report = study.run(out, workers=1, progress=False)
...     again = study.run(out, workers=1, progress=False)
...     runs = ss.store.load(out).runs
mini: 4/4 runs complete (4 ran now)...
mini: 4/4 runs complete (4 already complete)...
>>> report.done, again.done, again.skipped, sorted(runs["severity"].unique().tolist())
(4, 0, 4, [0.0, 1.0])
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ShiftsimError
from ..runspec import (
    HASH_FORMAT,
    RunSpec,
    canonical_json,
    content_hash,
    freeze_labels,
    labels_from_info,
)
from .axes import Axis, flip_rates, hparam_grid, lr_grid, severity_axis, views
from .executors import (
    Executor,
    InProcess,
    LocalPool,
    Outcome,
    RayExecutor,
    execute,
    import_ray,
    run_outcome,
)
from .fleet_executor import FleetExecutor, plan_fleets
from .gpus import WorkerPlan, plan_workers
from .grid import StudyGrid
from .ray_fleets import RayFleetExecutor
from .runner import BACKENDS, StudyRunReport, default_workers, run_study
from .tuning import Tuning

__all__ = [
    "Axis", "BACKENDS", "Executor", "FleetExecutor", "HASH_FORMAT", "InProcess", "LocalPool",
    "Outcome", "RayExecutor", "RayFleetExecutor", "RunSpec", "Study", "StudyGrid",
    "StudyRunReport", "Tuning", "WorkerPlan", "canonical_json", "content_hash",
    "default_workers", "execute", "flip_rates", "freeze_labels", "hparam_grid", "import_ray",
    "labels_from_info", "lr_grid", "plan_fleets", "plan_workers", "run_outcome",
    "severity_axis", "study_from_file", "views",
]


class Study(StudyGrid):
    """A robustness study: its grid of runs (:class:`~shiftsim.study.grid.StudyGrid`: every
    combination of scenarios, models, optimizers and seeds, each run a :class:`RunSpec`) and
    :meth:`run`, which runs them into a results folder.

    Args:
        name: the study's name (``study.json``; a results folder holds one study).
        scenarios: a dict label -> Scenario (e.g. :func:`flip_rates`), a list of scenarios
            (labelled by their names) or one scenario.
        model: a ModelSpec or a dict label -> ModelSpec (``models=`` is the same argument).
        optimizers: a dict label -> OptimizerSpec or registry name (e.g. :func:`lr_grid`), a
            list, or one.
        seeds: a count (``range(seeds)``) or a list of seeds; default 10, the evaluation
            seeds of the comparison protocol (a report draws no verdict below 5 seeds).
        description: free text kept in ``study.json``.
        tuning: a :class:`Tuning`: tune each optimizer on tuning seeds first, then evaluate it
            at its chosen setting (:mod:`shiftsim.study.tuning`).
        where: keep only the grid points whose labels satisfy ``where(labels)`` (e.g. a model
            only on some datasets: ``lambda r: r["model"] != "cnn" or "fashion" in
            r["scenario"]``); default every combination.
    """

    def run(self, out_dir: str | os.PathLike, workers: int | None = None,
            backend: str = "local", resume: bool = True, progress: bool = True, *,
            retry_failed: bool = False, device: str = "auto", threads: int | None = 1,
            gpus_per_run: float = 0.0, executor: Executor | None = None,
            fleet: bool | None = None, deterministic: bool = False) -> StudyRunReport:
        """Run every run not yet complete in ``out_dir`` and write each result as it arrives.

        Args:
            out_dir: the results folder (created; it holds one study).
            workers: runs in parallel; default: the number of cores (on CUDA: 2 per GPU).
                ``1`` runs in this process. With Ray: the most tasks in flight (default: the
                cluster's CPUs).
            backend: ``"local"`` (a spawn-safe process pool) or ``"ray"`` (Ray tasks on the
                cluster at ``RAY_ADDRESS``, or on a local Ray started for the study).
            resume: skip runs that are complete in ``out_dir`` (False: redo every run).
            progress: show a progress bar (runs done/total, failures, ETA).
            retry_failed: also redo runs recorded as failed (they are kept by default).
            device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` ...
            threads: torch intra-op threads per run (default 1: bit-identical results on every
                backend, and the fastest for small models); None leaves torch's setting.
            gpus_per_run: GPUs each run (each fleet) uses. On Ray what each task asks for
                (fractions share a GPU; needed for ``device="cuda"``, since Ray hides the GPUs
                from tasks that ask for none). Locally on CUDA, ``1 / gpus_per_run`` workers
                share each GPU (default 2 per GPU, GPUs assigned round-robin:
                :mod:`~shiftsim.study.gpus`); on the CPU it must be 0.
            executor: a custom executor (overrides ``backend`` and ``workers``).
            fleet: run runs of one scenario and model as fleets, many learners in one
                vectorized program (:mod:`~shiftsim.study.fleet_executor`; for a ReLU MLP
                the results equal ``shiftsim.run``'s bit for bit, for other models up to
                float rounding). None (default): whenever some runs can share a fleet,
                locally or on Ray (each fleet one Ray task:
                :mod:`~shiftsim.study.ray_fleets`); False: one run at a time.
            deterministic: every run under torch's deterministic settings
                (:func:`shiftsim.runtime.deterministic_mode`; worker processes set
                ``CUBLAS_WORKSPACE_CONFIG`` before CUDA starts). Needed for CUDA results
                that repeat bit for bit (same GPU model, driver, CUDA/cuDNN and torch
                versions, same fleet sizes); CPU results repeat without it.

        Subnormal floats: as ``$SHIFTSIM_DENORMALS`` says where each run runs (``ieee``, the
        default, or ``flush``: :func:`shiftsim.runtime.denormals`; local workers inherit this
        process's environment, Ray tasks their cluster's), recorded in each run's
        ``info["determinism"]["denormals"]``; a bad value fails before anything runs.

        A results folder holds runs of one device type: resuming it on another (runs made on
        the CPU, now on CUDA) raises a one-line error before anything runs, since the random
        draws differ by device. Run ids do not name the device.

        Garbage collection: while a stage's runs go (and while a tuning selection reads the
        folder), Python's collector skips the objects that existed when it began
        (:func:`shiftsim.runtime.frozen_heap`: ``gc.freeze()``, undone at its end, also on
        Ctrl-C; nothing where objects are frozen already); worker processes freeze theirs for
        good before their first run.

        Returns a :class:`StudyRunReport` and prints its one-line summary. Ctrl-C stops the
        workers, leaves only complete runs in ``out_dir`` and raises KeyboardInterrupt.
        """
        return run_study(self, out_dir, workers, backend, resume, progress,
                         retry_failed=retry_failed, device=device, threads=threads,
                         gpus_per_run=gpus_per_run, executor=executor, fleet=fleet,
                         deterministic=deterministic)


def study_from_file(path: str | os.PathLike) -> Study:
    """Load a study file: a Python file that defines ``study = Study(...)``."""
    from ..pyfile import load_python_file

    ns = load_python_file(path, "study")
    study = ns["study"]
    if not isinstance(study, Study):
        raise ShiftsimError(f"{Path(path).name}: 'study' must be a shiftsim Study, got "
                            f"{type(study).__name__}")
    if study.source is None:  # where it came from: reports say how to rerun it
        study.source = str(path)
    return study
