"""Input (covariate) shifts: batched tensor ops on the data's device.

Each shift has a per-regime ``prepare`` (fixed randomness such as a pixel permutation, drawn once
from the regime's seeded CPU generator), a ``place`` that puts that state and any constant the
shift needs (a rotation matrix, per-feature factors) on the device once per regime, and an
``apply`` on a whole batch, which then moves nothing between host and device. Stochastic shifts
(noise) draw fresh randomness per batch from the run's device generator. Images are in [0, 1]
before every shift and are clipped to [0, 1] after it; tabular features are not clipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..errors import ShiftsimError
from .base import Shift, number, numbers

CIFAR_C = "CIFAR-10-C (Hendrycks & Dietterich 2019, make_cifar_c.py)"


class _InputShift(Shift):
    kind: ClassVar[str] = "input"
    stochastic: ClassVar[bool] = False
    images_only: ClassVar[bool] = False

    def check(self, data: Any) -> None:
        if self.images_only and data.kind != "image":
            raise ShiftsimError(f"{type(self).__name__} applies to images only; dataset "
                                f"{data.name!r} is {data.kind}")



def _positions(input_shape: tuple[int, ...]) -> int:
    """Number of input positions: pixels (H*W) for images, features for tabular data."""
    return input_shape[-2] * input_shape[-1] if len(input_shape) == 3 else math.prod(input_shape)


@dataclass(frozen=True)
class Rotate(_InputShift):
    """Rotate images counter-clockwise by ``degrees`` about the centre (bilinear, zero fill).

    Severity presets 15/30/45/60/90 degrees are ours (CIFAR-10-C has no rotation).

    >>> import torch
    >>> x = torch.zeros(1, 1, 3, 3); x[0, 0, 0, 1] = 1.0     # a dot at the top centre
    >>> Rotate(90).apply(x, None, None)[0, 0].round().tolist()  # moves to the left centre
    [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    """

    degrees: float | None = None
    severity: int | None = None

    images_only: ClassVar[bool] = True
    summary: ClassVar[str] = "rotate images about the centre (bilinear, zero fill)"
    severity_param: ClassVar[str] = "degrees"
    severity_values: ClassVar[tuple[float, ...]] = (15.0, 30.0, 45.0, 60.0, 90.0)
    severity_source: ClassVar[str] = "ours"

    def __post_init__(self) -> None:
        self._resolve_severity()
        object.__setattr__(self, "degrees", float(number(self.degrees, "degrees", "Rotate")))

    def is_identity(self) -> bool:
        return self.degrees % 360 == 0

    def _theta(self, h: int, w: int, device: Any, dtype: Any) -> torch.Tensor:
        a = math.radians(self.degrees)
        cos, sin = math.cos(a), math.sin(a)
        # theta maps output to input coordinates in normalised [-1, 1] units; the aspect terms
        # keep the rotation rigid in pixel space for non-square images (y points down, so a
        # counter-clockwise turn on screen samples the input at the output turned clockwise).
        return torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]],
                            dtype=dtype, device=device)

    def place(self, state: Any, input_shape: tuple[int, ...], device: Any, dtype: Any
              ) -> torch.Tensor:
        """The rotation matrix on ``device``, made once per regime."""
        return self._theta(input_shape[-2], input_shape[-1], device, dtype)

    def apply(self, x: torch.Tensor, state: Any, generator: torch.Generator | None) -> torch.Tensor:
        n, _, h, w = x.shape
        theta = state if _placed(state, x) and state.shape == (2, 3) \
            else self._theta(h, w, x.device, x.dtype)
        grid = F.affine_grid(theta.expand(n, 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@dataclass(frozen=True)
class GaussianNoise(_InputShift):
    """Add N(0, std²) noise to every element, fresh for every batch.

    Severity presets σ = 0.04, 0.06, 0.08, 0.09, 0.10 (CIFAR-10-C).

    >>> GaussianNoise(severity=5).std
    0.1
    """

    std: float | None = None
    severity: int | None = None

    stochastic: ClassVar[bool] = True
    summary: ClassVar[str] = "additive Gaussian noise per element, fresh per batch"
    severity_param: ClassVar[str] = "std"
    severity_values: ClassVar[tuple[float, ...]] = (0.04, 0.06, 0.08, 0.09, 0.10)
    severity_source: ClassVar[str] = CIFAR_C

    def __post_init__(self) -> None:
        self._resolve_severity()
        object.__setattr__(self, "std", float(number(self.std, "std", "GaussianNoise", 0)))

    def is_identity(self) -> bool:
        return self.std == 0

    def apply(self, x: torch.Tensor, state: Any, generator: torch.Generator | None) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + self.std * noise


@dataclass(frozen=True)
class GaussianBlur(_InputShift):
    """Separable Gaussian blur with standard deviation ``sigma`` pixels.

    The kernel's radius is ⌈4σ⌉ pixels and edges are replicated, close to scikit-image's
    ``gaussian`` defaults, which CIFAR-10-C used (those truncate at int(4σ + 0.5), one pixel
    less for σ = 0.6 and 0.8: at most 8e-6 apart on the digits' 8 × 8 images at the severity
    presets, measured against ``scipy.ndimage.gaussian_filter``). Severity presets σ = 0.4,
    0.6, 0.7, 0.8, 1.0.

    >>> import torch
    >>> x = torch.zeros(1, 1, 5, 5); x[0, 0, 2, 2] = 1.0
    >>> y = GaussianBlur(1.0).apply(x, None, None)
    >>> round(float(y.sum()), 4), bool(y[0, 0, 2, 2] < 1)
    (1.0, True)
    """

    sigma: float | None = None
    severity: int | None = None

    images_only: ClassVar[bool] = True
    summary: ClassVar[str] = "separable Gaussian blur (kernel truncated at 4 sigma)"
    severity_param: ClassVar[str] = "sigma"
    severity_values: ClassVar[tuple[float, ...]] = (0.4, 0.6, 0.7, 0.8, 1.0)
    severity_source: ClassVar[str] = CIFAR_C

    def __post_init__(self) -> None:
        self._resolve_severity()
        object.__setattr__(self, "sigma", float(number(self.sigma, "sigma", "GaussianBlur", 0)))

    def is_identity(self) -> bool:
        return self.sigma == 0

    def apply(self, x: torch.Tensor, state: Any, generator: torch.Generator | None) -> torch.Tensor:
        if self.sigma == 0:
            return x
        r = max(1, int(math.ceil(4.0 * self.sigma)))
        t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-0.5 * (t / self.sigma) ** 2)
        k = k / k.sum()
        c = x.shape[1]
        xp = F.pad(x, (r, r, r, r), mode="replicate")
        xp = F.conv2d(xp, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(xp, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


@dataclass(frozen=True)
class Contrast(_InputShift):
    """(x − mean) · factor + mean, the mean taken per image, over all its channels and pixels
    (per sample for tabular data). Severity presets 0.75, 0.5, 0.4, 0.3, 0.15 (CIFAR-10-C's
    constants; its ``make_cifar_c.py`` takes the mean per channel, which differs from this on
    RGB images only).

    >>> import torch
    >>> Contrast(0.5).apply(torch.tensor([[0.0, 1.0]]), None, None).tolist()
    [[0.25, 0.75]]
    >>> rgb = torch.tensor([0.0, 0.4, 0.8]).view(1, 3, 1, 1)   # one pixel, image mean 0.4
    >>> [round(v, 6) for v in Contrast(0.5).apply(rgb, None, None).flatten().tolist()]
    [0.2, 0.4, 0.6]
    """

    factor: float | None = None
    severity: int | None = None

    summary: ClassVar[str] = "scale deviations from the per-image mean"
    severity_param: ClassVar[str] = "factor"
    severity_values: ClassVar[tuple[float, ...]] = (0.75, 0.5, 0.4, 0.3, 0.15)
    severity_source: ClassVar[str] = CIFAR_C

    def __post_init__(self) -> None:
        self._resolve_severity()
        object.__setattr__(self, "factor", float(number(self.factor, "factor", "Contrast", 0)))

    def is_identity(self) -> bool:
        return self.factor == 1

    def apply(self, x: torch.Tensor, state: Any, generator: torch.Generator | None) -> torch.Tensor:
        mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
        return (x - mean) * self.factor + mean


@dataclass(frozen=True)
class Brightness(_InputShift):
    """Add ``delta`` to the brightness: to the intensity of grey images and tabular features,
    to the HSV value channel of RGB images (hue and saturation kept).
    Severity presets 0.05, 0.1, 0.15, 0.2, 0.3 (CIFAR-10-C).

    >>> import torch
    >>> Brightness(0.1).apply(torch.tensor([[[[0.5]]]]), None, None).item()
    0.6
    """

    delta: float | None = None
    severity: int | None = None

    summary: ClassVar[str] = "add to the brightness (HSV value for RGB, intensity for grey)"
    severity_param: ClassVar[str] = "delta"
    severity_values: ClassVar[tuple[float, ...]] = (0.05, 0.1, 0.15, 0.2, 0.3)
    severity_source: ClassVar[str] = CIFAR_C

    def __post_init__(self) -> None:
        self._resolve_severity()
        object.__setattr__(self, "delta", float(number(self.delta, "delta", "Brightness")))

    def is_identity(self) -> bool:
        return self.delta == 0

    def apply(self, x: torch.Tensor, state: Any, generator: torch.Generator | None) -> torch.Tensor:
        if x.ndim == 4 and x.shape[1] == 3:
            v = x.amax(dim=1, keepdim=True)
            v_new = (v + self.delta).clamp(0.0, 1.0)
            scale = torch.where(v > 0, v_new / v.clamp_min(1e-12), torch.zeros_like(v))
            return torch.where(v > 0, x * scale, v_new.expand_as(x))
        return x + self.delta


@dataclass(frozen=True)
class PixelPermutation(_InputShift):
    """A fixed random permutation of a ``fraction`` of the input positions, drawn per phase
    (pixels for images, all channels moved together; features for tabular data). At 1.0 this
    is Permuted MNIST. Severity presets 0.1, 0.25, 0.5, 0.75, 1.0 are ours.

    >>> import torch
    >>> s = PixelPermutation(1.0)
    >>> perm = s.prepare((4,), torch.Generator().manual_seed(0))
    >>> sorted(s.apply(torch.tensor([[0., 1., 2., 3.]]), perm, None)[0].tolist())
    [0.0, 1.0, 2.0, 3.0]
    """

    fraction: float | None = None
    severity: int | None = None

    summary: ClassVar[str] = "fixed random permutation of a fraction of input positions"
    severity_param: ClassVar[str] = "fraction"
    severity_values: ClassVar[tuple[float, ...]] = (0.1, 0.25, 0.5, 0.75, 1.0)
    severity_source: ClassVar[str] = "ours"
    regime_draw: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self._resolve_severity()
        object.__setattr__(self, "fraction",
                           float(number(self.fraction, "fraction", "PixelPermutation", 0, 1)))

    def is_identity(self) -> bool:
        return self.fraction == 0

    def prepare(self, input_shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        d = _positions(input_shape)
        k = int(math.floor(self.fraction * d + 0.5))
        chosen = torch.randperm(d, generator=generator)[:k]
        perm = torch.arange(d)
        perm[chosen] = chosen[torch.randperm(k, generator=generator)]
        return perm

    def place(self, state: Any, input_shape: tuple[int, ...], device: Any, dtype: Any
              ) -> torch.Tensor:
        """The permutation on ``device``, moved once per regime."""
        return state.to(device)

    def apply(self, x: torch.Tensor, state: torch.Tensor, generator: torch.Generator | None
              ) -> torch.Tensor:
        perm = state if state.device == x.device else state.to(x.device)
        if x.ndim == 4:
            return x.flatten(2)[:, :, perm].view_as(x)
        return x.flatten(1)[:, perm].view_as(x)


def _placed(state: Any, x: torch.Tensor) -> bool:
    """``state`` is a tensor already on ``x``'s device in ``x``'s dtype (compared on the host:
    no sync)."""
    return isinstance(state, torch.Tensor) and state.device == x.device and state.dtype == x.dtype


def _per_feature(value: float | tuple[float, ...], x: torch.Tensor, state: Any = None
                 ) -> torch.Tensor | float:
    if not isinstance(value, tuple):
        return value
    if _placed(state, x):
        return state
    return torch.tensor(value, dtype=x.dtype, device=x.device).view(1, *x.shape[1:])


def _place_per_feature(value: float | tuple[float, ...], input_shape: tuple[int, ...],
                       device: Any, dtype: Any) -> torch.Tensor | None:
    """Per-feature values as a ``(1, *input_shape)`` tensor on ``device`` (None for a scalar)."""
    if not isinstance(value, tuple):
        return None
    return torch.tensor(value, dtype=dtype, device=device).view(1, *input_shape)


def _check_length(shift: Any, name: str, value: Any, data: Any) -> None:
    if isinstance(value, tuple) and len(value) != data.num_features:
        raise ShiftsimError(f"{type(shift).__name__}.{name} has {len(value)} values but the "
                            f"dataset {data.name!r} has {data.num_features} features")


@dataclass(frozen=True)
class FeatureScale(_InputShift):
    """Multiply features by ``factor`` (a scalar or one value per feature): tabular covariate
    shift.

    >>> import torch
    >>> FeatureScale((1.0, 2.0)).apply(torch.tensor([[1.0, 1.0]]), None, None).tolist()
    [[1.0, 2.0]]
    """

    factor: float | tuple[float, ...] = 1.0

    summary: ClassVar[str] = "multiply features by a scalar or per-feature factor"

    def __post_init__(self) -> None:
        object.__setattr__(self, "factor", numbers(self.factor, "factor", "FeatureScale"))

    def is_identity(self) -> bool:
        f = self.factor
        return all(v == 1 for v in f) if isinstance(f, tuple) else f == 1

    def check(self, data: Any) -> None:
        _check_length(self, "factor", self.factor, data)

    def place(self, state: Any, input_shape: tuple[int, ...], device: Any, dtype: Any) -> Any:
        return _place_per_feature(self.factor, input_shape, device, dtype)

    def apply(self, x: torch.Tensor, state: Any, generator: torch.Generator | None) -> torch.Tensor:
        return x * _per_feature(self.factor, x, state)


@dataclass(frozen=True)
class FeatureOffset(_InputShift):
    """Add ``delta`` (a scalar or one value per feature) to the features.

    >>> import torch
    >>> FeatureOffset(0.5).apply(torch.tensor([[1.0, 2.0]]), None, None).tolist()
    [[1.5, 2.5]]
    """

    delta: float | tuple[float, ...] = 0.0

    summary: ClassVar[str] = "add a scalar or per-feature offset to the features"

    def __post_init__(self) -> None:
        object.__setattr__(self, "delta", numbers(self.delta, "delta", "FeatureOffset"))

    def is_identity(self) -> bool:
        d = self.delta
        return all(v == 0 for v in d) if isinstance(d, tuple) else d == 0

    def check(self, data: Any) -> None:
        _check_length(self, "delta", self.delta, data)

    def place(self, state: Any, input_shape: tuple[int, ...], device: Any, dtype: Any) -> Any:
        return _place_per_feature(self.delta, input_shape, device, dtype)

    def apply(self, x: torch.Tensor, state: Any, generator: torch.Generator | None) -> torch.Tensor:
        return x + _per_feature(self.delta, x, state)
