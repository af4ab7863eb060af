"""The results store: a folder of runs, written atomically, loaded as tidy DataFrames.

Layout (docs/architecture.md)::

    out_dir/
      study.json                 the study: name, axes, run ids and labels (written at start)
      runs.parquet, phases.parquet   derived indexes, refreshed at the end of every study.run()
      runs/<run_id>/
        spec.json                the RunSpec (scenario, model, optimizer, seed, labels)
        trace.parquet            one row per step (run_id, step, phase, n, correct, ...)
        evals.parquet            held-out evaluations (run_id, step, phase, regime, ...)
        summary.json             written last: status, labels, scores, per-phase metrics,
                                 timings, sizes and sha256 of the other files

Every file is written to a temporary name in the same folder, flushed to disk and renamed, and
``summary.json`` comes last, so a run folder is *complete* exactly when its ``summary.json``
parses and the files it lists have the recorded sizes and checksums. Anything else (a process
killed mid-write, a truncated or edited file, leftover temporary files) is *incomplete*: loading
reports it and never crashes, and a resumed study redoes it.

The package's modules, one job each: :mod:`~shiftsim.store.files` (strict JSON, atomic writes,
the folder checks and lock), :mod:`~shiftsim.store.runs` (a run's folder: written, then read
back as a :class:`RunState`), :mod:`~shiftsim.store.results` (:func:`load` and
:class:`StudyResults`) and :mod:`~shiftsim.store.tuning_file` (``tuning.json``). The store
knows runs, not studies: a run is described by its :class:`~shiftsim.runspec.RunSpec`.

Statuses: ``ok``, ``diverged`` (the loss became non-finite; the trace keeps the steps before),
``failed`` (the run raised; ``summary.json`` holds the error and traceback, no parquet files),
``incomplete`` (a partial or corrupted folder) and ``pending`` (listed in ``study.json``, never
written).

The parquet files are plain tables that DuckDB or pandas read directly::

    import duckdb
    duckdb.sql('''
        SELECT r.optimizer, r.severity, sum(t.correct) / sum(t.n) AS online_acc
        FROM 'results/flip-sweep/runs/*/trace.parquet' t
        JOIN 'results/flip-sweep/runs.parquet' r USING (run_id)
        WHERE r.status = 'ok'
        GROUP BY ALL ORDER BY ALL''').df()

>>> import tempfile, shiftsim as ss
>>> sc = ss.label_flip_tasks(ss.data.digits(), rate=1.0, tasks=2, steps_per_task=30)
>>> res = ss.run(sc, ss.models.mlp(hidden=(16,)), ss.optim.spec("sgdm"), seed=0)
>>> with tempfile.TemporaryDirectory() as d:
...     path = write_result(d, res)
...     results = load(d)
...     (results.runs.loc[0, "status"], len(results.trace(path.name)), len(results.phases))
('ok', 60, 2)
"""

from __future__ import annotations

from ..metrics import SCORE_COLUMNS
from . import tuning_file
from .files import (
    LOCK_FILE,
    TMP_MARK,
    atomic_write_bytes,
    atomic_write_json,
    check_out_dir,
    clean_tmp,
    dumps,
    lock,
    plain,
    read_json,
)
from .results import LABEL_COLUMNS, StudyResults, indexes_stale, load, write_indexes
from .runs import (
    COMPLETE,
    DATA_FILES,
    EVALS_FILE,
    RUNS_DIR,
    SPEC_FILE,
    STATUSES,
    STORE_FORMAT,
    STUDY_FILE,
    SUMMARY_FILE,
    TRACE_FILE,
    RunState,
    begin_run,
    format_error,
    list_run_ids,
    read_study,
    run_dir,
    run_state,
    scan,
    write_result,
    write_run,
    write_study,
)

__all__ = [
    "COMPLETE", "DATA_FILES", "EVALS_FILE", "LABEL_COLUMNS", "LOCK_FILE", "RUNS_DIR",
    "SCORE_COLUMNS", "SPEC_FILE", "STATUSES", "STORE_FORMAT", "STUDY_FILE", "SUMMARY_FILE",
    "TMP_MARK", "TRACE_FILE", "RunState", "StudyResults", "atomic_write_bytes",
    "atomic_write_json", "begin_run", "check_out_dir", "clean_tmp", "dumps", "format_error",
    "indexes_stale", "list_run_ids", "load", "lock", "plain", "read_json", "read_study",
    "run_dir", "run_state", "scan", "tuning_file", "write_indexes", "write_result", "write_run",
    "write_study",
]
