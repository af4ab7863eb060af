"""benchmarks/gpu_smoke.py: end to end on the CPU (every check passes or skips with its reason),
on CUDA where there is a GPU (marked ``gpu``), and each check able to fail."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

import shiftsim as ss
from shiftsim.fleet.learner import StackedLearner

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_smoke.py"
SMALL = ["--steps", "20", "--fleet", "4", "--rounds", "1"]


@pytest.fixture(scope="module")
def smoke():
    """The script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_smoke"] = module  # dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("gpu_smoke", None)


@pytest.fixture(autouse=True)
def _keep_cublas_setting():
    """main() sets CUBLAS_WORKSPACE_CONFIG (as a study's workers do); put it back after."""
    before = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    yield
    if before is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = before


@pytest.fixture()
def small(smoke):
    return smoke.Config(torch.device("cpu"), steps=10, fleet=3, rounds=1)


def _lines(text: str) -> dict[str, str]:
    """check name -> status, from the script's output."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) > 1 and parts[0] in ("PASS", "FAIL", "SKIP"):
            out[parts[1]] = parts[0]
    return out


def test_the_smoke_test_passes_on_the_cpu(smoke, capsys):
    threads = torch.get_num_threads()
    assert smoke.main(["--device", "cpu", *SMALL]) == 0
    out = capsys.readouterr().out
    assert _lines(out) == {"placement": "PASS", "syncs": "PASS", "reruns": "PASS",
                           "fleet_vs_run": "PASS", "memory": "SKIP", "speed": "SKIP"}
    assert "no peak-allocation counter for the CPU" in out
    assert "CUDA sync debug mode skipped" in out
    assert "9/9 members equal run(), 9 bit for bit" in out
    assert "4 passed, 0 failed, 2 skipped" in out
    assert torch.get_num_threads() == threads  # --threads is restored


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_the_smoke_test_passes_on_cuda(smoke, capsys):
    code = smoke.main(["--device", "cuda"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert set(_lines(out).values()) == {"PASS"}, out


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_without_cuda_it_says_so_and_exits_2(smoke, capsys):
    assert smoke.main([]) == 2
    assert smoke.main(["--device", "cuda:0"]) == 2
    assert capsys.readouterr().err.splitlines() == [smoke.NO_CUDA] * 2


def test_bad_arguments_are_refused(smoke):
    with pytest.raises(SystemExit):
        smoke.parse_args(["--only", "placement,nonsense"])
    with pytest.raises(SystemExit):
        smoke.parse_args(["--steps", "0"])
    assert smoke.main(["--device", "meta"]) == 2


def test_a_failing_or_raising_check_fails_the_script(smoke, capsys, monkeypatch):
    monkeypatch.setitem(smoke.CHECK_FUNCTIONS, "reruns",
                        lambda cfg: smoke.Check("reruns", "FAIL", "made to fail"))

    def boom(cfg):
        raise RuntimeError("broken")

    monkeypatch.setitem(smoke.CHECK_FUNCTIONS, "memory", boom)
    assert smoke.main(["--device", "cpu", "--only", "reruns,memory", *SMALL]) == 1
    out = capsys.readouterr().out
    assert "FAIL  reruns" in out and "made to fail" in out
    assert "FAIL  memory" in out and "raised RuntimeError: broken" in out


def test_placement_sees_tensors_off_the_device(smoke, small):
    """Expecting the meta device while running on the CPU: every tensor is 'off the device'."""
    sc = small.scenario()
    with smoke.Watch(torch.device("meta"), placement=True) as w:
        ss.run(sc, small.model(), "tam", seed=0, device="cpu")
    assert w.steps == sc.total_steps and w.evals > 0 and w.ops > 0
    assert any(p.startswith("after setup: learner.net.params") for p in w.held_off)
    assert any("groups[0].state" in p for p in w.held_off)  # TAM's momentum buffers
    assert any(k.startswith("loop argument") for k in w.off_device)  # batches, trace slots
    assert sum(w.off_device.values()) > w.steps
    # and the patches are gone afterwards
    import shiftsim.engine
    import shiftsim.loop

    assert shiftsim.engine.run_members is shiftsim.loop.run_members


def test_syncs_sees_host_calls_in_a_step(smoke, small, monkeypatch):
    step = StackedLearner.step

    def chatty(self, t, x, y, out):
        step(self, t, x, y, out)
        out[1].sum().item()  # a read-back every step: a host sync on CUDA

    monkeypatch.setattr(StackedLearner, "step", chatty)
    check = smoke.check_syncs(small)
    assert check.status == "FAIL"
    assert f"run(): {small.steps * 3 - 1} host calls ({{'item': {small.steps * 3 - 1}}})" \
        in check.detail
    assert "run(vectorized=False)" not in check.detail  # the plain loop does not use it


def test_first_step_host_calls_are_reported_not_failed(smoke, small, monkeypatch):
    # MoMo's first step sets every tensor's state without a mask built on the host
    with smoke.Watch(torch.device("cpu"), count_host=True) as w:
        ss.run_fleet(small.scenario(), small.model(), [("momo", 0), ("sgdm", 1)], device="cpu")
    assert sum(w.host_calls.values()) == 0 and w.first_host_calls == {}
    step = StackedLearner.step

    def first_chatty(self, t, x, y, out):
        step(self, t, x, y, out)
        if t == 0:
            torch.tensor([True], device=out[1].device)  # a host-built tensor, first step only

    monkeypatch.setattr(StackedLearner, "step", first_chatty)
    with smoke.Watch(torch.device("cpu"), count_host=True) as w:
        ss.run_fleet(small.scenario(), small.model(), [("momo", 0), ("sgdm", 1)], device="cpu")
    assert sum(w.host_calls.values()) == 0
    assert w.first_host_calls == {"tensor": 1}


def test_compare_member_and_judge_memory(smoke, small):
    sc = small.scenario()
    a = ss.run(sc, small.model(), "sgdm", seed=0, device="cpu")
    assert smoke.compare_member(a, a, exact=True) == (True, "bit-identical")
    b = ss.RunResult(a.trace.copy(), a.evals, a.phases, a.info)
    b.trace["loss"] *= 1 + 1e-6  # rounding
    assert not smoke.compare_member(a, b, exact=True)[0]
    ok, numbers = smoke.compare_member(a, b, exact=False)
    assert ok and "max |dloss|" in numbers
    b.trace["loss"] *= 1.01  # more than rounding
    assert not smoke.compare_member(a, b, exact=False)[0]
    c = ss.RunResult(a.trace.iloc[:-1], a.evals, a.phases, a.info)
    assert smoke.compare_member(a, c, exact=False) == (False, "different steps (30 vs 29 rows)")
    assert smoke.judge_memory(100, 50, 10)[0]
    assert not smoke.judge_memory(40, 50, 10)[0]  # an estimate below the peak
    assert not smoke.judge_memory(600, 50, 10)[0]  # more than 10x the peak
    assert not smoke.judge_memory(100, 0, 10)[0]  # nothing measured
