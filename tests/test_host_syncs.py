"""No host synchronisation per step: the run loops (the stacked program, the plain loop, a
fleet of every optimizer family) and the stream's input shifts move nothing between host and
device per step. State is placed on the device once per regime (phase).

Counted two ways, for runs of T and of 3T steps over the same phases: the counts must not
grow with the number of steps.

* on every device: calls that make a tensor from Python values or read one back
  (``torch.tensor``, ``Tensor.item``, ``.tolist``, ``bool``/``int``/``float`` of a tensor,
  ``.cpu``, ``.numpy`` of a device tensor) — what a host sync or a host-to-device copy is
  made of;
* on CUDA (where there is one): the warnings of ``torch.cuda.set_sync_debug_mode("warn")``.

Every test runs on each available device (the ``device`` fixture of ``conftest.py``).
"""

from __future__ import annotations

import warnings

import pytest
import torch

import shiftsim as ss
from shiftsim.stream import Stream

torch.set_num_threads(1)

COUNTED = {"item": torch.Tensor, "tolist": torch.Tensor, "__bool__": torch.Tensor,
           "__int__": torch.Tensor, "__float__": torch.Tensor, "cpu": torch.Tensor,
           "numpy": torch.Tensor, "tensor": torch}


def _scenario(steps: int) -> ss.Scenario:
    """Noise before Rotate and PixelPermutation: both land in the per-batch tail."""
    return ss.Scenario(ss.data.digits(), [
        ss.Phase(steps),
        ss.Phase(steps, [ss.GaussianNoise(0.05), ss.Rotate(30), ss.PixelPermutation(0.5)]),
        ss.Phase(steps, [ss.LabelFlip(1.0, "permute"), ss.GaussianNoise(0.05),
                         ss.Brightness(0.1)]),
    ], batch_size=8, eval_every=10 ** 6, eval_size=50, name="syncs")


def _tabular(steps: int) -> ss.Scenario:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 4, generator=g), torch.randint(0, 3, (200,), generator=g)
    data = ss.data.from_tensors(x[:150], y[:150], x[150:], y[150:], name="tab")
    return ss.Scenario(data, [
        ss.Phase(steps),
        ss.Phase(steps, [ss.GaussianNoise(0.1), ss.FeatureScale((1.0, 2.0, 0.5, 1.5)),
                         ss.FeatureOffset((0.1, 0.0, -0.1, 0.2))]),
    ], batch_size=8, eval_every=10 ** 6, eval_size=20, name="tab-syncs")


def _count_calls(monkeypatch, fn) -> int:
    counts = {"n": 0}

    def wrap(owner, name):
        orig = getattr(owner, name)

        def counted(*a, **k):
            # a CPU tensor's .numpy() is a view of the same memory (the optimizers' correctly
            # rounded sqrt goes through numpy): neither a sync nor a copy
            if not (name == "numpy" and a and a[0].device.type == "cpu"):
                counts["n"] += 1
            return orig(*a, **k)

        monkeypatch.setattr(owner, name, counted)

    for name, owner in COUNTED.items():
        wrap(owner, name)
    try:
        fn()
    finally:
        monkeypatch.undo()
    return counts["n"]


def _count_cuda_syncs(fn) -> int:
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


