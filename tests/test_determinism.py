"""The determinism policy (``deterministic=True``), what a run records about its device, the
device check on resume, and model builds that leave the caller's CUDA generators alone.

No GPU here: the CUDA side is checked by what the settings and records say, by faking torch's
CUDA functions, and by asserting that nothing touches CUDA state on the CPU."""

from __future__ import annotations

import json

import pytest
import torch

import shiftsim as ss
from shiftsim import runtime, store
from shiftsim.errors import ShiftsimError
from shiftsim.study import InProcess, Study, lr_grid
from shiftsim.study import fleet_executor as fx

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    return ss.label_flip_tasks(ss.data.digits(), rate=0.5, tasks=2, steps_per_task=30)


def _flags():
    return (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32)


def test_deterministic_mode_sets_and_restores_every_flag(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    before = _flags()
    try:
        with runtime.deterministic_mode():
            assert _flags() == (True, True, False, False, False)
            assert torch.is_deterministic_algorithms_warn_only_enabled()
            flags = runtime.determinism_flags()
        assert _flags() == before
    finally:
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
    assert flags == {"deterministic_algorithms": True, "cudnn_deterministic": True,
                     "cudnn_benchmark": False, "tf32_matmul": False, "tf32_cudnn": False,
                     "cublas_workspace_config": ":4096:8"}
    import os

    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # stays: cuBLAS reads it once
    with runtime.deterministic_mode(False):
        assert not torch.are_deterministic_algorithms_enabled()


def test_an_existing_cublas_setting_is_kept(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    runtime.prepare_deterministic_env()
    import os

    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


@pytest.mark.parametrize("vectorized", [None, False])
def test_run_records_device_and_flags_and_is_unchanged_on_cpu(tiny, vectorized):
    model, opt = ss.models.mlp(hidden=(16,)), ss.optim.spec("adam", lr=0.01)
    plain = ss.run(tiny, model, opt, seed=1, device="cpu", vectorized=vectorized)
    det = ss.run(tiny, model, opt, seed=1, device="cpu", vectorized=vectorized,
                 deterministic=True)
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run
    # on the CPU the policy changes no number
    assert plain.trace.equals(det.trace) and plain.evals.equals(det.evals)
    info = det.info
    assert info["device"] == "cpu" and info["device_type"] == "cpu"
    assert info["device_name"] == "cpu"
    assert info["versions"]["cuda"] is None and info["versions"]["cudnn"] is None
    assert info["versions"]["torch"] == torch.__version__
    assert info["determinism"]["deterministic_algorithms"] is True
    assert info["determinism"]["tf32_matmul"] is False
    assert plain.info["determinism"]["deterministic_algorithms"] is False
    with pytest.raises(ShiftsimError, match="deterministic must be True or False"):
        ss.run(tiny, model, opt, device="cpu", deterministic="yes")


def test_fleet_deterministic_gives_the_same_members(tiny):
    members = [("sgdm", 0), (ss.optim.spec("adam", lr=0.01), 1)]
    a = ss.run_fleet(tiny, ss.models.mlp(hidden=(8,)), members, device="cpu")
    b = ss.run_fleet(tiny, ss.models.mlp(hidden=(8,)), members, device="cpu",
                     deterministic=True)
    assert all(x.trace.equals(y.trace) for x, y in zip(a, b))
    assert [r.info["determinism"]["deterministic_algorithms"] for r in b] == [True, True]


def test_cuda_facts_are_recorded_when_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91002)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert runtime.device_facts(torch.device("cuda", 0)) == {
        "device_type": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "cuda": "12.8",
        "cudnn": 91002}


def test_study_deterministic_is_stored(tmp_path, tiny):
    study = Study("d", [tiny], ss.models.mlp(hidden=(8,)), lr_grid("sgdm", [0.05]), seeds=2)
    rep = study.run(tmp_path, workers=1, progress=False, device="cpu", deterministic=True)
    assert rep.ok and rep.done == 2
    for rid in store.list_run_ids(tmp_path):
        summary = json.loads((store.run_dir(tmp_path, rid) / "summary.json").read_text())
        assert summary["device"] == "cpu" and summary["device_name"] == "cpu"
        assert summary["determinism"]["deterministic_algorithms"] is True
        assert summary["versions"]["cuda"] is None
    with pytest.raises(ShiftsimError, match="deterministic must be True or False"):
        study.run(tmp_path, workers=1, progress=False, deterministic=1)


def test_fleet_workers_set_cublas_before_cuda(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(fx, "_watch_parent", lambda pid: None)
    monkeypatch.setattr(fx, "ignore_sigint", lambda: None)
    monkeypatch.setattr(fx, "_freeze_heap", lambda: None)  # this is no worker process
    threads = torch.get_num_threads()
    fx._init_worker({}, None, 0, False)
    import os

    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    fx._init_worker({}, None, 0, True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.get_num_threads() == threads


def test_resuming_on_another_device_type_is_refused(tmp_path, tiny):
    study = Study("dev", [tiny], ss.models.mlp(hidden=(8,)), lr_grid("sgdm", [0.05]), seeds=2)
    ids = [s.run_id for s in study.grid()]
    assert study.run(tmp_path, workers=1, progress=False, device="cpu").done == 2
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    # the same study on CUDA (a custom executor stands in for the GPU machine)
    with pytest.raises(ShiftsimError) as err:
        study.run(tmp_path, progress=False, device="cuda", executor=InProcess("cpu"))
    msg = str(err.value)
    assert "\n" not in msg and "holds runs made on 'cpu'" in msg and "runs on 'cuda'" in msg
    assert "resume=False" in msg
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before
    # the run ids do not name the device: CPU ids are what they were
    assert sorted(ids) == store.list_run_ids(tmp_path)
    # a store written before devices were recorded counts as CPU
    for rid in ids:
        f = store.run_dir(tmp_path, rid) / "summary.json"
        body = json.loads(f.read_text())
        del body["device"]
        f.write_text(json.dumps(body))
    assert store.run_state(tmp_path, ids[0]).status == "ok"
    again = study.run(tmp_path, workers=1, progress=False, device="cpu")
    assert (again.done, again.skipped) == (0, 2)
    with pytest.raises(ShiftsimError, match="holds runs made on 'cpu'"):
        study.run(tmp_path, progress=False, device="cuda:0", executor=InProcess("cpu"))
    # redoing every run is allowed (nothing kept from the other device)
    redo = study.run(tmp_path, progress=False, device="cuda", resume=False,
                     executor=InProcess("cpu"))
    assert redo.done == 2


def test_a_failed_run_records_its_device(tmp_path, tiny):
    from shiftsim.runspec import RunSpec
    from shiftsim.study.executors import Outcome
    from shiftsim.study.runner import _write, recorded_device_type

    spec = RunSpec(tiny, ss.models.mlp(hidden=(8,)), ss.optim.spec("sgdm"), 0)
    _write(tmp_path, spec, Outcome(spec.run_id, "failed", error="boom"), "cuda")
    st = store.run_state(tmp_path, spec.run_id)
    assert st.status == "failed" and recorded_device_type(st) == "cuda"
    _write(tmp_path, spec, Outcome(spec.run_id, "failed", error="boom"), None)
    assert recorded_device_type(store.run_state(tmp_path, spec.run_id)) is None


def _record_cuda_seeding(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda s: calls.append(("all", s)))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda s: calls.append(("one", s)))
    return calls


def test_model_builds_leave_the_callers_cuda_generators_alone(monkeypatch, tiny):
    calls = _record_cuda_seeding(monkeypatch)
    cpu_state = torch.random.get_rng_state()
    a = ss.models.mlp(hidden=(8,)).build(tiny.data, seed=3)
    b = ss.models.mlp(hidden=(8,)).build(tiny.data, seed=3)
    from shiftsim.learner import build_model

    c = build_model(lambda d: torch.nn.Linear(64, 10), tiny.data, 3)
    d = build_model(lambda d: torch.nn.Linear(64, 10), tiny.data, 3)
    assert calls == []  # torch.manual_seed would have seeded (or queued a seed for) CUDA
    assert bool((torch.random.get_rng_state() == cpu_state).all())
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                  b.state_dict().values()))
    assert torch.equal(c.weight, d.weight)


