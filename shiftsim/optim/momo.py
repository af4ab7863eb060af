r"""MoMo and MoMo-Adam: model-based momentum with a Polyak-type step size (Schaipp, Ohana,
Eickenberg, Defazio, Gower; ICML 2024, arXiv:2305.07583).

MoMo averages past linearisations of the loss with momentum weights, truncates the resulting
model at a lower bound :math:`f_*` of the loss and takes a proximal step with a capped step size.
It needs the loss value: call ``step(loss=loss)`` after ``backward()``, or ``step(closure)``.

.. math::

    \bar f_k &= \beta\bar f_{k-1} + (1-\beta) f_k, \quad d_k = \beta d_{k-1} + (1-\beta) g_k,
    \quad \gamma_k = \beta\gamma_{k-1} + (1-\beta)\langle x_k, g_k\rangle\\
    \tau_k &= \min\Bigl(\frac{\alpha}{\rho_k},\;
        \frac{\bigl(c\,(\bar f_k - \rho_k f_*) + \langle x_k, d_k\rangle - c\,\gamma_k\bigr)_+}
             {\lVert d_k\rVert^2}\Bigr),\qquad c = 1 + \alpha\lambda\\
    x_{k+1} &= (x_k - \tau_k d_k) / c

MoMo-Adam replaces :math:`\lVert d\rVert^2` by :math:`\lVert d\rVert^2_{D^{-1}}` and the step by
:math:`\tau D^{-1} d` with Adam's :math:`D = \sqrt{v/(1-\beta_2^{s})} + \epsilon`.

Choices, all [code] = momo-opt 0.1.0 unless marked:

* sums (:math:`\langle x, d\rangle`, :math:`\gamma = \sum_i\gamma_i`, the norm) are
  **model-wide**: over every parameter with a gradient, across param groups; each group uses its
  own :math:`\alpha` and :math:`\lambda` in :math:`\tau` and :math:`c` (as the reference).
* [ours] parameters without a gradient are skipped (the reference crashes); a tensor seen for
  the first time after step 1 starts like one seen at step 1 (MoMo without bias correction:
  :math:`d = g`, :math:`\gamma_i = \langle x, g\rangle`; otherwise zeros).
* [ours] :math:`\tau = 0` when :math:`\lVert d\rVert = 0` (the reference divides 0 by 0).
* [ours] every model-wide scalar (:math:`\bar f`, :math:`f_*`, :math:`k`, :math:`\tau`) is in
  ``state["global"]``, so checkpoints keep it (the reference loses them); the loss may be a
  tensor or a Python float.
* [ours, speed] MoMo carries inner products instead of recomputing them. With weight decay
  (:math:`c \ne 1`) it carries :math:`q_i = \langle x_i, d_i\rangle` per tensor (state
  ``x_dot_d``): :math:`\langle x_k, d_k\rangle = \beta q_i + (1-\beta)\langle x_k, g_k\rangle`
  (it reads them for :math:`\langle x_k, g_k\rangle`, which :math:`\gamma` needs), then
  :math:`q_i \leftarrow (\langle x_k, d_k\rangle - \tau_k\lVert d_k\rVert^2)/c`. Without weight
  decay (:math:`c = 1`, the default) the :math:`\langle x_k, g_k\rangle` terms cancel: only
  the offsets :math:`v_i = \langle x_i, d_i\rangle - \gamma_i` enter :math:`\tau`, and they
  follow :math:`v_i \leftarrow \beta v_i - \tau_k\lVert d_k\rVert^2` (exact: :math:`x_{k+1} =
  x_k - \tau_k d_k`). MoMo then carries only :math:`v_i` (in ``x_dot_d``; ``grad_dot_w`` keeps
  the :math:`\gamma_i` of the last exact step): no pass reads the parameters before the
  update (measured on 2026-12-03 on a 5M-parameter MLP, eager steps side by side: 1.56x ->
  1.20x torch's SGD-momentum step, not yet its fused kernel, the baseline since; the machine
  was not recorded; docs/performance.md has the current steps).
  Switching to an exact step (weight decay set mid-run) restores :math:`q_i` by one pass per
  tensor and :math:`\gamma_i = q_i - v_i`.
* [ours] parameters changed outside the optimizer (in place under ``no_grad``, ``copy_``,
  ``p.data = ...``; detected by their version counter and data pointer, so in-place writes
  through ``p.data`` are not seen): the reference's model moves with them, by
  :math:`\langle\Delta x, d\rangle`. With weight decay, or with
  ``exact_outside_changes=True``, MoMo does the same: it recomputes :math:`q_i` (one pass) and
  keeps :math:`\gamma_i` (history); without weight decay that mode reads the parameters once
  per step, after the update while each tensor is in cache, for
  :math:`q_i = \langle x_{k+1}, d_k\rangle`, and :math:`\gamma_i = q_i + \tau_k\lVert
  d_k\rVert^2 - \beta(q_{i,old} - \gamma_{i,old})`. By default (offsets only) the model keeps
  its offset instead, and MoMo warns that it happened. MoMo-Adam computes every sum.
* ``use_fstar=True``: the online lower-bound estimate of the reference (reset before
  :math:`\tau`, estimate after it, floored at ``lb``). [ours] With several param groups the
  reset uses the first group's :math:`\alpha, \lambda`, every group's :math:`\tau` uses the
  reset :math:`f_*`, and the estimate uses the first group's :math:`\tau`: once per step (the
  reference resets and re-estimates once per group, in turn, so later groups see an
  :math:`f_*` moved by earlier ones). With one group both are the same.

The module holds the MoMo family whole, in the order torch.optim and optax split an optimizer:
the multi-tensor kernels (:func:`momo`, :func:`momo_adam`, over any number of stacked learners),
the state initialisation (:func:`momo_init`, :func:`momo_adam_init`), the fleet's rule (each
class's ``stacked``) and the ``torch.optim`` classes over them. It is long because it is one
algorithm family kept in one place; the shared machinery is in :mod:`~shiftsim.optim._kernels`
and :mod:`~shiftsim.optim._base`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import ShiftsimError, SpecTypeError
from . import _compiled, _native
from ._base import Hyper, Plan, ShiftsimOptimizer, Stacked, always, eval_closure
from ._kernels import (
    CAT_BELOW,
    Block,
    Scalar,
    Sums,
    acc_dtype,
    bc,
    check_betas,
    check_bool,
    check_foreach,
    check_learner_dims,
    check_number,
    decay_factor,
    default_scratch,
    dot,
    ema_sq_,
    exact_values,
    flat,
    foreach_axpy_,
    foreach_ema_sq_,
    foreach_scale_,
    foreach_sqrt_,
    host,
    is_zero,
    one_minus,
    one_plus_product,
    per_learner,
    pick,
    row_dots,
    scalar_state,
    scale_,
    split_paths,
    sqrt,
)
from ._kernels import Scratch as _Scratch

__all__ = ["MoMo", "MoMoAdam", "momo", "momo_adam", "momo_adam_init", "momo_init"]


def _maximum(x: Tensor, lb: Scalar) -> Tensor:
    return torch.maximum(x, lb.to(x.dtype)) if isinstance(lb, Tensor) else x.clamp_min(lb)


def _step_sizes(hps: Sequence[dict[str, Any]], *, loss_avg: Tensor, fstar: Tensor,
                dot_xd: Tensor, gamma: Tensor, norm: Tensor, rho: Scalar, lb: Scalar,
                use_fstar: bool) -> list[Tensor]:
    """The step size of each param group, from its hyperparameters ``hps`` (``lr``,
    ``weight_decay``); updates ``fstar`` in place when ``use_fstar``."""
    if use_fstar:  # the reset, with the first group's alpha and lambda
        c = host(one_plus_product, hps[0]["lr"], hps[0]["weight_decay"])
        cap = c * loss_avg + dot_xd - c * gamma
        reset = _maximum(cap / (2 * c * rho), lb)
        fstar.copy_(torch.where(cap < c * rho * fstar, reset, fstar))
    taus = []
    pos = norm > 0
    safe = torch.where(pos, norm, 1.0)
    gap = loss_avg - (fstar if _one(rho) else rho * fstar)
    for hp in hps:
        lr, wd = hp["lr"], hp["weight_decay"]
        c = host(one_plus_product, lr, wd)
        # (the products with c = 1 are skipped: exact)
        num = gap + dot_xd - gamma if _one(c) else c * gap + dot_xd - c * gamma
        ratio = torch.where(pos, num.clamp_min(0) / safe, 0.0)
        cap_lr = _cap(host(_ratio, lr, rho, keep=False), ratio.dtype)
        tau = torch.minimum(ratio, cap_lr) if isinstance(cap_lr, Tensor) \
            else ratio.clamp_max(cap_lr)
        taus.append(tau)
    if use_fstar:  # the estimate, with the first group's step size
        h = loss_avg + dot_xd - gamma
        fstar.copy_(_maximum((h - 0.5 * taus[0] * norm) / rho, lb))
    return taus


def _cap(cap: Scalar, dtype: torch.dtype) -> Scalar:
    """The step size's cap as :func:`_step_sizes` compares with it: a tensor in the ratio's
    ``dtype``."""
    return cap.to(dtype) if isinstance(cap, Tensor) else cap


def _inverse_decay(lr: Scalar, wd: Scalar) -> Scalar:
    """``1 / (1 + lr wd)``: the divided weight decay's factor on the parameters."""
    return 1 / (1 + lr * wd)


