"""The fleet's optimizer adapters (temporary home)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ShiftsimError
from ..optim import OptimizerSpec, spec
from ..optim._kernels import (
    acc_dtype,
    bc,
    foreach_add_decay,
    foreach_addcdiv_,
    foreach_axpy_,
    foreach_ema_sq_,
    foreach_scale_,
    is_zero,
)

Hp = dict[str, "float | torch.Tensor"]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


class _Family:
    """One optimizer class run over stacked ``(K, ...)`` tensors.

    ``hp`` holds the numeric hyperparameters: a float when every member of the group shares
    it, else a ``(K,)`` tensor (per-member values); ``flags`` the non-numeric ones (booleans,
    modes), which the group's members share. ``step`` updates the parameters in place and
    returns the per-member diagnostics, one ``(K,)`` tensor per name in ``diag_names``.
    """

    diag_names: tuple[str, ...] = ()
    needs_loss = False
    #: constructor options that change nothing the fleet computes (implementation choices)
    ignored: tuple[str, ...] = ("foreach", "capturable", "fused", "differentiable")

    def __init__(self, params: list[torch.Tensor], hp: Hp, flags: dict[str, Any]) -> None:
        self.params, self.hp, self.flags = params, hp, flags
        self.t = 0
        self.K = params[0].shape[0]
        self.setup()

    def setup(self) -> None:
        """Create the optimizer state (subclasses)."""

    def zeros(self) -> list[torch.Tensor]:
        return [torch.zeros_like(p) for p in self.params]

    def acc(self, *shape: int, fill: float | torch.Tensor = 0.0) -> torch.Tensor:
        """A model-wide state tensor ``(*shape, K)`` in the accumulation dtype."""
        p = self.params[0]
        out = torch.zeros(*shape, self.K, device=p.device, dtype=acc_dtype(p.dtype))
        return out.add_(fill)

    @property
    def foreach(self) -> bool | None:
        return self.flags.get("foreach")

    def step(self, grads: list[torch.Tensor], loss: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError


class _SGD(_Family):
    """``torch.optim.SGD`` (momentum, dampening, Nesterov, coupled weight decay, maximize), the
    operations of torch's own kernel in the same order, with per-member hyperparameters."""

    def step(self, grads: list[torch.Tensor], loss: torch.Tensor) -> list[torch.Tensor]:
        hp, P = self.hp, self.params
        self.t += 1
        G = list(torch._foreach_neg(grads)) if self.flags["maximize"] else grads
        if not is_zero(hp["weight_decay"]):
            G = foreach_add_decay(P, G, hp["weight_decay"], 1)
        mom = hp["momentum"]
        if not is_zero(mom):
            if self.t == 1:
                self.bufs = [g.clone() for g in G]
            else:
                foreach_scale_(self.bufs, mom, 1)
                foreach_axpy_(self.bufs, G, 1 - hp["dampening"], 1)
            if self.flags["nesterov"]:
                G = [g.clone() for g in G]
                foreach_axpy_(G, self.bufs, mom, 1)
            else:
                G = self.bufs
        foreach_axpy_(P, G, -hp["lr"], 1)
        return []


