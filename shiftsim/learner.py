"""Learners: what the engine feeds. A learner predicts a batch (scored), then trains on it.

:class:`TorchLearner` is a PyTorch model plus an optimizer; the Avalanche integration provides
another. Anything with the methods of :class:`Learner` can be passed to :func:`shiftsim.run`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from .data import Dataset
from .errors import ShiftsimError, SpecTypeError
from .models import ModelSpec
from .optim import OptimizerSpec, spec
from .runtime import cpu_seeded
from .seeds import derive_seed

#: module types whose output depends on train/eval mode
_MODE_SENSITIVE = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd,
                   nn.modules.instancenorm._InstanceNorm)


@runtime_checkable
class Learner(Protocol):
    """The engine's view of a learner."""

    def setup(self, data: Dataset, device: torch.device, seed: int) -> None:
        """Build state for a run on ``data`` (on ``device``, initialised from ``seed``)."""

    def observe(self, x: torch.Tensor, y: torch.Tensor, pred_out: torch.Tensor) -> torch.Tensor:
        """Write the predictions for ``x`` made *before* training into ``pred_out``, train on
        ``(x, y)`` and return the training loss as a 0-d tensor (no host sync)."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class predictions for held-out inputs (no training)."""

    def score(self, x: torch.Tensor, y: torch.Tensor, pred_out: torch.Tensor) -> torch.Tensor:
        """Optional (needed on real-time streams): like :meth:`observe` without training —
        write the predictions for ``x`` into ``pred_out`` and return the loss on ``(x, y)``."""

    def diagnostics(self) -> dict[str, torch.Tensor]:
        """Optional per-step 0-d tensors recorded as ``diag_<name>`` trace columns."""

    def describe(self) -> dict[str, Any]:
        """A JSON description of the learner (model, optimizer ...)."""


def build_model(source: ModelSpec | nn.Module | Callable[[Dataset], nn.Module], data: Dataset,
                seed: int) -> nn.Module:
    """The initial network of a run with ``seed``: a ModelSpec built from the run seed, a deep
    copy of a module, or a factory called under the run seed (on the CPU)."""
    if isinstance(source, ModelSpec):
        return source.build(data, seed=derive_seed(seed, "init"))
    if isinstance(source, nn.Module):
        return copy.deepcopy(source)
    with cpu_seeded(derive_seed(seed, "init")):  # the caller's CUDA generators are left alone
        model = source(data)
    if not isinstance(model, nn.Module):
        raise SpecTypeError(f"the model factory returned {type(model).__name__}, not an "
                            "nn.Module")
    return model


def mode_sensitive(model: nn.Module) -> bool:
    """Whether the model's output depends on train/eval mode (BatchNorm, dropout ...)."""
    return any(isinstance(m, _MODE_SENSITIVE) for m in model.modules())


class TorchLearner:
    """A PyTorch classifier trained with cross-entropy by an optimizer.

    ``model`` is a :class:`~shiftsim.models.ModelSpec` (built for the dataset from the run seed),
    an ``nn.Module`` (deep-copied, so the caller's module is never changed) or a callable
    ``Dataset -> nn.Module``. ``optimizer`` is an :class:`~shiftsim.optim.OptimizerSpec`, a
    registry name, or a torch optimizer class or factory.

    When the model behaves the same in train and eval mode (no dropout, no BatchNorm), the
    training forward pass is also the scored prediction; otherwise an eval-mode forward pass is
    made first, so the score never sees train-mode behaviour.
    """

    def __init__(self, model: ModelSpec | nn.Module | Callable[[Dataset], nn.Module],
                 optimizer: OptimizerSpec | str | Any = "sgdm") -> None:
        if not isinstance(model, (ModelSpec, nn.Module)) and not callable(model):
            raise SpecTypeError(f"model must be a ModelSpec (e.g. ss.models.mlp()), an "
                                f"nn.Module or a callable Dataset -> nn.Module, got {model!r}")
        self.model_source = model
        self.optimizer_spec = optimizer if isinstance(optimizer, OptimizerSpec) else spec(optimizer)
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    def setup(self, data: Dataset, device: torch.device, seed: int) -> None:
        self.model = build_model(self.model_source, data, seed).to(device).train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ShiftsimError("the model has no trainable parameters")
        self.optimizer = self.optimizer_spec.build(params)
        self._needs_loss = self.optimizer_spec.needs_loss
        self._mode_sensitive = mode_sensitive(self.model)
        self._diagnostics = getattr(self.optimizer, "diagnostics", None)

    @property
    def cost(self) -> float:
        """The relative cost per training step a real-time stream charges (the optimizer's)."""
        return self.optimizer_spec.effective_cost

    def score(self, x: torch.Tensor, y: torch.Tensor, pred_out: torch.Tensor) -> torch.Tensor:
        """Predictions and loss without training (eval mode when the model has train/eval
        dependent layers): a batch a real-time stream's learner is too busy to train on."""
        model = self.model
        assert model is not None
        with torch.no_grad():
            if self._mode_sensitive:
                model.eval()
            logits = model(x)
            torch.argmax(logits, 1, out=pred_out)
            loss = F.cross_entropy(logits, y)
            if self._mode_sensitive:
                model.train()
        return loss

    def observe(self, x: torch.Tensor, y: torch.Tensor, pred_out: torch.Tensor) -> torch.Tensor:
        model, opt = self.model, self.optimizer
        assert model is not None and opt is not None
        if self._mode_sensitive:
            with torch.no_grad():
                model.eval()
                torch.argmax(model(x), 1, out=pred_out)
                model.train()
            logits = model(x)
        else:
            logits = model(x)
            with torch.no_grad():
                torch.argmax(logits, 1, out=pred_out)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        loss = loss.detach()
        if self._needs_loss:
            opt.step(loss=loss)
        else:
            opt.step()
        return loss

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        model = self.model
        assert model is not None
        if self._mode_sensitive:
            model.eval()
        out = torch.cat([model(chunk).argmax(1) for chunk in x.split(4096)])
        if self._mode_sensitive:
            model.train()
        return out

    def diagnostics(self) -> dict[str, torch.Tensor]:
        return self._diagnostics() if self._diagnostics is not None else {}

    def describe(self) -> dict[str, Any]:
        return describe_learner(self.model_source, self.optimizer_spec)


def describe_learner(model: ModelSpec | nn.Module | Callable[[Dataset], nn.Module],
                     optimizer: OptimizerSpec) -> dict[str, Any]:
    """The JSON description of a model trained by an optimizer (a run's ``info["learner"]``).

    >>> describe_learner(ModelSpec("linear"), spec("sgd"))["optimizer"]["name"]
    'sgd'
    """
    if isinstance(model, ModelSpec):
        described = model.to_dict()
    elif isinstance(model, nn.Module):
        described = {"module": type(model).__name__,
                     "parameters": sum(p.numel() for p in model.parameters())}
    else:
        described = {"factory": getattr(model, "__qualname__", repr(model))}
    try:
        opt = optimizer.to_dict()
    except ShiftsimError:
        opt = {"name": optimizer.name, "hparams": dict(optimizer.hparams)}
    return {"model": described, "optimizer": opt}
