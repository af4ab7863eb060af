"""The fleet: every member's result equals the sequential run() of the same member.

The reference is ``run(..., vectorized=False)``: the plain per-step loop (one module,
autograd, the optimizer's ``step()``). run()'s default for a ReLU MLP is the fleet's own program
with one member, which these tests check separately (it must equal that member in any fleet).

Tolerances. In float64 (double data and double models) the fleet and run() compute the same
numbers up to rounding far below float32 resolution, so the traces (stored in float32) agree
exactly in predictions and held-out counts and to 1e-6 (relative) in losses and diagnostics —
this checks the math of every optimizer kernel with per-member reductions and per-member
hyperparameters. In float32 the batched matmuls round differently from torch's single-model
ones (~1e-7 relative per step) and training amplifies that slowly, so there the fleet must give
the identical prediction on nearly every step (>= 97 % of steps, the first 20 steps' losses
within 1e-4 relative).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import shiftsim as ss
from shiftsim.data.dataset import Dataset
from shiftsim.fleet import StackedModel, fleet_memory_bytes, run_fleet
from shiftsim.models import MLP


def run_eager(*args, **kwargs):
    """The plain per-step loop of :func:`shiftsim.run`."""
    return ss.run(*args, vectorized=False, **kwargs)


ALL = ("sgd", "sgdm", "nesterov", "adam", "adamw", "tam", "adatam", "adatamw", "adamem_sgd",
       "adamem_adamw", "momo", "momo_adam", "grams")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, as studies run (and much faster on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits64(digits):
    d = digits
    return Dataset(d.name, d.x_train.double(), d.y_train, d.x_test.double(), d.y_test,
                   d.classes, d.kind, dict(d.source))


@pytest.fixture(scope="module")
def flip64(digits64):
    return ss.label_flip_tasks(digits64, rate=1.0, tasks=2, steps_per_task=40, eval_every=20,
                               eval_size=100)


@pytest.fixture(scope="module")
def flip32(digits):
    return ss.label_flip_tasks(digits, rate=1.0, tasks=2, steps_per_task=60, eval_every=30,
                               eval_size=200)


def mlp64(data):
    """A double ReLU MLP initialised from torch's RNG (seeded per member by the fleet/run)."""
    return MLP(math.prod(data.input_shape), data.num_classes, (16,)).double()


def assert_same(fleet, seq, exact=True):
    """fleet and seq are RunResults of the same member."""
    assert list(fleet.trace.columns) == list(seq.trace.columns)
    assert list(fleet.evals.columns) == list(seq.evals.columns)
    assert (fleet.diverged, fleet.diverged_step) == (seq.diverged, seq.diverged_step)
    assert len(fleet.trace) == len(seq.trace) and len(fleet.evals) == len(seq.evals)
    for col in ("step", "phase", "n", "n_new"):
        np.testing.assert_array_equal(fleet.trace[col].values, seq.trace[col].values)
    for col in ("step", "phase", "regime", "n", "phase_end"):
        np.testing.assert_array_equal(fleet.evals[col].values, seq.evals[col].values)
    assert fleet.info["seed"] == seq.info["seed"]
    assert fleet.info["learner"] == seq.info["learner"]
    assert fleet.info["scenario"] == seq.info["scenario"]
    if exact:
        np.testing.assert_array_equal(fleet.trace["correct"].values, seq.trace["correct"].values)
        np.testing.assert_array_equal(fleet.trace["correct_true"].values,
                                      seq.trace["correct_true"].values)
        np.testing.assert_array_equal(fleet.evals["correct"].values, seq.evals["correct"].values)
        np.testing.assert_allclose(fleet.trace["loss"].values, seq.trace["loss"].values,
                                   rtol=1e-6)
        for col in seq.trace.columns:
            if col.startswith("diag_"):
                np.testing.assert_allclose(fleet.trace[col].values, seq.trace[col].values,
                                           rtol=1e-5, atol=1e-7, err_msg=col)
    else:
        same = fleet.trace["correct"].values == seq.trace["correct"].values
        assert same.mean() >= 0.97, same.mean()
        np.testing.assert_allclose(fleet.trace["loss"].values[:20],
                                   seq.trace["loss"].values[:20], rtol=1e-4)
        assert (fleet.evals["correct"].values == seq.evals["correct"].values).mean() >= 0.5


@pytest.mark.parametrize("name", ALL)
def test_every_optimizer_float64_equals_run_with_per_member_lr(name, flip64):
    base = ss.optim.spec(name)
    lr = base.kwargs["lr"]
    # two learning rates in one group: the kernels get (K,) hyperparameter tensors
    members = [(base, 0), (base.replace(lr=lr * 0.5), 1), (base, 1)]
    results = run_fleet(flip64, mlp64, members, device="cpu")
    assert results[0].info["fleet"] == {"members": 3, "groups": 1, "compiled": False,
                                       "chunks": 1, "lanes": 1}
    for (opt, seed), res in zip(members, results):
        assert_same(res, run_eager(flip64, mlp64, opt, seed=seed, device="cpu"))
    # the two seeds really are different streams and initialisations
    assert not np.array_equal(results[0].trace["loss"].values, results[2].trace["loss"].values)


@pytest.mark.parametrize("name", ALL)
def test_every_optimizer_float32_nearly_every_prediction_equal(name, flip32):
    model = ss.models.mlp(hidden=(32,))
    members = [(name, 0), (name, 1)]
    for (opt, seed), res in zip(members, run_fleet(flip32, model, members, device="cpu")):
        assert_same(res, run_eager(flip32, model, opt, seed=seed, device="cpu"), exact=False)


def test_diagnostic_columns_are_the_optimizers(flip32):
    model = ss.models.mlp(hidden=(8,))
    res = run_fleet(flip32, model, [("tam", 0), ("momo", 0), ("adamem_sgd", 0), ("adam", 0),
                                    (ss.optim.spec("grams", track_flips=True), 0)],
                    device="cpu")
    diag = [sorted(c for c in r.trace.columns if c.startswith("diag_")) for r in res]
    assert diag == [["diag_cosine", "diag_damping"], ["diag_fstar", "diag_step_size"],
                    ["diag_beta", "diag_momentum"], [], ["diag_flip_fraction"]]
    # TAM's damping is (1 + smoothed cosine) / 2, per member and per step
    np.testing.assert_allclose(res[0].trace["diag_damping"].values,
                               (1 + res[0].trace["diag_cosine"].values) / 2, rtol=1e-6)


def test_hyperparameters_other_than_lr_vary_per_member(flip64):
    members = [(ss.optim.spec("adamw"), 0),
               (ss.optim.spec("adamw", betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1), 1),
               (ss.optim.spec("tam"), 0),
               (ss.optim.spec("tam", momentum=0.5, gamma=0.5, weight_decay=0.01), 1),
               (ss.optim.spec("momo"), 1),
               (ss.optim.spec("momo", beta=0.5, lb=-0.1, weight_decay=0.01), 0)]
    results = run_fleet(flip64, mlp64, members, device="cpu")
    assert results[0].info["fleet"]["groups"] == 3
    for (opt, seed), res in zip(members, results):
        assert_same(res, run_eager(flip64, mlp64, opt, seed=seed, device="cpu"))


def test_mixed_optimizer_fleet_keeps_the_callers_order(flip64):
    members = [("sgdm", 0), ("adam", 1), ("tam", 0), ("sgdm", 2),
               (ss.optim.spec("sgdm", lr=0.1), 3), ("momo", 1),
               (ss.optim.spec("sgdm", nesterov=False, momentum=0.5), 0)]
    results = run_fleet(flip64, mlp64, members, device="cpu")
    # groups: torch SGD (4 members; lr and momentum differ), Adam, TAM, MoMo
    assert results[0].info["fleet"] == {"members": 7, "groups": 4, "compiled": False,
                                       "chunks": 1, "lanes": 1}
    names = [r.info["learner"]["optimizer"]["name"] for r in results]
    assert names == ["sgdm", "adam", "tam", "sgdm", "sgdm", "momo", "sgdm"]
    for (opt, seed), res in zip(members, results):
        assert_same(res, run_eager(flip64, mlp64, opt, seed=seed, device="cpu"))


def test_a_diverging_member_is_recorded_and_the_others_go_on(flip32, device):
    model = ss.models.mlp(hidden=(16,))
    boom = ss.optim.spec("sgdm", lr=1.0, maximize=True)  # gradient ascent: the loss explodes
    members = [("sgdm", 0), (boom, 1), ("tam", 1)]
    results = run_fleet(flip32, model, members, device=device, check_every=16)
    seq = [run_eager(flip32, model, o, seed=s, device=device, check_every=16)
           for o, s in members]
    assert seq[1].diverged and 0 < seq[1].diverged_step < 60
    assert results[1].diverged and results[1].diverged_step == seq[1].diverged_step
    assert len(results[1].trace) == seq[1].diverged_step
    assert not results[0].diverged and not results[2].diverged
    for f, s in zip(results, seq):
        assert_same(f, s, exact=False)
    # the diverged member's evaluations stop before its divergence, as in run()
    assert results[1].evals["step"].max() <= seq[1].diverged_step - 1


