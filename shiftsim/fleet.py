"""The fleet: many learners of one architecture in one vectorized program.

Online learners in robustness studies are small; one at a time they leave a GPU idle and a CPU
mostly running Python. :func:`run_fleet` runs K members — each an (optimizer, seed) pair — of one
architecture on one scenario as a single program:

* **stacked parameters**: every parameter gets a leading member dimension ``K``. A ReLU MLP runs
  as batched matmuls on class-major activations ``(K, features, batch)`` with its backward pass
  written out (no autograd graph); other MLPs run as batched matmuls under autograd; any other
  model through ``torch.func.vmap`` over ``functional_call``. One pass serves every member.
* **optimizers through their functional kernels**: members whose optimizer is the same class
  with the same non-numeric settings form a group, stepped by the class's functional kernel with
  ``learner_dims=1`` — cosines, inner products, norms and MoMo's loss are per member, and numeric
  hyperparameters (lr, betas, ...) that differ within a group are ``(K,)`` tensors. torch's SGD,
  Adam and AdamW run as fleet kernels that repeat torch's own operations; torch's other
  elementwise optimizers run as they are over the stacked tensors.
* **streams**: each member keeps its own stream — batch order, label tables, permutations and
  noise come from its seed exactly as in :func:`shiftsim.run` — and its initial weights are the
  ones ``run()`` builds. Members that share a seed share the stream's draws.

So every member's :class:`~shiftsim.engine.RunResult` has the content of the sequential run:
the same trace columns (optimizer diagnostics included), evaluations, phases and info. For a
ReLU MLP, :func:`shiftsim.run` itself runs this program with one member by default, so a
member's numbers are bit for bit those of ``run()``. Against the plain per-step loop
(``run(..., vectorized=False)``: autograd, one module) the numbers agree up to float rounding
of the batched operations: in float64 to float32 resolution
over whole runs, in float32 with the identical prediction on nearly every step of short runs
(training amplifies the ~1e-7 differences; tests/test_fleet.py states the tolerances). Over
thousands of steps some float32 trajectories drift apart as they would under any change of
summation order (3,000-step digits runs, all 13 optimizers x 2 seeds: 19 of 26 members kept the
identical prediction on >= 99.7 % of steps, the others on 68-90 %, with online accuracies within
0.002 of run()'s). A member's
numbers do not depend on which other members share its fleet. A member whose loss stops being
finite is recorded as diverged at that step (its values stay in its own slice, as every
reduction is per member); the others go on.

>>> import shiftsim as ss
>>> sc = ss.label_flip_tasks(ss.data.digits(), rate=1.0, tasks=2, steps_per_task=50)
>>> results = run_fleet(sc, ss.models.mlp(hidden=(32,)),
...                     [("sgdm", 0), ("sgdm", 1), (ss.optim.spec("adam"), 0)], device="cpu")
>>> [len(r.trace) for r in results], results[2].info["learner"]["optimizer"]["name"]
([100, 100, 100], 'adam')
"""

from __future__ import annotations

import copy
import math
import operator
import platform
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ._mlp_kernel import relu_mlp_step, scripted_relu_mlp_step
from .checks import check_model_fits
from .engine import RunResult, _EvalSchedule
from .errors import ShiftsimError, SpecTypeError
from .learner import build_model, mode_sensitive
from .models import ModelSpec
from .optim import OptimizerSpec, spec
from .optim._kernels import (
    acc_dtype,
    bc,
    foreach_add_decay,
    foreach_addcdiv_,
    foreach_axpy_,
    foreach_ema_sq_,
    foreach_scale_,
    is_zero,
)
from .optim.registry import check_hparams
from .scenario import Scenario
from .stream import Stream, resolve_device

_ELEMENTWISE = (nn.ReLU, nn.GELU, nn.Tanh, nn.SiLU, nn.Sigmoid, nn.LeakyReLU, nn.Identity)

#: the most bytes of pre-shifted training inputs stacked across seeds for one-gather batches
STACK_LIMIT = 512 * 2**20
#: the fast path gathers the inputs of up to this many steps (and bytes) at once
BLOCK_STEPS = 64
BLOCK_BYTES = 4 * 2**20


# -- the stacked model ------------------------------------------------------------------------

