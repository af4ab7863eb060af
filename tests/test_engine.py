import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import shiftsim as ss
from shiftsim.learner import TorchLearner
from shiftsim.stream import Stream, derive_seed


def _reference_loop(scenario, model_spec, lr, seed):
    """The prequential loop written plainly: same batches, same initial weights, same optimizer."""
    st = Stream(scenario, seed, "cpu")
    model = model_spec.build(scenario.data, seed=derive_seed(seed, "init"))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    rows = []
    for batch in st:
        logits = model(batch.x)
        pred = logits.argmax(1)
        loss = F.cross_entropy(logits, batch.y)
        rows.append((int((pred == batch.y).sum()), int((pred == batch.y_true).sum()),
                     float(loss.detach())))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return np.array(rows), model


def test_run_equals_the_plain_prequential_loop(tiny_scenario):
    """The per-step path is the plain loop bit for bit; the stacked program (the default for a
    ReLU MLP) gives the same predictions and the same losses up to float rounding."""
    spec = ss.models.mlp(hidden=(32,))
    ref, _ = _reference_loop(tiny_scenario, spec, 0.05, 2)
    eager = ss.run(tiny_scenario, spec, ss.optim.spec("sgdm", lr=0.05), seed=2, device="cpu",
                   vectorized=False)
    stacked = ss.run(tiny_scenario, spec, ss.optim.spec("sgdm", lr=0.05), seed=2, device="cpu")
    assert (eager.info["engine"], stacked.info["engine"]) == ("eager", "stacked")
    for res in (eager, stacked):
        tr = res.trace
        assert tr["correct"].tolist() == ref[:, 0].astype(int).tolist()
        assert tr["correct_true"].tolist() == ref[:, 1].astype(int).tolist()
        assert tr["n"].eq(16).all() and tr["step"].tolist() == list(range(90))
        assert tr["phase"].tolist() == [0] * 30 + [1] * 30 + [2] * 30
    assert np.array_equal(eager.trace["loss"].to_numpy(), ref[:, 2].astype(np.float32))
    np.testing.assert_allclose(stacked.trace["loss"].to_numpy(), ref[:, 2], rtol=1e-5)
    assert list(stacked.trace.columns) == list(eager.trace.columns)
    assert stacked.evals.equals(eager.evals)


def test_stacked_program_is_chosen_only_where_it_applies(tiny_scenario):
    run = ss.run
    assert run(tiny_scenario, ss.models.linear(), "tam", device="cpu").info["engine"] == \
        "stacked"
    def factory(params):  # an optimizer factory: the fleet cannot know what it builds
        return torch.optim.SGD(params, lr=0.1)

    # LayerNorm, GELU, a CNN, an optimizer the fleet cannot step: the per-step loop
    for model, opt in [(ss.models.mlp(hidden=(8,), norm="layer"), "sgdm"),
                       (ss.models.mlp(hidden=(8,), activation="gelu"), "sgdm"),
                       (ss.models.cnn(channels=(4,), hidden=8), "sgdm"),
                       (ss.models.mlp(hidden=(8,)), factory)]:
        assert run(tiny_scenario, model, opt, device="cpu").info["engine"] == "eager"
    with pytest.raises(ss.ShiftsimError, match="vectorized=True needs a ReLU MLP"):
        run(tiny_scenario, ss.models.mlp(hidden=(8,), norm="layer"), vectorized=True)
    with pytest.raises(TypeError, match="vectorized must be None, True or False"):
        run(tiny_scenario, ss.models.linear(), vectorized="yes")


def test_scores_come_before_training():
    # one step with a huge learning rate: the score must be that of the initial weights
    data = ss.data.synthetic(n=200, dim=4, classes=2, seed=0)
    sc = ss.Scenario(data, [ss.Phase(1)], batch_size=150, eval_every=0)
    spec = ss.models.linear()
    res = ss.run(sc, spec, ss.optim.spec("sgd", lr=100.0), seed=0, device="cpu")
    st = Stream(sc, 0, "cpu")
    batch = next(iter(st))
    init = spec.build(data, seed=derive_seed(0, "init"))
    expected = int((init(batch.x).argmax(1) == batch.y).sum())
    assert res.trace["correct"].iloc[0] == expected


