"""Checks made before any work starts, so that bad input fails in a second with one clear line
instead of deep inside a run.

:func:`check_model_fits` pushes two training samples through the model, without gradients
and in eval mode, and requires one output per class. A ModelSpec or a factory is built on
torch's ``meta`` device and given uninitialised CPU memory (no initialisation arithmetic, no
random numbers drawn); an ``nn.Module`` is used as it is (not copied; its train/eval flags
are restored), so the check costs about one small forward pass.
:func:`shiftsim.run`, :func:`shiftsim.run_fleet` and :meth:`shiftsim.Study.run` call it before
step 0.

>>> import shiftsim as ss
>>> from torch import nn
>>> check_model_fits(ss.models.mlp(hidden=(8,)), ss.data.digits())   # fits: returns quietly
>>> check_model_fits(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), ss.data.digits())
Traceback (most recent call last):
...
shiftsim.errors.ShiftsimError: the model does not fit dataset 'digits': it outputs 3 values per
sample (output shape (2, 3) for inputs of shape (2, 1, 8, 8)) but the dataset has 10 classes;
its last layer Linear(in_features=64, out_features=3, bias=True) must output 10
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from .errors import ShiftsimError, SpecTypeError

__all__ = ["check_model_fits"]


def _leaf_layers(model: nn.Module) -> list[nn.Module]:
    """Modules without children that hold parameters, in registration order."""
    return [m for m in model.modules()
            if not list(m.children()) and any(True for _ in m.parameters(recurse=False))]


def _shape_text(data: Any) -> str:
    shape = tuple(data.input_shape)
    n = math.prod(shape)
    return f"{shape} ({n} value{'s' if n != 1 else ''} per sample)"


def _build(source: Any, data: Any) -> nn.Module | None:
    """The network ``source`` (a ModelSpec or a factory) describes, on the CPU with
    uninitialised weights: built on the meta device (no initialisation arithmetic, no random
    numbers drawn) and given CPU memory with ``to_empty``; built for real when the meta device
    cannot build it. None when it cannot be built at all (the run raises its own error)."""
    from .learner import build_model

    cpu = data.to("cpu")
    with torch.random.fork_rng(devices=[]):
        try:
            with torch.device("meta"):
                net = build_model(source, cpu, 0)
            return _materialize(net)
        except ShiftsimError:
            raise
        except Exception:  # noqa: BLE001 - e.g. a factory that computes from the data
            pass
        try:
            return build_model(source, cpu, 0)
        except ShiftsimError:
            raise
        except Exception:  # noqa: BLE001 - the run reports its own error
            return None


def _materialize(net: nn.Module) -> nn.Module:
    """Give a meta-device module uninitialised CPU tensors of the same shapes (what
    ``to_empty`` does, without its first-call cost: it imports sympy, half a second)."""
    for m in net.modules():
        for name, p in m._parameters.items():
            if p is not None:
                m._parameters[name] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype),
                                                   requires_grad=p.requires_grad)
        for name, b in m._buffers.items():
            if b is not None:
                m._buffers[name] = torch.empty(b.shape, dtype=b.dtype)
    return net


def _forward(net: nn.Module, data: Any) -> torch.Tensor:
    """``net`` on two training samples, in eval mode and without gradients, so a module is
    left exactly as it was (its train/eval flags restored; BatchNorm statistics untouched)."""
    ref = next(iter([*net.parameters(), *net.buffers()]), None)
    x = data.x_train[:2].to(ref.device if ref is not None else "cpu")
    modes = [(m, m.training) for m in net.modules()]
    try:
        net.eval()
        with torch.no_grad():
            return net(x)
    finally:
        for m, training in modes:
            m.training = training


def _is_lazy(net: nn.Module) -> bool:
    from torch.nn.parameter import is_lazy

    return any(is_lazy(p) for p in net.parameters())


def check_model_fits(model: Any, data: Any) -> None:
    """Raise :class:`~shiftsim.errors.ShiftsimError` when ``model`` cannot take ``data``'s
    inputs or does not output one value per class.

    ``model`` is what :func:`shiftsim.run` takes: a ModelSpec, an ``nn.Module``, a callable
    ``Dataset -> nn.Module`` or a Learner (a :class:`~shiftsim.learner.TorchLearner` is checked
    through its model; other learners build their own models and are not checked). The check
    costs one forward pass of two samples on the CPU (a module: on its own device, not
    copied), with the weights of a built model left uninitialised.
    """
    from .learner import TorchLearner
    from .models import ModelSpec

    if isinstance(model, TorchLearner):
        model = model.model_source
    if isinstance(model, type) or not (isinstance(model, (ModelSpec, nn.Module))
                                       or callable(model)):
        return  # not a model source (a Learner): it builds its own network
    if all(hasattr(model, m) for m in ("setup", "observe", "predict")):
        return
    if isinstance(model, nn.Module):
        net = copy.deepcopy(model) if _is_lazy(model) else model  # a forward fills lazy shapes
    else:
        net = _build(model, data)
        if net is None:
            return
    try:
        out = _forward(net, data)
    except Exception as exc:  # noqa: BLE001 - what the run would raise at step 0
        layers = _leaf_layers(net)
        first = f"; its first layer is {layers[0]!r}" if layers else ""
        msg = " ".join(str(exc).split())
        raise ShiftsimError(
            f"the model does not fit dataset {data.name!r}: on inputs of shape "
            f"{_shape_text(data)} it raised {type(exc).__name__}: {msg}{first}") from None
    if not isinstance(out, torch.Tensor):
        raise SpecTypeError(f"the model must return a tensor of logits (batch, "
                            f"{data.num_classes}), got {type(out).__name__}")
    if out.ndim != 2:
        raise ShiftsimError(
            f"the model does not fit dataset {data.name!r}: its output has shape "
            f"{tuple(out.shape)} for inputs of shape {(2, *data.input_shape)}; it must be "
            f"(batch, {data.num_classes}), one logit per class")
    if out.shape[1] != data.num_classes:
        layers = _leaf_layers(net)
        last = f"; its last layer {layers[-1]!r} must output {data.num_classes}" if layers else ""
        raise ShiftsimError(
            f"the model does not fit dataset {data.name!r}: it outputs {out.shape[1]} values "
            f"per sample (output shape {tuple(out.shape)} for inputs of shape "
            f"{(2, *data.input_shape)}) but the dataset has {data.num_classes} classes{last}")