def _cross_entropy(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy per member ``(K,)`` from class-major logits ``z`` ``(K, C, b)`` and
    labels ``(K, b)``, for autograd (:func:`~shiftsim._mlp_kernel.relu_mlp_step` computes
    the same numbers without a graph).

    Written out (max, exp, sum, log) because torch's log_softmax over a short innermost class
    dimension is several times slower on the CPU; the numbers are those of
    ``F.cross_entropy`` up to rounding.
    """
    m = z.detach().amax(1, keepdim=True)
    s = torch.sub(z, m).exp().sum(1, keepdim=True)
    return (s.log() + m - z.gather(1, y.unsqueeze(1))).squeeze(1).mean(1)


class StackedModel:
    """K copies of one architecture with their parameters stacked along dimension 0.

    ``params`` maps each parameter name to a leaf tensor of shape ``(K, *shape)``. ``forward``
    takes ``(K, batch, *input_shape)`` and returns ``(K, batch, classes)``. An ``nn.Sequential``
    of Flatten / Linear / elementwise activations runs as batched matmuls on class-major
    activations ``(K, features, batch)``, with its backward pass written out when every
    activation is ReLU (no autograd graph; :func:`~shiftsim._mlp_kernel.relu_mlp_step`, run by
    TorchScript); any other model runs through
    ``torch.func.vmap(functional_call)`` and autograd. ``compile=True`` compiles the training
    step with ``torch.compile``; when compilation fails (no compiler, an unsupported op) it
    warns and runs eagerly.

    >>> import shiftsim as ss
    >>> data = ss.data.digits()
    >>> nets = [ss.models.mlp(hidden=(8,)).build(data, seed=s) for s in (0, 1)]
    >>> sm = StackedModel(nets)
    >>> sm.params["1.weight"].shape, sm.forward(torch.zeros(2, 5, 1, 8, 8)).shape
    (torch.Size([2, 8, 64]), torch.Size([2, 5, 10]))
    >>> x = data.x_train[:5]
    >>> bool(torch.allclose(sm.forward(torch.stack([x, x]))[1], nets[1](x), atol=1e-6))
    True
    """

    def __init__(self, models: Sequence[nn.Module], compile: bool = False,
                 input_shape: Sequence[int] | None = None) -> None:
        if not models:
            raise ShiftsimError("a fleet needs at least one member")
        names = [n for n, _ in models[0].named_parameters()]
        for m in models:
            if mode_sensitive(m):
                raise ShiftsimError("fleet members cannot use BatchNorm, dropout or other "
                                    "train/eval-dependent layers; use norm='layer' or 'group'")
        self.params: dict[str, torch.Tensor] = {
            n: torch.stack([dict(m.named_parameters())[n].detach() for m in models])
            .requires_grad_(True) for n in names}
        self.buffers: dict[str, torch.Tensor] = {
            n: torch.stack([dict(m.named_buffers())[n] for m in models])
            for n, _ in models[0].named_buffers()}
        self.template = models[0]
        self._buffers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        #: run the hand-written step through TorchScript (same numbers, less Python per op)
        self.script = True
        self._layer_cache: tuple[tuple[torch.Tensor, ...], list[Any]] | None = None
        self._columns: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._plan = self._matmul_plan(models[0], input_shape)
        self.manual = self._plan is not None and self._relu_chain(self._plan)
        #: whether the forward pass takes inputs flattened to (K, b, features) as well
        self.flat_inputs = self._plan is not None
        if self._plan is None:
            self._meta = copy.deepcopy(models[0]).to("meta")
        self._eager: Callable[..., Any] = self._manual_step if self.manual else self._losses
        self._train = self._eager
        self.compiled = False
        if compile:
            try:
                self._train = torch.compile(self._eager, dynamic=False)
                self.compiled = True
            except Exception as exc:  # pragma: no cover - depends on the toolchain
                warnings.warn(f"torch.compile failed ({type(exc).__name__}: {exc}); the fleet "
                              "runs eagerly", stacklevel=2)

    @staticmethod
    def _matmul_plan(model: nn.Module, input_shape: Sequence[int] | None
                     ) -> list[tuple[str, Any]] | None:
        if not isinstance(model, nn.Sequential):
            return None
        plan: list[tuple[str, Any]] = []
        for name, m in model.named_children():
            if isinstance(m, nn.Flatten):
                if m.start_dim != 1 or m.end_dim != -1 or plan:
                    return None
                plan.append(("flatten", None))
            elif isinstance(m, nn.Linear):
                plan.append(("linear", (f"{name}.weight", f"{name}.bias" if m.bias is not None
                                        else None)))
            elif isinstance(m, _ELEMENTWISE):
                plan.append(("act", m))
            else:
                return None
        flat_input = plan and plan[0][0] == "flatten" or (
            input_shape is not None and len(input_shape) == 1)
        if not flat_input or not any(kind == "linear" for kind, _ in plan):
            return None
        return plan

    @staticmethod
    def _relu_chain(plan: list[tuple[str, Any]]) -> bool:
        """Whether the plan is Linear (ReLU+ Linear)*: the backward pass written by hand."""
        kinds = ["relu" if kind == "act" and type(arg) is nn.ReLU else kind
                 for kind, arg in plan if kind != "flatten"]
        text = " ".join(kinds)
        return re.fullmatch(r"linear( (relu )+linear)*", text) is not None

    def _forward_cm(self, params: dict[str, torch.Tensor], x: torch.Tensor,
                    keep: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Class-major logits ``(K, C, b)``; ``keep`` collects each Linear layer's input."""
        if self._plan is None:
            from torch.func import functional_call, vmap

            def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], xi: torch.Tensor
                    ) -> torch.Tensor:
                return functional_call(self._meta, (p, b), (xi,))

            return vmap(one)(params, self.buffers, x).transpose(1, 2)
        h = x.flatten(2).transpose(1, 2)  # (K, features, b)
        for kind, arg in self._plan:
            if kind == "linear":
                if keep is not None:
                    keep.append(h)
                w = params[arg[0]]
                h = torch.baddbmm(self._column(params, arg[1]), w, h) if arg[1] \
                    else torch.bmm(w, h)
            elif kind == "act":
                # no autograd: a ReLU can overwrite the matmul's fresh output
                h = h.relu_() if type(arg) is nn.ReLU and not torch.is_grad_enabled() \
                    else arg(h)
        return h

    def _losses(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        z = self._forward_cm(params, x)
        return z, _cross_entropy(z, y)

    def _column(self, params: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        """Bias ``name`` as a column ``(K, out, 1)``; without autograd, and when not compiled,
        a view kept from step to step (the parameters are updated in place)."""
        b = params[name]
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return b.unsqueeze(2)
        kept = self._columns.get(name)
        if kept is None or kept[0] is not b:
            kept = self._columns[name] = (b, b.unsqueeze(2))
        return kept[1]

    def _layers(self, params: dict[str, torch.Tensor]
                ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[bool]]:
        """The arguments of :func:`relu_mlp_step` for the plan's Linear layers: ``(weights,
        bias columns (K, out, 1), weights transposed, whether each layer has a bias)``. When
        not compiling, kept from step to step as views (the optimizers update the parameters
        in place), rebuilt when a parameter tensor is replaced. The kernel's gradients come
        layer by layer, weight then bias: the order of an ``nn.Sequential``'s parameters."""
        assert self._plan is not None
        vals = tuple(params.values())
        kept = self._layer_cache
        if kept is not None and not torch.compiler.is_compiling() and len(kept[0]) == len(vals) \
                and all(map(operator.is_, kept[0], vals)):
            return kept[1]
        weights, columns, weights_t, biased = [], [], [], []
        for kind, arg in self._plan:
            if kind == "linear":
                w = params[arg[0]]
                weights.append(w)
                weights_t.append(w.transpose(1, 2))
                columns.append(params[arg[1]].unsqueeze(2) if arg[1] else w)  # w: unused
                biased.append(arg[1] is not None)
        layers = (weights, columns, weights_t, biased)
        if not torch.compiler.is_compiling():
            self._layer_cache = (vals, layers)
        return layers

    def _manual_step(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                     out: tuple[torch.Tensor, torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Forward and backward of a ReLU MLP by hand (:func:`relu_mlp_step`, run by
        TorchScript unless ``self.script`` is False or when compiling): ``(predictions
        (K, 1, b), mean cross-entropy (K,), gradients in the order of params)``. ``out``:
        tensors ``(K, 1, b)`` int64 and ``(K,)`` (the parameters' dtype) that receive the
        predictions and losses."""
        weights, columns, weights_t, biased = self._layers(params)
        K, n = y.shape
        w0 = weights[0]
        compiling = torch.compiler.is_compiling()
        if out is None or compiling:
            out = (torch.empty(K, 1, n, dtype=torch.int64, device=w0.device),
                   torch.empty(K, dtype=w0.dtype, device=w0.device))
        if compiling:
            maxima = torch.empty(K, 1, n, dtype=w0.dtype, device=w0.device)
            minus = torch.full((K, 1, n), -1.0 / n, dtype=w0.dtype, device=w0.device)
        else:
            maxima, minus = self._step_buffers(K, n, w0)
        kernel = scripted_relu_mlp_step() if self.script and not compiling else relu_mlp_step
        grads = kernel(x, y, weights, columns, weights_t, biased, maxima, out[0], out[1], minus)
        return out[0], out[1], grads

    def _step_buffers(self, K: int, n: int, like: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """The class maxima buffer ``(K, 1, n)`` and ``-1/n`` shaped ``(K, 1, n)`` (kept from
        step to step, per batch size)."""
        kept = self._buffers.get(n)
        if kept is None or kept[0].shape[0] != K or kept[0].dtype != like.dtype \
                or kept[0].device != like.device:
            kept = self._buffers[n] = (
                torch.empty(K, 1, n, dtype=like.dtype, device=like.device),
                torch.full((K, 1, n), -1.0 / n, dtype=like.dtype, device=like.device))
        return kept

    def step(self, x: torch.Tensor, y: torch.Tensor,
             out: tuple[torch.Tensor, torch.Tensor] | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """One training pass for every member: ``(predictions (K, b), mean cross-entropy
        (K,), gradients)`` for inputs ``(K, b, ...)`` and labels ``(K, b)``. ``out``: tensors
        ``(K, 1, b)`` int64 and ``(K,)`` that receive the predictions and losses (then
        returned, the predictions as ``(K, 1, b)``)."""
        if self.compiled:
            try:
                return self._finish(self._train, x, y, out)
            except Exception as exc:  # the first call compiles; fall back when it cannot
                warnings.warn(f"torch.compile of the fleet step failed ({type(exc).__name__}: "
                              f"{exc}); running eagerly", stacklevel=2)
                self.compiled = False
                self._train = self._eager
        if self.manual and not torch.is_grad_enabled():  # the engine's loop: no wrapper
            pred, per, grads = self._manual_step(self.params, x, y, out)
            return (pred if out is not None else pred.squeeze(1)), per, grads
        return self._finish(self._eager, x, y, out)

    def _finish(self, fn: Callable[..., Any], x: torch.Tensor, y: torch.Tensor,
                out: tuple[torch.Tensor, torch.Tensor] | None
                ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        if self.manual:
            with torch.no_grad():
                pred, per, grads = fn(self.params, x, y)
        else:
            with torch.enable_grad():
                z, per = fn(self.params, x, y)
                grads = list(torch.autograd.grad(per.sum(), list(self.params.values())))
            z, per = z.detach(), per.detach()
            pred = z.max(1, keepdim=True).indices  # (argmax over a middle dim is ~8x slower)
        if out is None:
            return pred.squeeze(1), per, grads
        with torch.no_grad():
            out[0].copy_(pred)
            out[1].copy_(per)
        return out[0], out[1], grads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(K, b, C)`` for inputs ``(K, b, ...)``."""
        return self._forward_cm(self.params, x).transpose(1, 2)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
        """Class predictions ``(K, n)`` for inputs ``(K, n, ...)``."""
        return torch.cat([self._forward_cm(self.params, c).max(1).indices
                          for c in x.split(chunk, dim=1)], dim=1)

    def member(self, k: int) -> nn.Module:
        """Member ``k`` as an ordinary module (a copy of its current weights)."""
        m = copy.deepcopy(self.template)
        state = {n: t[k].detach().clone() for n, t in {**self.params, **self.buffers}.items()}
        m.load_state_dict(state)
        return m


# -- optimizers: each family steps K stacked members through its functional kernel -------------

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
        from .optim.tam import tam

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
        from .optim.tam import adatam

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
        from .optim.adamem import adamem_sgd

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
        from .optim.adamem import adamem_adamw

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
        from .optim.momo import momo

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
        from .optim.momo import momo_adam

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
        from .optim.grams import grams

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
    from .optim import adamem, grams, momo, tam

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
    # bad hyperparameters fail here as they would in run() (without building an optimizer,
    # whose first construction imports torch._dynamo: about a second)
    check_hparams(opt_spec)
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


def hand_written_backward(model: nn.Module, input_shape: Sequence[int] | None = None) -> bool:
    """Whether a fleet of ``model`` runs its forward and backward passes as batched matmuls
    written out by hand (a ReLU MLP: ``Flatten``, ``Linear`` and ``ReLU`` layers only, no
    train/eval-dependent layers).

    >>> import shiftsim as ss
    >>> data = ss.data.digits()
    >>> hand_written_backward(ss.models.mlp(hidden=(8,)).build(data, seed=0))
    True
    >>> hand_written_backward(ss.models.mlp(hidden=(8,), norm="layer").build(data, seed=0))
    False
    """
    if mode_sensitive(model):
        return False
    plan = StackedModel._matmul_plan(model, input_shape)
    return plan is not None and StackedModel._relu_chain(plan)


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


# -- batches ----------------------------------------------------------------------------------

class _SeedBatches:
    """The batches of every distinct seed in one phase, stacked ``(S, ...)``."""

    def __init__(self, streams: list[Stream], phase: int, member_seed: torch.Tensor,
                 identity: bool, flat: bool = False) -> None:
        """``flat``: the fast path may hand out inputs flattened to ``(K, b, features)``."""
        self.flat = flat
        self.plans = [st.plan(phase) for st in streams]
        self.streams = streams
        self.member_seed = member_seed
        self.identity = identity
        p0 = self.plans[0]
        self.steps = p0.steps
        self.y = torch.stack([p.y for p in self.plans], 1)  # (L, S, b)
        self._labels = self._members(self.y, 1).unbind(0)  # L x (K, b)
        self._block: tuple[torch.Tensor, ...] = ()
        self._block_start = self._block_stop = 0
        self.y_true = torch.stack([p.y_true for p in self.plans], 1)
        self.index = torch.stack([p.index for p in self.plans], 1)  # (L, S, b)
        self.n_new = torch.stack([p.n_new for p in self.plans], 1)  # (L, S)
        self.width = 0 if p0.new_mask is None else int(p0.new_mask.shape[0])
        has_tail = any(p.regime.tail for p in self.plans) or any(
            p.previous is not None and p.previous.tail for p in self.plans)
        self.fast = not has_tail
        self.base: torch.Tensor | None = None
        if self.fast:
            bases = [p.regime.x_base for p in self.plans]
            if all(b is bases[0] for b in bases):  # no static shifts: one shared input table
                self.base = bases[0]
                self.offset = None
            elif sum(b.numel() * b.element_size() for b in bases) <= STACK_LIMIT:
                n = bases[0].shape[0]
                self.base = torch.cat(bases)
                self.offset = (torch.arange(len(bases), device=bases[0].device) * n).view(-1, 1)
            else:
                self.fast = False

    def _members(self, t: torch.Tensor, dim: int = 0) -> torch.Tensor:
        return t if self.identity else t.index_select(dim, self.member_seed)

    def inputs(self, s: int) -> torch.Tensor:
        """The members' inputs at step ``s``, ``(K, b, ...)``. On the fast path they are
        gathered for a block of steps at once (one indexing op per block, not per step)."""
        if self.fast and s >= self.width:
            if not self._block_start <= s < self._block_stop:
                self._gather_block(s)
            return self._block[s - self._block_start]
        x = torch.stack([p.inputs(s, st.noise) for p, st in zip(self.plans, self.streams)])
        return self._members(x)

    def _gather_block(self, s: int) -> None:
        assert self.base is not None
        per_step = self.index[0].numel() * self.base[0].numel() * self.base.element_size()
        stop = min(self.steps, s + max(1, min(BLOCK_STEPS, BLOCK_BYTES // max(per_step, 1))))
        idx = self.index[s:stop] if self.offset is None else self.index[s:stop] + self.offset
        block = self._members(self.base[idx], 1)  # (steps, K, b, ...)
        self._block = (block.flatten(3) if self.flat else block).unbind(0)
        self._block_start, self._block_stop = s, stop

    def labels(self, s: int) -> torch.Tensor:
        return self._labels[s]


# -- the loop -----------------------------------------------------------------------------------

@dataclass
class _Group:
    """The members [start, stop) of the fleet (sorted by group) that one optimizer steps."""

    family: _Family
    start: int
    stop: int
    full: bool
    diag_buf: torch.Tensor | None = None


def _as_member(m: Any) -> tuple[OptimizerSpec, int]:
    if not isinstance(m, (tuple, list)) or len(m) != 2:
        raise SpecTypeError(f"a fleet member must be an (optimizer, seed) pair, got {m!r}")
    opt, seed = m
    opt = opt if isinstance(opt, OptimizerSpec) else spec(opt)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ShiftsimError(f"seed must be a non-negative integer, got {seed!r}")
    return opt, int(seed)


def run_fleet(scenario: Scenario, model: ModelSpec | nn.Module | Callable[..., nn.Module],
              members: Sequence[tuple[OptimizerSpec | str, int]],
              device: str | torch.device = "auto", *, check_every: int = 64,
              compile: bool = False, progress: bool = False) -> list[RunResult]:
    """Run every ``(optimizer, seed)`` member on ``scenario`` as one vectorized program.

    Returns one :class:`~shiftsim.engine.RunResult` per member, in the order given, with the
    content :func:`shiftsim.run` gives for that member: the same trace columns (optimizer
    diagnostics included), evaluations, phases, info and diverged handling. Members may use
    different optimizers and hyperparameters: members of one optimizer class with the same
    non-numeric settings form one group, stepped by the class's functional kernel with
    per-member reductions and per-member numeric hyperparameters.

    Args:
        scenario: the :class:`~shiftsim.scenario.Scenario` every member runs.
        model: a ModelSpec, an ``nn.Module`` or a callable ``Dataset -> nn.Module``, as for
            :func:`shiftsim.run`; each member's initial weights come from its seed. Models
            without train/eval-dependent layers only (no BatchNorm, no dropout).
        members: ``(optimizer, seed)`` pairs; an optimizer is an OptimizerSpec or a registry
            name. The same pair twice gives the same result twice.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` ...
        check_every: steps between the finiteness checks of the losses (the only host syncs).
        compile: compile the forward pass and loss with ``torch.compile`` (falls back to eager
            execution, with a warning, when compilation fails).
        progress: show a progress bar over steps.
    """
    from .learner import TorchLearner

    t_start = time.perf_counter()
    if not isinstance(scenario, Scenario):
        raise SpecTypeError(f"run_fleet() needs a Scenario, got {type(scenario).__name__}")
    if not isinstance(model, (ModelSpec, nn.Module)) and not callable(model):
        raise SpecTypeError(f"a fleet's model must be a ModelSpec, an nn.Module or a callable "
                            f"Dataset -> nn.Module, got {model!r}")
    if isinstance(members, (str, bytes)) or not isinstance(members, Sequence) or not members:
        raise ShiftsimError(f"run_fleet needs a non-empty list of (optimizer, seed) members, "
                            f"got {members!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ShiftsimError(f"check_every must be a positive integer, got {check_every!r}")
    if not isinstance(compile, bool):
        raise SpecTypeError(f"compile must be True or False, got {compile!r}")
    check_model_fits(model, scenario.data)  # before any work: one line naming both shapes
    given = [_as_member(m) for m in members]
    keys = [_group_key(o) for o, _ in given]
    dev = resolve_device(device)

    # members sorted so that each group is a contiguous slice (groups in order of first
    # appearance, members in the given order within); distinct seeds get one stream each
    first: dict[_GroupKey, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    order = sorted(range(len(given)), key=lambda i: (first[keys[i]], i))
    specs = [given[i][0] for i in order]
    seeds = [given[i][1] for i in order]
    K = len(order)
    distinct = sorted(set(seeds))
    streams = [Stream(scenario, s, dev) for s in distinct]
    member_seed = torch.tensor([distinct.index(s) for s in seeds], device=dev)
    identity = seeds == distinct

    data = streams[0].data
    net = StackedModel([build_model(model, data, s).to(dev) for s in seeds], compile=compile,
                       input_shape=data.input_shape)
    params = list(net.params.values())
    T, b = scenario.total_steps, scenario.batch_size
    groups: list[_Group] = []
    start = 0
    for i in range(1, K + 1):
        if i == K or keys[order[i]] != keys[order[start]]:
            key = keys[order[start]]
            views = [p.detach()[start:i] for p in params]
            flags = dict(key.flags)
            hp = {} if key.family is _Elementwise else _group_hp(specs[start:i], params[0])
            fam = key.family(views, hp, flags)
            g = _Group(fam, start, i, start == 0 and i == K)
            if fam.diag_names:
                g.diag_buf = torch.zeros(T, i - start, len(fam.diag_names), device=dev)
            groups.append(g)
            start = i

    # step-major, in the parameters' dtype (the optimizers see the loss as computed); the
    # trace keeps float32
    losses_tm = torch.empty(T, K, dtype=params[0].dtype, device=dev)
    losses = losses_tm.T
    correct = torch.zeros(K, T, dtype=torch.int64, device=dev)
    correct_true = torch.zeros(K, T, dtype=torch.int64, device=dev)
    n_new = torch.empty(K, T, dtype=torch.int64)
    schedule = _EvalSchedule(scenario)
    eval_correct = torch.zeros(K, len(schedule.rows), dtype=torch.int64, device=dev)
    heldout: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    diverged_at: list[int | None] = [None] * K
    checked = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        desc = f"fleet of {K}" if K > 1 else f"run seed {seeds[0]}"
        bar = tqdm(total=T, desc=desc, unit="step", leave=False)
    t_setup = time.perf_counter()

    def heldout_of(r: int) -> tuple[torch.Tensor, torch.Tensor]:
        if r not in heldout:
            xs, ys = zip(*(st.heldout(r) for st in streams))
            x, y = torch.stack(xs), torch.stack(ys)
            if not identity:
                x, y = x.index_select(0, member_seed), y.index_select(0, member_seed)
            heldout[r] = (x, y)
        return heldout[r]

    def check(upto: int) -> bool:
        """Record members whose loss went non-finite in [checked, upto); True when all did."""
        nonlocal checked
        bad = ~torch.isfinite(losses[:, checked:upto])
        if bool(bad.any()):  # host sync, once every check_every steps
            for k in bad.any(1).nonzero().flatten().tolist():
                if diverged_at[k] is None:
                    diverged_at[k] = checked + int(bad[k].nonzero()[0, 0])
        checked = upto
        return all(d is not None for d in diverged_at)

    # A diverged member is not stepped differently: its non-finite values stay in its own
    # slice (every reduction is per member), and its trace ends at its divergence.
    all_out = False
    grad_was = torch.is_grad_enabled()
    torch.set_grad_enabled(False)  # the whole loop (an autograd model enables it per step)
    try:
        for k_phase in range(len(scenario.phases)):
            batches = _SeedBatches(streams, k_phase, member_seed, identity,
                                    flat=net.flat_inputs)
            start, steps = scenario.boundaries[k_phase], batches.steps
            # step-major buffers: each step's predictions and losses are written in place by
            # the step itself (views made once per phase, no per-step indexing)
            preds = torch.empty(steps, K, 1, b, dtype=torch.int64, device=dev)
            outs = list(zip(preds.unbind(0), losses_tm[start:start + steps].unbind(0)))
            n_new[:, start:start + steps] = (
                batches.n_new.T if identity else batches.n_new.T[member_seed.cpu()])
            for s in range(steps):
                t = start + s
                _, loss_d, grads = net.step(batches.inputs(s), batches.labels(s), outs[s])
                for g in groups:
                    if g.full:
                        vals = g.family.step(grads, loss_d)
                    else:
                        vals = g.family.step([x[g.start:g.stop] for x in grads],
                                             loss_d[g.start:g.stop])
                    if g.diag_buf is not None:
                        g.diag_buf[t] = torch.stack(vals, -1)
                if t in schedule.at:
                    _, regimes, _ = schedule.at[t]
                    row = schedule.first_row[t]
                    for i, r in enumerate(regimes):
                        hx, hy = heldout_of(r)
                        eval_correct[:, row + i] = (net.predict(hx) == hy).sum(1)
                if (t + 1) % check_every == 0 and check(t + 1):
                    all_out = True
                    break
                if bar is not None and (t + 1) % 50 == 0:
                    bar.update(50)
            done = s + 1
            y_m, yt_m = batches.y[:done], batches.y_true[:done]  # (done, S, b)
            if not identity:
                y_m, yt_m = y_m.index_select(1, member_seed), yt_m.index_select(1, member_seed)
            p_m = preds[:done, :, 0]  # (done, K, b)
            correct[:, start:start + done] = (p_m == y_m).sum(-1).T
            correct_true[:, start:start + done] = (p_m == yt_m).sum(-1).T
            if all_out or check(start + steps):
                break
    finally:
        torch.set_grad_enabled(grad_was)
    if bar is not None:
        bar.close()
    t_loop = time.perf_counter()

    # one transfer of everything, then one RunResult per member in the caller's order
    losses_c, correct_c, ctrue_c = losses.float().cpu().numpy(), correct.cpu().numpy(), \
        correct_true.cpu().numpy()
    ec = eval_correct.cpu().numpy()
    diag_c = [None if g.diag_buf is None else g.diag_buf.cpu().numpy() for g in groups]
    phase_of_step = np.repeat(np.arange(len(scenario.phases)),
                              [p.steps for p in scenario.phases])
    phases = scenario.phase_table()
    scenario_dict = scenario.to_dict()
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    loop_s = t_loop - t_setup
    results: list[RunResult | None] = [None] * K
    for pos, orig in enumerate(order):
        gi = next(j for j, g in enumerate(groups) if g.start <= pos < g.stop)
        g = groups[gi]
        d = diverged_at[pos]
        steps_run = T if d is None else d
        trace = pd.DataFrame({
            "step": np.arange(steps_run, dtype=np.int64),
            "phase": phase_of_step[:steps_run],
            "n": np.full(steps_run, b, dtype=np.int64),
            "correct": correct_c[pos, :steps_run],
            "correct_true": ctrue_c[pos, :steps_run],
            "loss": losses_c[pos, :steps_run],
            "n_new": n_new[pos, :steps_run].numpy(),
        })
        dbuf = diag_c[gi]
        if dbuf is not None:
            vals = dbuf[:steps_run, pos - g.start]
            for j, name in enumerate(g.family.diag_names):
                trace[f"diag_{name}"] = vals[:, j]
        # as run(): an evaluation at step s sees the weights after update s - 1, so at the
        # diverged step d only evaluations up to step d - 1 are kept
        last_eval = T if d is None else d - 1
        keep = [i for i, r in enumerate(schedule.rows) if r[0] <= last_eval]
        rows = [schedule.rows[i] for i in keep]
        evc = ec[pos, keep]
        evals = pd.DataFrame({
            "step": np.array([r[0] for r in rows], dtype=np.int64),
            "phase": np.array([r[1] for r in rows], dtype=np.int64),
            "regime": np.array([r[2] for r in rows], dtype=np.int64),
            "n": np.full(len(rows), scenario.eval_size, dtype=np.int64),
            "correct": evc.astype(np.int64),
            "accuracy": evc / scenario.eval_size,
            "phase_end": np.array([r[3] for r in rows], dtype=bool),
        })
        info = {"scenario": scenario_dict,
                "learner": TorchLearner(model, specs[pos]).describe(),
                "seed": seeds[pos], "device": str(dev), "engine": "stacked",
                "versions": dict(versions),
                "fleet": {"members": K, "groups": len(groups), "compiled": net.compiled}}
        timings = {"setup_s": (t_setup - t_start) / K, "loop_s": loop_s / K,
                   "fleet_loop_s": loop_s, "total_s": (time.perf_counter() - t_start) / K,
                   "ms_per_step": 1000 * loop_s / K / max(steps_run, 1)}
        results[orig] = RunResult(trace, evals, phases.copy(), info, diverged=d is not None,
                                  diverged_step=d, timings=timings)
    return [r for r in results if r is not None]


def _activation_width(net: nn.Module, data: Any) -> int:
    """Numbers per sample in the input and in every leaf module's output (one forward pass)."""
    sizes = [math.prod(data.input_shape)]
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o[0].numel()))
             for m in net.modules() if not list(m.children())]
    try:
        p = next(net.parameters())
        with torch.no_grad():
            net(data.x_train[:1].to(dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
    return int(sum(sizes))


def fleet_memory_bytes(scenario: Scenario, model: ModelSpec | nn.Module | Callable[..., nn.Module],
                       members: int) -> int:
    """An estimate of the device memory (bytes) a fleet of ``members`` needs on ``scenario``.

    Per member: parameters, gradients, up to three optimizer buffers and two scratch copies;
    the per-step activations and their gradients (the input and every leaf module's output,
    for a batch); the trace buffers; the held-out inputs of every regime and one evaluation
    pass; and, when the scenario has static input shifts, two pre-shifted copies of the training
    inputs (a fleet of distinct seeds keeps one per seed).

    >>> import shiftsim as ss
    >>> sc = ss.label_flip_tasks(ss.data.digits(), rate=1.0, tasks=2, steps_per_task=50)
    >>> fleet_memory_bytes(sc, ss.models.mlp(hidden=(16,)), 100) // 2**20  # MiB
    48
    """
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise ShiftsimError(f"members must be a positive integer, got {members!r}")
    data = scenario.data
    net = build_model(model, data.to("cpu"), 0)
    es = next(net.parameters()).element_size()
    n_params = sum(p.numel() for p in net.parameters())
    acts = _activation_width(net, data.to("cpu"))
    n_in = math.prod(data.input_shape)
    b, n_eval = scenario.batch_size, scenario.eval_size
    per = (es * 7 * n_params + es * 2 * b * acts + 8 * 3 * scenario.total_steps
           + es * n_eval * n_in * scenario.num_regimes + es * n_eval * acts)
    if any(s.kind == "input" and not getattr(s, "stochastic", False)
           for p in scenario.phases for s in p.shifts):
        per += es * 2 * len(data) * n_in
    return int(per * members)
