"""One training pass of K stacked ReLU MLPs, forward and backward written out (no autograd).

The function :func:`relu_mlp_step` is plain torch code that runs as it is, and it is also
compiled with TorchScript (:func:`scripted_relu_mlp_step`): the TorchScript interpreter calls
the same aten kernels in the same order (no fusion on the CPU), so the numbers are the same
bit for bit, without the per-op cost of Python. For the small models of online continual
learning a step is ~25 small ops, and that cost is a fifth of the step.

This module has no ``from __future__ import annotations``: TorchScript reads the annotations.
"""

import warnings
from collections.abc import Callable

import torch
from torch import Tensor


def relu_mlp_step(x: Tensor, y: Tensor, weights: list[Tensor], columns: list[Tensor],
                  weights_t: list[Tensor], biased: list[bool], maxima: Tensor, pred_out: Tensor,
                  loss_out: Tensor, minus: Tensor, grads_out: list[Tensor]) -> list[Tensor]:
    """Forward and backward pass of K stacked MLPs ``Linear (ReLU Linear)*``.

    ``x``: inputs ``(K, b, features)`` (or ``(K, b, ...)``, flattened here); ``y``: labels
    ``(K, b)``; per layer ``j``: ``weights[j]`` ``(K, out, in)``, ``columns[j]`` its bias as a
    column ``(K, out, 1)`` (any tensor when ``biased[j]`` is False), ``weights_t[j]`` the
    weight transposed. Writes the class-major logits' maxima into ``maxima`` ``(K, 1, b)``,
    the predictions into ``pred_out`` ``(K, 1, b)`` int64, the mean cross-entropy per member
    into ``loss_out`` ``(K,)``; ``minus`` is ``-1/b`` shaped ``(K, 1, b)``. Returns the
    gradients layer by layer: weight, then bias when the layer has one — written into
    ``grads_out`` (contiguous tensors of those shapes, in that order: the blocks of the fleet's
    flat gradient buffer) when it is not empty, else fresh tensors.

    The loss is ``log sum exp(z - max) + max - z_y`` per sample and its gradient with respect
    to the logits ``(softmax - onehot) / b = e / (b s) - onehot / b`` reuses
    ``e = exp(z - max)`` and ``s = sum e``; a ReLU's gradient mask is ``[h > 0]`` on its
    output ``h`` (``threshold_backward``).

    >>> K, b = 1, 4
    >>> w = [torch.randn(K, 3, 5), torch.randn(K, 2, 3)]
    >>> cols = [torch.zeros(K, 3, 1), torch.zeros(K, 2, 1)]
    >>> grads = relu_mlp_step(torch.randn(K, b, 5), torch.zeros(K, b, dtype=torch.int64), w,
    ...                       cols, [t.transpose(1, 2) for t in w], [True, True],
    ...                       torch.empty(K, 1, b), torch.empty(K, 1, b, dtype=torch.int64),
    ...                       torch.empty(K), torch.full((K, 1, b), -1 / b), [])
    >>> [tuple(g.shape) for g in grads]
    [(1, 3, 5), (1, 3), (1, 2, 3), (1, 2)]
    """
    n = y.shape[1]
    rows = x if x.dim() == 3 else x.flatten(2)  # (K, b, features): the first layer's input
    h = rows.transpose(1, 2)  # class-major (K, features, b)
    acts: list[Tensor] = []  # the hidden activations (K, width, b)
    last = len(weights) - 1
    for j in range(len(weights)):
        if biased[j]:
            h = torch.baddbmm(columns[j], weights[j], h)
        else:
            h = torch.bmm(weights[j], h)
        if j < last:
            h = h.relu_()  # no autograd: the matmul's fresh output is overwritten
            acts.append(h)
    z = h
    torch.ops.aten.max(z, 1, True, max=maxima, max_values=pred_out)
    e = torch.sub(z, maxima).exp_()
    s = e.sum(1, keepdim=True)
    y1 = y.unsqueeze(1)
    per = s.log().add_(maxima).sub_(z.gather(1, y1))
    torch.mean(per, [1, 2], out=loss_out)
    d = e.div_(s.mul_(n))
    d.scatter_add_(1, y1, minus)
    grads: list[Tensor] = []  # in reverse, turned around at the end
    into = len(grads_out) > 0
    slot = len(grads_out)
    for j in range(last, -1, -1):
        inp = acts[j - 1].transpose(1, 2) if j > 0 else rows
        if into:
            if biased[j]:
                slot -= 1
                grads.append(torch.sum(d, [2], False, out=grads_out[slot]))
            slot -= 1
            # into the fleet's gradient block (contiguous: torch's batched matmul writes it in
            # place; into a strided view it ran one matrix at a time, slower than a fresh product
            # and a copy)
            grads.append(torch.bmm(d, inp, out=grads_out[slot]))
        else:
            if biased[j]:
                grads.append(d.sum(2))
            grads.append(torch.bmm(d, inp))
        if j > 0:
            d = torch.ops.aten.threshold_backward(torch.bmm(weights_t[j], d), acts[j - 1], 0.0)
    grads.reverse()
    return grads


_SCRIPTED: Callable[..., list[Tensor]] | None = None
_SCRIPT_FAILED = False


def scripted_relu_mlp_step() -> Callable[..., list[Tensor]]:
    """:func:`relu_mlp_step` compiled with TorchScript once per process (tens of ms), or the
    plain function when TorchScript is unavailable (it is deprecated in torch 2.x in favour
    of ``torch.compile``, which costs seconds to compile: too much for a run of a few seconds)."""
    global _SCRIPTED, _SCRIPT_FAILED
    if _SCRIPTED is None and not _SCRIPT_FAILED:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the deprecation notice of torch.jit.script
                _SCRIPTED = torch.jit.script(relu_mlp_step)
        except Exception as exc:  # depends on the torch build (tested by faking it)
            _SCRIPT_FAILED = True
            warnings.warn(f"TorchScript is unavailable ({type(exc).__name__}: {exc}); the "
                          "stacked MLP step runs as plain Python", stacklevel=2)
    return _SCRIPTED if _SCRIPTED is not None else relu_mlp_step
