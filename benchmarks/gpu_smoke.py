"""GPU smoke test: shiftsim's loops on one CUDA device (meant to take under two minutes; not yet
run on a GPU).

    python benchmarks/gpu_smoke.py [--device cuda|cuda:N|cpu] [--steps 200] [--fleet 64]
                                   [--rounds 3] [--threads 1] [--only placement,syncs,...]

Each check prints one line, ``PASS``, ``FAIL`` or ``SKIP`` with its numbers; the script exits 0
when nothing failed, 1 when a check failed, and 2 with the one line "no CUDA device: nothing to
check" when the device asked for (default ``cuda``) is not there. ``--device cpu`` runs the same
checks on the CPU (the CUDA-only parts skip with their reason): that is how the test suite runs
this script (``tests/test_gpu_smoke.py``) on machines without a GPU.

The checks, on a digits scenario of three phases (clean; noise, rotation and a pixel
permutation; permuted labels with noise and brightness), an MLP (64 hidden units: the fleet's
stacked program) and the nine optimizer families:

placement
    ``run()`` (the stacked program), ``run(vectorized=False)`` (module, autograd and a torch
    optimizer) and ``run_fleet()`` of the nine families, at most 50 steps per phase: every
    tensor the learner holds (parameters, optimizer state, diagnostics buffers), after setup
    and after the run, is on the device; so are the batches, held-out inputs and trace slots
    (the loop's per-step prediction and loss buffers) handed to each step, and the inputs and
    outputs of every torch operation run inside a step or an evaluation (seen through a
    ``TorchDispatchMode``; 0-d CPU tensors, which CUDA kernels take as plain numbers without a
    sync, are counted apart and do not fail the check).
syncs
    The same three runs, every step after the first, with its batch draws, and every
    evaluation under ``torch.cuda.set_sync_debug_mode("error")`` on CUDA (a synchronizing
    operation raises); on every device the calls that make a tensor from Python values or read
    one back (``torch.tensor``, ``.item``, ``.tolist``, ``bool``/``int``/``float`` of a tensor,
    ``.cpu``, ``.numpy`` of a device tensor: what ``tests/test_host_syncs.py`` counts) are
    counted inside those scopes and must number 0. The first step of a run (lazy set-up, once
    per run, not per step) is watched in ``"warn"`` mode and its syncs and host calls are
    reported, not failed.
    The loop's own finiteness check of the losses (once every ``check_every`` steps and at
    each phase end) and the per-phase set-up are outside the per-step scopes: they sync by
    design.
reruns
    ``run(..., deterministic=True)`` twice, and ``run_fleet(..., deterministic=True)`` twice:
    traces and evaluations bit for bit equal.
fleet_vs_run
    Each member of the nine-family fleet against ``run()`` of its (optimizer, seed), both with
    ``deterministic=True``. Condition: on the CPU (same torch threads) bit for bit; on CUDA
    batched-GEMM kernels are chosen by shape (the member count among them), so equal up to
    rounding: losses of the first 50 steps within rtol 1e-4 (atol 1e-6) and whole-run online
    accuracy within 0.02, with the same step, phase and sample columns.
memory
    ``shiftsim.fleet.fleet_memory_bytes`` for a fleet of ``--fleet`` members (the families in
    turn, each member its own seed) against ``torch.cuda.max_memory_allocated`` over a run of
    that fleet (after a warm-up run, above the memory allocated before it): the estimate must
    cover the measured peak and be at most ``--memory-slack`` (10) times it. The estimate for
    the model given as a module already on the device must equal the one for its spec. On the
    CPU the comparison skips (torch keeps no peak-allocation counter for the CPU).
speed
    ms per step (loop time, per member) on the device against the CPU with ``--threads``
    threads, rounds interleaved, medians: ``run()`` (reported) and a fleet of ``--fleet`` TAM
    members (the fleet on the device must be at least ``--min-speedup`` (1.0) times as fast per
    member). On the CPU there is nothing to compare against: numbers only, then SKIP.

Not yet run on a GPU: no GPU was available to this project when it was written; its non-CUDA
logic is exercised on the CPU by the test suite.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import shiftsim as ss
import shiftsim.engine
import shiftsim.fleet
import shiftsim.loop
from shiftsim.fleet import fleet_memory_bytes
from shiftsim.runtime import device_facts, prepare_deterministic_env, torch_threads

NO_CUDA = "no CUDA device: nothing to check"
FAMILIES = ("sgdm", "adam", "tam", "adatam", "adamem_sgd", "adamem_adamw", "momo", "momo_adam",
            "grams")
CHECKS = ("placement", "syncs", "reruns", "fleet_vs_run", "memory", "speed")
#: fleet member vs run() on CUDA: the first steps whose losses are compared, their tolerances,
#: and the largest difference of whole-run online accuracy
LOSS_STEPS, LOSS_RTOL, LOSS_ATOL, ACC_TOL = 50, 1e-4, 1e-6, 0.02
#: the most steps per phase the placement check runs (it records every torch operation)
PLACEMENT_STEPS = 50
#: what tests/test_host_syncs.py counts: calls that make a tensor from Python values or read one
#: back (a host sync or a host-to-device copy is made of these)
HOST_CALLS = {"item": torch.Tensor, "tolist": torch.Tensor, "__bool__": torch.Tensor,
              "__int__": torch.Tensor, "__float__": torch.Tensor, "cpu": torch.Tensor,
              "numpy": torch.Tensor, "tensor": torch}


@dataclasses.dataclass
class Check:
    """One check's verdict: ``status`` is PASS, FAIL or SKIP; ``detail`` its numbers."""

    name: str
    status: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<12}  {self.detail}"


