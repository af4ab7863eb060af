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
  gradients and optimizer state can stay in the caches (:mod:`~shiftsim.fleet.chunks`);
  with two torch threads, the chunks of members of 64 KiB or more run two at a time
  (**lanes**: each on its own Python thread with one torch thread).

So every member's :class:`~shiftsim.result.RunResult` has the content of its own run, and does
not depend on which other members share its fleet. For a ReLU MLP, :func:`shiftsim.run` itself
runs this program with one member by default, so a member's numbers are bit for bit those of
``run()`` — on the CPU with one torch thread (a member in lanes runs with one thread too; a
program on more threads may differ in the last bits, depending on its size: measured with two
threads, a member alone, in a one-member program, differed from the same member in a larger
one); on CUDA the batched-GEMM kernels are chosen by shape
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

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
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
from ..runtime import deterministic_mode, resolve_device, torch_threads
from ..scenario import Scenario
from .chunks import CHUNK_BYTES, chunk_bounds, lane_count
from .learner import StackedLearner, group_order
from .memory import fleet_memory_bytes
from .model import StackedModel, hand_written_backward

__all__ = ["CHUNK_BYTES", "StackedLearner", "StackedModel", "chunk_bounds",
           "fleet_memory_bytes", "hand_written_backward", "lane_count", "run_fleet",
           "stacked_program", "supports"]


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
              deterministic: bool = False, chunk_members: int | None = None,
              lanes: int | None = None) -> list[RunResult]:
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
            the CPU with one torch thread, and in lanes, a member's trace does not depend on
            the fleet it runs in (a program on more threads may differ in the last bits, as
            on CUDA).
        chunk_members: run the members as consecutive chunks of at most this many (sorted by
            optimizer group), each a stacked program over the whole scenario, one after
            another. Default (None): on the CPU with one torch thread, a ReLU MLP's fleet in
            chunks of at most :data:`~shiftsim.fleet.chunks.CHUNK_BYTES` of parameters (1 MiB:
            a chunk's numbers can stay in the caches from step to step; measured on a 2-core AMD
            EPYC, 0.75-1.00x the time a step for fleets of MLPs with 64 to 256 units,
            varying from run to run, :mod:`shiftsim.fleet.chunks`), otherwise one
            program; with more threads, see ``lanes``. A member's results do not depend on
            the chunks (one thread: the same bits); ``info["fleet"]["chunks"]`` says how many
            ran, and each member's ``timings["fleet_loop_s"]`` is its chunk's loop.
        lanes: run that many chunks at once, each on its own Python thread with one torch
            thread (torch's thread count is set back afterwards), the chunks' count rounded up
            to a multiple of it; on the CPU and without ``compile`` only. 1: chunks one after
            another on torch's threads. Default (None): with two torch threads, a ReLU MLP's
            fleet of members of at least 64 KiB of parameters in two lanes (measured on a
            2-core AMD EPYC, the time a step against the same members as one program on both
            threads: 0.57-0.62x for fleets of 8 and 32 MLPs with 128 units, 0.64-0.86x for 32
            with 256, 0.95-0.97x for 16 and 8 with 512 and 1024, 0.94-1.04x for fleets of 2 to
            6; :mod:`shiftsim.fleet.chunks`), otherwise 1. A member's results are then a
            one-thread run's, the same bits. Its error, or Ctrl-C, stops every lane at its
            next step; ``info["fleet"]["lanes"]`` says how many ran.
    """
    if not isinstance(deterministic, bool):
        raise SpecTypeError(f"deterministic must be True or False, got {deterministic!r}")
    if deterministic:
        with deterministic_mode():
            return run_fleet(scenario, model, members, device, check_every=check_every,
                             compile=compile, progress=progress, chunk_members=chunk_members,
                             lanes=lanes)
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
    lanes = check_range(lanes, "lanes", 1, integer=True, optional=True)
    pairs = [_as_member(m) for m in members]
    keys = [group_key(o) for o, _ in pairs]  # an optimizer the fleet cannot step fails here
    if scenario.realtime:  # one training schedule for all, chunks or not: checked before work
        shared_cost([o.effective_cost for o, _ in pairs])
    dev = resolve_device(device)
    chunks, n_lanes = _plan(scenario, model, pairs, keys, dev, compile, chunk_members, lanes)
    ordered: list[RunResult | None] = [None] * len(pairs)
    compiled: list[bool] = []

    def run_chunk(i: int, stop: threading.Event | None = None) -> None:
        chunk = chunks[i]
        learner = StackedLearner(model, [pairs[j] for j in chunk], compile=compile)
        label = f"fleet of {len(pairs)}, chunk {i + 1}/{len(chunks)}" if len(chunks) > 1 \
            else None
        results = run_members(scenario, learner, dev, check_every=check_every,
                              progress=progress, started=t_start if i == 0 else None,
                              label=label, stop=stop)
        compiled.append(learner.fleet_info()["compiled"])
        for pos, orig in enumerate(learner.order):
            ordered[chunk[orig]] = results[pos]

    if n_lanes == 1:
        for i in range(len(chunks)):
            run_chunk(i)  # the chunk's stacked state goes before the next one's
    else:
        _in_lanes(run_chunk, len(chunks), n_lanes)
    fleet = {"members": len(pairs), "groups": len(set(keys)), "compiled": all(compiled),
             "chunks": len(chunks), "lanes": n_lanes}
    out: list[RunResult] = []
    for r in ordered:
        assert r is not None
        r.info["fleet"] = dict(fleet)
        out.append(r)
    return out


def _plan(scenario: Scenario, model: Any, members: list[tuple[OptimizerSpec, int]],
          keys: list[Any], device: torch.device, compile: bool, chunk_members: int | None,
          lanes: int | None) -> tuple[list[list[int]], int]:
    """The members' positions, sorted by optimizer group, cut into the chunks that run
    (:func:`~shiftsim.fleet.chunks.chunk_bounds`), and how many run at once
    (:func:`~shiftsim.fleet.chunks.lane_count`)."""
    order = group_order(keys)
    K, threads = len(members), torch.get_num_threads()
    if lanes is not None and lanes > 1 and K > 1 and (device.type != "cpu" or compile):
        raise ShiftsimError(f"lanes={lanes} runs chunks side by side on the CPU's threads; "
                            f"it needs device='cpu' and compile=False (here device "
                            f"{device.type!r}, compile={compile}); use lanes=None or 1")
    member_bytes, written = 0, False
    if device.type == "cpu" and not compile and K > 1:  # the defaults need the members' size
        net = build_model(model, scenario.data, members[order[0]][1])
        written = hand_written_backward(net, scenario.data.input_shape)
        member_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    n_lanes = lane_count(K, member_bytes, threads, lanes) if lanes is not None or written else 1
    if chunk_members is None and not written and n_lanes == 1:
        return [order], 1  # the default chunks: a ReLU MLP's only (the programs measured)
    bounds = chunk_bounds(K, member_bytes if written else 0, threads, chunk_members,
                          lanes=n_lanes)
    return [order[a:b] for a, b in bounds], min(n_lanes, len(bounds))


def _in_lanes(run_chunk: Callable[..., None], chunks: int, lanes: int) -> None:
    """``run_chunk(i, stop)`` for every chunk, ``lanes`` at a time, each on its own Python
    thread with one torch thread (torch's count is restored after). When one fails, or the
    caller is interrupted (Ctrl-C), the others stop at their next step and the first error is
    raised here; no chunk is left running."""
    stop = threading.Event()

    def lane(i: int) -> None:
        torch.set_num_threads(1)  # this thread's own pools (OpenMP, MKL)
        run_chunk(i, stop)

    with torch_threads(1), ThreadPoolExecutor(lanes, thread_name_prefix="shiftsim-lane") as pool:
        futures = [pool.submit(lane, i) for i in range(chunks)]
        try:
            pending = set(futures)
            while pending:  # waits of a quarter second: Ctrl-C is raised here between them
                done, pending = wait(pending, timeout=0.25, return_when=FIRST_EXCEPTION)
                for future in done:
                    future.result()
        except BaseException:
            stop.set()
            for future in futures:
                future.cancel()
            raise