def _bias_correction(beta: Scalar, step: int) -> Scalar:
    """``1 - beta^step``."""
    return 1 - beta ** step


def _ratio(a: Scalar, b: Scalar) -> Scalar:
    return a / b


def _one(x: Scalar) -> bool:
    """Whether ``x`` is the number 1, or a fleet's hyperparameter tensor whose members are all
    exactly 1 (a product with it can be skipped: the same numbers)."""
    if isinstance(x, Tensor):
        return exact_values(x) == 1
    return x == 1


def _loss_tensor(loss: Tensor | float, like: Tensor, ld: int) -> Tensor | float:
    if isinstance(loss, Tensor):
        f = loss.detach().to(device=like.device, dtype=like.dtype)
        return f.reshape(()) if ld == 0 else f.reshape(-1)
    return float(loss)


def _fingerprint(ps: Sequence[Tensor]) -> tuple:
    """What changes when a tensor is modified in place (or its storage replaced)."""
    return tuple((p._version, p.data_ptr()) for p in ps)


class _Paths:
    """One block's tensor lists for MoMo's kernel: which tensors take multi-tensor ops and
    which are updated one by one, which are concatenated for the sums (small) and which are
    reduced one by one (large), and preallocated rows for the sums. Built each step by the
    functional kernel, kept by :class:`MoMo`'s plan."""

    __slots__ = ("P", "D", "fe", "loop", "small", "large", "sizes", "Pf", "Df", "rows")

    def __init__(self, P: list[Tensor], D: list[Tensor], foreach: bool | None, ld: int) -> None:
        self.P, self.D = P, D
        self.fe, self.loop = split_paths(P, foreach, ld)
        n = len(P)
        self.small = [i for i in range(n) if per_learner(P[i], ld) < CAT_BELOW]
        self.large = [i for i in range(n) if per_learner(P[i], ld) >= CAT_BELOW]
        self.sizes = [per_learner(P[i], ld) for i in self.small]
        self.Pf, self.Df = pick(P, self.fe), pick(D, self.fe)
        self.rows: dict[bool, Sums] = {}

    def sums(self, with_xd: bool, ld: int) -> Sums:
        """Rows for |d|^2 (and <x, d>): the concatenated small tensors first, then the large
        tensors in order."""
        r = self.rows.get(with_xd)
        if r is None:
            n = (1 if self.small else 0) + len(self.large)
            p = self.P[0]
            r = self.rows[with_xd] = Sums(p, n, 2 if with_xd else 1, tuple(p.shape[:ld]))
        return r