@dataclasses.dataclass
class Config:
    """What the checks run: the device, the scenario's length and the fleet sizes."""

    device: torch.device
    steps: int = 200  # per phase (three phases)
    fleet: int = 64  # members for the memory and speed checks
    hidden: tuple[int, ...] = (64,)
    rounds: int = 3
    memory_slack: float = 10.0
    min_speedup: float = 1.0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def scenario(self, steps: int | None = None) -> ss.Scenario:
        """Three phases of ``steps`` (default: ``self.steps``): clean; noise, rotation and a
        pixel permutation (a per-batch tail of input shifts); permuted labels with noise and
        brightness."""
        steps = self.steps if steps is None else steps
        return ss.Scenario(ss.data.digits(), [
            ss.Phase(steps),
            ss.Phase(steps, [ss.GaussianNoise(0.05), ss.Rotate(30), ss.PixelPermutation(0.5)]),
            ss.Phase(steps, [ss.LabelFlip(1.0, "permute"), ss.GaussianNoise(0.05),
                             ss.Brightness(0.1)]),
        ], batch_size=32, eval_every=max(1, steps // 2), eval_size=200, name="gpu-smoke")

    def model(self) -> ss.models.ModelSpec:
        return ss.models.mlp(hidden=self.hidden)

    def families(self, seeds: int = 3) -> list[tuple[Any, int]]:
        """One member per optimizer family, seeds 0..seeds-1 in turn."""
        return [(ss.optim.spec(name), i % seeds) for i, name in enumerate(FAMILIES)]


# -- watching the per-step work of run() and run_fleet() ------------------------------------------

def _on(t: torch.Tensor, device: torch.device) -> bool:
    return t.device.type == device.type and (device.index is None
                                              or t.device.index == device.index)


def _tensors(x: Any) -> Iterator[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v)
    elif isinstance(x, dict):
        for v in x.values():
            yield from _tensors(v)


def held_tensors(obj: Any) -> list[tuple[str, torch.Tensor]]:
    """Every tensor ``obj`` (a learner) holds, with its attribute path: modules' parameters and
    buffers, optimizers' state and hyperparameters, and what shiftsim's own objects, dicts,
    lists, tuples and dataclasses hold (tensors on the ``meta`` device left out)."""
    out: list[tuple[str, torch.Tensor]] = []
    seen: set[int] = set()

    def walk(x: Any, path: str, depth: int) -> None:
        if depth > 8 or id(x) in seen:
            return
        if isinstance(x, torch.Tensor):
            seen.add(id(x))
            if x.device.type != "meta":
                out.append((path, x))
            return
        if isinstance(x, (str, bytes, int, float, bool, type(None))):
            return
        seen.add(id(x))
        if isinstance(x, nn.Module):
            for n, p in x.named_parameters():
                walk(p, f"{path}.{n}", depth + 1)
            for n, b in x.named_buffers():
                walk(b, f"{path}.{n}", depth + 1)
        elif isinstance(x, torch.optim.Optimizer):
            for i, st in enumerate(x.state.values()):
                walk(st, f"{path}.state[{i}]", depth + 1)
            for i, g in enumerate(x.param_groups):
                walk({k: v for k, v in g.items() if k != "params"}, f"{path}.param_groups[{i}]",
                     depth + 1)
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{path}[{k!r}]" if isinstance(k, (str, int)) else f"{path}[.]",
                     depth + 1)
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{path}[{i}]", depth + 1)
        elif dataclasses.is_dataclass(x) or type(x).__module__.startswith("shiftsim"):
            for k, v in vars(x).items():
                walk(v, f"{path}.{k}", depth + 1)

    walk(obj, "learner", 0)
    return out


def _kind(path: str) -> str:
    """Which of a learner's tensors a path names (for the report)."""
    if any(s in path for s in (".state", ".hp", "optimizer", "param_groups")):
        return "optimizer state"
    if "diag" in path:
        return "diagnostics buffers"
    if any(s in path for s in ("param", "template", "weight", "bias", "flat", "grad")):
        return "parameters"  # and their gradients
    return "other"


class _Recorder(TorchDispatchMode):
    """Counts the torch operations run under it and every tensor they read or write that is
    not on the watched device (0-d CPU tensors apart)."""

    def __init__(self, watch: Watch) -> None:
        super().__init__()
        self.watch = watch

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        w = self.watch
        w.ops += 1
        for t in _tensors((args, kwargs or {}, out)):
            if not _on(t, w.device):
                if t.dim() == 0 and t.device.type == "cpu":
                    w.host_scalars[str(func)] += 1
                else:
                    w.off_device[f"{func} ({t.device})"] += 1
        return out


class _WatchedBatches:
    """A phase of a feed whose per-step draws run inside the watch's per-step scope."""

    def __init__(self, inner: Any, watch: Watch) -> None:
        self._inner, self._watch = inner, watch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def inputs(self, s: int) -> torch.Tensor:
        with self._watch.step_scope():
            return self._inner.inputs(s)

    def labels(self, s: int) -> torch.Tensor:
        with self._watch.step_scope():
            return self._inner.labels(s)


class _WatchedFeed:
    def __init__(self, inner: Any, watch: Watch) -> None:
        self._inner, self._watch = inner, watch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def phase(self, k: int) -> _WatchedBatches:
        return _WatchedBatches(self._inner.phase(k), self._watch)


class _WatchedMembers:
    """The loop's learner (:class:`shiftsim.loop.Members`) with its steps, scores and
    evaluations run inside the watch's per-step scope, and its tensors checked."""

    def __init__(self, inner: Any, watch: Watch) -> None:
        self._inner, self._watch = inner, watch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def setup(self, data: Any, device: torch.device, steps: int) -> None:
        self._inner.setup(data, device, steps)
        self._watch.check_held("after setup", self._inner)

    def _watched(self, fn: Callable[..., None], t: int, x: torch.Tensor, y: torch.Tensor,
                 out: tuple[torch.Tensor, torch.Tensor]) -> None:
        self._watch.check_args(x, y, *out)
        self._watch.steps += 1
        with self._watch.step_scope():
            fn(t, x, y, out)
        self._watch.warm = True

    def step(self, t: int, x: torch.Tensor, y: torch.Tensor,
             out: tuple[torch.Tensor, torch.Tensor]) -> None:
        self._watched(self._inner.step, t, x, y, out)

    def score(self, t: int, x: torch.Tensor, y: torch.Tensor,
              out: tuple[torch.Tensor, torch.Tensor]) -> None:
        self._watched(self._inner.score, t, x, y, out)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self._watch.check_args(x)
        self._watch.evals += 1
        with self._watch.step_scope():
            return self._inner.predict(x)


class Watch:
    """Instruments the per-step work of the ``run()`` and ``run_fleet()`` calls made inside it.

    Per-step work: each learner step (or score of a real-time batch), each evaluation and each
    batch draw of the stream; the loop's set-up, per-phase work and finiteness checks are
    outside. ``placement``: record every tensor an operation there reads or writes that is not
    on ``device``, and check the learner's tensors after setup and after the run.
    ``count_host``: count the :data:`HOST_CALLS` made there. ``sync_error``: run it under
    ``torch.cuda.set_sync_debug_mode("error")`` (CUDA only).
    """

    def __init__(self, device: torch.device, *, placement: bool = False,
                 count_host: bool = False, sync_error: bool = False) -> None:
        self.device = device
        self.placement, self.count_host, self.sync_error = placement, count_host, sync_error
        self.steps = self.evals = self.ops = 0
        self.args_checked = 0
        self.depth = 0
        #: False until the run's first learner step is done (that step, with its batch draws,
        #: is lazy set-up: its syncs and host calls are counted apart, never raised on)
        self.warm = False
        self.first_syncs = 0
        self.first_host_calls: collections.Counter[str] = collections.Counter()
        self.off_device: collections.Counter[str] = collections.Counter()
        self.host_scalars: collections.Counter[str] = collections.Counter()
        self.host_calls: collections.Counter[str] = collections.Counter()
        self.held: dict[str, collections.Counter[str]] = {}
        self.held_off: list[str] = []
        self._undo: list[Callable[[], None]] = []

    # what the wrappers call
    def check_args(self, *tensors: torch.Tensor) -> None:
        if not self.placement:
            return
        for t in tensors:
            self.args_checked += 1
            if not _on(t, self.device):
                self.off_device[f"loop argument {tuple(t.shape)} ({t.device})"] += 1

    def check_held(self, when: str, learner: Any) -> None:
        if not self.placement:
            return
        kinds = self.held.setdefault(when, collections.Counter())
        for path, t in held_tensors(learner):
            kinds[_kind(path)] += 1
            if not _on(t, self.device):
                self.held_off.append(f"{when}: {path} {tuple(t.shape)} on {t.device}")

    @contextlib.contextmanager
    def step_scope(self) -> Iterator[None]:
        if self.depth:  # nested (an evaluation inside a step): already watched
            yield
            return
        self.depth += 1
        with contextlib.ExitStack() as stack:
            if self.placement:
                stack.enter_context(_Recorder(self))
            if self.sync_error and self.warm:
                torch.cuda.set_sync_debug_mode("error")
                stack.callback(torch.cuda.set_sync_debug_mode, "default")
            elif self.sync_error:  # the first step: counted
                caught = stack.enter_context(warnings.catch_warnings(record=True))
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                stack.callback(self._count_first_syncs, caught)
            try:
                yield
            finally:
                self.depth -= 1

    def _count_first_syncs(self, caught: list[warnings.WarningMessage]) -> None:
        torch.cuda.set_sync_debug_mode("default")
        self.first_syncs += sum("synchroniz" in str(w.message) for w in caught)

    # installing it
    def _patch(self, owner: Any, name: str, value: Any) -> None:
        old = getattr(owner, name)
        setattr(owner, name, value)
        self._undo.append(lambda: setattr(owner, name, old))

    def __enter__(self) -> Watch:
        try:
            self._install()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _install(self) -> None:
        watch = self
        for module in (shiftsim.engine, shiftsim.fleet):
            orig_run = module.run_members

            def run_members(scenario: Any, learner: Any, *a: Any, _orig: Any = orig_run,
                            **k: Any) -> Any:
                results = _orig(scenario, _WatchedMembers(learner, watch), *a, **k)
                watch.check_held("after the run", learner)
                return results

            self._patch(module, "run_members", run_members)
        for feed in ("StreamFeed", "StackedFeed"):
            cls = getattr(shiftsim.loop, feed)
            self._patch(shiftsim.loop, feed,
                        lambda *a, _cls=cls, **k: _WatchedFeed(_cls(*a, **k), watch))
        if self.count_host:
            for name, owner in HOST_CALLS.items():
                orig = getattr(owner, name)

                def counted(*a: Any, _orig: Any = orig, _name: str = name, **k: Any) -> Any:
                    # a CPU tensor's .numpy() is a view of its memory, not a read-back
                    cpu_view = _name == "numpy" and a and a[0].device.type == "cpu"
                    if watch.depth and not cpu_view:
                        (watch.host_calls if watch.warm else watch.first_host_calls)[_name] += 1
                    return _orig(*a, **k)

                self._patch(owner, name, counted)

    def __exit__(self, *exc: Any) -> None:
        while self._undo:
            self._undo.pop()()
        if self.sync_error:
            torch.cuda.set_sync_debug_mode("default")


# -- the checks -----------------------------------------------------------------------------------

def _three_runs(cfg: Config, sc: ss.Scenario) -> dict[str, Callable[[], Any]]:
    """run() (the stacked program), run(vectorized=False) and run_fleet() of the families."""
    model, dev = cfg.model(), cfg.device
    return {
        "run()": lambda: ss.run(sc, model, "tam", seed=0, device=dev),
        "run(vectorized=False)": lambda: ss.run(sc, model, "adamem_adamw", seed=0, device=dev,
                                                vectorized=False),
        "run_fleet(9 families)": lambda: ss.run_fleet(sc, model, cfg.families(), device=dev),
    }


def check_placement(cfg: Config) -> Check:
    sc = cfg.scenario(min(cfg.steps, PLACEMENT_STEPS))  # every op is recorded: slow per step
    problems, parts = [], []
    for name, call in _three_runs(cfg, sc).items():
        with Watch(cfg.device, placement=True) as w:
            call()
        held = w.held.get("after the run", collections.Counter())
        if not w.held or not w.steps:
            problems.append(f"{name}: nothing watched (the loop was not reached)")
        problems += [f"{name}: {p}" for p in w.held_off[:3]]
        problems += [f"{name}: {n} x {what}" for what, n in w.off_device.most_common(3)]
        scalars = sum(w.host_scalars.values())
        parts.append(f"{name}: {held['parameters']} param/grad, "
                     f"{held['optimizer state']} opt-state, "
                     f"{held['diagnostics buffers'] + held['other']} buffers; "
                     f"{w.steps} steps, {w.evals} evals, {w.ops} ops"
                     + (f", {scalars} 0-d CPU operands" if scalars else ""))
    where = f"all on {cfg.device}" if not problems else "; ".join(problems[:6])
    return Check("placement", "FAIL" if problems else "PASS", f"{where} | " + "; ".join(parts))


def check_syncs(cfg: Config) -> Check:
    sc = cfg.scenario()
    problems, parts = [], []
    for name, call in _three_runs(cfg, sc).items():
        try:
            with Watch(cfg.device, count_host=True, sync_error=cfg.cuda) as w:
                call()
        except RuntimeError as exc:
            if "synchroniz" not in str(exc):
                raise
            frames = [f for f in traceback.extract_tb(exc.__traceback__)
                      if "shiftsim" in f.filename and "gpu_smoke" not in f.filename]
            at = f" at {frames[-1].filename.rsplit('/', 2)[-1]}:{frames[-1].lineno}" \
                if frames else ""
            problems.append(f"{name}: a synchronizing CUDA operation in a step{at}")
            continue
        n = sum(w.host_calls.values())
        if n:
            problems.append(f"{name}: {n} host calls ({dict(w.host_calls)})")
        first = sum(w.first_host_calls.values())
        once = (f"; first step: {first} host calls ({', '.join(w.first_host_calls)})"
                if first else "") + (f", {w.first_syncs} syncs" if w.first_syncs else "")
        parts.append(f"{name}: {n} host calls in {w.steps - 1} steps after the first and "
                     f"{w.evals} evals{once}")
    mode = ("CUDA sync debug mode 'error': no synchronizing operation" if cfg.cuda else
            "CUDA sync debug mode skipped (device is not CUDA)")
    if problems:
        return Check("syncs", "FAIL", "; ".join(problems))
    return Check("syncs", "PASS", f"per step: {mode}; " + "; ".join(parts))


def same_bits(a: Any, b: Any) -> bool:
    """Traces and evaluations of two RunResults equal bit for bit."""
    return a.trace.equals(b.trace) and a.evals.equals(b.evals)


def check_reruns(cfg: Config) -> Check:
    sc, model, dev = cfg.scenario(), cfg.model(), cfg.device
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r1 = ss.run(sc, model, "tam", seed=3, device=dev, deterministic=True)
        r2 = ss.run(sc, model, "tam", seed=3, device=dev, deterministic=True)
        f1 = ss.run_fleet(sc, model, cfg.families(), device=dev, deterministic=True)
        f2 = ss.run_fleet(sc, model, cfg.families(), device=dev, deterministic=True)
    nondet = sum("determinis" in str(w.message) for w in caught)
    run_ok = same_bits(r1, r2)
    fleet_ok = [same_bits(a, b) for a, b in zip(f1, f2)]
    detail = (f"run(): {'bit-identical' if run_ok else 'DIFFERENT'}; run_fleet: "
              f"{sum(fleet_ok)}/{len(fleet_ok)} members bit-identical; deterministic=True, "
              f"{len(r1.trace)} steps; {nondet} nondeterminism warnings")
    return Check("reruns", "PASS" if run_ok and all(fleet_ok) else "FAIL", detail)


def compare_member(fleet: Any, alone: Any, exact: bool) -> tuple[bool, str]:
    """A fleet member against run(): ``exact`` bit for bit; otherwise the same step, phase and
    sample columns, losses of the first :data:`LOSS_STEPS` steps within :data:`LOSS_RTOL` /
    :data:`LOSS_ATOL` and online accuracies within :data:`ACC_TOL`. Returns (ok, numbers)."""
    if same_bits(fleet, alone):
        return True, "bit-identical"
    if exact:
        return False, "not bit-identical"
    ta, tb = fleet.trace, alone.trace
    if len(ta) != len(tb) or any(not np.array_equal(ta[c].values, tb[c].values)
                                 for c in ("step", "phase", "n", "n_new")):
        return False, f"different steps ({len(ta)} vs {len(tb)} rows)"
    la, lb = ta["loss"].values[:LOSS_STEPS], tb["loss"].values[:LOSS_STEPS]
    dl = float(np.max(np.abs(la - lb))) if len(la) else 0.0
    dacc = abs(fleet.online_accuracy - alone.online_accuracy)
    ok = bool(np.allclose(la, lb, rtol=LOSS_RTOL, atol=LOSS_ATOL)) and dacc <= ACC_TOL
    return ok, f"max |dloss| {dl:.2e} (first {len(la)} steps), |d online acc| {dacc:.4f}"


def check_fleet_vs_run(cfg: Config) -> Check:
    sc, model, dev = cfg.scenario(), cfg.model(), cfg.device
    members = cfg.families()
    fleet = ss.run_fleet(sc, model, members, device=dev, deterministic=True)
    exact = not cfg.cuda
    failed, bits, worst = [], 0, ""
    for (opt, seed), res in zip(members, fleet):
        alone = ss.run(sc, model, opt, seed=seed, device=dev, deterministic=True)
        ok, numbers = compare_member(res, alone, exact)
        bits += numbers == "bit-identical"
        if numbers != "bit-identical":
            worst = f"{opt.name}: {numbers}"
        if not ok:
            failed.append(f"{opt.name} seed {seed}: {numbers}")
    cond = ("condition: bit for bit (CPU, same threads)" if exact else
            f"condition: losses of the first {LOSS_STEPS} steps within rtol {LOSS_RTOL:g} and "
            f"online accuracy within {ACC_TOL:g} (CUDA: kernels chosen by shape)")
    detail = (f"{len(members) - len(failed)}/{len(members)} members equal run(), {bits} bit for "
              f"bit; {cond}" + (f"; e.g. {worst}" if worst and not failed else ""))
    if failed:
        detail += "; " + "; ".join(failed[:4])
    return Check("fleet_vs_run", "FAIL" if failed else "PASS", detail)


def judge_memory(estimate: int, peak: int, slack: float) -> tuple[bool, str]:
    """The estimate must cover the measured peak and be at most ``slack`` times it."""
    ratio = estimate / peak if peak > 0 else float("inf")
    ok = peak > 0 and peak <= estimate <= slack * peak
    return ok, (f"estimate {estimate / 2**20:.1f} MiB, measured peak {peak / 2**20:.1f} MiB, "
                f"estimate/peak {ratio:.2f} (must lie in [1, {slack:g}])")


def check_memory(cfg: Config) -> Check:
    sc, model, dev, k = cfg.scenario(), cfg.model(), cfg.device, cfg.fleet
    members = [(ss.optim.spec(FAMILIES[i % len(FAMILIES)]), i) for i in range(k)]
    estimate = fleet_memory_bytes(sc, model, k)
    module = model.build(sc.data, seed=0).to(dev)
    from_module = fleet_memory_bytes(sc, module, k)
    if from_module != estimate:
        return Check("memory", "FAIL", f"estimate for a module on {dev}: {from_module} bytes, "
                     f"for its spec: {estimate}")
    if not cfg.cuda:
        return Check("memory", "SKIP", f"estimate for {k} members {estimate / 2**20:.1f} MiB "
                     "(a module on the device gives the same); no measured peak to compare: "
                     "torch keeps no peak-allocation counter for the CPU")
    del module
    ss.run_fleet(sc, model, members, device=dev)  # warm-up: cuBLAS workspaces, allocator
    torch.cuda.synchronize(dev)
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    ss.run_fleet(sc, model, members, device=dev)
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev) - base
    ok, numbers = judge_memory(estimate, peak, cfg.memory_slack)
    return Check("memory", "PASS" if ok else "FAIL", f"fleet of {k}: {numbers}")


