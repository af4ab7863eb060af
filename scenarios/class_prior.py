"""Class-prior shift: the stream's class mix moves from balanced to skewed towards the first
half of the classes, then to the opposite skew; inputs and labels never change.

    shiftsim run scenarios/class_prior.py --optimizer adam --lr 0.001
"""

import shiftsim as ss


def class_prior(data, skew=4.0, steps_per_phase=300, batch_size=32, **kw):
    """Balanced -> the first half of the classes ``skew`` times as frequent -> the second
    half ``skew`` times as frequent."""
    c = data.num_classes
    first = tuple(skew if k < c // 2 else 1.0 for k in range(c))
    second = tuple(1.0 if k < c // 2 else skew for k in range(c))
    return ss.Scenario(data, [
        ss.Phase(steps_per_phase, name="balanced"),
        ss.Phase(steps_per_phase, [ss.ClassPrior(first)], name="first half frequent"),
        ss.Phase(steps_per_phase, [ss.ClassPrior(second)], name="second half frequent"),
    ], batch_size=batch_size, name=f"class-prior-{skew:g}", **kw)


scenario = class_prior(ss.data.digits())