def test_model_weights_did_not_change_with_the_seeding_helper(tiny):
    """cpu_seeded(seed) is torch.manual_seed(seed) for the CPU: the weights a run starts from
    (and so every stored CPU result) are what they were."""
    spec = ss.models.mlp(hidden=(8,))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        from shiftsim.models import BUILDERS

        ref = BUILDERS["mlp"](tiny.data.input_shape, tiny.data.num_classes, tiny.data.kind,
                              **spec.options)
    got = spec.build(tiny.data, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(ref.state_dict().values(),
                                                  got.state_dict().values()))


def test_threads_that_seed_at_once_each_draw_from_their_own_seed():
    """cpu_seeded takes turns between threads (a fleet's lanes build their members' models at
    once): each block draws what its seed gives, however the threads interleave."""
    import threading

    from shiftsim.runtime import cpu_seeded

    expected = {s: torch.Generator().manual_seed(s) for s in range(4)}
    expected = {s: [torch.rand(64, generator=g) for _ in range(3)] for s, g in expected.items()}
    wrong = []

    def draw(s):
        for _ in range(100):
            with cpu_seeded(s):
                got = []
                for _ in range(3):
                    got.append(torch.rand(64))
                    threading.Event().wait(0.0001)  # let the other threads run in between
            if not all(torch.equal(a, b) for a, b in zip(got, expected[s])):
                wrong.append(s)

    threads = [threading.Thread(target=draw, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


# -- subnormal floats: kept (ieee, the default) or flushed ($SHIFTSIM_DENORMALS) ---------------

def _halved_tiny(n=1):
    """``1e-38 / 2`` (a float32 subnormal) computed n times by torch (split across its threads
    when n is large): the zeros among them are flushed."""
    return torch.full((n,), 1e-38) * 0.5


@pytest.mark.parametrize("raw,mode", [(None, "ieee"), ("", "ieee"), ("ieee", "ieee"),
                                      (" FLUSH ", "flush")])
def test_the_denormal_mode_comes_from_the_environment(monkeypatch, raw, mode):
    if raw is None:
        monkeypatch.delenv(runtime.DENORMALS_ENV, raising=False)
    else:
        monkeypatch.setenv(runtime.DENORMALS_ENV, raw)
    assert runtime.denormal_mode() == mode


def test_a_bad_denormal_mode_is_named_before_any_work(monkeypatch, tmp_path, tiny):
    monkeypatch.setenv(runtime.DENORMALS_ENV, "fast")
    msg = r"SHIFTSIM_DENORMALS='fast' is not a mode; allowed: 'ieee' .*'flush'"
    with pytest.raises(ShiftsimError, match=msg):
        ss.run(tiny, ss.models.mlp(hidden=(4,)), "sgd", seed=0, device="cpu")
    study = Study("s", {"a": tiny}, model=ss.models.mlp(hidden=(4,)), optimizers={"sgd": "sgd"},
                  seeds=1)
    with pytest.raises(ShiftsimError, match=msg):
        study.run(tmp_path / "out", workers=1, progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ShiftsimError, match=r"denormals mode 'fast'; allowed: ieee, flush"):
        with runtime.denormals("fast"):
            pass


@pytest.mark.parametrize("threads", [1, 2])
def test_flushing_reaches_every_thread_and_is_undone(native, threads):
    """Inside ``denormals("flush")`` every thread of torch's team flushes (read on each
    thread; and a product torch may split across them: every element 0), and none does
    afterwards; ``"ieee"`` changes nothing."""
    from shiftsim.optim import _native

    if not _native.openmp():
        pytest.skip("the library is built without OpenMP here")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        n = 1 << 21
        with runtime.denormals("ieee") as mode:
            assert mode == "ieee" and bool((_halved_tiny(n) > 0).all())
            assert _native.flushing_threads() == 0
        with runtime.denormals("flush") as mode:
            assert mode == "flush" and bool((_halved_tiny(n) == 0).all())
            assert _native.flushing_threads() == threads
        assert bool((_halved_tiny(n) > 0).all()) and _native.flushing_threads() == 0
    finally:
        torch.set_num_threads(before)


def test_without_the_native_library_only_one_thread_flushes(monkeypatch):
    """No native library (or another processor): flushed with one torch thread (torch's
    set_flush_denormal sets the calling thread, the only one computing), kept with more,
    with a warning (a run's numbers must not depend on which thread computed what)."""
    from shiftsim.optim import _native

    monkeypatch.setattr(_native, "denormals", lambda flush=None: None)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with runtime.denormals("flush") as mode:
            assert mode == "flush" and _halved_tiny().item() == 0
        assert _halved_tiny().item() > 0
        torch.set_num_threads(2)
        with pytest.warns(RuntimeWarning, match="cannot be flushed on every thread"):
            with runtime.denormals("flush") as mode:
                assert mode == "ieee" and _halved_tiny().item() > 0
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("env", [None, "flush"])
def test_a_run_applies_and_records_the_denormal_mode(monkeypatch, native, tiny, env):
    """The loop runs under the mode (seen from inside a step), records it, and leaves the
    process as it found it; a fleet's members record it too."""
    from shiftsim.fleet import learner as fleet_learner

    if env is None:
        monkeypatch.delenv(runtime.DENORMALS_ENV, raising=False)
    else:
        monkeypatch.setenv(runtime.DENORMALS_ENV, env)
    seen = []
    step = fleet_learner.StackedLearner.step

    def watched(self, *args):
        seen.append(_halved_tiny().item())
        return step(self, *args)

    monkeypatch.setattr(fleet_learner.StackedLearner, "step", watched)
    res = ss.run(tiny, ss.models.mlp(hidden=(4,)), "sgdm", seed=0, device="cpu")
    mode = env or "ieee"
    assert res.info["determinism"]["denormals"] == mode
    assert seen and all((v == 0) == (mode == "flush") for v in seen)
    assert _halved_tiny().item() > 0
    fleet = ss.run_fleet(tiny, ss.models.mlp(hidden=(4,)), [("sgdm", 0), ("adam", 1)],
                         device="cpu")
    assert [r.info["determinism"]["denormals"] for r in fleet] == [mode, mode]


def test_flushing_leaves_a_short_runs_trace_unchanged(monkeypatch, native, tiny):
    """Flushing changes a run's numbers only where a subnormal value would have mattered;
    over this short run none did: the same trace bit for bit either way."""
    model = ss.models.mlp(hidden=(8,))
    monkeypatch.setenv(runtime.DENORMALS_ENV, "ieee")
    kept = ss.run(tiny, model, "adam", seed=1, device="cpu")
    monkeypatch.setenv(runtime.DENORMALS_ENV, "flush")
    flushed = ss.run(tiny, model, "adam", seed=1, device="cpu")
    assert flushed.trace.equals(kept.trace) and flushed.evals.equals(kept.evals)


def test_the_row_sums_worker_threads_follow_the_calling_thread(native, monkeypatch):
    """Rows split across the native row sums' own threads (the Python pool, used without
    OpenMP) flush subnormal products as the calling thread does: 1e-20 squared is a float32
    subnormal, so every row's sum is 0 flushed and positive kept, whichever thread summed it."""
    from shiftsim.optim import _native

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(_native, "SPLIT_FROM", 1)
    try:
        x = torch.full((4, 64), 1e-20)
        kept = _native.row_sums([x], [(0, 0)])[0].clone()
        with runtime.denormals("flush"):
            flushed = _native.row_sums([x], [(0, 0)])[0].clone()
        again = _native.row_sums([x], [(0, 0)])[0].clone()
    finally:
        torch.set_num_threads(before)
    assert bool((kept > 0).all()) and bool((flushed == 0).all()) and torch.equal(again, kept)


def test_without_torchs_openmp_runtime_only_one_thread_flushes(native, monkeypatch):
    """A library that does not share torch's OpenMP runtime cannot reach torch's other
    threads: with two, a warning and IEEE subnormals; with one, flushed."""
    from shiftsim.optim import _native

    monkeypatch.setattr(_native, "openmp", lambda: False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.warns(RuntimeWarning, match="cannot be flushed on every thread"):
            with runtime.denormals("flush") as mode:
                assert mode == "ieee" and _halved_tiny().item() > 0
        torch.set_num_threads(1)
        with runtime.denormals("flush") as mode:
            assert mode == "flush" and _halved_tiny().item() == 0
        assert _halved_tiny().item() > 0
    finally:
        torch.set_num_threads(before)
