"""The fleet: many learners of one architecture in one vectorized program.

Online learners in robustness studies are small; one at a time they leave a GPU idle and a CPU
mostly running Python. :func:`run_fleet` runs K members — each an (optimizer, seed) pair — of one
architecture on one scenario as a single program, through the one run loop
(:func:`shiftsim.loop.run_members`) with a :class:`StackedLearner`:

* **stacked parameters** (:mod:`~shiftsim.fleet.model`): every parameter gets a leading member
  dimension ``K``. A ReLU MLP runs as batched matmuls with its backward pass written out (no
  autograd graph); other MLPs run as batched matmuls under autograd; any other model through
  ``torch.func.vmap`` over ``functional_call``.
* **optimizers through their stacked kernels**: members whose optimizer is the same class with
  the same non-numeric settings form a group, stepped by that optimizer's kernel with per-member
  reductions (cosines, inner products, norms, MoMo's loss) and per-member numeric
  hyperparameters.
* **streams**: each member keeps the stream of its seed, and its initial weights are the ones
  :func:`shiftsim.run` builds; members that share a seed share the stream's draws.

* **chunks**: on the CPU with one torch thread, a ReLU MLP's fleet runs as consecutive
  chunks of members, each over the whole scenario, small enough that a chunk's parameters,
  gradients and optimizer state can stay in the caches (:mod:`~shiftsim.fleet.chunks`).

So every member's :class:`~shiftsim.result.RunResult` has the content of its own run, and does
not depend on which other members share its fleet. For a ReLU MLP, :func:`shiftsim.run` itself
runs this program with one member by default, so a member's numbers are bit for bit those of
``run()`` — on the CPU with one torch thread (with more, the last bits may depend on the
program's size: measured with two threads, a member alone, in a one-member program, differed
from the same member in a larger one); on CUDA the batched-GEMM kernels are chosen by shape
(the member count among them), so there a member may differ from ``run()`` in the last bits,
and ``deterministic=True`` makes only reruns of the same fleet repeat.
Against the plain per-step loop (``run(..., vectorized=False)``: autograd, one module)
they agree up to float rounding of the batched operations (``tests/test_fleet.py`` states the
tolerances; over thousands of float32 steps some trajectories drift apart, as they
would under any change of summation order).

>>> import shiftsim as ss
>>> sc = ss.label_flip_tasks(ss.data.digits(), rate=1.0, tasks=2, steps_per_task=50)
>>> results = run_fleet(sc, ss.models.mlp(hidden=(32,)),
...                     [("sgdm", 0), ("sgdm", 1), (ss.optim.spec("adam"), 0)], device="cpu")
>>> [len(r.trace) for r in results], results[2].info["learner"]["optimizer"]["name"]
([100, 100, 100], 'adam')
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..checks import check_model_fits
from ..errors import ShiftsimError, SpecTypeError, check_range
from ..learner import build_model, mode_sensitive
from ..loop import run_members, shared_cost
from ..models import ModelSpec
from ..optim import OptimizerSpec, spec
from ..optim.stacking import group_key, supports
from ..result import RunResult
from ..runtime import deterministic_mode, resolve_device
from ..scenario import Scenario
from .chunks import CHUNK_BYTES, chunk_bounds
from .learner import StackedLearner, group_order
from .memory import fleet_memory_bytes
from .model import StackedModel, hand_written_backward

__all__ = ["CHUNK_BYTES", "StackedLearner", "StackedModel", "chunk_bounds",
           "fleet_memory_bytes", "hand_written_backward", "run_fleet", "stacked_program",
           "supports"]


def stacked_program(model: Any, optimizer: Any, input_shape: Sequence[int] | None = None
                    ) -> str | None:
    """Which stacked program can run ``model`` with ``optimizer``, from the specs alone (no
    model is built; ``input_shape``: the data's, for a module that takes flat inputs).

    ``"relu_mlp"``: a ReLU MLP (``Flatten``, ``Linear`` and ``ReLU`` layers: ``mlp()`` with
    the default activation and no norm, ``linear()``, or such a module), whose forward and
    backward passes the fleet writes out as batched matmuls; :func:`shiftsim.run` runs it this
    way by default. ``"module"``: another model the fleet can stack (batched matmuls or vmap
    under autograd; what a factory builds is not known before it is called). ``None``: it cannot
    be stacked: a learner or strategy spec (they train their own way), a module with BatchNorm or
    dropout, or an optimizer the fleet cannot step.

    >>> import shiftsim as ss
    >>> stacked_program(ss.models.mlp(), "tam"), stacked_program(ss.models.cnn(), "adam")
    ('relu_mlp', 'module')
    >>> stacked_program(ss.models.mlp(), "torch.optim:LBFGS") is None
    True
    """
    if getattr(optimizer, "learner_for", None) is not None:
        return None  # a spec that brings its own learner (an Avalanche strategy)
    if isinstance(model, type) or all(hasattr(model, m) for m in ("setup", "observe",
                                                                   "predict")):
        return None  # a Learner trains its own way
    if isinstance(model, ModelSpec):
        opts = model.options
        written = model.name == "linear" or (model.name == "mlp" and opts["activation"] == "relu"
                                              and opts["norm"] is None)
    elif isinstance(model, nn.Module):
        if mode_sensitive(model):
            return None
        written = hand_written_backward(model, input_shape)
    elif callable(model):
        written = False
    else:
        return None
    try:
        opt = spec(optimizer if optimizer is not None else "sgdm")
    except ShiftsimError:
        return None
    if not supports(opt):
        return None
    return "relu_mlp" if written else "module"


def _as_member(m: Any) -> tuple[OptimizerSpec, int]:
    if not isinstance(m, (tuple, list)) or len(m) != 2:
        raise SpecTypeError(f"a fleet member must be an (optimizer, seed) pair, got {m!r}")
    opt, seed = m
    opt = opt if isinstance(opt, OptimizerSpec) else spec(opt)
    return opt, check_range(seed, "seed", 0, integer=True)


def run_fleet(scenario: Scenario, model: ModelSpec | nn.Module | Callable[..., nn.Module],
              members: Sequence[tuple[OptimizerSpec | str, int]],
              device: str | torch.device = "auto", *, check_every: int = 64,
              compile: bool = False, progress: bool = False,
              deterministic: bool = False, chunk_members: int | None = None
              ) -> list[RunResult]:
    """Run every ``(optimizer, seed)`` member on ``scenario`` as one vectorized program.

    Returns one :class:`~shiftsim.result.RunResult` per member, in the order given, with the
    content :func:`shiftsim.run` gives for that member: the same trace columns (optimizer
    diagnostics included), evaluations, phases, info and diverged handling; ``info["fleet"]``
    says how the program ran. Members may use different optimizers and hyperparameters:
    members of one optimizer class with the same non-numeric settings form one group, stepped
    by the optimizer's stacked kernel with per-member reductions and per-member numeric
    hyperparameters.

    Args:
        scenario: the :class:`~shiftsim.scenario.Scenario` every member runs.
        model: a ModelSpec, an ``nn.Module`` or a callable ``Dataset -> nn.Module``, as for
            :func:`shiftsim.run`; each member's initial weights come from its seed. Models
            without train/eval-dependent layers only (no BatchNorm, no dropout).
        members: ``(optimizer, seed)`` pairs; an optimizer is an OptimizerSpec or a registry
            name. The same pair twice gives the same result twice.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` ...
        check_every: steps between the finiteness checks of the losses (the only host syncs).
        compile: compile the forward pass and loss with ``torch.compile`` (falls back to eager
            execution, with a warning, when compilation fails).
        progress: show a progress bar over steps.
        deterministic: run under torch's deterministic settings, as for :func:`shiftsim.run`
            (:func:`shiftsim.runtime.deterministic_mode`). On CUDA a member's trace is then
            reproducible for the same fleet size; across fleet sizes (and against ``run()``)
            it may differ in the last bits, since batched-GEMM kernels are chosen by shape. On
            the CPU with one torch thread a member's trace does not depend on the fleet it
            runs in (with more threads it may, in the last bits, as on CUDA).
        chunk_members: run the members as consecutive chunks of at most this many (sorted by
            optimizer group), each a stacked program over the whole scenario, one after
            another. Default (None): on the CPU with one torch thread, a ReLU MLP's fleet in
            chunks of at most :data:`~shiftsim.fleet.chunks.CHUNK_BYTES` of parameters (1 MiB:
            a chunk's numbers can stay in the caches from step to step; measured on a 2-core AMD
            EPYC, 0.75-1.00x the time a step for fleets of MLPs with 64 to 256 units,
            varying from run to run, :mod:`shiftsim.fleet.chunks`), otherwise one
            program. A member's results do not depend on the chunks (one thread: the same
            bits); ``info["fleet"]["chunks"]`` says how many ran, and each member's
            ``timings["fleet_loop_s"]`` is its chunk's loop.
    """
    if not isinstance(deterministic, bool):
        raise SpecTypeError(f"deterministic must be True or False, got {deterministic!r}")
    if deterministic:
        with deterministic_mode():
            return run_fleet(scenario, model, members, device, check_every=check_every,
                             compile=compile, progress=progress, chunk_members=chunk_members)
    t_start = time.perf_counter()
    if not isinstance(scenario, Scenario):
        raise SpecTypeError(f"run_fleet() needs a Scenario, got {type(scenario).__name__}")
    if not isinstance(model, (ModelSpec, nn.Module)) and not callable(model):
        raise SpecTypeError(f"a fleet's model must be a ModelSpec, an nn.Module or a callable "
                            f"Dataset -> nn.Module, got {model!r}")
    if isinstance(members, (str, bytes)) or not isinstance(members, Sequence) or not members:
        raise ShiftsimError(f"run_fleet needs a non-empty list of (optimizer, seed) members, "
                            f"got {members!r}")
    check_every = check_range(check_every, "check_every", 1, integer=True)
    check_model_fits(model, scenario.data)  # before any work: one line naming both shapes
    if not isinstance(compile, bool):
        raise SpecTypeError(f"compile must be True or False, got {compile!r}")
    chunk_members = check_range(chunk_members, "chunk_members", 1, integer=True, optional=True)
    pairs = [_as_member(m) for m in members]
    keys = [group_key(o) for o, _ in pairs]  # an optimizer the fleet cannot step fails here
    if scenario.realtime:  # one training schedule for all, chunks or not: checked before work
        shared_cost([o.effective_cost for o, _ in pairs])
    chunks = _chunks(scenario, model, pairs, keys, resolve_device(device), compile,
                     chunk_members)
    ordered: list[RunResult | None] = [None] * len(pairs)
    compiled = []
    for i, chunk in enumerate(chunks):
        learner = StackedLearner(model, [pairs[j] for j in chunk], compile=compile)
        label = f"fleet of {len(pairs)}, chunk {i + 1}/{len(chunks)}" if len(chunks) > 1 \
            else None
        results = run_members(scenario, learner, device, check_every=check_every,
                              progress=progress, started=t_start if i == 0 else None,
                              label=label)
        compiled.append(learner.fleet_info()["compiled"])
        for pos, orig in enumerate(learner.order):
            ordered[chunk[orig]] = results[pos]
        del learner, results  # the chunk's stacked state goes before the next one's
    fleet = {"members": len(pairs), "groups": len(set(keys)), "compiled": all(compiled),
             "chunks": len(chunks)}
    out: list[RunResult] = []
    for r in ordered:
        assert r is not None
        r.info["fleet"] = dict(fleet)
        out.append(r)
    return out


def _chunks(scenario: Scenario, model: Any, members: list[tuple[OptimizerSpec, int]],
            keys: list[Any], device: torch.device, compile: bool, chunk_members: int | None
            ) -> list[list[int]]:
    """The members' positions, sorted by optimizer group, cut into the chunks that run one
    after another (:func:`~shiftsim.fleet.chunks.chunk_bounds`)."""
    order = group_order(keys)
    if chunk_members is None:
        if compile or device.type != "cpu" or len(members) == 1 \
                or torch.get_num_threads() != 1:
            return [order]
        net = build_model(model, scenario.data, members[order[0]][1])
        if not hand_written_backward(net, scenario.data.input_shape):
            return [order]
        member_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    else:
        member_bytes = 0
    return [order[a:b] for a, b in chunk_bounds(len(members), member_bytes,
                                                 torch.get_num_threads(), chunk_members)]
