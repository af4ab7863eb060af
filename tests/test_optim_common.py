"""Behaviour every shiftsim optimizer shares with torch's own, plus the helpers the other
``test_optim_*`` files use: a small two-layer model with two param groups, and runners that
drive an optimizer (or a plain float64 reference transcription) through the same loss sequence.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import shiftsim.optim as so
from shiftsim.errors import ShiftsimError

# ----------------------------------------------------------------------------- shared helpers

SHAPES = [(5, 4), (5,), (3, 5), (3,)]
#: param group of each tensor in SHAPES: the first layer is group 0, the second group 1
GROUP_OF = [0, 0, 1, 1]


def init_params(dtype: torch.dtype = torch.float64, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(s, generator=g, dtype=torch.float64) * 0.5).to(dtype) for s in SHAPES]


def batch_loss(ps: list[torch.Tensor], t: int) -> torch.Tensor:
    """Cross-entropy of a tanh MLP on batch ``t`` (a fixed function of ``t``)."""
    g = torch.Generator().manual_seed(1000 + t)
    x = torch.randn(8, 4, generator=g, dtype=torch.float64).to(ps[0].dtype)
    y = torch.randint(0, 3, (8,), generator=g)
    h = torch.tanh(x @ ps[0].T + ps[1])
    return torch.nn.functional.cross_entropy(h @ ps[2].T + ps[3], y)


def groups_of(ps: list[torch.Tensor], hp0: dict, hp1: dict) -> list[dict]:
    return [{"params": ps[:2], **hp0}, {"params": ps[2:], **hp1}]


def run_optimizer(make: Callable[[list], torch.optim.Optimizer], steps: int, *,
                  dtype: torch.dtype = torch.float64, hp0: dict | None = None,
                  hp1: dict | None = None, needs_loss: bool = False, seed: int = 0,
                  diagnostics: bool = False, on_step: Callable | None = None):
    """Run ``make(param_groups)`` for ``steps`` steps; return the parameters after each step
    (and the diagnostics after each step when asked)."""
    ps = [torch.nn.Parameter(p) for p in init_params(dtype, seed)]
    opt = make(groups_of(ps, hp0 or {}, hp1 or {}))
    if on_step is not None:
        on_step(-1, opt)
    traj, diags = [], []
    for t in range(steps):
        opt.zero_grad()
        loss = batch_loss(ps, t)
        loss.backward()
        if needs_loss:
            opt.step(loss=loss.detach())
        else:
            opt.step()
        traj.append([p.detach().clone() for p in ps])
        if diagnostics:
            diags.append({k: v.clone() for k, v in opt.diagnostics().items()})
        if on_step is not None:
            on_step(t, opt)
    return (traj, diags) if diagnostics else traj


def run_reference(step: Callable, steps: int, *, dtype: torch.dtype = torch.float64,
                  seed: int = 0):
    """Drive a reference ``step(t, params, grads, loss)`` (updates params in place) through
    the loss sequence of :func:`run_optimizer`; returns the parameters after each step."""
    ps = init_params(dtype, seed)
    traj = []
    for t in range(steps):
        leaves = [p.clone().requires_grad_(True) for p in ps]
        loss = batch_loss(leaves, t)
        grads = torch.autograd.grad(loss, leaves)
        with torch.no_grad():
            step(t + 1, ps, [g.detach() for g in grads], loss.detach())
        traj.append([p.clone() for p in ps])
    return traj


def assert_traj_close(a, b, rtol: float = 1e-10, atol: float = 1e-12) -> None:
    assert len(a) == len(b)
    for t, (xs, ys) in enumerate(zip(a, b)):
        for i, (x, y) in enumerate(zip(xs, ys)):
            torch.testing.assert_close(x, y.to(x.dtype), rtol=rtol, atol=atol,
                                       msg=lambda m, t=t, i=i: f"step {t + 1}, tensor {i}: {m}")


def assert_traj_equal(a, b) -> None:
    for t, (xs, ys) in enumerate(zip(a, b)):
        for i, (x, y) in enumerate(zip(xs, ys)):
            assert torch.equal(x, y), f"step {t + 1}, tensor {i} differs"


# ----------------------------------------------------------------------------- the optimizers

#: registry name -> (class, constructor kwargs used here, hyperparameters of group 1)
OPTIMIZERS: dict[str, tuple[type, dict, dict]] = {
    "tam": (so.TAM, {"lr": 0.05, "weight_decay": 0.01}, {"lr": 0.02}),
    "adatam": (so.AdaTAM, {"lr": 1e-3, "weight_decay": 0.01}, {"lr": 5e-4}),
    "adatamw": (so.AdaTAMW, {"lr": 1e-3, "weight_decay": 0.01}, {"lr": 5e-4}),
    "adamem_sgd": (so.AdaptiveMemorySGD, {"lr": 0.05, "weight_decay": 0.01}, {"lr": 0.02}),
    "adamem_adamw": (so.AdaptiveMemoryAdamW, {"lr": 1e-2, "weight_decay": 0.01},
                     {"lr": 5e-3}),
    "momo": (so.MoMo, {"lr": 0.5, "weight_decay": 0.01}, {"lr": 0.2}),
    "momo_adam": (so.MoMoAdam, {"lr": 1e-2, "weight_decay": 0.01}, {"lr": 5e-3}),
    "grams": (so.Grams, {"lr": 1e-2, "weight_decay": 0.01}, {"lr": 5e-3}),
}
NAMES = list(OPTIMIZERS)


def factory(name: str, **over) -> Callable[[list], torch.optim.Optimizer]:
    cls, kw, _ = OPTIMIZERS[name]
    return lambda params: cls(params, **{**kw, **over})


def run_named(name: str, steps: int, **kw):
    cls, _, hp1 = OPTIMIZERS[name]
    over = kw.pop("over", {})
    return run_optimizer(factory(name, **over), steps, hp1=kw.pop("hp1", hp1),
                         needs_loss=cls.needs_loss, **kw)


def step_once(opt: torch.optim.Optimizer, ps: list[torch.Tensor], t: int = 0) -> None:
    opt.zero_grad()
    loss = batch_loss(ps, t)
    loss.backward()
    if getattr(opt, "needs_loss", False):
        opt.step(loss=loss.detach())
    else:
        opt.step()


def fresh(name: str, dtype: torch.dtype = torch.float64, **over):
    cls, _, hp1 = OPTIMIZERS[name]
    ps = [torch.nn.Parameter(p) for p in init_params(dtype)]
    return ps, factory(name, **over)(groups_of(ps, {}, hp1))


# ----------------------------------------------------------------------------- registry, CLI


def test_registry_lists_all_eight(capsys):
    from shiftsim import cli

    for name, (cls, _, _) in OPTIMIZERS.items():
        entry = so.REGISTRY[name]
        assert so.spec(name).target is cls
        assert entry.paper.startswith(("Malviya", "Topollai", "Schaipp", "Cao"))
        assert entry.family == ("adam" if name in ("adatam", "adatamw", "adamem_adamw",
                                                   "momo_adam", "grams") else "sgd")
    assert so.spec("momo").needs_loss and so.spec("momo_adam").needs_loss
    assert not so.spec("tam").needs_loss
    assert cli.main(["list", "optimizers"]) == 0
    out = capsys.readouterr().out
    for name in NAMES:
        assert f"\n{name} " in "\n" + out
    # the README's optimizer table: one line each, with the registry's paper
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("## Optimizers", 1)[1].split("\n## ", 1)[0]
    for name in NAMES:
        rows = [r for r in table.splitlines() if r.startswith(f"| `{name}` |")]
        assert len(rows) == 1, name
        assert so.REGISTRY[name].paper.split("arXiv:")[1] in rows[0]


@pytest.mark.parametrize("name", NAMES)
def test_spec_builds_and_rejects_unknown_hparams(name):
    opt = so.spec(name).build([torch.nn.Parameter(torch.zeros(3))])
    assert type(opt) is OPTIMIZERS[name][0]
    with pytest.raises(ShiftsimError, match="unknown hyperparameter 'lrr'"):
        so.spec(name, lrr=1.0)


# ----------------------------------------------------------------------------- torch behaviour


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_mid_run_continues_bit_identically(name):
    ps, opt = fresh(name)
    for t in range(4):
        step_once(opt, ps, t)
    saved_params = [p.detach().clone() for p in ps]
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    for t in range(4, 9):
        step_once(opt, ps, t)
    want = [p.detach().clone() for p in ps]
    want_diag = {k: v.clone() for k, v in opt.diagnostics().items()}

    ps2 = [torch.nn.Parameter(p.clone()) for p in saved_params]
    cls, _, hp1 = OPTIMIZERS[name]
    opt2 = factory(name)(groups_of(ps2, {}, hp1))
    buf.seek(0)
    opt2.load_state_dict(torch.load(buf, weights_only=False))
    for t in range(4, 9):
        step_once(opt2, ps2, t)
    for a, b in zip(want, ps2):
        assert torch.equal(a, b.detach())
    for k, v in opt2.diagnostics().items():
        assert torch.equal(v, want_diag[k]), k


@pytest.mark.parametrize("name", NAMES)
def test_load_state_dict_does_not_alias_the_source(name):
    ps, opt = fresh(name)
    step_once(opt, ps)
    ps2 = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt2 = factory(name)(groups_of(ps2, {}, OPTIMIZERS[name][2]))
    opt2.load_state_dict(opt.state_dict())
    before = copy.deepcopy(opt.state_dict()["state"])
    for t in range(1, 3):
        step_once(opt2, ps2, t)
    after = opt.state_dict()["state"]
    for k, st in before.items():
        for key, v in st.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, after[k][key]), (k, key)


@pytest.mark.parametrize("name", NAMES)
def test_closure_is_evaluated_with_grad_and_its_loss_returned(name):
    ps, opt = fresh(name)
    calls = []

    def closure():
        opt.zero_grad()
        loss = batch_loss(ps, 0)
        loss.backward()
        calls.append(loss.detach())
        return loss

    out = opt.step(closure)
    assert len(calls) == 1 and torch.equal(out.detach(), calls[0])
    # the same step through .backward() + step() gives the same parameters
    ps2, opt2 = fresh(name)
    step_once(opt2, ps2)
    for a, b in zip(ps, ps2):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_lr_scheduler_drives_the_learning_rate(name):
    """A LambdaLR schedule gives the same run as setting each group's lr by hand."""
    lam = [lambda k: 0.5 ** k, lambda k: 1.0 / (1 + k)]

    def with_scheduler(t, opt):
        if t < 0:
            opt._sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
        else:
            opt._sched.step()

    base = [OPTIMIZERS[name][1]["lr"], OPTIMIZERS[name][2]["lr"]]

    def by_hand(t, opt):
        for j, g in enumerate(opt.param_groups):  # t = -1: the initial lr
            g["lr"] = base[j] * lam[j](t + 1)

    a = run_named(name, 6, on_step=with_scheduler)
    b = run_named(name, 6, on_step=by_hand)
    assert_traj_equal(a, b)
    c = run_named(name, 6)
    assert not torch.equal(a[-1][0], c[-1][0])


