"""torch's Adam and AdamW over K stacked members: their state, their kernel and stacked rule.

The classes are ``torch.optim.Adam`` and ``torch.optim.AdamW`` themselves; this module holds
what the fleet steps instead: the operations of torch's own Adam kernel in the same order
(amsgrad, maximize, coupled or decoupled weight decay), with hyperparameters that may differ
per member (``(K,)`` tensors).

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

from ._base import Hyper, Stacked, always
from ._kernels import (
    Scalar,
    bc,
    foreach_add_decay,
    foreach_addcdiv_,
    foreach_ema_sq_,
    foreach_scale_,
    is_zero,
)

__all__ = ["adam", "adam_init"]


def adam_init(params: list[Tensor], amsgrad: bool = False) -> dict[str, Any]:
    """Adam's initial state for ``params`` (any leading member dimensions): step 0, zero first
    and second moments ``exp_avg``, ``exp_avg_sq`` (and ``max_exp_avg_sq`` with amsgrad)."""
    return {"step": 0, "exp_avg": [torch.zeros_like(p) for p in params],
            "exp_avg_sq": [torch.zeros_like(p) for p in params],
            "max_exp_avg_sq": [torch.zeros_like(p) for p in params] if amsgrad else None}


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
            foreach_scale_(params, 1 - lr * weight_decay, ld)
        else:
            G = foreach_add_decay(params, G, weight_decay, ld)
    if isinstance(beta1, Tensor):
        torch._foreach_lerp_(m, G, [bc(1 - beta1, x, ld) for x in m])
    else:
        torch._foreach_lerp_(m, G, 1 - beta1)
    foreach_ema_sq_(v, G, beta2, ld)
    step_size = lr / (1 - beta1 ** t)
    bc2_sqrt = (1 - beta2 ** t) ** 0.5
    src = v
    if vmax is not None:
        torch._foreach_maximum_(vmax, v)
        src = vmax
    den = list(torch._foreach_sqrt(src))
    if isinstance(bc2_sqrt, Tensor):
        torch._foreach_div_(den, [bc(bc2_sqrt, d, ld) for d in den])
    else:
        torch._foreach_div_(den, bc2_sqrt)
    if isinstance(eps, Tensor):
        torch._foreach_add_(den, [bc(eps, d, ld) for d in den])
    else:
        torch._foreach_add_(den, eps)
    foreach_addcdiv_(params, m, den, [-step_size] * len(params), ld)


def _update(state: dict[str, Any], params: list[Tensor], grads: list[Tensor], loss: Tensor,
            hp: Hyper, flags: dict[str, Any]) -> list[Tensor]:
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
STACKED = Stacked(lambda params, hp, flags: adam_init(params, flags["amsgrad"]), _update,
                  settings=_settings, flat=always)
