"""Quickstart scenario: digits, a clean warm-up, a full label permutation, then a gradual
drift to rotated, noisy digits with the original labels back.

The one definition of the quickstart: ``shiftsim demo`` runs it (from a checkout or an
installed package alike), and ``scenarios/quickstart.py`` re-exports it, so

    shiftsim run scenarios/quickstart.py --optimizer tam --lr 0.1

runs the same scenario.
"""

import shiftsim as ss

data = ss.data.digits()

scenario = ss.Scenario(
    data,
    phases=[
        ss.Phase(400, name="clean"),
        ss.Phase(400, [ss.LabelFlip(1.0, mode="permute")], name="labels permuted"),
        ss.Phase(400, [ss.Rotate(45), ss.GaussianNoise(severity=3)],
                 transition=ss.Gradual(100), name="rotated + noisy"),
    ],
    batch_size=32,
    eval_every=100,
    name="quickstart",
)

model = ss.models.mlp(hidden=(128, 128))

#: the optimizers `shiftsim demo` compares (learning rates: a small sweep on this scenario)
optimizers = {
    "sgdm": ss.optim.spec("sgdm", lr=0.05),
    "adam": ss.optim.spec("adam", lr=1e-3),
    "tam": ss.optim.spec("tam", lr=0.1),
    "adamem_sgd": ss.optim.spec("adamem_sgd", lr=0.05),
    "momo": ss.optim.spec("momo", lr=1.0),
}
