"""Model specs: small networks sized from the Dataset, built with a seeded initialisation.

No BatchNorm: train-mode and eval-mode predictions agree (so the training forward pass can be
scored) and the models vectorise across learners (the fleet). Normalisation is LayerNorm or
GroupNorm when asked for.

>>> import shiftsim as ss
>>> spec = ss.models.mlp(hidden=(64, 64))
>>> net = spec.build(ss.data.digits(), seed=0)
>>> sum(p.numel() for p in net.parameters())
8970
>>> ss.models.ModelSpec.from_dict(spec.to_dict()) == spec
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import ShiftsimError, SpecTypeError, allowed, check_range
from .runtime import cpu_seeded

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU,
}
NORMS = (None, "layer", "group")


def _act(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise allowed(name, "activation", ACTIVATIONS)
    return ACTIVATIONS[name]()


def _norm_1d(norm: str | None, width: int) -> list[nn.Module]:
    if norm is None:
        return []
    if norm == "layer":
        return [nn.LayerNorm(width)]
    return [nn.GroupNorm(min(8, width), width)]


def _norm_2d(norm: str | None, channels: int) -> list[nn.Module]:
    if norm is None:
        return []
    groups = 1 if norm == "layer" else math.gcd(8, channels)
    return [nn.GroupNorm(groups, channels)]


def _check_norm(norm: Any) -> None:
    if norm not in NORMS:
        raise allowed(norm, "norm", NORMS)


def _widths(value: Any, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        value = (value,)
    if not isinstance(value, (list, tuple)):
        raise SpecTypeError(f"{name} must be a tuple of layer widths, got {value!r}")
    return tuple(int(check_range(v, f"{name}[{i}]", 1, None, integer=True))
                 for i, v in enumerate(value))


class MLP(nn.Sequential):
    """Flatten, then Linear-[norm]-activation blocks, then a Linear head."""

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int],
                 activation: str = "relu", norm: str | None = None) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), *_norm_1d(norm, h), _act(activation)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class CNN(nn.Sequential):
    """Conv-[norm]-activation-maxpool blocks, then an MLP head."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, channels: Sequence[int],
                 hidden: int, kernel: int, activation: str, norm: str | None) -> None:
        c, h, w = input_shape
        layers: list[nn.Module] = []
        for ch in channels:
            layers += [nn.Conv2d(c, ch, kernel, padding=kernel // 2), *_norm_2d(norm, ch),
                       _act(activation)]
            if min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = ch
        layers += [nn.Flatten(), nn.Linear(c * h * w, hidden), _act(activation),
                   nn.Linear(hidden, num_classes)]
        super().__init__(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and a (projected) skip connection."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str | None,
                 activation: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=norm is None), *_norm_2d(norm, c_out),
            _act(activation),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=norm is None), *_norm_2d(norm, c_out))
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                      *_norm_2d(norm, c_out))
        self.act = _act(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class ResNet(nn.Module):
    """A small ResNet: a 3x3 stem, stages of BasicBlocks (stride 2 between stages), global
    average pooling and a linear head. GroupNorm by default — no BatchNorm."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: int,
                 blocks: Sequence[int], norm: str | None, activation: str) -> None:
        super().__init__()
        c = input_shape[0]
        self.stem = nn.Sequential(nn.Conv2d(c, width, 3, 1, 1, bias=norm is None),
                                  *_norm_2d(norm, width), _act(activation))
        stages: list[nn.Module] = []
        c_in = width
        for i, n in enumerate(blocks):
            c_out = width * 2 ** i
            for j in range(n):
                stages.append(BasicBlock(c_in, c_out, 2 if (j == 0 and i > 0) else 1, norm,
                                         activation))
                c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))


@dataclass(frozen=True)
class ModelSpec:
    """A frozen, JSON-serialisable model description; :meth:`build` sizes it from a Dataset."""

    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.name not in BUILDERS:
            raise allowed(self.name, "model", BUILDERS)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.kwargs)

    @property
    def label(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.kwargs)
        return f"{self.name}({opts})"

    def build(self, data: Any, seed: int | None = 0) -> nn.Module:
        """Build the network for ``data`` (a Dataset, or ``(input_shape, num_classes)``), with
        parameters initialised from ``seed`` (``None`` uses torch's global generator)."""
        if isinstance(data, tuple):
            input_shape, num_classes = tuple(data[0]), int(data[1])
            kind = "image" if len(input_shape) == 3 else "tabular"
        else:
            input_shape, num_classes, kind = data.input_shape, data.num_classes, data.kind
        if seed is None:
            return BUILDERS[self.name](input_shape, num_classes, kind, **self.options)
        with cpu_seeded(seed):  # the caller's CUDA generators are left alone
            return BUILDERS[self.name](input_shape, num_classes, kind, **self.options)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name,
                "kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in self.kwargs}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        if not isinstance(d, dict) or "name" not in d:
            raise SpecTypeError(f"a model spec dict needs a 'name', got {d!r}")
        return _SPEC_FACTORIES[d["name"]](**d.get("kwargs", {})) if d["name"] in _SPEC_FACTORIES \
            else cls(d["name"])


def _build_mlp(input_shape, num_classes, kind, hidden, activation, norm):
    return MLP(math.prod(input_shape), num_classes, hidden, activation, norm)


def _build_cnn(input_shape, num_classes, kind, channels, hidden, kernel, activation, norm):
    if kind != "image":
        raise ShiftsimError(f"cnn needs image data (N, C, H, W); got inputs of shape "
                            f"{tuple(input_shape)} — use mlp() for tabular data")
    return CNN(input_shape, num_classes, channels, hidden, kernel, activation, norm)


def _build_resnet(input_shape, num_classes, kind, width, blocks, norm, activation):
    if kind != "image":
        raise ShiftsimError(f"resnet needs image data (N, C, H, W); got inputs of shape "
                            f"{tuple(input_shape)} — use mlp() for tabular data")
    return ResNet(input_shape, num_classes, width, blocks, norm, activation)


def _build_linear(input_shape, num_classes, kind):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": _build_mlp, "cnn": _build_cnn, "resnet": _build_resnet, "linear": _build_linear,
}


def mlp(hidden: Sequence[int] | int = (256, 256), activation: str = "relu",
        norm: str | None = None) -> ModelSpec:
    """A multi-layer perceptron over the flattened input.

    >>> mlp(hidden=(128,)).label
    'mlp(hidden=(128,), activation=relu, norm=None)'
    """
    _act(activation)
    _check_norm(norm)
    return ModelSpec("mlp", (("hidden", _widths(hidden, "hidden")), ("activation", activation),
                             ("norm", norm)))


def cnn(channels: Sequence[int] | int = (32, 64), hidden: int = 128, kernel: int = 3,
        activation: str = "relu", norm: str | None = None) -> ModelSpec:
    """A small convolutional network for image data (conv-pool blocks, then an MLP head)."""
    _act(activation)
    _check_norm(norm)
    check_range(kernel, "kernel", 1, None, integer=True)
    if kernel % 2 == 0:
        raise ShiftsimError(f"kernel must be odd (same padding), got {kernel}")
    check_range(hidden, "hidden", 1, None, integer=True)
    return ModelSpec("cnn", (("channels", _widths(channels, "channels")), ("hidden", int(hidden)),
                             ("kernel", int(kernel)), ("activation", activation), ("norm", norm)))


def resnet(width: int = 32, blocks: Sequence[int] = (2, 2, 2), norm: str | None = "group",
           activation: str = "relu") -> ModelSpec:
    """A small ResNet-style network (GroupNorm by default) for GPU users."""
    _act(activation)
    _check_norm(norm)
    check_range(width, "width", 1, None, integer=True)
    return ModelSpec("resnet", (("width", int(width)), ("blocks", _widths(blocks, "blocks")),
                                ("norm", norm), ("activation", activation)))


def linear() -> ModelSpec:
    """Multinomial logistic regression (a single linear layer)."""
    return ModelSpec("linear")


_SPEC_FACTORIES: dict[str, Callable[..., ModelSpec]] = {
    "mlp": mlp, "cnn": cnn, "resnet": resnet, "linear": linear,
}
