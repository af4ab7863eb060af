"""Dataset loaders. Nothing here downloads: data comes from installed packages or local files."""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ShiftsimError, SpecTypeError, check_range
from .dataset import Dataset

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")

_CACHE: dict[tuple, Dataset] = {}


def _cached(key: tuple, build) -> Dataset:
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


#: the default split of :func:`digits` (``test_fraction=0.2, seed=0``): the indices
#: scikit-learn's ``train_test_split(stratify=y, random_state=0)`` gives, stored with the
#: package so that the default dataset needs no scikit-learn import (half a second) and does not
#: depend on its version; tests/test_data.py checks them against scikit-learn
DIGITS_SPLIT = "digits_split.npz"


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (images, target), read from the data file scikit-learn ships
    without importing scikit-learn; through ``load_digits`` when the file is elsewhere."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            data = np.loadtxt(path, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


def digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes): the embedded default.

    Pixels are scaled to [0, 1]; the train/held-out split is stratified and fixed by ``seed``.

    >>> ds = digits()
    >>> ds.input_shape, len(ds), ds.x_test.shape[0], float(ds.x_train.max())
    ((1, 8, 8), 1437, 360, 1.0)
    """
    check_range(test_fraction, "test_fraction", 0, 1, low_open=True, high_open=True)

    def build() -> Dataset:
        images, target = _digits_arrays()
        x = (images.astype(np.float32) / 16.0)[:, None, :, :]
        y = target.astype(np.int64)
        if (test_fraction, seed) == (0.2, 0):  # the default split, stored: no sklearn import
            with np.load(Path(__file__).with_name(DIGITS_SPLIT)) as split:
                tr, te = split["train"].astype(np.int64), split["test"].astype(np.int64)
        else:
            from sklearn.model_selection import train_test_split

            tr, te = train_test_split(np.arange(len(y)), test_size=test_fraction, stratify=y,
                                      random_state=seed)
        xtr, xte, ytr, yte = x[tr], x[te], y[tr], y[te]
        return Dataset("digits", torch.from_numpy(xtr), torch.from_numpy(ytr),
                       torch.from_numpy(xte), torch.from_numpy(yte),
                       tuple(str(c) for c in range(10)), "image",
                       {"loader": "digits", "test_fraction": test_fraction, "seed": seed})

    return _cached(("digits", test_fraction, seed), build)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ShiftsimError(f"{path} is not an IDX file (bad magic number)")
    dtype_code, ndim = data[2], data[3]
    if dtype_code != 0x08:
        raise ShiftsimError(f"{path}: only unsigned-byte IDX files are supported")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ShiftsimError(f"{path} is truncated: expected {int(np.prod(dims))} values, "
                            f"found {arr.size}")
    return arr.reshape(dims)


def _find(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "FashionMNIST" / "raw", root / "raw"):
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


def fashion_mnist(root: str | os.PathLike | None = None, train_size: int | None = None,
                  test_size: int | None = None, seed: int = 0) -> Dataset:
    """Fashion-MNIST (28x28 grey images, 10 classes) from local IDX files.

    ``root`` defaults to Debian's ``dataset-fashion-mnist`` path (``/usr/share/datasets/
    fashion-mnist``); a torchvision download folder (``root/FashionMNIST/raw``) works too.
    ``train_size`` / ``test_size`` take a seeded, stratified-by-chance subset for quick studies.
    """
    root_path = Path(root if root is not None else
                     os.environ.get("SHIFTSIM_FASHION_MNIST", FASHION_MNIST_ROOT))
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
    paths = [_find(root_path, s) for s in stems]
    if any(p is None for p in paths):
        missing = [s for s, p in zip(stems, paths) if p is None]
        raise ShiftsimError(
            f"Fashion-MNIST files not found under {str(root_path)!r} (missing {missing[0]}[.gz]); "
            "install Debian's package with `apt-get install dataset-fashion-mnist` or pass "
            "root= the folder holding the IDX files")

    def build() -> Dataset:
        xtr, ytr, xte, yte = (_read_idx(p) for p in paths)  # type: ignore[arg-type]
        x_train = torch.from_numpy(xtr.astype(np.float32) / 255.0)[:, None]
        x_test = torch.from_numpy(xte.astype(np.float32) / 255.0)[:, None]
        y_train = torch.from_numpy(ytr.astype(np.int64))
        y_test = torch.from_numpy(yte.astype(np.int64))
        g = torch.Generator().manual_seed(seed)
        if train_size is not None:
            check_range(train_size, "train_size", 1, len(y_train), integer=True)
            keep = torch.randperm(len(y_train), generator=g)[:train_size]
            x_train, y_train = x_train[keep], y_train[keep]
        if test_size is not None:
            check_range(test_size, "test_size", 1, len(y_test), integer=True)
            keep = torch.randperm(len(y_test), generator=g)[:test_size]
            x_test, y_test = x_test[keep], y_test[keep]
        return Dataset("fashion_mnist", x_train, y_train, x_test, y_test, FASHION_CLASSES, "image",
                       {"loader": "fashion_mnist", "root": str(root_path),
                        "train_size": train_size, "test_size": test_size, "seed": seed})

    return _cached(("fashion_mnist", str(root_path), train_size, test_size, seed), build)


def mnist1d(num_samples: int = 5000, train_split: float = 0.8, seed: int = 42) -> Dataset:
    """MNIST-1D (40-point 1-D signals, 10 classes), generated procedurally offline.

    Needs the optional dependency ``pip install 'shiftsim[mnist1d]'``; never downloads.
    """
    check_range(num_samples, "num_samples", 20, None, integer=True)
    check_range(train_split, "train_split", 0, 1, low_open=True, high_open=True)
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise ShiftsimError("mnist1d() needs the optional package mnist1d: "
                            "pip install 'shiftsim[mnist1d]'") from exc

    def build() -> Dataset:
        args = get_dataset_args()
        args.num_samples, args.train_split, args.seed = num_samples, train_split, seed
        state = np.random.get_state()  # make_dataset reseeds numpy's global generator
        try:
            d = make_dataset(args)
        finally:
            np.random.set_state(state)
        return Dataset("mnist1d", torch.tensor(d["x"], dtype=torch.float32),
                       torch.tensor(d["y"], dtype=torch.int64),
                       torch.tensor(d["x_test"], dtype=torch.float32),
                       torch.tensor(d["y_test"], dtype=torch.int64),
                       tuple(str(c) for c in range(10)), "tabular",
                       {"loader": "mnist1d", "num_samples": num_samples,
                        "train_split": train_split, "seed": seed})

    return _cached(("mnist1d", num_samples, train_split, seed), build)


def synthetic(n: int = 2000, dim: int = 20, classes: int = 4, difficulty: float = 1.0,
              seed: int = 0, test_fraction: float = 0.25) -> Dataset:
    """Gaussian clusters: ``classes`` centres on the unit sphere in ``dim`` dimensions.

    Each sample is its class centre plus isotropic noise of standard deviation
    ``0.5 * difficulty``; higher difficulty means more overlap. For fast tests and scaling
    benchmarks.

    >>> ds = synthetic(n=100, dim=5, classes=3, seed=1)
    >>> len(ds), ds.x_test.shape[0], ds.input_shape, ds.num_classes
    (75, 25, (5,), 3)
    """
    check_range(n, "n", 4, None, integer=True)
    check_range(dim, "dim", 1, None, integer=True)
    check_range(classes, "classes", 2, None, integer=True)
    check_range(difficulty, "difficulty", 0, None)
    check_range(test_fraction, "test_fraction", 0, 1, low_open=True, high_open=True)
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    centres = centres / centres.norm(dim=1, keepdim=True).clamp_min(1e-12)
    y = torch.arange(n) % classes
    y = y[torch.randperm(n, generator=g)]
    x = centres[y] + 0.5 * difficulty * torch.randn(n, dim, generator=g)
    n_test = max(1, int(round(n * test_fraction)))
    return Dataset("synthetic", x[n_test:].contiguous(), y[n_test:].contiguous(),
                   x[:n_test].contiguous(), y[:n_test].contiguous(),
                   tuple(str(c) for c in range(classes)), "tabular",
                   {"loader": "synthetic", "n": n, "dim": dim, "classes": classes,
                    "difficulty": difficulty, "seed": seed, "test_fraction": test_fraction})


def _as_tensor(value: Any, name: str, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value.detach()
    elif isinstance(value, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(value))
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

    >>> import torch
    >>> ds = from_tensors(torch.rand(50, 4), torch.arange(50) % 2)
    >>> len(ds), ds.x_test.shape[0], ds.classes
    (40, 10, ('0', '1'))
    >>> ds = from_tensors(torch.rand(6, 2), np.array(["cat", "dog", "ant"] * 2), test_fraction=0.5)
    >>> ds.classes, ds.num_classes
    (('ant', 'cat', 'dog'), 3)
    """
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


def _adapter(name: str) -> Any:
    def load_it(**kwargs: Any) -> Dataset:
        from . import adapters

        return getattr(adapters, name)(**kwargs)

    load_it.__name__ = name
    return load_it


LOADERS = {"digits": digits, "fashion_mnist": fashion_mnist, "mnist1d": mnist1d,
           "synthetic": synthetic, "cifar10": _adapter("cifar10"),
           "image_folder": _adapter("image_folder")}


def load(source: dict[str, Any]) -> Dataset:
    """Rebuild a dataset from its ``source`` description (``Dataset.to_dict()["source"]``).

    >>> load(digits().source) is digits()
    True
    """
    if not isinstance(source, dict) or "loader" not in source:
        raise SpecTypeError(f"a dataset source must be a dict with a 'loader', got {source!r}")
    kwargs = {k: v for k, v in source.items() if k != "loader"}
    loader = source["loader"]
    if loader not in LOADERS:
        raise ShiftsimError(f"cannot rebuild dataset from loader {loader!r}; datasets built from "
                            f"tensors must be passed as objects; loaders: {', '.join(LOADERS)}")
    return LOADERS[loader](**kwargs)
