"""Shared machinery for shiftsim's optimizer kernels.

The kernels in :mod:`~shiftsim.optim.tam`, :mod:`~shiftsim.optim.adamem`,
:mod:`~shiftsim.optim.momo` and :mod:`~shiftsim.optim.grams` work on lists of tensors, as
``torch.optim``'s functional kernels do. This module holds what they share:

* **learner dimensions.** With ``learner_dims=1`` every tensor carries a leading dimension ``K``
  (``K`` independent learners stacked, as the fleet runs them). Reductions (inner products,
  norms) are then per learner: summed over the trailing dimensions (and over tensors) to shape
  ``(K,)``. Hyperparameters may be Python floats or tensors (0-d, or ``(K,)``: :func:`bc` views
  those as ``(K, 1, ..., 1)`` for elementwise use). Scalar coefficients computed from
  them (bias corrections, step sizes) go through :func:`host`: Python float arithmetic per
  member for the fleet's :func:`exact` tensors.
* **reductions** accumulated in float32 (float64 for float64 tensors), as 0-d (or ``(K,)``)
  tensors on the device: no ``.item()``, no host synchronisation. Small tensors are concatenated
  first so a tiny model pays for a handful of dispatches, not three per tensor.
* **paths.** Every kernel has a multi-tensor path (``torch._foreach_*`` ops, one dispatch per op
  for the whole list) and a tensor-by-tensor path (all ops of the step on one tensor before the
  next, so the tensor's data is still in cache). Both run the same elementwise operations in the
  same order and share the reductions, so they give the same numbers. ``foreach=None`` picks per
  tensor: multi-tensor ops for small tensors (dispatch-bound) and on accelerators,
  tensor-by-tensor for large tensors on the CPU (memory-bound; measured faster, see
  ``benchmarks/optimizer_step.py``).
* **scratch buffers** reused from step to step instead of fresh temporaries (a fresh multi-MB
  temporary costs page faults on every step on the CPU).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ShiftsimError, SpecTypeError, allowed, check_range
from . import _native

Scalar = float | Tensor

#: Tensors with fewer elements (per learner) than this are concatenated before a reduction.
CAT_BELOW = 1 << 15
#: With ``foreach=None`` on the CPU, tensors with at least this many elements are updated
#: tensor by tensor (cache reuse), smaller ones with multi-tensor ops (fewer dispatches).
LOOP_FROM = 1 << 16


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype reductions accumulate in: float64 for float64 tensors, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def bc(h: Scalar, t: Tensor, ld: int) -> Scalar:
    """Broadcast a hyperparameter or per-learner scalar ``h`` against tensor ``t``.

    Floats and 0-d tensors are returned as they are; with ``ld=1`` a ``(K,)`` tensor is viewed
    as ``(K, 1, ..., 1)`` so it multiplies learner ``k``'s slice of ``t`` by ``h[k]``.

    >>> bc(torch.tensor([1.0, 2.0]), torch.ones(2, 3, 4), 1).shape
    torch.Size([2, 1, 1])
    >>> bc(0.5, torch.ones(3), 0)
    0.5
    """
    if not isinstance(h, Tensor) or ld == 0 or h.dim() == 0:
        return h
    return h.view(h.shape + (1,) * (t.dim() - h.dim()))


def flat(t: Tensor, ld: int) -> Tensor:
    """``t`` as a vector (``ld=0``) or as a ``(K, n)`` matrix (``ld=1``)."""
    return t.reshape(-1) if ld == 0 else t.reshape(t.shape[0], -1)


def per_learner(t: Tensor, ld: int) -> int:
    """Number of elements of ``t`` per learner."""
    return t.numel() if ld == 0 else t[0].numel()


def dot(a: Tensor, b: Tensor, ld: int, out: Tensor | None = None) -> Tensor:
    """Per-learner inner product of two same-shaped tensors (0-d, or ``(K,)`` with ``ld=1``),
    written into ``out`` when given."""
    acc = acc_dtype(a.dtype)
    if a.dtype != acc:
        a, b = a.to(acc), b.to(acc)
    if ld == 0:
        a = a if a.dim() == 1 else a.reshape(-1)
        b = b if b.dim() == 1 else b.reshape(-1)
        return torch.dot(a, b) if out is None else torch.dot(a, b, out=out)
    a = a if a.dim() == 2 else flat(a, 1)
    b = b if b.dim() == 2 else flat(b, 1)
    return torch.linalg.vecdot(a, b) if out is None else torch.linalg.vecdot(a, b, out=out)


def row_dot(a: Tensor, b: Tensor) -> Tensor:
    """:func:`dot` of two ``(K, n)`` tensors (one row per learner) with the product written
    into the calling thread's kept buffer of that shape (:meth:`Scratch.shaped`) instead of a
    new tensor: ``torch.linalg.vecdot`` is that product summed, so the numbers are the same
    bit for bit. [speed] The fleet's row kernels use it where the native row sums do not apply
    (:func:`row_dots`); one thread, in-process toggle against ``vecdot``, 130 members of a
    64-unit MLP: the MoMo group 1.56 -> 1.34 ms a step, AM-SGD 1.33 -> 1.15, TAM 1.21 -> 1.14,
    AdaTAM 2.36 -> 2.39; a single run within 2-5 % (3-9 us).

    >>> row_dot(torch.ones(2, 3), torch.full((2, 3), 2.0))
    tensor([6., 6.])
    """
    if a.dtype != acc_dtype(a.dtype) or a.dim() != 2:
        return dot(a, b, 1)
    return torch.mul(a, b, out=default_scratch().shaped(a)).sum(1)


def row_dots(tensors: Sequence[Tensor | Sequence[Tensor]], pairs: tuple[tuple[int, int], ...]
             ) -> tuple[Tensor, ...]:
    """Per-row inner products of ``(K, n)`` tensors, one ``(K,)`` tensor per pair ``(a, b)``
    of positions in ``tensors`` (``(1, 1)``: a squared norm). A tensor may be given as its
    segments, a list of ``(K, n_s)`` tensors whose rows one after another are its rows (a
    fleet's members' parameters, one block per parameter: :func:`rows`); then all are, split
    alike (where the native sums do not apply: concatenated on the CPU, the whole rows' bits;
    summed segment by segment on other devices, no copies). The sums are the native row sums
    of :mod:`~shiftsim.optim._native` where they apply (one pass over the tensors for all pairs;
    their own fixed summation order, views of a kept buffer valid until the thread's next call
    of that shape), else :func:`row_dot` for each pair. [speed] One thread, native against
    torch's sums toggled in one process (median ms a step over 6 interleaved runs; with the
    fleet's earlier layout, one row tensor per member, before its blocks): in a fleet
    of 32 MLPs 64-128-128-10 (8 members each of SGD-momentum, TAM, Adam, MoMo) the TAM group
    0.48 -> 0.38, MoMo 0.53 -> 0.40, the whole step 5.20 -> 4.84; 8 AdaTAM and 8 AM-SGD members
    1.03 -> 0.88 and 0.54 -> 0.41; a single run of a 64-unit MLP, MoMo 0.183 -> 0.172, AM-SGD
    0.177 -> 0.161, TAM not resolved (0.157 -> 0.178 in one 4-run toggle, 0.156 -> 0.147 in an
    8-run one). The sums alone: ``benchmarks/row_sums.py``.

    >>> m, g = torch.ones(2, 3), torch.full((2, 3), 2.0)
    >>> [t.tolist() for t in row_dots([m, g], ((0, 1), (1, 1)))]
    [[6.0, 6.0], [12.0, 12.0]]
    """
    sums = _native.row_sums(tensors, pairs)
    if sums is not None:
        return sums
    segs = [[t] if isinstance(t, Tensor) else list(t) for t in tensors]
    if len(segs[0]) > 1 and segs[0][0].device.type != "cpu":
        # off the CPU: a sum over the segments (no copies; other bits than the whole rows',
        # as a GPU's kernels are anyway)
        return tuple(_segment_sum(segs[a], segs[b]) for a, b in pairs)
    # torch's sums of the rows as one tensor: the bits of the whole rows
    whole = [t[0] if len(t) == 1 else torch.cat(t, 1) for t in segs]
    return tuple(row_dot(whole[a], whole[b]) for a, b in pairs)


def _segment_sum(xs: list[Tensor], ys: list[Tensor]) -> Tensor:
    """``sum_s row_dot(xs[s], ys[s])``, the segments in order."""
    total = row_dot(xs[0], ys[0])
    for x, y in zip(xs[1:], ys[1:]):
        total = total + row_dot(x, y)
    return total


def rows(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Stacked tensors ``(K, ...)`` as ``(K, n)`` views (an error where a tensor's members
    are not contiguous: a copy would lose the updates): the segments of the members' rows
    (:func:`row_dots`). A fleet's row kernels step these lists with one multi-tensor operation
    each (``torch._foreach_*``; on the CPU the same kernels tensor by tensor, the same numbers
    as one tensor of the rows).

    >>> [tuple(t.shape) for t in rows([torch.zeros(2, 3, 4), torch.zeros(2, 3)])]
    [(2, 12), (2, 3)]
    """
    return [t if t.dim() == 2 else t.view(t.shape[0], -1) for t in tensors]  # never a copy


