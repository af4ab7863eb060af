"""The fleet: many learners of one architecture in one vectorized program.

Online learners in robustness studies are small; one at a time they leave a GPU idle and a CPU
mostly running Python. :func:`run_fleet` runs K members — each an (optimizer, seed) pair — of one
architecture on one scenario as a single program: parameters are stacked along a leading member
dimension, the forward pass is a chain of batched matmuls (an MLP) or ``torch.func.vmap`` over
``functional_call`` (any other model), one backward pass serves every member, and each group of
members that share an optimizer spec is stepped by that optimizer over slices of the stacked
parameters — shiftsim's optimizers with ``learner_dims=1`` so that their cosines, inner products
and norms are per member, torch's (elementwise) optimizers as they are.

Each member keeps its own stream: batch order, label tables, permutations and noise come from
its seed exactly as in :func:`shiftsim.run`, and its initial weights are the ones ``run()`` would
build. So every member's :class:`~shiftsim.engine.RunResult` has the same content as the
sequential run; the numbers agree up to float rounding of the batched matmuls (tested: identical
predictions on nearly every step). A member whose loss stops being finite is masked out and
recorded as diverged; the others go on.

>>> import shiftsim as ss
>>> sc = ss.label_flip_tasks(ss.data.digits(), rate=1.0, tasks=2, steps_per_task=50)
>>> results = run_fleet(sc, ss.models.mlp(hidden=(32,)),
...                     [("sgdm", 0), ("sgdm", 1), (ss.optim.spec("adam"), 0)], device="cpu")
>>> [len(r.trace) for r in results], results[2].info["learner"]["optimizer"]["name"]
([100, 100, 100], 'adam')
"""

from __future__ import annotations

import copy
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .engine import RunResult, _EvalSchedule
from .errors import ShiftsimError, SpecTypeError
from .learner import build_model, mode_sensitive
from .models import ModelSpec
from .optim import OptimizerSpec, spec
from .scenario import Scenario
from .stream import Stream, resolve_device

_ELEMENTWISE = (nn.ReLU, nn.GELU, nn.Tanh, nn.SiLU, nn.Sigmoid, nn.LeakyReLU, nn.Identity)

#: the most bytes of pre-shifted training inputs stacked across seeds for one-gather batches
STACK_LIMIT = 512 * 2**20


# -- the stacked model ------------------------------------------------------------------------

