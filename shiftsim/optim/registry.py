"""Optimizer registry: names -> optimizer classes, and frozen, JSON-serialisable specs.

An :class:`OptimizerSpec` describes an optimizer without building it, so a run can be shipped to
another process or machine and reproduced. Registry names cover torch's baselines and shiftsim's
own optimizers; any importable ``torch.optim.Optimizer`` subclass or factory works too.

>>> s = spec("sgdm", lr=0.1)
>>> s.name, s.kwargs["lr"], s.kwargs["momentum"]
('sgdm', 0.1, 0.9)
>>> OptimizerSpec.from_dict(s.to_dict()) == s
True
>>> import torch
>>> opt = s.build([torch.nn.Parameter(torch.zeros(3))])
>>> type(opt).__name__
'SGD'
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ShiftsimError, SpecTypeError, allowed, check_range


@dataclass(frozen=True)
class OptimizerEntry:
    """One registry row: what a name builds, with which defaults, and where it comes from."""

    name: str
    target: str  # "module:qualname" of the class
    defaults: Mapping[str, Any]  # registry defaults, overridable by the user
    summary: str
    paper: str = ""
    fixed: Mapping[str, Any] = field(default_factory=dict)  # set by the name, not overridable
    family: str = "sgd"  # "sgd" or "adam": which torch baseline it is compared with
    #: the learner's relative cost per training step for real-time streams (plain SGD = 1):
    #: see COSTS for how it was measured
    cost: float = 1.0


_ENTRIES: tuple[OptimizerEntry, ...] = (
    OptimizerEntry("sgd", "torch.optim:SGD", {"lr": 0.1, "weight_decay": 0.0},
                   "plain stochastic gradient descent (torch)", "Robbins & Monro 1951",
                   fixed={"momentum": 0.0}, cost=1.0),
    OptimizerEntry("sgdm", "torch.optim:SGD", {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
                   "heavy-ball SGD with momentum, dampening 0 (torch)", "Polyak 1964", cost=1.3),
    OptimizerEntry("nesterov", "torch.optim:SGD",
                   {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
                   "SGD with Nesterov momentum (torch)", "Sutskever et al. 2013",
                   fixed={"nesterov": True}, cost=1.5),
    OptimizerEntry("adam", "torch.optim:Adam", {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8,
                                                "weight_decay": 0.0},
                   "Adam (torch)", "Kingma & Ba 2015, arXiv:1412.6980", family="adam", cost=2.8),
    OptimizerEntry("adamw", "torch.optim:AdamW", {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8,
                                                  "weight_decay": 0.01},
                   "Adam with decoupled weight decay (torch)",
                   "Loshchilov & Hutter 2019, arXiv:1711.05101", family="adam", cost=2.7),
    OptimizerEntry("tam", "shiftsim.optim.tam:TAM", {"lr": 0.1},
                   "Torque-Aware Momentum: momentum damped by gradient-momentum alignment",
                   "Malviya et al. 2024, arXiv:2412.18790", cost=1.5),
    OptimizerEntry("adatam", "shiftsim.optim.tam:AdaTAM", {"lr": 1e-3},
                   "AdaTAM: torque-aware Adam, coupled weight decay",
                   "Malviya et al. 2024, arXiv:2412.18790", family="adam", cost=2.4),
    OptimizerEntry("adatamw", "shiftsim.optim.tam:AdaTAMW", {"lr": 1e-3},
                   "AdaTAMW: torque-aware Adam, decoupled weight decay",
                   "Malviya et al. 2024, arXiv:2412.18790", family="adam", cost=2.6),
    OptimizerEntry("adamem_sgd", "shiftsim.optim.adamem:AdaptiveMemorySGD", {"lr": 0.05},
                   "Adaptive-Memory heavy-ball momentum: beta from a two-plane proximal model",
                   "Topollai & Choromanska 2025, arXiv:2510.04988", cost=1.5),
    OptimizerEntry("adamem_adamw", "shiftsim.optim.adamem:AdaptiveMemoryAdamW", {"lr": 1e-3},
                   "Adaptive-Memory AdamW: per-layer adaptive beta1",
                   "Topollai & Choromanska 2025, arXiv:2510.04988", family="adam", cost=3.9),
    OptimizerEntry("momo", "shiftsim.optim.momo:MoMo", {"lr": 1.0},
                   "MoMo: momentum model-based Polyak-type step size (needs the loss)",
                   "Schaipp et al. 2024, arXiv:2305.07583", cost=1.3),
    OptimizerEntry("momo_adam", "shiftsim.optim.momo:MoMoAdam", {"lr": 1e-2},
                   "MoMo-Adam: MoMo step size with Adam preconditioning (needs the loss)",
                   "Schaipp et al. 2024, arXiv:2305.07583", family="adam", cost=2.6),
    OptimizerEntry("grams", "shiftsim.optim.grams:Grams", {"lr": 1e-3},
                   "Grams: Adam magnitude, current-gradient sign",
                   "Cao et al. 2024, arXiv:2412.17107", family="adam", cost=2.4),
)

#: How the costs were measured: ``benchmarks/learner_cost.py`` — the wall time of one full
#: training step (forward, cross-entropy, backward, optimizer step; batch 32, one torch thread)
#: of a ~5M-parameter MLP, relative to plain SGD, every optimizer interleaved in one process,
#: median of 9 rounds, on the project's 2-core CPU machine with the eager kernels (2026-12-06),
#: rounded to 0.1. They are fixed numbers so that real-time runs stay reproducible; a study
#: charges each learner its cost relative to the cheapest learner of the study.
COSTS = {e.name: e.cost for e in _ENTRIES}

REGISTRY: dict[str, OptimizerEntry] = {e.name: e for e in _ENTRIES}


def names() -> list[str]:
    """The registered optimizer names, in registry order.

    >>> names()[:5]
    ['sgd', 'sgdm', 'nesterov', 'adam', 'adamw']
    """
    return list(REGISTRY)


def _import(target: str, what: str = "optimizer") -> Any:
    module, _, qualname = target.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ShiftsimError(f"cannot import {what} {target!r}: {exc}") from exc
    return obj


def _path_of(obj: Any) -> str | None:
    """The "module:qualname" import path of obj, or None when it cannot be re-imported."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        return None
    try:
        if _import(f"{module}:{qualname}") is obj:
            return f"{module}:{qualname}"
    except ShiftsimError:
        return None
    # torch re-exports classes from torch.optim; prefer the short public path
    return None


