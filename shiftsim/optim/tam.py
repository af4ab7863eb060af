r"""Torque-Aware Momentum: TAM, AdaTAM and AdaTAMW (Malviya et al. 2024, arXiv:2412.18790).

TAM damps each new gradient by how well it agrees with the momentum. With :math:`m_0 = 0`,
:math:`\hat s_0 = 0`:

.. math::

    S_t &= \operatorname{clip}_{[-1,1]}\frac{\langle m_{t-1}, g_t\rangle}
           {\lVert m_{t-1}\rVert\,\lVert g_t\rVert} \quad(S_t = 0 \text{ if a norm is } 0)\\
    \hat s_t &= \gamma\,\hat s_{t-1} + (1-\gamma)\,S_t, \qquad d_t = (1 + \hat s_t)/2\\
    m_t &= \beta\,m_{t-1} + (\epsilon + d_t)\,g_t \qquad\text{(heavy ball, no } 1-\beta)\\
    \theta_{t+1} &= \theta_t - \eta\,m_t

AdaTAM uses the same :math:`d_t` on the Adam first moment,
:math:`v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2` and
:math:`\theta_{t+1} = \theta_t - \eta\,m_t / (\sqrt{v_t} + \epsilon)`, without bias correction.

Choices the paper leaves open, and how they are made here:

* [paper] the cosine is **model-wide** by default (``scope="global"``: sums over every parameter
  that has a gradient, across param groups); ``scope="tensor"`` [ours] keeps one cosine per
  parameter tensor. pytorch-optimizer's per-element, dim-0-normalised alignment is *not*
  reproduced (it behaves like SGDM with the gradient halved).
* [ours] :math:`m_0 = 0` (pytorch-optimizer starts TAM at :math:`m_0 = g_1`), so the first step
  is :math:`0.5\,\eta\,g_1`; :math:`S_t := 0` when a norm is 0; :math:`S_t` clipped to [-1, 1].
* [ours] TAM's weight decay is coupled L2 (:math:`g \leftarrow g + \lambda\theta` before the
  cosine), or decoupled (:math:`\theta \leftarrow (1-\eta\lambda)\theta` before the step) with
  ``decoupled=True``. AdaTAM: coupled; AdaTAMW: decoupled, the cosine uses the raw gradient.
* [paper via 3rd] AdaTAM's first moment is *not* an EMA and nothing is bias-corrected, so the
  first step is about :math:`15.8\,\eta\,\mathrm{sign}(g)` and the steady step about 5x Adam's:
  use a smaller lr than Adam, or warm-up. ``bias_correction=True`` [ours] divides the step by
  :math:`(1-\beta_1^t)/(1-\beta_1)` and :math:`v` by :math:`1-\beta_2^t`.
* Two epsilons for AdaTAM: ``torque_eps`` (added to :math:`d_t`) and ``eps`` (denominator);
  pytorch-optimizer uses one for both.
* [ours, speed] :class:`TAM` keeps :math:`m = \sigma\tilde m` (see its notes): mathematically
  the update above, one memory pass fewer per step. The functional :func:`tam` does the same
  when given ``momentum_scale``, and holds :math:`m` itself otherwise; the fleet (and
  ``shiftsim.run`` of a ReLU MLP) uses the scaled form for a model-wide cosine.

The module holds the torque-aware family whole, in the order torch.optim and optax split an
optimizer: the multi-tensor kernels (:func:`tam`, :func:`adatam`, over any number of stacked
learners), the state initialisation (:func:`tam_init`, :func:`adatam_init`), the fleet's rule
(each class's ``stacked``) and the ``torch.optim`` classes over them. It is long because it is
one algorithm family kept in one place; the shared machinery is in
:mod:`~shiftsim.optim._kernels` and :mod:`~shiftsim.optim._base`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from . import _compiled, _native
from ._base import Hyper, Plan, ShiftsimOptimizer, Stacked, eval_closure
from ._kernels import (
    Block,
    Scalar,
    acc_dtype,
    add_scalar_,
    addcdiv_,
    axpy_,
    check_betas,
    check_bool,
    check_choice,
    check_foreach,
    check_grad,
    check_learner_dims,
    check_number,
    coupled_grads,
    decay_factor,
    default_scratch,
    ema_sq_,
    exact_values,
    foreach_add_decay,
    foreach_add_scalar_,
    foreach_addcdiv_,
    foreach_axpy_,
    foreach_ema_sq_,
    foreach_scale_,
    foreach_sqrt,
    host,
    is_zero,
    kept_sqnorm,
    lerp_step,
    negative,
    one_minus,
    pick,
    row_dots,
    scalar_state,
    scale_,
    scaled_eps,
    split_paths,
    sqrt,
    sqrt_,
    tensor_dots,
    total_dots,
)
from ._kernels import Scratch as _Scratch

__all__ = ["TAM", "AdaTAM", "AdaTAMW", "tam", "adatam", "tam_init", "adatam_init",
           "tam_lr_from_sgdm"]

SCOPES = ("global", "tensor")


def tam_lr_from_sgdm(lr_sgdm: float, expected_damping: float = 0.5) -> float:
    r"""A TAM learning rate from an SGD-momentum one. **A heuristic, not the paper's formula.**

    The paper's own transfer rule could not be retrieved. TAM scales each gradient
    by :math:`\epsilon + d_t \in [\epsilon, 1+\epsilon]`, so equalising the steady-state step
    :math:`\eta\,E[d]/(1-\beta)` with SGDM's gives :math:`\eta_{TAM} = \eta_{SGDM} / E[d]`.
    :math:`E[d] \approx 0.5` when gradients and momentum are uncorrelated, so the result lies in
    :math:`[\eta_{SGDM}, 2\eta_{SGDM}]`. Tune with a small sweep around it.

    >>> tam_lr_from_sgdm(0.05)
    0.1
    >>> tam_lr_from_sgdm(0.05, expected_damping=1.0)
    0.05
    """
    lr = check_number(lr_sgdm, "lr_sgdm", 0.0)
    d = check_number(expected_damping, "expected_damping", 0.0, 1.0, low_open=True)
    return lr / d


# ---------------------------------------------------------------------------- kernels


def _couple(blocks: Sequence[Block], foreach: bool | None, ld: int) -> None:
    """Coupled L2: replace each block's gradients by ``g + wd * p`` (new tensors)."""
    for b in blocks:
        wd = b.hp["weight_decay"]
        if not b.hp["decoupled"] and not is_zero(wd):
            b.grads = coupled_grads(b.params, b.grads, wd, foreach, ld)