def total_dots(
    pairs: Sequence[tuple[Sequence[Tensor], Sequence[Tensor]]], ld: int
) -> Tensor:
    """Sums over all tensors of several inner products: ``out[j] = sum_i <xs_j[i], ys_j[i]>``.

    ``pairs`` lists ``(xs, ys)`` tensor lists of equal length; lists may repeat (``(g, g)`` is a
    squared norm). Returns shape ``(len(pairs),)``, or ``(len(pairs), K)`` with ``ld=1``, in the
    accumulation dtype. Tensors below :data:`CAT_BELOW` elements are concatenated first; larger
    ones are reduced one at a time, all pairs of one tensor together (cache reuse).

    >>> x = [torch.ones(3), torch.full((2,), 2.0)]
    >>> y = [torch.ones(3), torch.ones(2)]
    >>> total_dots([(x, x), (x, y)], 0)
    tensor([11.,  7.])
    """
    n = len(pairs[0][0])
    ref = pairs[0][0]
    small = [i for i in range(n) if per_learner(ref[i], ld) < CAT_BELOW]
    large = [i for i in range(n) if per_learner(ref[i], ld) >= CAT_BELOW]
    parts: list[Tensor] = []
    if small:
        cats: dict[int, Tensor] = {}

        def cat(xs: Sequence[Tensor]) -> Tensor:
            key = id(xs)
            if key not in cats:
                if len(small) == 1:
                    cats[key] = flat(xs[small[0]], ld)
                else:
                    cats[key] = torch.cat([flat(xs[i], ld) for i in small], dim=ld)
            return cats[key]

        parts.append(torch.stack([dot(cat(xs), cat(ys), ld) for xs, ys in pairs]))
    for i in large:
        parts.append(torch.stack([dot(xs[i], ys[i], ld) for xs, ys in pairs]))
    if len(parts) == 1:
        return parts[0]
    return torch.stack(parts).sum(0)


