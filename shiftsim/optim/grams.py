r"""Grams: gradient descent with adaptive momentum scaling (Cao et al. 2024, arXiv:2412.17107).

The direction of each coordinate's step comes from the *current* gradient's sign, its size from
Adam's bias-corrected, normalised momentum:

.. math::

    m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2\\
    u_t &= \frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon}, \qquad
    \hat u_t = \mathrm{sign}(g_t)\,\lvert u_t\rvert\\
    \theta_t &= \theta_{t-1} - \eta\,(\hat u_t + \lambda\,\theta_{t-1})

* [paper] the update :math:`\hat u`; where Adam's :math:`u` and :math:`g` disagree in sign,
  Grams follows :math:`g` (Cautious-Adam would mask the coordinate). :math:`\mathrm{sign}(0)=0`:
  a coordinate whose current gradient is exactly 0 does not move, whatever its momentum.
* [code] decoupled weight decay, as both public implementations.
* ``eps_mode="paper"`` puts :math:`\epsilon` after the bias correction, as above (and as
  ``pytorch_optimizer.Grams``); ``eps_mode="official"`` reproduces grams-pytorch:
  :math:`\eta\,\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\,\mathrm{sign}(g)\lvert m\rvert /
  (\sqrt{v}+\epsilon)`, i.e. an effective :math:`\epsilon/\sqrt{1-\beta_2^t}` — without
  overwriting ``p.grad`` as grams-pytorch does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from . import _compiled, _native
from ._base import Hyper, ShiftsimOptimizer, Stacked, always, eval_closure
from ._kernels import (
    Block,
    Scalar,
    add_scalar_,
    bc,
    check_betas,
    check_bool,
    check_choice,
    check_foreach,
    check_learner_dims,
    check_number,
    decay_factor,
    default_scratch,
    ema_sq_,
    foreach_add_scalar_,
    foreach_ema_sq_,
    foreach_scale_,
    foreach_sqrt,
    host,
    is_zero,
    one_minus,
    per_learner,
    pick,
    scale_,
    scaled_eps,
    split_paths,
    sqrt,
    sqrt_,
)
from ._kernels import Scratch as _Scratch

__all__ = ["Grams", "grams", "grams_init"]

EPS_MODES = ("paper", "official")


def _flips(u: Tensor, sg: Tensor, ld: int) -> Tensor:
    """Number of coordinates where sign(u) != sign(g) (per learner)."""
    ne = torch.sign(u) != sg
    return ne.sum() if ld == 0 else ne.reshape(ne.shape[0], -1).sum(1)


def _step_size(lr: Scalar, b1: Scalar, b2: Scalar, t: int) -> Scalar:
    """``-lr sqrt(1 - b2^t) / (1 - b1^t)``: the step's factor on ``sign(g) |u|``."""
    return -lr * sqrt_(1 - b2 ** t) / (1 - b1 ** t)


def _grams_blocks(blocks: Sequence[Block], *, ld: int, foreach: bool | None, scratch: _Scratch,
                  track_flips: bool = False) -> Tensor | None:
    flips: list[Tensor] = []
    total = 0
    for b in blocks:
        lr, b1, b2 = b.hp["lr"], b.hp["beta1"], b.hp["beta2"]
        wd, eps = b.hp["weight_decay"], b.hp["eps"]
        official = b.hp["eps_mode"] == "official"
        P, G, M, V = b.params, b.grads, b.bufs["m"], b.bufs["v"]
        sizes: list[Scalar] = []
        epss: list[Scalar] = []
        cache: dict[int, tuple[Scalar, Scalar]] = {}
        for t in b.steps:
            if t not in cache:  # on the host for exact tensors (_kernels.host)
                cache[t] = (host(_step_size, lr, b1, b2, t, keep=False),
                            eps if official else host(scaled_eps, eps, b2, t, keep=False))
            sizes.append(cache[t][0])
            epss.append(cache[t][1])
        decay = not is_zero(wd)
        w1 = host(one_minus, b1)
        fe, loop = split_paths(P, foreach, ld)
        if fe:
            Pf, Gf, Mf, Vf = pick(P, fe), pick(G, fe), pick(M, fe), pick(V, fe)
            if isinstance(w1, Tensor):
                torch._foreach_lerp_(Mf, Gf, [bc(w1, m, ld) for m in Mf])
            else:
                torch._foreach_lerp_(Mf, Gf, w1)
            foreach_ema_sq_(Vf, Gf, b2, ld)
            den = foreach_sqrt(Vf)
            foreach_add_scalar_(den, pick(epss, fe), ld)
            u = list(torch._foreach_div(Mf, den))
            sg = list(torch._foreach_sign(Gf))
            if track_flips:
                flips += [_flips(x, s, ld) for x, s in zip(u, sg)]
                total += sum(per_learner(p, ld) for p in Pf)
            torch._foreach_abs_(u)
            if decay:
                foreach_scale_(Pf, host(decay_factor, lr, wd), ld)
            fs = pick(sizes, fe)
            if isinstance(fs[0], Tensor):
                torch._foreach_mul_(sg, [bc(s, x, ld) for s, x in zip(fs, sg)])
                torch._foreach_addcmul_(Pf, u, sg)
            elif all(s == fs[0] for s in fs):
                torch._foreach_addcmul_(Pf, u, sg, value=fs[0])
            else:
                torch._foreach_addcmul_(Pf, u, sg, fs)
        for i in loop:
            flip = _grams_tensor(P[i], G[i], M[i], V[i], w1, b2, epss[i], sizes[i],
                                 host(decay_factor, lr, wd) if decay else None, ld, scratch,
                                 track_flips)
            if flip is not None:
                flips.append(flip)
                total += per_learner(P[i], ld)
    if not track_flips or not flips:
        return None
    return torch.stack(flips).sum(0) / total


