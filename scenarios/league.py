"""The robustness league's scenario library: every label-flip mode at rates 0.4 and 1.0, every
covariate family at severity 3 entered abruptly and gradually, a recurring and a class-prior
scenario: 22 scenarios per dataset.

    from league import league_scenarios      # in a study file next to this one
    scenarios = league_scenarios(ss.data.digits(), steps=300)
"""

import class_prior as _prior
import covariate_shifts as _covariate
import label_flips as _flips
import recurring_regimes as _recurring

import shiftsim as ss
from shiftsim.study import Axis


def league_scenarios(data, steps=300, prefix="", batch_size=32):
    """The 22 scenarios on ``data``, each phase ``steps`` steps, labelled ``family``."""
    axis = _flips.axis(data, rates=(0.4, 1.0), tasks=5, steps_per_task=steps, prefix=prefix,
                       batch_size=batch_size)
    axis = axis | _covariate.axis(data, severity=3, steps_per_phase=steps, prefix=prefix,
                                  batch_size=batch_size)
    rec = _recurring.recurring_regimes(data, steps_per_phase=steps, batch_size=batch_size)
    prior = _prior.class_prior(data, steps_per_phase=steps, batch_size=batch_size)
    return axis | Axis({f"{prefix}recurring": rec, f"{prefix}class prior": prior},
                       {f"{prefix}recurring": {"family": "recurring"},
                        f"{prefix}class prior": {"family": "class prior"}})


scenario = _recurring.recurring_regimes(ss.data.digits())
