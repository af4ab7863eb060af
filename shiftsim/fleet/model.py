"""The stacked model: K copies of one architecture, their parameters stacked along dimension 0.

A ReLU MLP (``Flatten``, ``Linear`` and ``ReLU`` layers) runs as batched matmuls on class-major
activations ``(K, features, batch)`` with its backward pass written out
(:mod:`shiftsim._mlp_kernel`, no autograd graph); other MLPs run as batched matmuls under
autograd; any other model through ``torch.func.vmap`` over ``functional_call``. One pass serves
every member.
"""

from __future__ import annotations

import copy
import operator
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .._mlp_kernel import relu_mlp_step, scripted_relu_mlp_step
from ..errors import ShiftsimError
from ..learner import mode_sensitive

_ELEMENTWISE = (nn.ReLU, nn.GELU, nn.Tanh, nn.SiLU, nn.Sigmoid, nn.LeakyReLU, nn.Identity)


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

    ``params`` maps each parameter name to a tensor of shape ``(K, *shape)``: a leaf that
    requires grad, or for a ReLU MLP a contiguous view, its block of :attr:`flat` (that
    model's backward pass is written out, so its parameters need no autograd). ``forward``
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

    #: keep a ReLU MLP's parameters (and gradients) in one buffer (:attr:`flat`); False keeps
    #: one tensor per parameter, as other models have (same numbers: tests compare)
    FLAT = True

    def __init__(self, models: Sequence[nn.Module], compile: bool = False,
                 input_shape: Sequence[int] | None = None) -> None:
        if not models:
            raise ShiftsimError("a fleet needs at least one member")
        names = [n for n, _ in models[0].named_parameters()]
        for m in models:
            if mode_sensitive(m):
                raise ShiftsimError("fleet members cannot use BatchNorm, dropout or other "
                                    "train/eval-dependent layers; use norm='layer' or 'group'")
        stacked = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models])
                   for n in names}
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
        #: with the hand-written backward pass: every member's parameters in one buffer, one
        #: contiguous ``(K, *shape)`` block per parameter in the order of ``params`` (whose
        #: tensors are views of it), and the gradients the same way (``grad_views``: the
        #: batched matmuls write them in place); None otherwise. A member's parameters are
        #: the rows of the blocks one after another: an optimizer whose update does not depend
        #: on how the parameters split into tensors steps them as one row per member
        #: (:attr:`~shiftsim.optim._base.Stacked.flat`; the row kernels take the blocks as the
        #: row's segments, :func:`~shiftsim.optim._kernels.rows`).
        self.flat: torch.Tensor | None = None
        self.flat_grad: torch.Tensor | None = None
        self.grad_views: list[torch.Tensor] = []
        if self.FLAT and self.manual and \
                len({(t.dtype, t.device) for t in stacked.values()}) == 1:
            self.flat, self.params = _flatten(stacked)
            self.flat_grad = torch.empty_like(self.flat)
            self.grad_views = _views(self.flat_grad, stacked)
        else:
            self.params = {n: t.requires_grad_(True) for n, t in stacked.items()}
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
        into = [] if compiling or params is not self.params else self.grad_views
        grads = kernel(x, y, weights, columns, weights_t, biased, maxima, out[0], out[1], minus,
                       into)
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
        returned, the predictions as ``(K, 1, b)``). With :attr:`flat` the gradients are
        :attr:`grad_views`, which the next step overwrites."""
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
                if self.grad_views and grads[0].data_ptr() != self.grad_views[0].data_ptr():
                    torch._foreach_copy_(self.grad_views, grads)  # a compiled step's output
                    grads = self.grad_views
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

    @torch.no_grad()
    def score(self, x: torch.Tensor, y: torch.Tensor,
              out: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Predictions ``(K, 1, b)`` and mean cross-entropy ``(K,)`` of every member for inputs
        ``(K, b, ...)`` and labels ``(K, b)``, written into ``out``, without training (a batch
        a real-time stream's learner is too busy to train on)."""
        z, per = self._losses(self.params, x, y)
        out[0].copy_(z.max(1, keepdim=True).indices)
        out[1].copy_(per)

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



def _views(flat: torch.Tensor, like: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Views of the one-dimensional ``flat`` shaped like the tensors of ``like`` (each
    ``(K, *shape)``), one block after another: each view contiguous."""
    out, start = [], 0
    for t in like.values():
        n = t.numel()
        out.append(flat[start:start + n].view(t.shape))
        start += n
    return out


def _flatten(stacked: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The stacked parameters copied into one buffer, one contiguous ``(K, *shape)`` block per
    parameter, and views of it by name."""
    flat = torch.cat([t.reshape(-1) for t in stacked.values()])
    return flat, dict(zip(stacked, _views(flat, stacked)))


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

