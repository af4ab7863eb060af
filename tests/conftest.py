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


@pytest.fixture(params=["torch", "native"])
def row_sums(request, monkeypatch):
    """The fleet row kernels' per-member sums, each way in turn: ``"torch"``
    (``SHIFTSIM_NATIVE=0``: torch's products and sums) and ``"native"`` (the C row sums of
    ``shiftsim.optim._native``; skipped where no C compiler builds them). Returns a check
    ``same(a, b)``: bit for bit with torch's sums, equal up to float rounding with the native
    ones (their own summation order)."""
    from shiftsim.optim import _native

    monkeypatch.setenv(_native.ENV, "0" if request.param == "torch" else "1")
    _native._reset()
    if request.param == "native" and not _native.available():
        pytest.skip(f"native row sums: {_native.status()}")

    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        if request.param == "torch":
            return torch.equal(a, b)
        tol = 1e-4 if a.dtype == torch.float32 else 1e-10
        return torch.allclose(a, b, rtol=tol, atol=tol)

    yield same
    monkeypatch.undo()
    _native._reset()


@pytest.fixture()
def torch_row_sums(monkeypatch):
    """torch's per-member sums in the fleet row kernels (``SHIFTSIM_NATIVE=0``), for the tests
    that compare the row layout with the per-tensor kernels bit for bit."""
    from shiftsim.optim import _native

    monkeypatch.setenv(_native.ENV, "0")
    _native._reset()
    yield
    monkeypatch.undo()
    _native._reset()


@pytest.fixture()
def native(monkeypatch):
    """The native code of ``shiftsim.optim._native`` on (skipped where no C compiler builds
    it), forgotten afterwards."""
    from shiftsim.optim import _native

    monkeypatch.setenv(_native.ENV, "1")
    _native._reset()
    if not _native.available():
        pytest.skip(f"native code: {_native.status()}")
    yield
    monkeypatch.undo()
    _native._reset()
