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
  what is allowed, for the constructor's defaults and for every param group.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ..errors import ShiftsimError
from ._kernels import Scratch, acc_dtype, check_grad

GLOBAL = "global"


class ShiftsimOptimizer(torch.optim.Optimizer):
    """Base class: see the module docstring."""

    #: whether ``step`` must be given the loss value (MoMo): ``step(loss=...)`` or a closure
    needs_loss: bool = False
    #: the keys :meth:`diagnostics` returns, in order
    diagnostic_keys: tuple[str, ...] = ()
    #: hyperparameters that every param group must share (they drive model-wide quantities)
    shared_hparams: tuple[str, ...] = ()

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
