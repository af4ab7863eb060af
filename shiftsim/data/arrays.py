"""Datasets from your own arrays: :func:`from_tensors` and :func:`from_numpy`.

Labels are class indices or class names; without a held-out split a seeded fraction is held
out. The adapters (torchvision-style datasets, image folders, CIFAR-10's files) build their
datasets through :func:`from_tensors` too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import ShiftsimError, SpecTypeError, check_range
from .dataset import Dataset

__all__ = ["from_numpy", "from_tensors"]


def _as_tensor(value: Any, name: str, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value.detach()
    elif isinstance(value, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(_real_array(value, name)))
    else:
        raise SpecTypeError(f"{name} must be a torch tensor or a numpy array, got "
                            f"{type(value).__name__}")
    if dtype == torch.int64:
        if t.is_floating_point():
            if not bool((t == t.round()).all()):
                raise ShiftsimError(f"{name} must hold integer class labels, got fractional values")
        elif t.dtype == torch.bool:
            raise SpecTypeError(f"{name} must hold integer class labels, got booleans")
    return t.to(dtype).contiguous()


def _real_array(value: np.ndarray, name: str) -> np.ndarray:
    """A numpy array torch can take: numbers (booleans, integers, floats). Numbers held in an
    object array become float64; text, complex numbers and other objects are refused."""
    if value.dtype.kind in "biuf":
        return value
    import numbers

    if value.dtype.kind == "O":
        flat = value.ravel()
        bad = next((v for v in flat if not isinstance(v, numbers.Real)), None)
        if bad is None:
            return value.astype(np.float64)
    else:
        bad = value.ravel()[0] if value.size else None
    shown = bad.item() if isinstance(bad, np.generic) else bad
    raise SpecTypeError(f"{name} must hold real numbers, got {shown!r} of type "
                        f"{type(shown).__name__} (a numpy array of dtype {value.dtype})")


def _named(value: Any) -> bool:
    """Whether ``value`` holds class names (strings) rather than class indices."""
    if isinstance(value, (list, tuple)):
        return any(isinstance(v, (str, bytes, np.str_, np.bytes_)) for v in value)
    if not isinstance(value, np.ndarray):
        return False
    if value.dtype.kind in "US":
        return True
    return value.dtype.kind == "O" and any(
        isinstance(v, (str, bytes, np.str_, np.bytes_)) for v in value.ravel())


def _plain_labels(value: Any) -> Any:
    """An object array of integers as int64 (torch cannot take object arrays)."""
    if isinstance(value, np.ndarray) and value.dtype.kind == "O":
        import numbers

        flat = value.ravel()
        if all(isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))
               for v in flat):
            return value.astype(np.int64)
        bad = next(v for v in flat if not isinstance(v, numbers.Integral)
                   or isinstance(v, (bool, np.bool_)))
        raise SpecTypeError(f"labels must be class indices (integers) or class names "
                            f"(strings), got {bad!r} of type {type(bad).__name__}")
    return value


def _encode_names(y_train: Any, y_test: Any, classes: Any
                  ) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """String labels -> class indices. The classes are ``classes`` (a sequence of names) in
    that order, or else the sorted distinct labels of both splits; names are kept."""
    parts = [np.asarray(y, dtype=object) for y in (y_train, y_test) if y is not None]
    text = [np.array([v.decode() if isinstance(v, (bytes, np.bytes_)) else v
                      for v in p.ravel()], dtype=object) for p in parts]
    for split, t in zip(("y_train", "y_test"), text):
        bad = [v for v in t if not isinstance(v, (str, np.str_))]
        if bad:
            raise SpecTypeError(f"{split} mixes class names and other values ({bad[0]!r} of "
                                f"type {type(bad[0]).__name__}); give every label as a string, "
                                "or every label as an integer class index")
    every = np.concatenate(text).astype(str)
    if isinstance(classes, int) and not isinstance(classes, bool):
        raise SpecTypeError(f"classes={classes} is a number but the labels are class names; "
                            "pass classes=[names ...] to fix their order, or leave it out")
    if classes is None:
        names = tuple(sorted(set(every.tolist())))
    else:
        names = tuple(str(c) for c in classes)
        if len(set(names)) != len(names):
            raise ShiftsimError(f"classes has repeated names: {list(names)}")
        unknown = sorted(set(every.tolist()) - set(names))
        if unknown:
            listed = ", ".join(repr(n) for n in names)
            raise ShiftsimError(f"label {unknown[0]!r} is not one of the classes; allowed: "
                                f"{listed}")
    index = {n: i for i, n in enumerate(names)}
    codes = np.fromiter((index[v] for v in every), dtype=np.int64, count=every.size)
    out: list[np.ndarray] = []
    start = 0
    for p in parts:
        out.append(codes[start: start + p.size].reshape(p.shape))
        start += p.size
    return out[0], (out[1] if len(out) > 1 else None), names


def from_tensors(x_train: Any, y_train: Any, x_test: Any = None, y_test: Any = None, *,
                 classes: int | Sequence[str] | None = None, name: str = "tensors",
                 kind: str | None = None, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """A Dataset from tensors (or numpy arrays).

    Without a held-out split, a seeded ``test_fraction`` of the training data is held out.
    ``kind`` defaults to "image" for (N, C, H, W) or (N, H, W) inputs (a channel is added) and
    "tabular" otherwise. Images must be in [0, 1].

    Labels are class indices ``0 .. C-1`` or class names (strings, e.g. a numpy array of
    ``str`` or ``object``): names become indices in the order of ``classes`` when it is given
    as a list of names, else in sorted order, and the names are kept (``Dataset.classes``).
    Without ``classes``, integer labels give the classes ``0 .. max label``; labels that are
    all the same value are refused (a dataset needs 2 classes) unless ``classes`` says how
    many there are.

    >>> import torch
    >>> ds = from_tensors(torch.rand(50, 4), torch.arange(50) % 2)
    >>> len(ds), ds.x_test.shape[0], ds.classes
    (40, 10, ('0', '1'))
    >>> ds = from_tensors(torch.rand(6, 2), np.array(["cat", "dog", "ant"] * 2), test_fraction=0.5)
    >>> ds.classes, ds.num_classes
    (('ant', 'cat', 'dog'), 3)
    """
    check_range(seed, "seed", 0, integer=True)
    if _named(y_train) or _named(y_test):
        y_train, y_test, classes = _encode_names(y_train, y_test, classes)
    y_train, y_test = _plain_labels(y_train), _plain_labels(y_test)
    xtr = _as_tensor(x_train, "x_train", torch.float32)
    ytr = _as_tensor(y_train, "y_train", torch.int64)
    bad = int((~torch.isfinite(xtr)).sum())
    if bad:  # before any split, so the count is the one the caller passed
        raise ShiftsimError(f"x_train has {bad} non-finite values (NaN or inf); clean the data "
                            "first")
    if (x_test is None) != (y_test is None):
        raise ShiftsimError("give both x_test and y_test, or neither (then a split is held out)")
    if x_test is None:
        check_range(test_fraction, "test_fraction", 0, 1, low_open=True, high_open=True)
        if ytr.ndim != 1 or ytr.shape[0] != xtr.shape[0]:
            raise ShiftsimError(f"y_train must have shape ({xtr.shape[0]},) to match x_train "
                                f"{tuple(xtr.shape)}, got {tuple(ytr.shape)}")
        n = xtr.shape[0]
        n_test = int(round(n * test_fraction))
        if n_test < 1 or n_test >= n:
            raise ShiftsimError(f"cannot hold out test_fraction={test_fraction} of {n} samples")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        xte, yte = xtr[perm[:n_test]], ytr[perm[:n_test]]
        xtr, ytr = xtr[perm[n_test:]], ytr[perm[n_test:]]
    else:
        xte = _as_tensor(x_test, "x_test", torch.float32)
        yte = _as_tensor(y_test, "y_test", torch.int64)
    if kind is None:
        kind = "image" if xtr.ndim in (3, 4) else "tabular"
    if kind == "image" and xtr.ndim == 3:
        xtr, xte = xtr[:, None], xte[:, None]
    if classes is None:
        if ytr.numel() and yte.numel():
            distinct = torch.unique(torch.cat([ytr.reshape(-1), yte.reshape(-1)]))
            if len(distinct) == 1:  # no second class to infer: refuse, as for string labels
                raise ShiftsimError(f"a dataset needs at least 2 classes, got 1 (every label is "
                                    f"{int(distinct[0])}); pass classes=N to declare the "
                                    "classes absent from these arrays")
        hi = int(max(ytr.max(), yte.max())) if ytr.numel() and yte.numel() else 1
        names = tuple(str(c) for c in range(max(hi + 1, 2)))
    elif isinstance(classes, int):
        names = tuple(str(c) for c in range(classes))
    else:
        names = tuple(str(c) for c in classes)
    if kind == "image":
        for split, x in (("train", xtr), ("test", xte)):
            if x.numel() and bool(torch.isfinite(x).all()) and (x.min() < 0 or x.max() > 1):
                raise ShiftsimError(f"image inputs must be in [0, 1]; x_{split} spans "
                                    f"[{float(x.min()):g}, {float(x.max()):g}] — scale them, or "
                                    "pass kind='tabular'")
    return Dataset(name, xtr, ytr, xte, yte, names, kind)


def from_numpy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray | None = None,
               y_test: np.ndarray | None = None, **kwargs: Any) -> Dataset:
    """A Dataset from numpy arrays; same arguments as :func:`from_tensors`."""
    for name, a in (("x_train", x_train), ("y_train", y_train), ("x_test", x_test),
                    ("y_test", y_test)):
        if a is not None and not isinstance(a, np.ndarray):
            raise SpecTypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    return from_tensors(x_train, y_train, x_test, y_test, **kwargs)