def tensor_dots(
    pairs: Sequence[tuple[Sequence[Tensor], Sequence[Tensor]]], ld: int
) -> Tensor:
    """Per-tensor inner products: ``out[i, j] = <xs_j[i], ys_j[i]>``.

    Shape ``(n_tensors, len(pairs))``, or ``(n_tensors, len(pairs), K)`` with ``ld=1``.
    """
    n = len(pairs[0][0])
    return torch.stack(
        [torch.stack([dot(xs[i], ys[i], ld) for xs, ys in pairs]) for i in range(n)]
    )


def split_paths(tensors: Sequence[Tensor], foreach: bool | None, ld: int) -> tuple[
    list[int], list[int]
]:
    """Indices of the tensors to update with multi-tensor ops, and tensor by tensor."""
    n = len(tensors)
    if foreach is True:
        return list(range(n)), []
    if foreach is False:
        return [], list(range(n))
    fe, loop = [], []
    for i, t in enumerate(tensors):
        if t.device.type == "cpu" and per_learner(t, ld) >= LOOP_FROM:
            loop.append(i)
        else:
            fe.append(i)
    return fe, loop


def pick(xs: Sequence, idx: Sequence[int]) -> list:
    """``[xs[i] for i in idx]``."""
    return [xs[i] for i in idx]


class Scratch:
    """Reusable flat work buffers, one per ``(device, dtype, slot)``, grown on demand.

    ``get(t, slot)`` returns a tensor shaped like ``t`` that may be overwritten freely until the
    next ``get`` of the same slot for a tensor of the same device and dtype; ``shaped(t)`` one
    kept for ``t``'s exact shape, until the next ``shaped`` of that shape.
    """

    def __init__(self) -> None:
        self._bufs: dict[tuple[torch.device, torch.dtype, int], Tensor] = {}
        self._shaped: dict[tuple[torch.Size, torch.dtype, torch.device], Tensor] = {}

    def get(self, t: Tensor, slot: int = 0) -> Tensor:
        key = (t.device, t.dtype, slot)
        buf = self._bufs.get(key)
        n = t.numel()
        if buf is None or buf.numel() < n:
            buf = torch.empty(n, device=t.device, dtype=t.dtype)
            self._bufs[key] = buf
        return buf[:n].view(t.shape)

    def shaped(self, t: Tensor) -> Tensor:
        """A buffer of exactly ``t``'s shape, dtype and device, kept by that key (no slice or
        view a call, which matters for the small tensors of a fleet's row kernels: products
        written through :meth:`get` made the MoMo group of a single run 0.205 ms a step
        against 0.165 with fresh tensors, through a kept buffer by shape 0.169); at most 16
        shapes are kept."""
        key = (t.shape, t.dtype, t.device)
        buf = self._shaped.get(key)
        if buf is None:
            if len(self._shaped) >= 16:
                self._shaped.clear()
            buf = self._shaped[key] = torch.empty(t.shape, dtype=t.dtype, device=t.device)
        return buf


_THREAD = threading.local()


def default_scratch() -> Scratch:
    """The calling thread's scratch, used by the functional kernels when none is passed (one
    per thread: kernels stepping in two threads never share a buffer)."""
    scratch = getattr(_THREAD, "scratch", None)
    if scratch is None:
        scratch = _THREAD.scratch = Scratch()
    return scratch


# ----------------------------------------------------------------- elementwise helpers


def _numpy_sqrt(x: Tensor, out: Tensor) -> bool:
    """``out = sqrt(x)`` through numpy where both are CPU float tensors; False where not."""
    if x.device.type != "cpu" or out.device.type != "cpu" or x.dtype not in _NUMPY_SQRT \
            or out.dtype != x.dtype or out.shape != x.shape:
        return False
    np.sqrt((x.detach() if x.requires_grad else x).numpy(),
            out=(out.detach() if out.requires_grad else out).numpy())
    return True