def _grams_tensor(p: Tensor, g: Tensor, m: Tensor, v: Tensor, w1: Scalar, b2: Scalar,
                  eps: Scalar, size: Scalar, shrink: Scalar | None, ld: int, scratch: _Scratch,
                  track_flips: bool) -> Tensor | None:
    """One tensor's Grams step in place, its temporaries in ``scratch`` (slots 0 and 1):
    ``eps`` the denominator's epsilon, ``size`` the step's factor, ``shrink`` the decoupled
    decay's factor (None: no decay). Returns the number of flipped signs per learner when
    ``track_flips``, else None. The operations give the multi-tensor path's numbers."""
    m.lerp_(g, bc(w1, m, ld))
    u = scratch.get(v, 0)
    ema_sq_(v, g, b2, ld, u)
    sqrt(v, out=u)
    add_scalar_(u, eps, ld)
    torch.div(m, u, out=u)
    sg = torch.sign(g, out=scratch.get(g, 1))
    flips = _flips(u, sg, ld) if track_flips else None
    u.abs_()
    if shrink is not None:
        scale_(p, shrink, ld)
    if isinstance(size, Tensor):
        sg.mul_(bc(size, sg, ld))
        p.addcmul_(u, sg)
    else:
        p.addcmul_(u, sg, value=size)
    return flips


def grams(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    step: int | Sequence[int],
    lr: Scalar,
    beta1: Scalar = 0.9,
    beta2: Scalar = 0.999,
    eps: Scalar = 1e-6,
    weight_decay: Scalar = 0.0,
    eps_mode: str = "paper",
    learner_dims: int = 0,
    foreach: bool | None = None,
    track_flips: bool = False,
) -> Tensor | None:
    r"""Functional Grams step (see :class:`Grams`); updates params and moments in place.

    ``step`` is the step count after this step (from 1), one for all tensors or one per tensor.
    With ``track_flips=True`` returns the fraction of coordinates whose gradient sign differs
    from the momentum's (per learner), else None.

    >>> p, m, v = torch.zeros(1), torch.zeros(1), torch.zeros(1)
    >>> for t, g in enumerate([1.0, -0.05, 0.3], 1):
    ...     _ = grams([p], [torch.tensor([g])], [m], [v], step=t, lr=1e-3)
    >>> round(p.item(), 9)
    -0.001019452
    """
    check_learner_dims(learner_dims)
    check_choice(eps_mode, "eps_mode", EPS_MODES)
    if not params:
        return None
    steps = [step] * len(params) if isinstance(step, int) else list(step)
    block = Block(list(params), list(grads), {"m": list(exp_avgs), "v": list(exp_avg_sqs)},
                  {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps,
                   "weight_decay": weight_decay, "eps_mode": eps_mode}, steps)
    return _grams_blocks([block], ld=learner_dims, foreach=foreach, scratch=default_scratch(),
                         track_flips=track_flips)


def grams_init(params: list[Tensor]) -> dict[str, Any]:
    """Grams' initial state for ``params`` (any leading member dimensions), as :func:`grams`
    takes it (the class keeps the same entries per parameter): step 0 and zero moments
    ``exp_avg`` (:math:`m`) and ``exp_avg_sq`` (:math:`v`), one per tensor.

    >>> grams_init([torch.ones(2)])["exp_avg"]
    [tensor([0., 0.])]
    """
    return {"step": 0, "exp_avg": [torch.zeros_like(p) for p in params],
            "exp_avg_sq": [torch.zeros_like(p) for p in params]}