def _public_path(obj: Any) -> str | None:
    if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer):
        short = f"torch.optim:{obj.__name__}"
        try:
            if _import(short) is obj:
                return short
        except ShiftsimError:
            pass
    return _path_of(obj)


def _freeze(name: str, value: Any) -> Any:
    """Turn an hparam into a hashable, JSON-friendly value (lists become tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(name, v) for v in value)
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ShiftsimError(f"optimizer hyperparameter {name} must be finite, got {value!r}")
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return _freeze(name, value.item())
    raise SpecTypeError(
        f"optimizer hyperparameter {name}={value!r} is not JSON-serialisable; "
        "allowed: numbers, strings, booleans, None and tuples of these"
    )


def _accepted_kwargs(factory: Callable[..., Any]) -> set[str] | None:
    """Keyword names the factory accepts besides params, or None if it takes **kwargs."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    out = set()
    for i, p in enumerate(sig.parameters.values()):
        if p.kind is p.VAR_KEYWORD:
            return None
        if i == 0 or p.kind is p.VAR_POSITIONAL:
            continue
        out.add(p.name)
    return out


_KINDS = ("a registry name, a torch.optim.Optimizer subclass or a factory function "
          "params -> optimizer")


def _check_target(key: str, target: Any) -> None:
    """Refuse, at spec time, what a run could not build or step: an import path that names no
    callable (a module, a constant), a class that is not a ``torch.optim.Optimizer`` subclass
    (``torch.nn:Linear``, ``builtins:dict``), and an optimizer whose ``step`` needs an argument
    the training loop does not pass (``torch.optim:LBFGS`` needs a closure). A plain function
    is a factory ``params -> optimizer``: it is called only when a run builds it."""
    if not callable(target):
        what = "a module" if inspect.ismodule(target) else f"a {type(target).__name__}"
        raise SpecTypeError(f"optimizer {key!r} is {what}, not an optimizer; allowed: {_KINDS}")
    if not isinstance(target, type):
        return
    if not issubclass(target, torch.optim.Optimizer):
        raise SpecTypeError(f"optimizer {key!r} is the class {target.__qualname__}, which is "
                            f"not a torch.optim.Optimizer subclass; allowed: {_KINDS}")
    try:
        params = list(inspect.signature(target.step).parameters.values())[1:]
    except (TypeError, ValueError):
        return
    needed = [p.name for p in params if p.default is p.empty and p.name != "loss"
              and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]  # the loop passes loss=
    if needed:
        what = ("a closure (it re-evaluates the loss several times per step)"
                if needed == ["closure"] else ", ".join(repr(n) for n in needed))
        raise ShiftsimError(f"optimizer {key!r} is not supported: its step() needs {what}, "
                            "which shiftsim's training loop does not pass; allowed: optimizers "
                            "whose step() takes no argument or the loss (e.g. 'sgdm', 'adam', "
                            "'momo')")