def test_all_members_diverging_stops_the_fleet(flip32):
    boom = ss.optim.spec("sgd", lr=1e30)
    results = run_fleet(flip32, ss.models.mlp(hidden=(8,)), [(boom, 0), (boom, 1)],
                        device="cpu", check_every=8)
    seq = run_eager(flip32, ss.models.mlp(hidden=(8,)), boom, seed=0, device="cpu", check_every=8)
    assert [r.diverged_step for r in results] == [seq.diverged_step] * 2 == [1, 1]
    assert all(len(r.trace) == 1 and len(r.evals) == 0 for r in results)


def test_single_member_and_repeated_members(flip64):
    one = run_fleet(flip64, mlp64, [("adatam", 3)], device="cpu")
    assert len(one) == 1 and one[0].info["fleet"]["members"] == 1
    assert_same(one[0], run_eager(flip64, mlp64, "adatam", seed=3, device="cpu"))
    twice = run_fleet(flip64, mlp64, [("grams", 2), ("grams", 2)], device="cpu")
    assert twice[0].trace.equals(twice[1].trace) and twice[0].evals.equals(twice[1].evals)


def test_singleton_groups_each_equal_run(flip64):
    """More groups than members per group: every optimizer its own group of one."""
    members = [(name, i) for i, name in enumerate(ALL[::2])]
    results = run_fleet(flip64, mlp64, members, device="cpu")
    assert results[0].info["fleet"]["groups"] == len(members)
    for (opt, seed), res in zip(members, results):
        assert_same(res, run_eager(flip64, mlp64, opt, seed=seed, device="cpu"))


def test_input_shifts_ramps_and_noise_streams(digits64):
    """Pre-shifted inputs stacked per seed, a per-batch noise tail and a gradual ramp."""
    sc = ss.covariate_drift(digits64, [ss.Rotate(30), [ss.Rotate(60), ss.GaussianNoise(0.2)]],
                            40, transition=ss.Gradual(15), eval_every=20, eval_size=100)
    members = [("adam", 0), ("sgdm", 1), ("adam", 2), ("sgdm", 0)]
    for (opt, seed), res in zip(members, run_fleet(sc, mlp64, members, device="cpu")):
        assert_same(res, run_eager(sc, mlp64, opt, seed=seed, device="cpu"))


@pytest.mark.parametrize("block_steps", [1, 7])
def test_inputs_gathered_in_blocks_of_steps_are_the_same_batches(digits64, monkeypatch,
                                                                  block_steps):
    """The fast path gathers a block of steps' inputs at once: block boundaries inside and
    across phases, after a ramp and with inputs stacked per seed (static shifts) change
    nothing."""
    import shiftsim.feed as feed_mod

    sc = ss.Scenario(digits64, [
        ss.Phase(20), ss.Phase(25, [ss.Rotate(40)], transition=ss.Gradual(6)),
        ss.Phase(23, [ss.LabelFlip(1.0)])], batch_size=8, eval_every=10, eval_size=50)
    members = [("sgdm", 0), ("sgdm", 3), ("adam", 1)]
    default = run_fleet(sc, mlp64, members, device="cpu")
    monkeypatch.setattr(feed_mod, "BLOCK_STEPS", block_steps)
    blocked = run_fleet(sc, mlp64, members, device="cpu")
    for (opt, seed), a, b in zip(members, default, blocked):
        pd.testing.assert_frame_equal(a.trace, b.trace)
        pd.testing.assert_frame_equal(a.evals, b.evals)
        assert_same(b, run_eager(sc, mlp64, opt, seed=seed, device="cpu"))


def test_class_prior_and_noise_flips(digits64):
    sc = ss.Scenario(digits64, [
        ss.Phase(30), ss.Phase(30, [ss.ClassPrior([5.0, 5.0] + [1.0] * 8)]),
        ss.Phase(30, [ss.LabelFlip(0.4, "other")], transition=ss.Gradual(10))],
        batch_size=16, eval_every=15, eval_size=100)
    members = [("momo", 4), ("momo", 5)]
    for (opt, seed), res in zip(members, run_fleet(sc, mlp64, members, device="cpu")):
        assert_same(res, run_eager(sc, mlp64, opt, seed=seed, device="cpu"))


def test_autograd_paths_gelu_mlp_and_cnn(digits64, flip64):
    """Models without the hand-written backward: a GELU MLP (batched matmuls + autograd) and a
    CNN (torch.func.vmap over functional_call)."""
    def gelu64(data):
        return MLP(64, 10, (16,), activation="gelu").double()

    def cnn64(data):
        return ss.models.CNN(data.input_shape, data.num_classes, (4,), 16, 3, "relu",
                             None).double()

    sc = ss.label_flip_tasks(digits64, rate=1.0, tasks=2, steps_per_task=20, eval_every=10,
                             eval_size=100)
    for factory in (gelu64, cnn64):
        members = [("adam", 0), ("tam", 1)]
        results = run_fleet(sc, factory, members, device="cpu")
        for (opt, seed), res in zip(members, results):
            assert_same(res, run_eager(sc, factory, opt, seed=seed, device="cpu"))


def test_other_elementwise_torch_optimizers_run_as_torch_does(flip64):
    rms = ss.optim.spec("torch.optim:RMSprop", lr=1e-3)
    members = [(rms, 0), (rms, 1), (ss.optim.spec("torch.optim:NAdam"), 0)]
    results = run_fleet(flip64, mlp64, members, device="cpu")
    assert results[0].info["fleet"]["groups"] == 2
    for (opt, seed), res in zip(members, results):
        assert_same(res, run_eager(flip64, mlp64, opt, seed=seed, device="cpu"))


def test_stacked_model_matches_its_members(digits):
    nets = [ss.models.mlp(hidden=(12, 12)).build(digits, seed=s) for s in range(3)]
    sm = StackedModel(nets, input_shape=digits.input_shape)
    assert sm.manual
    x = digits.x_train[:40]
    xs = torch.stack([x] * 3)
    for k, net in enumerate(nets):
        torch.testing.assert_close(sm.forward(xs)[k], net(x), rtol=1e-5, atol=1e-6)
        assert torch.equal(sm.predict(xs)[k], net(x).argmax(1))
        for (n, p), q in zip(sm.member(k).named_parameters(), net.parameters()):
            assert torch.equal(p, q), n
    # the hand-written backward pass equals autograd's
    y = torch.stack([digits.y_train[:40]] * 3)
    pred, per, grads = sm.step(xs, y)
    for k, net in enumerate(nets):
        loss = torch.nn.functional.cross_entropy(net(x), y[k])
        ref = torch.autograd.grad(loss, list(net.parameters()))
        torch.testing.assert_close(per[k], loss.detach(), rtol=1e-6, atol=1e-7)
        for g, r in zip(grads, ref):
            torch.testing.assert_close(g[k], r, rtol=1e-5, atol=1e-7)
    # Linear layers without a ReLU between them are not a ReLU chain: autograd then
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.Linear(8, 10))
    assert not StackedModel([lin]).manual


def test_torchscript_step_equals_the_plain_python_step(digits):
    """The hand-written step runs through TorchScript: the same aten ops in the same order, so
    the same bits as the plain function (three layers, one without a bias)."""
    from shiftsim import _mlp_kernel

    torch.manual_seed(0)
    K, b = 3, 16
    shapes = [(9, 64), (7, 9), (10, 7)]
    weights = [torch.randn(K, o, i) for o, i in shapes]
    columns = [torch.randn(K, 9, 1), weights[1], torch.randn(K, 10, 1)]  # layer 1: no bias
    biased = [True, False, True]
    x, y = torch.randn(K, b, 1, 8, 8), torch.randint(0, 10, (K, b))
    outs = []
    for fn in (_mlp_kernel.relu_mlp_step, _mlp_kernel.scripted_relu_mlp_step()):
        pred, loss = torch.empty(K, 1, b, dtype=torch.int64), torch.empty(K)
        grads = fn(x, y, weights, columns, [w.transpose(1, 2) for w in weights], biased,
                   torch.empty(K, 1, b), pred, loss, torch.full((K, 1, b), -1 / b), [])
        outs.append((pred, loss, grads))
    assert isinstance(_mlp_kernel.scripted_relu_mlp_step(), torch.jit.ScriptFunction)
    (p0, l0, g0), (p1, l1, g1) = outs
    assert torch.equal(p0, p1) and torch.equal(l0, l1)
    assert [tuple(g.shape) for g in g0] == [(K, 9, 64), (K, 9), (K, 7, 9), (K, 10, 7), (K, 10)]
    assert all(torch.equal(a, c) for a, c in zip(g0, g1))
    # and autograd agrees with the hand-written backward pass
    ps = [w.clone().requires_grad_() for w in weights]
    bs = [columns[0].clone().requires_grad_(), columns[2].clone().requires_grad_()]
    h = x.flatten(2).transpose(1, 2)
    h = torch.baddbmm(bs[0], ps[0], h).relu()
    h = torch.bmm(ps[1], h).relu()
    z = torch.baddbmm(bs[1], ps[2], h)
    ref = torch.stack([torch.nn.functional.cross_entropy(z[k].T, y[k]) for k in range(K)])
    refg = torch.autograd.grad(ref.sum(), [ps[0], bs[0], ps[1], ps[2], bs[1]])
    torch.testing.assert_close(l0, ref.detach(), rtol=1e-6, atol=1e-6)
    for g, r in zip(g0, refg):
        torch.testing.assert_close(g, r.reshape(g.shape), rtol=1e-5, atol=1e-6)


