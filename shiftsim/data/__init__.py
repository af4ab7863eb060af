"""Datasets: in-memory tensors plus metadata, and loaders that never download.

>>> import shiftsim as ss
>>> ss.data.digits()
Dataset('digits', train=1437, test=360, input_shape=(1, 8, 8), classes=10, kind='image')
"""

from .dataset import Dataset
from .loaders import (
    FASHION_MNIST_ROOT,
    LOADERS,
    digits,
    fashion_mnist,
    from_numpy,
    from_tensors,
    load,
    mnist1d,
    synthetic,
)

__all__ = ["Dataset", "FASHION_MNIST_ROOT", "LOADERS", "digits", "fashion_mnist", "from_numpy",
           "from_tensors", "load", "mnist1d", "synthetic"]