def _grams_stacked(state: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                   loss: Tensor, hp: Hyper, flags: dict[str, Any]) -> list[Tensor]:
    state["step"] += 1
    if not flags["track_flips"] and _grams_native(params, grads, state, hp,
                                                  flags["eps_mode"] == "official"):
        return []
    if len(params) == 1:  # one row per member in one tensor (a fleet's segments: grams())
        frac = _grams_rows(params[0], grads[0], state["exp_avg"][0], state["exp_avg_sq"][0],
                           state["step"], hp, flags["eps_mode"] == "official",
                           flags["track_flips"])
    else:
        frac = grams(params, grads, state["exp_avg"], state["exp_avg_sq"], step=state["step"],
                     lr=hp["lr"], beta1=hp["beta1"], beta2=hp["beta2"], eps=hp["eps"],
                     weight_decay=hp["weight_decay"], eps_mode=flags["eps_mode"],
                     learner_dims=1, foreach=flags.get("foreach"),
                     track_flips=flags["track_flips"])
    return [] if frac is None else [frac]


def _grams_native(P: list[Tensor], G: list[Tensor], state: dict[str, Any], hp: Hyper,
                  official: bool) -> bool:
    """A fleet's Grams step (its rows: one tensor or the segments) in one native pass
    (:func:`~shiftsim.optim._native.grams_step`: the numbers of the torch operations of
    :func:`_grams_blocks`), with the coefficients they take; False, changing nothing, where
    it does not apply. [speed] One thread, in-process toggle, the same traces: the Grams group
    (10 members) of a league-like fleet (130 members, MLP 64) 0.424 -> 0.127 ms a step (8 runs,
    paired 0.31x; the whole step 0.935x, rounds 0.84-1.11: not resolved)."""
    if not _native.available():
        return False
    lr, b1, b2, wd, eps = hp["lr"], hp["beta1"], hp["beta2"], hp["weight_decay"], hp["eps"]
    step = state["step"]
    size = host(_step_size, lr, b1, b2, step, keep=False)
    eps_t = eps if official else host(scaled_eps, eps, b2, step, keep=False)
    return _native.grams_step(P, G, state["exp_avg"], state["exp_avg_sq"], host(one_minus, b1),
                              b2, host(one_minus, b2), eps_t, size,
                              None if is_zero(wd) else host(decay_factor, lr, wd))


def _grams_rows(p: Tensor, g: Tensor, m: Tensor, v: Tensor, step: int, hp: Hyper,
                official: bool, track_flips: bool) -> Tensor | None:
    """A fleet's Grams step, each member's parameters one row of ``p`` ``(K, n)``: bit for bit
    the numbers of :func:`grams` (``learner_dims=1``; its tensor-by-tensor path, whose
    operations give the multi-tensor path's numbers), without its lists and blocks. [speed]
    One thread, in-process toggle, the same traces: the Grams group of a single run (a
    64-unit digits MLP) 0.155 -> 0.138 ms a step, 5 members 0.24 -> 0.22, 130 members 2.60 ->
    2.25 ms (its scratch buffers: no temporaries allocated a step)."""
    lr, b1, b2, wd, eps = hp["lr"], hp["beta1"], hp["beta2"], hp["weight_decay"], hp["eps"]
    size = host(_step_size, lr, b1, b2, step, keep=False)
    eps_t = eps if official else host(scaled_eps, eps, b2, step, keep=False)
    flips = _grams_tensor(p, g, m, v, host(one_minus, b1), b2, eps_t, size,
                          None if is_zero(wd) else host(decay_factor, lr, wd), 1,
                          default_scratch(), track_flips)
    return None if flips is None else flips / per_learner(p, 1)


def _grams_diagnostics(flags: dict[str, Any]) -> tuple[str, ...]:
    return ("flip_fraction",) if flags["track_flips"] else ()


