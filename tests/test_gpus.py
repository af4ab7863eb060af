"""GPU-aware studies without a GPU: the worker plan (workers per GPU, GPUs round-robin) with
torch's CUDA queries faked, the device each pool worker gets, fleets that run out of device
memory retried in halves (a faked ``torch.cuda.OutOfMemoryError``), the fleet memory estimate
of a module that is not on the CPU, and the one-line errors of the device options."""

from __future__ import annotations

import pytest
import torch

import shiftsim as ss
from shiftsim.errors import ShiftsimError
from shiftsim.fleet import fleet_memory_bytes
from shiftsim.runspec import RunSpec
from shiftsim.study import LocalPool, Study, default_workers, lr_grid
from shiftsim.study import fleet_executor as fx
from shiftsim.study.gpus import WORKERS_PER_GPU, plan_workers

torch.set_num_threads(1)


@pytest.fixture()
def three_gpus(monkeypatch):
    """torch believes there are 3 CUDA GPUs (nothing runs on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)


@pytest.fixture(scope="module")
def tiny():
    return ss.label_flip_tasks(ss.data.digits(), rate=0.5, tasks=2, steps_per_task=20)


def test_cpu_plan_is_one_worker_per_core():
    p = plan_workers("cpu", None, cpus=5)
    assert (p.workers, p.devices, p.per_device) == (5, ("cpu",) * 5, 5)
    assert plan_workers("auto", 2).devices == ("auto", "auto")  # as given: no CUDA here
    assert default_workers() == plan_workers("cpu", None).workers >= 1


def test_cuda_plan_assigns_gpus_round_robin(three_gpus):
    p = plan_workers("auto", None)
    assert WORKERS_PER_GPU == 2 and p.workers == 6
    assert p.devices == ("cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1", "cuda:2")
    assert p.per_device == 2
    assert plan_workers("cuda", 4).devices == ("cuda:0", "cuda:1", "cuda:2", "cuda:0")
    # a fraction of a GPU per run: 1/f workers per GPU
    q = plan_workers("cuda", None, gpus_per_run=0.25)
    assert q.workers == 12 and q.devices.count("cuda:1") == 4
    assert plan_workers("cuda", None, gpus_per_run=1).workers == 3
    # one named GPU: every worker on it
    assert plan_workers("cuda:2", None).devices == ("cuda:2", "cuda:2")
    assert default_workers("cuda") == 6
    with pytest.raises(ShiftsimError, match=r"gpus_per_run=2: a local run uses one GPU"):
        plan_workers("cuda", None, gpus_per_run=2)


def test_gpus_per_run_on_the_cpu_is_refused_in_one_line():
    with pytest.raises(ShiftsimError) as err:
        plan_workers("cpu", None, gpus_per_run=0.5)
    assert str(err.value) == ("gpus_per_run=0.5 needs a CUDA device, but device 'cpu' runs on "
                              "the CPU; use gpus_per_run=0 or device='cuda'")


def test_study_device_errors(tmp_path, tiny):
    study = Study("g", [tiny], ss.models.mlp(hidden=(8,)), lr_grid("sgdm", [0.05]), seeds=2)
    with pytest.raises(ShiftsimError, match="needs a CUDA device"):
        study.run(tmp_path / "a", gpus_per_run=0.5, device="cpu", progress=False)
    with pytest.raises(ShiftsimError, match=r"device='cuda' on Ray needs gpus_per_run > 0"):
        study.run(tmp_path / "b", backend="ray", device="cuda", progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ShiftsimError, match="CUDA is not available here"):
            study.run(tmp_path / "c", device="cuda", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()  # nothing written


def test_pool_workers_take_the_least_used_device():
    pool = LocalPool(4, "cuda", devices=("cuda:0", "cuda:1", "cuda:0", "cuda:1"))

    class Slot:
        def __init__(self, device, stopping=False):
            self.device, self.stopping = device, stopping

    got = []
    for _ in range(4):
        got.append(pool._next_device())
        pool._slots.append(Slot(got[-1]))
    assert got == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    pool._slots.pop(1)  # the worker on cuda:1 died: its replacement goes there
    assert pool._next_device() == "cuda:1"
    assert LocalPool(2, "cpu")._next_device() == "cpu"


def test_fleet_workers_take_devices_in_turn(monkeypatch):
    import multiprocessing as mp

    monkeypatch.setattr(fx, "_watch_parent", lambda pid: None)
    monkeypatch.setattr(fx, "ignore_sigint", lambda: None)
    monkeypatch.setattr(fx, "_freeze_heap", lambda: None)  # this is no worker process
    monkeypatch.setattr(fx, "_WORKER", {})
    counter = mp.get_context("spawn").Value("i", 0)
    seen = []
    for _ in range(3):
        fx._init_worker({}, None, 0, False, ("cuda:0", "cuda:1"), counter)
        seen.append(fx._WORKER["device"])
    assert seen == ["cuda:0", "cuda:1", "cuda:0"]
    # a task runs on the worker's device, whatever the executor's device says
    calls = []
    monkeypatch.setattr(fx, "_execute", lambda kind, sc, model, members, device, *o:
                        calls.append(device) or [])
    fx._SCENARIOS["k"] = None
    fx._task("fleet", "k", None, [], "auto", 1, 64, False, False)
    assert calls == ["cuda:0"]


def test_out_of_memory_splits_the_fleet_in_halves(monkeypatch, tiny):
    import shiftsim.fleet as fleet

    model = ss.models.mlp(hidden=(8,))
    members = [(f"r{i}", ss.optim.spec("sgdm", lr=0.01 * (i + 1)), i) for i in range(5)]
    ref = fx.run_fleet_outcomes(tiny, model, members, device="cpu")
    sizes = []
    real = fleet.run_fleet

    def small_memory(scenario, model, ms, device="auto", **kw):
        sizes.append(len(ms))
        if len(ms) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(scenario, model, ms, device, **kw)

    monkeypatch.setattr(fleet, "run_fleet", small_memory)
    got = fx.run_fleet_outcomes(tiny, model, members, device="cpu")
    assert sizes == [5, 2, 3, 1, 2]  # 5 -> 2 + 3, 3 -> 1 + 2
    assert [o.run_id for o in got] == [f"r{i}" for i in range(5)]
    assert [o.status for o in got] == ["ok"] * 5
    assert [o.worker.split(" fleet of ")[1] for o in got] == ["2", "2", "1", "2", "2"]
    # a member's trace does not depend on its fleet: the split changes no number
    assert all(a.payload["files"]["trace.parquet"] == b.payload["files"]["trace.parquet"]
               for a, b in zip(ref, got))
    assert fx.is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert not fx.is_out_of_memory(RuntimeError("x"))


def test_a_single_run_out_of_memory_is_recorded_as_failed(monkeypatch, tiny):
    import shiftsim.engine as engine
    import shiftsim.fleet as fleet

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr(fleet, "run_fleet", oom)
    monkeypatch.setattr(engine, "run", oom)
    got = fx.run_fleet_outcomes(tiny, ss.models.mlp(hidden=(8,)),
                                [("a", ss.optim.spec("sgdm"), 0), ("b", ss.optim.spec("sgdm"), 1)],
                                device="cpu")
    assert [o.status for o in got] == ["failed", "failed"]
    assert got[0].error.startswith("OutOfMemoryError: CUDA out of memory")


def test_memory_estimate_of_a_module_on_another_device(tiny, device):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 10))
    on_cpu = fleet_memory_bytes(tiny, net, 10)
    on_device = fleet_memory_bytes(tiny, net.to(device), 10)
    on_meta = fleet_memory_bytes(tiny, net.to("meta"), 10)  # stands in for a GPU module
    assert on_meta == on_device == on_cpu > 0


def test_plan_fleets_holds_back_each_workers_cuda_context(monkeypatch, tiny):
    specs = [RunSpec(tiny, ss.models.mlp(hidden=(8,)), ss.optim.spec("sgdm"), s)
             for s in range(40)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    per = fleet_memory_bytes(tiny, ss.models.mlp(hidden=(8,)), 1)
    free = 2 * fx.CUDA_CONTEXT_BYTES + 8 * per  # two workers' contexts, then room for 8 members
    monkeypatch.setattr(fx, "_available_bytes", lambda device: free)
    fleets, singles = fx.plan_fleets(specs, workers=2, device="cuda", memory_fraction=1.0,
                                     sharing=2)
    assert singles == [] and max(len(f) for f in fleets) == 4  # 8 members' room / 2 workers
    assert sum(len(f) for f in fleets) == 40
