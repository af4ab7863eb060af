"""Your own image data: any torchvision-style dataset, an image folder on disk, CIFAR-10's files.

Nothing here downloads, and torchvision is not needed: a *torchvision-style dataset* is any
object with ``len(ds)`` and ``ds[i] -> (image, label)`` — torchvision's own datasets (built with
``download=False``), an Avalanche or Hugging Face wrapper, or your class — where an image is a
PIL image, a tensor ``(C, H, W)`` / ``(H, W)`` (as torchvision's ``ToTensor`` gives) or a numpy
array ``(H, W, C)`` / ``(H, W)`` (as PIL and OpenCV give), with values in [0, 1] or 0..255
(``uint8``), and a label is a class index or a class name. The images are loaded once into
memory, as every shiftsim :class:`~shiftsim.data.Dataset` is.

>>> import torch
>>> class Squares:                     # a torchvision-style dataset: 8 tiny images, 2 classes
...     classes = ["dark", "bright"]
...     def __len__(self):
...         return 8
...     def __getitem__(self, i):
...         return torch.full((1, 4, 4), 0.1 + 0.8 * (i % 2)), i % 2
>>> ds = from_dataset(Squares(), test_fraction=0.25)
>>> ds
Dataset('Squares', train=6, test=2, input_shape=(1, 4, 4), classes=2, kind='image')
>>> ds.classes
('dark', 'bright')
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ShiftsimError, SpecTypeError, check_range
from .arrays import from_tensors
from .dataset import Dataset

#: file name endings :func:`image_folder` reads (those torchvision's ImageFolder reads)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
                    ".gif")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")

_CACHE: dict[tuple, Dataset] = {}


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow comes with matplotlib
        raise ShiftsimError("reading image files needs Pillow: pip install pillow") from exc
    return Image


def _image_tensor(img: Any, where: str, channels: int | None) -> torch.Tensor:
    """One image as a float32 (C, H, W) tensor in [0, 1]."""
    if hasattr(img, "convert") and hasattr(img, "mode"):  # a PIL image
        mode = {1: "L", 3: "RGB"}.get(channels or 0) or (
            "L" if img.mode in ("1", "L", "I", "I;16", "F") else "RGB")
        img = img.convert(mode)
        arr = np.asarray(img)
        t = torch.from_numpy(arr.copy())
        t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    elif isinstance(img, torch.Tensor):
        t = img.detach().cpu()
        if t.ndim == 2:
            t = t[None]
        if t.ndim != 3:
            raise ShiftsimError(f"{where}: an image tensor must be (C, H, W) or (H, W), got shape "
                                f"{tuple(t.shape)}")
    elif isinstance(img, np.ndarray):
        a = img
        if a.ndim == 3 and a.shape[-1] in (1, 3, 4):  # (H, W, C), as PIL and OpenCV
            a = np.moveaxis(a, -1, 0)
        elif a.ndim == 2:
            a = a[None]
        elif a.ndim != 3:
            raise ShiftsimError(f"{where}: an image array must be (H, W, C) or (H, W), got shape "
                                f"{a.shape}")
        t = torch.from_numpy(np.ascontiguousarray(a))
    else:
        raise SpecTypeError(f"{where}: an image must be a PIL image, a tensor or a numpy array, "
                            f"got {type(img).__name__}")
    if t.dtype == torch.uint8:
        t = t.to(torch.float32) / 255.0
    elif t.dtype == torch.bool:
        t = t.to(torch.float32)
    elif t.is_floating_point():
        t = t.to(torch.float32)
    else:
        raise SpecTypeError(f"{where}: image values must be uint8 (0..255) or floats in [0, 1], "
                            f"got {t.dtype}")
    if t.shape[0] == 4:  # drop an alpha channel
        t = t[:3]
    if channels == 1 and t.shape[0] == 3:
        t = (0.299 * t[0] + 0.587 * t[1] + 0.114 * t[2])[None]
    elif channels == 3 and t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return t


def _label(value: Any, where: str) -> int | str:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise SpecTypeError(f"{where}: a label must be a class index (int) or a class name "
                            f"(str), got {value!r}")
    return value


def _subset(n: int, size: int | None, what: str, seed: int) -> list[int]:
    if size is None:
        return list(range(n))
    check_range(size, what, 1, n, integer=True)
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=g)[: int(size)].tolist())


def _collect(ds: Any, split: str, size: tuple[int, int] | None, channels: int | None,
             limit: int | None, seed: int) -> tuple[torch.Tensor, list[Any]]:
    if not (hasattr(ds, "__len__") and hasattr(ds, "__getitem__")):
        raise SpecTypeError(f"the {split} dataset must support len(ds) and ds[i] -> (image, "
                            f"label), got {type(ds).__name__}")
    n = len(ds)
    if n == 0:
        raise ShiftsimError(f"the {split} dataset is empty")
    images: list[torch.Tensor] = []
    labels: list[Any] = []
    first: tuple[int, ...] | None = None
    for i in _subset(n, limit, f"{split}_size", seed):
        where = f"{split} item {i}"
        item = ds[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise SpecTypeError(f"{where}: ds[i] must give (image, label), got "
                                f"{type(item).__name__}")
        x = _image_tensor(item[0], where, channels)
        if size is not None and tuple(x.shape[1:]) != size:
            x = torch.nn.functional.interpolate(x[None], size=size, mode="bilinear",
                                                antialias=True, align_corners=False)[0]
            x = x.clamp(0.0, 1.0)
        if first is None:
            first = tuple(x.shape)
        elif tuple(x.shape) != first:
            raise ShiftsimError(
                f"images differ in shape: {first} (the first) and {tuple(x.shape)} ({where}); "
                "pass size=(height, width) to resize them" + (
                    " and channels=1 or 3 to convert them" if x.shape[0] != first[0] else ""))
        images.append(x)
        labels.append(_label(item[1], where))
    return torch.stack(images), labels


def _labels_array(labels: list[Any]) -> np.ndarray:
    if all(isinstance(v, int) for v in labels):
        return np.asarray(labels, dtype=np.int64)
    return np.asarray(labels, dtype=object)


def from_dataset(train: Any, test: Any = None, *, classes: Sequence[str] | None = None,
                 name: str | None = None, size: tuple[int, int] | int | None = None,
                 channels: int | None = None, train_size: int | None = None,
                 test_size: int | None = None, test_fraction: float = 0.2,
                 seed: int = 0) -> Dataset:
    """A Dataset from torchvision-style datasets (``len(ds)``, ``ds[i] -> (image, label)``).

    Args:
        train: the training dataset, e.g. ``torchvision.datasets.CIFAR10(root, train=True,
            download=False)`` or ``torchvision.datasets.ImageFolder(root)``.
        test: the held-out dataset; without it a seeded ``test_fraction`` of ``train`` is held
            out.
        classes: the class names in label order; default ``train.classes`` when it has them,
            else the labels' names (sorted) or indices.
        name: the dataset's name (default: the class name of ``train``).
        size: ``(height, width)`` (or one number) to resize every image to (bilinear,
            antialiased); needed when the images differ in size.
        channels: 1 (grey) or 3 (RGB) to convert every image; default as stored.
        train_size, test_size: load a seeded random subset of this many items (CIFAR-10 in
            full is 50,000 images, 600 MB as float32).
        test_fraction, seed: the held-out fraction (when there is no ``test``) and the seed of
            the subsets and the split.
    """
    check_range(seed, "seed", 0, integer=True)
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if size is not None:
        if not (isinstance(size, (tuple, list)) and len(size) == 2):
            raise SpecTypeError(f"size must be (height, width) or one number, got {size!r}")
        size = (int(check_range(size[0], "size[0]", 1, None, integer=True)),
                int(check_range(size[1], "size[1]", 1, None, integer=True)))
    if channels not in (None, 1, 3):
        raise ShiftsimError(f"channels must be None (as stored), 1 (grey) or 3 (RGB), got "
                            f"{channels!r}")
    xtr, ytr = _collect(train, "train", size, channels, train_size, seed)
    xte = yte = None
    if test is not None:
        xte, yte_list = _collect(test, "test", size, channels, test_size, seed)
        if tuple(xte.shape[1:]) != tuple(xtr.shape[1:]):
            raise ShiftsimError(f"train images are {tuple(xtr.shape[1:])} but test images "
                                f"{tuple(xte.shape[1:])}; pass size=(height, width)")
        yte = _labels_array(yte_list)
    names = classes if classes is not None else (getattr(train, "classes", None) or None)
    if names is not None:
        names = [str(c) for c in names]
    return from_tensors(xtr, _labels_array(ytr), xte, yte, classes=names,
                        name=name or type(train).__name__, kind="image",
                        test_fraction=test_fraction, seed=seed)


class _Files:
    """The images of a class-per-folder tree as a torchvision-style dataset of PIL images."""

    def __init__(self, files: list[tuple[Path, str]], classes: Sequence[str]) -> None:
        self.files, self.classes = files, list(classes)
        self._index = {c: i for i, c in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, cls = self.files[i]
        try:
            with _pil().open(path) as im:
                im.load()
                return im, self._index[cls]
        except OSError as exc:
            raise ShiftsimError(f"cannot read image {str(path)!r}: {exc}") from None


def _scan(root: Path, what: str) -> dict[str, list[Path]]:
    if not root.is_dir():
        raise ShiftsimError(f"{what} {str(root)!r} is not a folder")
    found: dict[str, list[Path]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in d.rglob("*") if f.is_file()
                       and f.suffix.lower() in IMAGE_EXTENSIONS)
        if files:
            found[d.name] = files
    if not found:
        raise ShiftsimError(f"no images found under {what} {str(root)!r}: expected one folder "
                            f"per class holding its images ({str(root)}/<class>/<image>; "
                            f"{', '.join(IMAGE_EXTENSIONS[:5])} ...)")
    return found


def image_folder(root: str | os.PathLike, test_root: str | os.PathLike | None = None, *,
                 size: tuple[int, int] | int | None = None, channels: int | None = None,
                 train_size: int | None = None, test_size: int | None = None,
                 test_fraction: float = 0.2, seed: int = 0, name: str | None = None) -> Dataset:
    """A Dataset from a folder of images with one subfolder per class (the layout of
    torchvision's ``ImageFolder``: ``root/<class>/<image>``), read with Pillow.

    The classes are the subfolders that hold images, in sorted order. ``test_root`` is a
    held-out folder of the same layout (e.g. ``root/../test``); without it a seeded
    ``test_fraction`` is held out. ``size``, ``channels``, ``train_size``, ``test_size``: as
    :func:`from_dataset` (images of different sizes need ``size``). The result is cached per
    arguments for the process, and it can be rebuilt in a worker process from its ``source``.
    """
    root_p = Path(root).expanduser()
    key = ("image_folder", str(root_p.resolve()), str(test_root), str(size), channels,
           train_size, test_size, test_fraction, seed, name)
    if key in _CACHE:
        return _CACHE[key]
    train = _scan(root_p, "image folder")
    test = _scan(Path(test_root).expanduser(), "test image folder") \
        if test_root is not None else None
    classes = sorted(set(train) | set(test or {}))
    ds = from_dataset(
        _Files([(f, c) for c in train for f in train[c]], classes),
        _Files([(f, c) for c in test for f in test[c]], classes) if test else None,
        classes=classes, name=name or root_p.resolve().name, size=size, channels=channels,
        train_size=train_size, test_size=test_size, test_fraction=test_fraction, seed=seed)
    source = {"loader": "image_folder", "root": str(root_p),
              "test_root": None if test_root is None else str(test_root),
              "size": list(size) if isinstance(size, (tuple, list)) else size,
              "channels": channels, "train_size": train_size, "test_size": test_size,
              "test_fraction": test_fraction, "seed": seed, "name": name}
    ds = dataclasses.replace(ds, source=source)
    _CACHE[key] = ds
    return ds


def _cifar_folder(root: Path) -> Path | None:
    for folder in (root, root / "cifar-10-batches-py"):
        if (folder / "data_batch_1").is_file() and (folder / "test_batch").is_file():
            return folder
    return None


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")  # noqa: S301 - the dataset's own format
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, KeyError, EOFError, TypeError) as exc:
        raise ShiftsimError(f"{str(path)!r} is not a CIFAR-10 batch file (python version): "
                            f"{type(exc).__name__}: {exc}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ShiftsimError(f"{str(path)!r} is not a CIFAR-10 batch file: data of shape "
                            f"{data.shape}, {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), labels


def cifar10(root: str | os.PathLike | None = None, train_size: int | None = None,
            test_size: int | None = None, seed: int = 0) -> Dataset:
    """CIFAR-10 (32x32 colour images, 10 classes, 50,000 + 10,000) from its files on disk.

    shiftsim never downloads: ``root`` is a folder holding ``cifar-10-batches-py/`` (the
    "CIFAR-10 python version" archive from https://www.cs.toronto.edu/~kriz/cifar.html,
    extracted; torchvision's ``CIFAR10(root, download=True)`` leaves the same folder) or the
    batch files themselves. Default: ``$SHIFTSIM_CIFAR10``. ``train_size`` / ``test_size``
    take a seeded random subset (the full training set is 600 MB as float32).
    """
    check_range(seed, "seed", 0, integer=True)
    root_p = Path(root if root is not None else os.environ.get("SHIFTSIM_CIFAR10", ".")
                  ).expanduser()
    folder = _cifar_folder(root_p)
    if folder is None:
        raise ShiftsimError(
            f"CIFAR-10 files not found under {str(root_p)!r} (no data_batch_1 and test_batch "
            "there or in cifar-10-batches-py/); shiftsim never downloads: extract the python "
            "version (cifar-10-python.tar.gz) and pass root= the folder, or set SHIFTSIM_CIFAR10")
    key = ("cifar10", str(folder.resolve()), train_size, test_size, seed)
    if key in _CACHE:
        return _CACHE[key]
    parts = [_read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)
             if (folder / f"data_batch_{i}").is_file()]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    xte, yte = _read_cifar_batch(folder / "test_batch")
    keep = _subset(len(ytr), train_size, "train_size", seed)
    keep_te = _subset(len(yte), test_size, "test_size", seed)
    names = CIFAR10_CLASSES
    meta = folder / "batches.meta"
    if meta.is_file():
        try:
            with open(meta, "rb") as f:
                got = pickle.load(f, encoding="bytes").get(b"label_names")  # noqa: S301
            if got and len(got) == 10:
                names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in got)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError):
            pass
    ds = Dataset("cifar10", torch.from_numpy(xtr[keep]).float().div_(255.0),
                 torch.from_numpy(ytr[keep]), torch.from_numpy(xte[keep_te]).float().div_(255.0),
                 torch.from_numpy(yte[keep_te]), names, "image",
                 {"loader": "cifar10", "root": str(root_p), "train_size": train_size,
                  "test_size": test_size, "seed": seed})
    _CACHE[key] = ds
    return ds