#: the dtypes :func:`sqrt` takes through numpy on the CPU
_NUMPY_SQRT = (torch.float32, torch.float64)


def sqrt(x: Tensor, out: Tensor | None = None) -> Tensor:
    """The correctly rounded square root of ``x`` (into ``out`` when given; ``out`` may be ``x``).

    On the CPU torch's ``sqrt`` (MKL's vector math in the builds measured here) is not the
    correctly rounded square root and slows down on zeros: against the float64 square root
    rounded once, it differed by one ulp for 3.4 M of 20 M random positive float32 values, and
    over 96,000 elements it took 394 us on zeros against 49 us on random values (one thread),
    where numpy's ``sqrt`` (IEEE: correctly rounded) took 39-41 us on both. An optimizer's
    second moments hold exact zeros wherever a gradient is always 0 (4 of the digits' 64 pixels
    are 0 in every training image, and so are their first-layer weights' gradients), so CPU
    float tensors go through numpy (sharing memory, no copy); other tensors
    through ``torch.sqrt`` (IEEE on CUDA by default; untested here). The compiled kernels'
    square root (Inductor's) is the correctly rounded one too: 0 of 4 M random values differed.
    numpy's runs on one thread: with two torch threads, over 2.1 M elements, three rounds,
    torch's took 781 / 789 / 1,403 us against numpy's 918 / 951 / 961 on random values, and
    2,740 / 2,789 / 2,078 us against 928 / 998 / 1,030 with 20 % zeros.

    >>> sqrt(torch.tensor([0.0, 2.0, 4.0]))
    tensor([0.0000, 1.4142, 2.0000])
    """
    o = torch.empty_like(x) if out is None else out
    if not _numpy_sqrt(x, o):
        torch.sqrt(x, out=o)
    return o


def foreach_sqrt(xs: Sequence[Tensor]) -> list[Tensor]:
    """:func:`sqrt` of each tensor, new tensors (as ``torch._foreach_sqrt``)."""
    if xs and xs[0].device.type != "cpu":
        return list(torch._foreach_sqrt(list(xs)))
    return [sqrt(x) for x in xs]


def foreach_sqrt_(xs: Sequence[Tensor]) -> None:
    """:func:`sqrt` of each tensor in place (as ``torch._foreach_sqrt_``)."""
    if xs and xs[0].device.type != "cpu":
        torch._foreach_sqrt_(list(xs))
        return
    for x in xs:
        sqrt(x, out=x)


def axpy_(y: Tensor, x: Tensor, a: Scalar, ld: int) -> None:
    """``y += a * x`` for a float or a (per-learner) tensor scalar ``a``."""
    if isinstance(a, Tensor):
        y.addcmul_(x, bc(a, y, ld))
    else:
        y.add_(x, alpha=a)


def foreach_axpy_(ys: list[Tensor], xs: list[Tensor], a: Scalar | Sequence[Tensor], ld: int
                  ) -> None:
    """``y_i += a * x_i`` over lists; ``a`` a float, a tensor scalar, or one tensor per item."""
    if not ys:
        return
    if isinstance(a, (list, tuple)):
        torch._foreach_addcmul_(ys, xs, [bc(v, y, ld) for v, y in zip(a, ys)])
    elif isinstance(a, Tensor):
        torch._foreach_addcmul_(ys, xs, [bc(a, y, ld) for y in ys])
    else:
        torch._foreach_add_(ys, xs, alpha=a)


def scale_(y: Tensor, s: Scalar, ld: int) -> None:
    """``y *= s``."""
    y.mul_(bc(s, y, ld))


def foreach_scale_(ys: list[Tensor], s: Scalar | Sequence[Scalar], ld: int) -> None:
    """``y_i *= s`` (or ``s_i``) over a list."""
    if not ys:
        return
    if isinstance(s, (list, tuple)):
        torch._foreach_mul_(ys, [bc(v, y, ld) if isinstance(v, Tensor) else v
                                 for v, y in zip(s, ys)])
    elif isinstance(s, Tensor) and (ld == 0 or s.dim() == 0):
        torch._foreach_mul_(ys, s)
    elif isinstance(s, Tensor):
        torch._foreach_mul_(ys, [bc(s, y, ld) for y in ys])
    else:
        torch._foreach_mul_(ys, s)


def scalar_state(like: Tensor, *shape: int, ld: int = 0, fill: Scalar = 0.0) -> Tensor:
    """A scalar state tensor (one value per learner, or ``shape`` of them) in the accumulation
    dtype: shape ``(*shape, K)`` for ``ld=1`` (``K`` from ``like``), ``shape`` for ``ld=0``,
    filled with ``fill`` (a float or a per-learner tensor).

    >>> scalar_state(torch.zeros(4, 3), 2, ld=1, fill=1.0).shape
    torch.Size([2, 4])
    """
    out = torch.zeros((*shape, *like.shape[:ld]), device=like.device, dtype=acc_dtype(like.dtype))
    return out.add_(fill)


