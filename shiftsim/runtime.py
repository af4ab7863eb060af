"""Where torch runs a run: its device (:func:`resolve_device`) and its intra-op threads
(:func:`torch_threads`).

Small on purpose: the run loop, the engine and the study's executors all use these two, and
importing this module loads no torch until a function is called.

>>> resolve_device("cpu")
device(type='cpu')
>>> import torch
>>> before = torch.get_num_threads()
>>> with torch_threads(1):
...     torch.get_num_threads()
1
>>> torch.get_num_threads() == before
True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .errors import ShiftsimError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["resolve_device", "torch_threads"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU; anything else is checked and returned."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ShiftsimError(f"unknown device {device!r}; allowed: 'auto', 'cpu', 'cuda', "
                            "'cuda:N', 'mps'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ShiftsimError(f"device {device!r} asked for, but CUDA is not available here; "
                            "use device='auto' or 'cpu'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ShiftsimError(f"device {device!r} asked for, but MPS is not available here")
    return dev


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)`` (None: leave it as it is)."""
    if threads is None:
        yield
        return
    import torch

    old = torch.get_num_threads()
    if old != threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)
