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

A call hands the kernel fewer, larger tensors where that keeps those numbers (:func:`pieces`):
consecutive members' slices of a stacked tensor as one flat view when each member's slice has a
multiple of :data:`WHOLE` elements. torch's CPU kernels compute whole vectors one way and the
few elements of a tensor's tail another (measured: merging 10-element slices changes the bits),
so only tensors without a tail are merged; a member's elements then take the vector path
either way, alone or merged (tested on the CPU with one and two threads, against one tensor per
member, bit for bit). [speed] Fewer tensors cost fewer per-tensor dispatches and, with two
threads, split better: 8 members of an MLP 64-128-128-10 (6 tensors each, 48 a call, 13
merged), one call, measured side by side on a 2-core Intel Xeon: fused Adam 144 -> 130 us
with one thread, 158 -> 78 us with two; fused SGD 77 -> 67 and 109 -> 36 us.

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

__all__ = ["WHOLE", "Call", "available", "member_calls", "pieces", "rows", "take"]

#: device types whose torch build has the fused SGD and Adam(W) kernels
DEVICE_TYPES = ("cpu", "cuda")
#: consecutive members' slices are merged into one tensor only when each slice has a multiple
#: of this many elements: whole vectors of torch's CPU kernels (16 float32, 8 float64 or 32
#: bfloat16 elements with AVX-512; tested for float32 and float64), no tail
WHOLE = 64

#: one tensor of a fused call: stacked tensor ``index``'s slices of ``members`` (consecutive,
#: as one flat view, when there are several)
Piece = tuple[int, tuple[int, ...]]


@dataclass
class Call:
    """Members that share every hyperparameter value: one fused kernel call per step."""

    members: list[int]
    hp: dict[str, float]
    #: per-call state the rule keeps (its tensors' lists, step count)
    state: dict[str, Any] = field(default_factory=dict)
    #: the call's tensors (:func:`pieces`); None: one per member and stacked tensor (:func:`rows`)
    plan: list[Piece] | None = None
    _grads: tuple[tuple[Any, ...], list[Tensor]] | None = None
    _last: tuple[Any, ...] | None = None

    def grads(self, grads: Sequence[Tensor]) -> list[Tensor]:
        """This call's tensors of ``grads`` (:meth:`take`, gradients that are not contiguous
        made so first), kept once the fleet has
        handed the same contiguous gradient memory twice in a row (a ReLU MLP's flat gradient
        rows, rewritten in place every step): the slices are views, so they see each step's
        values. Kept slices hold their memory, so no other tensor can appear at that address;
        gradients that move (autograd's fresh ones) are sliced anew and nothing is kept."""
        if not all(g.is_contiguous() for g in grads):
            return self.take([g if g.is_contiguous() else g.contiguous() for g in grads])
        key = tuple((g.data_ptr(), g.shape, g.stride(), g.dtype) for g in grads)
        if self._grads is not None and self._grads[0] == key:
            return self._grads[1]
        out = self.take(grads)
        self._grads = (key, out) if key == self._last else None
        self._last = key
        return out

    def take(self, stacked: Sequence[Tensor]) -> list[Tensor]:
        """This call's tensors of ``stacked`` (:func:`take` of :attr:`plan`; :func:`rows` without
        one)."""
        return rows(stacked, self.members) if self.plan is None else take(stacked, self.plan)


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


def pieces(stacked: Sequence[Sequence[Tensor]], members: Sequence[int]) -> list[Piece]:
    """The tensors of one fused call over ``members``: for each run of consecutive members and
    each stacked tensor (the first list of ``stacked``; the others — the state kept beside it —
    alike), the run's slices as one piece where each member's slice has a multiple of
    :data:`WHOLE` elements and the run's slice is contiguous in every list, else one piece per
    member.

    >>> p = [torch.zeros(4, 64), torch.zeros(4, 10)]
    >>> pieces([p], [0, 1, 3])
    [(0, (0, 1)), (1, (0,)), (1, (1,)), (0, (3,)), (1, (3,))]
    >>> [tuple(t.shape) for t in take(p, pieces([p], [0, 1, 3]))]
    [(128,), (10,), (10,), (64,), (10,)]
    """
    runs: list[list[int]] = []
    for k in members:
        if runs and k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    out: list[Piece] = []
    for run in runs:
        for j, t in enumerate(stacked[0]):
            whole = len(run) > 1 and t[0].numel() % WHOLE == 0 and all(
                lst[j][run[0]:run[-1] + 1].is_contiguous() for lst in stacked)
            out += [(j, tuple(run))] if whole else [(j, (k,)) for k in run]
    return out


def take(stacked: Sequence[Tensor], plan: Sequence[Piece]) -> list[Tensor]:
    """The tensors of ``plan`` (:func:`pieces`) from ``stacked``: views (a piece of several
    members needs their slice contiguous: :func:`pieces` checked the tensors it was given, a
    caller makes other ones contiguous first)."""
    out = []
    for j, ks in plan:
        t = stacked[j]
        out.append(t[ks[0]] if len(ks) == 1 else t[ks[0]:ks[-1] + 1].view(-1))
    return out
