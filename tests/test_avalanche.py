"""Avalanche interoperability: export, strategies as learners and in studies, the engine
cross-check against Avalanche's Naive, the torchvision compatibility step, lazy import.

The tests that need Avalanche skip, with the install command as the reason, only where the
``avalanche`` extra is not installed; ``make test`` installs it, so they run in CI.
"""

from __future__ import annotations

import importlib.util
import pickle
import re
import subprocess
import sys
import tempfile
import textwrap
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import shiftsim as ss
from shiftsim.errors import ShiftsimError, SpecTypeError
from shiftsim.integrations import avalanche as ssav
from shiftsim.integrations.avalanche import loader as ssav_loader
from shiftsim.learner import TorchLearner, build_model
from shiftsim.stream import Stream

HAS_AVALANCHE = importlib.util.find_spec("avalanche") is not None
needs_avalanche = pytest.mark.skipif(
    not HAS_AVALANCHE, reason="the avalanche extra is not installed: "
    "pip install 'shiftsim[avalanche]' (make test installs it)")
README = Path(__file__).resolve().parent.parent / "README.md"


# ---------------------------------------------------------------------------------------------
# without Avalanche: lazy import, the compatibility step's trigger
# ---------------------------------------------------------------------------------------------

def test_importing_shiftsim_and_the_integration_imports_neither_avalanche_nor_torchvision():
    code = textwrap.dedent("""
        import sys
        import shiftsim as ss
        import shiftsim.integrations
        from shiftsim.integrations import avalanche
        from shiftsim.integrations.avalanche import AvalancheLearner, strategy_spec
        sc = ss.label_flip_tasks(ss.data.digits(), rate=1.0, tasks=2, steps_per_task=5)
        ss.run(sc, ss.models.mlp(hidden=(8,)), "sgd", device="cpu")
        AvalancheLearner(lambda model, optimizer: None)   # building one does not import it
        print(sorted(m for m in sys.modules
                     if m.split(".")[0] in ("avalanche", "torchvision", "wandb")))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


class _FakeLibrary:
    """Records what the compatibility step defines instead of touching torch.library."""

    made: list[tuple[str, str]] = []

    def __init__(self, ns: str, kind: str) -> None:
        self.defined: list[str] = []
        _FakeLibrary.made.append((ns, kind))

    def define(self, schema: str) -> None:
        self.defined.append(schema)


class _Importer:
    """Raises the given errors in turn, then imports a stand-in torchvision."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self, name: str) -> types.ModuleType:
        assert name == "torchvision"
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return types.ModuleType("torchvision")


@pytest.fixture()
def compat(monkeypatch):
    """The compatibility step with a fake torch.library; module state restored afterwards."""
    monkeypatch.setattr(ssav_loader, "_compat_library", None)
    _FakeLibrary.made = []

    def step(importer: _Importer) -> bool:
        return ssav_loader._import_torchvision(importer, library=_FakeLibrary)

    return step


def test_compat_step_does_nothing_when_torchvision_imports(compat):
    importer = _Importer()
    assert compat(importer) is False
    assert importer.calls == 1 and _FakeLibrary.made == [] and ssav_loader._compat_library is None


@pytest.mark.parametrize("error", [
    RuntimeError("CUDA error: no kernel image is available"),
    RuntimeError("operator torchvision::nms is not registered for backend CPU"),
    RuntimeError("Couldn't load custom C++ ops"),
    OSError("libc10_cuda.so: cannot open shared object file"),
    AttributeError("module 'torch' has no attribute 'library'"),
])
def test_compat_step_reraises_every_other_import_error_untouched(compat, error):
    importer = _Importer(error)
    with pytest.raises(type(error)) as info:
        compat(importer)
    assert info.value is error
    assert importer.calls == 1 and _FakeLibrary.made == [] and ssav_loader._compat_library is None


def test_missing_torchvision_names_the_extra(compat):
    with pytest.raises(ShiftsimError, match=r"torchvision is not installed.*shiftsim\[avalanche\]"):
        compat(_Importer(ModuleNotFoundError("No module named 'torchvision'")))
    assert _FakeLibrary.made == []


def test_compat_step_runs_on_exactly_the_missing_operator_error(compat, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision._meta_registrations", types.ModuleType("m"))
    importer = _Importer(RuntimeError("operator torchvision::nms does not exist"))
    assert compat(importer) is True
    assert importer.calls == 2  # the failed import, then the import after the repair
    assert _FakeLibrary.made == [("torchvision", "FRAGMENT")]
    assert ssav_loader._compat_library.defined == [
        "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
        "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"]
    # the half-imported package was dropped before importing again
    assert "torchvision._meta_registrations" not in sys.modules


def test_compat_step_that_does_not_help_says_so(compat):
    first = RuntimeError("operator torchvision::nms does not exist")
    with pytest.raises(ShiftsimError, match=r"torchvision does not import with this torch "
                       r"\(.*\): operator torchvision::nms does not exist; install the "
                       r"torchvision release that matches torch"):
        compat(_Importer(first, RuntimeError("operator torchvision::roi_align does not exist")))


def test_avalanche_learner_checks_its_arguments_without_avalanche():
    with pytest.raises(SpecTypeError, match="strategy must be an Avalanche strategy class"):
        ssav.AvalancheLearner("Naive")
    with pytest.raises(SpecTypeError, match=r"must accept the keyword arguments model= and "
                       r"optimizer=; it accepts \['model'\]"):
        ssav.AvalancheLearner(lambda model: None)

    def factory(model, optimizer, mem_size=10):
        return None

    with pytest.raises(ShiftsimError, match="unknown argument 'mem_sise' for strategy .*factory"
                       ".*allowed: mem_size, model, optimizer"):
        ssav.AvalancheLearner(factory, mem_sise=5)


# ---------------------------------------------------------------------------------------------
# with Avalanche
# ---------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one torch thread (as studies use) keeps the shared CI machine's
    oversubscribed thread pools out of the timings; results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def av():
    if not HAS_AVALANCHE:
        pytest.skip("the avalanche extra is not installed: pip install 'shiftsim[avalanche]' "
                    "(make test installs it)")
    return ssav.import_avalanche()


@pytest.fixture(scope="module")
def flip(digits):
    """2 tasks x 40 steps of 16 samples, evaluated every 20 steps."""
    return ss.label_flip_tasks(digits, rate=1.0, tasks=2, steps_per_task=40, batch_size=16,
                               eval_every=20, eval_size=120)


def _naive(model, optimizer, batch_size, metrics=(), **kwargs):
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Naive(model=model, optimizer=optimizer, criterion=torch.nn.CrossEntropyLoss(),
                     train_mb_size=batch_size, train_epochs=1, device="cpu",
                     evaluator=EvaluationPlugin(*metrics, loggers=[]), **kwargs)


def _tensors(dataset):
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([it[0] for it in items]), torch.tensor([int(it[1]) for it in items])


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                 b.state_dict().values()))


