"""Metrics: pure functions from a run's trace, phase plan and held-out evaluations to numbers.

Every formula is stated in docs/metrics.md; each docstring names the paper it comes from. No
function mutates its inputs, and none loops in Python over steps. The modules, one job each:

* :mod:`~shiftsim.metrics.online` — online accuracy: over the stream, per phase, trailing
  (one run, or many at once: :func:`trailing_accuracy_by`);
* :mod:`~shiftsim.metrics.recovery` — recovery after each shift, the common reference of a
  comparison, a run's shifts reduced to one value;
* :mod:`~shiftsim.metrics.heldout` — the accuracy matrix, ACC, BWT, forgetting, the stability
  gap and anytime accuracy;
* :mod:`~shiftsim.metrics.summary` — a run's per-phase summary and its stream-level scores;
* :mod:`~shiftsim.metrics.seeds` — statistics over seeds: intervals (per group too:
  :func:`mean_interval_by`), median recovery, paired tests, Holm;
* :mod:`~shiftsim.metrics.names` — the one table of the metrics' labels for tables and axes.

Inputs (the engine's DataFrames):

* ``trace``: one row per step — ``step``, ``phase``, ``n`` (batch size b_t), ``correct``,
  ``correct_true``, ``loss``, ``n_new`` (+ ``diag_*`` columns, ignored). A diverged run's trace
  stops before the diverged step.
* ``phases``: one row per planned phase — ``phase``, ``name``, ``start``, ``end``, ``steps``,
  ``regime``, ``ceiling``, ``chance``, ``chance_true``, ``label_kind``, ``shifted``,
  ``width`` (:meth:`shiftsim.Scenario.phase_table`).
* ``evals``: held-out evaluations — ``step``, ``phase`` (phase being trained), ``regime``, ``n``,
  ``correct``, ``accuracy``, ``phase_end``.

Conventions chosen where the definitions leave room (also in the docstrings below):

* Recovery (version 2: chance-normalised target, onset, persistence, collapse, censoring): a
  phase with fewer than ``w`` rows uses the rows it has for its plateau (and for the pre-shift
  level of the next phase); the persistences are not shortened, so a dip needs ``onset`` rows
  below the target and a recovery ``m`` rows at or above it. ``ā_t ≥ target`` is tested with an
  absolute tolerance of 1e-12 so that exact ties count as reached despite float rounding. When
  the previous phase has no rows, ``pre`` and ``drop`` are NaN; if the reference is then
  undefined, so is the recovery time (NaN, ``censored=False``). A phase table without
  ``chance`` means χ = 0; without ``shifted``, every phase after the first is a shift.
* Accuracy matrix metrics (ACC, BWT, forgetting) are over the distinct regimes and NaN when any
  entry they need is missing.
* Stability-gap metrics use the evaluations that exist: min-ACC_j is the minimum over the
  evaluations taken while a phase > j was trained (the phase-end evaluation of phase j itself is
  not included), up to the evaluation point.
* Median recovery over seeds: censored runs count as +inf; the median of an even count is the
  mean of the two middle values; it is NaN ("undefined") when half or more runs are censored.
"""

from __future__ import annotations

from ._base import LABELS
from .heldout import (
    accuracy_matrix,
    anytime_accuracy,
    average_accuracy,
    backward_transfer,
    forgetting,
    max_average_accuracy,
    min_accuracy,
    worst_case_accuracy,
)
from .names import NAMES, Name, axis_label, format_severity, label
from .online import (
    online_accuracy,
    phase_online_accuracy,
    trailing_accuracy,
    trailing_accuracy_by,
)
from .recovery import (
    BOOL_COLUMNS,
    COLLAPSE_MARGIN,
    RECOVERY_COLUMNS,
    RECOVERY_OPTIONS,
    REFERENCES,
    TOLERANCE,
    common_reference,
    judged_on_original,
    original_label_rows,
    recovery,
    run_recovery,
)
from .seeds import (
    INTERVAL_METHODS,
    PAIRED_TESTS,
    censored_fraction,
    holm,
    mean_interval,
    mean_interval_by,
    median_interval,
    median_recovery,
    paired_difference,
    paired_p_value,
)
from .summary import SCORE_COLUMNS, SUMMARY_COLUMNS, run_scores, summarize

__all__ = [
    "online_accuracy",
    "phase_online_accuracy",
    "trailing_accuracy",
    "trailing_accuracy_by",
    "recovery",
    "common_reference",
    "run_recovery",
    "judged_on_original",
    "original_label_rows",
    "accuracy_matrix",
    "average_accuracy",
    "backward_transfer",
    "forgetting",
    "max_average_accuracy",
    "min_accuracy",
    "worst_case_accuracy",
    "anytime_accuracy",
    "summarize",
    "run_scores",
    "mean_interval",
    "mean_interval_by",
    "median_recovery",
    "median_interval",
    "censored_fraction",
    "paired_difference",
    "paired_p_value",
    "holm",
    "axis_label",
    "format_severity",
    "label",
    # constants and the names table
    "BOOL_COLUMNS", "COLLAPSE_MARGIN", "INTERVAL_METHODS", "LABELS", "NAMES", "Name",
    "PAIRED_TESTS", "RECOVERY_COLUMNS", "RECOVERY_OPTIONS", "REFERENCES", "SCORE_COLUMNS",
    "SUMMARY_COLUMNS", "TOLERANCE",
]
