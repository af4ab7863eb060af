"""How metric columns are named for people: one table, for the report's tables and for figure
axes alike, and severity values as short labels.

A :class:`Name` is a column's ``label`` (what a table shows) and, where the label does not say
it, the ``unit`` its values are in; an axis shows ``label (unit)`` (:func:`axis_label`).

>>> label("deficit"), axis_label("deficit"), axis_label("recovery_steps")
('recovery deficit', 'recovery deficit (accuracy)', 'recovery time (steps)')
>>> axis_label("diag_grad_norm"), axis_label("steps_run")
('grad norm', 'steps run')
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["NAMES", "Name", "axis_label", "format_severity", "label"]


@dataclass(frozen=True)
class Name:
    """A column's name for people: ``label`` and the ``unit`` of its values ("" when the label
    says it or there is none)."""

    label: str
    unit: str = ""

    @property
    def axis(self) -> str:
        """The axis label: ``label (unit)``."""
        return f"{self.label} ({self.unit})" if self.unit else self.label


#: every metric column a table or a figure names (a new metric adds its line here)
NAMES: dict[str, Name] = {
    "online_acc": Name("online accuracy"),
    "online_acc_true": Name("online accuracy (original labels)"),
    "recovery_steps": Name("recovery time (steps)"),
    "recovery_steps_true": Name("recovery time, original labels (steps)"),
    "recovery_samples": Name("recovery time (samples)"),
    "drop": Name("drop depth", "accuracy"),
    "deficit": Name("recovery deficit", "accuracy"),
    "deficit_true": Name("recovery deficit (original labels)"),
    "heldout_acc": Name("held-out accuracy"),
    "final_heldout": Name("final held-out accuracy"),
    "acc": Name("ACC", "held-out accuracy"),
    "bwt": Name("BWT", "held-out accuracy"),
    "forgetting": Name("forgetting", "held-out accuracy"),
    "diag_damping": Name("TAM damping (1 + cos)/2"),
    "diag_cosine": Name("TAM cosine(momentum, gradient)"),
    "diag_beta": Name("AM momentum beta"),
    "diag_step_size": Name("MoMo step size"),
    "diag_fstar": Name("MoMo f* estimate"),
}


def label(column: str) -> str:
    """A column's label in a table (its name with underscores as spaces when not listed)."""
    name = NAMES.get(column)
    return name.label if name is not None else _plain(column)


def axis_label(column: str) -> str:
    """A column's axis label, with its unit; an unlisted optimizer diagnostic ``diag_x`` is
    ``x``, any other column its name with underscores as spaces."""
    name = NAMES.get(column)
    return name.axis if name is not None else _plain(column)


def _plain(column: str) -> str:
    return (column[5:] if column.startswith("diag_") else column).replace("_", " ")


def format_severity(value: Any, name: str | None = None) -> str:
    """A severity value as a short label: rates in percent when ``name`` says it is a rate or
    probability, otherwise the number in its shortest form.

    >>> format_severity(0.4, "flip rate"), format_severity(45.0, "angle"), format_severity(2.0)
    ('40 %', '45', '2')
    """
    import numpy as np

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (int, float, np.integer, np.floating)):
        v = float(value)
        if name and re.search(r"rate|fraction|prob|percent", name, re.I) and 0 <= v <= 1:
            return f"{100 * v:g} %"
        return f"{v:g}"
    return str(value)