class Grams(ShiftsimOptimizer):
    r"""Grams (Cao et al. 2024, arXiv:2412.17107): Adam's magnitude, the current gradient's sign.

    .. math::

        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2\\
        \hat u_t &= \mathrm{sign}(g_t)\,\Bigl\lvert\frac{m_t/(1-\beta_1^t)}
                    {\sqrt{v_t/(1-\beta_2^t)} + \epsilon}\Bigr\rvert, \qquad
        \theta_t = (1-\eta\lambda)\,\theta_{t-1} - \eta\,\hat u_t

    Args:
        lr, betas, eps: :math:`\eta`, :math:`(\beta_1, \beta_2)`, :math:`\epsilon` (defaults of
            both public implementations).
        weight_decay: :math:`\lambda`, decoupled [code].
        eps_mode: ``"paper"`` (above; = ``pytorch_optimizer.Grams``) or ``"official"``
            (grams-pytorch: :math:`\epsilon` added to :math:`\sqrt{v_t}` before the bias
            correction; ``p.grad`` is left untouched, unlike grams-pytorch).
        foreach: multi-tensor ops (True), tensor by tensor (False), or chosen per tensor (None).
        track_flips: [ours] compute the ``flip_fraction`` diagnostic (fraction of coordinates
            where :math:`\mathrm{sign}(g_t) \neq \mathrm{sign}(m_t)`). Off by default: it costs
            an extra pass; then ``diagnostics()`` returns ``{}``.
        compile: ``"auto"``, True or False: take the step with a ``torch.compile``-d kernel
            (:mod:`~shiftsim.optim._compiled`: the policy, the fallback); it covers one param
            group with float hyperparameters and ``track_flips=False``.

    State per parameter: ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`), ``step``.

    >>> w = torch.nn.Parameter(torch.zeros(1))
    >>> opt = Grams([w], lr=1e-3)
    >>> for g in (1.0, -0.05, 0.3):
    ...     w.grad = torch.tensor([g])
    ...     opt.step()
    >>> round(w.item(), 9)  # spec test vector (paper eps)
    -0.001019452
    """

    #: the fleet steps stacked members through :func:`grams`
    stacked = Stacked(lambda params, hp, flags: grams_init(params), _grams_stacked,
                      _grams_diagnostics, flat=always)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        eps_mode: str = "paper",
        foreach: bool | None = None,
        track_flips: bool = False,
        compile: bool | str = "auto",
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        eps_mode=eps_mode, foreach=foreach, track_flips=track_flips,
                        compile=compile)
        self._check_group(defaults)
        super().__init__(params, defaults)

    @property
    def diagnostic_keys(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("flip_fraction",) if self.defaults["track_flips"] else ()

    def _check_group(self, group: dict[str, Any]) -> None:
        check_number(group["lr"], "lr", 0.0)
        check_betas(group["betas"])
        check_number(group["eps"], "eps", 0.0)
        check_number(group["weight_decay"], "weight_decay", 0.0)
        check_choice(group["eps_mode"], "eps_mode", EPS_MODES)
        check_foreach(group["foreach"])
        check_bool(group["track_flips"], "track_flips")
        _compiled.check_compile(group.get("compile", "auto"))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One Grams step; ``closure`` (optional) re-evaluates the model and returns the loss."""
        loss = eval_closure(closure)
        active = self._active()
        if not active:
            return loss
        if self._compiled_step(active):
            return loss
        blocks = []
        for group, ps, gs in active:
            ms, vs, steps = [], [], []
            self._fill_state(ps, grams_init, ("exp_avg", "exp_avg_sq", "step"))
            for p in ps:
                st = self.state[p]
                st["step"] += 1
                ms.append(st["exp_avg"])
                vs.append(st["exp_avg_sq"])
                steps.append(st["step"])
            b1, b2 = group["betas"]
            blocks.append(Block(ps, gs, {"m": ms, "v": vs}, {
                "lr": group["lr"], "beta1": b1, "beta2": b2, "eps": group["eps"],
                "weight_decay": group["weight_decay"], "eps_mode": group["eps_mode"]}, steps))
        frac = _grams_blocks(blocks, ld=0, foreach=active[0][0]["foreach"],
                             scratch=self.scratch,
                             track_flips=self.defaults["track_flips"])
        if frac is not None:
            self._global()["flip_fraction"] = frac.to(self._acc_dtype())
        return loss

    def _compiled_step(self, active: list[tuple[dict[str, Any], list[Tensor], list[Tensor]]]
                       ) -> bool:
        """The step through the compiled kernel (:func:`~shiftsim.optim._compiled.grams_step`)
        when it covers it and the compile policy wants it; False: the eager kernels take it."""
        if len(active) != 1 or self.defaults["track_flips"]:
            return False
        group, ps, gs = active[0]
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        if any(isinstance(x, Tensor) for x in (lr, b1, b2, eps, wd)):
            return False
        comp = self._compiled_kernel(_compiled.grams_step)
        if not comp.wanted(ps):
            return False
        self._fill_state(ps, grams_init, ("exp_avg", "exp_avg_sq", "step"))
        sts = [self.state[p] for p in ps]
        t = sts[0]["step"] + 1
        if any(st["step"] + 1 != t for st in sts):
            return False
        bc1, bc2 = 1 - b1 ** t, (1 - b2 ** t) ** 0.5
        official = group["eps_mode"] == "official"
        scalars = self.__dict__.get("_scalars") or self.__dict__.setdefault(
            "_scalars", _compiled.Scalars())
        h = scalars(
            (-lr * bc2 / bc1, 1 - b1, b2, eps if official else eps * bc2, 1 - lr * wd), ps[0])
        out = comp.run(ps, ps, gs, [st["exp_avg"] for st in sts],
                       [st["exp_avg_sq"] for st in sts], h, wd != 0)
        if out is _compiled.EAGER:
            return False
        for st in sts:
            st["step"] = t
        return True