def test_same_seed_is_bit_identical_and_seeds_differ(tiny_scenario, device):
    spec, opt = ss.models.mlp(hidden=(16,)), ss.optim.spec("adam")
    det = device != "cpu"  # CUDA repeats bit for bit under deterministic settings only
    a = ss.run(tiny_scenario, spec, opt, seed=5, device=device, deterministic=det)
    b = ss.run(tiny_scenario, spec, opt, seed=5, device=device, deterministic=det)
    c = ss.run(tiny_scenario, spec, opt, seed=6, device=device, deterministic=det)
    assert a.trace.equals(b.trace) and a.evals.equals(b.evals)
    assert not a.trace["loss"].equals(c.trace["loss"])


def test_divergence_stops_the_run_and_keeps_steps_before_it(device):
    # inputs scaled by 1e38 in phase 1: the first update there overflows the weights, so the
    # loss of step 21 is not finite (step 20's loss is huge but finite)
    data = ss.data.synthetic(n=300, dim=4, classes=3, seed=0)
    sc = ss.Scenario(data, [ss.Phase(20), ss.Phase(20, [ss.FeatureScale(1e38)]), ss.Phase(10)],
                     batch_size=16, eval_every=5)
    det = device != "cpu"  # runs compared bit for bit: CUDA needs deterministic settings
    res = ss.run(sc, ss.models.linear(), "sgdm", seed=0, device=device, check_every=7,
                 deterministic=det)
    every_step = ss.run(sc, ss.models.linear(), "sgdm", seed=0, device=device, check_every=1,
                        deterministic=det)
    assert res.diverged and res.diverged_step == 21
    # checking every 7 steps finds the same first non-finite step as checking every step
    assert every_step.diverged_step == 21 and res.trace.equals(every_step.trace)
    assert res.evals.equals(every_step.evals)
    assert len(res.trace) == 21 and np.isfinite(res.trace["loss"]).all()
    assert res.evals["step"].max() == 20  # evaluations after the divergence are dropped
    summary = res.summary()
    assert len(summary) == 3  # every phase listed; the unrun ones with NaN metrics
    assert summary["steps_run"].tolist() == [20, 1, 0]
    assert np.isnan(summary["online_acc"].iloc[2])
    assert "diverged at step 21" in repr(res)
    # time per step: the loop's time over the steps it ran (to the check that found the
    # divergence: 28 with checks every 7 steps, 22 with checks every step), not over the 21 it
    # kept (which made a diverged run look up to 64 times slower than it was)
    assert res.timings["ms_per_step"] == pytest.approx(1000 * res.timings["loop_s"] / 28)
    assert every_step.timings["ms_per_step"] == pytest.approx(
        1000 * every_step.timings["loop_s"] / 22)
    ok = ss.run(sc.replace(phases=sc.phases[:1]), ss.models.linear(), "sgdm", seed=0,
                device=device, deterministic=det)
    assert not ok.diverged and ok.diverged_step is None
    # the same trace prefix as the run that never saw the overflow
    assert res.trace.iloc[:20].equals(ok.trace)


def test_evaluation_schedule_and_accuracy_matrix(tiny_scenario, device):
    res = ss.run(tiny_scenario, ss.models.mlp(hidden=(16,)), "sgdm", seed=0, device=device)
    ev = res.evals
    periodic = ev[~ev["phase_end"]]
    # every 10 steps, regimes seen so far; phase ends (30, 60, 90) evaluate all three regimes
    assert sorted(periodic["step"].unique().tolist()) == [10, 20, 40, 50, 70, 80]
    assert periodic[periodic["step"] == 10]["regime"].tolist() == [0]
    assert periodic[periodic["step"] == 40]["regime"].tolist() == [0, 1]
    ends = ev[ev["phase_end"]]
    assert ends.groupby("step")["regime"].apply(list).to_dict() == {
        30: [0, 1, 2], 60: [0, 1, 2], 90: [0, 1, 2]}
    assert (ev["n"] == 100).all()
    assert np.allclose(ev["accuracy"], ev["correct"] / 100)
    R = res.accuracy_matrix
    assert R.shape == (3, 3)
    assert R.iloc[2, 2] == ends[(ends["step"] == 90) & (ends["regime"] == 2)]["accuracy"].item()


class _DiagSGD(torch.optim.SGD):
    """SGD exposing a diagnostic and recording the loss it was given."""

    needs_loss = True

    def __init__(self, params, lr=0.1):
        super().__init__(params, lr=lr)
        self.seen = []
        self._count = torch.zeros(())

    def step(self, closure=None, loss=None):
        assert loss is not None and loss.ndim == 0
        self.seen.append(float(loss))
        self._count += 1
        return super().step()

    def diagnostics(self):
        return {"count": self._count}


