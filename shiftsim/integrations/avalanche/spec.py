"""Avalanche strategies in studies: :class:`StrategySpec`, :func:`strategy_spec`.

A strategy spec sits on a study's optimizer axis; :meth:`OptimizerSpec.from_dict
<shiftsim.optim.OptimizerSpec.from_dict>` decodes its dict through the decoder that
:mod:`shiftsim.integrations` registers for the ``"strategy"`` key (:meth:`StrategySpec.from_dict`).
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...errors import ShiftsimError, SpecTypeError
from ...models import ModelSpec
from ...optim import OptimizerSpec
from .learner import AvalancheLearner
from .loader import import_avalanche

if TYPE_CHECKING:  # pragma: no cover
    from ...data import Dataset


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
    from ...optim.registry import _import

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
    from ...optim import spec as optimizer_spec

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