def test_run_without_torchscript_gives_the_same_trace(flip32, monkeypatch):
    """When TorchScript is unavailable the plain function runs, with a warning, and the
    results are the same."""
    from shiftsim import _mlp_kernel

    model = ss.models.mlp(hidden=(16, 8))
    members = [("sgdm", 0), ("tam", 1)]
    scripted = run_fleet(flip32, model, members, device="cpu")

    def broken(fn, *args, **kwargs):
        raise RuntimeError("no TorchScript here")

    monkeypatch.setattr(torch.jit, "script", broken)
    monkeypatch.setattr(_mlp_kernel, "_SCRIPTED", None)
    monkeypatch.setattr(_mlp_kernel, "_SCRIPT_FAILED", False)
    with pytest.warns(UserWarning, match="TorchScript is unavailable"):
        plain = run_fleet(flip32, model, members, device="cpu")
    for a, c in zip(scripted, plain):
        pd.testing.assert_frame_equal(a.trace, c.trace)
        pd.testing.assert_frame_equal(a.evals, c.evals)


def test_compile_failure_falls_back_to_eager(flip32, monkeypatch):
    def broken(fn, **kwargs):
        def run(*a, **k):
            raise RuntimeError("no compiler here")
        return run

    model = ss.models.mlp(hidden=(8,))
    eager = run_fleet(flip32, model, [("adam", 0)], device="cpu")
    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(UserWarning, match="torch.compile of the fleet step failed"):
        res = run_fleet(flip32, model, [("adam", 0)], device="cpu", compile=True)
    assert res[0].info["fleet"]["compiled"] is False
    assert res[0].trace.equals(eager[0].trace)


@pytest.mark.slow
def test_compiled_fleet_equals_eager(digits):
    pytest.importorskip("torch._inductor")
    sc = ss.label_flip_tasks(digits, rate=1.0, tasks=2, steps_per_task=15, eval_every=0,
                             eval_size=50)
    model = ss.models.mlp(hidden=(8,))
    eager = run_fleet(sc, model, [("sgdm", 0), ("sgdm", 1)], device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        comp = run_fleet(sc, model, [("sgdm", 0), ("sgdm", 1)], device="cpu", compile=True)
    if not comp[0].info["fleet"]["compiled"]:
        pytest.skip("torch.compile is not usable here (it fell back to eager)")
    for c, e in zip(comp, eager):
        np.testing.assert_array_equal(c.trace["correct"].values, e.trace["correct"].values)
        np.testing.assert_allclose(c.trace["loss"].values, e.trace["loss"].values, rtol=1e-4)


def test_bad_input(flip32):
    model = ss.models.mlp(hidden=(8,))
    with pytest.raises(ss.ShiftsimError, match="non-empty list"):
        run_fleet(flip32, model, [])
    with pytest.raises(TypeError, match=r"\(optimizer, seed\) pair"):
        run_fleet(flip32, model, ["sgdm"])
    with pytest.raises(ss.ShiftsimError, match="seed must be a non-negative integer"):
        run_fleet(flip32, model, [("sgdm", -1)])
    with pytest.raises(ss.ShiftsimError, match="unknown optimizer 'sgdx'"):
        run_fleet(flip32, model, [("sgdx", 0)])
    with pytest.raises(ss.ShiftsimError, match="cannot run in a fleet"):
        run_fleet(flip32, model, [(ss.optim.spec("torch.optim:SparseAdam"), 0)])
    with pytest.raises(ValueError, match="Nesterov"):  # torch's own check, as in run()
        run_fleet(flip32, model, [(ss.optim.spec("nesterov", momentum=0.0), 0)])
    with pytest.raises(ss.ShiftsimError, match="check_every"):
        run_fleet(flip32, model, [("sgdm", 0)], check_every=0)
    with pytest.raises(TypeError, match="needs a Scenario"):
        run_fleet("flip", model, [("sgdm", 0)])
    bn = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10),
                             torch.nn.BatchNorm1d(10))
    with pytest.raises(ss.ShiftsimError, match="BatchNorm"):
        run_fleet(flip32, bn, [("sgdm", 0)])


def test_fleet_memory_bytes_counts_parameters_state_and_buffers(digits):
    sc = ss.label_flip_tasks(digits, rate=1.0, tasks=2, steps_per_task=50, eval_size=100)
    model = ss.models.mlp(hidden=(16,))
    n_params = 64 * 16 + 16 + 16 * 10 + 10  # 1210
    one = fleet_memory_bytes(sc, model, 1)
    acts = 64 + 64 + 16 + 16 + 10  # input, Flatten, Linear, ReLU, Linear outputs per sample
    # parameters, gradient, three optimizer buffers and two scratch copies (float32), the
    # per-step activations and their gradients, the trace buffers, the held-out inputs of
    # both regimes and one evaluation pass
    per_member = (4 * 7 * n_params + 4 * 2 * 32 * acts + 8 * 3 * 100
                  + 4 * 100 * 64 * 2 + 4 * 100 * acts)
    assert one == per_member
    assert fleet_memory_bytes(sc, model, 10) == 10 * per_member


# -- studies ------------------------------------------------------------------------------------

def _study(digits, name="fs", seeds=3, optimizers=("sgdm", "adam", "tam")):
    scenarios = ss.study.flip_rates(digits, [0.0, 1.0], tasks=2, steps_per_task=30,
                                    eval_every=15, eval_size=100)
    return ss.Study(name, scenarios=scenarios, model=ss.models.mlp(hidden=(8,)),
                    optimizers=list(optimizers) if isinstance(optimizers, tuple) else optimizers,
                    seeds=seeds)


def test_plan_fleets_groups_splits_and_leaves_singles(digits):
    from shiftsim.study import plan_fleets

    study = _study(digits, optimizers=("sgdm", "adam", "tam", "torch.optim:SparseAdam"), seeds=5)
    grid = study.grid()  # 2 scenarios x 4 optimizers x 5 seeds
    fleets, singles = plan_fleets(grid, workers=1, device="cpu")
    # K larger than a group: one fleet per scenario holds all 15 fleet-capable runs
    assert sorted(len(f) for f in fleets) == [15, 15]
    assert sorted(s.optimizer.name for s in singles) == ["torch.optim:SparseAdam"] * 10
    for f in fleets:
        assert len({(s.scenario.name, s.model) for s in f}) == 1
    fleets, _ = plan_fleets(grid, workers=1, device="cpu", max_members=4)
    assert sorted(len(f) for f in fleets) == [3, 3] + [4] * 6  # near-equal splits of 15
    ids = [s.run_id for f in fleets for s in f] + [s.run_id for s in singles]
    assert sorted(ids) == sorted(s.run_id for s in grid)
    # a lone run of its scenario and model goes alone
    fleets, singles = plan_fleets(grid[:1] + grid[20:22], workers=1, device="cpu")
    assert [len(f) for f in fleets] == [2] and len(singles) == 1


def test_plan_fleets_sizes_fleets_to_memory(digits, monkeypatch):
    from shiftsim.fleet import fleet_memory_bytes
    from shiftsim.study import fleet_executor as fe

    grid = _study(digits, seeds=10, optimizers=("sgdm",)).grid()[:10]  # one scenario
    per = fleet_memory_bytes(grid[0].scenario, grid[0].model, 1)
    monkeypatch.setattr(fe, "_available_bytes", lambda device: 8 * per)
    # half of the memory, shared by two workers: 2 members per fleet
    fleets, _ = fe.plan_fleets(grid, workers=2, device="cpu")
    assert [len(f) for f in fleets] == [2] * 5
    with pytest.raises(ss.ShiftsimError, match="max_members"):
        fe.plan_fleets(grid, max_members=0)