@needs_avalanche
def test_the_plain_torchvision_import_decides_whether_the_compat_step_ran(av):
    """In this environment: the step ran exactly when a plain ``import torchvision`` fails with
    the missing-operator error, and then only torchvision.ops kernels are unusable."""
    plain = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True,
                           text=True, timeout=120)
    if plain.returncode == 0:
        assert ssav_loader._compat_library is None
    else:
        assert re.search(r"operator torchvision::\w+ does not exist", plain.stderr)
        assert ssav_loader._compat_library is not None
        import torchvision

        with pytest.raises(RuntimeError, match="Couldn't load custom C\\+\\+ ops"):
            torchvision.ops.nms(torch.rand(3, 4), torch.rand(3), 0.5)
    assert av.__version__.startswith("0.6") or tuple(map(int, av.__version__.split(".")[:2])) \
        >= (0, 6)


@needs_avalanche
def test_to_avalanche_holds_the_stream_phase_by_phase_and_heldout_sets_per_regime(av, digits):
    sc = ss.recurring(digits, [[], [ss.Rotate(40), ss.GaussianNoise(0.1)]], cycles=2,
                      steps_per_phase=6, batch_size=8, eval_size=50,
                      transition=ss.Gradual(3))
    bm = ssav.to_avalanche(sc, seed=5)
    train, test = list(bm.train_stream), list(bm.test_stream)
    assert len(train) == 4 and len(test) == sc.num_regimes == 2
    batches = list(Stream(sc, 5, "cpu"))
    for k, exp in enumerate(train):
        mine = [b for b in batches if b.phase == k]
        x, y = _tensors(exp.dataset)
        assert torch.equal(x, torch.cat([b.x for b in mine]))  # shifted, noise and ramp included
        assert torch.equal(y, torch.cat([b.y for b in mine]))
        assert list(exp.dataset.targets) == y.tolist()
        assert list(exp.dataset.targets_true) == torch.cat([b.y_true for b in mine]).tolist()
        assert list(exp.dataset.sample_index) == torch.cat([b.index for b in mine]).tolist()
        assert list(exp.dataset.step) == [b.step for b in mine for _ in range(8)]
        assert list(exp.dataset.is_new) == torch.cat([b.is_new for b in mine]).int().tolist()
        assert exp.dataset[0][2] == 0  # task label
    assert list(train[2].dataset.is_new).count(0) > 0  # the ramp mixes in the previous regime
    stream = Stream(sc, 5, "cpu")
    for r, exp in enumerate(test):
        hx, hy = stream.heldout(r)
        x, y = _tensors(exp.dataset)
        assert torch.equal(x, hx) and torch.equal(y, hy) and len(y) == 50


