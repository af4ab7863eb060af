"""How much device memory a fleet needs (the study's fleet executor sizes fleets by it)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import check_range
from ..learner import build_model
from ..models import ModelSpec
from ..scenario import Scenario


def _activation_width(net: nn.Module, data: Any) -> int:
    """Numbers per sample in the input and in every leaf module's output (one forward pass of
    one sample, on the device the module's parameters are on: a module already on the GPU, or
    on the ``meta`` device, is measured where it is)."""
    sizes = [math.prod(data.input_shape)]
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o[0].numel()))
             for m in net.modules() if not list(m.children())]
    try:
        p = next(net.parameters())
        with torch.no_grad():
            net(data.x_train[:1].to(device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
    return int(sum(sizes))


def fleet_memory_bytes(scenario: Scenario, model: ModelSpec | nn.Module | Callable[..., nn.Module],
                       members: int) -> int:
    """An estimate of the device memory (bytes) a fleet of ``members`` needs on ``scenario``.

    Per member: parameters, gradients, up to three optimizer buffers and two scratch copies;
    the per-step activations and their gradients (the input and every leaf module's output,
    for a batch); the trace buffers; the held-out inputs of every regime and one evaluation
    pass; and, when the scenario has static input shifts, two pre-shifted copies of the training
    inputs (a fleet of distinct seeds keeps one per seed).

    >>> import shiftsim as ss
    >>> sc = ss.label_flip_tasks(ss.data.digits(), rate=1.0, tasks=2, steps_per_task=50)
    >>> fleet_memory_bytes(sc, ss.models.mlp(hidden=(16,)), 100) // 2**20  # MiB
    48
    """
    members = check_range(members, "members", 1, integer=True)
    data = scenario.data
    net = build_model(model, data.to("cpu"), 0)
    es = next(net.parameters()).element_size()
    n_params = sum(p.numel() for p in net.parameters())
    acts = _activation_width(net, data.to("cpu"))
    n_in = math.prod(data.input_shape)
    b, n_eval = scenario.batch_size, scenario.eval_size
    per = (es * 7 * n_params + es * 2 * b * acts + 8 * 3 * scenario.total_steps
           + es * n_eval * n_in * scenario.num_regimes + es * n_eval * acts)
    if any(s.kind == "input" and not getattr(s, "stochastic", False)
           for p in scenario.phases for s in p.shifts):
        per += es * 2 * len(data) * n_in
    return int(per * members)