@pytest.mark.parametrize("name", NAMES)
def test_zero_lr_leaves_parameters_alone(name):
    ps, opt = fresh(name, lr=0.0)
    for g in opt.param_groups:
        g["lr"] = 0.0
    before = [p.detach().clone() for p in ps]
    for t in range(3):
        step_once(opt, ps, t)
    for a, b in zip(before, ps):
        assert torch.equal(a, b.detach())


@pytest.mark.parametrize("name", NAMES)
def test_params_without_grad_are_skipped(name):
    ps, opt = fresh(name)
    frozen = ps[1]
    for t in range(3):
        opt.zero_grad()
        batch_loss(ps, t).backward()
        frozen.grad = None
        if opt.needs_loss:
            opt.step(loss=batch_loss(ps, t).detach())
        else:
            opt.step()
    assert torch.equal(frozen.detach(), init_params()[1])
    assert frozen not in opt.state or len(opt.state[frozen]) == 0
    # a step where no parameter has a gradient does nothing
    opt.zero_grad()
    before = [p.detach().clone() for p in ps]
    if opt.needs_loss:
        opt.step(loss=1.0)
    else:
        opt.step()
    for a, b in zip(before, ps):
        assert torch.equal(a, b.detach())


@pytest.mark.parametrize("name", NAMES)
def test_sparse_gradients_are_rejected(name):
    emb = torch.nn.Embedding(4, 3, sparse=True)
    opt = factory(name)(emb.parameters())
    loss = emb(torch.tensor([0, 2])).sum()
    loss.backward()
    with pytest.raises(ShiftsimError, match="sparse gradients"):
        if opt.needs_loss:
            opt.step(loss=loss)
        else:
            opt.step()