def test_study_with_fleets_stores_what_a_study_without_them_stores(digits, tmp_path):
    study = _study(digits)
    rep = study.run(tmp_path / "fleet", workers=1, progress=False)  # fleet is the default
    assert rep.ok and rep.done == 18 and rep.backend == "fleet"
    ref = study.run(tmp_path / "plain", workers=1, progress=False, fleet=False)
    assert ref.ok and ref.backend == "in-process"
    got, want = ss.store.load(tmp_path / "fleet"), ss.store.load(tmp_path / "plain")
    assert sorted(got.runs.run_id) == sorted(want.runs.run_id) == sorted(
        s.run_id for s in study.grid())
    assert list(got.runs.columns) == list(want.runs.columns)
    for spec in study.grid():  # one thread per run: bit for bit
        pd.testing.assert_frame_equal(got.trace(spec.run_id), want.trace(spec.run_id))
        fa = (tmp_path / "fleet" / "runs" / spec.run_id / "summary.json").read_text()
        assert '"worker": ' in fa and "fleet of" in fa
    # resume: nothing to do; then two runs lost -> only they run again, identical bit for bit
    again = study.run(tmp_path / "fleet", workers=1, progress=False)
    assert (again.done, again.skipped) == (0, 18)
    lost = [s.run_id for s in study.grid()[:2]]
    before = {r: got.trace(r) for r in lost}
    for r in lost:
        (tmp_path / "fleet" / "runs" / r / "summary.json").unlink()
    redo = study.run(tmp_path / "fleet", workers=1, progress=False)
    assert (redo.done, redo.skipped) == (2, 16)
    after = ss.store.load(tmp_path / "fleet")
    for r in lost:
        pd.testing.assert_frame_equal(after.trace(r), before[r])


def test_a_tuning_grid_in_fleets_stores_what_it_stores_without_them(digits, tmp_path):
    """Learning-rate grids put members with different learning rates into one group (each
    hyperparameter a (K,) tensor): the stored traces equal one-by-one runs bit for bit."""
    grid = ss.study.lr_grid({"adam": [1e-3, 1e-2], "grams": [1e-3, 1e-2],
                             "momo_adam": [1e-3, 1e-2], "adatam": [1e-3, 1e-2]})
    study = _study(digits, "grid", seeds=2, optimizers=grid)
    assert study.run(tmp_path / "fleet", workers=1, progress=False).backend == "fleet"
    study.run(tmp_path / "plain", workers=1, progress=False, fleet=False)
    got, want = ss.store.load(tmp_path / "fleet"), ss.store.load(tmp_path / "plain")
    for spec in study.grid():
        pd.testing.assert_frame_equal(got.trace(spec.run_id), want.trace(spec.run_id))
    key = ["run_id", "step", "regime"]
    pd.testing.assert_frame_equal(got.evals.sort_values(key).reset_index(drop=True),
                                  want.evals.sort_values(key).reset_index(drop=True))


def test_a_failing_fleet_reruns_its_runs_one_by_one(digits, tmp_path, monkeypatch):
    import shiftsim.fleet as fleet_mod

    whole = fleet_mod.run_fleet

    def broken(scenario, model, members, *args, **kwargs):
        if len(members) > 1:  # fleets break; one-member programs (run()'s default) work
            raise RuntimeError("the fleet broke")
        return whole(scenario, model, members, *args, **kwargs)

    monkeypatch.setattr(fleet_mod, "run_fleet", broken)
    study = _study(digits, seeds=2, optimizers=("sgdm",))
    rep = study.run(tmp_path, workers=1, progress=False, fleet=True)
    assert rep.ok and rep.done == 4
    ref = ss.store.load(tmp_path)
    for spec in study.grid():  # the one-by-one fallback is run() itself
        pd.testing.assert_frame_equal(ref.trace(spec.run_id).drop(columns="run_id"),
                                      ss.study.execute(spec, device="cpu", threads=1).trace)


def test_fleet_argument_checks(digits, tmp_path):
    study = _study(digits, seeds=1, optimizers=("sgdm",))
    with pytest.raises(TypeError, match="fleet must be True, False or None"):
        study.run(tmp_path, fleet="yes")
    with pytest.raises(ss.ShiftsimError, match="use fleet=False with a custom executor="):
        study.run(tmp_path, fleet=True, executor=ss.study.InProcess("cpu"))


@pytest.mark.slow
def test_fleets_in_worker_processes_equal_fleets_in_process(digits, tmp_path):
    study = _study(digits)
    rep = study.run(tmp_path / "pool", workers=2, progress=False)
    assert rep.ok and rep.done == 18 and rep.backend == "fleet"
    assert study.run(tmp_path / "one", workers=1, progress=False).ok
    a, b = ss.store.load(tmp_path / "pool"), ss.store.load(tmp_path / "one")
    workers = set()
    for spec in study.grid():
        pd.testing.assert_frame_equal(a.trace(spec.run_id), b.trace(spec.run_id))
        s = (tmp_path / "pool" / "runs" / spec.run_id / "summary.json").read_text()
        workers.add(s.split('"worker": "')[1].split(":")[1].split(" ")[0])
    assert workers and str(os.getpid()) not in workers  # in worker processes


