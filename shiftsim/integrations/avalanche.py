"""Avalanche interoperability (the extra ``shiftsim[avalanche]``, Avalanche 0.6).

Both directions:

* **shiftsim scenario -> Avalanche benchmark.** :func:`to_avalanche` materialises a scenario's
  stream for one seed: one train experience per phase (that phase's batches, inputs after every
  shift, per-batch noise and gradual ramps included, labels as presented) and one test experience
  per regime (the held-out set shiftsim evaluates on). :func:`to_avalanche_online` splits the
  phases with Avalanche's ``split_online_stream`` into mini-experiences of one shiftsim batch
  each, in shiftsim's batch order. Any Avalanche strategy trains on them.
* **Avalanche strategy -> shiftsim learner.** :class:`AvalancheLearner` wraps a strategy class
  (Naive, Replay, EWC, LwF ...) as a :class:`~shiftsim.learner.Learner`: :func:`shiftsim.run`
  scores every batch with the strategy's model *before* the strategy trains on it, so
  strategies get the same online accuracy, recovery metrics and reports as optimizers.
* **Avalanche strategies in studies.** :func:`strategy_spec` describes a strategy (by import
  path, with JSON-serialisable arguments and a shiftsim optimizer) as a frozen, hashable spec
  that sits on a :class:`~shiftsim.study.Study`'s optimizer axis next to plain optimizers; each
  run builds an :class:`AvalancheLearner` from it.

Avalanche is imported on first use, never when shiftsim or this module is imported. Avalanche is
kept quiet: the strategies built here get ``EvaluationPlugin(loggers=[])``; their loggers write
nothing and nothing is downloaded (Avalanche itself writes ``~/.avalanche/config.json`` when it
is first imported on a machine).

Example (needs the extra; the README has the same, runnable)::

    import shiftsim as ss
    from shiftsim.integrations.avalanche import (AvalancheLearner, reservoir_replay,
                                                 strategy_spec, to_avalanche_online)

    sc = ss.label_flip_tasks(ss.data.digits(), rate=1.0, tasks=2, steps_per_task=100)
    bm = to_avalanche_online(sc, seed=0)            # 200 mini-experiences of 32 samples
    from avalanche.training import EWC              # after shiftsim loaded Avalanche (see below)

    res = ss.run(sc, AvalancheLearner(EWC, model=ss.models.mlp(), optimizer="sgd",
                                      ewc_lambda=10.0, mode="separate"), seed=0)
    res.summary()
    replay = strategy_spec(reservoir_replay, "sgd", mem_size=200)   # frozen, hashable, JSON
    study = ss.Study("replay", {"flip": sc}, ss.models.mlp(), seeds=3,
                     optimizers={"sgd": ss.optim.spec("sgd"), "replay": replay})

Engine cross-check (``tests/test_avalanche.py``): on the same batches in the same order, from
the same initial weights with the same optimizer, shiftsim's engine and Avalanche's ``Naive``
(over :func:`to_avalanche_online`, trained with ``shuffle=False``) give the same correct counts,
losses, final weights and held-out accuracies, bit for bit.

**torchvision compatibility step.** Avalanche imports torchvision. A CPU build of torch (e.g.
``torch==2.13.0+cpu``) with the PyPI torchvision wheel of the same release fails at
``import torchvision`` with ``operator torchvision::nms does not exist``: the wheel's compiled
operators do not load against that torch build, and torchvision then registers fake kernels for
two operators it never defined. :func:`import_avalanche` first imports torchvision as it is; only
when that fails with exactly this error does it define the two missing operator schemas
(``torchvision::nms``, ``torchvision::qnms``) with ``torch.library`` and import torchvision
again. Where torchvision imports normally the step does nothing. Afterwards only
``torchvision.ops`` kernels (detection operators) stay unusable; Avalanche's classification code
never calls them. Once shiftsim has imported Avalanche (any function here does), user code can
``import avalanche`` normally in the same process.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import inspect
import random
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import ShiftsimError, SpecTypeError
from ..learner import TorchLearner, mode_sensitive
from ..models import ModelSpec
from ..optim import OptimizerSpec
from ..scenario import Scenario
from ..stream import Stream, derive_seed, resolve_device

if TYPE_CHECKING:  # pragma: no cover
    from ..data import Dataset

__all__ = ["AvalancheLearner", "StrategySpec", "available", "import_avalanche", "reservoir_replay",
           "strategy_spec", "to_avalanche", "to_avalanche_online"]

INSTALL_HINT = ("the Avalanche integration needs the extra: pip install 'shiftsim[avalanche]' "
                "(avalanche-lib>=0.6 and a torchvision matching your torch)")

#: schemas torchvision's ``_meta_registrations`` needs when its compiled ops did not load
_TORCHVISION_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
#: the one error the compatibility step answers (any other import failure is raised as it is)
_MISSING_OPERATOR = re.compile(r"\boperator torchvision::\w+ does not exist\b")
#: the torch.library fragment holding those schemas, when the compatibility step ran
_compat_library: torch.library.Library | None = None
#: EvaluationPlugin(loggers=[]) says so at every construction; shiftsim asks for that on purpose
_NO_LOGGERS = "No loggers specified"


# ---------------------------------------------------------------------------------------------
# importing Avalanche
# ---------------------------------------------------------------------------------------------

def _forget_torchvision() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def _is_missing_operator(exc: BaseException) -> bool:
    """Whether ``exc`` is exactly the failure the compatibility step repairs: torchvision's
    ``_meta_registrations`` asking for an operator its compiled extension never defined
    (``RuntimeError: operator torchvision::nms does not exist``)."""
    return isinstance(exc, RuntimeError) and _MISSING_OPERATOR.search(str(exc)) is not None


def _import_torchvision(importer: Callable[[str], ModuleType] = importlib.import_module,
                        library: Callable[[str, str], Any] | None = None) -> bool:
    """Import torchvision; apply the compatibility step only if the plain import fails with the
    missing-operator error (see the module docstring). Returns whether the step ran.

    ``importer`` and ``library`` (``torch.library.Library``) are parameters so that tests can
    show the step does nothing unless exactly that error happens.
    """
    global _compat_library
    try:
        importer("torchvision")
        return False  # torchvision imports normally: nothing to do
    except ImportError as exc:
        raise ShiftsimError(f"torchvision is not installed; {INSTALL_HINT}") from exc
    except RuntimeError as exc:
        if not _is_missing_operator(exc):
            raise
        first_error = exc
    # Compatibility step. torchvision's compiled extension (_C.so) did not load against this
    # torch build (a CPU torch with the PyPI torchvision wheel, built for the CUDA torch), so
    # the "torchvision::nms" / "torchvision::qnms" operators were never defined, and
    # torchvision/_meta_registrations.py fails registering fake kernels for them. Defining the
    # two schemas (no kernels) lets torchvision import; calling torchvision.ops.nms still fails
    # cleanly ("Couldn't load custom C++ ops"), and Avalanche never calls it.
    _forget_torchvision()  # drop the half-imported package before trying again
    lib = (library or torch.library.Library)("torchvision", "FRAGMENT")
    for schema in _TORCHVISION_SCHEMAS:
        with contextlib.suppress(RuntimeError):  # already defined: keep that definition
            lib.define(schema)
    _compat_library = lib
    try:
        importer("torchvision")
    except Exception as exc:
        _forget_torchvision()
        raise ShiftsimError(
            f"torchvision does not import with this torch ({torch.__version__}): {first_error}; "
            f"install the torchvision release that matches torch. {INSTALL_HINT}") from exc
    return True


def import_avalanche() -> ModuleType:
    """Import Avalanche (with the torchvision compatibility step when needed) and return it.

    Raises :class:`~shiftsim.errors.ShiftsimError` with the install command when the extra is
    missing. Every function of this module calls it; call it yourself before ``import
    avalanche...`` on a machine where torchvision does not import by itself.
    """
    if "avalanche.training" in sys.modules:
        return sys.modules["avalanche"]
    if importlib.util.find_spec("avalanche") is None:
        raise ShiftsimError(f"avalanche-lib is not installed; {INSTALL_HINT}")
    _import_torchvision()
    with warnings.catch_warnings():
        # qpsolvers (pulled in by Avalanche's GEM) warns at import that no QP solver is installed
        warnings.filterwarnings("ignore", message="no QP solver", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        avalanche = importlib.import_module("avalanche")
        version = getattr(avalanche, "__version__", "0")
        major_minor = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
        if major_minor < (0, 6):
            raise ShiftsimError(f"avalanche-lib {version} is too old; {INSTALL_HINT}")
        for sub in ("avalanche.benchmarks.scenarios", "avalanche.benchmarks.scenarios.online",
                    "avalanche.benchmarks.utils", "avalanche.core", "avalanche.training",
                    "avalanche.training.plugins"):
            importlib.import_module(sub)
    return avalanche


def available() -> bool:
    """Whether the Avalanche extra is installed and importable here (imports it)."""
    try:
        import_avalanche()
    except ShiftsimError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# shiftsim scenario -> Avalanche benchmark
# ---------------------------------------------------------------------------------------------

def _dataset(x: torch.Tensor, y: torch.Tensor, **attributes: torch.Tensor) -> Any:
    """An Avalanche classification dataset over tensors: items are ``(x, y, task_label=0)``.

    ``TaskAwareSupervisedClassificationDataset`` (what Avalanche's own benchmarks build) rather
    than the plain ``ClassificationDataset``, because LwF and other plugins read
    ``dataset.task_set``. ``attributes`` become data attributes (``dataset.<name>``) that are not
    part of the items.
    """
    from avalanche.benchmarks.utils import ConstantSequence, DataAttribute, TaskLabels
    from avalanche.benchmarks.utils.classification_dataset import (
        TaskAwareSupervisedClassificationDataset,
    )

    n = int(y.shape[0])
    data_attributes = [DataAttribute(y.tolist(), "targets"),
                       TaskLabels(ConstantSequence(0, n))]
    data_attributes += [DataAttribute(v.tolist(), name) for name, v in attributes.items()]
    return TaskAwareSupervisedClassificationDataset(
        [torch.utils.data.TensorDataset(x, y)], data_attributes=data_attributes)


def _materialise(scenario: Scenario, seed: int, device: str | torch.device
                 ) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """The stream of ``(scenario, seed)`` batch by batch, as shiftsim's engine sees it, on CPU:
    per phase x, y, y_true, sample_index, step, is_new; per regime the held-out x, y, y_true."""
    if not isinstance(scenario, Scenario):
        raise SpecTypeError(f"expected a Scenario, got {type(scenario).__name__}")
    stream = Stream(scenario, seed, resolve_device(device))
    parts: list[dict[str, list[torch.Tensor]]] = [
        {k: [] for k in ("x", "y", "y_true", "sample_index", "step", "is_new")}
        for _ in scenario.phases]
    for batch in stream:  # the engine's order: phase by phase, step by step, same noise draws
        p = parts[batch.phase]
        p["x"].append(batch.x.cpu())
        p["y"].append(batch.y.cpu())
        p["y_true"].append(batch.y_true.cpu())
        p["sample_index"].append(batch.index.cpu())
        p["step"].append(torch.full((batch.x.shape[0],), batch.step, dtype=torch.int64))
        p["is_new"].append(batch.is_new.cpu().to(torch.int64))
    phases = [{k: torch.cat(v) for k, v in p.items()} for p in parts]
    y_true_eval = stream.y_eval_cpu
    tests = []
    for r in range(scenario.num_regimes):
        hx, hy = stream.heldout(r)
        tests.append({"x": hx.cpu(), "y": hy.cpu(), "y_true": y_true_eval})
    return phases, tests


def _benchmark(scenario: Scenario, seed: int, device: str | torch.device) -> Any:
    from avalanche.benchmarks.scenarios import benchmark_from_datasets

    phases, tests = _materialise(scenario, seed, device)
    train = [_dataset(p["x"], p["y"], targets_true=p["y_true"], sample_index=p["sample_index"],
                      step=p["step"], is_new=p["is_new"]) for p in phases]
    test = [_dataset(t["x"], t["y"], targets_true=t["y_true"]) for t in tests]
    return benchmark_from_datasets(train=train, test=test)


def to_avalanche(scenario: Scenario, seed: int = 0, *, device: str | torch.device = "cpu") -> Any:
    """``scenario``'s stream for run ``seed`` as an Avalanche 0.6 benchmark (a ``CLScenario``).

    * ``train_stream``: one experience per phase holding that phase's ``steps x batch_size``
      samples in shiftsim's order, as the engine presents them: inputs after the phase's shifts
      (per-batch noise and gradual ramps included, so a sample drawn twice appears twice, with
      its own noise), labels after label shifts.
    * ``test_stream``: one experience per regime, the held-out set shiftsim evaluates on (inputs
      shifted as the regime shifts them, labels shifted by concept label shifts only).

    Items are ``(x, y, 0)`` (task label 0). Each dataset also carries data attributes that are
    not part of the items: ``targets_true`` (the dataset's original labels) and, for the train
    experiences, ``sample_index`` (the index into the training set), ``step`` (shiftsim's step)
    and ``is_new`` (1: drawn from the phase's regime, 0: from the previous one during a ramp).
    The stream is drawn on ``device`` (the same seed and device as :func:`shiftsim.run` give the
    same samples); the tensors are stored on the CPU. Memory: the whole stream is materialised,
    ``total_steps x batch_size`` inputs.

    Example (needs the extra)::

        bm = to_avalanche(ss.label_flip_tasks(ss.data.digits(), tasks=2), seed=0)
        for exp in bm.train_stream:
            strategy.train(exp)
            strategy.eval(bm.test_stream)
    """
    import_avalanche()
    return _benchmark(scenario, seed, device)


def to_avalanche_online(scenario: Scenario, seed: int = 0, *, device: str | torch.device = "cpu",
                        access_task_boundaries: bool = False) -> Any:
    """The online version of :func:`to_avalanche`: ``train_stream`` yields one
    mini-experience per shiftsim batch, holding exactly that batch's samples, in shiftsim's order.

    Built with Avalanche's ``split_online_stream`` at the scenario's batch size with a fixed
    ``seed`` and ``shuffle=False``: its shuffle cannot reproduce shiftsim's batch order (a
    random permutation of the whole phase, with samples reused across passes and per-batch
    noise), so each phase's experience is materialised in shiftsim's batch order by
    :func:`to_avalanche` and split without shuffling. Mini-experience ``t`` therefore holds the
    samples of shiftsim's step ``t`` (its ``dataset.step`` attribute says so). The
    mini-experiences are ``OnlineCLExperience`` objects whose ``origin_experience`` is the
    phase, with ``is_first_subexp`` / ``is_last_subexp`` on the first / last batch of each
    phase (Avalanche 0.6's splitter sets ``is_last_subexp`` only on a short final
    mini-experience, so shiftsim sets it on the last batch);
    ``access_task_boundaries`` is passed to ``split_online_stream`` (False: strategies do not see
    the boundaries, as in shiftsim). ``test_stream`` is the per-regime held-out stream.

    The batches within a mini-experience are Avalanche's business: train with
    ``train_mb_size=scenario.batch_size`` for one update per shiftsim batch (and
    ``strategy.train(exp, shuffle=False)`` to keep the samples' order inside the batch).
    """
    import_avalanche()
    from avalanche.benchmarks.scenarios import CLScenario
    from avalanche.benchmarks.scenarios.online import (
        FixedSizeExperienceSplitter,
        split_online_stream,
    )

    bm = _benchmark(scenario, seed, device)

    def split(exp: Any, size: int) -> Iterator[Any]:
        # Avalanche's own splitter, unshuffled; it marks is_last_subexp only on a short final
        # mini-experience, so the last one of every phase is marked here
        pending = None
        for sub in FixedSizeExperienceSplitter(exp, size, shuffle=False, drop_last=False,
                                               access_task_boundaries=access_task_boundaries,
                                               seed=seed):
            if pending is not None:
                yield pending
            pending = sub
        if pending is not None:
            pending.is_last_subexp = True
            yield pending

    online = split_online_stream(bm.train_stream, experience_size=scenario.batch_size,
                                 shuffle=False, drop_last=False, experience_split_strategy=split,
                                 access_task_boundaries=access_task_boundaries, seed=seed)
    online.name = "train"
    return CLScenario([online, bm.test_stream])


# ---------------------------------------------------------------------------------------------
# Avalanche strategy -> shiftsim learner
# ---------------------------------------------------------------------------------------------

class _BatchStore:
    """Append-only storage of the batches a learner is given, as Avalanche datasets.

    Each batch becomes a subset of a block dataset (a preallocated ``TensorDataset`` of about
    ``block_bytes``, filled batch by batch), not a dataset of its own. Avalanche merges subsets
    of one source when it concatenates datasets, so replay buffers and other plugins that keep
    and concatenate past samples stay cheap; with one dataset per batch their cost grows with
    the number of batches seen (measured: reservoir replay 28 ms/step instead of ~10).
    A filled block is only kept alive by the samples a plugin still holds.
    """

    def __init__(self, block_bytes: int = 16 * 2**20) -> None:
        self.block_bytes = block_bytes
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None
        self._targets: list[int] = []
        self._dataset: Any = None
        self._fill = 0

    def _new_block(self, x: torch.Tensor, y: torch.Tensor) -> None:
        from avalanche.benchmarks.utils import ConstantSequence, DataAttribute, TaskLabels
        from avalanche.benchmarks.utils.classification_dataset import (
            TaskAwareSupervisedClassificationDataset,
        )

        b = x.shape[0]
        per_sample = max(1, x[0].numel() * x.element_size())
        cap = max(b, (self.block_bytes // per_sample) // b * b)
        self._x = x.new_empty((cap, *x.shape[1:]))
        self._y = y.new_empty((cap,))
        self._targets = [0] * cap  # filled in place: the data attribute reads this list
        self._dataset = TaskAwareSupervisedClassificationDataset(
            [torch.utils.data.TensorDataset(self._x, self._y)],
            data_attributes=[DataAttribute(self._targets, "targets"),
                             TaskLabels(ConstantSequence(0, cap))])
        self._fill = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> Any:
        """Store a batch; return it as an Avalanche dataset of items ``(x, y, 0)``."""
        b = x.shape[0]
        blk = self._x
        if (blk is None or self._y is None or self._fill + b > blk.shape[0]
                or blk.shape[1:] != x.shape[1:] or blk.dtype != x.dtype
                or blk.device != x.device or self._y.dtype != y.dtype):
            self._new_block(x, y)
        assert self._x is not None and self._y is not None
        start, stop = self._fill, self._fill + b
        self._x[start:stop] = x
        self._y[start:stop] = y
        self._targets[start:stop] = y.tolist()
        self._fill = stop
        return self._dataset.subset(range(start, stop))


_recorder_class: type | None = None


def _loss_recorder() -> Any:
    """A plugin that keeps the training loss of every iteration of the current experience."""
    global _recorder_class
    if _recorder_class is None:
        from avalanche.core import SupervisedPlugin

        class _LossRecorder(SupervisedPlugin):  # type: ignore[misc]
            def __init__(self) -> None:
                super().__init__()
                self.losses: list[torch.Tensor] = []

            def after_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
                self.losses.append(strategy.loss.detach().reshape(()))

        _recorder_class = _LossRecorder
    return _recorder_class()


def _step_with_loss(strategy: Any) -> None:
    """``optimizer_step`` for optimizers whose ``step`` needs the loss (MoMo)."""
    strategy.optimizer.step(loss=strategy.loss.detach().reshape(()))


def _keywords(func: Callable[..., Any]) -> tuple[set[str], bool] | None:
    """The keyword names ``func`` takes and whether it also takes ``**kwargs`` (None: no
    signature)."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return None
    names = {p.name for p in params
             if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}
    return names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _accepted(factory: Callable[..., Any]) -> set[str] | None:
    """Keyword names ``factory`` accepts, or None when that cannot be told.

    A class whose ``__init__`` takes ``**kwargs`` (every Avalanche strategy passes them on to
    its templates) accepts the keywords of the ``__init__`` methods along its MRO, where the
    ``**kwargs`` go; a function with ``**kwargs`` accepts anything.
    """
    if not isinstance(factory, type):
        found = _keywords(factory)
        return None if found is None or found[1] else found[0]
    names: set[str] = set()
    for klass in factory.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        found = _keywords(init)
        if found is None:
            return None
        names |= found[0]
    names.discard("self")
    return names


def _name(obj: Any) -> str:
    func = getattr(obj, "func", None)  # functools.partial
    if func is not None:
        return _name(func)
    module = getattr(obj, "__module__", "") or ""
    qualname = getattr(obj, "__qualname__", None) or type(obj).__name__
    return f"{module}:{qualname}" if module else qualname


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return type(value).__name__


class AvalancheLearner:
    """An Avalanche strategy as a shiftsim :class:`~shiftsim.learner.Learner`.

    ``strategy`` is an Avalanche strategy class (``Naive``, ``Replay``, ``EWC``, ``LwF`` ...), a
    ``functools.partial`` of one, or any callable returning a strategy. At each run shiftsim
    builds the model from ``model`` (a :class:`~shiftsim.models.ModelSpec` built for the dataset
    from the run seed, an ``nn.Module`` deep-copied, or a callable ``Dataset -> nn.Module``:
    the same initial weights as :class:`~shiftsim.learner.TorchLearner` for the same seed) and
    the optimizer from ``optimizer`` (an :class:`~shiftsim.optim.OptimizerSpec` or registry name,
    as for :func:`shiftsim.run`), then calls::

        strategy(model=model, optimizer=optimizer, criterion=CrossEntropyLoss(),
                 train_mb_size=<the scenario's batch size>, device=<the run's device>,
                 evaluator=EvaluationPlugin(loggers=[]), **strategy_kwargs)

    (the defaults a callable without ``**kwargs`` does not accept are left out;
    ``strategy_kwargs`` win over the defaults and are deep-copied for every run, so plugins
    passed in them never carry state from one run to the next). The strategy is built at the
    first batch, when the batch size is known.

    At every step, :meth:`observe` predicts the batch with the strategy's model (eval mode when
    the model has dropout or BatchNorm) before any training, writes the predictions for
    shiftsim to score, then lets the strategy train on the batch: the batch becomes one
    ``OnlineCLExperience`` (items ``(x, y, 0)``, no access to task boundaries, as in Avalanche's
    own online streams) and ``strategy.train(exp, eval_streams=[], **train_kwargs)`` runs all
    of the strategy's plugins, exactly as Avalanche runs a stream from ``split_online_stream``
    without boundary access: replay buffers are updated, regularisation anchors (EWC
    importances, LwF teachers, SI / MAS weights) refreshed after every batch. The loss reported
    to shiftsim is the strategy's training loss (replayed samples and regularisation terms
    included), averaged over the strategy's iterations on the batch. Held-out evaluation uses
    :meth:`predict`, never the strategy's ``eval``.

    Two consequences of that protocol, Avalanche's own (measured with Avalanche 0.6, and tested):

    * Strategies that anchor to the weights at the end of the previous experience and make one
      update per experience — ``EWC(mode="online")``, ``LwF``, ``SynapticIntelligence``,
      ``MAS`` — have a zero penalty and a zero penalty gradient at that one update (the anchor
      *is* the current weights), so they train exactly like ``Naive``. ``EWC(mode="separate")``
      keeps every past anchor and does differ (at a cost that grows with the steps seen).
    * ``Replay``'s default buffer balances memory across experiences, i.e. across batches: its
      cost per step grows with ``mem_size`` (~27 ms/step at ``mem_size=200`` on the digits MLP,
      vs ~3 ms with ``Naive(plugins=[ReplayPlugin(200,
      storage_policy=ReservoirSamplingBuffer(200))])``). Prefer the reservoir buffer.

    Randomness inside the strategy (its data loader's shuffle, replay sampling) comes from a
    torch / Python RNG state derived from the run seed, swapped in around every training call:
    the same seed gives the same run, and the global RNGs are left as they were.

    Pickling: the learner pickles (for studies run in other processes) when ``strategy``,
    ``model``, ``optimizer`` and ``strategy_kwargs`` do: strategy classes and partials of them
    do, lambdas and local functions do not. The built strategy is never pickled.

    Example (needs the extra)::

        from avalanche.training import Replay
        learner = AvalancheLearner(Replay, model=ss.models.mlp(), optimizer="sgd", mem_size=200)
        result = ss.run(scenario, learner, seed=0)
    """

    def __init__(self, strategy: Callable[..., Any], model: ModelSpec | nn.Module |
                 Callable[[Dataset], nn.Module] | None = None,
                 optimizer: OptimizerSpec | str | Any = "sgdm", *,
                 train_kwargs: Mapping[str, Any] | None = None,
                 **strategy_kwargs: Any) -> None:
        if not callable(strategy):
            raise SpecTypeError(f"strategy must be an Avalanche strategy class or a callable "
                                f"returning a strategy, got {strategy!r}")
        accepted = _accepted(strategy)
        if accepted is not None and not {"model", "optimizer"} <= accepted:
            raise SpecTypeError(f"the strategy factory {_name(strategy)} must accept the keyword "
                                f"arguments model= and optimizer=; it accepts {sorted(accepted)}")
        if accepted is not None:
            unknown = sorted(set(strategy_kwargs) - accepted)
            if unknown:
                raise ShiftsimError(f"unknown argument {unknown[0]!r} for strategy "
                                    f"{_name(strategy)}; allowed: {', '.join(sorted(accepted))}")
        from ..models import mlp

        self.strategy = strategy
        self.strategy_kwargs = dict(strategy_kwargs)
        self.train_kwargs = dict(train_kwargs or {})
        self._torch = TorchLearner(mlp() if model is None else model, optimizer)
        self._runtime_reset()

    def _runtime_reset(self) -> None:
        self._strategy: Any = None
        self._recorder: Any = None
        self._store = _BatchStore()
        self._device = torch.device("cpu")
        self._data: Any = None
        self._count = 0
        self._rng_torch: torch.Tensor | None = None
        self._rng_cuda: torch.Tensor | None = None
        self._rng_python: Any = None
        self._mode_sensitive = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        torch_learner = copy.copy(self._torch)
        torch_learner.model = None
        torch_learner.optimizer = None
        torch_learner.__dict__.pop("_diagnostics", None)
        state["_torch"] = torch_learner
        for key in ("_strategy", "_recorder", "_data", "_rng_torch", "_rng_cuda", "_rng_python"):
            state[key] = None
        state["_store"] = _BatchStore()
        return state

    # -- the Learner protocol -------------------------------------------------------------------
    def setup(self, data: Dataset, device: torch.device, seed: int) -> None:
        import_avalanche()
        self._runtime_reset()
        self._torch.setup(data, device, seed)  # model and optimizer, as TorchLearner builds them
        self._device = torch.device(device)
        self._data = data
        g = torch.Generator().manual_seed(derive_seed(seed, "avalanche", "torch"))
        self._rng_torch = g.get_state()
        if self._device.type == "cuda":
            gc = torch.Generator(device=self._device).manual_seed(
                derive_seed(seed, "avalanche", "cuda"))
            self._rng_cuda = gc.get_state()
        self._rng_python = random.Random(derive_seed(seed, "avalanche", "python")).getstate()

    def _build(self, batch_size: int) -> Any:
        from avalanche.training.plugins import EvaluationPlugin

        model, optimizer = self._torch.model, self._torch.optimizer
        if model is None or optimizer is None:
            raise ShiftsimError("AvalancheLearner.setup() must run before observe()")
        with self._quiet():
            defaults: dict[str, Any] = {
                "criterion": nn.CrossEntropyLoss(), "train_mb_size": batch_size,
                "train_epochs": 1, "eval_mb_size": batch_size, "device": self._device,
                "evaluator": EvaluationPlugin(loggers=[]),
            }
            accepted = _accepted(self.strategy)
            if accepted is not None:
                defaults = {k: v for k, v in defaults.items() if k in accepted}
            kwargs = {**defaults, **copy.deepcopy(self.strategy_kwargs)}
            strategy = self.strategy(model=model, optimizer=optimizer, **kwargs)
        for attr in ("train", "plugins", "model"):
            if not hasattr(strategy, attr):
                raise SpecTypeError(f"{_name(self.strategy)} returned {type(strategy).__name__}, "
                                    "not an Avalanche strategy")
        self._recorder = _loss_recorder()
        strategy.plugins.insert(0, self._recorder)
        if self._torch.optimizer_spec.needs_loss:
            strategy.optimizer_step = lambda: _step_with_loss(strategy)
        self._mode_sensitive = mode_sensitive(strategy.model)
        self._strategy = strategy
        return strategy

    @staticmethod
    @contextlib.contextmanager
    def _quiet() -> Iterator[None]:
        """Silence Avalanche's internal deprecation warnings and its "No loggers" notice; let
        every other warning through. (Avalanche's ``@deprecated`` wrapper installs its own
        ``simplefilter("once")`` at every call, so filters alone cannot silence it: warnings are
        recorded here and re-issued after filtering.)"""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for w in caught:
            if issubclass(w.category, DeprecationWarning) or _NO_LOGGERS in str(w.message):
                continue
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    @contextlib.contextmanager
    def _rng(self) -> Iterator[None]:
        """Swap the learner's RNG states in for the global ones (torch CPU, CUDA, Python)."""
        cuda = self._rng_cuda is not None
        devices = [self._device] if cuda else []
        python_state = random.getstate()
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self._rng_torch)
            if cuda:
                torch.cuda.set_rng_state(self._rng_cuda, self._device)
            random.setstate(self._rng_python)
            try:
                yield
            finally:
                self._rng_torch = torch.get_rng_state()
                if cuda:
                    self._rng_cuda = torch.cuda.get_rng_state(self._device)
                self._rng_python = random.getstate()
                random.setstate(python_state)

    def _experience(self, x: torch.Tensor, y: torch.Tensor) -> Any:
        from avalanche.benchmarks.scenarios.online import OnlineCLExperience

        exp = OnlineCLExperience(dataset=self._store.add(x, y), origin_experience=None,
                                 access_task_boundaries=False)
        exp.current_experience = self._count
        return exp

    def observe(self, x: torch.Tensor, y: torch.Tensor, pred_out: torch.Tensor) -> torch.Tensor:
        strategy = self._strategy if self._strategy is not None else self._build(x.shape[0])
        model = strategy.model
        with torch.no_grad():  # score first: the strategy has not seen this batch yet
            if self._mode_sensitive:
                model.eval()
            torch.argmax(model(x), 1, out=pred_out)
            if self._mode_sensitive:
                model.train()
        exp = self._experience(x, y)
        recorder = self._recorder
        recorder.losses.clear()
        train_kwargs = {"pin_memory": False, **self.train_kwargs}
        with self._rng(), self._quiet():
            strategy.train(exp, eval_streams=[], **train_kwargs)
        self._count += 1
        if not recorder.losses:
            raise ShiftsimError(f"the strategy {_name(self.strategy)} did not train on the batch "
                                f"of step {self._count - 1}")
        losses = recorder.losses
        loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean()
        return loss.to(torch.float32)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        model = self._strategy.model if self._strategy is not None else self._torch.model
        if model is None:
            raise ShiftsimError("AvalancheLearner.setup() must run before predict()")
        sensitive = mode_sensitive(model)
        was_training = model.training
        if sensitive:
            model.eval()
        out = torch.cat([model(chunk).argmax(1) for chunk in x.split(4096)])
        if sensitive:
            model.train(was_training)
        return out

    def diagnostics(self) -> dict[str, torch.Tensor]:
        """The optimizer's diagnostics when it has any (shiftsim's optimizers do)."""
        return self._torch.diagnostics() if self._torch.optimizer is not None else {}

    def describe(self) -> dict[str, Any]:
        out = {"learner": "avalanche", "strategy": _name(self.strategy),
               "strategy_kwargs": _jsonable(self.strategy_kwargs)}
        partial_kwargs = getattr(self.strategy, "keywords", None)
        if partial_kwargs:
            out["strategy_partial_kwargs"] = _jsonable(dict(partial_kwargs))
        if self.train_kwargs:
            out["train_kwargs"] = _jsonable(self.train_kwargs)
        out.update(self._torch.describe())
        return out

    @property
    def model(self) -> nn.Module | None:
        """The model being trained (the strategy's, once built)."""
        return self._strategy.model if self._strategy is not None else self._torch.model

    @property
    def avalanche_strategy(self) -> Any:
        """The Avalanche strategy of the current run (None before the first batch)."""
        return self._strategy

    def __repr__(self) -> str:
        return f"AvalancheLearner({_name(self.strategy)}, {self.strategy_kwargs!r})"


def reservoir_replay(*, model: nn.Module, optimizer: torch.optim.Optimizer, mem_size: int = 200,
                     batch_size_mem: int | None = None, criterion: Any = None,
                     train_mb_size: int = 1, train_epochs: int = 1, eval_mb_size: int = 1,
                     device: Any = None, evaluator: Any = None, plugins: list[Any] | None = None
                     ) -> Any:
    """Experience replay with a reservoir-sampling buffer of ``mem_size`` samples: Avalanche's
    ``Naive`` with ``ReplayPlugin(mem_size, batch_size_mem=...,
    storage_policy=ReservoirSamplingBuffer(mem_size))``.

    The replay to use on online streams: Avalanche's ``Replay`` balances its memory across
    experiences, which are single batches here, and its cost per step grows with ``mem_size``.
    A strategy factory: ``AvalancheLearner(reservoir_replay, mem_size=200)`` or
    ``strategy_spec(reservoir_replay, "sgd", mem_size=200)`` in a study.
    """
    import_avalanche()
    from avalanche.training import Naive
    from avalanche.training.plugins import ReplayPlugin
    from avalanche.training.storage_policy import ReservoirSamplingBuffer

    replay = ReplayPlugin(mem_size, batch_size_mem=batch_size_mem,
                          storage_policy=ReservoirSamplingBuffer(mem_size))
    optional = {"evaluator": evaluator} if evaluator is not None else {}
    return Naive(model=model, optimizer=optimizer,
                 criterion=criterion if criterion is not None else nn.CrossEntropyLoss(),
                 train_mb_size=train_mb_size, train_epochs=train_epochs,
                 eval_mb_size=eval_mb_size, device=device, plugins=[*(plugins or []), replay],
                 **optional)


# ---------------------------------------------------------------------------------------------
# Avalanche strategies in studies
# ---------------------------------------------------------------------------------------------

def _strategy_path(strategy: str | type) -> str:
    """The ``"module:qualname"`` import path of a strategy given by class, short name
    (``"Replay"``: a class of ``avalanche.training``) or import path."""
    import_avalanche()
    training = sys.modules["avalanche.training"]
    if isinstance(strategy, str):
        if ":" in strategy:
            path = strategy
        elif "." in strategy:
            module, _, attr = strategy.rpartition(".")
            path = f"{module}:{attr}"
        else:
            path = f"avalanche.training:{strategy}"
        try:
            _import_strategy(path)
        except ShiftsimError:
            if ":" in strategy or "." in strategy:
                raise
            names = sorted(n for n in dir(training) if n[:1].isupper() and _is_strategy_class(
                getattr(training, n)))
            raise ShiftsimError(f"unknown Avalanche strategy {strategy!r}; allowed: "
                                f"{', '.join(names)} or an import path 'module:Class'") from None
        return path
    if isinstance(strategy, type) or inspect.isfunction(strategy):
        if isinstance(strategy, type) and getattr(training, strategy.__name__, None) is strategy:
            return f"avalanche.training:{strategy.__name__}"
        module, qualname = strategy.__module__, strategy.__qualname__
        path = f"{module}:{qualname}"
        if module != "__main__" and "<" not in qualname:
            with contextlib.suppress(ShiftsimError):
                if _import_strategy(path) is strategy:
                    return path
        raise ShiftsimError(f"strategy {qualname} cannot be imported by name ({path}); define it "
                            "at module level in an importable module, or use AvalancheLearner "
                            "with shiftsim.run instead of a study")
    raise SpecTypeError(f"strategy must be an Avalanche strategy class, its name (e.g. 'Replay'), "
                        f"a strategy factory function or an import path 'module:Class', got "
                        f"{strategy!r}")


def _is_strategy_class(obj: Any) -> bool:
    base = getattr(sys.modules.get("avalanche.training.templates"), "BaseTemplate", None)
    return isinstance(obj, type) and base is not None and issubclass(obj, base)


def _import_strategy(path: str) -> Any:
    from ..optim.registry import _import

    obj = _import(path, "strategy")
    if not callable(obj):
        raise SpecTypeError(f"{path} is {type(obj).__name__}, not a strategy class")
    return obj


def _frozen_kwargs(what: str, kwargs: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Keyword arguments as a sorted tuple of JSON values (lists become tuples)."""

    def freeze(name: str, v: Any) -> Any:
        if v is None or isinstance(v, (bool, int, str)):
            return v
        if isinstance(v, float):
            if v != v or v in (float("inf"), float("-inf")):
                raise ShiftsimError(f"{what} {name} must be finite, got {v!r}")
            return v
        if isinstance(v, (list, tuple)):
            return tuple(freeze(name, x) for x in v)
        raise SpecTypeError(f"{what} {name}={v!r} is not JSON-serialisable; a strategy spec "
                            "takes numbers, strings, booleans, None and lists of these (pass "
                            "plugins and other objects to AvalancheLearner with shiftsim.run)")

    return tuple(sorted((str(k), freeze(str(k), v)) for k, v in kwargs.items()))


def _thawed(items: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    def thaw(v: Any) -> Any:
        return [thaw(x) for x in v] if isinstance(v, tuple) else v

    return {k: thaw(v) for k, v in items}


@dataclass(frozen=True)
class StrategySpec(OptimizerSpec):
    """A frozen, hashable, JSON-serialisable description of an Avalanche strategy learner: the
    strategy's import path and arguments and the shiftsim optimizer it steps.

    Build it with :func:`strategy_spec`. It is an :class:`~shiftsim.optim.OptimizerSpec`, so it
    goes wherever an optimizer spec goes: the ``optimizers`` axis of a
    :class:`~shiftsim.study.Study` (next to plain optimizers, measured by the same metrics),
    :class:`~shiftsim.study.RunSpec`, or ``shiftsim.run(scenario, model, spec)``. The run then
    uses ``AvalancheLearner(strategy, model, optimizer, **strategy_kwargs)``
    (:meth:`learner_for`). ``name`` is ``"avalanche:<Strategy>"`` (the store's
    ``optimizer_name``); ``hparams`` / ``kwargs`` are the optimizer's (so ``lr`` labels and
    :meth:`replace` act on the optimizer). It cannot run in a fleet.
    """

    strategy: str = ""
    strategy_kwargs: tuple[tuple[str, Any], ...] = ()
    optimizer: OptimizerSpec | None = None
    train_kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def _opt(self) -> OptimizerSpec:
        if self.optimizer is None:
            raise ShiftsimError("a StrategySpec needs an optimizer; build it with "
                                "strategy_spec(...)")
        return self.optimizer

    @property
    def kwargs(self) -> dict[str, Any]:
        """The optimizer's hyperparameters."""
        return self._opt.kwargs

    @property
    def target(self) -> Any:
        """The strategy class (imports Avalanche)."""
        import_avalanche()
        return _import_strategy(self.strategy)

    @property
    def needs_loss(self) -> bool:
        return self._opt.needs_loss

    @property
    def family(self) -> str:
        return "avalanche"

    @property
    def label(self) -> str:
        """E.g. ``"Replay+sgd(lr=0.05)"``."""
        return f"{self.strategy.rpartition(':')[2]}+{self._opt.label}"

    def build(self, params: Any) -> torch.optim.Optimizer:
        """The optimizer the strategy steps, over ``params``."""
        return self._opt.build(params)

    def replace(self, **hparams: Any) -> StrategySpec:
        """A copy with optimizer hyperparameters changed (``lr`` ...); strategy arguments are
        changed with :func:`strategy_spec`."""
        opt = self._opt.replace(**hparams)
        return StrategySpec(self.name, opt.hparams, None, self.strategy, self.strategy_kwargs,
                            opt, self.train_kwargs)

    def learner_for(self, model: ModelSpec | nn.Module | Callable[[Dataset], nn.Module]
                    ) -> AvalancheLearner:
        """The :class:`AvalancheLearner` of one run with ``model`` (what the engine calls)."""
        return AvalancheLearner(self.target, model=model, optimizer=self._opt,
                                train_kwargs=_thawed(self.train_kwargs),
                                **_thawed(self.strategy_kwargs))

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "hparams": self._opt.to_dict()["hparams"],
               "strategy": self.strategy, "strategy_kwargs": _thawed(self.strategy_kwargs),
               "optimizer": self._opt.to_dict()}
        if self.train_kwargs:
            out["train_kwargs"] = _thawed(self.train_kwargs)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StrategySpec:
        if not isinstance(d, Mapping) or not {"strategy", "optimizer"} <= set(d):
            raise SpecTypeError(f"a strategy spec dict needs 'strategy' and 'optimizer', got {d!r}")
        return strategy_spec(d["strategy"], OptimizerSpec.from_dict(d["optimizer"]),
                             train_kwargs=d.get("train_kwargs"),
                             **dict(d.get("strategy_kwargs") or {}))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.strategy_kwargs)
        return (f"strategy_spec({self.strategy!r}, {self._opt!r}" + (f", {args}" if args else "")
                + ")")


def strategy_spec(strategy: str | type, optimizer: OptimizerSpec | str | Any = "sgdm", *,
                  train_kwargs: Mapping[str, Any] | None = None,
                  **strategy_kwargs: Any) -> StrategySpec:
    """Describe an Avalanche strategy learner for studies: a :class:`StrategySpec`.

    ``strategy`` is a class of ``avalanche.training`` by name (``"Replay"``, ``"EWC"``,
    ``"LwF"`` ...), a strategy class, or an import path ``"module:Class"``. ``optimizer`` is
    an :class:`~shiftsim.optim.OptimizerSpec` or registry name. ``strategy_kwargs`` (e.g.
    ``mem_size=200``, ``ewc_lambda=0.4``) must be JSON values, and are checked against the
    strategy's signature now. Imports Avalanche.

    Example (needs the extra)::

        study = ss.Study("strategies", scenarios, model=ss.models.mlp(), seeds=3, optimizers={
            "sgd": ss.optim.spec("sgd", lr=0.05),
            "replay": strategy_spec("Replay", ss.optim.spec("sgd", lr=0.05), mem_size=200),
        })
    """
    from ..optim import spec as optimizer_spec

    path = _strategy_path(strategy)
    cls = _import_strategy(path)
    opt = optimizer if isinstance(optimizer, OptimizerSpec) else optimizer_spec(optimizer)
    if isinstance(opt, StrategySpec):
        raise SpecTypeError("the optimizer of a strategy spec must be an optimizer, not another "
                            "strategy spec")
    opt.to_dict()  # an optimizer that cannot be serialised fails now, not in a study
    kwargs = _frozen_kwargs("strategy argument", strategy_kwargs)
    train = _frozen_kwargs("train argument", train_kwargs or {})
    AvalancheLearner(cls, model=None, optimizer=opt, **_thawed(kwargs))  # checks the arguments
    name = f"avalanche:{path.rpartition(':')[2]}"
    return StrategySpec(name, opt.hparams, None, path, kwargs, opt, train)