def is_zero(h: Scalar) -> bool:
    """True for a float hyperparameter equal to 0 (tensor hyperparameters are never skipped)."""
    return not isinstance(h, Tensor) and h == 0


# ----------------------------------------------------------------- checks


def check_number(value: object, name: str, low: float | None = None, high: float | None = None,
                 *, low_open: bool = False, high_open: bool = False) -> float:
    """Validate a hyperparameter: a finite real number (or one-element tensor) within the
    given bounds (:func:`shiftsim.errors.check_range`)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise SpecTypeError(f"{name} must be a number, got a tensor of shape "
                                f"{tuple(value.shape)}")
        value = float(value)
    return check_range(value, name, low, high, low_open=low_open, high_open=high_open)


def check_betas(betas: object, name: str = "betas") -> tuple[float, float]:
    """Two numbers, each in [0, 1)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise SpecTypeError(f"{name} must be a pair of numbers in [0, 1), got {betas!r}")
    b1 = check_number(betas[0], f"{name}[0]", 0.0, 1.0, high_open=True)
    b2 = check_number(betas[1], f"{name}[1]", 0.0, 1.0, high_open=True)
    return (b1, b2)


def check_choice(value: object, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise allowed(value, name, choices)
    return value  # type: ignore[return-value]


def check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise SpecTypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_foreach(value: object) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise SpecTypeError(f"foreach must be True, False or None, got {value!r}")
    return value


def check_grad(p: Tensor, who: str) -> Tensor:
    g = p.grad
    if g.is_sparse:
        raise ShiftsimError(
            f"{who} does not support sparse gradients (parameter of shape {tuple(p.shape)}); "
            "use a dense embedding or torch.optim.SparseAdam"
        )
    if g.is_complex():
        raise ShiftsimError(f"{who} does not support complex parameters")
    return g


def check_learner_dims(ld: int) -> int:
    if ld not in (0, 1):
        raise ShiftsimError(f"learner_dims must be 0 or 1, got {ld!r}")
    return ld


# ----------------------------------------------------------------- blocks and Adam-style steps


class Block:
    """Tensors that share hyperparameters (one param group): params, grads, state lists, hps."""

    __slots__ = ("params", "grads", "bufs", "hp", "steps")

    def __init__(self, params: list[Tensor], grads: list[Tensor], bufs: dict[str, list[Tensor]],
                 hp: dict[str, Scalar], steps: list[int] | None = None) -> None:
        self.params = params
        self.grads = grads
        self.bufs = bufs
        self.hp = hp
        self.steps = steps


def sqrt_(x: Scalar) -> Scalar:
    """sqrt of a float or a tensor."""
    return torch.sqrt(x) if isinstance(x, Tensor) else math.sqrt(x)


# ----------------------------------------------------------------- host scalars
#
# The fleet hands a rule its members' hyperparameters as tensors (``stacking.group_hyper``),
# each remembering its members' exact values (:func:`exact`). A rule's scalar coefficients
# (bias corrections, step sizes, ``1 - beta``) are then computed by :func:`host` on the host,
# per member, with the same Python float arithmetic as a float hyperparameter gets, and made
# a tensor once: one small host-to-tensor write instead of a handful of 0-d tensor operations
# a step (each ~4 us on the CPU), and a member's coefficients are the same bits in any fleet.

#: :func:`host`'s results for coefficients asked for with ``keep=True``
_HOST: dict[tuple, Tensor] = {}
_HOST_LIMIT = 4096


def exact(values: Sequence[float], like: Tensor) -> Tensor:
    """The members' values of one hyperparameter as a tensor in ``like``'s dtype and device
    (0-d when they are all equal, else ``(K,)``) that remembers them exactly, for
    :func:`host`.

    >>> lr = exact([0.1, 0.2], torch.zeros(()))
    >>> lr, host(negative, lr)
    (tensor([0.1000, 0.2000]), tensor([-0.1000, -0.2000]))
    """
    vals = [float(v) for v in values]
    return _exact(vals, all(v == vals[0] for v in vals), like)


def _exact(vals: list[float], same: bool, like: Tensor) -> Tensor:
    """:func:`exact` for Python floats whose sameness is known."""
    t = (torch.full((), vals[0], dtype=like.dtype, device=like.device) if same
         else torch.tensor(vals, dtype=like.dtype, device=like.device))
    t._shiftsim_exact = vals[0] if same else tuple(vals)  # type: ignore[attr-defined]
    return t


def exact_values(t: Tensor) -> float | tuple[float, ...] | None:
    """The members' exact values behind an :func:`exact` tensor (None for other tensors)."""
    return getattr(t, "_shiftsim_exact", None)


def host(fn: Callable[..., float], *args: object, keep: bool = True) -> Any:
    """``fn(*args)`` for floats; for :func:`exact` tensors among ``args``, ``fn`` per member
    on their exact values (Python floats: what a float hyperparameter gives), as an
    :func:`exact` tensor. Other tensors: ``fn(*args)`` as tensor arithmetic (``fn`` must take
    tensors too: :func:`sqrt_`, not ``math.sqrt``). ``keep``: remember the result (for
    coefficients that do not change from step to step; ``fn`` must be a module-level
    function, its result depending on ``args`` alone; the tensor may then be shared by every
    caller with the same values, so nothing may write to it).

    >>> host(one_minus, 0.25), host(one_minus, exact([0.9, 0.99], torch.zeros(())))
    (0.75, tensor([0.1000, 0.0100]))
    """
    vals: list[object] = []
    like: Tensor | None = None
    k = 0
    for a in args:
        if isinstance(a, Tensor):
            v = exact_values(a)
            if v is None:
                return fn(*args)
            if like is None:
                like = a
            if isinstance(v, tuple):
                k = len(v)
            vals.append(v)
        else:
            vals.append(a)
    if like is None:
        return fn(*args)
    key = (fn, like.dtype, like.device, *vals) if keep else None
    if key is not None:
        hit = _HOST.get(key)
        if hit is not None:
            return hit
    out, distinct = _per_member(fn, vals) if k else ([fn(*vals)], 1)
    t = _exact([float(x) for x in out] if distinct > 1 else [float(out[0])], distinct == 1, like)
    if key is not None:
        if len(_HOST) >= _HOST_LIMIT:
            _HOST.clear()
        _HOST[key] = t
    return t


def _per_member(fn: Callable[..., float], vals: list[object]) -> tuple[list[float], int]:
    """``fn`` for each member, evaluated once per distinct combination of the members' values
    (a learning-rate grid of 5 values over 1,000 members: 5 evaluations), and the number of
    distinct results."""
    varied = [i for i, v in enumerate(vals) if isinstance(v, tuple)]
    if len(varied) == 1:
        j = varied[0]
        col: tuple[float, ...] = vals[j]  # type: ignore[assignment]
        args = list(vals)
        memo: dict[float, float] = {}
        for x in set(col):
            args[j] = x
            memo[x] = fn(*args)
        return [memo[x] for x in col], len(set(memo.values()))
    cols = list(zip(*(v if isinstance(v, tuple) else (v,) * len(vals[varied[0]])  # type: ignore
                      for v in vals)))
    combos: dict[tuple, float] = {c: fn(*c) for c in set(cols)}
    return [combos[c] for c in cols], len(set(combos.values()))


def one_minus(x: float) -> float:
    return 1 - x


def one_plus(x: float) -> float:
    return 1 + x


def one_plus_product(a: float, b: float) -> float:
    """``1 + a b`` (e.g. the proximal weight decay's ``1 + lr wd``)."""
    return 1 + a * b


def negative(x: float) -> float:
    return -x


def decay_factor(lr: float, wd: float) -> float:
    """``1 - lr * wd``: decoupled weight decay's factor on the parameters."""
    return 1 - lr * wd


def scaled_eps(eps: Scalar, b2: Scalar, t: int) -> Scalar:
    """``eps sqrt(1 - b2^t)``: an epsilon added to ``sqrt(v)`` before its bias correction
    (the same as ``eps`` after it)."""
    return eps * sqrt_(1 - b2 ** t)


def add_decay(params: list[Tensor], grads: list[Tensor], wd: Scalar, ld: int) -> list[Tensor]:
    """Coupled L2: new tensors ``g + wd * p`` (the gradients themselves are left alone)."""
    if isinstance(wd, Tensor):
        return [torch.addcmul(g, p, bc(wd, p, ld)) for p, g in zip(params, grads)]
    return [torch.add(g, p, alpha=wd) for p, g in zip(params, grads)]


def foreach_add_decay(params: list[Tensor], grads: list[Tensor], wd: Scalar, ld: int
                      ) -> list[Tensor]:
    """Multi-tensor :func:`add_decay` (same numbers)."""
    if not params:
        return []
    if isinstance(wd, Tensor):
        return list(torch._foreach_addcmul(grads, params, [bc(wd, p, ld) for p in params]))
    return list(torch._foreach_add(grads, params, alpha=wd))


def ema_sq_(v: Tensor, g: Tensor, beta2: Scalar, ld: int, tmp: Tensor) -> None:
    """``v = beta2 * v + (1 - beta2) * g * g`` (``tmp``: a scratch tensor shaped like ``g``)."""
    if isinstance(beta2, Tensor):
        v.mul_(bc(beta2, v, ld))
        torch.mul(g, bc(host(one_minus, beta2), g, ld), out=tmp)
        v.addcmul_(g, tmp)
    else:
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)


