"""torch's Adam and AdamW over K stacked members: their state, their kernel and stacked rule.

The classes are ``torch.optim.Adam`` and ``torch.optim.AdamW`` themselves; this module holds
what the fleet steps instead: torch's fused Adam(W) kernel, one call per set of members with
equal hyperparameters (:mod:`~shiftsim.optim.fused`; on the CPU and CUDA), and elsewhere the
operations of torch's own Adam kernel in the same order (amsgrad, maximize, coupled or
decoupled weight decay), with hyperparameters that may differ per member (``(K,)`` tensors).

>>> p, g = torch.zeros(2, 3), torch.ones(2, 3)
>>> state = adam_init([p])
>>> adam([p], [g], state, lr=torch.tensor([0.1, 0.2]), learner_dims=1)
>>> [round(v, 4) for v in p[:, 0].tolist()]
[-0.1, -0.2]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import fused
from ._base import Hyper, Stacked, always
from ._kernels import (
    Scalar,
    bc,
    decay_factor,
    foreach_add_decay,
    foreach_addcdiv_,
    foreach_ema_sq_,
    foreach_scale_,
    foreach_sqrt,
    host,
    is_zero,
    one_minus,
)

__all__ = ["adam", "adam_init", "fused_adam", "fused_adam_init"]


def adam_init(params: list[Tensor], amsgrad: bool = False) -> dict[str, Any]:
    """Adam's initial state for ``params`` (any leading member dimensions): step 0, zero first
    and second moments ``exp_avg``, ``exp_avg_sq`` (and ``max_exp_avg_sq`` with amsgrad)."""
    return {"step": 0, "exp_avg": [torch.zeros_like(p) for p in params],
            "exp_avg_sq": [torch.zeros_like(p) for p in params],
            "max_exp_avg_sq": [torch.zeros_like(p) for p in params] if amsgrad else None}


def _neg_step_size(lr: Scalar, beta1: Scalar, t: float) -> Scalar:
    """``-(lr / (1 - beta1^t))``: Adam's step factor on ``m / den``."""
    return -(lr / (1 - beta1 ** t))


def _sqrt_bias_correction(beta2: Scalar, t: float) -> Scalar:
    """``sqrt(1 - beta2^t)``: the second moment's bias correction on ``sqrt(v)``."""
    return (1 - beta2 ** t) ** 0.5


def adam(params: list[Tensor], grads: list[Tensor], state: dict[str, Any], *, lr: Scalar,
         beta1: Scalar = 0.9, beta2: Scalar = 0.999, eps: Scalar = 1e-8,
         weight_decay: Scalar = 0.0, decoupled: bool = False, maximize: bool = False,
         learner_dims: int = 0) -> None:
    """One step of ``torch.optim.Adam`` (``decoupled=True``: ``AdamW``) on ``params`` in place;
    ``state`` (from :func:`adam_init`) holds the step count and the moments."""
    ld = learner_dims
    state["step"] += 1
    t = float(state["step"])
    m, v, vmax = state["exp_avg"], state["exp_avg_sq"], state["max_exp_avg_sq"]
    G = list(torch._foreach_neg(grads)) if maximize else grads
    if not is_zero(weight_decay):
        if decoupled:
            foreach_scale_(params, host(decay_factor, lr, weight_decay), ld)
        else:
            G = foreach_add_decay(params, G, weight_decay, ld)
    w1 = host(one_minus, beta1)
    if isinstance(w1, Tensor):
        torch._foreach_lerp_(m, G, [bc(w1, x, ld) for x in m])
    else:
        torch._foreach_lerp_(m, G, w1)
    foreach_ema_sq_(v, G, beta2, ld)
    # on the host for exact tensors (_kernels.host)
    step_size = host(_neg_step_size, lr, beta1, t, keep=False)
    bc2_sqrt = host(_sqrt_bias_correction, beta2, t, keep=False)
    src = v
    if vmax is not None:
        torch._foreach_maximum_(vmax, v)
        src = vmax
    den = foreach_sqrt(src)
    if isinstance(bc2_sqrt, Tensor):
        torch._foreach_div_(den, [bc(bc2_sqrt, d, ld) for d in den])
    else:
        torch._foreach_div_(den, bc2_sqrt)
    if isinstance(eps, Tensor):
        torch._foreach_add_(den, [bc(eps, d, ld) for d in den])
    else:
        torch._foreach_add_(den, eps)
    foreach_addcdiv_(params, m, den, [step_size] * len(params), ld)