class _Adam(_Family):
    """``torch.optim.Adam`` / ``AdamW`` (amsgrad, maximize, coupled or decoupled decay), the
    operations of torch's own kernel in the same order, with per-member hyperparameters."""

    def setup(self) -> None:
        self.m, self.v = self.zeros(), self.zeros()
        self.vmax = self.zeros() if self.flags["amsgrad"] else None

    def step(self, grads: list[torch.Tensor], loss: torch.Tensor) -> list[torch.Tensor]:
        hp, P = self.hp, self.params
        self.t += 1
        t = float(self.t)
        lr, b1, b2, eps, wd = (hp[k] for k in ("lr", "beta1", "beta2", "eps", "weight_decay"))
        G = list(torch._foreach_neg(grads)) if self.flags["maximize"] else grads
        if not is_zero(wd):
            if self.flags["decoupled"]:
                foreach_scale_(P, 1 - lr * wd, 1)
            else:
                G = foreach_add_decay(P, G, wd, 1)
        if isinstance(b1, torch.Tensor):
            torch._foreach_lerp_(self.m, G, [bc(1 - b1, m, 1) for m in self.m])
        else:
            torch._foreach_lerp_(self.m, G, 1 - b1)
        foreach_ema_sq_(self.v, G, b2, 1)
        step_size = lr / (1 - b1 ** t)
        bc2_sqrt = (1 - b2 ** t) ** 0.5
        src = self.v
        if self.vmax is not None:
            torch._foreach_maximum_(self.vmax, self.v)
            src = self.vmax
        den = list(torch._foreach_sqrt(src))
        if isinstance(bc2_sqrt, torch.Tensor):
            torch._foreach_div_(den, [bc(bc2_sqrt, d, 1) for d in den])
        else:
            torch._foreach_div_(den, bc2_sqrt)
        if isinstance(eps, torch.Tensor):
            torch._foreach_add_(den, [bc(eps, d, 1) for d in den])
        else:
            torch._foreach_add_(den, eps)
        foreach_addcdiv_(P, self.m, den, [-step_size] * len(P), 1)
        return []


class _TAM(_Family):
    diag_names = ("damping", "cosine")

    def setup(self) -> None:
        self.m = self.zeros()
        self.shat = self.acc() if self.flags["scope"] == "global" else self.acc(len(self.params))

    def _diag(self, d: torch.Tensor) -> list[torch.Tensor]:
        if self.flags["scope"] == "global":
            return [d, self.shat]
        return [d.mean(0), self.shat.mean(0)]

    def step(self, grads: list[torch.Tensor], loss: torch.Tensor) -> list[torch.Tensor]:
        from ..optim.tam import tam

        h = self.hp
        d = tam(self.params, grads, self.m, self.shat, lr=h["lr"], momentum=h["momentum"],
                gamma=h["gamma"], eps=h["eps"], weight_decay=h["weight_decay"],
                decoupled=self.flags["decoupled"], scope=self.flags["scope"], learner_dims=1,
                foreach=self.foreach)
        return self._diag(d)


class _AdaTAM(_TAM):
    decoupled = False

    def setup(self) -> None:
        super().setup()
        self.v = self.zeros()

    def step(self, grads: list[torch.Tensor], loss: torch.Tensor) -> list[torch.Tensor]:
        from ..optim.tam import adatam

        h = self.hp
        self.t += 1
        d = adatam(self.params, grads, self.m, self.v, self.shat, step=self.t, lr=h["lr"],
                   beta1=h["beta1"], beta2=h["beta2"], gamma=h["gamma"],
                   torque_eps=h["torque_eps"], eps=h["eps"], weight_decay=h["weight_decay"],
                   decoupled=self.decoupled, bias_correction=self.flags["bias_correction"],
                   scope=self.flags["scope"], learner_dims=1, foreach=self.foreach)
        return self._diag(d)


class _AdaTAMW(_AdaTAM):
    decoupled = True


class _AMSGD(_Family):
    diag_names = ("beta", "momentum")

    def setup(self) -> None:
        self.d = self.zeros()
        lr = self.hp["lr"]
        # a constant lr: eta_{t-1}/eta_t = 1, or 0 when eta = 0 (as the class computes it)
        self.ratio = (lr > 0).to(lr.dtype) if isinstance(lr, torch.Tensor) else \
            (1.0 if lr > 0 else 0.0)

    def step(self, grads: list[torch.Tensor], loss: torch.Tensor) -> list[torch.Tensor]:
        from ..optim.adamem import adamem_sgd

        h = self.hp
        self.t += 1
        beta = adamem_sgd(self.params, grads, self.d, step=self.t, lr=h["lr"], lam=h["lam"],
                          beta_max=h["beta_max"], weight_decay=h["weight_decay"],
                          lr_ratio=self.ratio, learner_dims=1, foreach=self.foreach)
        return [beta, (beta + h["lam"]) / (1 + h["lam"])]