def _block_dots(b: Block, scope: str, ld: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(<m, g>, |m|^2, |g|^2)`` of one block: sums over its tensors (``scope="global"``) or
    one row per tensor. ``|m|^2`` is taken from ``b.hp["sqnorm"]`` when that holds a valid
    value (TAM's scaled form keeps it up to date, saving a pass over the momentum). A block
    with ``b.hp["moments"]`` (a plan's :class:`~shiftsim.optim._kernels.MomentSums`, global
    scope) sums through it: the same numbers, no lists built."""
    ms, gs = b.bufs["m"], b.grads
    known = b.hp.get("sqnorm")
    known = known[0] if known is not None and known[1] else None
    moments = b.hp.get("moments")
    if moments is not None:
        r = moments(gs, known is None)
    else:
        pairs = [(ms, gs), (gs, gs)] if known is not None else [(ms, gs), (gs, gs), (ms, ms)]
        r = total_dots(pairs, ld) if scope == "global" else \
            tensor_dots(pairs, ld).transpose(0, 1)
    return r[0], (known if known is not None else r[2]), r[1]


def _damping(blocks: Sequence[Block], shat: Tensor, gamma: Scalar, scope: str, ld: int
             ) -> tuple[Tensor, list[tuple[Tensor, Tensor, Tensor]]]:
    """Update the smoothed cosine ``shat`` in place; return the damping ``d = (1+shat)/2`` and
    each block's :func:`_block_dots`.

    ``scope="global"``: ``shat`` has shape () (or (K,)); ``"tensor"``: one row per tensor. The
    first moments are ``b.bufs["m"]``; a block with ``b.hp["scale"]`` (TAM's scaled form) holds
    :math:`m/\\sigma`, and the model-wide sums weight it by :math:`\\sigma` (neither a per-tensor
    cosine nor a one-block one depends on it).
    """
    parts = [_block_dots(b, scope, ld) for b in blocks]
    return _smooth(parts, [b.hp.get("scale") for b in blocks], shat, gamma, scope), parts


def _like(gamma: Scalar, shat: Tensor) -> Scalar:
    """A tensor ``gamma`` in ``shat``'s dtype (the smoothing's lerp weight takes it so)."""
    if isinstance(gamma, Tensor) and gamma.dtype != shat.dtype:
        return gamma.to(shat.dtype)
    return gamma


def _smooth(parts: Sequence[tuple[Tensor, Tensor, Tensor]], scales: Sequence[Tensor | None],
            shat: Tensor, gamma: Scalar, scope: str) -> Tensor:
    """The cosine from the blocks' ``(<m, g>, |m|^2, |g|^2)`` (``scales``: each block's
    :math:`\\sigma`, or None), smoothed into ``shat`` in place; returns the damping."""
    if scope == "global":
        mg, mm, gg = parts[0]
        if len(parts) > 1:
            mg = mm = gg = None
            for s, (a, e, c) in zip(scales, parts):
                if s is not None:
                    a, e = a * s, e * (s * s)
                mg, mm, gg = (a, e, c) if mg is None else (mg + a, mm + e, gg + c)
            assert mg is not None and mm is not None and gg is not None
    else:
        mg, mm, gg = (torch.cat([p[k] for p in parts]) for k in range(3))
    den2 = mm * gg
    cos = torch.where(den2 > 0, mg * den2.rsqrt(), 0.0).clamp_(-1.0, 1.0)
    shat.lerp_(cos, host(one_minus, _like(gamma, shat)))  # gamma * shat + (1 - gamma) * cos
    return shat * 0.5 + 0.5


def _coefs(blocks: Sequence[Block], d: Tensor, scope: str, eps_key: str) -> list[Tensor]:
    """Per block: ``eps + d`` (one tensor; for ``scope="tensor"`` one row per tensor)."""
    out: list[Tensor] = []
    start = 0
    for b in blocks:
        eps = b.hp[eps_key]
        if scope == "global":
            out.append(d + eps)
        else:
            n = len(b.params)
            out.append(d[start:start + n] + eps)
            start += n
    return out


def _per_tensor(c: Tensor, n: int, scope: str) -> list[Tensor]:
    """A block's coefficient as one tensor per parameter tensor."""
    return [c] * n if scope == "global" else list(c.unbind(0))


def _tam_blocks(blocks: Sequence[Block], shat: Tensor, *, gamma: Scalar, scope: str, ld: int,
                foreach: bool | None) -> Tensor:
    r"""TAM over several param groups: one (model-wide) cosine, per-group lr/momentum/decay.

    A block without ``b.hp["scale"]`` holds the momentum :math:`m` itself and is updated as
    :math:`m \leftarrow \beta m + c\,g`, :math:`p \leftarrow p - \eta m` (``c = eps + d``). A
    block with it holds :math:`\tilde m = m/\sigma` and :math:`\sigma` (updated in place):
    :math:`\sigma \leftarrow \beta\sigma + c`, :math:`\tilde m \leftarrow \tilde m +
    (c/\sigma)(g - \tilde m)`, :math:`p \leftarrow p - \eta\sigma\tilde m`, the same update
    with one pass fewer over the momentum (a lerp instead of a scale and an add); the
    tensors of its group that sit this step out (``b.hp["idle"]``, their :math:`\tilde m`) are
    rescaled so that their :math:`m = \sigma\tilde m` stays as it was. A step plan's cached
    pieces are used when a block carries them (``b.hp["moments"]``, ``b.hp["lerp"]``: the
    same numbers, no lists built).
    """
    _couple(blocks, foreach, ld)
    d, parts = _damping(blocks, shat, gamma, scope, ld)
    for b, c, part in zip(blocks, _coefs(blocks, d, scope, "eps"), parts):
        lr, beta, wd = b.hp["lr"], b.hp["momentum"], b.hp["weight_decay"]
        decay = b.hp["decoupled"] and not is_zero(wd)
        P, G, M = b.params, b.grads, b.bufs["m"]
        n = len(P)
        scale = b.hp.get("scale")
        if scale is None:
            fe, loop = split_paths(P, foreach, ld)
            cs = _per_tensor(c, n, scope)
            if fe:
                Pf, Mf = pick(P, fe), pick(M, fe)
                foreach_scale_(Mf, beta, ld)
                foreach_axpy_(Mf, pick(G, fe), pick(cs, fe), ld)
                if decay:
                    foreach_scale_(Pf, host(decay_factor, lr, wd), ld)
                foreach_axpy_(Pf, Mf, host(negative, lr), ld)
            for i in reversed(loop):  # the last tensors of the first pass are in cache
                scale_(M[i], beta, ld)
                axpy_(M[i], G[i], cs[i], ld)
                if decay:
                    scale_(P[i], host(decay_factor, lr, wd), ld)
                axpy_(P[i], M[i], host(negative, lr), ld)
            continue
        sq, eps, idle = b.hp.get("sqnorm"), b.hp["eps"], b.hp.get("idle")
        old = scale.clone() if idle else None
        w, step = _scaled(c, scale, beta, lr, part, None if sq is None else sq[0],
                          _positive(eps))
        shrink = host(decay_factor, lr, wd) if decay else None
        lerp = b.hp.get("lerp")
        if lerp is not None:
            lerp.run(G, w, step, shrink)
        else:
            lerp_step(P, G, M, _per_tensor(w, n, scope), _per_tensor(step, n, scope), shrink,
                      *split_paths(P, foreach, ld), ld)
        if idle:  # keep m = scale * avg of the tensors that sit this step out
            torch._foreach_mul_(idle, torch.where(
                scale > 0, old / torch.where(scale > 0, scale, 1), 1.0))
    return d


def _positive(eps: Scalar) -> bool:
    """Whether every learner's ``eps`` is known to be > 0 (a float, or an :func:`exact`
    tensor's values), so that ``c = eps + d > 0`` and :func:`_scaled` needs no guard (the
    guard would select the same numbers)."""
    vals = exact_values(eps) if isinstance(eps, Tensor) else eps
    return vals is not None and min(vals if isinstance(vals, tuple) else (vals,)) > 0


def _scaled(c: Tensor, scale: Tensor, beta: Scalar, lr: Scalar,
            part: tuple[Tensor, Tensor, Tensor], sqnorm: Tensor | None,
            positive: bool = False) -> tuple[Tensor, Tensor]:
    r"""The scaled form's coefficients: :math:`\sigma \leftarrow \beta\sigma + c` (in
    ``scale``), the lerp weight :math:`w = c/\sigma` and the step :math:`-\eta\sigma`;
    ``sqnorm`` (if given) becomes :math:`\lVert\tilde m_{new}\rVert^2` from the step's sums
    ``part`` = ``(<m, g>, |m|^2, |g|^2)``. ``positive``: ``c > 0`` is certain (a float
    :math:`\epsilon > 0`; the damping is never negative), so :math:`\sigma > 0` needs no
    guard."""
    # (K,) hyperparameters broadcast along the last dimension
    sig = torch.add(c, scale, alpha=beta) if not isinstance(beta, Tensor) else scale * beta + c
    # sig = 0 only if c = 0 and m = 0
    w = c / sig if positive else torch.where(sig > 0, c / sig, 1.0)
    scale.copy_(sig)
    step = sig * host(negative, lr)
    if sqnorm is not None:  # |m_new|^2 for the next step, from this step's three sums:
        mg, mm, gg = part  # ((1 - w) |m|^2 + 2 w <m, g>) (1 - w) + w^2 |g|^2
        kept_sqnorm(sqnorm, 1 - w, w, mg, mm, gg)
    return w, step


def tam(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    smoothed_cosine: Tensor,
    *,
    lr: Scalar,
    momentum: Scalar = 0.9,
    gamma: Scalar = 0.9,
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 0.0,
    decoupled: bool = False,
    scope: str = "global",
    learner_dims: int = 0,
    foreach: bool | None = None,
    momentum_scale: Tensor | None = None,
    momentum_sqnorm: Tensor | None = None,
) -> Tensor:
    r"""Functional TAM step (see :class:`TAM` for the math); updates everything in place.

    ``momentum_buffers`` start as zeros. ``smoothed_cosine`` (:math:`\hat s`, starts at 0) has
    shape ``()`` for ``scope="global"``, ``(len(params),)`` for ``"tensor"``, with a trailing
    ``K`` under ``learner_dims=1``. Hyperparameters are floats or ``(K,)`` tensors.
    Returns the damping :math:`d_t` (shaped like ``smoothed_cosine``).

    ``momentum_scale`` (optional, starts at 0, shaped like ``smoothed_cosine``) selects the
    scaled form :class:`TAM` uses: the buffers then hold :math:`m/\sigma` and
    ``momentum_scale`` :math:`\sigma`, which saves one pass over the momentum per step.
    ``momentum_sqnorm`` (optional, with ``momentum_scale``; starts at 0, shaped like it) holds
    :math:`\lVert m/\sigma\rVert^2`, kept up to date from each step's sums instead of being
    recomputed (one pass fewer again); the caller must not change the buffers in between.

    >>> p, g = torch.zeros(2), torch.tensor([1.0, -1.0])
    >>> m, s = torch.zeros(2), torch.zeros(())
    >>> tam([p], [g], [m], s, lr=0.1)
    tensor(0.5000)
    >>> p
    tensor([-0.0500,  0.0500])
    """
    check_learner_dims(learner_dims)
    check_choice(scope, "scope", SCOPES)
    if not params:
        return (smoothed_cosine + 1) * 0.5
    hp: dict[str, Any] = {"lr": lr, "momentum": momentum, "eps": eps,
                          "weight_decay": weight_decay, "decoupled": decoupled}
    if momentum_scale is not None:
        hp["scale"] = momentum_scale
        if momentum_sqnorm is not None:
            hp["sqnorm"] = (momentum_sqnorm, True)
    block = Block(list(params), list(grads), {"m": list(momentum_buffers)}, hp)
    return _tam_blocks([block], smoothed_cosine, gamma=gamma, scope=scope, ld=learner_dims,
                       foreach=foreach)


def _adatam_size(lr: Scalar, b1: Scalar, b2: Scalar, t: int) -> Scalar:
    """AdaTAM's step factor with bias correction, ``-lr (1 - b1) sqrt(1 - b2^t) / (1 - b1^t)``
    (its momentum sums ``c g`` without the ``1 - b1``)."""
    return -lr * (1 - b1) * sqrt_(1 - b2 ** t) / (1 - b1 ** t)


def _adatam_blocks(blocks: Sequence[Block], shat: Tensor, *, gamma: Scalar, scope: str, ld: int,
                   foreach: bool | None, scratch: _Scratch) -> Tensor:
    """AdaTAM(W) over several param groups; ``b.steps`` holds each tensor's step count."""
    _couple(blocks, foreach, ld)
    d, _ = _damping(blocks, shat, gamma, scope, ld)
    for b, c in zip(blocks, _coefs(blocks, d, scope, "torque_eps")):
        cs = _per_tensor(c, len(b.params), scope)
        _adatam_update(b.params, b.grads, b.bufs["m"], b.bufs["v"], cs, b.hp, b.steps, foreach,
                       ld, scratch)
    return d


def _adatam_update(P: list[Tensor], G: list[Tensor], M: list[Tensor], V: list[Tensor],
                   cs: list[Tensor], hp: dict[str, Any], steps: Sequence[int],
                   foreach: bool | None, ld: int, scratch: _Scratch) -> None:
    """AdaTAM(W)'s moments and parameters after the damping, for one group (``cs``: each
    tensor's ``torque_eps + d``; ``steps``: each tensor's step count)."""
    lr, b1, b2 = hp["lr"], hp["beta1"], hp["beta2"]
    wd, eps = hp["weight_decay"], hp["eps"]
    decay = hp["decoupled"] and not is_zero(wd)
    if hp["bias_correction"]:
        sizes, epss = [], []
        cache: dict[int, tuple[Scalar, Scalar]] = {}
        for t in steps:
            if t not in cache:  # on the host for exact tensors (_kernels.host)
                cache[t] = (host(_adatam_size, lr, b1, b2, t, keep=False),
                            host(scaled_eps, eps, b2, t, keep=False))
            sizes.append(cache[t][0])
            epss.append(cache[t][1])
    else:
        sizes, epss = [host(negative, lr)] * len(P), [eps] * len(P)
    fe, loop = split_paths(P, foreach, ld)
    if fe:
        Pf, Gf, Mf, Vf = pick(P, fe), pick(G, fe), pick(M, fe), pick(V, fe)
        foreach_scale_(Mf, b1, ld)
        foreach_axpy_(Mf, Gf, pick(cs, fe), ld)
        foreach_ema_sq_(Vf, Gf, b2, ld)
        if decay:
            foreach_scale_(Pf, host(decay_factor, lr, wd), ld)
        den = foreach_sqrt(Vf)
        foreach_add_scalar_(den, pick(epss, fe), ld)
        foreach_addcdiv_(Pf, Mf, den, pick(sizes, fe), ld)
    for i in reversed(loop):  # the last tensors of the dots are in cache
        p, g, m, v = P[i], G[i], M[i], V[i]
        scale_(m, b1, ld)
        axpy_(m, g, cs[i], ld)
        den = scratch.get(v, 0)
        ema_sq_(v, g, b2, ld, den)
        if decay:
            scale_(p, host(decay_factor, lr, wd), ld)
        sqrt(v, out=den)
        add_scalar_(den, epss[i], ld)
        addcdiv_(p, m, den, sizes[i], ld)


def adatam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    smoothed_cosine: Tensor,
    *,
    step: int | Sequence[int],
    lr: Scalar,
    beta1: Scalar = 0.9,
    beta2: Scalar = 0.999,
    gamma: Scalar = 0.9,
    torque_eps: Scalar = 1e-8,
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 0.0,
    decoupled: bool = False,
    bias_correction: bool = False,
    scope: str = "global",
    learner_dims: int = 0,
    foreach: bool | None = None,
) -> Tensor:
    r"""Functional AdaTAM / AdaTAMW step (see :class:`AdaTAM`); updates everything in place.

    ``step`` is the step count after this step (starts at 1), one for all tensors or one per
    tensor; it matters only with ``bias_correction=True``. ``decoupled=True`` is AdaTAMW.
    Returns the damping :math:`d_t`.

    >>> p, g = torch.zeros(1), torch.ones(1)
    >>> m, v, s = torch.zeros(1), torch.zeros(1), torch.zeros(())
    >>> adatam([p], [g], [m], [v], s, step=1, lr=1e-3)
    tensor(0.5000)
    >>> round(p.item() / -1e-3, 2)  # 0.5 / sqrt(1 - 0.999)
    15.81
    """
    check_learner_dims(learner_dims)
    check_choice(scope, "scope", SCOPES)
    if not params:
        return (smoothed_cosine + 1) * 0.5
    steps = [step] * len(params) if isinstance(step, int) else list(step)
    block = Block(list(params), list(grads), {"m": list(exp_avgs), "v": list(exp_avg_sqs)},
                  {"lr": lr, "beta1": beta1, "beta2": beta2, "torque_eps": torque_eps,
                   "eps": eps, "weight_decay": weight_decay, "decoupled": decoupled,
                   "bias_correction": bias_correction}, steps)
    return _adatam_blocks([block], smoothed_cosine, gamma=gamma, scope=scope, ld=learner_dims,
                          foreach=foreach, scratch=default_scratch())