def _needs_loss(factory: Any) -> bool:
    flag = getattr(factory, "needs_loss", None)
    if flag is not None:
        return bool(flag)
    step = getattr(factory, "step", None)
    if step is None:
        return False
    try:
        return "loss" in inspect.signature(step).parameters
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class OptimizerSpec:
    """A frozen description of an optimizer: a registry name (or import path) and hyperparameters.

    Build it with :func:`spec`. ``hparams`` holds every hyperparameter explicitly (registry
    defaults merged in), sorted by name, so equal optimizers have equal specs and equal hashes.
    """

    name: str
    hparams: tuple[tuple[str, Any], ...] = ()
    factory: Any = field(default=None, compare=False, repr=False)
    #: the relative cost declared for real-time streams (None: the registry's, else 1);
    #: keyword-only, so that subclasses' positional fields keep their places
    cost: float | None = field(default=None, kw_only=True)

    @property
    def effective_cost(self) -> float:
        """The cost a real-time stream charges this learner per training step: the declared
        ``cost``, else the registry's measured one (:data:`COSTS`), else 1.

        >>> spec("sgd").effective_cost, spec("tam", cost=2.0).effective_cost
        (1.0, 2.0)
        """
        if self.cost is not None:
            return float(self.cost)
        entry = REGISTRY.get(self.name)
        return float(entry.cost) if entry else 1.0

    @property
    def kwargs(self) -> dict[str, Any]:
        """The hyperparameters as a dict (fixed registry settings included)."""
        entry = REGISTRY.get(self.name)
        out = dict(entry.fixed) if entry else {}
        out.update(self.hparams)
        return out

    @property
    def target(self) -> Any:
        """The class or factory this spec builds."""
        if self.factory is not None:
            return self.factory
        entry = REGISTRY.get(self.name)
        return _import(entry.target if entry else self.name)

    @property
    def needs_loss(self) -> bool:
        """Whether ``step`` must be given the loss (``step(loss=...)``), as MoMo needs."""
        return _needs_loss(self.target)

    @property
    def family(self) -> str:
        entry = REGISTRY.get(self.name)
        return entry.family if entry else "other"

    @property
    def label(self) -> str:
        """A short human-readable label, e.g. ``"tam(lr=0.1)"``."""
        lr = dict(self.hparams).get("lr")
        short = self.name.rpartition(":")[2]
        return f"{short}(lr={lr:g})" if isinstance(lr, (int, float)) else short

    def build(self, params: Iterable[Any]) -> torch.optim.Optimizer:
        """Create the optimizer over ``params`` (tensors or param-group dicts)."""
        return self.target(params, **self.kwargs)

    def replace(self, **hparams: Any) -> OptimizerSpec:
        """A copy with some hyperparameters changed.

        >>> spec("adam").replace(lr=0.01).kwargs["lr"]
        0.01
        """
        merged = dict(self.hparams)
        merged.update(hparams)
        if self.cost is not None:
            merged.setdefault("cost", self.cost)
        return spec(self.factory if self.factory is not None else self.name, **merged)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; raises when the optimizer cannot be re-imported elsewhere."""
        if self.name.startswith("<"):
            raise ShiftsimError(
                f"optimizer {self.name} cannot be serialised: define the factory at module level "
                "in an importable module (not a lambda, a local function or __main__)"
            )
        out = {"name": self.name, "hparams": {k: _jsonable(v) for k, v in self.hparams}}
        if self.cost is not None:
            out["cost"] = self.cost
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OptimizerSpec:
        if not isinstance(d, Mapping) or "name" not in d:
            raise SpecTypeError(f"an optimizer spec dict needs a 'name', got {d!r}")
        for key, decoder in DECODERS.items():  # a spec of an integration (register_decoder)
            if key in d:
                return (_import(decoder, "spec decoder") if isinstance(decoder, str)
                        else decoder)(d)
        extra = {"cost": d["cost"]} if d.get("cost") is not None else {}
        return spec(d["name"], **dict(d.get("hparams", {})), **extra)


#: spec-time checks of torch's optimizers: hyperparameter -> (low, high, low_open, high_open).
#: torch checks some of these only when the optimizer is built, inside a run, and some never
#: (SGD takes momentum=2 and diverges later), so :func:`spec` checks them all up front.
_UNIT = (0.0, 1.0, False, True)  # [0, 1): a decay rate, a momentum
_UNIT_CLOSED = (0.0, 1.0, False, False)  # [0, 1]
_NONNEG = (0.0, None, False, False)  # >= 0
_ADAM = {"betas": _UNIT, "eps": _NONNEG, "weight_decay": _NONNEG}
_TORCH_CHECKS: dict[str, dict[str, tuple[float | None, float | None, bool, bool]]] = {
    "SGD": {"momentum": _UNIT, "dampening": _UNIT_CLOSED, "weight_decay": _NONNEG},
    "Adam": _ADAM, "AdamW": _ADAM, "Adamax": _ADAM, "RAdam": _ADAM,
    "NAdam": {**_ADAM, "momentum_decay": _NONNEG},
    "SparseAdam": {"betas": _UNIT, "eps": _NONNEG},
    "RMSprop": {"alpha": _UNIT_CLOSED, "momentum": _UNIT, "eps": _NONNEG,
                "weight_decay": _NONNEG},
    "Adagrad": {"lr_decay": _NONNEG, "weight_decay": _NONNEG,
                "initial_accumulator_value": _NONNEG, "eps": _NONNEG},
    "Adadelta": {"rho": _UNIT_CLOSED, "eps": _NONNEG, "weight_decay": _NONNEG},
    "ASGD": {"lambd": _NONNEG, "alpha": _NONNEG, "t0": _NONNEG, "weight_decay": _NONNEG},
    "Rprop": {"step_sizes": _NONNEG},
}
#: settings that depend on the device the optimizer will run on: left out of the trial build
_DEVICE_FLAGS = ("fused", "capturable", "foreach", "differentiable")


def _check_torch_hparams(key: str, target: Any, hp: Mapping[str, Any]) -> None:
    """The ranges of :data:`_TORCH_CHECKS` (and SGD's Nesterov condition, Rprop's etas) for a
    ``torch.optim`` class; one-line errors such as ``sgdm.momentum must be in [0, 1), got 2``."""
    if getattr(target, "__module__", "").partition(".")[:2] != ("torch", ".") or \
            not isinstance(target, type):
        return
    short = key.rpartition(":")[2]
    for name, (lo, hi, lo_open, hi_open) in _TORCH_CHECKS.get(target.__name__, {}).items():
        if name not in hp:
            continue
        value = hp[name]
        if name in ("betas", "step_sizes"):
            if not isinstance(value, tuple) or len(value) != 2:
                raise SpecTypeError(f"{short}.{name} must be a pair of numbers, got {value!r}")
            for i, v in enumerate(value):
                check_range(v, f"{short}.{name}[{i}]", lo, hi, low_open=lo_open,
                            high_open=hi_open)
        else:
            check_range(value, f"{short}.{name}", lo, hi, low_open=lo_open, high_open=hi_open)
    if target.__name__ == "SGD" and hp.get("nesterov"):
        if not hp.get("momentum", 0) > 0 or hp.get("dampening", 0) != 0:
            raise ShiftsimError(f"{short}: Nesterov momentum needs momentum > 0 and dampening "
                                f"0, got momentum={hp.get('momentum', 0)!r}, "
                                f"dampening={hp.get('dampening', 0)!r}")
    if target.__name__ == "Rprop" and "etas" in hp:
        etas = hp["etas"]
        if not (isinstance(etas, tuple) and len(etas) == 2
                and all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in etas)
                and 0 < etas[0] < 1 < etas[1]):
            raise ShiftsimError(f"{short}.etas must be (decrease, increase) with 0 < decrease "
                                f"< 1 < increase, got {etas!r}")


_EMPTY = "empty parameter list"


def _trial_build(key: str, target: Any, hp: Mapping[str, Any]) -> None:
    """Run a torch or shiftsim optimizer's own constructor checks now (at spec time) rather
    than inside a run; torch's errors become one-line ShiftsimErrors naming the optimizer.

    The constructor gets an empty parameter list: every optimizer checks its hyperparameters
    first, then ``torch.optim.Optimizer.__init__`` refuses the empty list, before the first
    ``add_param_group`` would import ``torch._dynamo`` (about a second, once per process): a
    run that never builds a torch optimizer object (the stacked path of ``run``) does not pay
    it."""
    module = getattr(target, "__module__", "") or ""
    if not isinstance(target, type) or not module.startswith(("torch.optim", "shiftsim.optim")):
        return
    kwargs = {k: v for k, v in hp.items() if k not in _DEVICE_FLAGS}
    short = key.rpartition(":")[2]
    try:
        target([], **kwargs)
    except ShiftsimError as exc:  # shiftsim's own checks: name the optimizer
        raise type(exc)(f"{short}: {exc}") from None
    except ValueError as exc:
        if _EMPTY in str(exc):
            return  # every check passed
        raise ShiftsimError(f"optimizer {key!r} rejects its hyperparameters: "
                            f"{' '.join(str(exc).split())}") from None
    except (TypeError, RuntimeError) as exc:
        raise ShiftsimError(f"optimizer {key!r} rejects its hyperparameters: "
                            f"{' '.join(str(exc).split())}") from None
#: decoders of spec dicts that describe more than an optimizer, by the key that marks them:
#: a function ``dict -> OptimizerSpec`` or its import path ``"module:qualname"`` (imported on
#: first use). Integrations register theirs (:func:`register_decoder`).
DECODERS: dict[str, Callable[[Mapping[str, Any]], OptimizerSpec] | str] = {}


def register_decoder(key: str, decoder: Callable[[Mapping[str, Any]], OptimizerSpec] | str
                     ) -> None:
    """Have :meth:`OptimizerSpec.from_dict` decode dicts that hold ``key`` with ``decoder`` (a
    function, or its import path ``"module:qualname"``, imported on first use, so registering
    imports nothing). :mod:`shiftsim.integrations` registers the Avalanche strategy specs.

    >>> "strategy" in DECODERS
    True
    """
    DECODERS[key] = decoder


def _jsonable(v: Any) -> Any:
    return [_jsonable(x) for x in v] if isinstance(v, tuple) else v


def spec(name: str | type | Callable[..., Any] | OptimizerSpec, **hparams: Any) -> OptimizerSpec:
    """Describe an optimizer by registry name, import path, class or factory.

    Registry defaults are merged in, unknown hyperparameters are rejected, and the values are
    checked now, not when a run builds the optimizer: torch's optimizers against their
    documented ranges (momentum and betas in [0, 1), eps and weight_decay >= 0 ...), shiftsim's
    by their own checks. An import path or class must name a ``torch.optim.Optimizer`` subclass
    whose ``step`` needs no argument (not ``LBFGS``, which needs a closure) or a factory
    function ``params -> optimizer``.

    >>> spec("tam", lr=0.05).kwargs
    {'lr': 0.05}
    >>> spec("torch.optim:RMSprop", lr=0.01).name
    'torch.optim:RMSprop'
    >>> spec("sgdm", lrr=0.1)
    Traceback (most recent call last):
    ...
    shiftsim.errors.ShiftsimError: unknown hyperparameter 'lrr' for optimizer 'sgdm'; allowed: ...
    >>> spec("sgdx")
    Traceback (most recent call last):
    ...
    shiftsim.errors.ShiftsimError: unknown optimizer 'sgdx'; allowed: 'sgd', 'sgdm', ...
    >>> spec("sgdm", momentum=2.0)
    Traceback (most recent call last):
    ...
    shiftsim.errors.ShiftsimError: sgdm.momentum must be in [0, 1), got 2.0
    >>> spec("torch.nn:Linear")
    Traceback (most recent call last):
    ...
    shiftsim.errors.SpecTypeError: optimizer 'torch.nn:Linear' is the class Linear, which is ...
    """
    cost = hparams.pop("cost", None)
    if cost is not None:
        cost = float(check_range(cost, "cost", 1, None))
    if isinstance(name, OptimizerSpec):
        if cost is not None:
            hparams["cost"] = cost
        return name.replace(**hparams) if hparams else name
    factory = None
    if isinstance(name, str):
        entry = REGISTRY.get(name)
        if entry is None and ":" not in name:
            if "." in name:  # "torch.optim.RMSprop" -> "torch.optim:RMSprop"
                module, _, attr = name.rpartition(".")
                name = f"{module}:{attr}"
            else:
                raise allowed(name, "optimizer", names() + ["<module>:<Class>"])
        key = name
        merged = dict(entry.defaults) if entry else {}
        target = _import(entry.target if entry else name)
    elif callable(name):
        factory = name
        key = _public_path(name) or f"<{getattr(name, '__qualname__', repr(name))}>"
        if not key.startswith("<"):
            factory = None  # importable: the name alone rebuilds it
        merged, entry, target = {}, None, name
    else:
        raise SpecTypeError(
            f"optimizer must be a registry name, an import path, an optimizer class or a "
            f"factory, got {name!r}"
        )
    _check_target(key, target)
    if entry is not None:
        for k in hparams:
            if k in entry.fixed:
                raise ShiftsimError(
                    f"hyperparameter {k!r} is fixed by the optimizer name {entry.name!r} "
                    f"(to {entry.fixed[k]!r}); use another name, e.g. 'sgd' or 'sgdm'"
                )
    accepted = _accepted_kwargs(target)
    if accepted is not None:
        unknown = [k for k in hparams if k not in accepted]
        if unknown:
            raise ShiftsimError(
                f"unknown hyperparameter {unknown[0]!r} for optimizer {key!r}; allowed: "
                + ", ".join(sorted(accepted))
            )
    merged.update(hparams)
    frozen = tuple(sorted((k, _freeze(k, v)) for k, v in merged.items()))
    lr = dict(frozen).get("lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float))):
        raise SpecTypeError(f"lr must be a number, got {merged['lr']!r}")
    if lr is not None and lr < 0:
        raise ShiftsimError(f"learning rate lr must be >= 0, got {lr!r}")
    out = OptimizerSpec(key, frozen, factory, cost=cost)
    check_hparams(out)
    return out


def check_hparams(spec: OptimizerSpec) -> None:
    """Check a spec's hyperparameters as :func:`spec` does (what the fleet calls for specs
    made some other way); one-line ShiftsimErrors naming the optimizer and the value."""
    target = spec.target
    _check_torch_hparams(spec.name, target, spec.kwargs)
    _trial_build(spec.name, target, spec.kwargs)