def check_speed(cfg: Config) -> Check:
    sc, model, dev, k = cfg.scenario(), cfg.model(), cfg.device, cfg.fleet
    tam = [(ss.optim.spec("tam"), i) for i in range(k)]
    cpu = torch.device("cpu")
    where = [dev] if not cfg.cuda else [dev, cpu]
    calls = {}
    for d in where:
        calls[("run", d.type)] = lambda d=d, sc=sc: ss.run(sc, model, "tam", seed=0, device=d)
        calls[("fleet", d.type)] = lambda d=d, sc=sc: ss.run_fleet(sc, model, tam,
                                                                    device=d)[0]
    short = cfg.scenario(min(cfg.steps, 10))
    for d in where:  # warm-up: CUDA context, kernels, allocator
        ss.run(short, model, "tam", seed=0, device=d)
        ss.run_fleet(short, model, tam, device=d)
    ms: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    for _ in range(cfg.rounds):
        for key, call in calls.items():
            ms[key].append(call().timings["ms_per_step"])
    med = {key: statistics.median(v) for key, v in ms.items()}
    threads = torch.get_num_threads()
    if not cfg.cuda:
        return Check("speed", "SKIP", f"{dev}: run() {med[('run', dev.type)]:.3f} ms/step, "
                     f"fleet of {k} {med[('fleet', dev.type)]:.4f} ms/step per member "
                     f"({threads} threads); nothing to compare against on the CPU")
    run_x = med[("run", "cpu")] / med[("run", "cuda")]
    fleet_x = med[("fleet", "cpu")] / med[("fleet", "cuda")]
    detail = (f"run(): {med[('run', 'cuda')]:.3f} ms/step on {dev}, {med[('run', 'cpu')]:.3f} "
              f"on the CPU ({run_x:.2f}x); fleet of {k}, per member: "
              f"{med[('fleet', 'cuda')]:.4f} vs {med[('fleet', 'cpu')]:.4f} ms/step "
              f"({fleet_x:.2f}x, must be >= {cfg.min_speedup:g}x); CPU {threads} threads, "
              f"median of {cfg.rounds} interleaved rounds")
    return Check("speed", "PASS" if fleet_x >= cfg.min_speedup else "FAIL", detail)