# ---------------------------------------------------------------------------- state, stacked


def tam_init(params: list[Tensor], *, scope: str = "global", learner_dims: int = 0,
             scaled: bool = False) -> dict[str, Any]:
    r"""TAM's initial state for ``params`` (with ``learner_dims=1``: K members stacked along
    dimension 0), as :func:`tam` takes it: zero ``momentum_buffers`` (:math:`m_0 = 0`) and the
    smoothed cosine :math:`\hat s_0 = 0` (one per tensor for ``scope="tensor"``).
    ``scaled=True`` adds ``momentum_scale`` and ``momentum_sqnorm`` (zeros shaped like the
    cosine) for :func:`tam`'s scaled form; the buffers then hold :math:`m/\sigma`.

    >>> state = tam_init([torch.zeros(4, 3)], learner_dims=1)
    >>> state["momentum_buffers"][0].shape, state["smoothed_cosine"].shape
    (torch.Size([4, 3]), torch.Size([4]))
    >>> sorted(tam_init([torch.zeros(4, 3)], learner_dims=1, scaled=True))
    ['momentum_buffers', 'momentum_scale', 'momentum_sqnorm', 'smoothed_cosine']
    """
    n = () if scope == "global" else (len(params),)
    state = {"momentum_buffers": [torch.zeros_like(p) for p in params],
             "smoothed_cosine": scalar_state(params[0], *n, ld=learner_dims)}
    if scaled:
        state["momentum_scale"] = torch.zeros_like(state["smoothed_cosine"])
        state["momentum_sqnorm"] = torch.zeros_like(state["smoothed_cosine"])
    return state


