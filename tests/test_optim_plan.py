"""The cached step plans (TAM, AM-SGD, MoMo): every step gives exactly the numbers of the
general path (the plan switched off), through the events that must rebuild or bypass the plan:
a parameter losing and regaining its gradient, a param group added mid-run, the learning rate
changed, ``load_state_dict`` into a fresh optimizer, a parameter changed in place outside the
optimizer, and tensors above the concatenation and tensor-by-tensor thresholds (lowered here so
that small tensors exercise both paths)."""

from __future__ import annotations

import warnings

import pytest
import torch

import shiftsim.optim as so
import shiftsim.optim._kernels as K

SHAPES = [(40, 30), (30,), (5, 4), (4,), (30, 25)]
#: param group of each tensor; the last one joins in a group added at step ADD
GROUP = [0, 0, 1, 1, 2]
ADD, LOAD, LR_AT = 5, 9, 7
#: the steps on which tensor 1 has no gradient, and on which tensor 3 has none
OFF = {1: {3, 4, 11}, 3: {6}}
STEPS = 14

PLANNED = {
    "tam": (so.TAM, dict(lr=0.05, weight_decay=0.01), dict(lr=0.02, momentum=0.8, eps=1e-3)),
    "tam_decoupled": (so.TAM, dict(lr=0.05, weight_decay=0.1, decoupled=True),
                      dict(lr=0.02, momentum=0.5)),
    "adamem_sgd": (so.AdaptiveMemorySGD, dict(lr=0.05, weight_decay=0.01), dict(lr=0.02)),
    "momo": (so.MoMo, dict(lr=0.5, weight_decay=0.01), dict(lr=0.2)),
    "momo_plain": (so.MoMo, dict(lr=1.0), dict(lr=0.5)),  # only offsets carried
    "momo_plain_exact": (so.MoMo, dict(lr=1.0, exact_outside_changes=True), dict(lr=0.5)),
    "momo_bias_fstar": (so.MoMo, dict(lr=0.5, bias_correction=True, use_fstar=True, lb=-1.0),
                        dict(lr=0.2, weight_decay=0.05)),
}


@pytest.fixture(autouse=True)
def small_thresholds(monkeypatch):
    """Tensors from 500 elements reduced one by one and (CPU, ``foreach=None``) updated
    tensor by tensor."""
    monkeypatch.setattr(K, "CAT_BELOW", 500)
    monkeypatch.setattr(K, "LOOP_FROM", 500)


def _grads(t: int, dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + t)
    return [(torch.randn(s, generator=g, dtype=torch.float64) + 0.1).to(dtype) for s in SHAPES]


def run(name: str, planned: bool, foreach: bool | None, dtype: torch.dtype,
        poke: bool = False) -> list:
    """Params and diagnostics after every step, the plan on or off."""
    cls, kw, hp1 = PLANNED[name]
    gen = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter((torch.randn(s, generator=gen, dtype=torch.float64) * 0.5)
                             .to(dtype)) for s in SHAPES]

    def make(params):
        opt = cls([{"params": params[:2]}, {"params": params[2:4], **hp1}], foreach=foreach,
                  **kw)
        opt._planned = planned
        return opt

    opt = make(ps)
    out = []
    for t in range(STEPS):
        if t == ADD:
            opt.add_param_group({"params": ps[4:], "lr": kw["lr"] * 0.5})
        if t == LR_AT:
            opt.param_groups[0]["lr"] *= 0.5
        if t == LOAD:
            state = opt.state_dict()
            ps = [torch.nn.Parameter(p.detach().clone()) for p in ps]
            opt = make(ps)
            opt.add_param_group({"params": ps[4:], "lr": kw["lr"] * 0.5})
            opt.load_state_dict(state)
        if poke and t == STEPS - 1:  # a step that reuses the plan
            with torch.no_grad():
                ps[0].mul_(0.9)  # changed outside the optimizer (MoMo must see it)
            warnings.filterwarnings("ignore", "MoMo: 1 parameter", UserWarning)
        for i, (p, g) in enumerate(zip(ps, _grads(t, dtype))):
            p.grad = None if t in OFF.get(i, ()) or (i == 4 and t < ADD) else g
        loss = torch.tensor(2.0 + 0.1 * t, dtype=dtype)
        if cls.needs_loss:
            opt.step(loss=loss)
        else:
            opt.step()
        if planned:  # the plan took the step
            assert opt.__dict__["_step_plan"].ok
        out.append(([p.detach().clone() for p in ps],
                    {k: v.clone() for k, v in opt.diagnostics().items()}))
    return out


@pytest.mark.parametrize("name", list(PLANNED))
@pytest.mark.parametrize("foreach", [None, True, False])
def test_plan_equals_general_path(name, foreach):
    for dtype in (torch.float32, torch.float64):
        planned = run(name, True, foreach, dtype, poke=True)
        general = run(name, False, foreach, dtype, poke=True)
        for t, ((pa, da), (pb, db)) in enumerate(zip(planned, general)):
            for i, (a, b) in enumerate(zip(pa, pb)):
                assert torch.equal(a, b), (dtype, t, i)
            for k in db:
                assert torch.equal(da[k], db[k]), (dtype, t, k)


@pytest.mark.parametrize("name", list(PLANNED))
def test_plan_paths_agree(name):
    """foreach=True, False and None give the same numbers with the plan."""
    runs = [run(name, True, foreach, torch.float32) for foreach in (None, True, False)]
    for other in runs[1:]:
        for (pa, _), (pb, _) in zip(runs[0], other):
            for a, b in zip(pa, pb):
                assert torch.equal(a, b)


def test_plan_is_reused_and_rebuilt():
    """The plan is kept while the same parameters have gradients, rebuilt when one loses its
    gradient, when a group is added and after load_state_dict; it is not part of the state."""
    ps = [torch.nn.Parameter(torch.zeros(s)) for s in SHAPES[:3]]
    opt = so.TAM(ps, lr=0.1)

    def step(live):
        for i, p in enumerate(ps):
            p.grad = torch.ones_like(p) if i in live else None
        opt.step()
        return opt.__dict__.get("_step_plan")

    first = step({0, 1, 2})
    assert step({0, 1, 2}) is first
    second = step({0, 2})
    assert second is not first and step({0, 2}) is second
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))]})
    assert step({0, 2}) is not second
    third = step({0, 2})
    opt.load_state_dict(opt.state_dict())
    assert step({0, 2}) is not third
    assert "_step_plan" not in opt.state_dict() and "_step_plan" not in opt.__getstate__()


def test_plan_falls_back_for_half_precision_and_tensor_hyperparameters():
    """float16 parameters and tensor-valued hyperparameters take the general path (the same
    update as a float32 run, up to float16 rounding)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=gen)
    grads = [torch.randn(3, 4, generator=gen) for _ in range(3)]
    results = []
    for dtype, lr in ((torch.float32, 0.1), (torch.float16, 0.1), (torch.float32,
                                                                    torch.tensor(0.1))):
        p = torch.nn.Parameter(x.to(dtype))
        opt = so.TAM([p], lr=lr)
        for g in grads:
            p.grad = g.to(dtype)
            opt.step()
        results.append(p.detach().float())
    torch.testing.assert_close(results[1], results[0], rtol=2e-3, atol=2e-3)
    assert torch.equal(results[2], results[0])
