"""Fleets as Ray tasks, against a local Ray head node on the loopback interface that the tests
start and stop (skipped without the ray extra): traces identical to the local backend, the
driver alone writes, a worker killed mid-fleet is retried, and one that dies again is
recorded with its cause."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pandas as pd
import pytest

import shiftsim as ss
from shiftsim import store
from shiftsim.study import Study, lr_grid
from shiftsim.study.ray_fleets import fleet_tasks

pytestmark = [pytest.mark.ray, pytest.mark.slow]

KILLERS = '''
"""Shifts that kill the process they are prepared in, unless it is the test's own."""
import dataclasses
import os
from pathlib import Path

from shiftsim.shifts import Shift


@dataclasses.dataclass(frozen=True)
class DieOnce(Shift):
    marker: str = ""
    driver: int = 0

    def prepare(self, input_shape, generator):
        if os.getpid() != self.driver and not Path(self.marker).exists():
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)  # the worker dies mid-fleet, the first time only
        return None

    def apply(self, x, state, generator):
        return x


@dataclasses.dataclass(frozen=True)
class DieAlways(Shift):
    driver: int = 0

    def prepare(self, input_shape, generator):
        if os.getpid() != self.driver:
            os._exit(1)
        return None

    def apply(self, x, state, generator):
        return x
'''


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A local Ray head node on 127.0.0.1 with 2 CPUs and one declared GPU; its workers can
    import the killers."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    if ray.is_initialized():
        ray.shutdown()
    lib = tmp_path_factory.mktemp("killers")
    (lib / "ray_killers.py").write_text(textwrap.dedent(KILLERS))
    sys.path.insert(0, str(lib))
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(lib), old) if p)
    try:
        # one GPU declared (none is there): tasks asking for a share are still scheduled
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR", _node_ip_address="127.0.0.1")
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
    yield ray
    ray.shutdown()
    sys.path.remove(str(lib))


def _study(data, name="rf", extra_shift=None, seeds=3):
    shifts = [extra_shift] if extra_shift is not None else []
    sc = ss.Scenario(data, [ss.Phase(20), ss.Phase(20, [ss.LabelFlip(1.0, "permute"),
                                                       ss.GaussianNoise(0.05), *shifts])],
                     batch_size=16, eval_every=10, eval_size=100, name="rf-sc")
    return Study(name, [sc], ss.models.mlp(hidden=(8,)),
                 {**lr_grid("sgdm", [0.05]), **lr_grid("adam", [0.01])}, seeds=seeds)


def _traces(out):
    res = store.load(out)
    return {rid: res.trace(rid).drop(columns="run_id") for rid in res.runs["run_id"]}


def _workers(out):
    return {rid: json.loads((store.run_dir(out, rid) / "summary.json").read_text())["worker"]
            for rid in store.list_run_ids(out)}


def test_fleet_tasks_are_planned_as_locally(digits):
    specs = _study(digits, seeds=20).grid()
    table, tasks = fleet_tasks(specs, workers=2)
    from shiftsim.study import plan_fleets

    local, _ = plan_fleets(specs, 2, "cpu")
    # one scenario and model: one group of 40, split for two workers as the local plan does
    assert len(table) == 1 and sorted(len(t[3]) for t in tasks) == [13, 13, 14]
    assert sorted(len(t[3]) for t in tasks) == sorted(len(f) for f in local)
    assert {t[0] for t in tasks} == {"fleet"}
    assert sorted(r for t in tasks for r, _, _ in t[3]) == sorted(s.run_id for s in specs)


def test_ray_fleets_give_the_local_backends_traces(tmp_path, digits, head):
    study = _study(digits)
    rep = study.run(tmp_path / "ray", backend="ray", workers=2, progress=False)
    assert rep.ok and (rep.backend, rep.done) == ("ray", 6)
    local = study.run(tmp_path / "local", workers=1, progress=False)
    assert local.ok and local.done == 6
    ray_traces, local_traces = _traces(tmp_path / "ray"), _traces(tmp_path / "local")
    assert sorted(ray_traces) == sorted(local_traces) == sorted(s.run_id for s in study.grid())
    for rid, trace in ray_traces.items():
        pd.testing.assert_frame_equal(trace, local_traces[rid])  # bit for bit
    workers = _workers(tmp_path / "ray")
    assert all(w.endswith("fleet of 6") for w in workers.values())
    assert all(int(w.split(":")[1].split()[0]) != os.getpid() for w in workers.values())
    again = study.run(tmp_path / "ray", backend="ray", progress=False)
    assert (again.done, again.skipped) == (0, 6)


def test_a_worker_killed_mid_fleet_is_retried(tmp_path, digits, head):
    from ray_killers import DieOnce

    marker = tmp_path / "died"
    study = _study(digits, "killed", DieOnce(str(marker), os.getpid()), seeds=2)
    rep = study.run(tmp_path / "ray", backend="ray", workers=2, progress=False)
    assert marker.exists()  # a worker did die
    assert rep.ok and (rep.done, rep.failed) == (4, 0)
    assert sorted(store.list_run_ids(tmp_path / "ray")) == sorted(s.run_id for s in study.grid())
    local = study.run(tmp_path / "local", workers=1, progress=False)
    assert local.ok
    ray_traces, local_traces = _traces(tmp_path / "ray"), _traces(tmp_path / "local")
    for rid, trace in ray_traces.items():
        pd.testing.assert_frame_equal(trace, local_traces[rid])


def test_a_fleet_whose_worker_dies_again_is_recorded_with_its_cause(tmp_path, digits, head):
    from ray_killers import DieAlways

    study = _study(digits, "dies", DieAlways(os.getpid()), seeds=2)
    rep = study.run(tmp_path, backend="ray", workers=2, progress=False)
    assert (rep.done, rep.failed, rep.remaining) == (4, 4, 0)
    runs = store.load(tmp_path).runs
    assert set(runs["status"]) == {"failed"}
    for err in runs["error"]:
        assert err.startswith("Ray task failed running its fleet of 4 runs: ")
        assert "died" in err or "Crashed" in err or "exit" in err.lower()


def test_auto_on_a_gpu_cluster_asks_for_gpus(tmp_path, digits, head):
    from shiftsim.study import RayExecutor, RayFleetExecutor
    from shiftsim.study.executors import AUTO_GPUS_PER_RUN

    auto = RayFleetExecutor(2, "auto")
    auto.connect()
    assert auto.gpus_per_run == AUTO_GPUS_PER_RUN == 0.5
    cpu = RayExecutor(2, "cpu")
    cpu.connect()
    assert cpu.gpus_per_run == 0  # asked for the CPU: no GPU share
    chosen = RayExecutor(2, "auto", gpus_per_run=1)
    chosen.connect()
    assert chosen.gpus_per_run == 1
    assert head.is_initialized()  # a Ray the executors did not start is left running


def test_resuming_cpu_results_on_gpu_tasks_is_refused(tmp_path, digits, head):
    from shiftsim.errors import ShiftsimError

    study = _study(digits, "mixed", seeds=1)
    assert study.run(tmp_path, workers=1, device="cpu", progress=False).done == 2
    more = _study(digits, "mixed", seeds=2)  # two new runs to do
    with pytest.raises(ShiftsimError, match=r"holds runs made on 'cpu' .* runs on 'cuda'"):
        more.run(tmp_path, backend="ray", device="auto", progress=False)  # tasks get GPUs
    assert len(store.list_run_ids(tmp_path)) == 2  # nothing ran
    rep = more.run(tmp_path, backend="ray", device="cpu", progress=False)
    assert (rep.done, rep.skipped) == (2, 2)