def foreach_ema_sq_(vs: list[Tensor], gs: list[Tensor], beta2: Scalar, ld: int) -> None:
    """Multi-tensor :func:`ema_sq_` (same numbers)."""
    if not vs:
        return
    if isinstance(beta2, Tensor):
        foreach_scale_(vs, beta2, ld)
        w = host(one_minus, beta2)
        tmp = torch._foreach_mul(gs, [bc(w, g, ld) for g in gs])
        torch._foreach_addcmul_(vs, gs, tmp)
    else:
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, gs, gs, value=1 - beta2)


def addcdiv_(p: Tensor, num: Tensor, den: Tensor, value: Scalar, ld: int) -> None:
    """``p += value * num / den``; ``den`` is a scratch tensor and may be overwritten."""
    if isinstance(value, Tensor):
        den.div_(bc(value, den, ld))
        p.addcdiv_(num, den)
    else:
        p.addcdiv_(num, den, value=value)


def foreach_addcdiv_(ps: list[Tensor], nums: list[Tensor], dens: list[Tensor],
                     values: Sequence[Scalar], ld: int) -> None:
    """Multi-tensor :func:`addcdiv_`, one value per tensor (same numbers)."""
    if not ps:
        return
    if isinstance(values[0], Tensor):  # tensor hyperparameters: all values are tensors
        torch._foreach_div_(dens, [bc(v, d, ld) for v, d in zip(values, dens)])
        torch._foreach_addcdiv_(ps, nums, dens)
    elif all(v == values[0] for v in values):
        torch._foreach_addcdiv_(ps, nums, dens, value=values[0])
    else:
        torch._foreach_addcdiv_(ps, nums, dens, list(values))


