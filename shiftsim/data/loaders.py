"""Dataset loaders, and :func:`load` that rebuilds a dataset from its ``source`` description.

Nothing here downloads: data comes from installed packages or local files. Datasets built from
your own arrays come from :mod:`shiftsim.data.arrays`, those from torchvision-style datasets and
image files from :mod:`shiftsim.data.adapters`.
"""

from __future__ import annotations

import gzip
import inspect
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ShiftsimError, SpecTypeError, check_range
from .adapters import cifar10, image_folder
from .dataset import Dataset

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")

_CACHE: dict[tuple, Dataset] = {}


def _check_seed(seed: object, below: int | None = None) -> int:
    """A loader's ``seed``: a non-negative integer (numpy's generators also need it below
    2**32)."""
    value = int(check_range(seed, "seed", 0, integer=True))
    if below is not None and value >= below:
        raise ShiftsimError(f"seed must be a non-negative integer below 2**32, got {seed!r}")
    return value


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
    seed = _check_seed(seed, 2**32)  # scikit-learn's random_state

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
    seed = _check_seed(seed)
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
    seed = _check_seed(seed, 2**32)  # numpy's seed
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
    seed = _check_seed(seed)
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


LOADERS = {"digits": digits, "fashion_mnist": fashion_mnist, "mnist1d": mnist1d,
           "synthetic": synthetic, "cifar10": cifar10, "image_folder": image_folder}


def load(source: dict[str, Any]) -> Dataset:
    """Rebuild a dataset from its ``source`` description (``Dataset.to_dict()["source"]``).

    >>> load(digits().source) is digits()
    True
    """
    if not isinstance(source, dict) or "loader" not in source:
        raise SpecTypeError(f"a dataset source must be a dict with a 'loader', got {source!r}")
    kwargs = {k: v for k, v in source.items() if k != "loader"}
    loader = source["loader"]
    if not isinstance(loader, str) or loader not in LOADERS:
        raise ShiftsimError(f"cannot rebuild dataset from loader {loader!r}; datasets built from "
                            f"tensors must be passed as objects; loaders: {', '.join(LOADERS)}")
    keys = list(inspect.signature(LOADERS[loader]).parameters)
    unknown = [k for k in kwargs if k not in keys]
    if unknown:
        listed = ", ".join(repr(k) for k in ["loader", *keys])
        raise ShiftsimError(f"unknown key {unknown[0]!r} in a {loader!r} dataset source; "
                            f"allowed: {listed}")
    return LOADERS[loader](**kwargs)
