"""The base class of shiftsim's optimizers: group checks, model-wide state, diagnostics.

Every optimizer in :mod:`shiftsim.optim` is a :class:`torch.optim.Optimizer` with

* per-parameter state in ``self.state[p]`` (as torch's optimizers), and model-wide scalars
  (smoothed cosines, loss averages, step counts ...) in one extra entry ``self.state["global"]``.
  ``state_dict()`` keeps non-parameter keys as they are, so both round-trip through
  ``state_dict()`` / ``load_state_dict()``: a run saved mid-way and resumed in a fresh optimizer
  continues bit for bit;
* :meth:`ShiftsimOptimizer.diagnostics`: a dict of 0-d tensors read from the state, on the
  parameters' device, without a host synchronisation;
* hyperparameter checks that raise :class:`shiftsim.errors.ShiftsimError` naming the value and
  what is allowed, for the constructor's defaults and for every param group;
* a cached **step plan** (:meth:`ShiftsimOptimizer._live_grads`, :class:`PlanBlock`): the lists
  of parameters and state tensors, their flat views and the reduction buffers a step needs,
  built once and reused while the same parameters have a gradient, the param groups are the
  same and the state was not replaced (``load_state_dict``). A step then only collects the
  gradients. The plan is not part of the state (it is neither saved nor copied).

* a **stacked rule** (:class:`Stacked`, the class attribute ``stacked``): how the fleet steps K
  members of the optimizer stacked along a leading dimension, from the module's own state
  initialisation and functional kernel (see :mod:`shiftsim.optim.stacking`).
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..errors import ShiftsimError
from . import _kernels
from ._compiled import Compiled
from ._kernels import (
    LerpStep,
    MomentSums,
    Scratch,
    acc_dtype,
    check_grad,
    split_paths,
)

GLOBAL = "global"
PLAN = "_step_plan"

#: a group's numeric hyperparameters: ``(K,)`` or 0-d tensors, or 0 where every member sets 0
#: (:func:`shiftsim.optim.stacking.group_hyper`)
Hyper = dict[str, "float | Tensor"]


def _no_diagnostics(flags: dict[str, Any]) -> tuple[str, ...]:
    return ()


def _never(flags: dict[str, Any]) -> bool:
    return False


def always(flags: dict[str, Any]) -> bool:
    """A :attr:`Stacked.flat` for rules whose update never depends on the tensor split."""
    return True


@dataclass(frozen=True)
class Stacked:
    """How the fleet steps K members of one optimizer class, their tensors stacked along a
    leading dimension (optax-style pieces written next to the optimizer's class).

    ``init(params, hp, flags)`` returns the members' state for ``params`` (each ``(K, ...)``);
    ``update(state, params, grads, loss, hp, flags)`` takes one step in place (``loss``: the
    members' losses ``(K,)``) and returns the per-member diagnostics, one ``(K,)`` tensor per
    name of ``diagnostics(flags)``. ``hp`` holds the numeric hyperparameters (tensors, even
    where the members share a value, so that a member computes the same in any fleet:
    ``(K,)`` where values differ, 0-d where shared; the number 0 where every member sets 0;
    ``betas`` split into ``beta1`` and ``beta2``),
    ``flags`` the non-numeric ones, which the members share. ``settings(cls, flags)``
    (optional) adds flags that the class itself implies (AdamW: decoupled decay).
    ``flat(flags)``: whether the update is the same however the parameters are split into
    tensors (elementwise operations and sums over the whole model): the fleet then hands the
    rule each member's parameters as one row, ``flags["rows"]`` set and the lists of
    parameters, gradients and state holding the row's segments (one ``(members, n)`` view per
    parameter block, :func:`~shiftsim.optim._kernels.rows`); a row kernel steps them with one
    multi-tensor operation each and sums over the whole row (fewer operations; sums in the
    same order as over the tensors concatenated). ``segment_invariant`` (with ``flat``): the
    update gives the same bits however a member's row is split into segments (a row kernel,
    elementwise updates), so a one-member fleet (``ss.run``) hands it the whole buffer as one
    row; False where sums over the pieces decide the rounding (MoMo-Adam's per-tensor sums),
    so that a member rounds alone as in a fleet. ``exact_members``: the rule wants
    each member's numeric hyperparameters as exact Python floats in ``flags["members"]`` (a
    list of dicts; torch's fused kernels take Python numbers, which ``hp``'s tensors would
    round to the parameters' dtype).
    """

    init: Callable[[list[Tensor], Hyper, dict[str, Any]], Any]
    update: Callable[[Any, list[Tensor], list[Tensor], Tensor, Hyper, dict[str, Any]],
                     list[Tensor]]
    diagnostics: Callable[[dict[str, Any]], tuple[str, ...]] = _no_diagnostics
    settings: Callable[[type, dict[str, Any]], dict[str, Any]] | None = None
    flat: Callable[[dict[str, Any]], bool] = _never
    exact_members: bool = False
    segment_invariant: bool = True


class ShiftsimOptimizer(torch.optim.Optimizer):
    """Base class: see the module docstring."""

    #: whether ``step`` must be given the loss value (MoMo): ``step(loss=...)`` or a closure
    needs_loss: bool = False
    #: the keys :meth:`diagnostics` returns, in order
    diagnostic_keys: tuple[str, ...] = ()
    #: hyperparameters that every param group must share (they drive model-wide quantities)
    shared_hparams: tuple[str, ...] = ()
    #: how the fleet steps K stacked members of this optimizer (None: it cannot)
    stacked: ClassVar[Stacked | None] = None

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ groups and checks

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._check_group(group)
        first = self.param_groups[0]
        for key in self.shared_hparams:
            if group[key] != first[key]:
                raise ShiftsimError(
                    f"{type(self).__name__}: {key} must be the same in every param group (it "
                    f"drives a model-wide quantity), got {first[key]!r} and {group[key]!r}"
                )

    def _check_group(self, group: dict[str, Any]) -> None:
        """Validate one param group's hyperparameters (subclasses override)."""

    # ------------------------------------------------------------------ state

    @property
    def scratch(self) -> Scratch:
        """Work buffers reused across steps (not part of the state)."""
        s = self.__dict__.get("_scratch")
        if s is None:
            s = self.__dict__["_scratch"] = Scratch()
        return s

    def _active(self) -> list[tuple[dict[str, Any], list[Tensor], list[Tensor]]]:
        """``(group, params, grads)`` for each group, params without a gradient left out."""
        out = []
        who = type(self).__name__
        for group in self.param_groups:
            ps, gs = [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                gs.append(check_grad(p, who))
                ps.append(p)
            if ps:
                out.append((group, ps, gs))
        return out

    def _live_grads(self) -> tuple[tuple, list[list[Tensor]]]:
        """Per param group, the gradients of the parameters that have one, and a key naming
        those parameters: it changes when a parameter gains or loses its gradient or the param
        groups change, which is when a cached plan must be rebuilt. Sparse gradients raise."""
        key, grads = [], []
        for group in self.param_groups:
            ps = group["params"]
            gs = [p.grad for p in ps]
            if any(g is None for g in gs):
                ps = [p for p, g in zip(ps, gs) if g is not None]
                gs = [g for g in gs if g is not None]
            for p, g in zip(ps, gs):
                if g.is_sparse:
                    check_grad(p, type(self).__name__)
            key.append((id(group), tuple(map(id, ps))))
            grads.append(gs)
        return tuple(key), grads

    def _cached_plan(self, key: tuple) -> Any:
        """The plan cached for ``key``, or None when it must be (re)built: another key, or the
        state replaced since it was built."""
        plan = self.__dict__.get(PLAN)
        if plan is not None and plan.key == key and plan.state is self.state and \
                plan.glob is self.state.get(GLOBAL):
            return plan
        return None

    def _keep_plan(self, plan: Any) -> Any:
        self.__dict__[PLAN] = plan
        return plan

    def _compiled_kernel(self, fn: Callable[..., Any]) -> Any:
        """This optimizer's :class:`~shiftsim.optim._compiled.Compiled` for kernel ``fn``,
        made on first use with the optimizer's ``compile`` setting (kept outside the state so
        that ``state_dict`` and deep copies never carry it)."""
        comp = self.__dict__.get("_compiled")
        if comp is None:
            comp = self.__dict__["_compiled"] = Compiled(
                fn, type(self).__name__, self.defaults.get("compile", "auto"))
        return comp

    def _build_plan(self, key: tuple) -> Plan:
        """The optimizer's step plan for the parameters that have a gradient now (those with
        a planned step override it)."""
        raise NotImplementedError

    def _plan_for_step(self, scalars: tuple[str, ...]) -> tuple[Plan | None, list[list[Tensor]]]:
        """The plan for this step (cached, or built by the optimizer's ``_build_plan`` and
        kept) and the gradients of :meth:`_live_grads`. The plan is None when the general
        path must take the step: a hyperparameter named in ``scalars`` is a tensor in some
        group, or the plan is not ``ok`` (float16 or non-contiguous parameters)."""
        if any(isinstance(g[k], Tensor) for g in self.param_groups for k in scalars):
            return None, []
        key, grads = self._live_grads()
        plan = self._cached_plan(key) or self._keep_plan(self._build_plan(key))
        return (plan if plan.ok else None), grads

    def _plan_blocks(self, key: tuple, buf: str,
                     init: Callable[[list[Tensor]], list[Tensor]]) -> Plan:
        """A plan with one :class:`PlanBlock` per group with gradients, holding the state
        buffer ``buf`` of each such parameter (created, when missing, by ``init(params)``: the
        optimizer module's state initialisation; ``extra["fresh"]`` flags the new ones). Not
        ``ok`` for parameters or buffers :func:`plain_tensors` rejects."""
        live = [[p for p in g["params"] if p.grad is not None] for g in self.param_groups]
        flat = [p for ps in live for p in ps]
        if not flat:
            return Plan(key, self.state, self.state.get(GLOBAL), [])
        if not plain_tensors(flat) or not plain_tensors(
                self.state[p][buf] for p in flat if buf in self.state.get(p, ())):
            return Plan(key, self.state, self.state.get(GLOBAL), [], ok=False)
        glob = self._global()
        blocks = []
        for j, (group, ps) in enumerate(zip(self.param_groups, live)):
            if not ps:
                continue
            fresh = [buf not in self.state[p] for p in ps]
            new = [p for p, f in zip(ps, fresh) if f]
            if new:
                for p, t in zip(new, init(new)):
                    self.state[p][buf] = t
            bufs = [self.state[p][buf] for p in ps]
            place = {id(q): k for k, q in enumerate(group["params"])}
            b = PlanBlock(j, group, ps, tuple(place[id(p)] for p in ps), {buf: bufs})
            b.extra["fresh"] = fresh
            blocks.append(b)
        return Plan(key, self.state, glob, blocks)

    def _fill_state(self, params: list[Tensor], init: Callable[[list[Tensor]], dict[str, Any]],
                    names: tuple[str, ...]) -> list[Tensor]:
        """Give each parameter of ``params`` without state (no ``names[0]`` entry) its initial
        state: the entries ``names`` of ``init([p])``, the optimizer module's state
        initialisation (a per-tensor entry is a list, or a tensor with one row per tensor).
        Returns the parameters that got it."""
        new = []
        for p in params:
            st = self.state[p]
            if names[0] in st:
                continue
            made = init([p])
            for name in names:
                v = made[name]
                st[name] = v[0] if isinstance(v, (list, Tensor)) else v
            new.append(p)
        return new

    def _state_vector(self, sts: list[dict[str, Any]], name: str,
                      dtype: torch.dtype | None = None) -> Tensor:
        """The per-tensor state entries ``name`` of the states ``sts`` (one 0-d tensor each) as
        one vector ``(n,)`` (in ``dtype``, when given) whose elements the entries are views of,
        kept from step to step: a compiled step reads and updates them in place instead of
        stacking them and unbinding the result into the state every step. Rebuilt (the
        entries stacked, then replaced by views of the new vector) when an entry is not the
        kept view: the state loaded or replaced, an entry set from outside, a step of the eager
        kernels. Not part of the state (neither saved nor copied; a saved state dict holds the
        views).

        >>> from shiftsim.optim import AdaptiveMemoryAdamW
        >>> p = torch.nn.Parameter(torch.ones(2))
        >>> opt = AdaptiveMemoryAdamW([p])
        >>> sts = [{"pi": torch.tensor(0.5)}, {"pi": torch.tensor(0.25)}]
        >>> vec = opt._state_vector(sts, "pi", torch.float32)
        >>> vec.mul_(2.0).tolist(), sts[1]["pi"].item()
        ([1.0, 0.5], 0.5)
        >>> opt._state_vector(sts, "pi", torch.float32) is vec
        True
        >>> sts[0]["pi"] = torch.tensor(3.0)  # set from outside: a new vector
        >>> opt._state_vector(sts, "pi", torch.float32).tolist()
        [3.0, 0.5]
        """
        vectors = self.__dict__.setdefault("_state_vectors", {})
        entries = [st[name] for st in sts]
        kept = vectors.get(name)
        if kept is not None and len(kept[1]) == len(entries) \
                and all(map(operator.is_, entries, kept[1])) \
                and (dtype is None or kept[0].dtype == dtype):
            return kept[0]
        vec = torch.stack(entries)
        if dtype is not None:
            vec = vec.to(dtype)
        views = vec.unbind(0)
        for st, view in zip(sts, views):
            st[name] = view
        vectors[name] = (vec, views)
        return vec

    def _reference(self) -> Tensor:
        """A parameter that fixes the device of model-wide state."""
        for group in self.param_groups:
            for p in group["params"]:
                return p
        raise ShiftsimError(f"{type(self).__name__} has no parameters")  # pragma: no cover

    def _acc_dtype(self) -> torch.dtype:
        dtypes = {p.dtype for g in self.param_groups for p in g["params"]}
        return torch.float64 if torch.float64 in dtypes else acc_dtype(next(iter(dtypes)))

    def _global(self) -> dict[str, Any]:
        """The model-wide state entry, created (zeros) on first use."""
        st = self.state.get(GLOBAL)
        if st is None:
            p = self._reference()
            st = self._init_global(p.device, self._acc_dtype())
            self.state[GLOBAL] = st
        return st

    def _init_global(self, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        """Initial model-wide state (subclasses extend)."""
        return {k: torch.zeros((), device=device, dtype=dtype) for k in self.diagnostic_keys}

    def _kept_norm(self, glob: dict[str, Any], j: int, members: tuple[int, ...]
                   ) -> tuple[Tensor, bool]:
        """Param group ``j``'s kept squared momentum norm (``glob["momentum_sqnorm"][j]``) and
        whether it is valid for this step: the value kept from the last step is valid when the
        same tensors (``members``: positions in the group) take part; else the kernel
        recomputes it. Either way it is then kept for ``members``."""
        norms = glob.setdefault("momentum_sqnorm", [])
        held = glob.setdefault("sqnorm_members", [])
        while len(norms) <= j:
            norms.append(torch.zeros_like(glob[self.diagnostic_keys[0]]))
            held.append(None)
        valid = held[j] == members
        held[j] = members
        return norms[j], valid

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by :meth:`state_dict` (torch's rules, two differences).

        The loaded tensors are copies: torch's loader keeps the saved tensors themselves when
        dtype and device match, so two optimizers loaded from one dict would share (and both
        mutate) their buffers. Scalar state kept in the accumulation dtype (cosines, products
        of betas ...) keeps its saved dtype instead of being cast to the parameter's.
        """
        saved = state_dict["state"]
        super().load_state_dict(state_dict)
        groups = [p for g in self.param_groups for p in g["params"]]
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        for i, p in zip(ids, groups):
            src, st = saved.get(i), self.state.get(p)
            if src is None or st is None:
                continue
            for k, v in src.items():
                if isinstance(v, Tensor):
                    dtype = p.dtype if v.shape == p.shape and v.is_floating_point() else v.dtype
                    st[k] = v.detach().to(device=p.device, dtype=dtype, copy=True)
        st = self.state.get(GLOBAL)
        if st is not None:
            device = self._reference().device
            # torch copies non-parameter state by reference: copy it so two optimizers never
            # share (and mutate) the same model-wide tensors
            self.state[GLOBAL] = {k: _copy_to(v, device) for k, v in st.items()}

    # ------------------------------------------------------------------ diagnostics

    def diagnostics(self) -> dict[str, Tensor]:
        """Per-step diagnostics as 0-d tensors on the parameters' device (no host sync).

        The tensors are the optimizer's live state: copy them (``.clone()``) to keep a value
        across steps. Before the first step every value is 0.
        """
        st = self.state.get(GLOBAL)
        if st is None:
            p = self._reference()
            z = torch.zeros((), device=p.device, dtype=self._acc_dtype())
            return {k: z.clone() for k in self.diagnostic_keys}
        return {k: st[k] for k in self.diagnostic_keys}


def _copy_to(v: Any, device: torch.device) -> Any:
    """A deep copy of a state value, its tensors moved to ``device``."""
    if isinstance(v, Tensor):
        return v.detach().to(device=device, copy=True)
    if isinstance(v, (list, tuple)):
        return type(v)(_copy_to(x, device) for x in v)
    return copy.deepcopy(v)


def eval_closure(closure: Callable[[], Any] | None) -> Any:
    """Run a closure with gradients enabled (``step`` itself runs under ``no_grad``)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class Plan:
    """A cached step plan: ``key`` (see :meth:`ShiftsimOptimizer._live_grads`), the state dict
    and model-wide entry it was built for, one :class:`PlanBlock` per param group with
    parameters that have a gradient, ``ok`` (False: the optimizer's general path must take
    this step, e.g. for float16 parameters) and ``extra`` (what else the optimizer keeps)."""

    __slots__ = ("key", "state", "glob", "blocks", "ok", "extra")

    def __init__(self, key: tuple, state: Any, glob: Any, blocks: list[PlanBlock],
                 ok: bool = True) -> None:
        self.key, self.state, self.glob, self.blocks, self.ok = key, state, glob, blocks, ok
        self.extra: dict[Any, Any] = {}


class PlanBlock:
    """One param group's part of a :class:`Plan`: ``j`` (its position), ``group``, the
    ``params`` with a gradient and their positions in the group (``members``), the indices of
    the small tensors (concatenated for reductions, fewer than
    :data:`~shiftsim.optim._kernels.CAT_BELOW` elements) and of the large ones, the state
    buffers (``bufs``: name -> list of tensors) and ``extra`` (what else the optimizer keeps:
    its cached :class:`~shiftsim.optim._kernels.MomentSums`, lerp steps ...)."""

    __slots__ = ("j", "group", "params", "members", "small", "large", "bufs", "_splits",
                 "extra")

    def __init__(self, j: int, group: dict[str, Any], params: list[Tensor],
                 members: tuple[int, ...], bufs: dict[str, list[Tensor]]) -> None:
        self.j, self.group, self.params, self.members = j, group, params, members
        below = _kernels.CAT_BELOW
        self.small = [i for i, p in enumerate(params) if p.numel() < below]
        self.large = [i for i, p in enumerate(params) if p.numel() >= below]
        self.bufs = bufs
        self._splits: dict[bool | None, tuple[list[int], list[int]]] = {}
        self.extra: dict[Any, Any] = {}

    def split(self, foreach: bool | None) -> tuple[list[int], list[int]]:
        """:func:`~shiftsim.optim._kernels.split_paths` of the params (cached per setting)."""
        s = self._splits.get(foreach)
        if s is None:
            s = self._splits[foreach] = split_paths(self.params, foreach, 0)
        return s

    def moments(self, buf: str) -> MomentSums:
        """The :class:`~shiftsim.optim._kernels.MomentSums` of buffer ``buf`` (cached)."""
        key = ("moments", buf)
        s = self.extra.get(key)
        if s is None:
            s = self.extra[key] = MomentSums(self.bufs[buf], self.small, self.large)
        return s

    def lerp_step(self, foreach: bool | None, buf: str) -> LerpStep:
        """The :class:`~shiftsim.optim._kernels.LerpStep` of the params and buffer ``buf``
        (cached per ``foreach`` setting)."""
        key = (foreach, buf)
        s = self.extra.get(key)
        if s is None:
            s = self.extra[key] = LerpStep(self.params, self.bufs[buf], *self.split(foreach), 0)
        return s


def plain_tensors(params: Iterable[Tensor]) -> bool:
    """Whether a plan can hold these parameters: contiguous, real float32 or float64 (the
    dtypes whose reductions need no cast)."""
    return all(p.dtype in (torch.float32, torch.float64) and p.is_contiguous() for p in params)
