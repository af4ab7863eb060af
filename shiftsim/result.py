"""The result of a run: its trace, evaluations, phases and descriptions, as plain values.

:class:`RunResult` is what :func:`shiftsim.run` and :func:`shiftsim.run_fleet` return (one per
member) and what the store writes; its metrics come from :mod:`shiftsim.metrics`.
"""

from __future__ import annotations

import traceback as tb
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from . import metrics

__all__ = ["Measurement", "RunResult"]


@dataclass(frozen=True)
class Measurement:
    """A finished run's metrics and its status (:meth:`RunResult.measure`): ``ok`` or
    ``diverged`` with the per-phase ``summary`` and the ``scores``; ``failed`` when computing
    them raised (``error``: one line, ``traceback``), so a run is never stored half-measured."""

    status: str
    summary: pd.DataFrame | None = None
    scores: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None


@dataclass
class RunResult:
    """Everything one run produced, as plain values (DataFrames and dicts).

    ``trace``: one row per step (step, phase, n, correct, correct_true, loss, n_new and
    ``diag_*`` optimizer diagnostics). ``evals``: held-out evaluations (step, phase, regime, n,
    correct, accuracy, phase_end). ``phases``: the scenario's phase table. ``info``: the scenario,
    learner, seed and device descriptions. ``timings``: seconds spent.
    """

    trace: pd.DataFrame
    evals: pd.DataFrame
    phases: pd.DataFrame
    info: dict[str, Any]
    diverged: bool = False
    diverged_step: int | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self, **recovery_options: Any) -> pd.DataFrame:
        """One row per phase: online accuracy, recovery time, drop, deficit, held-out accuracy.

        Options (``window``, ``q``, ``reference``, ``persistence``) go to
        :func:`shiftsim.metrics.recovery`.
        """
        return metrics.summarize(self.trace, self.phases, self.evals, **recovery_options)

    @property
    def accuracy_matrix(self) -> pd.DataFrame:
        """R[i, j]: held-out accuracy on the regime of phase j at the end of phase i."""
        return metrics.accuracy_matrix(self.evals, self.phases)

    @property
    def online_accuracy(self) -> float:
        """Stream online (prequential) accuracy against the presented labels."""
        return metrics.online_accuracy(self.trace)

    def scores(self) -> dict[str, float]:
        """Stream-level numbers: online accuracy (presented and original labels), ACC, BWT,
        forgetting, average anytime accuracy and the steps run
        (:func:`shiftsim.metrics.run_scores`)."""
        return metrics.run_scores(self.trace, self.phases, self.evals)

    def measure(self) -> Measurement:
        """The run's metrics and the status they give it (what the store records): ``ok`` or
        ``diverged`` with :meth:`summary` and :meth:`scores`, or ``failed`` when computing them
        raised, with the error on one line and its traceback."""
        try:
            summary = self.summary()
            scores = self.scores()
        except Exception as exc:
            return Measurement("failed", error=f"computing the metrics failed: "
                               f"{type(exc).__name__}: {exc}", traceback=tb.format_exc())
        return Measurement("diverged" if self.diverged else "ok", summary, scores)

    def plot(self, **options: Any) -> Any:
        """The run at a glance, as a matplotlib Figure: online accuracy over the stream, phases
        shaded, the recovery after each shift marked (:func:`shiftsim.plots.run_accuracy`;
        ``options`` go there). ``result.plot().savefig("run.png")``."""
        from .plots import run_accuracy

        return run_accuracy(self, **options)

    def __repr__(self) -> str:
        status = f"diverged at step {self.diverged_step}" if self.diverged else "ok"
        return (f"RunResult({len(self.trace)} steps, online_acc={self.online_accuracy:.4f}, "
                f"{status})")
