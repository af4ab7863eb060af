"""Optimizers over K stacked members: which rule steps an optimizer spec, and how members group.

The fleet (:mod:`shiftsim.fleet`) trains K members of one architecture with their parameters
stacked along a leading dimension. It steps their optimizers through :class:`~shiftsim.optim.
_base.Stacked` rules, each written in its optimizer's module next to the class:

* shiftsim's optimizers carry theirs as the class attribute ``stacked`` (built from the
  module's state initialisation and functional kernel, with ``learner_dims=1``: reductions per
  member);
* torch's ``SGD``, ``Adam`` and ``AdamW`` have theirs in :mod:`~shiftsim.optim.sgd` and
  :mod:`~shiftsim.optim.adam` (torch's own operations, per-member hyperparameters);
* torch's other elementwise optimizers (RMSprop, Adagrad, NAdam ...) run as they are over the
  stacked tensors (:data:`ELEMENTWISE`: exact, as stacking does not change elementwise math;
  the members of such a group share every hyperparameter).

Members whose specs have equal :func:`group_key` form one group: the same rule and the same
non-numeric settings; their numeric hyperparameters may differ (:func:`group_hyper`).

>>> from shiftsim.optim import names
>>> all(supports(name) for name in names()), supports("torch.optim:LBFGS")
(True, False)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ShiftsimError
from . import adam, sgd
from ._base import Hyper, Stacked
from ._kernels import exact
from .registry import OptimizerSpec, check_hparams, spec

__all__ = ["ELEMENTWISE", "GroupKey", "group_hyper", "group_key", "hyperparameters",
           "member_hyper", "stacked_rule", "supports"]

#: constructor options that change nothing the fleet computes (implementation choices)
IGNORED = ("foreach", "capturable", "fused", "differentiable")
#: torch.optim classes whose update is not elementwise, or that cannot run on stacked tensors
NOT_ELEMENTWISE = ("LBFGS", "SparseAdam")
#: the rules of torch's own classes (they cannot carry a ``stacked`` attribute)
TORCH_RULES: dict[type, Stacked] = {torch.optim.SGD: sgd.STACKED, torch.optim.Adam: adam.STACKED,
                                    torch.optim.AdamW: adam.STACKED}


def _elementwise_init(params: list[Tensor], hp: Hyper, flags: dict[str, Any]) -> Any:
    views = [p.detach() for p in params]
    return views, flags["spec"].build(views)


def _elementwise_update(state: Any, params: list[Tensor], grads: list[Tensor], loss: Tensor,
                        hp: Hyper, flags: dict[str, Any]) -> list[Tensor]:
    views, optimizer = state
    for v, g in zip(views, grads):
        v.grad = g
    optimizer.step()
    return []


#: torch.optim classes known to update every element on its own (no per-tensor factors or
#: norms, unlike Adafactor or Muon): the fleet may step them over one row per member
ELEMENTWISE_FLAT = ("SGD", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Rprop",
                    "Adagrad", "Adadelta", "ASGD")


def _elementwise_flat(flags: dict[str, Any]) -> bool:
    target = flags["spec"].target
    return target.__module__.startswith("torch.optim") and target.__name__ in ELEMENTWISE_FLAT


#: torch's own elementwise optimizers over the stacked tensors (``flags["spec"]`` builds it)
ELEMENTWISE = Stacked(_elementwise_init, _elementwise_update, flat=_elementwise_flat)


def stacked_rule(target: Any) -> Stacked | None:
    """The rule that steps stacked members of the optimizer class ``target``, or None.

    >>> from shiftsim.optim.tam import TAM
    >>> stacked_rule(TAM) is TAM.stacked, stacked_rule(torch.optim.RMSprop) is ELEMENTWISE
    (True, True)
    """
    rule = vars(target).get("stacked") if isinstance(target, type) else None
    if isinstance(rule, Stacked):  # the class's own rule (a subclass may step differently)
        return rule
    if target in TORCH_RULES:
        return TORCH_RULES[target]
    if isinstance(target, type) and issubclass(target, torch.optim.Optimizer) and \
            target.__module__.startswith("torch.optim") and \
            target.__name__ not in NOT_ELEMENTWISE:
        return ELEMENTWISE
    return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def hyperparameters(opt_spec: OptimizerSpec) -> dict[str, Any]:
    """Every constructor argument of the spec's optimizer: the class defaults, then the spec's
    values; ``betas`` split into ``beta1`` / ``beta2``.

    >>> hyperparameters(spec("adam"))["beta2"]
    0.999
    """
    out = dict(_defaults(opt_spec.target))
    out.update(opt_spec.kwargs)
    if "betas" in out:
        out["beta1"], out["beta2"] = out.pop("betas")
    return out


@functools.lru_cache(maxsize=256)
def _defaults(target: Callable[..., Any]) -> tuple[tuple[str, Any], ...]:
    """The defaults of ``target``'s constructor arguments past the first, by name (read once
    per class: ``inspect.signature`` of TAM takes about 80 us, and a fleet asks for every
    member)."""
    out = []
    for i, p in enumerate(inspect.signature(target).parameters.values()):
        if i == 0 or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is p.empty:
            continue
        out.append((p.name, p.default))
    return tuple(out)


@dataclass(frozen=True)
class GroupKey:
    """What members of one group share: the rule and the non-numeric settings."""

    rule: Stacked
    flags: tuple[tuple[str, Any], ...]


def group_key(opt_spec: OptimizerSpec) -> GroupKey:
    """The group of a member with this optimizer (members with equal keys are stepped
    together; numeric hyperparameters may differ). Raises
    :class:`~shiftsim.errors.ShiftsimError` for an optimizer no rule steps, and whatever the
    optimizer raises for bad hyperparameters (:func:`~shiftsim.optim.registry.check_hparams`,
    which checks them without building an optimizer: a first torch optimizer imports
    torch._dynamo, about a second)."""
    target = opt_spec.target
    rule = stacked_rule(target)
    if rule is None:
        raise ShiftsimError(
            f"optimizer {opt_spec.name!r} cannot run in a fleet: the fleet runs shiftsim's "
            "optimizers and torch.optim's elementwise ones (SGD, Adam, AdamW, RMSprop ...) "
            "through kernels with per-member reductions; run it with shiftsim.run instead")
    # bad hyperparameters fail here as they would in run()
    check_hparams(opt_spec)
    if rule is ELEMENTWISE:
        return GroupKey(rule, (("spec", opt_spec),))
    hp = hyperparameters(opt_spec)
    flags = {k: v for k, v in hp.items() if not _is_number(v) and k not in IGNORED}
    if rule.settings is not None:
        flags = rule.settings(target, flags)
    if "foreach" in hp:
        flags["foreach"] = hp["foreach"]
    return GroupKey(rule, tuple(sorted(flags.items(), key=lambda kv: kv[0])))


def supports(optimizer: OptimizerSpec | str) -> bool:
    """Whether ``optimizer`` can run stacked in a fleet (shiftsim's optimizers and torch.optim's
    elementwise ones, with hyperparameters that build)."""
    try:
        group_key(optimizer if isinstance(optimizer, OptimizerSpec) else spec(optimizer))
    except Exception:
        return False
    return True


def group_hyper(specs: Sequence[OptimizerSpec], like: Tensor) -> Hyper:
    """The numeric hyperparameters of a group as tensors (in the dtype and on the device of
    ``like``): ``(K,)`` where the members' values differ, 0-d where they share one (the same
    arithmetic per member, fewer operations), and the number 0 where every member sets 0 (the
    rules skip the work they gate, such as weight decay).

    Tensors even where every member shares a value: an operation with a per-member tensor
    coefficient can round differently from the same operation with a Python number (``addcdiv``
    with a tensor value divides first), so with floats for shared values a member's numbers
    would depend on whether another member of its fleet has another value. With tensors
    everywhere, a member's optimizer computes the same in any fleet as alone (``ss.run`` is a
    one-member fleet). A member whose value is 0 in a group with other values runs the gated
    work with a zero coefficient: the same numbers for finite parameters (``g + 0 * p = g``,
    ``(1 - lr * 0) * p = p``). The tensors remember the members' exact values
    (:func:`~shiftsim.optim._kernels.exact`): the rules compute their scalar coefficients
    (bias corrections, step sizes, ``1 - beta``) from those on the host, per member, in Python
    floats (:func:`~shiftsim.optim._kernels.host`), and make each a tensor once, instead of
    0-d tensor arithmetic every step.

    >>> hp = group_hyper([spec("sgdm"), spec("sgdm", lr=0.1)], torch.zeros(()))
    >>> hp["lr"], hp["momentum"], hp["weight_decay"]
    (tensor([0.0500, 0.1000]), tensor(0.9000), 0.0)
    """
    if stacked_rule(specs[0].target) is ELEMENTWISE:
        return {}
    rows = member_hyper(specs)
    hp: Hyper = {}
    for k in rows[0]:
        vals = [r[k] for r in rows]
        if all(v == 0 for v in vals):
            hp[k] = 0.0
        else:  # 0-d where shared: the same arithmetic, fewer operations
            hp[k] = exact(vals, like)
    return hp


def member_hyper(specs: Sequence[OptimizerSpec]) -> list[dict[str, float]]:
    """Each member's numeric hyperparameters as exact Python floats (the values of its spec
    and the class defaults): what kernels that take Python numbers, such as torch's fused
    Adam, need (:func:`group_hyper`'s tensors round them to the parameters' dtype).

    >>> member_hyper([spec("sgdm")])[0]["momentum"]
    0.9
    """
    return [{k: float(v) for k, v in hyperparameters(s).items() if _is_number(v)}
            for s in specs]