def test_diagnostics_become_trace_columns_and_loss_reaches_step(tiny_scenario):
    learner = TorchLearner(ss.models.mlp(hidden=(8,)), ss.optim.spec(_DiagSGD, lr=0.05))
    res = ss.run(tiny_scenario, learner, seed=0, device="cpu")
    assert res.trace["diag_count"].tolist() == [float(i + 1) for i in range(90)]
    assert np.allclose(learner.optimizer.seen, res.trace["loss"], rtol=1e-6)


def test_module_input_is_copied_and_mode_sensitive_models_score_in_eval_mode():
    data = ss.data.synthetic(n=300, dim=6, classes=3, seed=0)
    sc = ss.Scenario(data, [ss.Phase(3)], batch_size=64, eval_every=0)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.9), nn.Linear(32, 3))
    before = [p.detach().clone() for p in net.parameters()]
    res = ss.run(sc, net, ss.optim.spec("sgd", lr=0.0), seed=0, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # untouched
    net.eval()
    st = Stream(sc, 0, "cpu")
    expected = [int((net(b.x).argmax(1) == b.y).sum()) for b in st]
    assert res.trace["correct"].tolist() == expected  # lr 0: eval-mode predictions every step


def test_learner_factory_and_scores(tiny_scenario):
    res = ss.run(tiny_scenario, lambda data: nn.Sequential(nn.Flatten(), nn.Linear(64, 10)),
                 "sgdm", seed=0, device="cpu")
    s = res.scores()
    assert 0 <= s["online_acc"] <= 1 and s["steps_run"] == 90
    assert s["online_acc"] == pytest.approx(res.trace["correct"].sum() / (90 * 16))
    assert not math.isnan(s["bwt"])
    assert "diverged" not in repr(res)


def test_info_describes_the_run(tiny_scenario, device):
    res = ss.run(tiny_scenario, ss.models.mlp(hidden=(8,)), ss.optim.spec("adamw", lr=0.01),
                 seed=1, device=device)
    assert res.info["seed"] == 1 and res.info["device"].split(":")[0] == device
    assert res.info["device_type"] == device
    auto = ss.run(tiny_scenario, ss.models.mlp(hidden=(8,)), "sgdm", seed=1, device="auto")
    assert auto.info["device_type"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert res.info["learner"]["optimizer"] == ss.optim.spec("adamw", lr=0.01).to_dict()
    assert res.info["scenario"] == tiny_scenario.to_dict()
    assert res.timings["ms_per_step"] > 0


def test_threads_1_reproduces_a_studys_stored_trace_bit_for_bit(tmp_path):
    """A study runs with one torch thread; run(..., threads=1) gives its trace exactly, and the
    process's thread count is restored."""
    import pandas as pd

    from shiftsim.study import Study

    sc = ss.label_flip_tasks(ss.data.digits(), rate=1.0, tasks=2, steps_per_task=60)
    study = Study("thr", {"a": sc}, model=ss.models.cnn(channels=(4,), hidden=16),
                  optimizers={"tam": ss.optim.spec("tam", lr=0.1)}, seeds=1)
    study.run(tmp_path, workers=1, progress=False)
    (spec,) = study.grid()
    stored = ss.store.load(tmp_path).trace(spec.run_id).drop(columns="run_id")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        one = ss.run(spec.scenario, spec.model, spec.optimizer, seed=spec.seed, threads=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    pd.testing.assert_frame_equal(one.trace, stored)
    assert np.array_equal(one.trace["loss"].to_numpy(), stored["loss"].to_numpy())


def test_a_stacked_run_does_not_import_torch_dynamo():
    """The first torch.optim.Optimizer built in a process imports torch._dynamo (about a
    second); specs are checked without building one, so a ReLU-MLP run never pays it."""
    import subprocess
    import sys

    code = ("import sys, shiftsim as ss\n"
            "sc = ss.label_flip_tasks(ss.data.digits(), 1.0, tasks=2, steps_per_task=20)\n"
            "r = ss.run(sc, ss.models.mlp(hidden=(8,)), ss.optim.spec('tam', lr=0.1))\n"
            "print(r.info['engine'], 'torch._dynamo' in sys.modules, 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["stacked", "False", "False"]
