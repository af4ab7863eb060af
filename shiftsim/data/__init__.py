"""Datasets: in-memory tensors plus metadata, and loaders that never download; your own data
through ``from_tensors`` / ``from_numpy``, any torchvision-style dataset (``from_dataset``), a
class-per-folder tree of image files (``image_folder``) or CIFAR-10's files (``cifar10``).

>>> import shiftsim as ss
>>> ss.data.digits()
Dataset('digits', train=1437, test=360, input_shape=(1, 8, 8), classes=10, kind='image')
"""

from .adapters import cifar10, from_dataset, image_folder
from .arrays import from_numpy, from_tensors
from .dataset import Dataset
from .loaders import FASHION_MNIST_ROOT, LOADERS, digits, fashion_mnist, load, mnist1d, synthetic

__all__ = ["Dataset", "FASHION_MNIST_ROOT", "LOADERS", "cifar10", "digits", "fashion_mnist",
           "from_dataset", "from_numpy", "from_tensors", "image_folder", "load", "mnist1d",
           "synthetic"]
