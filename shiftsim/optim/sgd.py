"""torch's SGD over K stacked members: its state, its kernel and its stacked rule.

The class is ``torch.optim.SGD`` itself; this module holds what the fleet steps instead: the
operations of torch's own SGD kernel in the same order (momentum, dampening, Nesterov, coupled
weight decay, maximize), with hyperparameters that may differ per member (``(K,)`` tensors).

>>> p, g = torch.ones(2, 3), torch.ones(2, 3)
>>> state = sgd_init([p])
>>> sgd([p], [g], state, lr=torch.tensor([0.1, 0.2]), momentum=0.9, learner_dims=1)
>>> [round(v, 4) for v in p[:, 0].tolist()]
[0.9, 0.8]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._base import Hyper, Stacked, always
from ._kernels import Scalar, foreach_add_decay, foreach_axpy_, foreach_scale_, is_zero

__all__ = ["sgd", "sgd_init"]


def sgd_init(params: list[Tensor]) -> dict[str, Any]:
    """SGD's initial state for ``params``: no momentum buffers yet (the first step makes them,
    as torch does) and step 0."""
    return {"step": 0, "momentum_buffer": None}


def sgd(params: list[Tensor], grads: list[Tensor], state: dict[str, Any], *, lr: Scalar,
        momentum: Scalar = 0.0, dampening: Scalar = 0.0, weight_decay: Scalar = 0.0,
        nesterov: bool = False, maximize: bool = False, learner_dims: int = 0) -> None:
    """One step of ``torch.optim.SGD``'s update on ``params`` in place; ``state`` (from
    :func:`sgd_init`) holds the step count and the momentum buffers."""
    ld = learner_dims
    state["step"] += 1
    G = list(torch._foreach_neg(grads)) if maximize else grads
    if not is_zero(weight_decay):
        G = foreach_add_decay(params, G, weight_decay, ld)
    if not is_zero(momentum):
        if state["step"] == 1:
            state["momentum_buffer"] = [g.clone() for g in G]
        else:
            bufs = state["momentum_buffer"]
            foreach_scale_(bufs, momentum, ld)
            foreach_axpy_(bufs, G, 1 - dampening, ld)
        if nesterov:
            G = [g.clone() for g in G]
            foreach_axpy_(G, state["momentum_buffer"], momentum, ld)
        else:
            G = state["momentum_buffer"]
    foreach_axpy_(params, G, -lr, ld)


def _update(state: dict[str, Any], params: list[Tensor], grads: list[Tensor], loss: Tensor,
            hp: Hyper, flags: dict[str, Any]) -> list[Tensor]:
    sgd(params, grads, state, lr=hp["lr"], momentum=hp["momentum"], dampening=hp["dampening"],
        weight_decay=hp["weight_decay"], nesterov=flags["nesterov"], maximize=flags["maximize"],
        learner_dims=1)
    return []


#: how the fleet steps ``torch.optim.SGD``
STACKED = Stacked(lambda params, hp, flags: sgd_init(params), _update, flat=always)