#: the hyperparameters torch's fused Adam(W) kernels take
FUSED_HP = ("lr", "beta1", "beta2", "eps", "weight_decay")


def fused_adam_init(params: list[Tensor], members: list[dict[str, float]],
                    amsgrad: bool = False) -> dict[str, Any]:
    """State for stepping stacked ``params`` with torch's fused Adam(W) kernels: the moments
    as :func:`adam_init` makes them, a step count tensor, and the members split into calls by
    their hyperparameters (:func:`shiftsim.optim.fused.member_calls`), each holding its
    members' slices of the parameters and moments (views: every step updates these
    ``params``, whatever the rule's update is handed; consecutive members' slices merged
    where that keeps the numbers, :func:`shiftsim.optim.fused.pieces`)."""
    state = adam_init(params, amsgrad)
    state["step"] = torch.zeros((), dtype=torch.float32, device=params[0].device)
    state["calls"] = fused.member_calls([{n: m[n] for n in FUSED_HP} for m in members])
    kept = [state["exp_avg"], state["exp_avg_sq"]] + ([state["max_exp_avg_sq"]] if amsgrad
                                                      else [])
    for c in state["calls"]:
        c.plan = fused.pieces([params, *kept], c.members)
        c.state = {"params": c.take(params), "exp_avg": c.take(state["exp_avg"]),
                   "exp_avg_sq": c.take(state["exp_avg_sq"]),
                   "max_exp_avg_sq": c.take(state["max_exp_avg_sq"]) if amsgrad else [],
                   "steps": [state["step"]] * len(c.plan)}
    return state


def fused_adam(grads: list[Tensor], state: dict[str, Any], *, decoupled: bool = False,
               amsgrad: bool = False, maximize: bool = False) -> None:
    """One step of torch's fused Adam (``decoupled``: AdamW) for every call of ``state`` (from
    :func:`fused_adam_init`); ``grads``: the stacked gradients, in the order of the
    parameters."""
    kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
    state["step"].add_(1)
    for c in state["calls"]:
        s = c.state
        kernel(s["params"], c.grads(grads), s["exp_avg"], s["exp_avg_sq"],
               s["max_exp_avg_sq"], s["steps"], lr=c.hp["lr"], beta1=c.hp["beta1"],
               beta2=c.hp["beta2"], weight_decay=c.hp["weight_decay"], eps=c.hp["eps"],
               amsgrad=amsgrad, maximize=maximize)


def _init(params: list[Tensor], hp: Hyper, flags: dict[str, Any]) -> dict[str, Any]:
    if fused.available(params, flags):
        return fused_adam_init(params, flags["members"], flags["amsgrad"])
    return adam_init(params, flags["amsgrad"])


def _update(state: dict[str, Any], params: list[Tensor], grads: list[Tensor], loss: Tensor,
            hp: Hyper, flags: dict[str, Any]) -> list[Tensor]:
    if "calls" in state:
        fused_adam(grads, state, decoupled=flags["decoupled"], amsgrad=flags["amsgrad"],
                   maximize=flags["maximize"])
        return []
    adam(params, grads, state, lr=hp["lr"], beta1=hp["beta1"], beta2=hp["beta2"],
         eps=hp["eps"], weight_decay=hp["weight_decay"], decoupled=flags["decoupled"],
         maximize=flags["maximize"], learner_dims=1)
    return []


def _settings(cls: type, flags: dict[str, Any]) -> dict[str, Any]:
    """AdamW decouples its weight decay; Adam does with ``decoupled_weight_decay=True``."""
    flags["decoupled"] = cls is torch.optim.AdamW or bool(
        flags.pop("decoupled_weight_decay", False))
    return flags


#: how the fleet steps ``torch.optim.Adam`` and ``torch.optim.AdamW``
STACKED = Stacked(_init, _update, settings=_settings, flat=always, exact_members=True)
