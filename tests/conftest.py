"""Shared fixtures: tiny scenarios that run in well under a second, and the devices to test on.

Tests that take a ``device`` argument run once per available device (:func:`devices`): on
the CPU always, and on CUDA where there is a GPU; the CUDA cases carry the ``gpu`` marker
(``pytest -m gpu`` runs only those, ``-m "not gpu"`` leaves them out).
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

import shiftsim as ss  # noqa: E402


def devices() -> list:
    """The devices tests run on: ``"cpu"``, and ``"cuda"`` (marked ``gpu``) when available."""
    found: list = ["cpu"]
    if torch.cuda.is_available():
        found.append(pytest.param("cuda", marks=pytest.mark.gpu))
    return found


@pytest.fixture(params=devices())
def device(request) -> str:
    """Each available device in turn (:func:`devices`)."""
    return request.param


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