@pytest.mark.parametrize("name", NAMES)
def test_float32_follows_float64(name):
    a, da = run_named(name, 20, dtype=torch.float32, diagnostics=True)
    b, db = run_named(name, 20, dtype=torch.float64, diagnostics=True)
    assert a[-1][0].dtype == torch.float32
    assert_traj_close(a, b, rtol=2e-4, atol=2e-5)
    for k in db[-1]:
        assert da[-1][k].dtype == torch.float32 and db[-1][k].dtype == torch.float64


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("foreach", [True, False])
def test_foreach_and_single_tensor_paths_agree(name, foreach):
    for dtype in (torch.float32, torch.float64):
        a = run_named(name, 12, dtype=dtype, over={"foreach": foreach})
        b = run_named(name, 12, dtype=dtype, over={"foreach": None})
        assert_traj_equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_diagnostics_are_live_0d_tensors(name):
    ps, opt = fresh(name, dtype=torch.float32)
    before = opt.diagnostics()
    step_once(opt, ps)
    after = opt.diagnostics()
    assert list(before) == list(after) == list(type(opt).diagnostic_keys
                                                if not isinstance(opt, so.Grams) else ())
    for v in after.values():
        assert isinstance(v, torch.Tensor) and v.dim() == 0 and v.dtype == torch.float32
        assert torch.isfinite(v)


