"""The real-time stream: a learner that is slower than the stream trains on fewer batches.

After Ghunaim et al. (CVPR 2023, "Real-Time Evaluation in Online Continual Learning: A New
Hope"): the stream does not wait for the learner. A learner whose training step costs c times
the cheapest learner's (c >= 1) is scored on every batch — its predictions are made before any
training, as always — but it is busy for c batch intervals after each training step, so it
trains only on the batches that arrive when it is free: every c-th batch for an integer c, and
for a fractional c the batches a deterministic accumulator picks (credit starts at 1; each
batch adds 1/c; a batch is trained on when the credit is at least 1, which spends 1). The same
cost therefore gives the same schedule in every run, and a learner of cost 1 trains on every
batch.

Costs are declared, not timed (timings are machine noise): each registered optimizer has a
fixed cost (:data:`shiftsim.optim.registry.COSTS`, measured by ``benchmarks/learner_cost.py``),
overridable per spec (``ss.optim.spec("tam", cost=1.2)``). A study charges each learner its cost
relative to the cheapest learner of the study.

>>> train_schedule(2, 5).tolist()
[True, False, True, False, True]
>>> train_schedule(1.5, 6).tolist()
[True, False, True, True, False, True]
>>> int(train_schedule(2.5, 100).sum())
40
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from .errors import ShiftsimError, SpecTypeError, check_range

__all__ = ["train_schedule", "relative_costs"]

#: float slack of the accumulator (so that 3 x 1/3 counts as 1)
_EPS = 1e-9


def train_schedule(cost: float, steps: int) -> np.ndarray:
    """Which of ``steps`` batches a learner of relative ``cost`` trains on (bool array).

    ``cost`` is in [1, inf]: an infinite cost (the limit of ever slower learners) trains on
    the first batch only.

    >>> train_schedule(float("inf"), 3).tolist()
    [True, False, False]
    """
    if isinstance(cost, (float, np.floating)) and cost == math.inf:
        cost = math.inf  # in [1, inf], as the range error says: busy for ever after step 0
    else:
        cost = float(check_range(cost, "cost", 1, None))
    steps = int(check_range(steps, "steps", 0, None, integer=True))
    out = np.zeros(steps, dtype=bool)
    credit = 1.0
    for t in range(steps):
        if credit >= 1.0 - _EPS:
            out[t] = True
            credit -= 1.0
        credit += 1.0 / cost
    return out


def relative_costs(costs: Sequence[float]) -> list[float]:
    """Each cost relative to the cheapest (so the cheapest learner trains on every batch).
    ``costs``: at least one positive, finite number.

    >>> relative_costs([1.3, 1.5, 2.6])
    [1.0, 1.1538461538461537, 2.0]
    """
    if isinstance(costs, (str, bytes)) or not isinstance(costs, Iterable):
        raise SpecTypeError(f"costs must be a list of positive numbers, got {costs!r}")
    values = list(costs)
    if not values:
        raise ShiftsimError("relative_costs needs at least one cost, got none")
    checked = []
    for i, c in enumerate(values):
        c = float(check_range(c, f"costs[{i}]"))  # a finite number
        if c <= 0:
            raise ShiftsimError(f"costs[{i}] must be a positive, finite number (a learner's "
                                f"cost per step), got {values[i]!r}")
        checked.append(c)
    low = min(checked)
    return [c / low for c in checked]
