"""torch's SGD over K stacked members: its state, its kernel and its stacked rule.

The class is ``torch.optim.SGD`` itself; this module holds what the fleet steps instead:
torch's fused SGD kernel, one call per set of members with equal hyperparameters
(:mod:`~shiftsim.optim.fused`; on the CPU and CUDA), and elsewhere the operations of torch's own
SGD kernel in the same order (momentum, dampening, Nesterov, coupled weight decay, maximize),
with hyperparameters that may differ per member (``(K,)`` tensors).

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

from . import fused
from ._base import Hyper, Stacked, always
from ._kernels import Scalar, foreach_add_decay, foreach_axpy_, foreach_scale_, is_zero

__all__ = ["fused_sgd", "fused_sgd_init", "sgd", "sgd_init"]


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


#: the hyperparameters torch's fused SGD kernel takes
FUSED_HP = ("lr", "momentum", "dampening", "weight_decay")


def fused_sgd_init(params: list[Tensor], members: list[dict[str, float]]) -> dict[str, Any]:
    """State for stepping stacked ``params`` with torch's fused SGD kernel: momentum buffers
    (filled by the first step, as torch does; none for members without momentum), the step
    count, and the members split into calls by their hyperparameters
    (:func:`shiftsim.optim.fused.member_calls`), each with its members' slices (views: every
    step updates these ``params``, whatever the rule's update is handed; consecutive members'
    slices merged where that keeps the numbers, :func:`shiftsim.optim.fused.pieces`)."""
    calls = fused.member_calls([{n: m[n] for n in FUSED_HP} for m in members])
    momentum = any(c.hp["momentum"] != 0 for c in calls)
    bufs = [torch.zeros_like(p) for p in params] if momentum else None
    for c in calls:
        c.plan = fused.pieces([params] if bufs is None else [params, bufs], c.members)
        c.state = {"params": c.take(params),
                   "momentum_buffer": c.take(bufs)
                   if bufs is not None and c.hp["momentum"] != 0 else []}
    return {"step": 0, "momentum_buffer": bufs, "calls": calls}


def fused_sgd(grads: list[Tensor], state: dict[str, Any], *, nesterov: bool = False,
              maximize: bool = False) -> None:
    """One step of torch's fused SGD for every call of ``state`` (from :func:`fused_sgd_init`);
    ``grads``: the stacked gradients, in the order of the parameters."""
    state["step"] += 1
    for c in state["calls"]:
        s = c.state
        torch._fused_sgd_(s["params"], c.grads(grads), s["momentum_buffer"],
                          weight_decay=c.hp["weight_decay"], momentum=c.hp["momentum"],
                          lr=c.hp["lr"], dampening=c.hp["dampening"], nesterov=nesterov,
                          maximize=maximize, is_first_step=state["step"] == 1)


def _init(params: list[Tensor], hp: Hyper, flags: dict[str, Any]) -> dict[str, Any]:
    if fused.available(params, flags):
        return fused_sgd_init(params, flags["members"])
    return sgd_init(params)


def _update(state: dict[str, Any], params: list[Tensor], grads: list[Tensor], loss: Tensor,
            hp: Hyper, flags: dict[str, Any]) -> list[Tensor]:
    if "calls" in state:
        fused_sgd(grads, state, nesterov=flags["nesterov"], maximize=flags["maximize"])
        return []
    sgd(params, grads, state, lr=hp["lr"], momentum=hp["momentum"], dampening=hp["dampening"],
        weight_decay=hp["weight_decay"], nesterov=flags["nesterov"], maximize=flags["maximize"],
        learner_dims=1)
    return []


#: how the fleet steps ``torch.optim.SGD``
STACKED = Stacked(_init, _update, flat=always, exact_members=True)