def _zero_momenta(params: list[Tensor]) -> list[Tensor]:
    """The momentum buffers of :func:`tam_init` alone (what TAM's class stores as
    ``momentum_avg``: at :math:`m_0 = 0` the scaled and the plain form agree); empty for no
    parameters."""
    return tam_init(params)["momentum_buffers"] if params else []


def adatam_init(params: list[Tensor], *, scope: str = "global", learner_dims: int = 0
                ) -> dict[str, Any]:
    """AdaTAM's initial state for ``params``, as :func:`adatam` takes it (the class keeps the
    per-tensor entries per parameter): step 0, zero moments ``exp_avg``, ``exp_avg_sq`` and
    the smoothed cosine."""
    state = tam_init(params, scope=scope, learner_dims=learner_dims)
    return {"step": 0, "exp_avg": state["momentum_buffers"],
            "exp_avg_sq": [torch.zeros_like(p) for p in params],
            "smoothed_cosine": state["smoothed_cosine"]}


def _torque_diagnostics(d: Tensor, shat: Tensor, scope: str) -> list[Tensor]:
    """The per-member ``damping`` and ``cosine`` (means over tensors for ``scope="tensor"``)."""
    return [d, shat] if scope == "global" else [d.mean(0), shat.mean(0)]


def _tam_stacked_init(params: list[Tensor], hp: Hyper, flags: dict[str, Any]) -> dict[str, Any]:
    r"""The fleet's TAM state: the scaled form (:func:`tam`'s ``momentum_scale``, with the kept
    :math:`\lVert\tilde m\rVert^2`) for a model-wide cosine, the plain momentum per tensor
    otherwise."""
    return tam_init(params, scope=flags["scope"], learner_dims=1,
                    scaled=flags["scope"] == "global")


def _tam_stacked(state: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                 loss: Tensor, hp: Hyper, flags: dict[str, Any]) -> list[Tensor]:
    shat, scope = state["smoothed_cosine"], flags["scope"]
    scale = state.get("momentum_scale")
    if scale is not None and (flags.get("rows") or len(params) == 1):
        d = _tam_rows(params, grads, state["momentum_buffers"], shat, scale,
                      state["momentum_sqnorm"], hp, flags["decoupled"])
    else:
        d = tam(params, grads, state["momentum_buffers"], shat, lr=hp["lr"],
                momentum=hp["momentum"], gamma=hp["gamma"], eps=hp["eps"],
                weight_decay=hp["weight_decay"], decoupled=flags["decoupled"], scope=scope,
                learner_dims=1, foreach=flags.get("foreach"), momentum_scale=scale,
                momentum_sqnorm=state.get("momentum_sqnorm"))
    return _torque_diagnostics(d, shat, scope)


def _tam_rows(P: list[Tensor], G: list[Tensor], M: list[Tensor], shat: Tensor, scale: Tensor,
              sqnorm: Tensor, hp: Hyper, decoupled: bool) -> Tensor:
    r"""A fleet's TAM step in the scaled form, each member's parameters one row: row ``k`` of
    the segments ``P`` (``(K, n_s)`` tensors, :func:`~shiftsim.optim._kernels.rows`) one after
    another. The numbers of :func:`tam` with ``momentum_scale`` and ``momentum_sqnorm`` (a
    model-wide cosine, ``learner_dims=1``) without its blocks, bit for bit with torch's row
    sums (``SHIFTSIM_NATIVE=0``), up to rounding with the native ones (:func:`row_dots`); the
    same bits however the rows are split into segments. With the native code, the per-member
    numbers and the update's pass are native too (:func:`~shiftsim.optim._native.tam_coefs`,
    :func:`~shiftsim.optim._native.tam_update`: torch's bits), all three in one call where
    it applies (:func:`~shiftsim.optim._native.tam_step`, member by member: the same bits).
    [speed] With torch's row sums, against the plain momentum the fleet stepped before, it
    reads the momentum twice less per step (no :math:`\lVert m\rVert^2` pass, a lerp
    instead of a scale and an add) for a few more ``(K,)``-sized operations, and without the
    generic kernel's lists the step makes fewer operations than before: one thread,
    in-process toggle, the TAM group of a single run (a 64-unit digits MLP) 0.21 -> 0.14 ms a
    step, 130 members 1.75 -> 1.32 ms (measured with one segment, before the fleet kept each
    parameter in its own block)."""
    lr, beta, eps, wd = hp["lr"], hp["momentum"], hp["eps"], hp["weight_decay"]
    decay = not is_zero(wd)
    if decay and not decoupled:
        G = foreach_add_decay(P, G, wd, 1)
    gamma = _like(hp["gamma"], shat)
    shrink = host(decay_factor, lr, wd) if decay and decoupled else None
    # the whole step in one native call (the three below, member by member: the same bits)
    whole = _native.tam_step(P, G, M, sqnorm, shat, scale, host(one_minus, gamma), eps, beta,
                             host(negative, lr), _positive(eps), shrink)
    if whole is not None:
        return whole[0]
    mg, gg = row_dots((M, G), ((0, 1), (1, 1)))
    # the per-member numbers in one native call (torch's bits), else torch's operations
    coefs = _native.tam_coefs(mg, gg, sqnorm, shat, scale, host(one_minus, gamma), eps, beta,
                              host(negative, lr), _positive(eps))
    if coefs is not None:
        d, w, step = coefs
    else:
        part = (mg, sqnorm, gg)  # |m|^2 kept; the cosine does not depend on the scale
        d = _smooth([part], [scale], shat, gamma, "global")
        w, step = _scaled(d + eps, scale, beta, lr, part, sqnorm, _positive(eps))
    if _native.tam_update(P, G, M, w, step, shrink):  # one pass, torch's bits
        return d
    w_col = w.view(-1, 1)
    torch._foreach_lerp_(M, G, [w_col] * len(M))
    if shrink is not None:
        foreach_scale_(P, shrink, 1)
    step_col = step.view(-1, 1)
    torch._foreach_addcmul_(P, M, [step_col] * len(P))
    return d


