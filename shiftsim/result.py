"""The result of a run: its trace, evaluations, phases and descriptions, as plain values.

:class:`RunResult` is what :func:`shiftsim.run` and :func:`shiftsim.run_fleet` return (one per
member) and what the store writes; its metrics come from :mod:`shiftsim.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from . import metrics


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
        forgetting and average anytime accuracy."""
        r = self.accuracy_matrix
        return {
            "online_acc": metrics.online_accuracy(self.trace),
            "online_acc_true": metrics.online_accuracy(self.trace, labels="true"),
            "acc": metrics.average_accuracy(r),
            "bwt": metrics.backward_transfer(r),
            "forgetting": metrics.forgetting(r),
            "anytime_acc": metrics.anytime_accuracy(self.evals, self.phases),
            "steps_run": float(len(self.trace)),
        }

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