@pytest.mark.parametrize("name", NAMES)
def test_bad_hyperparameters_name_the_value(name):
    cls, kw, _ = OPTIMIZERS[name]
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ShiftsimError, match=r"lr must be in \[0, inf\], got -1"):
        cls(p, **{**kw, "lr": -1.0})
    with pytest.raises(ShiftsimError, match="weight_decay must be"):
        cls(p, **{**kw, "weight_decay": float("nan")})
    with pytest.raises(TypeError, match="lr must be a number"):
        cls(p, **{**kw, "lr": "fast"})
    # a bad value in an added param group is caught too
    opt = cls(p, **kw)
    with pytest.raises(ShiftsimError, match="lr must be"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lr": -2.0})


@pytest.mark.parametrize("name", NAMES)
def test_engine_runs_each_optimizer_and_records_its_diagnostics(name):
    import shiftsim as ss

    data = ss.data.digits()
    sc = ss.Scenario(data, [ss.Phase(15), ss.Phase(15, [ss.LabelFlip(1.0, "permute")])],
                     batch_size=16, eval_every=15, eval_size=50)
    result = ss.run(sc, ss.models.mlp(hidden=(16,)), ss.optim.spec(name), seed=0,
                    device="cpu")
    assert not result.diverged and len(result.trace) == 30
    cols = [c for c in result.trace.columns if c.startswith("diag_")]
    keys = OPTIMIZERS[name][0].diagnostic_keys if name != "grams" else ()
    assert cols == [f"diag_{k}" for k in keys]
    if name == "tam":
        d = result.trace["diag_damping"]
        assert d.iloc[0] == 0.5 and d.between(0, 1).all()
    if name == "momo":
        assert (result.trace["diag_step_size"] > 0).all()


def test_constructor_signatures_and_defaults():
    """The signatures of issue 3 (extra keyword options only at the end)."""
    import inspect

    want = {
        "tam": "lr momentum=0.9 gamma=0.9 eps=1e-08 weight_decay=0.0 decoupled=False "
               "scope='global' foreach=None",
        "adatam": "lr=0.001 betas=(0.9, 0.999) gamma=0.9 torque_eps=1e-08 eps=1e-08 "
                  "weight_decay=0.0 bias_correction=False scope='global' foreach=None",
        "adamem_sgd": "lr lam=0.1 beta_max=0.9 weight_decay=0.0 foreach=None",
        "adamem_adamw": "lr=0.001 betas=(0.89, 0.999) lam=0.1 eps=1e-08 weight_decay=0.0 "
                        "foreach=None",
        "momo": "lr=1.0 beta=0.9 lb=0.0 weight_decay=0.0 bias_correction=False "
                "use_fstar=False",
        "momo_adam": "lr=0.01 betas=(0.9, 0.999) eps=1e-08 lb=0.0 weight_decay=0.0 "
                     "divide=True use_fstar=False",
        "grams": "lr=0.001 betas=(0.9, 0.999) eps=1e-06 weight_decay=0.0 eps_mode='paper' "
                 "foreach=None",
    }
    want["adatamw"] = want["adatam"]
    for name, sig in want.items():
        params = list(inspect.signature(OPTIMIZERS[name][0]).parameters.values())
        assert params[0].name == "params"
        got = [p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
               for p in params[1:]]
        expected = sig.replace("(0.9, ", "(0.9,_").replace("(0.89, ", "(0.89,_").split()
        assert got[:len(expected)] == [e.replace(",_", ", ") for e in expected], name