def _global_scope(flags: dict[str, Any]) -> bool:
    """A model-wide cosine (``scope="global"``) does not depend on the tensor split."""
    return flags.get("scope", "global") == "global"


def _adatam_rows(P: list[Tensor], G: list[Tensor], M: list[Tensor], V: list[Tensor],
                 shat: Tensor, step: int, hp: Hyper, decoupled: bool, flags: dict[str, Any]
                 ) -> Tensor:
    """A fleet's AdaTAM(W) step with a model-wide cosine, each member's parameters one row of
    the segments ``P`` (as :func:`_tam_rows`): the numbers of :func:`adatam`
    (``learner_dims=1``) without its blocks, bit for bit with torch's row sums
    (``SHIFTSIM_NATIVE=0``), up to rounding with the native ones (:func:`row_dots`). [speed]
    One thread, in-process toggle, the same traces (torch's row sums, before the native ones
    and with one segment): the AdaTAM group of a single run (a 64-unit digits MLP) 0.26 ->
    0.21 ms a step (the run 0.89x), 5 members 0.33 -> 0.28, 130 members 2.56 -> 2.39 ms. With
    the native code, the whole step is one call where it applies
    (:func:`~shiftsim.optim._native.adatam_step`: the same bits as the torch operations here;
    the AdaTAM(W) groups of a 130-member league-like fleet 1.055 -> 0.248 ms a step)."""
    wd = hp["weight_decay"]
    if not decoupled and not is_zero(wd):
        G = coupled_grads(P, G, wd, flags.get("foreach"), 1)
    d = _adatam_native(P, G, M, V, shat, step, hp, decoupled, flags)
    if d is not None:
        return d
    scratch = default_scratch()
    d = _smooth([row_dots((M, G), ((0, 1), (0, 0), (1, 1)))],
                [None], shat, hp["gamma"], "global")
    c = d + hp["torque_eps"]
    group = {**hp, "decoupled": decoupled, "bias_correction": flags["bias_correction"]}
    _adatam_update(P, G, M, V, [c] * len(P), group, [step] * len(P), flags.get("foreach"), 1,
                   scratch)
    return d


def _adatam_native(P: list[Tensor], G: list[Tensor], M: list[Tensor], V: list[Tensor],
                   shat: Tensor, step: int, hp: Hyper, decoupled: bool, flags: dict[str, Any]
                   ) -> Tensor | None:
    """:func:`_adatam_rows`'s step in one native call
    (:func:`~shiftsim.optim._native.adatam_step`, the numbers of its torch operations), with
    the coefficients :func:`_adatam_update` takes; None where it does not apply."""
    if not _native.available():
        return None
    lr, b1, b2, eps = hp["lr"], hp["beta1"], hp["beta2"], hp["eps"]
    gamma = _like(hp["gamma"], shat)
    if flags["bias_correction"]:
        size = host(_adatam_size, lr, b1, b2, step, keep=False)
        eps = host(scaled_eps, eps, b2, step, keep=False)
    else:
        size = host(negative, lr)
    wd = hp["weight_decay"]
    shrink = host(decay_factor, lr, wd) if decoupled and not is_zero(wd) else None
    return _native.adatam_step(P, G, M, V, shat, host(one_minus, gamma), hp["torque_eps"], b1,
                               b2, host(one_minus, b2), eps, size, shrink)


def _adatam_stacked(decoupled: bool) -> Stacked:
    def update(state: dict[str, Any], params: list[Tensor], grads: list[Tensor], loss: Tensor,
               hp: Hyper, flags: dict[str, Any]) -> list[Tensor]:
        state["step"] += 1
        shat, scope = state["smoothed_cosine"], flags["scope"]
        if scope == "global" and (flags.get("rows") or len(params) == 1):
            d = _adatam_rows(params, grads, state["exp_avg"], state["exp_avg_sq"],
                             shat, state["step"], hp, decoupled, flags)
            return [d, shat]
        d = adatam(params, grads, state["exp_avg"], state["exp_avg_sq"], shat,
                   step=state["step"], lr=hp["lr"], beta1=hp["beta1"], beta2=hp["beta2"],
                   gamma=hp["gamma"], torque_eps=hp["torque_eps"], eps=hp["eps"],
                   weight_decay=hp["weight_decay"], decoupled=decoupled,
                   bias_correction=flags["bias_correction"], scope=scope, learner_dims=1,
                   foreach=flags.get("foreach"))
        return _torque_diagnostics(d, shat, scope)

    return Stacked(lambda params, hp, flags: adatam_init(params, scope=flags["scope"],
                                                         learner_dims=1),
                   update, lambda flags: ("damping", "cosine"), flat=_global_scope)


# ---------------------------------------------------------------------------- classes


