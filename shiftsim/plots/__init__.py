"""Figures from tidy DataFrames (seaborn / matplotlib), for reports and notebooks.

Every function takes DataFrames as :func:`shiftsim.store.load` gives them (``results.runs``,
``results.phases``, ``results.evals``, ``results.traces()``) or as a
:class:`~shiftsim.engine.RunResult` gives them with a few label columns added, and returns a
matplotlib Figure. Nothing is saved; the figure is made with pyplot and returned open, so a
notebook's inline backend shows it and it holds its memory until closed: close each figure when
done with it (``plt.close(fig)``). Colours are colour-blind safe and fixed per optimizer across
figures (:func:`optimizer_palette`); pass the same ``palette`` to every figure of a report to
keep them consistent (a ``palette`` that lacks a line's name gives it a default colour that the
palette does not use).

Bad input is refused with a one-line error rather than drawn as a blank or misleading figure:
missing or non-numeric columns, a frame with no rows, a ``hue_order`` or ``col_order`` that
names no value present.

Intervals are Student-t intervals over seeds (:func:`mean_band`,
:func:`shiftsim.metrics.mean_interval`), never bootstraps over thousands of points, so a figure of
a 100-run study draws in about a second. Every number drawn comes from :mod:`shiftsim.metrics`,
every axis label from its one table (:mod:`shiftsim.metrics.names`).

The modules: :mod:`~shiftsim.plots.common` (style, colours, labels, layout),
:mod:`~shiftsim.plots.frames` (the tidy frames drawn), :mod:`~shiftsim.plots.streams`
(accuracy over the stream), :mod:`~shiftsim.plots.severity` (metrics against severity) and
:mod:`~shiftsim.plots.panels` (accuracy matrices, diagnostics, sensitivity).

>>> import shiftsim as ss
>>> sc = ss.label_flip_tasks(ss.data.digits(), 1.0, tasks=2, steps_per_task=40)
>>> tr = pd.concat([ss.run(sc, ss.models.mlp(hidden=(16,)), o).trace.assign(optimizer=o,
...                 run_id=o) for o in ("sgdm", "tam")])
>>> fig = recovery_curves(tr)          # one panel: both optimizers after the shift
>>> fig2 = stream_accuracy(tr)         # the whole stream, phases shaded
>>> len(fig.axes), len(fig2.axes)
(1, 1)
"""

from __future__ import annotations

import pandas as pd  # noqa: F401 - the doctest above uses it

from ..metrics.names import format_severity
from .common import AXIS_LABELS, MAX_POINTS, OKABE_ITO, RECOVERY_METRICS, optimizer_palette, style
from .frames import mean_band, recovery_frame, smoothed_accuracy
from .panels import accuracy_matrices, diagnostic_columns, diagnostics, sensitivity
from .severity import severity_curves, severity_heatmap
from .streams import recovery_curves, run_accuracy, stream_accuracy

__all__ = [
    "optimizer_palette", "smoothed_accuracy", "recovery_frame", "mean_band", "recovery_curves",
    "stream_accuracy", "run_accuracy", "severity_curves", "severity_heatmap", "accuracy_matrices",
    "diagnostics", "diagnostic_columns", "format_severity", "style", "sensitivity",
    "AXIS_LABELS", "MAX_POINTS", "OKABE_ITO", "RECOVERY_METRICS",
]