@pytest.mark.slow
def test_an_unguarded_script_gets_a_clear_error_with_fleets(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        import shiftsim as ss
        from shiftsim.study import Study, flip_rates
        syn = ss.data.synthetic(n=100, dim=4, classes=2)
        study = Study("g", flip_rates(syn, [0.0, 1.0], tasks=2, steps_per_task=10),
                      model=ss.models.mlp(hidden=(4,)), optimizers=["sgd"], seeds=2)
        study.run({str(tmp_path / "out")!r}, workers=2, progress=False)
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("shiftsim.errors.ShiftsimError: a fleet worker process exited "
                           "before it started; worker processes start by importing your "
                           "script") and 'if __name__ == "__main__":' in last
    assert not list((tmp_path / "out" / "runs").glob("*/summary.json"))


def test_run_default_is_the_one_member_program_bit_for_bit(flip32, device):
    """run()'s default for a ReLU MLP is the member's program in any fleet: a study's fleets and
    one-by-one runs store the same traces. Bit for bit on the CPU; on CUDA batched-GEMM kernels
    are chosen by shape (the member count among them), so there up to float rounding."""
    model = ss.models.mlp(hidden=(16,))
    members = [(o, s) for o in ("sgdm", "tam", "momo", "adamem_adamw") for s in (0, 1)]
    det = device != "cpu"
    fleet = run_fleet(flip32, model, members, device=device, deterministic=det)
    for (opt, seed), res in zip(members, fleet):
        alone = ss.run(flip32, model, opt, seed=seed, device=device, deterministic=det)
        assert alone.info["engine"] == res.info["engine"] == "stacked"
        if device == "cpu":
            pd.testing.assert_frame_equal(alone.trace, res.trace)
            pd.testing.assert_frame_equal(alone.evals, res.evals)
        else:
            assert_same(res, alone, exact=False)


def test_flat_parameters_step_as_per_tensor_parameters(flip32, flip64, monkeypatch,
                                                       torch_row_sums):
    """A ReLU MLP's members keep their parameters in one buffer (one contiguous (K, *shape)
    block per parameter) and the optimizers whose update does not depend on the tensor split
    step one row per member (the blocks' rows one after another): the same traces as one
    tensor per parameter. Elementwise operations are the same; the model-wide sums run over
    the row, which is the tensors concatenated in order, as the per-tensor kernels concatenate
    a small model's tensors — bit for bit here, with torch's row sums (the native ones round
    their own way: tests/test_optim_native.py). AM-AdamW (one beta per tensor), TAM with
    scope="tensor" and torch's Adafactor keep one tensor per parameter."""
    names = ALL + ("torch.optim:RMSprop", "torch.optim:Adafactor")
    members = [(ss.optim.spec(n), i % 3) for i, n in enumerate(names)]
    members += [(ss.optim.spec("tam", scope="tensor"), 0),
                (ss.optim.spec("sgdm", lr=0.02), 1), (ss.optim.spec("tam", lr=0.03), 2)]
    for sc, model in ((flip32, ss.models.mlp(hidden=(16, 8))), (flip64, mlp64)):
        flat = run_fleet(sc, model, members, device="cpu")
        with monkeypatch.context() as m:
            m.setattr(StackedModel, "FLAT", False)
            split = run_fleet(sc, model, members, device="cpu")
        for (opt, _), a, c in zip(members, flat, split):
            pd.testing.assert_frame_equal(a.trace, c.trace, obj=opt.name)
            pd.testing.assert_frame_equal(a.evals, c.evals, obj=opt.name)
    # the layout itself: parameters are contiguous blocks of one buffer, one after another,
    # and the matmuls write the gradients into the blocks of another (no copies)
    nets = [ss.models.mlp(hidden=(8,)).build(flip32.data, seed=s) for s in (0, 1)]
    sm = StackedModel(nets, input_shape=flip32.data.input_shape)
    assert sm.flat.shape == (2 * (64 * 8 + 8 + 8 * 10 + 10),)
    assert torch.equal(torch.cat([p.reshape(-1) for p in sm.params.values()]), sm.flat)
    start = sm.flat.data_ptr()
    for p in sm.params.values():
        assert p.is_contiguous() and p.data_ptr() == start
        start += p.numel() * p.element_size()
    x = torch.stack([flip32.data.x_train[:5]] * 2)
    _, _, grads = sm.step(x, torch.stack([flip32.data.y_train[:5]] * 2))
    assert [g.data_ptr() for g in grads] == [g.data_ptr() for g in sm.grad_views]
    assert torch.equal(torch.cat([g.reshape(-1) for g in grads]), sm.flat_grad)
    for net, k in zip(nets, (0, 1)):  # each block's rows are the members' gradients
        net.zero_grad()
        torch.nn.functional.cross_entropy(net(x[k]), flip32.data.y_train[:5]).backward()
        for g, p in zip(grads, net.parameters()):
            torch.testing.assert_close(g[k], p.grad)
    from shiftsim.fleet.learner import StackedLearner
    lrn = StackedLearner(ss.models.mlp(hidden=(8,)), [(ss.optim.spec("tam"), 0),
                                                     (ss.optim.spec("adamem_adamw"), 1)])
    lrn.setup(flip32.data, torch.device("cpu"), 10)
    assert [g.flat for g in lrn.groups] == [True, False]
    rows_group = lrn.groups[0]  # a member's row: the blocks' rows, as (members, n) views
    assert rows_group.flags["rows"] and "rows" not in lrn.groups[1].flags
    assert [tuple(p.shape) for p in rows_group.params] == [(1, 512), (1, 8), (1, 80), (1, 10)]
    assert [p.data_ptr() for p in rows_group.params] == [
        p.data_ptr() for p in lrn.net.params.values()]
    assert [g.data_ptr() for g in rows_group.flat_grads] == [
        g.data_ptr() for g in lrn.net.grad_views]


TORCH_FUSED = ("sgd", "sgdm", "nesterov", "adam", "adamw")


def test_torch_optimizers_step_with_fused_kernels_bit_for_bit_with_run(flip32):
    """torch's SGD, Adam and AdamW step their members with torch's fused kernels, one call per
    set of hyperparameter values (exact floats from the specs): a member in a fleet with other
    learning rates, betas, decays equals the same run alone bit for bit. (Before, a group with
    several learning rates took them as float32 tensors and rounded Adam's step size
    differently from the same run alone.)"""
    model = ss.models.mlp(hidden=(16,))
    members = []
    for i, name in enumerate(TORCH_FUSED):
        base = ss.optim.spec(name)
        members += [(base, i), (base.replace(lr=base.kwargs["lr"] * 0.3), i)]
    members += [(ss.optim.spec("adam", betas=(0.8, 0.99), amsgrad=True), 0),
                (ss.optim.spec("adam", amsgrad=True, weight_decay=0.01), 1),
                (ss.optim.spec("adamw", weight_decay=0.1, maximize=False), 2),
                (ss.optim.spec("sgdm", dampening=0.5, weight_decay=1e-3), 3),
                (ss.optim.spec("torch.optim:SGD", lr=0.05, momentum=0.0, weight_decay=1e-2), 4)]
    fleet = run_fleet(flip32, model, members, device="cpu")
    from shiftsim.fleet.learner import StackedLearner
    lrn = StackedLearner(model, members)
    lrn.setup(flip32.data, torch.device("cpu"), 10)
    assert all("calls" in g.state for g in lrn.groups)  # every group steps fused
    for (opt, seed), res in zip(members, fleet):
        alone = ss.run(flip32, model, opt, seed=seed, device="cpu", threads=1)
        pd.testing.assert_frame_equal(alone.trace, res.trace, obj=opt.name)
        pd.testing.assert_frame_equal(alone.evals, res.evals, obj=opt.name)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_fused_rules_equal_the_operation_by_operation_rules_in_float64(kind):
    """The fused path against the op-by-op kernels (torch's own Adam/SGD operations in order)
    over 30 steps, float64, per-member hyperparameters, gradients some of which are transposed
    (autograd gives such): equal to 1e-13 relative."""
    from shiftsim.optim import adam as A
    from shiftsim.optim import fused
    from shiftsim.optim import sgd as S
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 5, 4), (3, 7)]
    if kind == "sgd":
        settings = [dict(nesterov=False, maximize=False), dict(nesterov=True, maximize=True)]
        hps = [{"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0},
               {"lr": 0.05, "momentum": 0.5, "dampening": 0.2, "weight_decay": 1e-2},
               {"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0}]
    else:
        settings = [dict(decoupled=d, amsgrad=a, maximize=m)
                    for d, a, m in ((False, False, False), (True, True, False),
                                    (False, True, True))]
        hps = [{"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
               {"lr": 3e-3, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.1},
               {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}]
    assert len(fused.member_calls(hps)) == 2
    for flags in settings:
        if flags.get("nesterov"):  # torch's Nesterov takes no dampening
            hps = [{**h, "dampening": 0.0} for h in hps]
        hp = {n: torch.tensor([h[n] for h in hps], dtype=torch.float64) for n in hps[0]}
        p0 = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
        pa, pb = [p.clone() for p in p0], [p.clone() for p in p0]
        if kind == "sgd":
            sa, sb = S.fused_sgd_init(pa, hps), S.sgd_init(pb)
        else:
            sa, sb = A.fused_adam_init(pa, hps, flags["amsgrad"]), A.adam_init(pb,
                                                                               flags["amsgrad"])
        for _ in range(30):
            grads = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
            grads[0] = grads[0].transpose(1, 2).contiguous().transpose(1, 2)
            assert not grads[0].is_contiguous()
            if kind == "sgd":
                S.fused_sgd(grads, sa, **flags)
                S.sgd(pb, grads, sb, learner_dims=1, **flags,
                      **{n: hp[n] for n in ("lr", "momentum", "dampening", "weight_decay")})
            else:
                A.fused_adam(grads, sa, **flags)
                A.adam(pb, grads, sb, learner_dims=1, decoupled=flags["decoupled"],
                       maximize=flags["maximize"], lr=hp["lr"], beta1=hp["beta1"],
                       beta2=hp["beta2"], eps=hp["eps"], weight_decay=hp["weight_decay"])
        for a, b, p in zip(pa, pb, p0):
            assert not torch.equal(a, p)
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


def test_fused_kernels_only_where_available(flip32):
    """The fused path needs a device with the kernels and each member's exact hyperparameters;
    elsewhere (here: no members given, a meta tensor) the op-by-op rule steps."""
    from shiftsim.optim import fused
    p = [torch.zeros(2, 3)]
    assert fused.available(p, {"members": [{}, {}]})
    assert not fused.available(p, {})
    assert not fused.available([torch.zeros(2, 3, device="meta")], {"members": [{}, {}]})
    assert not fused.available([torch.zeros(3, 2).t()], {"members": [{}, {}]})
    assert not fused.available([torch.zeros(2, 3, dtype=torch.int64)], {"members": [{}, {}]})
    from shiftsim.optim.adam import STACKED
    state = STACKED.init(p, {"lr": 0.1}, {"amsgrad": False})
    assert "calls" not in state and state["step"] == 0


def _one_change_each(name):
    """The optimizer's spec and, per numeric hyperparameter, a spec with that one changed."""
    from shiftsim.optim.stacking import member_hyper
    base = ss.optim.spec(name)
    hp = member_hyper([base])[0]
    out = [base]
    for k, v in hp.items():
        if k in ("beta1", "beta2"):
            b1, b2 = hp["beta1"], hp["beta2"]
            kw = {"betas": (b1 * 0.97, b2) if k == "beta1" else (b1, 1 - (1 - b2) * 1.3)}
        else:
            kw = {k: v * 0.37 if v else 0.013}
        try:
            out.append(base.replace(**kw))
            ss.optim.stacking.group_key(out[-1])
        except Exception:  # fixed by the name (sgd's momentum) or not allowed (Nesterov's
            out.pop()      # dampening)
    return out


@pytest.mark.parametrize("name", ALL)
def test_a_member_computes_the_same_in_any_fleet(name, flip32):
    """Members that differ in one hyperparameter each share a group (their hyperparameters
    as (K,) tensors); each equals its run alone (ss.run, a one-member fleet) bit for bit.
    Before, a group with several values of a hyperparameter took tensors where a member alone
    took floats, and rounded differently for 9 of the 13 optimizers (Adam and AdamW, now stepped
    by torch's fused kernels, and 7 others through the tensors: the bias corrections and
    step sizes of the Adam-like ones: float32 products instead of one float64 product)."""
    model = ss.models.mlp(hidden=(8,))
    specs = _one_change_each(name)
    assert len(specs) >= 3
    members = [(o, i % 2) for i, o in enumerate(specs)]
    fleet = run_fleet(flip32, model, members, device="cpu")
    assert fleet[0].info["fleet"]["groups"] == 1
    for (opt, seed), res in zip(members, fleet):
        alone = ss.run(flip32, model, opt, seed=seed, device="cpu", threads=1)
        pd.testing.assert_frame_equal(alone.trace, res.trace, obj=str(opt.kwargs))
        pd.testing.assert_frame_equal(alone.evals, res.evals, obj=str(opt.kwargs))


def test_an_autograd_mlp_member_computes_the_same_in_any_fleet(flip32):
    """A GELU MLP (batched matmuls and autograd, per-parameter tensors): a member alone and in
    a fleet with other optimizers and learning rates give the same trace bit for bit."""
    def gelu(data):
        return MLP(64, 10, (16,), activation="gelu")

    adam = ss.optim.spec("adam")
    alone = run_fleet(flip32, gelu, [(adam, 0)], device="cpu")[0]
    mixed = run_fleet(flip32, gelu, [(ss.optim.spec("tam"), 1), (adam.replace(lr=0.01), 2),
                                     (adam, 0), (ss.optim.spec("grams"), 3)], device="cpu")[2]
    pd.testing.assert_frame_equal(alone.trace, mixed.trace)
    pd.testing.assert_frame_equal(alone.evals, mixed.evals)


@pytest.mark.parametrize("kind", ["sgd", "sgd_nesterov", "adam", "adamw_amsgrad"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_fused_call_merges_members_only_where_the_bits_stay(kind, threads, dtype):
    """Consecutive members' slices go to torch's fused kernels as one tensor where each slice
    has a multiple of fused.WHOLE elements (here 128, and 64 x 3), member by member elsewhere
    (10 and 3 elements: torch's kernels compute a tensor's tail differently from its whole
    vectors: merged with the rest, they come out different, checked below); 25 steps equal the
    one-tensor-per-member calls bit for bit, with one and two threads."""
    from shiftsim.optim import adam as A
    from shiftsim.optim import fused
    from shiftsim.optim import sgd as S
    shapes = [(6, 2 * fused.WHOLE), (6, 10), (6, fused.WHOLE, 3), (6, 3)]
    hp_sgd = {"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "weight_decay": 1e-2}
    hp_adam = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 1e-2}
    base = hp_sgd if kind.startswith("sgd") else hp_adam
    hps = [base, base, base, {**base, "lr": 0.05}, base, base]  # calls: members 0,1,2,4,5 and 3

    def run(merge, wrong=False):
        gen = torch.Generator().manual_seed(0)
        params = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
        if kind.startswith("sgd"):
            state = S.fused_sgd_init(params, hps)
        else:
            state = A.fused_adam_init(params, hps, amsgrad=kind.endswith("amsgrad"))
        calls = state["calls"]
        assert [c.members for c in calls] == [[0, 1, 2, 4, 5], [3]]
        # runs 0-2 and 4-5: each merged for the two 64-multiples, the tails member by member
        assert len(calls[0].state["params"]) == 2 * 2 + 2 * 5
        for c in calls:
            if wrong:  # every run merged, tails included: what the rule avoids
                c.plan = [(j, tuple(r)) for r in ([0, 1, 2], [4, 5]) for j in range(4)] \
                    if len(c.members) > 1 else c.plan
            elif not merge:
                c.plan = None
            if not merge or wrong:
                lists = {k: v for k, v in c.state.items() if k not in ("steps",) and v}
                src = {"params": params, "momentum_buffer": state.get("momentum_buffer"),
                       "exp_avg": state.get("exp_avg"), "exp_avg_sq": state.get("exp_avg_sq"),
                       "max_exp_avg_sq": state.get("max_exp_avg_sq")}
                c.state.update({k: c.take(src[k]) for k in lists})
                if "steps" in c.state:
                    c.state["steps"] = [state["step"]] * len(c.state["params"])
        for _ in range(25):
            grads = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
            if kind.startswith("sgd"):
                S.fused_sgd(grads, state, nesterov=kind.endswith("nesterov"))
            else:
                A.fused_adam(grads, state, decoupled=kind.startswith("adamw"),
                             amsgrad=kind.endswith("amsgrad"))
        return params

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        merged, apart = run(True), run(False)
        wrong = run(True, wrong=True)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(merged, apart):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(wrong, apart))  # tails merged: not equal


@pytest.mark.parametrize("name", ["sgdm", "adam"])
def test_fused_members_merged_in_a_fleet_equal_their_runs_alone(name, flip32):
    """Six members of one fused call (their 64-multiple slices merged, the rest member by
    member) equal their runs alone bit for bit."""
    model = ss.models.mlp(hidden=(64,))
    members = [(ss.optim.spec(name), s) for s in range(6)]
    fleet = run_fleet(flip32, model, members, device="cpu")
    for (opt, seed), res in zip(members, fleet):
        alone = ss.run(flip32, model, opt, seed=seed, device="cpu", threads=1)
        pd.testing.assert_frame_equal(alone.trace, res.trace)
        pd.testing.assert_frame_equal(alone.evals, res.evals)


def test_a_fused_call_keeps_its_gradient_slices_only_for_memory_rewritten_in_place():
    from shiftsim.optim import fused
    call = fused.member_calls([{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.1}])[0]
    flat = torch.zeros(3, 4)
    first = call.grads([flat])
    assert call._grads is None  # seen once: not kept yet
    second = call.grads([flat])
    assert call.grads([flat]) is second  # the same memory twice in a row: kept
    flat[2] = 7.0  # the kept slices are views: they see the new values
    assert [r.tolist() for r in second] == [[0.0] * 4, [7.0] * 4] and len(first) == 2
    fresh = torch.ones(3, 4)
    got = call.grads([fresh])
    assert got is not second and torch.equal(got[1], fresh[2]) and call._grads is None
    t = torch.arange(24.0).view(3, 4, 2).transpose(1, 2)  # not contiguous: copied, not kept
    rows = call.grads([t])
    assert all(r.is_contiguous() for r in rows) and torch.equal(rows[1], t[2])


def test_the_peak_benchmark_runs_and_says_where_a_step_goes():
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "fleet.py"), "--peak",
                          "--k", "4", "--steps", "20", "--rounds", "1", "--hidden", "8"],
                         capture_output=True, text=True, timeout=300, cwd=root)
    assert out.returncode == 0, out.stderr
    assert "fraction of the bmm peak" in out.stdout
    assert "each round's fastest of 5 runs of 40 steps' matmuls" in out.stdout
    piece = out.stdout.split("timed by piece")[1]
    assert "model" in piece and "tam._tam_stacked (1)" in piece and "the loop" in piece


def test_the_peak_benchmark_runs_the_members_as_processes():
    """``--processes 2``: the members as two one-thread fleet processes against the bmm on two
    threads (how a study's workers run them); a process count it cannot take is one line."""
    root = Path(__file__).resolve().parent.parent
    args = [sys.executable, str(root / "benchmarks" / "fleet.py"), "--peak", "--k", "5",
            "--steps", "20", "--rounds", "1", "--hidden", "8"]
    out = subprocess.run(args + ["--processes", "2"], capture_output=True, text=True,
                         timeout=300, cwd=root)
    assert out.returncode == 0, out.stderr
    assert "2 fleets of 2/3 members" in out.stdout and "bmm with 2 threads" in out.stdout
    assert "fraction of the bmm peak" in out.stdout and "each process's own time" in out.stdout
    bad = subprocess.run(args + ["--processes", "6"], capture_output=True, text=True,
                         timeout=300, cwd=root)
    assert bad.returncode == 2 and "--processes must be between 1 and --k (5), got 6" in bad.stderr


def _row_group(name):
    """The optimizer's stacked rule, flags and members (its spec and specs with one numeric
    hyperparameter changed, those that share its group)."""
    from shiftsim.optim.stacking import group_key, member_hyper
    specs = _one_change_each(name)
    key = group_key(specs[0])
    specs = [o for o in specs if group_key(o) == key]
    flags = dict(key.flags)
    if key.rule.exact_members:
        flags["members"] = member_hyper(specs)
    return key.rule, flags, specs


#: the optimizers with a fleet row kernel (the others step the blocks as a list of tensors:
#: torch's fused SGD and Adam(W) kernels, MoMo-Adam's and AM-AdamW's per-tensor kernels)
ROW_KERNELS = ("tam", "adatam", "adatamw", "adamem_sgd", "momo", "grams")


@pytest.mark.parametrize("name", ROW_KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_in_segments_step_as_one_tensor_of_rows(name, dtype, row_sums):
    """A fleet's row kernels step each member's parameters as one row, given as the
    parameters' blocks (the row's segments, ``flags["rows"]``: no gradient copies): the same
    numbers, bit for bit, as the rows in one tensor, with torch's row sums and with the native
    ones, over 12 steps (MoMo's first step included) with members that differ in each
    hyperparameter."""
    from shiftsim.optim._kernels import rows
    from shiftsim.optim.stacking import group_hyper
    rule, flags, specs = _row_group(name)
    assert rule.flat(flags)
    K, widths = len(specs), (40, 8, 80, 10, 3)
    gen = torch.Generator().manual_seed(5)
    start = torch.randn(K, sum(widths), generator=gen, dtype=dtype) * 0.3
    grads = [torch.randn(K, sum(widths), generator=gen, dtype=dtype) for _ in range(12)]
    losses = [torch.rand(K, generator=gen, dtype=dtype) + 0.5 for _ in range(12)]
    out = {}
    for split in (False, True):
        f = dict(flags)
        if split:
            params = rows([b.contiguous() for b in start.split(widths, 1)])
            f["rows"] = True
        else:
            params = [start.clone()]
        hp = group_hyper(specs, params[0])
        state = rule.init(params, hp, f)
        diags = []
        for g, loss in zip(grads, losses):
            gs = [b.contiguous() for b in g.split(widths, 1)] if split else [g.clone()]
            diags.append([v.clone() for v in rule.update(state, params, gs, loss, hp, f)])
        out[split] = (torch.cat(params, 1), diags)
    assert torch.isfinite(out[False][0]).all()
    assert torch.equal(out[True][0], out[False][0])
    for a, b in zip(out[True][1], out[False][1]):
        assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("name, whole", [("tam", True), ("sgdm", True), ("momo_adam", False)])
def test_a_single_member_steps_its_whole_buffer_as_one_row(name, whole, flip32):
    """``ss.run`` of a ReLU MLP (a one-member fleet): a rule whose numbers do not depend on how
    the row is split (``Stacked.segment_invariant``) steps the whole parameter buffer as one
    tensor (fewer operations); MoMo-Adam, whose per-tensor sums round by the split, keeps the
    blocks, as in a fleet of any size, so that a member alone rounds as in the fleet (MLP
    64-64-10, 300 steps, bit for bit)."""
    from shiftsim.fleet.learner import StackedLearner
    model = ss.models.mlp(hidden=(64,))
    lrn = StackedLearner(model, [(ss.optim.spec(name), 0)])
    lrn.setup(flip32.data, torch.device("cpu"), 10)
    (g,) = lrn.groups
    shapes = [tuple(p.shape) for p in g.params]
    assert shapes == ([(1, 64 * 64 + 64 + 64 * 10 + 10)] if whole else
                      [(1, 64 * 64), (1, 64), (1, 640), (1, 10)])
    assert g.params[0].data_ptr() == lrn.net.flat.data_ptr()
    sc = ss.label_flip_tasks(flip32.data, rate=0.5, tasks=2, steps_per_task=150)
    specs = _one_change_each(name)[:3]
    fleet = run_fleet(sc, model, [(o, 0) for o in specs], device="cpu")
    for opt, res in zip(specs, fleet):
        alone = ss.run(sc, model, opt, seed=0, device="cpu", threads=1)
        pd.testing.assert_frame_equal(alone.trace, res.trace, obj=opt.name)


# ------------------------------------------------------------------------------------ chunks


def test_a_fleet_in_chunks_gives_every_member_the_same_bits(flip32):
    """run_fleet's chunks (members sorted by optimizer group, consecutive chunks run one after
    another over the whole scenario) change no member's numbers: every seed optimizer, some
    with a second learning rate, in one program and in chunks of 1, 3 and 5, bit for bit (one
    torch thread), in the caller's order."""
    model = ss.models.mlp(hidden=(32,))
    members = []
    for i, name in enumerate(ALL):
        base = ss.optim.spec(name)
        members.append((base, i % 3))
        if i % 4 == 0:
            members.append((base.replace(lr=base.kwargs.get("lr", 0.01) * 0.5), 1))
    whole = run_fleet(flip32, model, members, device="cpu", chunk_members=len(members))
    assert whole[0].info["fleet"]["chunks"] == 1
    assert whole[0].info["fleet"]["groups"] == 12  # sgd and sgdm: torch's SGD, one group
    for size in (1, 3, 5):
        parts = run_fleet(flip32, model, members, device="cpu", chunk_members=size)
        assert parts[0].info["fleet"] == {"members": len(members), "groups": 12,
                                          "compiled": False,
                                          "chunks": math.ceil(len(members) / size),
                                          "lanes": 1}
        for (opt, seed), a, b in zip(members, whole, parts):
            assert b.info["learner"]["optimizer"] == opt.to_dict() and b.info["seed"] == seed
            pd.testing.assert_frame_equal(a.trace, b.trace, obj=f"{opt.name} {size}")
            pd.testing.assert_frame_equal(a.evals, b.evals, obj=f"{opt.name} {size}")
            assert a.diverged_step == b.diverged_step


def test_the_default_chunks_follow_a_members_parameter_bytes():
    """chunk_bounds: near-equal chunks of at most CHUNK_BYTES of parameters with one thread
    when two members or more fit; one chunk with more threads or bigger members; an explicit
    chunk_members always."""
    from shiftsim.fleet import CHUNK_BYTES, chunk_bounds

    assert CHUNK_BYTES == 1 << 20
    assert chunk_bounds(32, 104_488, 1) == [(0, 8), (8, 16), (16, 24), (24, 32)]  # 10 fit
    assert chunk_bounds(120, 19_240, 1) == [(0, 40), (40, 80), (80, 120)]  # 54 fit
    assert chunk_bounds(10, CHUNK_BYTES // 2, 1) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    assert chunk_bounds(10, CHUNK_BYTES // 2 + 1, 1) == [(0, 10)]  # one fits: one program
    assert chunk_bounds(32, 104_488, 2) == [(0, 32)]
    # in lanes (one torch thread each): the one-thread chunks, a multiple of the lanes' count
    assert chunk_bounds(32, 104_488, 2, lanes=2) == [(0, 8), (8, 16), (16, 24), (24, 32)]
    assert chunk_bounds(24, 104_488, 2, lanes=2) == [(0, 6), (6, 12), (12, 18), (18, 24)]
    assert chunk_bounds(120, 19_240, 2, lanes=2) == [(0, 30), (30, 60), (60, 90), (90, 120)]
    assert chunk_bounds(8, 4_400_000, 2, lanes=2) == [(0, 4), (4, 8)]  # none fits: one a lane
    assert chunk_bounds(3, 104_488, 8, lanes=8) == [(0, 1), (1, 2), (2, 3)]  # one a member
    assert chunk_bounds(7, 10, 2, chunk_members=7, lanes=2) == [(0, 7)]  # asked for: as asked
    assert chunk_bounds(5, 10, 1) == [(0, 5)]
    assert chunk_bounds(7, 10, 4, chunk_members=3) == [(0, 2), (2, 5), (5, 7)]
    assert chunk_bounds(7, 10**9, 1, chunk_members=7) == [(0, 7)]


def test_run_fleet_chunks_a_relu_mlp_by_default_with_one_thread_on_the_cpu(digits):
    """64-128-128-10 members (104 KB of parameters each): 24 of them run as 3 chunks with one
    thread, and as one program with three threads (more than the default lanes take), with a
    model that is not a ReLU MLP, or asked for (chunk_members=24); each member's trace the
    same bits in the default chunks as in one program."""
    sc = ss.label_flip_tasks(digits, rate=0.5, tasks=2, steps_per_task=8, eval_every=8,
                             eval_size=50)
    model = ss.models.mlp(hidden=(128, 128))
    members = [(("sgdm", "adam", "tam")[i % 3], i) for i in range(24)]
    chunked = run_fleet(sc, model, members, device="cpu")
    assert chunked[0].info["fleet"]["chunks"] == 3
    whole = run_fleet(sc, model, members, device="cpu", chunk_members=24)
    assert whole[0].info["fleet"]["chunks"] == 1
    for a, b in zip(chunked, whole):
        pd.testing.assert_frame_equal(a.trace, b.trace)
    layer = ss.models.mlp(hidden=(128, 128), norm="layer")
    assert run_fleet(sc, layer, members[:12], device="cpu")[0].info["fleet"]["chunks"] == 1
    torch.set_num_threads(3)  # more threads than the default lanes: one program
    try:
        info = run_fleet(sc, model, members, device="cpu")[0].info["fleet"]
    finally:
        torch.set_num_threads(1)
    assert (info["chunks"], info["lanes"]) == (1, 1)


def test_the_default_lanes_follow_the_threads_and_a_members_parameter_bytes():
    """lane_count: one lane a torch thread with 2 to LANE_THREADS threads and members of at
    least LANE_MEMBER_BYTES; one otherwise; an explicit count always (at most one a member)."""
    from shiftsim.fleet import lane_count
    from shiftsim.fleet.chunks import LANE_MEMBER_BYTES, LANE_THREADS

    assert (LANE_THREADS, LANE_MEMBER_BYTES) == (2, 64 << 10)
    assert lane_count(32, 104_488, 2) == 2
    assert lane_count(32, 104_488, 1) == 1
    assert lane_count(32, 104_488, 3) == 1  # more threads than measured: one program
    assert lane_count(32, 19_240, 2) == 1  # small members: lanes lost in small fleets
    assert lane_count(32, LANE_MEMBER_BYTES, 2) == 2
    assert lane_count(1, 10**6, 2) == 1
    assert lane_count(32, 10, 1, lanes=4) == 4 and lane_count(3, 10, 1, lanes=8) == 3
    with pytest.raises(ss.errors.ShiftsimError, match="lanes"):
        lane_count(4, 10, 1, lanes=0)


@pytest.fixture
def two_threads():
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(1)


def test_with_two_threads_a_fleet_runs_in_lanes_with_one_thread_bits(digits, two_threads):
    """With two torch threads a ReLU MLP fleet of 104 KB members runs its chunks two at a
    time, each lane with one torch thread: every member's trace and evaluations are the bits
    of its one-thread run (run(threads=1) and the one-thread fleet), and torch's thread count
    is two again afterwards."""
    sc = ss.label_flip_tasks(digits, rate=0.5, tasks=2, steps_per_task=10, eval_every=10,
                             eval_size=50)
    model = ss.models.mlp(hidden=(128, 128))
    members = [(("sgdm", "adam", "tam", "momo")[i % 4], i) for i in range(12)]
    lanes = run_fleet(sc, model, members, device="cpu")
    assert torch.get_num_threads() == 2
    assert lanes[0].info["fleet"] == {"members": 12, "groups": 4, "compiled": False,
                                      "chunks": 2, "lanes": 2}
    torch.set_num_threads(1)
    alone = run_fleet(sc, model, members, device="cpu")
    assert alone[0].info["fleet"]["lanes"] == 1
    for (opt, seed), a, b in zip(members, lanes, alone):
        assert a.info["seed"] == seed and a.info["learner"]["optimizer"]["name"] == opt
        pd.testing.assert_frame_equal(a.trace, b.trace, obj=f"{opt} {seed}")
        pd.testing.assert_frame_equal(a.evals, b.evals, obj=f"{opt} {seed}")
    for i in (0, 5):
        one = ss.run(sc, model, members[i][0], seed=members[i][1], device="cpu", threads=1)
        pd.testing.assert_frame_equal(one.trace, lanes[i].trace)


def test_lanes_asked_for_run_any_stacked_model_with_one_thread_bits(flip32):
    """lanes=3 on a LayerNorm MLP (autograd, not the written-out program; default: no
    chunks): three chunks at once, the same bits as the one-thread fleet in one program;
    lanes=1 with chunks: one after another."""
    model = ss.models.mlp(hidden=(16,), norm="layer")
    members = [(name, i % 2) for i, name in enumerate(["sgdm", "adam", "tam", "momo", "sgd"])]
    whole = run_fleet(flip32, model, members, device="cpu")
    assert (whole[0].info["fleet"]["chunks"], whole[0].info["fleet"]["lanes"]) == (1, 1)
    laned = run_fleet(flip32, model, members, device="cpu", lanes=3)
    assert (laned[0].info["fleet"]["chunks"], laned[0].info["fleet"]["lanes"]) == (3, 3)
    serial = run_fleet(flip32, model, members, device="cpu", lanes=1, chunk_members=2)
    assert (serial[0].info["fleet"]["chunks"], serial[0].info["fleet"]["lanes"]) == (3, 1)
    for a, b, c in zip(whole, laned, serial):
        pd.testing.assert_frame_equal(a.trace, b.trace)
        pd.testing.assert_frame_equal(a.trace, c.trace)
        pd.testing.assert_frame_equal(a.evals, b.evals)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_a_bad_lane_count_is_one_clear_error(flip32, bad):
    with pytest.raises(ss.errors.ShiftsimError, match="lanes"):
        run_fleet(flip32, ss.models.mlp(hidden=(8,)), [("sgdm", 0)], device="cpu", lanes=bad)


def test_lanes_need_the_cpu_without_compile(flip32):
    members = [("sgdm", 0), ("adam", 1)]
    with pytest.raises(ss.errors.ShiftsimError, match=r"lanes=2 .*compile=False"):
        run_fleet(flip32, ss.models.mlp(hidden=(8,)), members, device="cpu", lanes=2,
                  compile=True)


def _slow_lanes(monkeypatch, fail=None):
    """run_members as the fleet calls it, each step 2 ms slower (a lane over the 20,000 steps
    below then takes 40 s or more); the chunk labelled "chunk 2/" calls ``fail`` 0.3 s in."""
    import time

    import shiftsim.fleet as fleet_module

    real = fleet_module.run_members

    def run_members(scenario, learner, device, **kwargs):
        if fail is not None and "chunk 2/" in (kwargs.get("label") or ""):
            time.sleep(0.3)
            fail()
        step = learner.step

        def slow_step(*args):
            time.sleep(0.002)
            return step(*args)

        learner.step = slow_step
        return real(scenario, learner, device, **kwargs)

    monkeypatch.setattr(fleet_module, "run_members", run_members)


def test_a_failing_lane_stops_the_others_and_raises_its_error(digits, monkeypatch):
    """One chunk's error: the chunks still running stop at their next step (not after the
    scenario's 20,000 steps), the error is raised, no lane is left running, and torch's thread
    count is what it was."""
    import threading
    import time

    sc = ss.label_flip_tasks(digits, rate=0.5, tasks=2, steps_per_task=10_000)
    before = threading.active_count()

    def fail():
        raise ValueError("chunk two broke")

    _slow_lanes(monkeypatch, fail)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="chunk two broke"):
        run_fleet(sc, ss.models.mlp(hidden=(8,)), [("sgdm", 0), ("adam", 1), ("tam", 2)],
                  device="cpu", lanes=3)
    assert time.perf_counter() - t0 < 10
    assert threading.active_count() == before
    assert torch.get_num_threads() == 1


def test_ctrl_c_during_lanes_stops_them_all(digits, monkeypatch):
    """Ctrl-C (KeyboardInterrupt in the main thread, which waits for the lanes) stops every
    lane at its next step and is raised; nothing keeps running. SIGINT gets Python's own
    handler for the test: a suite started in the background by a non-interactive shell
    (``make test &``) inherits it ignored, and ``interrupt_main`` then does nothing."""
    import _thread
    import signal
    import threading
    import time

    sc = ss.label_flip_tasks(digits, rate=0.5, tasks=2, steps_per_task=10_000)
    _slow_lanes(monkeypatch)
    before = threading.active_count()
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(1.0, _thread.interrupt_main)
    try:
        timer.start()
        t0 = time.perf_counter()
        with pytest.raises(KeyboardInterrupt):
            run_fleet(sc, ss.models.mlp(hidden=(8,)), [("sgdm", 0), ("adam", 1)],
                      device="cpu", lanes=2)
        timer.join()
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, old)
    assert time.perf_counter() - t0 < 10
    assert threading.active_count() == before


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "4"])
def test_a_bad_chunk_size_is_one_clear_error(flip32, bad):
    with pytest.raises(ss.errors.ShiftsimError, match="chunk_members"):
        run_fleet(flip32, ss.models.mlp(hidden=(8,)), [("sgdm", 0)], device="cpu",
                  chunk_members=bad)


def test_each_chunk_has_its_own_progress_bar(flip32, capsys):
    run_fleet(flip32, ss.models.mlp(hidden=(8,)), [("sgdm", 0), ("adam", 1)], device="cpu",
              progress=True, chunk_members=1)
    err = capsys.readouterr().err
    assert "fleet of 2, chunk 1/2" in err and "fleet of 2, chunk 2/2" in err