class _TorqueBase(ShiftsimOptimizer):
    diagnostic_keys = ("damping", "cosine")
    shared_hparams = ("gamma", "scope")

    def _init_global(self, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        st = super()._init_global(device, dtype)
        st["damping"] = torch.full((), 0.5, device=device, dtype=dtype)
        return st

    def _cosine_state(self, params: list[Tensor], scope: str, glob: dict[str, Any]) -> Tensor:
        if scope == "global":
            return glob["cosine"]
        return torch.stack([self.state[p]["cosine"] for p in params])

    def _store_cosine(self, params: list[Tensor], scope: str, glob: dict[str, Any],
                      shat: Tensor, d: Tensor) -> None:
        if scope == "global":
            glob["damping"] = d
            return
        for p, row in zip(params, shat.unbind(0)):
            self.state[p]["cosine"] = row
        glob["cosine"] = shat.mean(0)
        glob["damping"] = d.mean(0)

    def _new_cosine(self, p: Tensor) -> Tensor:
        return torch.zeros((), device=p.device, dtype=acc_dtype(p.dtype))


class TAM(_TorqueBase):
    r"""Torque-Aware Momentum (Malviya et al. 2024, arXiv:2412.18790): heavy-ball SGD whose
    gradient is damped by its agreement with the momentum.

    .. math::

        S_t &= \operatorname{clip}_{[-1,1]}\,\langle m_{t-1}, g_t\rangle /
               (\lVert m_{t-1}\rVert\,\lVert g_t\rVert), \qquad S_t = 0 \text{ if a norm is 0}\\
        \hat s_t &= \gamma\,\hat s_{t-1} + (1-\gamma)\,S_t, \qquad d_t = (1+\hat s_t)/2\\
        m_t &= \beta\,m_{t-1} + (\epsilon + d_t)\,g_t, \qquad
        \theta_{t+1} = \theta_t - \eta\,m_t

    with :math:`m_0 = 0`, :math:`\hat s_0 = 0` [ours], so the first step is
    :math:`(\epsilon+\frac12)\,\eta\,g_1`. With :math:`d \equiv 1, \epsilon = 0` it would
    be ``torch.optim.SGD(momentum=β)``.

    Args:
        params: parameters or param groups.
        lr: :math:`\eta` (no default in the paper; see :func:`tam_lr_from_sgdm`, a heuristic).
        momentum: :math:`\beta`, in [0, 1) (as ``torch.optim.SGD``: at 1 the momentum never
            forgets a gradient).
        gamma: :math:`\gamma`, smoothing of the cosine (shared by all groups).
        eps: :math:`\epsilon`, keeps a fully opposed gradient (:math:`d = 0`) in the momentum.
        weight_decay: :math:`\lambda`. [ours] coupled L2, :math:`g \leftarrow g + \lambda\theta`
            before the cosine (as ``torch.optim.SGD``); with ``decoupled=True``
            :math:`\theta \leftarrow (1-\eta\lambda)\theta` before the step.
        scope: ``"global"`` [paper]: one model-wide cosine over every parameter with a gradient
            (all groups); ``"tensor"`` [ours]: one cosine per parameter tensor.
        foreach: multi-tensor ops (True), tensor by tensor (False), or chosen per tensor (None).
        compile: ``"auto"``, True or False: take the step with a compiled kernel
            (:mod:`~shiftsim.optim._compiled`: the policy, the fallback); it covers
            ``scope="global"``, one param group whose parameters all have a gradient, float
            hyperparameters. On a CPU its two passes are shiftsim's C code
            (``tensorsteps.c``: nothing compiled per shape), elsewhere ``torch.compile``'s.

    State: [ours] the momentum is kept scaled, :math:`m = \sigma\tilde m` with
    :math:`\sigma_t = \beta\sigma_{t-1} + \epsilon + d_t` (:math:`\sigma_0 = 0`), so that
    :math:`\tilde m_t = \tilde m_{t-1} + \frac{\epsilon + d_t}{\sigma_t}(g_t - \tilde m_{t-1})`
    is one lerp and :math:`\theta \leftarrow \theta - \eta\sigma_t\tilde m_t` one addcmul:
    the same update as above with one pass fewer over the momentum (equal up to rounding).
    ``state[p]["momentum_avg"]`` is :math:`\tilde m`; :math:`\sigma` is one scalar per param
    group (``state["global"]["momentum_scale"]``) or, with ``scope="tensor"``, per tensor
    (``state[p]["momentum_scale"]``); :meth:`momentum_buffer` returns :math:`m`.
    :math:`\lVert\tilde m\rVert^2` is carried too (``momentum_sqnorm``), updated from each
    step's sums instead of re-reading :math:`\tilde m` (recomputed when the set of tensors
    with a gradient changes).
    ``state["global"]`` also holds ``cosine`` (:math:`\hat s`) and ``damping``
    (:math:`d_t`; per-tensor cosines live in the parameters' state with ``scope="tensor"``,
    and ``global`` holds their means). ``diagnostics()``: ``damping``, ``cosine``.

    Differences from ``pytorch_optimizer.TAM`` [code]: it aligns per element along dim 0 (not a
    cosine), starts at :math:`m_0 = g_1`, and applies weight decay after the momentum update
    (its coupled mode never reaches the step).

    >>> w = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    >>> opt = TAM([w], lr=0.01)
    >>> for _ in range(3):
    ...     opt.zero_grad()
    ...     (0.5 * (w[0] ** 2 + 10 * w[1] ** 2)).backward()
    ...     opt.step()
    >>> [round(v, 4) for v in w.tolist()], round(opt.diagnostics()["damping"].item(), 4)
    ([0.9702, 0.7145], 0.595)
    """

    #: the fleet steps stacked members in :func:`tam`'s scaled form with a model-wide cosine
    #: (:func:`_tam_rows` when the members' parameters are one row each), with the momentum
    #: held unscaled for ``scope="tensor"``
    stacked = Stacked(_tam_stacked_init, _tam_stacked, lambda flags: ("damping", "cosine"),
                      flat=_global_scope)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        gamma: float = 0.9,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled: bool = False,
        scope: str = "global",
        foreach: bool | None = None,
        compile: bool | str = "auto",
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, gamma=gamma, eps=eps,
                        weight_decay=weight_decay, decoupled=decoupled, scope=scope,
                        foreach=foreach, compile=compile)
        self._check_group(defaults)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_number(group["lr"], "lr", 0.0)
        check_number(group["momentum"], "momentum", 0.0, 1.0, high_open=True)
        check_number(group["gamma"], "gamma", 0.0, 1.0)
        check_number(group["eps"], "eps", 0.0)
        check_number(group["weight_decay"], "weight_decay", 0.0)
        check_choice(group["scope"], "scope", SCOPES)
        check_foreach(group["foreach"])
        check_bool(group["decoupled"], "decoupled")
        _compiled.check_compile(group.get("compile", "auto"))

    #: take ``scope="global"`` steps with the cached plan (tests compare it with the general
    #: path by switching it off)
    _planned = True

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One TAM step; ``closure`` (optional) re-evaluates the model and returns the loss."""
        loss = eval_closure(closure)
        glob_scope = self.param_groups[0]["scope"] == "global"
        if glob_scope and self._compiled_step():
            return loss
        if not (self._planned and glob_scope and self._planned_step()):
            self._general_step()
        return loss

    def _compiled_step(self) -> bool:
        """The step through the compiled kernel (:func:`~shiftsim.optim._compiled.tam_step`)
        when it covers it and the compile policy wants it; False: the eager kernels take it."""
        if len(self.param_groups) != 1:
            return False
        group = self.param_groups[0]
        ps = group["params"]
        hp = (group["lr"], group["momentum"], group["gamma"], group["eps"],
              group["weight_decay"])
        if not ps or any(isinstance(x, Tensor) for x in hp):
            return False
        gs = [p.grad for p in ps]
        if any(g is None or g.is_sparse for g in gs):
            return False
        comp = self._compiled_kernel(_compiled.tam_step)
        if not comp.wanted(ps):
            return False
        new = [p for p in ps if not self.state[p]]
        for p, m in zip(new, _zero_momenta(new)):
            self.state[p]["momentum_avg"] = m
        glob = self._global()
        lr, beta, gamma, eps, wd = hp
        sq, _ = self._kept_norm(glob, 0, tuple(range(len(ps))))
        scalars = self.__dict__.get("_scalars") or self.__dict__.setdefault(
            "_scalars", _compiled.Scalars())
        h = scalars((lr, beta, 1 - gamma, eps, wd), ps[0])
        scale = self._group_scale(glob, 0)
        ms = [self.state[p]["momentum_avg"] for p in ps]
        coupled, decoupled = wd != 0 and not group["decoupled"], wd != 0 and group["decoupled"]
        if ps[0].is_cpu:  # on a CPU the native step, where it applies (_compiled's notes)
            d = _compiled.tam_step_native(ps, gs, ms, scale, glob["cosine"], sq, h, coupled,
                                          decoupled, eps > 0, lr=lr, wd=wd)
            if d is not None:
                glob["damping"] = d
                return True
        out = comp.run(ps, ps, gs, ms, scale, glob["cosine"], h, coupled, decoupled, eps > 0)
        if out is _compiled.EAGER:
            return False
        glob["damping"], shat, sig, sqnorm = out
        glob["cosine"].copy_(shat)
        scale.copy_(sig)
        sq.copy_(sqnorm)
        return True

    def _planned_step(self) -> bool:
        """A ``scope="global"`` step with the cached plan (see the module notes of
        :mod:`shiftsim.optim._base`): :func:`_tam_blocks` on blocks kept from step to step,
        without rebuilding lists, dicts and reduction stacks. False: the general path must take
        it (tensor-valued hyperparameters, float16 or non-contiguous parameters)."""
        plan, grads = self._plan_for_step(("lr", "momentum", "eps", "weight_decay"))
        if plan is None:
            return False
        if not plan.blocks:
            return True
        first = self.param_groups[0]
        foreach = first["foreach"]
        blocks = []
        for b in plan.blocks:
            blk, x = b.extra["block"], b.extra
            blk.grads = grads[b.j]
            # the kept norm is this block's only while no other step (the native one, the
            # general path) kept it for other members since: _kept_norm checks, every step
            _, same = self._kept_norm(plan.glob, b.j, b.members)
            blk.hp.update(self._block_hp(b.group), sqnorm=(x["sqnorm"], x["valid"] and same),
                          lerp=b.lerp_step(foreach, "momentum_avg"))
            x["valid"] = True
            blocks.append(blk)
        glob = plan.glob
        glob["damping"] = _tam_blocks(blocks, glob["cosine"], gamma=first["gamma"],
                                      scope="global", ld=0, foreach=foreach)
        return True

    @staticmethod
    def _block_hp(group: dict[str, Any]) -> dict[str, Any]:
        return {"lr": group["lr"], "momentum": group["momentum"], "eps": group["eps"],
                "weight_decay": group["weight_decay"], "decoupled": group["decoupled"]}

    def _build_plan(self, key: tuple) -> Plan:
        """The plan for the parameters that have a gradient now (their state created), with
        one :class:`~shiftsim.optim._kernels.Block` per group kept from step to step."""
        plan = self._plan_blocks(key, "momentum_avg", _zero_momenta)
        for b in plan.blocks:
            sq, valid = self._kept_norm(plan.glob, b.j, b.members)
            live = set(map(id, b.params))
            idle = [self.state[q]["momentum_avg"] for q in b.group["params"]
                    if id(q) not in live and self.state.get(q)]
            b.extra.update(sqnorm=sq, valid=valid, block=Block(
                b.params, [], {"m": b.bufs["momentum_avg"]}, {
                    "scale": self._group_scale(plan.glob, b.j), "idle": idle,
                    "moments": b.moments("momentum_avg")}))
        return plan

    def _general_step(self) -> None:
        """The step through :func:`_tam_blocks` (any scope, any hyperparameter type)."""
        scope = self.param_groups[0]["scope"]
        glob: dict[str, Any] | None = None
        blocks, all_params = [], []
        for j, group in enumerate(self.param_groups):
            ps, gs, idle, pos = [], [], [], []
            for k, p in enumerate(group["params"]):
                if p.grad is None:
                    st = self.state.get(p)
                    if st:
                        idle.append(st["momentum_avg"])
                    continue
                gs.append(check_grad(p, "TAM"))
                ps.append(p)
                pos.append(k)
            if not ps:
                continue
            new = [p for p in ps if not self.state[p]]
            for p, m in zip(new, _zero_momenta(new)):
                st = self.state[p]
                st["momentum_avg"] = m
                if scope == "tensor":
                    st["cosine"] = self._new_cosine(p)
                    st["momentum_scale"] = self._new_cosine(p)
                    st["momentum_sqnorm"] = self._new_cosine(p)
            if glob is None:
                glob = self._global()
            hp = self._block_hp(group)
            if scope == "global":
                hp["scale"] = self._group_scale(glob, j)
                hp["sqnorm"] = self._kept_norm(glob, j, tuple(pos))
                hp["idle"] = idle
            else:
                hp["scale"] = torch.stack([self.state[p]["momentum_scale"] for p in ps])
                hp["sqnorm"] = (torch.stack([self.state[p]["momentum_sqnorm"] for p in ps]),
                                True)
            blocks.append(Block(ps, gs, {"m": [self.state[p]["momentum_avg"] for p in ps]},
                                hp))
            all_params += ps
        if glob is None:
            return
        shat = self._cosine_state(all_params, scope, glob)
        d = _tam_blocks(blocks, shat, gamma=self.param_groups[0]["gamma"], scope=scope, ld=0,
                        foreach=self.param_groups[0]["foreach"])
        self._store_cosine(all_params, scope, glob, shat, d)
        if scope == "tensor":
            for b in blocks:
                for p, sc, sq in zip(b.params, b.hp["scale"].unbind(0),
                                     b.hp["sqnorm"][0].unbind(0)):
                    self.state[p]["momentum_scale"] = sc
                    self.state[p]["momentum_sqnorm"] = sq

    def _group_scale(self, glob: dict[str, Any], j: int) -> Tensor:
        """Group ``j``'s momentum scale :math:`\\sigma`."""
        scales = glob["momentum_scale"]
        while len(scales) <= j:
            scales.append(torch.zeros_like(glob["cosine"]))
        return scales[j]

    def _init_global(self, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        st = super()._init_global(device, dtype)
        st["momentum_scale"] = []
        return st

    @torch.no_grad()
    def momentum_buffer(self, p: Tensor) -> Tensor | None:
        r"""The momentum :math:`m` of parameter ``p`` (a new tensor), or None before its first
        step. TAM stores it as ``state[p]["momentum_avg"]`` :math:`\tilde m` times a scale
        :math:`\sigma` (see the class notes).

        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> opt = TAM([w], lr=0.1, eps=0.0)
        >>> w.grad = torch.tensor([1.0, 2.0])
        >>> opt.step()
        >>> opt.momentum_buffer(w)  # (0 + d_1) g_1 with d_1 = 1/2
        tensor([0.5000, 1.0000])
        """
        st = self.state.get(p)
        if not st:
            return None
        if "momentum_scale" in st:
            scale = st["momentum_scale"]
        else:
            j = next(j for j, g in enumerate(self.param_groups)
                     if any(q is p for q in g["params"]))
            scale = self._group_scale(self.state["global"], j)
        return st["momentum_avg"] * scale.to(p.dtype)


def _foreach_of(active: list[tuple[dict[str, Any], list[Tensor], list[Tensor]]]) -> bool | None:
    """The groups' ``foreach`` setting (the first group's; per-group values are rare)."""
    return active[0][0].get("foreach")


class AdaTAM(_TorqueBase):
    r"""AdaTAM (Malviya et al. 2024, arXiv:2412.18790): Adam whose first moment is
    torque-damped, with coupled (L2) weight decay. :class:`AdaTAMW` decouples it.

    .. math::

        g_t &\leftarrow g_t + \lambda\theta_t \quad\text{(AdaTAM; AdaTAMW instead does }
              \theta_t \leftarrow (1-\eta\lambda)\theta_t)\\
        d_t &= (1 + \hat s_t)/2 \quad\text{(as in } \textit{TAM}\text{, from } m_{t-1}, g_t)\\
        m_t &= \beta_1 m_{t-1} + (\epsilon_\tau + d_t)\,g_t \qquad\text{(not an EMA)}\\
        v_t &= \beta_2 v_{t-1} + (1-\beta_2)\,g_t^2\\
        \theta_{t+1} &= \theta_t - \eta\,m_t / (\sqrt{v_t} + \epsilon)

    [paper via 3rd] no EMA on :math:`m`, no bias correction, :math:`m_0 = v_0 = 0`: the first
    step is :math:`\approx 15.8\,\eta\,\mathrm{sign}(g)` for :math:`\beta_2 = 0.999` and the
    steady step about :math:`E[d]/(1-\beta_1) \approx 5\times` Adam's, so use a smaller lr than
    Adam or a warm-up. ``bias_correction=True`` [ours, opt-in] uses
    :math:`\eta\,\frac{1-\beta_1}{1-\beta_1^t}\,m_t / (\sqrt{v_t/(1-\beta_2^t)} + \epsilon)`.

    Args:
        lr, betas: :math:`\eta`, :math:`(\beta_1, \beta_2)`.
        gamma: cosine smoothing (shared by all groups).
        torque_eps: :math:`\epsilon_\tau`, added to :math:`d_t`.
        eps: :math:`\epsilon`, in the denominator (pytorch-optimizer uses one eps for both).
        weight_decay: :math:`\lambda` (AdaTAM: coupled; AdaTAMW: decoupled).
        bias_correction: see above.
        scope: ``"global"`` [paper] or ``"tensor"`` [ours], as in :class:`TAM`.
        foreach: as in :class:`TAM`.
        compile: as in :class:`TAM` (covers ``scope="global"``, one param group with a
            gradient, float hyperparameters).

    State: ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`), ``step`` per parameter;
    ``state["global"]``: ``cosine``, ``damping``. ``diagnostics()``: ``damping``, ``cosine``.

    ``pytorch_optimizer.AdaTAM`` aligns per element along dim 0; it equals this class exactly
    only for a model with one one-element parameter and ``torque_eps == eps``.

    >>> w = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    >>> opt = AdaTAM([w], lr=1e-3)
    >>> for _ in range(3):
    ...     opt.zero_grad()
    ...     (0.5 * (w[0] ** 2 + 10 * w[1] ** 2)).backward()
    ...     opt.step()
    >>> round(w[0].item(), 5), round(opt.diagnostics()["damping"].item(), 4)
    (0.9346, 0.595)
    """

    _decoupled = False
    stacked = _adatam_stacked(decoupled=False)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        gamma: float = 0.9,
        torque_eps: float = 1e-8,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        bias_correction: bool = False,
        scope: str = "global",
        foreach: bool | None = None,
        compile: bool | str = "auto",
    ) -> None:
        defaults = dict(lr=lr, betas=betas, gamma=gamma, torque_eps=torque_eps, eps=eps,
                        weight_decay=weight_decay, bias_correction=bias_correction,
                        scope=scope, foreach=foreach, compile=compile)
        self._check_group(defaults)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_number(group["lr"], "lr", 0.0)
        check_betas(group["betas"])
        check_number(group["gamma"], "gamma", 0.0, 1.0)
        check_number(group["torque_eps"], "torque_eps", 0.0)
        check_number(group["eps"], "eps", 0.0)
        check_number(group["weight_decay"], "weight_decay", 0.0)
        check_choice(group["scope"], "scope", SCOPES)
        check_foreach(group["foreach"])
        check_bool(group["bias_correction"], "bias_correction")
        _compiled.check_compile(group.get("compile", "auto"))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One AdaTAM step; ``closure`` (optional) re-evaluates the model and returns the loss."""
        loss = eval_closure(closure)
        active = self._active()
        if not active:
            return loss
        glob = self._global()
        first = self.param_groups[0]
        scope = first["scope"]
        if scope == "global" and len(active) == 1 and self._compiled_step(*active[0], glob):
            return loss
        blocks, all_params = [], []
        for group, ps, gs in active:
            ms, vs, steps = [], [], []
            for p in self._fill_state(ps, adatam_init, ("exp_avg", "exp_avg_sq", "step")):
                if scope == "tensor":
                    self.state[p]["cosine"] = self._new_cosine(p)
            for p in ps:
                st = self.state[p]
                st["step"] += 1
                ms.append(st["exp_avg"])
                vs.append(st["exp_avg_sq"])
                steps.append(st["step"])
            all_params += ps
            b1, b2 = group["betas"]
            blocks.append(Block(ps, gs, {"m": ms, "v": vs}, {
                "lr": group["lr"], "beta1": b1, "beta2": b2, "torque_eps": group["torque_eps"],
                "eps": group["eps"], "weight_decay": group["weight_decay"],
                "decoupled": self._decoupled, "bias_correction": group["bias_correction"]},
                steps))
        shat = self._cosine_state(all_params, scope, glob)
        d = _adatam_blocks(blocks, shat, gamma=first["gamma"], scope=scope, ld=0,
                           foreach=_foreach_of(active), scratch=self.scratch)
        self._store_cosine(all_params, scope, glob, shat, d)
        return loss


    def _compiled_step(self, group: dict[str, Any], ps: list[Tensor], gs: list[Tensor],
                       glob: dict[str, Any]) -> bool:
        """The step through the compiled kernel (:func:`~shiftsim.optim._compiled.adatam_step`)
        when it covers it and the compile policy wants it; False: the eager kernels take it."""
        lr, (b1, b2), wd = group["lr"], group["betas"], group["weight_decay"]
        teps, eps, gamma = group["torque_eps"], group["eps"], group["gamma"]
        if any(isinstance(x, Tensor) for x in (lr, b1, b2, wd, teps, eps, gamma)):
            return False
        comp = self._compiled_kernel(_compiled.adatam_step)
        if not comp.wanted(ps):
            return False
        self._fill_state(ps, adatam_init, ("exp_avg", "exp_avg_sq", "step"))
        sts = [self.state[p] for p in ps]
        t = sts[0]["step"] + 1
        if any(st["step"] + 1 != t for st in sts):
            return False
        if group["bias_correction"]:
            bc1, bc2 = 1 - b1 ** t, (1 - b2 ** t) ** 0.5
            size, eps_t = -lr * (1 - b1) * bc2 / bc1, eps * bc2
        else:
            size, eps_t = -lr, eps
        scalars = self.__dict__.get("_scalars") or self.__dict__.setdefault(
            "_scalars", _compiled.Scalars())
        h = scalars((size, b1, b2, 1 - gamma, teps, eps_t, wd, lr), ps[0])
        ms, vs = [st["exp_avg"] for st in sts], [st["exp_avg_sq"] for st in sts]
        coupled, decoupled = wd != 0 and not self._decoupled, wd != 0 and self._decoupled
        d = None
        if ps[0].is_cpu:  # on a CPU the native step, where it applies (_compiled's notes)
            d = _compiled.adatam_step_native(ps, gs, ms, vs, glob["cosine"], h, coupled,
                                             decoupled, size=size, beta1=b1, beta2=b2,
                                             eps=eps_t, lr=lr, wd=wd)
        if d is None:
            out = comp.run(ps, ps, gs, ms, vs, glob["cosine"], h, coupled, decoupled)
            if out is _compiled.EAGER:
                return False
            d, shat = out
            glob["cosine"].copy_(shat)
        for st in sts:
            st["step"] = t
        glob["damping"] = d
        return True


class AdaTAMW(AdaTAM):
    r"""AdaTAMW: :class:`AdaTAM` with decoupled (AdamW-style) weight decay [ours/3rd]:
    :math:`\theta_t \leftarrow (1-\eta\lambda)\theta_t` before the step; the cosine, :math:`m`
    and :math:`v` use the raw gradient. Same arguments, state and diagnostics as
    :class:`AdaTAM`; with ``weight_decay=0`` the two are identical.

    >>> w = torch.nn.Parameter(torch.ones(3))
    >>> opt = AdaTAMW([w], lr=1e-3, weight_decay=0.1)
    >>> w.grad = torch.ones(3)
    >>> opt.step()
    >>> round(w[0].item(), 6)  # (1 - 1e-4) - 1e-3 * 0.5 / sqrt(1e-3)
    0.984089
    """

    _decoupled = True
    stacked = _adatam_stacked(decoupled=True)