class _AMAdamW(_Family):
    diag_names = ("beta",)

    def setup(self) -> None:
        self.d, self.v = self.zeros(), self.zeros()
        self.pi = self.acc(len(self.params), fill=1.0)

    def step(self, grads: list[torch.Tensor], loss: torch.Tensor) -> list[torch.Tensor]:
        from ..optim.adamem import adamem_adamw

        h = self.hp
        self.t += 1
        betas = adamem_adamw(self.params, grads, self.d, self.v, self.pi, step=self.t,
                             lr=h["lr"], beta1_max=h["beta1"], beta2=h["beta2"], lam=h["lam"],
                             eps=h["eps"], weight_decay=h["weight_decay"], learner_dims=1,
                             foreach=self.foreach)
        return [betas.mean(0)]


class _MoMo(_Family):
    diag_names = ("step_size", "fstar")
    needs_loss = True

    def setup(self) -> None:
        self.d = self.zeros()
        self.gam = self.acc(len(self.params))
        self.loss_avg = self.acc()
        self.fstar = self.acc(fill=self.hp["lb"])

    def step(self, grads: list[torch.Tensor], loss: torch.Tensor) -> list[torch.Tensor]:
        from ..optim.momo import momo

        h = self.hp
        self.t += 1
        tau = momo(self.params, grads, self.d, self.gam, self.loss_avg, self.fstar, loss,
                   step=self.t, lr=h["lr"], beta=h["beta"], lb=h["lb"],
                   weight_decay=h["weight_decay"], bias_correction=self.flags["bias_correction"],
                   use_fstar=self.flags["use_fstar"], learner_dims=1, foreach=self.foreach)
        return [tau, self.fstar]


class _MoMoAdam(_MoMo):
    def setup(self) -> None:
        super().setup()
        self.v = self.zeros()

    def step(self, grads: list[torch.Tensor], loss: torch.Tensor) -> list[torch.Tensor]:
        from ..optim.momo import momo_adam

        h = self.hp
        self.t += 1
        tau = momo_adam(self.params, grads, self.d, self.v, self.gam, self.loss_avg,
                        self.fstar, loss, step=self.t, lr=h["lr"], beta1=h["beta1"],
                        beta2=h["beta2"], eps=h["eps"], lb=h["lb"],
                        weight_decay=h["weight_decay"], divide=self.flags["divide"],
                        use_fstar=self.flags["use_fstar"], learner_dims=1, foreach=self.foreach)
        return [tau, self.fstar]


class _Grams(_Family):
    def setup(self) -> None:
        self.m, self.v = self.zeros(), self.zeros()
        self.diag_names = ("flip_fraction",) if self.flags["track_flips"] else ()

    def step(self, grads: list[torch.Tensor], loss: torch.Tensor) -> list[torch.Tensor]:
        from ..optim.grams import grams

        h = self.hp
        self.t += 1
        frac = grams(self.params, grads, self.m, self.v, step=self.t, lr=h["lr"],
                     beta1=h["beta1"], beta2=h["beta2"], eps=h["eps"],
                     weight_decay=h["weight_decay"], eps_mode=self.flags["eps_mode"],
                     learner_dims=1, foreach=self.foreach, track_flips=self.flags["track_flips"])
        return [] if frac is None else [frac]


class _Elementwise(_Family):
    """Any other optimizer of ``torch.optim`` whose update is elementwise (RMSprop, NAdam ...):
    torch's own optimizer over the stacked tensors, which is exact because stacking does not
    change elementwise math. Its members must share every hyperparameter."""

    def setup(self) -> None:
        self.views = [p.detach() for p in self.params]
        self.optimizer = self.flags["spec"].build(self.views)

    def step(self, grads: list[torch.Tensor], loss: torch.Tensor) -> list[torch.Tensor]:
        for v, g in zip(self.views, grads):
            v.grad = g
        self.optimizer.step()
        return []


#: torch.optim classes whose update is not elementwise, or that cannot run on stacked tensors
_NOT_ELEMENTWISE = ("LBFGS", "SparseAdam")