def add_scalar_(t: Tensor, s: Scalar, ld: int) -> None:
    """``t += s`` for a float or a (per-learner) tensor scalar."""
    t.add_(bc(s, t, ld))


def foreach_add_scalar_(ts: list[Tensor], s: Sequence[Scalar], ld: int) -> None:
    """``t_i += s_i`` (same numbers as :func:`add_scalar_`)."""
    if not ts:
        return
    if isinstance(s[0], Tensor):  # tensor hyperparameters: all values are tensors
        torch._foreach_add_(ts, [bc(v, t, ld) for v, t in zip(s, ts)])
    elif all(v == s[0] for v in s):
        torch._foreach_add_(ts, s[0])
    else:
        torch._foreach_add_(ts, list(s))


# ----------------------------------------------------------------- cached step structures


class Sums:
    """Preallocated rows for the sums :func:`total_dots` computes over fixed tensor lists: one
    row for the concatenated small tensors (if any), one per large tensor, one column per
    pair (each slot of shape ``trailing``: ``(K,)`` for learner dimensions). The dots write
    into views of the rows (``out=``), so a step stacks nothing.

    >>> s = Sums(torch.zeros(()), rows=2, cols=1)
    >>> s.slots[0][0].fill_(1.0) is not None and s.slots[1][0].fill_(2.0) is not None
    True
    >>> s.total()
    tensor([3.])
    """

    __slots__ = ("buf", "slots", "_one")

    def __init__(self, like: Tensor, rows: int, cols: int, trailing: tuple[int, ...] = ()
                 ) -> None:
        self.buf = torch.zeros(rows, cols, *trailing, device=like.device,
                               dtype=acc_dtype(like.dtype))
        self.slots = [list(r.unbind(0)) for r in self.buf.unbind(0)]
        self._one = self.buf[0] if rows == 1 else None

    def total(self) -> Tensor:
        """The column sums (shape ``(cols, *trailing)``): as ``torch.stack(rows).sum(0)``."""
        return self._one if self._one is not None else self.buf.sum(0)


class MomentSums:
    """``<m, g>``, ``|g|^2`` and, when asked, ``|m|^2`` of fixed tensors ``m`` (a momentum) with
    each step's gradients: the numbers of ``total_dots([(M, G), (G, G), (M, M)], 0)``, into
    preallocated rows (a step plan keeps it). ``small``: the indices concatenated for the sums.

    >>> m = [torch.ones(3), torch.full((2,), 2.0)]
    >>> MomentSums(m, [0, 1], [])([torch.ones(3), torch.ones(2)], True)
    tensor([ 7.,  5., 11.])
    """

    __slots__ = ("small", "msmall", "rows")

    def __init__(self, M: Sequence[Tensor], small: Sequence[int], large: Sequence[int]) -> None:
        flat = [m.view(-1) for m in M]
        self.small = list(small)
        self.msmall = flat[small[0]] if len(small) == 1 else [flat[i] for i in small]
        n = (1 if small else 0) + len(large)
        self.rows = {}
        for cols in (2, 3):
            sums = Sums(M[0], n, cols)
            slots = sums.slots[1:] if small else sums.slots
            self.rows[cols] = (sums, sums.slots[0] if small else None,
                               [(i, flat[i], row) for i, row in zip(large, slots)])

    def __call__(self, G: Sequence[Tensor], with_mm: bool) -> Tensor:
        """``[<m, g>, |g|^2]`` (and ``|m|^2``) summed over the tensors."""
        sums, first, large = self.rows[3 if with_mm else 2]
        if first is not None:
            small = self.small
            if len(small) == 1:
                g = G[small[0]]
                gc, mc = (g if g.dim() == 1 else g.reshape(-1)), self.msmall
            else:
                gc = torch.cat([G[i] if G[i].dim() == 1 else G[i].reshape(-1) for i in small])
                mc = torch.cat(self.msmall)  # type: ignore[arg-type]
            torch.dot(mc, gc, out=first[0])  # type: ignore[arg-type]
            torch.dot(gc, gc, out=first[1])
            if with_mm:
                torch.dot(mc, mc, out=first[2])  # type: ignore[arg-type]
        for i, mv, row in large:
            g = G[i]
            gv = g if g.dim() == 1 else g.reshape(-1)
            torch.dot(mv, gv, out=row[0])
            torch.dot(gv, gv, out=row[1])
            if with_mm:
                torch.dot(mv, mv, out=row[2])
        return sums.total()


