"""Quickstart scenario: digits, a clean warm-up, a full label permutation, then a gradual
drift to rotated, noisy digits with the original labels back.

    shiftsim run scenarios/quickstart.py --optimizer tam --lr 0.1

Defined once, in the package (``shiftsim/quickstart.py``), so that ``shiftsim demo`` runs
exactly this scenario also where shiftsim is installed without this folder.
"""

from shiftsim.quickstart import data, model, optimizers, scenario

__all__ = ["data", "model", "optimizers", "scenario"]