def _family_of(target: Any) -> type[_Family] | None:
    from ..optim import adamem, grams, momo, tam

    table: dict[Any, type[_Family]] = {
        torch.optim.SGD: _SGD, torch.optim.Adam: _Adam, torch.optim.AdamW: _Adam,
        tam.TAM: _TAM, tam.AdaTAM: _AdaTAM, tam.AdaTAMW: _AdaTAMW,
        adamem.AdaptiveMemorySGD: _AMSGD, adamem.AdaptiveMemoryAdamW: _AMAdamW,
        momo.MoMo: _MoMo, momo.MoMoAdam: _MoMoAdam, grams.Grams: _Grams,
    }
    if target in table:
        return table[target]
    if isinstance(target, type) and issubclass(target, torch.optim.Optimizer) and \
            target.__module__.startswith("torch.optim") and \
            target.__name__ not in _NOT_ELEMENTWISE:
        return _Elementwise
    return None


def _hparams(opt_spec: OptimizerSpec) -> dict[str, Any]:
    """Every constructor argument of the spec's optimizer: the class defaults, then the spec's
    values; ``betas`` split into ``beta1`` / ``beta2``."""
    import inspect

    out: dict[str, Any] = {}
    sig = inspect.signature(opt_spec.target)
    for i, p in enumerate(sig.parameters.values()):
        if i == 0 or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is p.empty:
            continue
        out[p.name] = p.default
    out.update(opt_spec.kwargs)
    if "betas" in out:
        out["beta1"], out["beta2"] = out.pop("betas")
    return out


@dataclass(frozen=True)
class _GroupKey:
    family: type
    flags: tuple[tuple[str, Any], ...]


def _group_key(opt_spec: OptimizerSpec) -> _GroupKey:
    """Members with equal keys share one optimizer group (numeric hyperparameters may differ)."""
    family = _family_of(opt_spec.target)
    if family is None:
        raise ShiftsimError(
            f"optimizer {opt_spec.name!r} cannot run in a fleet: the fleet runs shiftsim's "
            "optimizers and torch.optim's elementwise ones (SGD, Adam, AdamW, RMSprop ...) "
            "through kernels with per-member reductions; run it with shiftsim.run instead")
    # build it once on a dummy tensor: bad hyperparameters fail here as they would in run()
    opt_spec.build([torch.zeros(1, requires_grad=True)])
    if family is _Elementwise:
        return _GroupKey(family, (("spec", opt_spec),))
    hp = _hparams(opt_spec)
    flags = {k: v for k, v in hp.items() if not _is_number(v) and k not in family.ignored}
    if family is _Adam:
        flags["decoupled"] = opt_spec.target is torch.optim.AdamW or bool(
            flags.pop("decoupled_weight_decay", False))
    if "foreach" in hp:
        flags["foreach"] = hp["foreach"]
    return _GroupKey(family, tuple(sorted(flags.items(), key=lambda kv: kv[0])))



def supports(optimizer: OptimizerSpec | str) -> bool:
    """Whether ``optimizer`` can run in a fleet (shiftsim's optimizers and torch.optim's
    elementwise ones, with hyperparameters that build).

    >>> supports("tam"), supports("torch.optim:LBFGS")
    (True, False)
    """
    try:
        _group_key(optimizer if isinstance(optimizer, OptimizerSpec) else spec(optimizer))
    except Exception:
        return False
    return True


def _group_hp(specs: Sequence[OptimizerSpec], like: torch.Tensor) -> Hp:
    """The numeric hyperparameters of a group: floats when shared, else ``(K,)`` tensors."""
    rows = [{k: v for k, v in _hparams(s).items() if _is_number(v)} for s in specs]
    hp: Hp = {}
    for k in rows[0]:
        vals = [float(r[k]) for r in rows]
        if all(v == vals[0] for v in vals):
            hp[k] = rows[0][k] if isinstance(rows[0][k], (int, float)) else vals[0]
        else:
            hp[k] = torch.tensor(vals, dtype=like.dtype, device=like.device)
    return hp