CHECK_FUNCTIONS: dict[str, Callable[[Config], Check]] = {
    "placement": check_placement, "syncs": check_syncs, "reruns": check_reruns,
    "fleet_vs_run": check_fleet_vs_run, "memory": check_memory, "speed": check_speed,
}


# -- the script -----------------------------------------------------------------------------------

def resolve(device: str) -> torch.device | None:
    """The device to check, or None when it asks for CUDA and there is none (or not that one).
    Raises ValueError for a device other than CUDA or the CPU."""
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r} ({exc})") from None
    if dev.type not in ("cuda", "cpu"):
        raise ValueError(f"device {device!r}: this script checks 'cuda', 'cuda:N' or 'cpu'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return None
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            return None
        return torch.device("cuda", index)
    return dev


def run_checks(cfg: Config, names: Sequence[str], out: Any = None) -> list[Check]:
    """Run the named checks in order, printing each verdict as it comes; a check that raises
    fails with its error."""
    out = out or sys.stdout
    results = []
    for name in names:
        t = time.perf_counter()
        try:
            check = CHECK_FUNCTIONS[name](cfg)
        except Exception as exc:  # noqa: BLE001 - a crash is that check's failure
            check = Check(name, "FAIL", f"raised {type(exc).__name__}: {exc}")
        check.detail += f" [{time.perf_counter() - t:.1f} s]"
        print(check.line(), file=out, flush=True)
        results.append(check)
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--steps", type=int, default=200, help="steps per phase (three phases)")
    p.add_argument("--fleet", type=int, default=64, help="members for memory and speed")
    p.add_argument("--hidden", default="64", help="the MLP's hidden widths, e.g. 64,64")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--memory-slack", type=float, default=10.0,
                   help="largest estimate / measured peak accepted")
    p.add_argument("--min-speedup", type=float, default=1.0,
                   help="smallest fleet speed-up on the device over the CPU accepted")
    p.add_argument("--only", default=",".join(CHECKS),
                   help=f"comma-separated checks, of: {', '.join(CHECKS)}")
    args = p.parse_args(argv)
    unknown = [c for c in args.only.split(",") if c not in CHECKS]
    if unknown:
        p.error(f"unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}")
    if min(args.steps, args.fleet, args.rounds, args.threads) < 1:
        p.error("--steps, --fleet, --rounds and --threads must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the smoke test; returns the exit code (0 passed, 1 a check failed, 2 no CUDA)."""
    args = parse_args(argv)
    # as a study's workers do: before CUDA starts, so that cuBLAS sizes its workspace for
    # reproducible results (the reruns and fleet_vs_run checks run deterministic=True)
    prepare_deterministic_env()
    try:
        dev = resolve(args.device)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if dev is None:
        print(NO_CUDA, file=sys.stderr)
        return 2
    cfg = Config(dev, steps=args.steps, fleet=args.fleet,
                 hidden=tuple(int(h) for h in args.hidden.split(",") if h), rounds=args.rounds,
                 memory_slack=args.memory_slack, min_speedup=args.min_speedup)
    facts = device_facts(dev)
    t0 = time.perf_counter()
    with torch_threads(args.threads):
        print(f"shiftsim GPU smoke test on {dev} ({facts['device_name']}): torch "
              f"{torch.__version__}, CUDA {facts['cuda']}, cuDNN {facts['cudnn']}, "
              f"{torch.get_num_threads()} CPU threads; digits, 3 phases x {cfg.steps} steps, "
              f"batch 32, mlp{cfg.hidden}; fleets of {len(FAMILIES)} families and of "
              f"{cfg.fleet}", flush=True)
        results = run_checks(cfg, args.only.split(","))
    counts = collections.Counter(r.status for r in results)
    print(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped in "
          f"{time.perf_counter() - t0:.1f} s")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
