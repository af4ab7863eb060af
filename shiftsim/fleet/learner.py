"""The stacked learner: K members of one architecture, each with its optimizer, as one program.

:class:`StackedLearner` is the loop's K-member learner (:class:`shiftsim.loop.Members`) that
:func:`shiftsim.run_fleet` and, for a ReLU MLP, :func:`shiftsim.run` hand to
:func:`shiftsim.loop.run_members`. Members whose optimizer is the same class with the same
non-numeric settings form a group, stepped by that optimizer's stacked rule
(:mod:`shiftsim.optim.stacking`) over their slice of the stacked parameters — for a ReLU MLP,
whose parameters and gradients the stacked model keeps in one buffer, as one row per member
(the rows of the parameters' blocks one after another, ``flags["rows"]``) when the rule allows
it (:attr:`~shiftsim.optim._base.Stacked.flat`); numeric hyperparameters are
tensors (:func:`~shiftsim.optim.stacking.group_hyper`), so a member's numbers do not depend on
the other members' values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..learner import build_model, describe_learner
from ..models import ModelSpec
from ..optim import OptimizerSpec
from ..optim._base import Hyper, Stacked
from ..optim._kernels import rows
from ..optim.stacking import group_hyper, group_key, member_hyper
from .model import StackedModel


def group_order(keys: Sequence[Any]) -> list[int]:
    """The positions of members with group keys ``keys``
    (:func:`~shiftsim.optim.stacking.group_key`) sorted so that each group is consecutive:
    groups in order of first appearance, members in the given order within.

    >>> group_order(["sgdm", "adam", "sgdm", "tam", "adam"])
    [0, 2, 1, 4, 3]
    """
    first: dict[Any, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    return sorted(range(len(keys)), key=lambda i: (first[keys[i]], i))


@dataclass
class _Group:
    """The members [start, stop) of the fleet (sorted by group) that one optimizer's stacked
    rule steps, over their slice of the stacked parameters."""

    rule: Stacked
    hp: Hyper
    flags: dict[str, Any]
    params: list[torch.Tensor]
    start: int
    stop: int
    full: bool
    #: the group steps each member's parameters as one row (:attr:`Stacked.flat`), given as
    #: the row's segments (one ``(members, n)`` view per parameter)
    flat: bool = False
    diag_names: tuple[str, ...] = ()
    diag_buf: torch.Tensor | None = None
    #: ``diag_buf`` step by step (views made once: a step writes its row with one operation)
    diag_rows: tuple[torch.Tensor, ...] = ()
    #: with :attr:`flat`, the group's rows of the net's gradient blocks (views made once)
    flat_grads: list[torch.Tensor] | None = None
    state: Any = None

    def step(self, grads: list[torch.Tensor], loss: torch.Tensor) -> list[torch.Tensor]:
        return self.rule.update(self.state, self.params, grads, loss, self.hp, self.flags)


class StackedLearner:
    """``members`` — ``(optimizer spec, seed)`` pairs — of ``model`` as one stacked program.

    The members are kept sorted so that each optimizer group is a contiguous slice (groups in
    order of first appearance, members in the given order within); ``order[i]`` is the
    position in ``members`` of the ``i``-th member here. Building it checks every optimizer
    (an optimizer the fleet cannot step raises :class:`~shiftsim.errors.ShiftsimError`).
    ``compile``: compile the training step with ``torch.compile``.

    >>> import shiftsim as ss
    >>> lrn = StackedLearner(ss.models.mlp(hidden=(8,)),
    ...                      [(ss.optim.spec("sgdm"), 0), (ss.optim.spec("adam"), 1),
    ...                       (ss.optim.spec("sgdm"), 2)])
    >>> lrn.seeds, lrn.order
    ([0, 2, 1], [0, 2, 1])
    """

    stacked = True
    grad = False  # the loop runs without autograd (an autograd model enables it per step)
    engine = "stacked"

    def __init__(self, model: ModelSpec | nn.Module | Callable[..., nn.Module],
                 members: Sequence[tuple[OptimizerSpec, int]], compile: bool = False) -> None:
        keys = [group_key(o) for o, _ in members]
        self.order = group_order(keys)
        self.model_source = model
        self.specs = [members[i][0] for i in self.order]
        self.seeds = [members[i][1] for i in self.order]
        self._keys = [keys[i] for i in self.order]
        self.compile = compile
        self.flat_inputs = False
        self.net: StackedModel | None = None
        self.groups: list[_Group] = []

    def setup(self, data: Any, device: torch.device, steps: int) -> None:
        net = self.net = StackedModel(
            [build_model(self.model_source, data, s).to(device) for s in self.seeds],
            compile=self.compile, input_shape=data.input_shape)
        self.flat_inputs = net.flat_inputs
        params = list(net.params.values())
        self._dtype = params[0].dtype
        K, start = len(self.seeds), 0
        self.groups = []
        for i in range(1, K + 1):
            if i == K or self._keys[i] != self._keys[start]:
                key = self._keys[start]
                flags = dict(key.flags)
                if key.rule.exact_members:
                    flags["members"] = member_hyper(self.specs[start:i])
                flat = net.flat is not None and key.rule.flat(flags)
                # one member: its row is the whole buffer (one tensor, fewer operations)
                whole = flat and K == 1 and key.rule.segment_invariant
                views = [p.detach()[start:i] for p in params]
                if flat:  # each member's parameters one row, in segments (contiguous views)
                    assert net.flat is not None
                    views = [net.flat.detach().view(1, -1)] if whole else rows(views)
                    flags["rows"] = True
                g = _Group(key.rule, group_hyper(self.specs[start:i], params[0]), flags, views,
                           start, i, start == 0 and i == K, flat,
                           key.rule.diagnostics(flags))
                g.state = key.rule.init(views, g.hp, flags)
                if g.diag_names:
                    g.diag_buf = torch.zeros(steps, i - start, len(g.diag_names),
                                             device=device)
                    g.diag_rows = g.diag_buf.unbind(0)
                if flat:
                    assert net.flat_grad is not None
                    g.flat_grads = [net.flat_grad.view(1, -1)] if whole else \
                        rows([t[start:i] for t in net.grad_views])
                self.groups.append(g)
                start = i

    @property
    def loss_dtype(self) -> torch.dtype:
        return self._dtype

    def step(self, t: int, x: torch.Tensor, y: torch.Tensor,
             out: tuple[torch.Tensor, torch.Tensor]) -> None:
        assert self.net is not None
        _, loss, grads = self.net.step(x, y, out)
        for g in self.groups:
            if g.full:
                vals = g.step(g.flat_grads or grads, loss)
            elif g.flat_grads is not None:  # the net's flat gradient holds ``grads``
                vals = g.step(g.flat_grads, loss[g.start:g.stop])
            else:
                vals = g.step([x[g.start:g.stop] for x in grads], loss[g.start:g.stop])
            if g.diag_rows:
                torch.stack(vals, -1, out=g.diag_rows[t])

    def score(self, t: int, x: torch.Tensor, y: torch.Tensor,
              out: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Step ``t`` without training (a real-time stream's batch that arrives while the
        members are busy): predictions and losses only; diagnostics NaN."""
        assert self.net is not None
        self.net.score(x, y, out)
        for g in self.groups:
            if g.diag_buf is not None:
                g.diag_buf[t] = float("nan")

    def costs(self) -> list[float]:
        """Each member's relative cost per training step (real-time streams)."""
        return [s.effective_cost for s in self.specs]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        assert self.net is not None
        return self.net.predict(x)

    def diagnostics(self) -> list[dict[str, np.ndarray]]:
        out: list[dict[str, np.ndarray]] = []
        for g in self.groups:
            if g.diag_buf is None:
                out += [{} for _ in range(g.start, g.stop)]
                continue
            values = g.diag_buf.cpu().numpy()
            out += [{name: values[:, k, j] for j, name in enumerate(g.diag_names)}
                    for k in range(g.stop - g.start)]
        return out

    def describe(self, k: int) -> dict[str, Any]:
        return describe_learner(self.model_source, self.specs[k])

    def fleet_info(self) -> dict[str, Any]:
        """How the program ran: members, optimizer groups, whether it was compiled."""
        assert self.net is not None
        return {"members": len(self.seeds), "groups": len(self.groups),
                "compiled": self.net.compiled}