def _momo_sums(t: _Paths, G: list[Tensor], w: Scalar, ld: int, *, xg: bool, xd: bool,
               per_tensor: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Lerp ``d`` toward the gradients (in place) and return ``(|d|^2, <x, g>, <x, d>)`` after
    the lerp: per tensor, stacked ``(n[, K])``, when ``per_tensor`` (``<x, g>`` always is),
    else ``|d|^2`` and ``<x, d>`` summed over the block (the small tensors concatenated for
    it); None for a sum not asked for (``xg``, ``xd``). A large tensor is reduced right after
    its lerp (still in cache)."""
    P, D = t.P, t.D
    if t.fe:
        Gf = pick(G, t.fe)
        if isinstance(w, Tensor):
            torch._foreach_lerp_(t.Df, Gf, [bc(w, x, ld) for x in t.Df])
        else:
            torch._foreach_lerp_(t.Df, Gf, w)
    n = len(P)
    rows: list[list[Tensor | None]] = [[None, None, None] for _ in range(n)]
    each = set(range(n)) if per_tensor else set(t.large)

    def reduce(i: int) -> None:
        r = rows[i]
        r[0] = dot(D[i], D[i], ld)  # first: d was just written
        if xg:
            r[1] = dot(P[i], G[i], ld)
        if xd:
            r[2] = dot(P[i], D[i], ld)

    for i in t.loop:
        D[i].lerp_(G[i], bc(w, D[i], ld))
        if i in each:  # while the tensor is in cache
            reduce(i)
    for i in range(n):
        if i in each and rows[i][0] is None:
            reduce(i)
    xgs = torch.stack([dot(P[i], G[i], ld) if r[1] is None else r[1]
                       for i, r in enumerate(rows)]) if xg else None
    if per_tensor:
        return (torch.stack([r[0] for r in rows]),  # type: ignore[misc]
                xgs, torch.stack([r[2] for r in rows]) if xd else None)  # type: ignore[misc]
    rs = t.sums(xd, ld)
    slots = rs.slots
    k = 1 if t.small else 0
    for j, i in enumerate(t.large):
        slots[k + j][0].copy_(rows[i][0])  # type: ignore[arg-type]
        if xd:
            slots[k + j][1].copy_(rows[i][2])  # type: ignore[arg-type]
    small = t.small
    if small:  # |d|^2 and <x, d> over the concatenation
        Dc = D[small[0]] if len(small) == 1 else torch.cat([flat(D[i], ld) for i in small], ld)
        dot(Dc, Dc, ld, out=slots[0][0])
        if xd:
            X = P[small[0]] if len(small) == 1 else torch.cat([flat(P[i], ld) for i in small], ld)
            dot(X, Dc, ld, out=slots[0][1])
    r = rs.total()
    return r[0], xgs, (r[1] if xd else None)


def _momo_blocks(blocks: Sequence[Block], gam: Tensor, *, loss_avg: Tensor, fstar: Tensor,
                 loss: Tensor | float, step: int, fresh: Sequence[bool] | None, beta: Scalar,
                 lb: Scalar, bias_correction: bool, use_fstar: bool, ld: int,
                 foreach: bool | None, kept: Tensor | None = None,
                 stale: Sequence[int] = (), exact: bool = True) -> list[Tensor]:
    """MoMo over several param groups. ``gam``: per-tensor :math:`\\gamma_i`, shape (n[, K]),
    updated in place; ``fresh[i]``: tensor i has no history (initialise as at step 1).

    ``kept`` (optional, shaped like ``gam``): per tensor :math:`\\langle x_i, d_i\\rangle` for
    the current parameters and moments, carried from step to step and updated in place;
    ``stale``: the tensors whose parameters changed outside the optimizer since (recomputed
    here, one pass each). With it, no step reads the parameters to form
    :math:`\\langle x, d\\rangle`, and without weight decay none reads them for
    :math:`\\langle x, g\\rangle` either (module notes): after the update
    :math:`\\langle x_{k+1}, d_k\\rangle` is reduced while each tensor is still in cache, and
    :math:`\\gamma_i` follows from it. Without ``kept`` every sum is computed.

    ``exact=False``: without weight decay, ``kept`` holds only the offsets
    :math:`v_i = \\langle x_i, d_i\\rangle - \\gamma_i`, carried by :math:`v_i \\leftarrow
    \\beta v_i - \\tau\\lVert d_i\\rVert^2` (``gam`` is left as it is): no pass reads the
    parameters at all, and ``stale`` is ignored. (With weight decay the step is exact whatever
    ``exact`` says; :meth:`MoMo._represent` converts the state between the two forms.)
    ``b.hp["paths"]`` (optional): the block's :class:`_Paths` (built here when missing)."""
    f = _loss_tensor(loss, loss_avg, ld)
    if step == 1 and not bias_correction:
        loss_avg.copy_(f if isinstance(f, Tensor) else torch.full_like(loss_avg, f))
    w = host(one_minus, beta)
    loss_avg.copy_(loss_avg * beta + f * w)
    paths = [b.hp.get("paths") or _Paths(b.params, b.bufs["d"], foreach, ld) for b in blocks]
    # without weight decay (c = 1) only <x, d> - gamma enters the step: no <x, g>
    fast = kept is not None and all(is_zero(b.hp["weight_decay"]) for b in blocks)
    only_v = fast and not exact  # carry only v = <x, d> - gamma per tensor
    if kept is not None and not only_v and stale:  # changed outside: <x, d>, before the lerp
        flat_p = [p for t in paths for p in t.P]
        flat_d = [d for t in paths for d in t.D]
        for i in stale:  # (gamma, history, stays)
            kept[i] = dot(flat_p[i], flat_d[i], ld)
    parts = [_momo_sums(t, b.grads, w, ld, xg=not fast, xd=kept is None,
                        per_tensor=kept is not None) for b, t in zip(blocks, paths)]
    dd = parts[0][0] if len(parts) == 1 else (torch.cat([p[0] for p in parts])
                                              if kept is not None else sum(p[0] for p in parts))
    xg = None if fast else (parts[0][1] if len(parts) == 1 else
                            torch.cat([p[1] for p in parts]))  # type: ignore[misc]
    if fresh is not None and any(fresh):  # as at step 1: d = g, gamma = <x, g> (or zeros)
        init = torch.zeros_like(gam) if bias_correction or xg is None else xg.to(gam.dtype)
        start = torch.zeros_like(kept) if only_v else init  # <x, d> - gamma = 0 for them
        if all(fresh):  # every tensor (a run's first step): no mask to copy to the device
            gam.copy_(init)
            if kept is not None:
                kept.copy_(start)
        else:
            new = torch.tensor(fresh, device=gam.device).view(-1, *(1,) * (gam.dim() - 1))
            gam.copy_(torch.where(new, init, gam))
            if kept is not None:
                kept.copy_(torch.where(new, start, kept))
    rho = host(_bias_correction, beta, step, keep=False) if bias_correction else 1.0
    if fast:
        assert kept is not None
        u = (kept if only_v else kept - gam) * beta  # <x_k, d_k> - gamma_k per tensor (c = 1)
        dot_xd, gamma, q = u.sum(0), torch.zeros_like(loss_avg), None
    else:
        assert xg is not None
        gam.mul_(beta).add_(xg * w)
        if kept is not None:  # <x_k, d_k> = beta <x_k, d_{k-1}> + (1 - beta) <x_k, g_k>
            q = kept * beta + xg * w
            dot_xd = q.sum(0)
        else:
            q = None
            dot_xd = parts[0][2] if len(parts) == 1 else sum(p[2] for p in parts)  # type: ignore
        gamma = gam.sum(0)
    norm = dd if kept is None else dd.sum(0)
    taus = _step_sizes([b.hp for b in blocks], loss_avg=loss_avg, fstar=fstar, dot_xd=dot_xd,
                       gamma=gamma, norm=norm, rho=rho, lb=lb, use_fstar=use_fstar)
    hot: list[Tensor | None] = []
    for b, t, tau in zip(blocks, paths, taus):
        P, D = t.P, t.D
        c = host(one_plus_product, b.hp["lr"], b.hp["weight_decay"])
        decay = not is_zero(b.hp["weight_decay"])
        ntau = -tau
        mine: list[Tensor | None] = [None] * len(P)
        if t.fe:
            foreach_axpy_(t.Pf, t.Df, ntau, ld)
            if decay:
                foreach_scale_(t.Pf, host(_ratio, 1, c), ld)
        for i in reversed(t.loop):  # the last tensors of the first pass are in cache
            P[i].addcmul_(D[i], bc(ntau, P[i], ld))
            if decay:
                scale_(P[i], host(_ratio, 1, c), ld)
            if fast and not only_v:  # <x_{k+1}, d_k> while the tensor is in cache
                mine[i] = dot(P[i], D[i], ld)
        if fast and not only_v:
            hot += [dot(P[i], D[i], ld) if m is None else m for i, m in enumerate(mine)]
    if kept is not None:
        n_b = [len(t.P) for t in paths]
        tau_i = taus[0] if len(taus) == 1 else torch.cat(
            [tau.expand(n, *tau.shape) for tau, n in zip(taus, n_b)])
        if only_v:  # v_{k+1} = <x_{k+1}, d_k> - gamma_k = u - tau |d_k|^2
            kept.copy_(u - tau_i * dd)
        elif fast:  # gamma_k = <x_k, d_k> - u = <x_{k+1}, d_k> + tau |d_k|^2 - u
            qn = torch.stack(hot)  # type: ignore[arg-type]
            gam.copy_(qn + tau_i * dd - u)
            kept.copy_(qn)
        else:  # <x_{k+1}, d_k> = (<x_k, d_k> - tau |d_k|^2) / c
            assert q is not None
            cs = [host(one_plus_product, b.hp["lr"], b.hp["weight_decay"]) for b in blocks]
            c_i = cs[0] if len(cs) == 1 else torch.cat(
                [torch.as_tensor(c, dtype=dd.dtype, device=dd.device).expand(n, *dd.shape[1:])
                 for c, n in zip(cs, n_b)])
            kept.copy_((q - tau_i * dd) / c_i)
    return taus


def momo(
    params: list[Tensor],
    grads: list[Tensor],
    grad_avgs: list[Tensor],
    grad_dot_ws: Tensor,
    loss_avg: Tensor,
    fstar: Tensor,
    loss: Tensor | float,
    *,
    step: int,
    lr: Scalar = 1.0,
    beta: Scalar = 0.9,
    lb: Scalar = 0.0,
    weight_decay: Scalar = 0.0,
    bias_correction: bool = False,
    use_fstar: bool = False,
    learner_dims: int = 0,
    foreach: bool | None = None,
    kept_dots: Tensor | None = None,
) -> Tensor:
    r"""Functional MoMo step (see :class:`MoMo`); updates params and state in place.

    ``grad_avgs`` (:math:`d`) start as zeros, ``grad_dot_ws`` (:math:`\gamma_i`, shape
    ``(len(params),)`` or ``(len(params), K)``) as zeros, ``loss_avg`` (:math:`\bar f`) as 0 and
    ``fstar`` as ``lb`` (shape ``()`` or ``(K,)``). ``loss``: the loss at the current params
    (``(K,)`` per learner with ``learner_dims=1``); ``step``: the step count after this step
    (from 1). Returns the step size :math:`\tau`.

    ``kept_dots`` (optional, shaped like ``grad_dot_ws``): per tensor
    :math:`\langle x_i, d_i\rangle`, carried from step to step (module notes), which saves
    passes over the parameters; it is set at ``step == 1``, and the parameters must change only
    through this kernel in between.

    >>> x, d, gam = torch.ones(2), torch.zeros(2), torch.zeros(1)
    >>> fbar, fstar = torch.zeros(()), torch.zeros(())
    >>> g = torch.tensor([1.0, 10.0])
    >>> tau = momo([x], [g], [d], gam, fbar, fstar, 5.5, step=1)
    >>> round(tau.item(), 7)
    0.0544554
    """
    check_learner_dims(learner_dims)
    if not params:
        return torch.zeros_like(loss_avg)
    block = Block(list(params), list(grads), {"d": list(grad_avgs)},
                  {"lr": lr, "weight_decay": weight_decay})
    if step == 1 and not bias_correction:
        for d, g in zip(grad_avgs, grads):
            d.copy_(g)
    return _momo_blocks([block], grad_dot_ws, loss_avg=loss_avg, fstar=fstar, loss=loss,
                        step=step, fresh=[True] * len(params) if step == 1 else None, beta=beta,
                        lb=lb, bias_correction=bias_correction, use_fstar=use_fstar,
                        ld=learner_dims, foreach=foreach, kept=kept_dots)[0]


def _momo_adam_taus(hps: Sequence[dict[str, Any]], xg: Tensor, dot_xd: Tensor, norm: Tensor, *,
                    gam: Tensor, loss_avg: Tensor, fstar: Tensor, f: Tensor | float,
                    beta1: Scalar, step: int, lb: Scalar, use_fstar: bool) -> list[Tensor]:
    r"""MoMo-Adam's numbers between its passes, from the per-tensor :math:`\langle x_i,
    g_i\rangle` (``xg``), :math:`\langle x, d\rangle` and :math:`\lVert d\rVert^2_{D^{-1}}`
    (``norm``) and the loss ``f``: :math:`\gamma_i` and :math:`\bar f` updated in place, then
    each group's step size (:func:`_step_sizes`)."""
    w1 = host(one_minus, beta1)
    gam.mul_(beta1).add_(xg * w1)
    loss_avg.copy_(f * w1 + loss_avg * beta1)
    rho = host(_bias_correction, beta1, step, keep=False)
    return _step_sizes(hps, loss_avg=loss_avg, fstar=fstar, dot_xd=dot_xd, gamma=gam.sum(0),
                       norm=norm, rho=rho, lb=lb, use_fstar=use_fstar)


def _momo_adam_blocks(blocks: Sequence[Block], gam: Tensor, *, loss_avg: Tensor, fstar: Tensor,
                      loss: Tensor | float, step: int, lb: Scalar, use_fstar: bool, ld: int,
                      foreach: bool | None, scratch: _Scratch) -> list[Tensor]:
    """MoMo-Adam over several param groups (``b.steps``: per-tensor step counts)."""
    rows, qs = [], []
    beta1: Scalar = 0.9
    slot = 0
    for b in blocks:
        P, G, D, V = b.params, b.grads, b.bufs["d"], b.bufs["v"]
        beta1, beta2, eps = b.hp["beta1"], b.hp["beta2"], b.hp["eps"]
        w1 = host(one_minus, beta1)
        by_step = {t: host(_bias_correction, beta2, t, keep=False) for t in set(b.steps)}
        bc2 = [by_step[t] for t in b.steps]
        Q: list[Tensor] = [None] * len(P)  # type: ignore[list-item]
        fe, loop = split_paths(P, foreach, ld)
        if fe:
            Df, Gf, Vf = pick(D, fe), pick(G, fe), pick(V, fe)
            if isinstance(w1, Tensor):
                torch._foreach_lerp_(Df, Gf, [bc(w1, x, ld) for x in Df])
            else:
                torch._foreach_lerp_(Df, Gf, w1)
            foreach_ema_sq_(Vf, Gf, beta2, ld)
            c2 = pick(bc2, fe)
            if isinstance(c2[0], Tensor):
                Qf = torch._foreach_div(Vf, [bc(c, v, ld) for c, v in zip(c2, Vf)])
            else:
                Qf = torch._foreach_div(Vf, c2)
            foreach_sqrt_(Qf)
            torch._foreach_add_(Qf, [bc(eps, q, ld) for q in Qf] if isinstance(eps, Tensor)
                                else eps)
            Qf = torch._foreach_div(Df, Qf)
            for i, q in zip(fe, Qf):
                Q[i] = q
        red = {}
        for i in fe:
            red[i] = torch.stack([dot(P[i], G[i], ld), dot(P[i], D[i], ld), dot(D[i], Q[i], ld)])
        for i in loop:
            p, g, d, v = P[i], G[i], D[i], V[i]
            q = Q[i] = scratch.get(v, 16 + slot + i)
            d.lerp_(g, bc(w1, d, ld))
            ema_sq_(v, g, beta2, ld, q)
            torch.div(v, bc(bc2[i], v, ld), out=q)
            sqrt(q, out=q)
            q.add_(bc(eps, q, ld))
            torch.div(d, q, out=q)
            red[i] = torch.stack([dot(p, g, ld), dot(p, d, ld), dot(d, q, ld)])
        slot += len(P)
        rows += [red[i] for i in range(len(P))]
        qs.append(Q)
    r = torch.stack(rows)
    tot = r[:, 1:].sum(0)
    taus = _momo_adam_taus([b.hp for b in blocks], r[:, 0], tot[0], tot[1], gam=gam,
                           loss_avg=loss_avg, fstar=fstar, f=_loss_tensor(loss, loss_avg, ld),
                           beta1=beta1, step=step, lb=lb, use_fstar=use_fstar)
    for b, tau, Q in zip(blocks, taus, qs):
        P = b.params
        lr, wd = b.hp["lr"], b.hp["weight_decay"]
        decay = not is_zero(wd)
        divide = b.hp["divide"]
        fe, loop = split_paths(P, foreach, ld)
        if fe:
            Pf = pick(P, fe)
            if decay and not divide:
                foreach_scale_(Pf, host(decay_factor, lr, wd), ld)
            foreach_axpy_(Pf, pick(Q, fe), -tau, ld)
            if decay and divide:
                foreach_scale_(Pf, host(_inverse_decay, lr, wd), ld)
        for i in reversed(loop):  # the last tensors of the first pass are in cache
            p = P[i]
            if decay and not divide:
                scale_(p, host(decay_factor, lr, wd), ld)
            p.addcmul_(Q[i], bc(-tau, p, ld))
            if decay and divide:
                scale_(p, host(_inverse_decay, lr, wd), ld)
    return taus


def momo_adam(
    params: list[Tensor],
    grads: list[Tensor],
    grad_avgs: list[Tensor],
    grad_avg_sqs: list[Tensor],
    grad_dot_ws: Tensor,
    loss_avg: Tensor,
    fstar: Tensor,
    loss: Tensor | float,
    *,
    step: int | Sequence[int],
    lr: Scalar = 1e-2,
    beta1: Scalar = 0.9,
    beta2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    lb: Scalar = 0.0,
    weight_decay: Scalar = 0.0,
    divide: bool = True,
    use_fstar: bool = False,
    learner_dims: int = 0,
    foreach: bool | None = None,
) -> Tensor:
    r"""Functional MoMo-Adam step (see :class:`MoMoAdam`); updates everything in place.

    State as in :func:`momo` plus ``grad_avg_sqs`` (:math:`v`, zeros). ``step``: the step count
    after this step (from 1), one for all tensors or one per tensor (Adam's :math:`s_i`); the
    model-wide count is the largest. Returns the step size :math:`\tau`.

    >>> x, d, v, gam = torch.ones(2), torch.zeros(2), torch.zeros(2), torch.zeros(1)
    >>> fbar, fstar = torch.zeros(()), torch.zeros(())
    >>> tau = momo_adam([x], [torch.tensor([1.0, 10.0])], [d], [v], gam, fbar, fstar, 5.5,
    ...                 step=1, lr=1e-2)
    >>> round(tau.item(), 7)
    0.1
    """
    check_learner_dims(learner_dims)
    if not params:
        return torch.zeros_like(loss_avg)
    steps = [step] * len(params) if isinstance(step, int) else list(step)
    block = Block(list(params), list(grads), {"d": list(grad_avgs), "v": list(grad_avg_sqs)},
                  {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps,
                   "weight_decay": weight_decay, "divide": divide}, steps)
    return _momo_adam_blocks([block], grad_dot_ws, loss_avg=loss_avg, fstar=fstar, loss=loss,
                             step=max(steps), lb=lb, use_fstar=use_fstar, ld=learner_dims,
                             foreach=foreach, scratch=default_scratch())[0]


# ---------------------------------------------------------------------------- state, stacked


def momo_init(params: list[Tensor], *, lb: Scalar = 0.0, learner_dims: int = 0
              ) -> dict[str, Any]:
    r"""MoMo's initial state for ``params`` (with ``learner_dims=1``: K members stacked along
    dimension 0), as :func:`momo` takes it (the class keeps the per-tensor entries per
    parameter): step 0, zero ``grad_avg`` (:math:`d`) and ``grad_dot_w`` (:math:`\gamma_i`),
    one per tensor, ``loss_avg`` :math:`\bar f = 0` and ``fstar`` :math:`f_* = ` ``lb``.

    >>> momo_init([torch.zeros(4, 3), torch.zeros(4)], lb=-1.0, learner_dims=1)["fstar"]
    tensor([-1., -1., -1., -1.])
    """
    like = params[0]
    return {"step": 0, "grad_avg": [torch.zeros_like(p) for p in params],
            "grad_dot_w": scalar_state(like, len(params), ld=learner_dims),
            "loss_avg": scalar_state(like, ld=learner_dims),
            "fstar": scalar_state(like, ld=learner_dims, fill=lb)}


def momo_adam_init(params: list[Tensor], *, lb: Scalar = 0.0, learner_dims: int = 0
                   ) -> dict[str, Any]:
    """MoMo-Adam's initial state, as :func:`momo_adam` takes it: :func:`momo_init`'s and zero
    second moments ``grad_avg_sq``."""
    return {**momo_init(params, lb=lb, learner_dims=learner_dims),
            "grad_avg_sq": [torch.zeros_like(p) for p in params]}


def _first_moments(params: list[Tensor], grads: list[Tensor], bias_correction: bool
                   ) -> list[Tensor]:
    """The first moments :math:`d` of parameters MoMo sees for the first time: :func:`momo_init`'s
    zeros, or the gradient without bias correction (:math:`d_1 = g_1`)."""
    ds = momo_init(params)["grad_avg"]
    if not bias_correction:
        for d, g in zip(ds, grads):
            d.copy_(g)
    return ds


def _by_rows(params: list[Tensor], flags: dict[str, Any]) -> bool:
    """Whether the fleet steps MoMo past the first step with :func:`_momo_rows`: each member's
    parameters one row (one tensor, or the fleet's segments), without bias correction and
    :math:`f_*` estimation."""
    return (bool(flags.get("rows")) or len(params) == 1) and not flags["bias_correction"] \
        and not flags["use_fstar"]


def _momo_stacked_init(params: list[Tensor], hp: Hyper, flags: dict[str, Any]
                       ) -> dict[str, Any]:
    r""":func:`momo_init`; for :func:`_momo_rows`, one :math:`\gamma` per member (the rows' sum,
    shape ``(1, K)``) however many segments the rows have."""
    state = momo_init(params, lb=hp["lb"], learner_dims=1)
    if _by_rows(params, flags):
        state["grad_dot_w"] = state["grad_dot_w"][:1].clone()
    return state


def _momo_first_rows(params: list[Tensor], grads: list[Tensor], state: dict[str, Any],
                     loss: Tensor, hp: Hyper, flags: dict[str, Any]) -> Tensor:
    """MoMo's first step for rows given as several segments: :func:`momo` on the rows
    concatenated (the numbers of one tensor, which :func:`_momo_rows` goes on from), the
    parameters and first moments then copied back into the segments (once a run)."""
    ds = state["grad_avg"]
    whole_p, whole_d = torch.cat(params, 1), torch.cat(ds, 1)
    tau = momo([whole_p], [torch.cat(grads, 1)], [whole_d], state["grad_dot_w"],
               state["loss_avg"], state["fstar"], loss, step=1, lr=hp["lr"], beta=hp["beta"],
               lb=hp["lb"], weight_decay=hp["weight_decay"], bias_correction=False,
               use_fstar=False, learner_dims=1, foreach=flags.get("foreach"))
    widths = [p.shape[1] for p in params]
    torch._foreach_copy_(params, list(whole_p.split(widths, 1)))
    torch._foreach_copy_(ds, list(whole_d.split(widths, 1)))
    return tau


def _momo_stacked(state: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                  loss: Tensor, hp: Hyper, flags: dict[str, Any]) -> list[Tensor]:
    state["step"] += 1
    if _by_rows(params, flags) and state["step"] > 1:
        tau = _momo_rows(params, grads, state, loss, hp)
    elif _by_rows(params, flags) and len(params) > 1:
        tau = _momo_first_rows(params, grads, state, loss, hp, flags)
    else:
        tau = momo(params, grads, state["grad_avg"], state["grad_dot_w"], state["loss_avg"],
                   state["fstar"], loss, step=state["step"], lr=hp["lr"], beta=hp["beta"],
                   lb=hp["lb"], weight_decay=hp["weight_decay"],
                   bias_correction=flags["bias_correction"], use_fstar=flags["use_fstar"],
                   learner_dims=1, foreach=flags.get("foreach"))
    return [tau, state["fstar"]]


def _momo_rows(P: list[Tensor], G: list[Tensor], state: dict[str, Any], loss: Tensor,
               hp: Hyper) -> Tensor:
    """A fleet's MoMo step past the first, each member's parameters one row of the segments
    ``P`` (``(K, n_s)`` tensors whose rows one after another are the members' rows:
    :func:`~shiftsim.optim._kernels.rows`; ``bias_correction=False``, ``use_fstar=False``): the
    numbers of :func:`momo` over one tensor of the rows (no ``kept_dots``; ``learner_dims=1``)
    without its lists, blocks and preallocated rows, bit for bit with torch's row sums
    (``SHIFTSIM_NATIVE=0``), up to rounding with the native ones
    (:func:`~shiftsim.optim._kernels.row_dots`); the same bits however the rows are split.
    With the native code the first moment's lerp shares the sums' pass and the per-member
    numbers are one call (:func:`~shiftsim.optim._native.momo_coefs`), torch's bits; the
    sums, the numbers and the update in one call where it applies
    (:func:`~shiftsim.optim._native.momo_step`, member by member: the same bits).
    [speed] One thread, in-process toggle, the same traces (torch's row sums and one segment,
    before the native ones): the MoMo group of a single run (a 64-unit digits MLP) 0.30 ->
    0.21 ms a step (the run 0.77x), 5 members 0.42 -> 0.26, 130 members 2.08 -> 1.68 ms (the
    run 0.91x)."""
    D, gam, loss_avg, fstar = state["grad_avg"], state["grad_dot_w"], state["loss_avg"], \
        state["fstar"]
    beta, wd = hp["beta"], hp["weight_decay"]
    f = _loss_tensor(loss, loss_avg, 1)
    w = host(one_minus, beta)
    lr = hp["lr"]
    c = host(one_plus_product, lr, wd)
    cap = host(_ratio, lr, 1.0, keep=False)
    if isinstance(cap, Tensor):
        cap = cap.to(loss_avg.dtype)
    shrink = None if is_zero(wd) else host(_ratio, 1, c)
    # the whole step in one native call (the sums, the numbers and the update below, member
    # by member: the same bits)
    whole = None if not isinstance(f, Tensor) else _native.momo_step(
        D, P, G, f, loss_avg, beta, w, gam, fstar, c, _one(c), cap, shrink)
    if whole is not None:
        return whole[0]
    pairs = ((0, 0), (1, 2), (1, 0))
    # the first moment moved toward the gradient in the sums' pass (torch's lerp bit for bit),
    # else by torch and then summed
    sums = _native.row_sums((D, P, G), pairs, lerp=(0, 2, w))
    if sums is None:
        if isinstance(w, Tensor):
            torch._foreach_lerp_(D, G, [bc(w, d, 1) for d in D])
        else:
            torch._foreach_lerp_(D, G, w)
        sums = row_dots((D, P, G), pairs)
    dd, xg, xd = sums
    # the per-member numbers (the loss average, gamma, the step size) in one native call
    # (torch's bits), else torch's operations
    coefs = None if not isinstance(f, Tensor) else _native.momo_coefs(
        f, loss_avg, beta, w, xg, xd, dd, gam, fstar, c, _one(c), cap)
    if coefs is not None:
        tau, neg_tau = coefs
        neg = neg_tau.view(-1, 1)
    else:
        loss_avg.copy_(loss_avg * beta + f * w)
        gam.mul_(beta).add_(xg * w)  # gam: (1, K), one tensor
        tau = _step_sizes([hp], loss_avg=loss_avg, fstar=fstar, dot_xd=xd, gamma=gam.sum(0),
                          norm=dd, rho=1.0, lb=hp["lb"], use_fstar=False)[0]
        neg = bc(-tau, P[0], 1)
    torch._foreach_addcmul_(P, D, [neg] * len(P))
    if shrink is not None:
        foreach_scale_(P, shrink, 1)
    return tau


def _momo_adam_rows(P: list[Tensor], G: list[Tensor], state: dict[str, Any], loss: Tensor,
                    hp: Hyper, flags: dict[str, Any]) -> Tensor | None:
    """A fleet's MoMo-Adam step over its members' rows (the segments ``P``, one per parameter
    tensor, as :func:`_momo_rows` takes them) by the native passes
    (:func:`~shiftsim.optim._native.momo_adam_rows`), the numbers between them as
    :func:`_momo_adam_blocks` computes them: the moments and the update are torch's bits; the
    sums are the native ones (per segment, then per row in float64), so the step equals
    :func:`momo_adam`'s up to float rounding, and a member's numbers do not depend on its
    fleet. The numbers between the passes without f* estimation are two native calls around
    torch's sum of gamma (:func:`~shiftsim.optim._native.momo_adam_coefs`: torch's bits),
    else :func:`_momo_adam_taus`. None, changing nothing, where the native code does not apply.
    [speed] One thread, a 2-core Intel Xeon, the group's step toggled against
    :func:`momo_adam`'s operations in one process (3 rounds, random gradients): the default MLP
    64-256-256-10 alone 234-241 against 593-600 us; 10 members of a 64-unit MLP 170-235
    against 412-531 us; 8 members of 64-128-128-10 575-621 against 1,363-1,425 us (before the
    native numbers). Those toggled against :func:`_momo_adam_taus` (a 2-core AMD EPYC, one
    thread, 600-step runs, 5 interleaved rounds): an 8-unit MLP's run 298-308 -> 236-246 us a
    step (paired 0.80), the default MLP's 0.91, 10 members of a 64-unit MLP 0.86."""
    gam, loss_avg, fstar = state["grad_dot_w"], state["loss_avg"], state["fstar"]
    f = _loss_tensor(loss, loss_avg, 1)
    if not isinstance(f, Tensor):
        return None
    step = state["step"]
    beta1, beta2, eps = hp["beta1"], hp["beta2"], hp["eps"]
    lr, wd = hp["lr"], hp["weight_decay"]
    w1 = host(one_minus, beta1)
    bc2 = host(_bias_correction, beta2, step, keep=False)
    decay = not is_zero(wd)
    pre = host(decay_factor, lr, wd) if decay and not flags["divide"] else None
    post = host(_inverse_decay, lr, wd) if decay and flags["divide"] else None
    taus: list[Tensor] = []

    def numbers(xg: Tensor, xd: Tensor, dq: Tensor) -> Tensor:
        # in native calls (torch's bits), else torch's operations; f* estimation by torch
        coefs = None
        if not flags["use_fstar"]:
            rho = host(_bias_correction, beta1, step, keep=False)
            c = host(one_plus_product, lr, wd)
            coefs = _native.momo_adam_coefs(f, loss_avg, gam, xg, xd, dq, fstar, beta1, w1, rho,
                                            _one(rho), c, _one(c),
                                            _cap(host(_ratio, lr, rho, keep=False), f.dtype))
        if coefs is not None:
            taus.append(coefs[0])
            return coefs[1]
        taus.append(_momo_adam_taus([hp], xg, xd, dq, gam=gam, loss_avg=loss_avg, fstar=fstar,
                                    f=f, beta1=beta1, step=step, lb=hp["lb"],
                                    use_fstar=flags["use_fstar"])[0])
        return -taus[0]

    done = _native.momo_adam_rows(P, G, state["grad_avg"], state["grad_avg_sq"], w1, beta2,
                                  host(one_minus, beta2), bc2, eps, pre, post, numbers)
    return taus[0] if done else None


def _momo_adam_stacked(state: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                       loss: Tensor, hp: Hyper, flags: dict[str, Any]) -> list[Tensor]:
    state["step"] += 1
    if flags.get("rows"):
        tau = _momo_adam_rows(params, grads, state, loss, hp, flags)
        if tau is not None:
            return [tau, state["fstar"]]
    tau = momo_adam(params, grads, state["grad_avg"], state["grad_avg_sq"],
                    state["grad_dot_w"], state["loss_avg"], state["fstar"], loss,
                    step=state["step"], lr=hp["lr"], beta1=hp["beta1"], beta2=hp["beta2"],
                    eps=hp["eps"], lb=hp["lb"], weight_decay=hp["weight_decay"],
                    divide=flags["divide"], use_fstar=flags["use_fstar"], learner_dims=1,
                    foreach=flags.get("foreach"))
    return [tau, state["fstar"]]


def _momo_diagnostics(flags: dict[str, Any]) -> tuple[str, ...]:
    return ("step_size", "fstar")


# ---------------------------------------------------------------------------- classes


class _MoMoBase(ShiftsimOptimizer):
    needs_loss = True
    diagnostic_keys = ("step_size", "fstar")

    def _init_global(self, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        lb = self.defaults["lb"]
        return {"step": 0, "loss_avg": torch.zeros((), device=device, dtype=dtype),
                "fstar": torch.full((), float(lb), device=device, dtype=dtype),
                "step_size": torch.zeros((), device=device, dtype=dtype)}

    def diagnostics(self) -> dict[str, Tensor]:
        out = super().diagnostics()
        if "global" not in self.state:
            out["fstar"] = out["fstar"] + float(self.defaults["lb"])
        return out

    def _loss(self, closure: Callable[[], Any] | None, loss: Any) -> Any:
        name = type(self).__name__
        if closure is not None and loss is not None:
            raise ShiftsimError(f"{name}.step: pass the loss or a closure, not both")
        if closure is not None:
            loss = eval_closure(closure)
        if loss is None:
            raise ShiftsimError(
                f"{name} needs the loss value: call {name}.step(loss=loss) after "
                "loss.backward(), or step(closure) with a closure that returns the loss"
            )
        if isinstance(loss, Tensor) and loss.numel() != 1:
            raise ShiftsimError(f"{name}: the loss must be a scalar, got shape "
                             f"{tuple(loss.shape)}")
        if not isinstance(loss, (Tensor, int, float)) or isinstance(loss, bool):
            raise SpecTypeError(f"{name}: the loss must be a tensor or a number, got {loss!r}")
        return loss


class MoMo(_MoMoBase):
    r"""MoMo (Schaipp et al. 2024, arXiv:2305.07583): SGD momentum with a model-based,
    Polyak-type adaptive step size. Needs the loss: ``step(loss=loss)`` or ``step(closure)``.

    .. math::

        \bar f_k &= \beta\bar f_{k-1} + (1-\beta) f(x_k), \quad
        d_k = \beta d_{k-1} + (1-\beta) g_k, \quad
        \gamma_k = \beta\gamma_{k-1} + (1-\beta)\langle x_k, g_k\rangle\\
        \tau_k &= \min\Bigl(\frac{\alpha}{\rho_k},
            \frac{\bigl(c(\bar f_k - \rho_k f_*) + \langle x_k, d_k\rangle
            - c\gamma_k\bigr)_+}{\lVert d_k\rVert^2}\Bigr), \qquad
        x_{k+1} = \frac{x_k - \tau_k d_k}{c}, \quad c = 1 + \alpha\lambda

    Without bias correction (default) :math:`\bar f_1 = f_1`, :math:`d_1 = g_1`,
    :math:`\gamma_1 = \langle x_1, g_1\rangle` and :math:`\rho_k = 1`; with it everything starts
    at 0 and :math:`\rho_k = 1 - \beta^k`.

    Args:
        lr: :math:`\alpha`, a cap on the step size ("lr=1 performed very well").
        beta: :math:`\beta`, in [0, 1) (shared by all groups; at 1 the averages never move
            and with bias correction :math:`\rho_k = 0`).
        lb: :math:`f_*`, a lower bound of the loss (shared).
        weight_decay: :math:`\lambda`, proximal (division by :math:`c`).
        bias_correction: see above (shared).
        use_fstar: estimate :math:`f_*` online, floored at ``lb`` (shared; see the module notes).
        foreach: multi-tensor ops (True), tensor by tensor (False), or chosen per tensor (None).
        exact_outside_changes: [ours] follow changes made to the parameters outside the
            optimizer exactly, as the reference does, also without weight decay, at the cost of
            one more pass over the parameters per step (module notes; shared).
        compile: ``"auto"`` (default), True or False: take steps through a compiled kernel
            (:mod:`~shiftsim.optim._compiled`: the policy, the fallback); it covers one param
            group without weight decay, ``use_fstar=False`` and ``exact_outside_changes=False``
            (the offsets carried), after each tensor's first step. On a CPU that kernel is
            shiftsim's own C code (:func:`~shiftsim.optim._native.momo_tensors_step`: two
            passes over the tensors, split across torch's threads; built with the native row
            sums, nothing to compile per shape; ``"auto"`` takes it from the first step),
            elsewhere Inductor's. [speed]
            ``benchmarks/optimizer_step.py --only momo`` (5M parameters, a 2-vCPU Intel Xeon, 9
            rounds, alternating with ``SHIFTSIM_NATIVE=0``, which gives Inductor's): 1.22x and
            1.21x fused SGD-momentum against Inductor's 1.93x and 1.99x with 2 threads (the
            eager step 1.7-2.1x that day), 1.35x and 1.15x against 1.91x and 1.90x with one
            (eager 1.46-1.56x); first step 0.01-0.04 s. Until 2026-12-07 (Inductor's kernel
            only, measured no faster than the eager one) the default was False.

    State: ``grad_avg`` (:math:`d`), ``grad_dot_w`` (:math:`\gamma_i`) and ``x_dot_d``
    (:math:`\langle x_i, d_i\rangle`, or the offset :math:`\langle x_i, d_i\rangle -
    \gamma_i` while ``state["global"]["offsets"]``; module notes) per parameter;
    ``state["global"]``: ``step``, ``loss_avg``, ``fstar``, ``step_size``. Sums are
    model-wide.
    ``diagnostics()``: ``step_size`` (:math:`\tau`, of the first group), ``fstar``.

    >>> w = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    >>> opt = MoMo([w], lr=1.0)
    >>> for _ in range(2):
    ...     opt.zero_grad()
    ...     loss = 0.5 * (w[0] ** 2 + 10 * w[1] ** 2)
    ...     loss.backward()
    ...     _ = opt.step(loss=loss)
    >>> [round(v, 6) for v in w.tolist()], round(opt.diagnostics()["step_size"].item(), 7)
    ([0.943912, 0.439921], 0.0016419)
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1.0,
        beta: float = 0.9,
        lb: float = 0.0,
        weight_decay: float = 0.0,
        bias_correction: bool = False,
        use_fstar: bool = False,
        foreach: bool | None = None,
        exact_outside_changes: bool = False,
        compile: bool | str = "auto",
    ) -> None:
        defaults = dict(lr=lr, beta=beta, lb=lb, weight_decay=weight_decay,
                        bias_correction=bias_correction, use_fstar=use_fstar, foreach=foreach,
                        exact_outside_changes=exact_outside_changes, compile=compile)
        self._check_group(defaults)
        super().__init__(params, defaults)

    shared_hparams = ("beta", "lb", "bias_correction", "use_fstar", "exact_outside_changes")
    #: the fleet steps stacked members through :func:`momo` (every sum computed)
    stacked = Stacked(_momo_stacked_init, _momo_stacked, _momo_diagnostics, flat=always)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_number(group["lr"], "lr", 0.0)
        check_number(group["beta"], "beta", 0.0, 1.0, high_open=True)
        check_number(group["lb"], "lb")
        check_number(group["weight_decay"], "weight_decay", 0.0)
        check_bool(group["bias_correction"], "bias_correction")
        check_bool(group["use_fstar"], "use_fstar")
        check_foreach(group["foreach"])
        check_bool(group.setdefault("exact_outside_changes", False), "exact_outside_changes")
        _compiled.check_compile(group.get("compile", "auto"))

    #: take steps with the cached plan (tests compare it with the general path by switching
    #: it off)
    _planned = True

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, loss: Any = None) -> Any:
        """One MoMo step. Give the loss (tensor or float) at the current parameters, or a
        closure that computes it (and the gradients); returns the loss."""
        loss = self._loss(closure, loss)
        if not (self._planned and self._planned_step(loss)):
            self._general_step(loss)
        return loss

    def _planned_step(self, loss: Any) -> bool:
        """A step with the cached plan (see :mod:`shiftsim.optim._base`): the general path's
        operations on cached blocks, tensor lists and per-tensor :math:`\\gamma_i` and
        :math:`\\langle x_i, d_i\\rangle` (the state's ``grad_dot_w`` and ``x_dot_d`` are views
        of two tensors). False: the general path must take it."""
        groups = self.param_groups
        plan, grads = self._plan_for_step(("lr", "weight_decay"))
        if plan is None:
            return False
        if not plan.blocks:
            return True
        glob, first, x = plan.glob, groups[0], plan.extra
        glob["step"] += 1
        foreach = first["foreach"]
        blocks = []
        for b in plan.blocks:
            blk, group = b.extra["block"], b.group
            blk.grads = grads[b.j]
            blk.hp["lr"], blk.hp["weight_decay"] = group["lr"], group["weight_decay"]
            paths = b.extra.get(foreach)
            if paths is None:
                paths = b.extra[foreach] = _Paths(b.params, b.bufs["grad_avg"], foreach, 0)
            blk.hp["paths"] = paths
            blocks.append(blk)
        live = x["live"]
        fresh = x.pop("fresh", None)
        exact = self._represent(glob, [b.group for b in plan.blocks])
        stale = self._stale(live, fresh, exact)
        if self._compiled_step(plan, blocks, live, fresh, exact, loss):
            self._seen(live)
            return True
        taus = _momo_blocks(blocks, x["gam"], loss_avg=glob["loss_avg"], fstar=glob["fstar"],
                            loss=loss, step=glob["step"], fresh=fresh, beta=first["beta"],
                            lb=first["lb"], bias_correction=first["bias_correction"],
                            use_fstar=first["use_fstar"], ld=0, foreach=foreach,
                            kept=x["kept"], stale=stale, exact=exact)
        glob["step_size"] = taus[0]
        self._seen(live)
        return True

    def _compiled_step(self, plan: Plan, blocks: list[Block], live: list[Tensor],
                       fresh: Sequence[bool] | None, exact: bool, loss: Any) -> bool:
        """The step through the compiled kernel (:func:`~shiftsim.optim._compiled.momo_step`)
        when it covers it — one param group, no weight decay, the offsets carried (not
        ``exact_outside_changes``), ``use_fstar=False``, no fresh tensor, a float ``lr`` — and
        the compile policy wants it; False: the eager kernels take it (``glob["step"]`` is
        already counted)."""
        group = self.param_groups[0]
        lr = group["lr"]
        if len(self.param_groups) != 1 or len(blocks) != 1 or exact or group["use_fstar"] \
                or (fresh and any(fresh)) or isinstance(lr, Tensor) \
                or not is_zero(group["weight_decay"]) or len(live) != len(group["params"]):
            return False
        comp = self._compiled_kernel(_compiled.momo_step)
        native = comp.native_first(live)  # the native kernel from the first step (no compile)
        if not native and not comp.wanted(live):
            return False
        glob, x = plan.glob, plan.extra
        beta, step = group["beta"], glob["step"]
        rho = 1 - beta ** step if group["bias_correction"] else 1.0
        loss_avg = glob["loss_avg"]
        f = _loss_tensor(loss, loss_avg, 0)
        if not isinstance(f, Tensor):
            f = torch.full_like(loss_avg, f)
        b = blocks[0]
        if native:  # on a CPU the native kernel, where it applies (class notes)
            tau = _native.momo_tensors_step(b.params, b.grads, b.bufs["d"], x["kept"],
                                            loss_avg, f, glob["fstar"], beta=beta, rho=rho,
                                            cap=lr / rho)
            if tau is not None:
                glob["step_size"] = tau
                return True
            if not comp.wanted(live):
                return False
        scalars = self.__dict__.get("_scalars") or self.__dict__.setdefault(
            "_scalars", _compiled.Scalars())
        h = scalars((beta, 1 - beta, rho, lr / rho), live[0])
        out = comp.run(live, b.params, b.grads, b.bufs["d"], x["kept"], loss_avg,
                       glob["fstar"], f, h)
        if out is _compiled.EAGER:
            return False
        tau, kept, avg = out
        x["kept"].copy_(kept)
        loss_avg.copy_(avg)
        glob["step_size"] = tau
        return True

    def _build_plan(self, key: tuple) -> Plan:
        """The plan for the parameters that have a gradient now (their state created), with
        one :class:`~shiftsim.optim._kernels.Block` per group kept from step to step."""
        bias = self.param_groups[0]["bias_correction"]
        plan = self._plan_blocks(key, "grad_avg", lambda ps: _first_moments(
            ps, [p.grad for p in ps], bias))  # type: ignore[misc]
        if not plan.blocks:
            return plan
        live = [p for b in plan.blocks for p in b.params]
        dtype = plan.glob["loss_avg"].dtype
        for name in ("gam", "kept"):
            vec = torch.stack([self._scalar_state(p, _STATE[name]) for p in live]).to(dtype)
            for p, row in zip(live, vec.unbind(0)):  # the state holds views of vec
                self.state[p][_STATE[name]] = row
            plan.extra[name] = vec
        plan.extra.update(live=live, fresh=[f for b in plan.blocks for f in b.extra["fresh"]])
        for b in plan.blocks:
            b.extra["block"] = Block(b.params, [], {"d": b.bufs["grad_avg"]}, {})
        return plan

    def _general_step(self, loss: Any) -> None:
        """The step through :func:`_momo_blocks`, its lists built from scratch."""
        active = self._active()
        if not active:
            return
        glob = self._global()
        first = self.param_groups[0]
        glob["step"] += 1
        bias = first["bias_correction"]
        blocks, fresh, params = [], [], []
        for group, ps, gs in active:
            made = [(p, g) for p, g in zip(ps, gs) if "grad_avg" not in self.state[p]]
            if made:
                news, ngs = zip(*made)
                for p, d in zip(news, _first_moments(list(news), list(ngs), bias)):
                    self.state[p]["grad_avg"] = d
            ids = {id(p) for p, _ in made}
            fresh += [id(p) in ids for p in ps]
            ds = [self.state[p]["grad_avg"] for p in ps]
            params += ps
            blocks.append(Block(ps, gs, {"d": ds}, {
                "lr": group["lr"], "weight_decay": group["weight_decay"]}))
        dtype = glob["loss_avg"].dtype
        exact = self._represent(glob, [group for group, _, _ in active])
        gam, kept = (torch.stack([self._scalar_state(p, _STATE[k]) for p in params]).to(dtype)
                     for k in ("gam", "kept"))
        taus = _momo_blocks(blocks, gam, loss_avg=glob["loss_avg"], fstar=glob["fstar"],
                            loss=loss, step=glob["step"], fresh=fresh, beta=first["beta"],
                            lb=first["lb"], bias_correction=bias, use_fstar=first["use_fstar"],
                            ld=0, foreach=first["foreach"], kept=kept,
                            stale=self._stale(params, fresh, exact), exact=exact)
        for p, g_row, k_row in zip(params, gam.unbind(0), kept.unbind(0)):
            self.state[p]["grad_dot_w"] = g_row
            self.state[p]["x_dot_d"] = k_row
        glob["step_size"] = taus[0]
        self._seen(params)

    def _scalar_state(self, p: Tensor, key: str) -> Tensor:
        """``state[p][key]``, a 0-d tensor in the accumulation dtype (0 when missing)."""
        st = self.state[p]
        if key not in st:
            st[key] = torch.zeros((), device=p.device, dtype=acc_dtype(p.dtype))
        return st[key]

    @property
    def _versions(self) -> dict[int, tuple[int, int]]:
        """Per parameter (by id), its version counter and storage right after the last step
        that updated it (not part of the state: :meth:`load_state_dict` trusts the loaded
        ``x_dot_d``)."""
        v = self.__dict__.get("_param_versions")
        if v is None:
            v = self.__dict__["_param_versions"] = {}
        return v

    def _stale(self, params: Sequence[Tensor], fresh: Sequence[bool] | None,
               exact: bool = True) -> list[int]:
        """Positions of the parameters changed in place or given new storage outside this
        optimizer since it last updated them (``copy_``, in-place ops under ``no_grad``,
        ``p.data = ...``; writes through ``p.data`` in place bypass the version counter and are
        not seen): an exact step recomputes their :math:`\\langle x, d\\rangle`. A step
        that carries only the offsets keeps them, with a warning (class notes). Fresh tensors
        are initialised instead."""
        seen = self._versions
        out = [i for i, p in enumerate(params)
               if not (fresh and fresh[i]) and seen.get(id(p)) != (p._version, p.data_ptr())]
        if out and not exact:
            warnings.warn(
                f"MoMo: {len(out)} parameter(s) (first of shape {tuple(params[out[0]].shape)}) "
                "changed outside the optimizer since its last step; without weight decay MoMo "
                "carries only <x, d> - gamma per tensor, so its model keeps the offset it had "
                "(the reference would move it by <change, d>). Pass "
                "exact_outside_changes=True to track such changes exactly (one more pass over "
                "the parameters per step).", stacklevel=6)
        return out

    def _represent(self, glob: dict[str, Any], groups: Sequence[dict[str, Any]]) -> bool:
        """Whether this step is exact (weight decay in some group with gradients, or
        ``exact_outside_changes``), with the per-parameter state converted to the form it
        needs: ``x_dot_d`` holds :math:`\\langle x_i, d_i\\rangle` (exact) or the offset
        :math:`v_i = \\langle x_i, d_i\\rangle - \\gamma_i` (``state["global"]["offsets"]``).
        From offsets, :math:`\\langle x_i, d_i\\rangle` is one pass per tensor and
        :math:`\\gamma_i = \\langle x_i, d_i\\rangle - v_i`."""
        exact = bool(self.param_groups[0]["exact_outside_changes"]) or not all(
            is_zero(g["weight_decay"]) for g in groups)
        if glob.get("offsets", False) == (not exact):
            return exact
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if not st or "x_dot_d" not in st:
                    continue
                v, gam = st["x_dot_d"], st["grad_dot_w"]
                if exact:  # from v back to <x, d> and gamma
                    q = dot(p.detach(), st["grad_avg"], 0).to(v.dtype)
                    gam.copy_(q - v)
                    v.copy_(q)
                else:
                    v.sub_(gam)
        glob["offsets"] = not exact
        return exact

    def _seen(self, params: Sequence[Tensor]) -> None:
        seen = self._versions
        for p in params:
            seen[id(p)] = (p._version, p.data_ptr())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._versions.clear()
        glob = self.state.get("global")
        for group in self.param_groups:  # a checkpoint of an older shiftsim: no x_dot_d yet
            for p in group["params"]:
                st = self.state.get(p)
                if st and "grad_avg" in st and "x_dot_d" not in st:
                    assert glob is not None and not glob.get("offsets", False)
                    st["x_dot_d"] = dot(p.detach(), st["grad_avg"], 0).to(
                        st["grad_dot_w"].dtype)
        # the loaded <x, d> describes the parameters as they are now (a checkpoint is loaded
        # beside the model's own); a parameter changed after this is recomputed
        self._seen([p for g in self.param_groups for p in g["params"]
                    if "x_dot_d" in self.state.get(p, {})])


#: the per-parameter state names of MoMo's per-tensor scalars
_STATE = {"gam": "grad_dot_w", "kept": "x_dot_d"}


class MoMoAdam(_MoMoBase):
    r"""MoMo-Adam (Schaipp et al. 2024, arXiv:2305.07583): the MoMo step size with Adam's
    diagonal preconditioner. Needs the loss: ``step(loss=loss)`` or ``step(closure)``.

    .. math::

        d_k &= \beta_1 d_{k-1} + (1-\beta_1) g_k, \quad v_k = \beta_2 v_{k-1} + (1-\beta_2)
        g_k^2, \quad \gamma_k = \beta_1\gamma_{k-1} + (1-\beta_1)\langle x_k, g_k\rangle\\
        D_k &= \sqrt{v_k/(1-\beta_2^{s})} + \epsilon, \qquad \rho_k = 1-\beta_1^k, \qquad
        \bar f_k = \beta_1\bar f_{k-1} + (1-\beta_1) f(x_k)\\
        \tau_k &= \min\Bigl(\frac{\alpha}{\rho_k}, \frac{\bigl(c(\bar f_k - \rho_k f_*)
            + \langle x_k, d_k\rangle - c\gamma_k\bigr)_+}{\lVert d_k\rVert^2_{D_k^{-1}}}\Bigr),
        \qquad x_{k+1} = \frac{x_k - \tau_k D_k^{-1} d_k}{c}

    everything starting at 0 (always bias-corrected), :math:`c = 1 + \alpha\lambda`.
    ``divide=False`` replaces the proximal division by AdamW's
    :math:`x \leftarrow (1-\alpha\lambda)x` before the step (the numerator keeps :math:`c`, as
    the reference).

    Args:
        lr: :math:`\alpha` (a cap). betas: :math:`(\beta_1, \beta_2)` (shared by all groups).
        eps: :math:`\epsilon`. lb: :math:`f_*` (shared). weight_decay: :math:`\lambda`.
        divide: proximal (True) or AdamW-style (False) decay. use_fstar: online :math:`f_*`.
        foreach: as in :class:`MoMo`.
        compile: ``"auto"``, True or False: take the step with a compiled kernel
            (:mod:`~shiftsim.optim._compiled`: the policy, the fallback); it covers one param
            group whose tensors share a step count, float hyperparameters, ``use_fstar=False``.
            On a CPU its two passes are shiftsim's C code (``tensorsteps.c``: nothing compiled
            per shape, so ``"auto"`` takes them from the first step; 1.6-1.7x fused AdamW
            against Inductor's 2.4-2.7x, ``_compiled``'s notes), elsewhere ``torch.compile``'s.

    State: ``grad_avg``, ``grad_avg_sq``, ``grad_dot_w``, ``step`` (:math:`s`) per parameter;
    ``state["global"]``: ``step``, ``loss_avg``, ``fstar``, ``step_size``.

    >>> w = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    >>> opt = MoMoAdam([w], lr=1e-2)
    >>> for _ in range(3):
    ...     opt.zero_grad()
    ...     loss = 0.5 * (w[0] ** 2 + 10 * w[1] ** 2)
    ...     loss.backward()
    ...     _ = opt.step(loss=loss)
    >>> round(w[0].item(), 5), round(opt.diagnostics()["step_size"].item(), 6)
    (0.97001, 0.0369)
    """

    shared_hparams = ("betas", "lb", "use_fstar")
    #: the fleet steps stacked members through :func:`momo_adam`
    stacked = Stacked(lambda params, hp, flags: momo_adam_init(params, lb=hp["lb"],
                                                               learner_dims=1),
                      _momo_adam_stacked, _momo_diagnostics, flat=always,
                      segment_invariant=False)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        lb: float = 0.0,
        weight_decay: float = 0.0,
        divide: bool = True,
        use_fstar: bool = False,
        foreach: bool | None = None,
        compile: bool | str = "auto",
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, lb=lb, weight_decay=weight_decay,
                        divide=divide, use_fstar=use_fstar, foreach=foreach, compile=compile)
        self._check_group(defaults)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_number(group["lr"], "lr", 0.0)
        check_betas(group["betas"])
        check_number(group["eps"], "eps", 0.0)
        check_number(group["lb"], "lb")
        check_number(group["weight_decay"], "weight_decay", 0.0)
        check_bool(group["divide"], "divide")
        check_bool(group["use_fstar"], "use_fstar")
        check_foreach(group["foreach"])
        _compiled.check_compile(group.get("compile", "auto"))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, loss: Any = None) -> Any:
        """One MoMo-Adam step. Give the loss (tensor or float) at the current parameters, or a
        closure that computes it; returns the loss."""
        loss = self._loss(closure, loss)
        active = self._active()
        if not active:
            return loss
        glob = self._global()
        first = self.param_groups[0]
        if len(active) == 1 and self._compiled_step(*active[0], glob, loss):
            return loss
        glob["step"] += 1
        blocks, gams, params = [], [], []
        for group, ps, gs in active:
            ds, vs, steps = [], [], []
            self._fill_state(ps, momo_adam_init,
                             ("grad_avg", "grad_avg_sq", "grad_dot_w", "step"))
            for p in ps:
                st = self.state[p]
                st["step"] += 1
                ds.append(st["grad_avg"])
                vs.append(st["grad_avg_sq"])
                gams.append(st["grad_dot_w"])
                steps.append(st["step"])
            params += ps
            b1, b2 = group["betas"]
            blocks.append(Block(ps, gs, {"d": ds, "v": vs}, {
                "lr": group["lr"], "beta1": b1, "beta2": b2, "eps": group["eps"],
                "weight_decay": group["weight_decay"], "divide": group["divide"]}, steps))
        gam = torch.stack(gams).to(glob["loss_avg"].dtype)
        taus = _momo_adam_blocks(blocks, gam, loss_avg=glob["loss_avg"], fstar=glob["fstar"],
                                 loss=loss, step=glob["step"], lb=first["lb"],
                                 use_fstar=first["use_fstar"], ld=0, foreach=first["foreach"],
                                 scratch=self.scratch)
        for p, row in zip(params, gam.unbind(0)):
            self.state[p]["grad_dot_w"] = row
        glob["step_size"] = taus[0]
        return loss

    def _compiled_step(self, group: dict[str, Any], ps: list[Tensor], gs: list[Tensor],
                       glob: dict[str, Any], loss: Any) -> bool:
        """The step through the compiled kernel
        (:func:`~shiftsim.optim._compiled.momo_adam_step`) when it covers it and the compile
        policy wants it; False: the eager kernels take it."""
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        if group["use_fstar"] or any(isinstance(x, Tensor) for x in (lr, b1, b2, eps, wd)):
            return False
        comp = self._compiled_kernel(_compiled.momo_adam_step)
        native = comp.native_first(ps)  # the native passes from the first step (no compile)
        if not native and not comp.wanted(ps):
            return False
        self._fill_state(ps, momo_adam_init, ("grad_avg", "grad_avg_sq", "grad_dot_w", "step"))
        sts = [self.state[p] for p in ps]
        s = sts[0]["step"] + 1
        if any(st["step"] + 1 != s for st in sts):
            return False
        k = glob["step"] + 1
        loss_avg = glob["loss_avg"]
        rho = 1 - b1 ** k
        scalars = self.__dict__.get("_scalars") or self.__dict__.setdefault(
            "_scalars", _compiled.Scalars())
        h = scalars((b1, b2, 1 - b2 ** s, eps, rho, lr / rho, 1 + lr * wd, 1 - lr * wd), ps[0])
        f = loss.detach() if isinstance(loss, Tensor) else torch.tensor(float(loss))
        f = f.to(device=loss_avg.device, dtype=loss_avg.dtype).reshape(())
        # the state's entries are views of gam (updated in place by the native step)
        gam = self._state_vector(sts, "grad_dot_w", loss_avg.dtype)
        ds, vs = [st["grad_avg"] for st in sts], [st["grad_avg_sq"] for st in sts]
        tau = None
        if native:  # on a CPU the native passes, where they apply (_compiled's notes)
            tau = _compiled.momo_adam_step_native(
                ps, gs, ds, vs, gam, loss_avg, glob["fstar"], f, h, wd != 0, group["divide"],
                beta1=b1, beta2=b2, bc2=1 - b2 ** s, eps=eps, lr=lr, wd=wd)
            if tau is None and not comp.wanted(ps):
                return False
        if tau is None:
            out = comp.run(ps, ps, gs, ds, vs, gam, loss_avg, glob["fstar"], f, h, wd != 0,
                           group["divide"])
            if out is _compiled.EAGER:
                return False
            tau, new_gam, fbar = out
            gam.copy_(new_gam)
            loss_avg.copy_(fbar)
        glob["step"] = k
        for st in sts:
            st["step"] = s
        glob["step_size"] = tau
        return True