class StackedModel:
    """K copies of one architecture with their parameters stacked along dimension 0.

    ``params`` maps each parameter name to a leaf tensor of shape ``(K, *shape)``. ``forward``
    takes ``(K, batch, *input_shape)`` and returns ``(K, batch, classes)``. An ``nn.Sequential``
    of Flatten / Linear / elementwise activations runs as batched matmuls; any other model runs
    through ``torch.func.vmap(functional_call)``.
    """

    def __init__(self, models: Sequence[nn.Module], compile: bool = False) -> None:
        if not models:
            raise ShiftsimError("a fleet needs at least one member")
        names = [n for n, _ in models[0].named_parameters()]
        for m in models:
            if mode_sensitive(m):
                raise ShiftsimError("fleet members cannot use BatchNorm, dropout or other "
                                    "train/eval-dependent layers; use norm='layer' or 'group'")
        self.params: dict[str, torch.Tensor] = {
            n: torch.stack([dict(m.named_parameters())[n].detach() for m in models])
            .requires_grad_(True) for n in names}
        self.buffers: dict[str, torch.Tensor] = {
            n: torch.stack([dict(m.named_buffers())[n] for m in models])
            for n, _ in models[0].named_buffers()}
        self.template = models[0]
        self._plan = self._matmul_plan(models[0])
        fn: Callable[..., torch.Tensor] = self._forward_matmul if self._plan is not None \
            else self._forward_vmap
        if self._plan is None:
            self._meta = copy.deepcopy(models[0]).to("meta")
        self._fn = fn
        self.compiled = False
        if compile:
            try:
                self._fn = torch.compile(fn, dynamic=False)
                self.compiled = True
            except Exception as exc:  # pragma: no cover - depends on the toolchain
                warnings.warn(f"torch.compile failed ({exc}); the fleet runs eagerly",
                              stacklevel=2)

    @staticmethod
    def _matmul_plan(model: nn.Module) -> list[tuple[str, Any]] | None:
        if not isinstance(model, nn.Sequential):
            return None
        plan: list[tuple[str, Any]] = []
        for name, m in model.named_children():
            if isinstance(m, nn.Flatten):
                if m.start_dim != 1 or m.end_dim != -1:
                    return None
                plan.append(("flatten", None))
            elif isinstance(m, nn.Linear):
                plan.append(("linear", (f"{name}.weight", f"{name}.bias" if m.bias is not None
                                        else None)))
            elif isinstance(m, _ELEMENTWISE):
                plan.append(("act", m))
            else:
                return None
        return plan

    def _forward_matmul(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        assert self._plan is not None
        for kind, arg in self._plan:
            if kind == "flatten":
                x = x.flatten(2)
            elif kind == "linear":
                w, b = params[arg[0]], params[arg[1]] if arg[1] else None
                x = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2)) if b is not None \
                    else torch.bmm(x, w.transpose(1, 2))
            else:
                x = arg(x)
        return x

    def _forward_vmap(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call, vmap

        def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], xi: torch.Tensor
                ) -> torch.Tensor:
            return functional_call(self._meta, (p, b), (xi,))

        return vmap(one)(params, self.buffers, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled:
            try:
                return self._fn(self.params, x)
            except Exception as exc:  # the first call compiles; fall back when it cannot
                warnings.warn(f"torch.compile of the fleet step failed ({type(exc).__name__}: "
                              f"{exc}); running eagerly", stacklevel=2)
                self.compiled = False
                self._fn = self._forward_matmul if self._plan is not None else \
                    self._forward_vmap
        return self._fn(self.params, x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
        """Class predictions ``(K, n)`` for inputs ``(K, n, ...)``."""
        return torch.cat([self.forward(c).argmax(-1) for c in x.split(chunk, dim=1)], dim=1)

    def member(self, k: int) -> nn.Module:
        """Member ``k`` as an ordinary module (a copy of its current weights)."""
        m = copy.deepcopy(self.template)
        state = {n: t[k].detach().clone() for n, t in {**self.params, **self.buffers}.items()}
        m.load_state_dict(state)
        return m


# -- member groups --------------------------------------------------------------------------

@dataclass
class _Group:
    """The members [start, stop) that share one optimizer spec, and that optimizer."""

    spec: OptimizerSpec
    start: int
    stop: int
    views: list[torch.Tensor]
    optimizer: torch.optim.Optimizer
    needs_loss: bool
    diag_names: list[str]
    diag_buf: torch.Tensor | None = None


def _supports_learner_dims(target: Any) -> bool:
    import inspect

    try:
        return "learner_dims" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


def _build_group(opt_spec: OptimizerSpec, params: dict[str, torch.Tensor], start: int,
                 stop: int) -> _Group:
    views = [p.detach()[start:stop] for p in params.values()]
    target = opt_spec.target
    kwargs = opt_spec.kwargs
    if _supports_learner_dims(target):
        optimizer = target(views, learner_dims=1, **kwargs)
    elif getattr(target, "__module__", "").startswith("torch.optim"):
        optimizer = opt_spec.build(views)  # elementwise: stacking does not change the math
    else:
        raise ShiftsimError(
            f"optimizer {opt_spec.name!r} cannot run in a fleet: it must be one of torch's "
            "elementwise optimizers or accept learner_dims=1 (per-member reductions); run it "
            "with shiftsim.run instead")
    diag = optimizer.diagnostics() if hasattr(optimizer, "diagnostics") else {}
    return _Group(opt_spec, start, stop, views, optimizer, opt_spec.needs_loss, list(diag))


def _as_member(m: Any) -> tuple[OptimizerSpec, int]:
    if not isinstance(m, (tuple, list)) or len(m) != 2:
        raise SpecTypeError(f"a fleet member must be an (optimizer, seed) pair, got {m!r}")
    opt, seed = m
    opt = opt if isinstance(opt, OptimizerSpec) else spec(opt)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ShiftsimError(f"seed must be a non-negative integer, got {seed!r}")
    return opt, int(seed)


# -- batches ----------------------------------------------------------------------------------

class _SeedBatches:
    """The batches of every distinct seed in one phase, stacked ``(S, ...)``."""

    def __init__(self, streams: list[Stream], phase: int, member_seed: torch.Tensor,
                 identity: bool) -> None:
        self.plans = [st.plan(phase) for st in streams]
        self.streams = streams
        self.member_seed = member_seed
        self.identity = identity
        p0 = self.plans[0]
        self.steps = p0.steps
        self.y = torch.stack([p.y for p in self.plans], 1)  # (L, S, b)
        self.y_true = torch.stack([p.y_true for p in self.plans], 1)
        self.index = torch.stack([p.index for p in self.plans], 1)  # (L, S, b)
        self.n_new = torch.stack([p.n_new for p in self.plans], 1)  # (L, S)
        self.width = 0 if p0.new_mask is None else int(p0.new_mask.shape[0])
        has_tail = any(p.regime.tail for p in self.plans) or any(
            p.previous is not None and p.previous.tail for p in self.plans)
        self.fast = not has_tail
        self.base: torch.Tensor | None = None
        if self.fast:
            bases = [p.regime.x_base for p in self.plans]
            if all(b is bases[0] for b in bases):  # no static shifts: one shared input table
                self.base = bases[0]
                self.offset = None
            elif sum(b.numel() * b.element_size() for b in bases) <= STACK_LIMIT:
                n = bases[0].shape[0]
                self.base = torch.cat(bases)
                self.offset = (torch.arange(len(bases), device=bases[0].device) * n).view(-1, 1)
            else:
                self.fast = False

    def _members(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.identity else t.index_select(0, self.member_seed)

    def inputs(self, s: int) -> torch.Tensor:
        if self.fast and s >= self.width:
            idx = self.index[s] if self.offset is None else self.index[s] + self.offset
            assert self.base is not None
            x = self.base[idx]  # (S, b, ...)
        else:
            x = torch.stack([p.inputs(s, st.noise) for p, st in zip(self.plans, self.streams)])
        return self._members(x)

    def labels(self, s: int) -> torch.Tensor:
        return self._members(self.y[s])


# -- the loop -----------------------------------------------------------------------------------

def run_fleet(scenario: Scenario, model: ModelSpec | nn.Module,
              members: Sequence[tuple[OptimizerSpec | str, int]],
              device: str | torch.device = "auto", *, check_every: int = 64,
              compile: bool = False, progress: bool = False) -> list[RunResult]:
    """Run every ``(optimizer, seed)`` member on ``scenario`` as one vectorized program.

    Returns one :class:`~shiftsim.engine.RunResult` per member, in the order given, with the
    content :func:`shiftsim.run` gives for that member (same trace columns, evaluations, phases,
    diverged handling). Members may use different optimizers (they are grouped by optimizer
    spec inside). ``compile=True`` compiles the stacked forward pass with ``torch.compile``,
    falling back to eager execution when compilation fails.
    """
    t_start = time.perf_counter()
    if not isinstance(scenario, Scenario):
        raise SpecTypeError(f"run_fleet() needs a Scenario, got {type(scenario).__name__}")
    if not isinstance(model, (ModelSpec, nn.Module)):
        raise SpecTypeError(f"a fleet's model must be a ModelSpec or an nn.Module, got {model!r}")
    if not members:
        raise ShiftsimError("run_fleet needs at least one (optimizer, seed) member")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ShiftsimError(f"check_every must be a positive integer, got {check_every!r}")
    given = [_as_member(m) for m in members]
    dev = resolve_device(device)

    # members sorted so that each optimizer spec is a contiguous slice (first appearance
    # order, stable within); distinct seeds get one stream each
    first: dict[OptimizerSpec, int] = {}
    for i, (opt_spec, _) in enumerate(given):
        first.setdefault(opt_spec, i)
    order = sorted(range(len(given)), key=lambda i: (first[given[i][0]], i))
    specs = [given[i][0] for i in order]
    seeds = [given[i][1] for i in order]
    distinct = sorted(set(seeds))
    streams = [Stream(scenario, s, dev) for s in distinct]
    member_seed = torch.tensor([distinct.index(s) for s in seeds], device=dev)
    identity = seeds == distinct
    K = len(order)

    data = streams[0].data
    net = StackedModel([build_model(model, data, s).to(dev) for s in seeds], compile=compile)
    groups: list[_Group] = []
    start = 0
    for i in range(1, K + 1):
        if i == K or specs[i] != specs[start]:
            groups.append(_build_group(specs[start], net.params, start, i))
            start = i

    T, b = scenario.total_steps, scenario.batch_size
    losses = torch.empty(K, T, dtype=torch.float32, device=dev)
    correct = torch.zeros(K, T, dtype=torch.int64, device=dev)
    correct_true = torch.zeros(K, T, dtype=torch.int64, device=dev)
    n_new = torch.empty(K, T, dtype=torch.int64)
    for g in groups:
        if g.diag_names:
            g.diag_buf = torch.zeros(T, g.stop - g.start, len(g.diag_names), device=dev)
    schedule = _EvalSchedule(scenario)
    eval_correct = torch.zeros(K, len(schedule.rows), dtype=torch.int64, device=dev)
    heldout: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    active = torch.ones(K, dtype=torch.bool, device=dev)
    diverged_at: list[int | None] = [None] * K
    checked = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=T, desc=f"fleet of {K}", unit="step", leave=False)
    t_setup = time.perf_counter()

    def heldout_of(r: int) -> tuple[torch.Tensor, torch.Tensor]:
        if r not in heldout:
            xs, ys = zip(*(st.heldout(r) for st in streams))
            x, y = torch.stack(xs), torch.stack(ys)
            if not identity:
                x, y = x.index_select(0, member_seed), y.index_select(0, member_seed)
            heldout[r] = (x, y)
        return heldout[r]

    def check(upto: int) -> bool:
        """Mark members whose loss went non-finite in [checked, upto); True when all are out."""
        nonlocal checked
        bad = ~torch.isfinite(losses[:, checked:upto])
        if bool(bad.any()):  # host sync, once every check_every steps
            rows = bad.any(1).nonzero().flatten().tolist()
            for k in rows:
                if diverged_at[k] is None:
                    diverged_at[k] = checked + int(bad[k].nonzero()[0, 0])
                    active[k] = False
        checked = upto
        return all(d is not None for d in diverged_at)

    params = list(net.params.values())
    all_out = False
    for k_phase in range(len(scenario.phases)):
        batches = _SeedBatches(streams, k_phase, member_seed, identity)
        start = scenario.boundaries[k_phase]
        preds = torch.empty(K, batches.steps, b, dtype=torch.int64, device=dev)
        n_new[:, start:start + batches.steps] = (
            batches.n_new.T if identity else batches.n_new.T[member_seed.cpu()])
        for s in range(batches.steps):
            t = start + s
            x = batches.inputs(s)
            y = batches.labels(s)
            logits = net.forward(x)
            per = F.cross_entropy(logits.reshape(K * b, -1), y.reshape(-1),
                                  reduction="none").view(K, b).mean(1)
            with torch.no_grad():
                torch.argmax(logits, -1, out=preds[:, s])
                losses[:, t] = per
            total = torch.where(active, per, torch.zeros_like(per)).sum()
            for p in params:
                p.grad = None
            total.backward()
            loss_d = per.detach()
            for g in groups:
                for v, p in zip(g.views, params):
                    v.grad = p.grad[g.start:g.stop]
                if g.needs_loss:
                    g.optimizer.step(loss=loss_d[g.start:g.stop])
                else:
                    g.optimizer.step()
                if g.diag_buf is not None:
                    g.diag_buf[t] = torch.stack(list(g.optimizer.diagnostics().values()), -1)
            if t in schedule.at:
                _, regimes, _ = schedule.at[t]
                row = schedule.first_row[t]
                for i, r in enumerate(regimes):
                    hx, hy = heldout_of(r)
                    eval_correct[:, row + i] = (net.predict(hx) == hy).sum(1)
            if (t + 1) % check_every == 0 and check(t + 1):
                all_out = True
                break
            if bar is not None and (t + 1) % 50 == 0:
                bar.update(50)
        done = s + 1
        y_m = batches.y[:done].transpose(0, 1)
        yt_m = batches.y_true[:done].transpose(0, 1)
        if not identity:
            y_m, yt_m = y_m.index_select(0, member_seed), yt_m.index_select(0, member_seed)
        correct[:, start:start + done] = (preds[:, :done] == y_m).sum(-1)
        correct_true[:, start:start + done] = (preds[:, :done] == yt_m).sum(-1)
        if all_out or check(start + batches.steps):
            break
    if bar is not None:
        bar.close()
    t_loop = time.perf_counter()

    # one transfer of everything, then one RunResult per member in the caller's order
    losses_c, correct_c, ctrue_c = losses.cpu().numpy(), correct.cpu().numpy(), \
        correct_true.cpu().numpy()
    ec = eval_correct.cpu().numpy()
    diag_c = {id(g): g.diag_buf.cpu().numpy() for g in groups if g.diag_buf is not None}
    phase_of_step = np.repeat(np.arange(len(scenario.phases)),
                              [p.steps for p in scenario.phases])
    phases = scenario.phase_table()
    scenario_dict = scenario.to_dict()
    model_dict = model.to_dict() if isinstance(model, ModelSpec) else {
        "module": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters())}
    loop_s = t_loop - t_setup
    results: list[RunResult | None] = [None] * K
    for pos, orig in enumerate(order):
        g = next(g for g in groups if g.start <= pos < g.stop)
        d = diverged_at[pos]
        steps_run = T if d is None else d
        trace = pd.DataFrame({
            "step": np.arange(steps_run, dtype=np.int64),
            "phase": phase_of_step[:steps_run],
            "n": np.full(steps_run, b, dtype=np.int64),
            "correct": correct_c[pos, :steps_run],
            "correct_true": ctrue_c[pos, :steps_run],
            "loss": losses_c[pos, :steps_run],
            "n_new": n_new[pos, :steps_run].numpy(),
        })
        if id(g) in diag_c:
            vals = diag_c[id(g)][:steps_run, pos - g.start]
            for j, name in enumerate(g.diag_names):
                trace[f"diag_{name}"] = vals[:, j]
        last_eval = T if d is None else d - 1
        keep = [i for i, r in enumerate(schedule.rows) if r[0] <= last_eval]
        rows = [schedule.rows[i] for i in keep]
        evc = ec[pos, keep]
        evals = pd.DataFrame({
            "step": np.array([r[0] for r in rows], dtype=np.int64),
            "phase": np.array([r[1] for r in rows], dtype=np.int64),
            "regime": np.array([r[2] for r in rows], dtype=np.int64),
            "n": np.full(len(rows), scenario.eval_size, dtype=np.int64),
            "correct": evc.astype(np.int64),
            "accuracy": evc / scenario.eval_size,
            "phase_end": np.array([r[3] for r in rows], dtype=bool),
        })
        try:
            opt_dict = specs[pos].to_dict()
        except ShiftsimError:
            opt_dict = {"name": specs[pos].name, "hparams": dict(specs[pos].hparams)}
        info = {"scenario": scenario_dict,
                "learner": {"model": model_dict, "optimizer": opt_dict},
                "seed": seeds[pos], "device": str(dev),
                "versions": {"torch": torch.__version__, "python": platform.python_version()},
                "fleet": {"members": K, "compiled": net.compiled}}
        timings = {"setup_s": t_setup - t_start, "loop_s": loop_s / K,
                   "fleet_loop_s": loop_s, "total_s": (time.perf_counter() - t_start) / K,
                   "ms_per_step": 1000 * loop_s / K / max(steps_run, 1)}
        results[orig] = RunResult(trace, evals, phases.copy(), info, diverged=d is not None,
                                  diverged_step=d, timings=timings)
    out = [r for r in results if r is not None]
    assert len(out) == K
    return out


def fleet_memory_bytes(scenario: Scenario, model: ModelSpec | nn.Module, members: int) -> int:
    """A rough upper bound of the device memory a fleet of ``members`` needs: parameters,
    gradients and up to three optimizer buffers per member, plus per-step activations."""
    net = build_model(model, scenario.data, 0)
    n_params = sum(p.numel() for p in net.parameters())
    width = max((m.out_features for m in net.modules() if isinstance(m, nn.Linear)), default=1)
    per_member = 4 * (5 * n_params + 4 * scenario.batch_size * width * 4)
    per_member += 8 * 3 * scenario.total_steps  # trace buffers
    return int(per_member * members)

