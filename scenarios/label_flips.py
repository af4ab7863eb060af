"""Label flips: tasks on the same inputs whose labels are flipped in each LabelFlip mode.

Every task after the first flips a fraction ``rate`` of the labels afresh (relative to the
original labels): ``permute`` (a new derangement per task: at rate 1 a fully learnable new
concept, below 1 two mappings of one input mixed), ``pair`` (c -> c + 1), ``other`` (a random
other class per sample: noise) and ``uniform`` (a random class: noise; at rate 1 no signal).

    shiftsim run scenarios/label_flips.py --optimizer tam --lr 0.1
"""

import shiftsim as ss
from shiftsim.study import Axis

MODES = ("permute", "pair", "other", "uniform")


def label_flip(data, mode="permute", rate=1.0, tasks=5, steps_per_task=300, batch_size=32,
               **kw):
    """``tasks`` tasks of ``steps_per_task`` steps; the later ones flip ``rate`` of the labels."""
    return ss.label_flip_tasks(data, rate=rate, mode=mode, tasks=tasks,
                               steps_per_task=steps_per_task, batch_size=batch_size,
                               name=f"flip-{mode}-{rate:g}", **kw)


def axis(data, modes=MODES, rates=(0.4, 1.0), prefix="", **kw):
    """A study axis: one scenario per mode and rate, labelled ``family`` ("flip permute" ...)
    and ``severity`` (the rate)."""
    items, labels = {}, {}
    for mode in modes:
        for rate in rates:
            key = f"{prefix}{mode} {100 * rate:g}%"
            items[key] = label_flip(data, mode, rate, **kw)
            labels[key] = {"family": f"flip {mode}", "severity": float(rate)}
    return Axis(items, labels)


scenario = label_flip(ss.data.digits(), "permute", 1.0)
