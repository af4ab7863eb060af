"""The in-memory :class:`Dataset` every scenario draws from."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import ShiftsimError, SpecTypeError

KINDS = ("image", "tabular")


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train and held-out tensors plus what a scenario needs to know about them.

    ``x_train`` is ``(N, *input_shape)`` float32: images are ``(N, C, H, W)`` in [0, 1], tabular
    data ``(N, D)``. Labels are int64 in ``[0, num_classes)``. ``source`` says how to rebuild the
    dataset in another process (a loader name and its arguments), or fingerprints the tensors.

    >>> import torch
    >>> ds = Dataset("toy", torch.rand(8, 3), torch.tensor([0, 1] * 4), torch.rand(4, 3),
    ...              torch.tensor([0, 1, 0, 1]), classes=("a", "b"), kind="tabular")
    >>> ds.num_classes, ds.input_shape, len(ds)
    (2, (3,), 8)
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]
    kind: str = "tabular"
    source: dict[str, Any] = field(default_factory=dict)
    _moved: dict[str, Dataset] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ShiftsimError(f"dataset kind {self.kind!r} is not allowed; allowed: "
                               "'image', 'tabular'")
        for split, x, y in (("train", self.x_train, self.y_train),
                            ("test", self.x_test, self.y_test)):
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                raise SpecTypeError(f"{split} data must be torch tensors, got {type(x).__name__} "
                                    f"and {type(y).__name__}")
            if x.ndim < 2:
                raise ShiftsimError(f"x_{split} must have shape (N, features...), got "
                                   f"{tuple(x.shape)}")
            if y.ndim != 1 or y.shape[0] != x.shape[0]:
                raise ShiftsimError(
                    f"y_{split} must have shape ({x.shape[0]},) to match x_{split} "
                    f"{tuple(x.shape)}, got {tuple(y.shape)}")
            if x.shape[0] == 0:
                raise ShiftsimError(f"the {split} split is empty")
            if not x.is_floating_point():
                raise SpecTypeError(f"x_{split} must be floating point, got {x.dtype}")
            if y.dtype != torch.int64:
                raise SpecTypeError(f"y_{split} must be int64 class indices, got {y.dtype}")
            if not bool(torch.isfinite(x).all()):
                bad = int((~torch.isfinite(x)).sum())
                raise ShiftsimError(f"x_{split} has {bad} non-finite values (NaN or inf); "
                                    "clean the data first")
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi >= len(self.classes):
                raise ShiftsimError(f"y_{split} has labels in [{lo}, {hi}] but the dataset has "
                                    f"{len(self.classes)} classes; labels must be in "
                                    f"[0, {len(self.classes) - 1}]")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ShiftsimError(f"train inputs have shape {tuple(self.x_train.shape[1:])} but "
                                f"test inputs {tuple(self.x_test.shape[1:])}; they must match")
        if len(self.classes) < 2:
            raise ShiftsimError(f"a dataset needs at least 2 classes, got {len(self.classes)}")
        if self.kind == "image" and self.x_train.ndim != 4:
            raise ShiftsimError(f"image data must be (N, C, H, W), got {tuple(self.x_train.shape)}")

    # -- description ---------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_features(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def __len__(self) -> int:
        return int(self.x_train.shape[0])

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={len(self)}, test={self.x_test.shape[0]}, "
                f"input_shape={self.input_shape}, classes={self.num_classes}, kind={self.kind!r})")

    def class_counts(self, split: str = "train") -> list[int]:
        y = self.y_train if split == "train" else self.y_test
        return torch.bincount(y.cpu(), minlength=self.num_classes).tolist()

    def to_dict(self) -> dict[str, Any]:
        """A JSON description: the source to rebuild it plus its shape (no tensors)."""
        return {
            "name": self.name,
            "source": self.source or {"loader": "tensors", "fingerprint": self.fingerprint()},
            "train": len(self),
            "test": int(self.x_test.shape[0]),
            "input_shape": list(self.input_shape),
            "classes": list(self.classes),
            "kind": self.kind,
        }

    def fingerprint(self) -> str:
        """A content hash of the tensors (16 hex digits), stable across processes."""
        h = hashlib.sha256()
        for t in (self.x_train, self.y_train, self.x_test, self.y_test):
            t = t.detach().cpu().contiguous()
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()[:16]

    # -- moving ------------------------------------------------------------------------------
    def to(self, device: str | torch.device) -> Dataset:
        """The same dataset on ``device`` (moved once and cached)."""
        device = torch.device(device)
        if self.x_train.device == device:
            return self
        key = str(device)
        if key not in self._moved:
            self._moved[key] = Dataset(
                self.name, self.x_train.to(device), self.y_train.to(device),
                self.x_test.to(device), self.y_test.to(device), self.classes, self.kind,
                dict(self.source),
            )
        return self._moved[key]

    def __getstate__(self) -> dict[str, Any]:  # never pickle the device cache
        state = dict(self.__dict__)
        state["_moved"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