RUNS = {
    "stacked adamem": lambda sc, dev: ss.run(sc, ss.models.mlp(hidden=(16,)),
                                             ss.optim.spec("adamem_adamw", lr=0.01), seed=0,
                                             device=dev, check_every=10 ** 6),
    "plain loop adamem": lambda sc, dev: ss.run(sc, ss.models.mlp(hidden=(16,)),
                                                ss.optim.spec("adamem_adamw", lr=0.01),
                                                seed=0, device=dev, vectorized=False,
                                                check_every=10 ** 6),
    # shiftsim's optimizers only: torch's own Adam reads its step counters with .item(), which
    # the counter sees, but those counters stay on the CPU (no device sync on CUDA either).
    # MoMo-Adam with its eager kernels, as a device runs it: on a CPU its default step is the
    # native code's (compile="auto"), which reads its step size back and rewrites its scalars
    # each step, CPU memory only (no device involved)
    "plain loop, every family": lambda sc, dev: [
        ss.run(sc, ss.models.mlp(hidden=(8,)),
               ss.optim.spec(name, **({"compile": False} if name == "momo_adam" else {})),
               seed=0, device=dev, vectorized=False, check_every=10 ** 6)
        for name in ("tam", "adatamw", "adamem_sgd", "momo", "momo_adam", "grams")],
    "fleet of every family": lambda sc, dev: ss.run_fleet(
        sc, ss.models.mlp(hidden=(16,)),
        [("sgdm", 0), ("adam", 1), ("tam", 0), ("adatam", 1), ("adamem_sgd", 0),
         ("adamem_adamw", 1), ("momo", 0), ("momo_adam", 1), ("grams", 0)],
        device=dev, check_every=10 ** 6),
}


@pytest.mark.parametrize("how", sorted(RUNS))
@pytest.mark.parametrize("make", [_scenario, _tabular], ids=["images", "tabular"])
def test_host_work_does_not_grow_with_steps(monkeypatch, device, how, make):
    short, long = make(20), make(60)
    run = RUNS[how]
    for sc in (short, long):  # warm-up: lazy imports, per-scenario caches (class counts)
        sc.class_counts()
    run(short, device)
    n_short = _count_calls(monkeypatch, lambda: run(short, device))
    n_long = _count_calls(monkeypatch, lambda: run(long, device))
    assert n_short > 0  # the counter sees the loop's setup and its one transfer at the end
    assert n_long == n_short, f"{how}: {n_long - n_short} more host calls for more steps"
    if device == "cuda":
        assert _count_cuda_syncs(lambda: run(long, device)) == \
            _count_cuda_syncs(lambda: run(short, device))


def test_shift_state_is_placed_on_the_device_once_per_regime(monkeypatch, device):
    sc = _scenario(5)
    stream = Stream(sc, 0, device)
    regime = stream.regime(1)
    states = {type(s).__name__: st for s, st in regime.tail}
    assert list(states) == ["GaussianNoise", "Rotate", "PixelPermutation"]
    theta, perm = states["Rotate"], states["PixelPermutation"]
    assert theta.device.type == device and theta.shape == (2, 3)
    assert perm.device.type == device and perm.dtype == torch.int64
    cos = torch.cos(torch.deg2rad(torch.tensor(30.0)))
    assert torch.allclose(theta.cpu(), torch.tensor([[cos, -0.5, 0.0], [0.5, cos, 0.0]]),
                          atol=1e-6)
    # batches of this regime make no tensors from Python values
    gen = torch.Generator(device=device).manual_seed(0)
    idx = torch.arange(8, device=device)
    regime.inputs(idx, gen)
    calls = []
    orig = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: calls.append(1) or orig(*a, **k))
    for _ in range(5):
        regime.inputs(idx, gen)
    assert calls == []
    tab = Stream(_tabular(5), 0, device).regime(1)
    scale = dict((type(s).__name__, st) for s, st in tab.tail)["FeatureScale"]
    assert scale.device.type == device and scale.tolist() == [[1.0, 2.0, 0.5, 1.5]]


def test_placed_and_unplaced_shifts_give_the_same_bits():
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    r = ss.Rotate(30)
    placed = r.place(None, (1, 8, 8), x.device, x.dtype)
    assert torch.equal(r.apply(x, placed, None), r.apply(x, None, None))
    f = ss.FeatureScale((1.0, 2.0))
    xt = torch.rand(3, 2)
    assert torch.equal(f.apply(xt, f.place(None, (2,), xt.device, xt.dtype), None),
                       xt * torch.tensor([[1.0, 2.0]]))
    assert f.place(None, (2,), xt.device, xt.dtype).shape == (1, 2)
    assert ss.FeatureOffset(0.5).place(None, (2,), xt.device, xt.dtype) is None