@needs_avalanche
def test_to_avalanche_online_is_one_mini_experience_per_shiftsim_batch(av, flip):
    bm = ssav.to_avalanche_online(flip, seed=2)
    exps = list(bm.train_stream)
    assert len(exps) == flip.total_steps == 80
    batches = list(Stream(flip, 2, "cpu"))
    for t, (exp, batch) in enumerate(zip(exps, batches)):
        x, y = _tensors(exp.dataset)
        assert torch.equal(x, batch.x) and torch.equal(y, batch.y)
        assert list(exp.dataset.step) == [t] * 16 and exp.current_experience == t
    assert [t for t, e in enumerate(exps) if e.is_first_subexp] == [0, 40]
    assert [t for t, e in enumerate(exps) if e.is_last_subexp] == [39, 79]
    assert exps[0].origin_experience is not exps[40].origin_experience
    assert len(list(bm.train_stream)) == 80  # the lazy stream can be iterated again
    again = [_tensors(e.dataset)[1] for e in ssav.to_avalanche_online(flip, seed=2).train_stream]
    assert all(torch.equal(a, _tensors(e.dataset)[1]) for a, e in zip(again, exps))
    assert len(list(bm.test_stream)) == 2


@needs_avalanche
@pytest.mark.parametrize("optimizer", ["sgdm", "tam", "adam"])
def test_engine_and_avalanche_naive_agree_exactly(av, flip, optimizer):
    """The cross-check: the same batches in the same order (to_avalanche_online), the same
    initial weights and the same optimizer. shiftsim's engine and Avalanche's Naive give the
    same online-accuracy sequence, the same losses and the same final weights, bit for bit,
    and the same held-out accuracies at the end."""
    from avalanche.core import SupervisedPlugin
    from avalanche.evaluation.metrics import accuracy_metrics

    model_spec, seed = ss.models.mlp(hidden=(32,)), 3
    learner = TorchLearner(model_spec, optimizer)
    res = ss.run(flip, learner, seed=seed, device="cpu")

    class Losses(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.values = []

        def after_training_iteration(self, strategy, **kwargs):
            self.values.append(strategy.loss.detach().reshape(()))

    model = build_model(model_spec, flip.data, seed)
    losses = Losses()
    strategy = _naive(model, ss.optim.spec(optimizer).build(model.parameters()), 16,
                      metrics=[accuracy_metrics(experience=True)], plugins=[losses])
    bm = ssav.to_avalanche_online(flip, seed=seed)
    correct = []
    for exp in bm.train_stream:
        x, y = _tensors(exp.dataset)
        with torch.no_grad():  # score before training, as shiftsim does
            correct.append(int((model(x).argmax(1) == y).sum()))
        strategy.train(exp, shuffle=False)
    assert correct == res.trace["correct"].tolist()
    assert np.array_equal(torch.stack(losses.values).numpy(), res.trace["loss"].to_numpy())
    assert _same_weights(model, learner.model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = strategy.eval(bm.test_stream)
    final = res.evals[res.evals["step"] == flip.total_steps].sort_values("regime")
    avalanche_acc = [metrics[f"Top1_Acc_Exp/eval_phase/test_stream/Exp{r:03d}"] for r in (0, 1)]
    assert avalanche_acc == final["accuracy"].tolist()


@needs_avalanche
def test_avalanche_learner_naive_reproduces_the_torch_learner(av, flip):
    from avalanche.training import Naive

    ref_learner = TorchLearner(ss.models.mlp(hidden=(32,)), "momo")
    ref = ss.run(flip, ref_learner, seed=1, device="cpu")
    # unshuffled mini-batches: bit for bit, with an optimizer whose step needs the loss (MoMo)
    exact = ssav.AvalancheLearner(Naive, model=ss.models.mlp(hidden=(32,)), optimizer="momo",
                                  train_kwargs={"shuffle": False})
    res = ss.run(flip, exact, seed=1, device="cpu")
    assert res.trace["correct"].tolist() == ref.trace["correct"].tolist()
    assert np.array_equal(res.trace["loss"].to_numpy(), ref.trace["loss"].to_numpy())
    assert res.evals["correct"].tolist() == ref.evals["correct"].tolist()
    assert _same_weights(exact.model, ref_learner.model)
    assert [c for c in res.trace.columns if c.startswith("diag_")] == \
        [c for c in ref.trace.columns if c.startswith("diag_")] != []
    # Avalanche's default shuffles within the batch: the same up to float summation order
    shuffled = ssav.AvalancheLearner(Naive, model=ss.models.mlp(hidden=(32,)), optimizer="momo")
    res2 = ss.run(flip, shuffled, seed=1, device="cpu")
    np.testing.assert_allclose(res2.trace["loss"], ref.trace["loss"], rtol=0, atol=1e-5)
    assert np.mean(res2.trace["correct"] == ref.trace["correct"]) >= 0.95
    for p, q in zip(shuffled.model.parameters(), ref_learner.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5)
    assert res2.info["learner"]["strategy"].endswith(":Naive")
    assert res2.info["learner"]["optimizer"]["name"] == "momo"


def _batchnorm_mlp(data):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32),
                               torch.nn.BatchNorm1d(32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


@needs_avalanche
def test_a_mode_sensitive_model_is_scored_in_eval_mode_like_the_torch_learner(av, flip):
    from avalanche.training import Naive

    ref_learner = TorchLearner(_batchnorm_mlp, "sgdm")
    ref = ss.run(flip, ref_learner, seed=2, device="cpu")
    learner = ssav.AvalancheLearner(Naive, model=_batchnorm_mlp, optimizer="sgdm",
                                    train_kwargs={"shuffle": False})
    res = ss.run(flip, learner, seed=2, device="cpu")
    assert res.trace["correct"].tolist() == ref.trace["correct"].tolist()
    assert res.evals["correct"].tolist() == ref.evals["correct"].tolist()
    assert _same_weights(learner.model, ref_learner.model)  # BatchNorm running stats included
    assert learner.model.training  # left in train mode for the strategy


def test_without_the_extra_every_entry_point_says_how_to_install(monkeypatch, flip):
    monkeypatch.delitem(sys.modules, "avalanche.training", raising=False)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "avalanche" else find_spec(name, *a))
    hint = r"avalanche-lib is not installed; .*pip install 'shiftsim\[avalanche\]'"
    learner = ssav.AvalancheLearner(lambda model, optimizer: None)
    for call in (ssav.import_avalanche, lambda: ssav.to_avalanche(flip, 0),
                 lambda: ssav.to_avalanche_online(flip, 0), lambda: ssav.strategy_spec("Naive"),
                 lambda: ss.run(flip, learner, device="cpu")):
        with pytest.raises(ShiftsimError, match=hint):
            call()
    assert ssav.available() is False


@needs_avalanche
def test_replay_is_scored_before_it_trains_on_each_batch(av, flip):
    from avalanche.core import SupervisedPlugin
    from avalanche.training import Replay

    class Probe(SupervisedPlugin):
        """Counts, before each training call, what the model gets right on the new batch."""

        def __init__(self):
            super().__init__()
            self.correct = []

        def before_training_exp(self, strategy, **kwargs):
            x, y = _tensors(strategy.experience.dataset)
            with torch.no_grad():
                self.correct.append(int((strategy.model(x).argmax(1) == y).sum()))

    learner = ssav.AvalancheLearner(Replay, model=ss.models.mlp(hidden=(32,)),
                                    optimizer=ss.optim.spec("sgd", lr=0.05), mem_size=64,
                                    plugins=[Probe()])
    state = torch.get_rng_state()
    res = ss.run(flip, learner, seed=4, device="cpu")
    assert torch.equal(torch.get_rng_state(), state)  # the strategy's RNG is its own
    probe = next(p for p in learner.avalanche_strategy.plugins if isinstance(p, Probe))
    assert probe.correct == res.trace["correct"].tolist()
    replay = next(p for p in learner.avalanche_strategy.plugins if hasattr(p, "storage_policy"))
    assert len(replay.storage_policy.buffer) == 64
    # the run is reproducible, the plugins passed in are fresh copies at every run
    again = ss.run(flip, learner, seed=4, device="cpu")
    assert again.trace["correct"].tolist() == res.trace["correct"].tolist()
    assert np.array_equal(again.trace["loss"].to_numpy(), res.trace["loss"].to_numpy())
    naive = ss.run(flip, ss.models.mlp(hidden=(32,)), ss.optim.spec("sgd", lr=0.05), seed=4,
                   device="cpu")
    assert res.trace["correct"].tolist() != naive.trace["correct"].tolist()
    # the first two batches are scored before any replay could act
    assert res.trace["correct"].tolist()[:2] == naive.trace["correct"].tolist()[:2]
    # the same metrics as any learner
    summary = res.summary()
    assert len(summary) == 2 and np.isfinite(summary["online_acc"]).all()
    assert res.accuracy_matrix.shape == (2, 2)
    scores = res.scores()
    assert 0 <= scores["online_acc"] <= 1 and np.isfinite(scores["bwt"])


@pytest.fixture(scope="module")
def short_flip(digits):
    """2 tasks x 15 steps of 16 samples."""
    return ss.label_flip_tasks(digits, rate=1.0, tasks=2, steps_per_task=15, batch_size=16,
                               eval_every=5, eval_size=60)


@needs_avalanche
@pytest.mark.parametrize("name, kwargs", [
    ("EWC", {"ewc_lambda": 100.0, "mode": "online", "decay_factor": 0.9}),
    ("LwF", {"alpha": 1.0, "temperature": 2.0}),
    ("SynapticIntelligence", {"si_lambda": 100.0}),
    ("MAS", {"lambda_reg": 100.0}),
])
def test_strategies_anchored_at_every_batch_train_exactly_like_naive(av, short_flip, name,
                                                                     kwargs):
    """Avalanche's protocol on an online stream: each batch is one experience with one update,
    and these strategies anchor to the weights at the end of the previous experience — the
    current weights at that one update — so penalty and gradient are zero: Naive, bit for bit
    (the documented consequence in AvalancheLearner's docstring)."""
    sgd, mlp = ss.optim.spec("sgd", lr=0.05), ss.models.mlp(hidden=(16,))
    exact = {"shuffle": False}
    naive = ss.run(short_flip, mlp, ssav.strategy_spec("Naive", sgd, train_kwargs=exact), seed=0,
                   device="cpu")
    res = ss.run(short_flip, mlp, ssav.strategy_spec(name, sgd, train_kwargs=exact, **kwargs),
                 seed=0, device="cpu")
    assert res.trace["correct"].tolist() == naive.trace["correct"].tolist()
    np.testing.assert_allclose(res.trace["loss"], naive.trace["loss"], rtol=0, atol=1e-6)
    assert list(res.summary().columns) == list(naive.summary().columns)
    assert res.info["learner"]["strategy"].endswith(f":{name}")


@needs_avalanche
@pytest.mark.parametrize("strategy, kwargs", [
    ("EWC", {"ewc_lambda": 100.0, "mode": "separate"}),
    (ssav.reservoir_replay, {"mem_size": 48}),
])
def test_strategies_that_keep_the_past_differ_from_naive_and_get_the_same_metrics(
        av, short_flip, strategy, kwargs):
    sgd, mlp = ss.optim.spec("sgd", lr=0.05), ss.models.mlp(hidden=(16,))
    exact = {"shuffle": False}
    naive = ss.run(short_flip, mlp, ssav.strategy_spec("Naive", sgd, train_kwargs=exact), seed=0,
                   device="cpu")
    spec = ssav.strategy_spec(strategy, sgd, train_kwargs=exact, **kwargs)
    res = ss.run(short_flip, mlp, spec, seed=0, device="cpu")
    assert not res.diverged and len(res.trace) == 30
    # the first batch is scored with the shared initial weights, the second after one update
    # on the same first batch (nothing to remember yet); later the past changes the updates
    assert res.trace["correct"].tolist()[:2] == naive.trace["correct"].tolist()[:2]
    assert res.trace["correct"].tolist() != naive.trace["correct"].tolist()
    assert not np.allclose(res.trace["loss"], naive.trace["loss"], rtol=0, atol=1e-4)
    summary = res.summary()
    assert list(summary.columns) == list(naive.summary().columns)
    assert np.isfinite(summary["online_acc"]).all() and np.isfinite(res.scores()["bwt"])


@needs_avalanche
def test_reservoir_replay_keeps_a_reservoir_of_mem_size(av, short_flip):
    learner = ssav.AvalancheLearner(ssav.reservoir_replay, model=ss.models.mlp(hidden=(16,)),
                                    optimizer="sgd", mem_size=40)
    ss.run(short_flip, learner, seed=0, device="cpu")
    from avalanche.training import Naive
    from avalanche.training.plugins import ReplayPlugin
    from avalanche.training.storage_policy import ReservoirSamplingBuffer

    strategy = learner.avalanche_strategy
    assert type(strategy) is Naive
    replay = [p for p in strategy.plugins if isinstance(p, ReplayPlugin)]
    assert len(replay) == 1 and isinstance(replay[0].storage_policy, ReservoirSamplingBuffer)
    assert len(replay[0].storage_policy.buffer) == 40  # 30 batches x 16 samples seen


@needs_avalanche
def test_strategy_specs_are_frozen_hashable_and_round_trip(av, flip):
    from avalanche.training import Replay

    a = ssav.strategy_spec("Replay", ss.optim.spec("sgd", lr=0.05), mem_size=100)
    b = ssav.strategy_spec(Replay, ss.optim.spec("sgd", lr=0.05), mem_size=100)
    assert a == b and hash(a) == hash(b)
    assert a != ssav.strategy_spec("Replay", ss.optim.spec("sgd", lr=0.05), mem_size=101)
    assert a.name == "avalanche:Replay" and a.strategy == "avalanche.training:Replay"
    assert a.label == "Replay+sgd(lr=0.05)" and a.kwargs["lr"] == 0.05
    assert a.replace(lr=0.1).kwargs["lr"] == 0.1 and a.replace(lr=0.1).strategy_kwargs == \
        (("mem_size", 100),)
    assert a.to_dict() == {"name": "avalanche:Replay", "hparams": {"lr": 0.05,
                           "weight_decay": 0.0}, "strategy": "avalanche.training:Replay",
                           "strategy_kwargs": {"mem_size": 100},
                           "optimizer": {"name": "sgd", "hparams": {"lr": 0.05,
                                                                    "weight_decay": 0.0}}}
    assert ss.optim.OptimizerSpec.from_dict(a.to_dict()) == a
    r = ssav.strategy_spec(ssav.reservoir_replay, "sgd", mem_size=10)
    assert r.strategy == "shiftsim.integrations.avalanche:reservoir_replay"
    assert r.name == "avalanche:reservoir_replay" and r.label == "reservoir_replay+sgd(lr=0.1)"
    assert ss.optim.OptimizerSpec.from_dict(r.to_dict()) == r
    assert pickle.loads(pickle.dumps(a)) == a
    run = ss.study.RunSpec(flip, ss.models.mlp(hidden=(32,)), a, seed=0)
    assert ss.study.RunSpec.from_dict(run.to_dict(), data=flip.data).run_id == run.run_id
    plain = ss.study.RunSpec(flip, ss.models.mlp(hidden=(32,)), ss.optim.spec("sgd", lr=0.05))
    assert run.run_id != plain.run_id


@needs_avalanche
def test_strategy_spec_bad_input(av, flip):
    with pytest.raises(ShiftsimError, match=r"unknown Avalanche strategy 'Replai'; allowed: "
                       r".*\bNaive\b.*\bReplay\b.*or an import path"):
        ssav.strategy_spec("Replai")
    with pytest.raises(ShiftsimError, match="cannot import strategy 'nowhere:Replay'"):
        ssav.strategy_spec("nowhere:Replay")
    with pytest.raises(ShiftsimError, match="unknown argument 'mem_sise' for strategy "
                       ".*Replay; allowed: .*mem_size"):
        ssav.strategy_spec("Replay", mem_sise=5)
    with pytest.raises(SpecTypeError, match="strategy argument plugins=.* is not "
                       "JSON-serialisable.*AvalancheLearner"):
        ssav.strategy_spec("Replay", plugins=[object()])
    with pytest.raises(ShiftsimError, match="strategy argument ewc_lambda must be finite"):
        ssav.strategy_spec("EWC", ewc_lambda=float("nan"))
    with pytest.raises(SpecTypeError, match="strategy must be an Avalanche strategy class, its "
                       "name .*a strategy factory function"):
        ssav.strategy_spec(3)

    class Local(av.training.Naive):
        pass

    with pytest.raises(ShiftsimError, match="strategy .*Local cannot be imported by name"):
        ssav.strategy_spec(Local)
    with pytest.raises(ShiftsimError, match="cannot run in a fleet"):
        ss.fleet.run_fleet(flip, ss.models.mlp(hidden=(8,)),
                           [(ssav.strategy_spec("Naive", "sgd"), 0)], device="cpu")


@needs_avalanche
def test_a_strategy_that_is_not_a_strategy_is_reported(av, flip):
    def factory(model, optimizer, **kwargs):
        return object()

    learner = ssav.AvalancheLearner(factory, model=ss.models.mlp(hidden=(8,)))
    with pytest.raises(SpecTypeError, match="returned object, not an Avalanche strategy"):
        ss.run(flip, learner, seed=0, device="cpu")


@needs_avalanche
def test_strategies_sit_next_to_optimizers_in_a_study(av, digits):
    from avalanche.training import Replay

    sc = ss.label_flip_tasks(digits, rate=1.0, tasks=2, steps_per_task=20, batch_size=16,
                             eval_every=10, eval_size=60)
    sgd = ss.optim.spec("sgd", lr=0.05)
    study = ss.Study("strategies", scenarios={"flip": sc}, model=ss.models.mlp(hidden=(16,)),
                     optimizers={"sgd": sgd, "naive": ssav.strategy_spec("Naive", sgd),
                                 "replay": ssav.strategy_spec("Replay", sgd, mem_size=32)},
                     seeds=[0])
    with tempfile.TemporaryDirectory() as out:
        report = study.run(out, workers=1, progress=False)
        runs = ss.store.load(out).runs.set_index("optimizer")
    assert report.done == 3 and (runs["status"] == "ok").all()
    assert runs.loc["naive", "optimizer_name"] == "avalanche:Naive"
    assert runs.loc["replay", "optimizer_name"] == "avalanche:Replay"
    assert runs.loc["replay", "lr"] == 0.05
    # Naive shuffles inside a batch (Avalanche's default): float-rounding close to plain SGD
    assert abs(runs.loc["naive", "online_acc"] - runs.loc["sgd", "online_acc"]) <= 0.01
    direct = ss.run(sc, ssav.AvalancheLearner(Replay, model=ss.models.mlp(hidden=(16,)),
                                              optimizer=sgd, mem_size=32), seed=0, device="cpu")
    assert runs.loc["replay", "online_acc"] == pytest.approx(direct.online_accuracy, abs=1e-12)


@needs_avalanche
def test_avalanche_learner_pickles_before_and_after_a_run(av, flip):
    from avalanche.training import Replay

    learner = ssav.AvalancheLearner(Replay, model=ss.models.mlp(hidden=(8,)), optimizer="sgd",
                                    mem_size=16)
    first = pickle.loads(pickle.dumps(learner))
    short = ss.label_flip_tasks(flip.data, rate=1.0, tasks=2, steps_per_task=5, batch_size=8)
    res = ss.run(short, learner, seed=0, device="cpu")
    second = pickle.loads(pickle.dumps(learner))
    assert second.avalanche_strategy is None
    for copy_ in (first, second):
        again = ss.run(short, copy_, seed=0, device="cpu")
        assert again.trace["correct"].tolist() == res.trace["correct"].tolist()


def _readme_avalanche_blocks() -> list[str]:
    text = README.read_text()
    section = text.split("## Using shiftsim with Avalanche", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@needs_avalanche
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:No loggers specified")  # the README's own Naive says it
def test_the_readme_avalanche_section_runs_as_written(av, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the study writes results/ here
    blocks = _readme_avalanche_blocks()
    assert len(blocks) == 2  # both directions
    namespace: dict = {"__name__": "__main__"}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "'Exp000':" in out and "'Exp001':" in out and "recovery_steps" in out
    assert "replay-vs-sgd: 4/4 runs complete" in out
    assert namespace["result"].info["learner"]["strategy"].endswith(":Replay")
