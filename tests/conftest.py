"""Shared fixtures: tiny scenarios that run in well under a second."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

import shiftsim as ss  # noqa: E402


@pytest.fixture(scope="session")
def digits():
    return ss.data.digits()


@pytest.fixture()
def tiny_scenario(digits):
    """3 phases x 30 steps: clean, labels permuted, rotated with a gradual ramp."""
    return ss.Scenario(digits, [
        ss.Phase(30),
        ss.Phase(30, [ss.LabelFlip(1.0, "permute")]),
        ss.Phase(30, [ss.Rotate(30), ss.GaussianNoise(0.05)], transition=ss.Gradual(10)),
    ], batch_size=16, eval_every=10, eval_size=100, name="tiny")
