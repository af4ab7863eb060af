"""torch's fused SGD and Adam(W) kernels over K stacked members.

The fleet steps members of ``torch.optim.SGD``, ``Adam`` and ``AdamW`` with torch's fused
kernels (``torch._fused_sgd_``, ``torch._fused_adam_``, ``torch._fused_adamw_``: one pass over
memory per step, where the operation-by-operation rules in :mod:`~shiftsim.optim.sgd` and
:mod:`~shiftsim.optim.adam` make one per operation: two or three for SGD with momentum, seven
for Adam) when the device has them (CPU, CUDA). A fused
kernel takes its hyperparameters as Python numbers shared by a list of tensors, so the members
are split into *calls*: members with the same hyperparameter values, exactly as their specs give
them (``flags["members"]``), step in one call over their tensors (member ``k``'s tensors are
the ``k``-th slices of the stacked ones: views, no copies). The kernels are elementwise, so a
member's update does not depend on which members share its call or its fleet (tested: with one
torch thread a fleet member and the same run alone, ``ss.run``, itself a one-member fleet,
agree bit for bit).

>>> calls = member_calls([{"lr": 0.1, "momentum": 0.9}, {"lr": 0.2, "momentum": 0.9},
...                       {"lr": 0.1, "momentum": 0.9}])
>>> [(c.members, c.hp["lr"]) for c in calls]
[([0, 2], 0.1), ([1], 0.2)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["Call", "available", "grad_rows", "member_calls", "rows"]

#: device types whose torch build has the fused SGD and Adam(W) kernels
DEVICE_TYPES = ("cpu", "cuda")


@dataclass
class Call:
    """Members that share every hyperparameter value: one fused kernel call per step."""

    members: list[int]
    hp: dict[str, float]
    #: per-call state the rule keeps (its tensors' lists, step count)
    state: dict[str, Any] = field(default_factory=dict)
    _grads: tuple[tuple[Any, ...], list[Tensor]] | None = None
    _last: tuple[Any, ...] | None = None

    def grads(self, grads: Sequence[Tensor]) -> list[Tensor]:
        """:func:`grad_rows` of ``grads`` for this call's members, kept once the fleet has
        handed the same contiguous gradient memory twice in a row (a ReLU MLP's flat gradient
        rows, rewritten in place every step): the slices are views, so they see each step's
        values. Kept slices hold their memory, so no other tensor can appear at that address;
        gradients that move (autograd's fresh ones) are sliced anew and nothing is kept."""
        if not all(g.is_contiguous() for g in grads):
            return grad_rows(grads, self.members)
        key = tuple((g.data_ptr(), g.shape, g.stride(), g.dtype) for g in grads)
        if self._grads is not None and self._grads[0] == key:
            return self._grads[1]
        out = rows(grads, self.members)
        self._grads = (key, out) if key == self._last else None
        self._last = key
        return out


def available(params: Sequence[Tensor], flags: Mapping[str, Any]) -> bool:
    """Whether the fused kernels can step ``params`` (stacked tensors): a device that has them,
    a floating dtype they take, each member's slice contiguous, and the members' exact
    hyperparameters at hand (``flags["members"]``, which the fleet's learner supplies)."""
    if "members" not in flags or not params or not all(
            hasattr(torch, k) for k in ("_fused_sgd_", "_fused_adam_", "_fused_adamw_")):
        return False
    p = params[0]
    return (p.device.type in DEVICE_TYPES and p.is_floating_point()
            and p.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
            and all(t.device == p.device and t.dtype == p.dtype and t[0].is_contiguous()
                    for t in params))


def member_calls(members: Sequence[Mapping[str, float]]) -> list[Call]:
    """The members split into calls by their hyperparameter values, in order of first
    appearance (members in order within a call)."""
    calls: dict[tuple[Any, ...], Call] = {}
    for k, hp in enumerate(members):
        key = tuple(sorted(hp.items()))
        if key not in calls:
            calls[key] = Call([], {n: float(v) for n, v in hp.items()})
        calls[key].members.append(k)
    return list(calls.values())


def rows(stacked: Sequence[Tensor], members: Sequence[int]) -> list[Tensor]:
    """Member ``k``'s slice of every stacked tensor, for each of ``members`` in turn.

    >>> [tuple(t.shape) for t in rows([torch.zeros(3, 2, 4), torch.zeros(3, 5)], [0, 2])]
    [(2, 4), (5,), (2, 4), (5,)]
    """
    return [t[k] for k in members for t in stacked]


def grad_rows(grads: Sequence[Tensor], members: Sequence[int]) -> list[Tensor]:
    """:func:`rows` of the gradients, each made contiguous first where it is not (the fused
    kernels read a tensor's memory in order; autograd gives some gradients transposed)."""
    return rows([g if g.is_contiguous() else g.contiguous() for g in grads], members)