def kept_sqnorm(sq: Tensor, u: Tensor, w: Tensor, mg: Tensor, mm: Tensor, gg: Tensor) -> None:
    """A carried squared norm after a lerp step, ``|u m + w g|^2 = (u |m|^2 + 2 w <m, g>) u +
    w^2 |g|^2`` from the step's sums (floored at 0), into ``sq`` (``mm`` may be ``sq`` itself).

    >>> sq = torch.tensor(4.0)  # |m|^2 for m = (2, 0); g = (0, 1), u = w = 0.5
    >>> kept_sqnorm(sq, torch.tensor(0.5), torch.tensor(0.5), torch.tensor(0.0), sq,
    ...             torch.tensor(1.0))
    >>> sq
    tensor(1.2500)
    """
    if mm is not sq:
        sq.copy_(mm)
    sq.mul_(u).addcmul_(w, mg, value=2.0).mul_(u).addcmul_(w * w, gg).clamp_min_(0.0)


def coupled_grads(params: list[Tensor], grads: list[Tensor], wd: Scalar, foreach: bool | None,
                  ld: int) -> list[Tensor]:
    """Coupled L2: new tensors ``g + wd * p`` (multi-tensor ops when every tensor takes the
    multi-tensor path; the same numbers either way)."""
    fe, _ = split_paths(params, foreach, ld)
    if len(fe) == len(params):
        return foreach_add_decay(params, grads, wd, ld)
    return add_decay(params, grads, wd, ld)


def lerp_step(P: list[Tensor], G: list[Tensor], M: list[Tensor], ws: Tensor | Sequence[Tensor],
              steps: Scalar | Sequence[Tensor], shrink: Scalar | None, fe: Sequence[int],
              loop: Sequence[int], ld: int) -> None:
    r"""The momentum step TAM (scaled form) and AM-SGD share:
    :math:`m_i \leftarrow m_i + w_i(g_i - m_i)` (``ws``: one weight, or one per tensor), then
    :math:`p_i \leftarrow s\,p_i` (when ``shrink`` is not None) and
    :math:`p_i \leftarrow p_i + a_i m_i`, ``a`` a float or one tensor per tensor (``steps``).
    Tensors ``fe`` take multi-tensor ops, ``loop`` are updated one by one, last first (the last
    tensors of the reductions are still in cache). See :class:`LerpStep` for the same with
    cached lists."""
    LerpStep(P, M, fe, loop, ld).run(G, ws, steps, shrink)


class LerpStep:
    """:func:`lerp_step` for fixed parameters and buffers: the multi-tensor lists are built
    once (a step plan keeps it).

    >>> p, m = [torch.zeros(3)], [torch.zeros(3)]
    >>> LerpStep(p, m, [0], [], 0).run([torch.ones(3)], torch.tensor(0.5), -1.0, None)
    >>> p[0]
    tensor([-0.5000, -0.5000, -0.5000])
    """

    __slots__ = ("fe", "Pf", "Mf", "loop", "ld")

    def __init__(self, P: list[Tensor], M: list[Tensor], fe: Sequence[int], loop: Sequence[int],
                 ld: int) -> None:
        self.fe, self.ld = list(fe), ld
        self.Pf, self.Mf = pick(P, fe), pick(M, fe)
        self.loop = [(i, P[i], M[i]) for i in reversed(loop)]

    def run(self, G: list[Tensor], ws: Tensor | Sequence[Tensor],
            steps: Scalar | Sequence[Tensor], shrink: Scalar | None) -> None:
        """One step with gradients ``G``, the lerp weight ``ws`` (one for all tensors, or one
        per tensor) and ``steps``."""
        fe, ld = self.fe, self.ld
        one = isinstance(ws, Tensor) and (ld == 0 or ws.dim() == 0)  # used as it is
        per = isinstance(steps, (list, tuple))
        if fe:
            Pf, Mf = self.Pf, self.Mf
            torch._foreach_lerp_(Mf, [G[i] for i in fe], [ws] * len(fe) if one else [
                bc(ws if isinstance(ws, Tensor) else ws[i], m, ld) for i, m in zip(fe, Mf)])
            if shrink is not None:
                foreach_scale_(Pf, shrink, ld)
            foreach_axpy_(Pf, Mf, [steps[i] for i in fe] if per else steps, ld)  # type: ignore
        for i, p, m in self.loop:
            m.lerp_(G[i], ws if one else bc(ws if isinstance(ws, Tensor) else ws[i], m, ld))
            if shrink is not None:
                scale_(p, shrink, ld)
            axpy_(p, m, steps[i] if per else steps, ld)  # type: ignore[index]
