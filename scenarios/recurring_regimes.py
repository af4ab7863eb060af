"""Recurring regimes: clean, rotated and label-permuted regimes cycled twice; the second cycle
repeats the first exactly, so it measures how fast a learner re-adapts to a regime it has seen.

    shiftsim run scenarios/recurring_regimes.py --optimizer sgdm
"""

import shiftsim as ss


def recurring_regimes(data, cycles=2, steps_per_phase=250, batch_size=32, **kw):
    """Cycle clean / rotate 45 degrees / all labels permuted ``cycles`` times."""
    return ss.recurring(data, [[], [ss.Rotate(45)], [ss.LabelFlip(1.0, "permute")]],
                        cycles=cycles, steps_per_phase=steps_per_phase, batch_size=batch_size,
                        name="recurring", **kw)


scenario = recurring_regimes(ss.data.digits())
