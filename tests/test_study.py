"""Studies: RunSpec ids, grids and axes, running, resume, failures, backends, study files."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
import torch

import shiftsim as ss
from shiftsim import store
from shiftsim.errors import ShiftsimError
from shiftsim.study import (
    InProcess,
    LocalPool,
    RunSpec,
    Study,
    StudyRunReport,
    canonical_json,
    content_hash,
    execute,
    flip_rates,
    hparam_grid,
    lr_grid,
    severity_axis,
    study_from_file,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data():
    return ss.data.digits()


@pytest.fixture(scope="module")
def tiny(data):
    return ss.label_flip_tasks(data, rate=0.5, tasks=2, steps_per_task=40)


def fixed_spec():
    """The spec whose id is pinned below; built from public builders only."""
    scenario = ss.label_flip_tasks(ss.data.digits(), rate=0.5, mode="permute", tasks=2,
                                   steps_per_task=50)
    return RunSpec(scenario, ss.models.mlp(hidden=(32,)), ss.optim.spec("sgdm", lr=0.05), 3)


# -- run ids ---------------------------------------------------------------------------------

FIXED_ID = "15378cd30f6fd80b"
#: what FIXED_ID hashes (with "format": 1); when the ids change, this says which field did
FIXED_PAYLOAD = (
    '{"model":{"kwargs":{"activation":"relu","hidden":[32]},"name":"mlp"},'
    '"optimizer":{"hparams":{"lr":0.05,"momentum":0.9,"weight_decay":0},"name":"sgdm"},'
    '"scenario":{"batch_size":32,"data":{"classes":["0","1","2","3","4","5","6","7","8","9"],'
    '"input_shape":[1,8,8],"kind":"image","name":"digits","source":{"loader":"digits",'
    '"seed":0,"test_fraction":0.2},"test":360,"train":1437},"eval_every":100,"eval_size":360,'
    '"name":"flip-permute-0.5","phases":[{"shifts":[],"steps":50,"transition":'
    '{"type":"Abrupt"}},{"shifts":[{"mode":"permute","rate":0.5,"type":"LabelFlip"}],'
    '"steps":50,"transition":{"type":"Abrupt"}}]},"seed":3}')


def test_run_id_is_a_fixed_string():
    """Results folders stay valid across versions: this id only changes when the spec changes
    (if it must, bump HASH_FORMAT and say so in the changelog)."""
    spec = fixed_spec()
    assert canonical_json(spec.payload) == FIXED_PAYLOAD
    assert spec.run_id == FIXED_ID
    # the id is sha256 of the canonical payload plus the format number, cut to 16 hex digits
    body = FIXED_PAYLOAD[:-1] + ',"format":1}'
    body = canonical_json(json.loads(body))
    assert hashlib.sha256(body.encode()).hexdigest()[:16] == FIXED_ID


def test_options_that_default_to_none_do_not_change_ids():
    """A field added later with a None default (or a None the older version did not write)
    leaves every earlier run id as it was."""
    spec = fixed_spec()
    payload = json.loads(json.dumps(spec.payload))
    payload["model"]["kwargs"]["dropout"] = None
    payload["scenario"]["phases"][0]["name"] = None
    assert content_hash(payload) == FIXED_ID
    payload["model"]["kwargs"]["dropout"] = 0.1
    assert content_hash(payload) != FIXED_ID


def test_run_id_same_in_another_process_and_hash_seed():
    code = (f"import sys; sys.path.insert(0, {os.path.join(ROOT, 'tests')!r}); "
            "from test_study import fixed_spec; print(fixed_spec().run_id)")
    # another string hash seed than this process's (random unless PYTHONHASHSEED is set)
    seed = "12345" if os.environ.get("PYTHONHASHSEED") != "12345" else "54321"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONHASHSEED": seed}, check=True, cwd=ROOT)
    assert out.stdout.strip() == FIXED_ID == fixed_spec().run_id


def test_run_id_only_depends_on_what_changes_the_result(tiny):
    m, o = ss.models.mlp(hidden=(32,)), ss.optim.spec("sgdm", lr=0.05)
    base = RunSpec(tiny, m, o, 0)
    # labels are not hashed; 1 and 1.0 are the same number; dict order does not matter
    assert base.with_labels(optimizer="x", severity=0.5).run_id == base.run_id
    assert RunSpec(tiny, m, ss.optim.spec("sgdm", lr=1), 0).run_id == \
        RunSpec(tiny, m, ss.optim.spec("sgdm", lr=1.0), 0).run_id
    assert RunSpec.from_dict(json.loads(json.dumps(base.to_dict()))).run_id == base.run_id
    # everything that changes the result changes the id
    variants = [
        RunSpec(tiny, m, o, 1),
        RunSpec(tiny, m, ss.optim.spec("sgdm", lr=0.051), 0),
        RunSpec(tiny, m, ss.optim.spec("sgdm", lr=0.05, momentum=0.8), 0),
        RunSpec(tiny, m, ss.optim.spec("adam", lr=0.05), 0),
        RunSpec(tiny, ss.models.mlp(hidden=(33,)), o, 0),
        RunSpec(tiny.replace(batch_size=16), m, o, 0),
        RunSpec(ss.label_flip_tasks(tiny.data, rate=0.6, tasks=2, steps_per_task=40), m, o, 0),
        RunSpec(ss.label_flip_tasks(tiny.data, rate=0.5, mode="other", tasks=2,
                                    steps_per_task=40), m, o, 0),
    ]
    ids = {v.run_id for v in variants} | {base.run_id}
    assert len(ids) == len(variants) + 1


def test_run_spec_round_trip_and_checks(tiny):
    s = RunSpec(tiny, ss.models.mlp(hidden=(8,)), "adam", 2, {"severity": 0.5, "opt": "a"})
    d = s.to_dict()
    assert d["run_id"] == s.run_id and d["labels"] == {"opt": "a", "severity": 0.5}
    assert RunSpec.from_dict(d) == s
    tampered = {**d, "seed": 3}
    with pytest.raises(ShiftsimError, match="edited"):
        RunSpec.from_dict(tampered)
    with pytest.raises(ShiftsimError, match="seed"):
        RunSpec(tiny, ss.models.mlp(), "sgdm", -1)
    with pytest.raises(TypeError, match="Scenario"):
        RunSpec("digits", ss.models.mlp(), "sgdm", 0)
    with pytest.raises(TypeError, match="ModelSpec"):
        RunSpec(tiny, "mlp", "sgdm", 0)
    with pytest.raises(TypeError, match="label"):
        RunSpec(tiny, ss.models.mlp(), "sgdm", 0, {"x": [1, 2]})
    import pickle

    assert pickle.loads(pickle.dumps(s)).run_id == s.run_id


# -- axes and grids ----------------------------------------------------------------------------

def test_a_5x6x10_study_is_a_few_lines(data):
    study = Study("big", flip_rates(data, rates=[0, .2, .4, .6, .8, 1.0], tasks=2,
                                    steps_per_task=50),
                  model=ss.models.mlp(hidden=(32,)),
                  optimizers=lr_grid({"sgdm": [0.01, 0.05, 0.1], "adam": [1e-3, 3e-3]}),
                  seeds=10)
    grid = study.grid()
    assert len(grid) == 6 * 5 * 10 == len({s.run_id for s in grid})
    assert repr(study) == ("Study('big': 6 scenarios x 1 model x 5 optimizers x 10 seeds = "
                           "300 runs)")
    labels = pd.DataFrame([s.label_dict for s in grid])
    assert {"scenario", "model", "optimizer", "optimizer_name", "lr", "seed", "severity",
            "flip_mode"} <= set(labels.columns)
    assert sorted(labels["severity"].unique()) == [0, .2, .4, .6, .8, 1.0]
    assert set(labels["optimizer_name"]) == {"sgdm", "adam"}
    assert sorted(labels["lr"].unique()) == [1e-3, 3e-3, 0.01, 0.05, 0.1]
    first = grid[0].label_dict
    assert first["scenario"] == "permute 0%" and first["optimizer"] == "sgdm(lr=0.01)"
    assert first["seed"] == 0 and grid[1].label_dict["seed"] == 1


def test_axis_helpers(data):
    g = hparam_grid("sgdm", lr=[0.01, 0.1], momentum=[0.5, 0.9])
    assert len(g) == 4 and g.labels["sgdm(lr=0.1, momentum=0.5)"] == {"lr": 0.1, "momentum": 0.5}
    rot = severity_axis(lambda a: ss.covariate_drift(data, [ss.Rotate(a)], 30), [10, 20],
                        key="rot {:g}")
    assert list(rot) == ["rot 10", "rot 20"] and rot.labels["rot 20"]["severity"] == 20.0
    with pytest.raises(ShiftsimError, match="twice"):
        lr_grid("sgdm", [0.1, 0.1])
    with pytest.raises(ShiftsimError, match="empty"):
        lr_grid("sgdm", [])
    with pytest.raises(ShiftsimError, match="both axes"):
        lr_grid("sgdm", [0.1]) | lr_grid("sgdm", [0.1])
    with pytest.raises(ShiftsimError, match="flip rate"):
        flip_rates(data, [0.5, 1.5])
    with pytest.raises(ShiftsimError, match="unknown optimizer"):
        lr_grid("sgdx", [0.1])


def test_study_input_checks(tiny):
    m = ss.models.mlp(hidden=(8,))
    with pytest.raises(ShiftsimError, match="scenarios is empty"):
        Study("s", {}, m, ["sgdm"])
    with pytest.raises(ShiftsimError, match="optimizers is empty"):
        Study("s", [tiny], m, [])
    with pytest.raises(ShiftsimError, match="seeds is empty"):
        Study("s", [tiny], m, ["sgdm"], seeds=[])
    with pytest.raises(ShiftsimError, match="seed 1 is listed twice"):
        Study("s", [tiny], m, ["sgdm"], seeds=[1, 1])
    with pytest.raises(ShiftsimError, match="twice"):
        Study("s", [tiny, tiny], m, ["sgdm"])  # same name
    with pytest.raises(ShiftsimError, match="same run"):
        Study("s", [tiny], m, {"a": "sgdm", "b": ss.optim.spec("sgdm")})
    with pytest.raises(ShiftsimError, match="non-empty name"):
        Study("", [tiny], m, ["sgdm"])
    with pytest.raises(TypeError, match="Scenario"):
        Study("s", ["digits"], m, ["sgdm"])
    with pytest.raises(ShiftsimError, match="model"):
        Study("s", [tiny], None, ["sgdm"])
    study = Study("s", [tiny], m, ["sgdm"], seeds=1)
    with pytest.raises(ShiftsimError, match="unknown backend 'dask'; allowed: 'local', 'ray'"):
        study.run("x", backend="dask")
    with pytest.raises(ShiftsimError, match="workers must be a positive integer, got 0"):
        study.run("x", workers=0)
    with pytest.raises(ShiftsimError, match="gpus_per_run"):
        study.run("x", gpus_per_run=-1, backend="ray")
    with pytest.raises(ShiftsimError, match="gpus_per_run=0.5 needs a CUDA device"):
        study.run("x", gpus_per_run=0.5, device="cpu")  # locally: 1/f workers per GPU


def test_out_dir_checks(tmp_path, tiny):
    study = Study("s", [tiny], ss.models.mlp(hidden=(8,)), ["sgdm"], seeds=1)
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(ShiftsimError, match="not a folder"):
        study.run(f, progress=False)
    study.run(tmp_path / "a", workers=1, progress=False)
    other = Study("other", [tiny], ss.models.mlp(hidden=(8,)), ["sgdm"], seeds=1)
    with pytest.raises(ShiftsimError, match="holds the results of study 's'"):
        other.run(tmp_path / "a", workers=1, progress=False)


# -- running ---------------------------------------------------------------------------------

def test_run_resume_and_rerun(tmp_path, tiny, capsys):
    study = Study("r", [tiny], ss.models.mlp(hidden=(8,)), lr_grid("sgdm", [0.01, 0.1]),
                  seeds=2)
    rep = study.run(tmp_path, workers=1, progress=False)
    assert isinstance(rep, StudyRunReport) and rep.ok
    assert (rep.total, rep.done, rep.skipped, rep.failed) == (4, 4, 0, 0)
    line = capsys.readouterr().out.strip()
    assert line.startswith("r: 4/4 runs complete (4 ran now)") and str(tmp_path) in line
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    again = study.run(tmp_path, workers=1, progress=False)
    assert (again.done, again.skipped) == (0, 4)
    # a second run of a complete study writes nothing at all
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == stamps
    study_json = json.loads((tmp_path / "study.json").read_text())
    assert study_json["name"] == "r" and len(study_json["runs"]) == 4
    assert [r["run_id"] for r in study_json["runs"]] == [s.run_id for s in study.grid()]
    redo = study.run(tmp_path, workers=1, progress=False, resume=False)
    assert (redo.done, redo.skipped) == (4, 0)
    # growing the study runs only the new runs
    bigger = Study("r", [tiny], ss.models.mlp(hidden=(8,)), lr_grid("sgdm", [0.01, 0.1]),
                   seeds=3)
    grown = bigger.run(tmp_path, workers=1, progress=False)
    assert (grown.done, grown.skipped) == (2, 4)
    assert len(store.load(tmp_path).runs) == 6


def test_a_stale_index_is_refreshed_even_when_no_run_is_left(tmp_path, tiny):
    """A driver killed after its last run but before refreshing runs.parquet."""
    study = Study("ix", [tiny], ss.models.mlp(hidden=(8,)), ["sgdm"], seeds=2)
    study.run(tmp_path, workers=1, progress=False)
    index = tmp_path / "runs.parquet"
    full = pd.read_parquet(index)
    full.iloc[:1].assign(status="pending").to_parquet(index)
    rep = study.run(tmp_path, workers=1, progress=False)
    assert rep.done == 0
    pd.testing.assert_frame_equal(pd.read_parquet(index), full)
    stamp = index.stat().st_mtime_ns
    study.run(tmp_path, workers=1, progress=False)
    assert index.stat().st_mtime_ns == stamp


def test_failed_and_diverged_runs_are_recorded_and_the_study_goes_on(tmp_path, data):
    syn = ss.data.synthetic(n=200, dim=5, classes=3)
    study = Study(
        "f",
        {"digits": ss.label_flip_tasks(data, rate=0.5, tasks=2, steps_per_task=30),
         "tabular": ss.label_flip_tasks(syn, rate=0.5, tasks=2, steps_per_task=30)},
        model={"linear": ss.models.linear()},
        # SparseAdam refuses dense gradients: every run raises
        optimizers={"huge": ss.optim.spec("sgd", lr=1e37), "ok": ss.optim.spec("sgd", lr=0.1),
                    "sparse": ss.optim.spec(torch.optim.SparseAdam)},
        seeds=1)
    rep = study.run(tmp_path, workers=1, progress=False)
    assert not rep.ok and rep.done == 6
    runs = store.load(tmp_path).runs.set_index(["scenario", "model", "optimizer"])
    # the runs that raise are failed, with the error; the other runs went on
    failed = runs.xs("sparse", level="optimizer")
    assert (failed["status"] == "failed").all() and len(failed) == 2
    assert failed["error"].str.contains("SparseAdam does not support dense gradients").all()
    assert runs.loc[("digits", "linear", "huge"), "status"] == "diverged"
    assert runs.loc[("digits", "linear", "huge"), "diverged_step"] < 30
    assert runs.loc[("digits", "linear", "ok"), "status"] == "ok"
    assert rep.failed == 2 and rep.diverged >= 1
    # failed runs are kept on resume, and rerun with retry_failed
    again = study.run(tmp_path, workers=1, progress=False)
    assert (again.done, again.failed, again.kept_failed) == (0, 2, 2)
    assert "retry_failed=True" in again.line()
    retry = study.run(tmp_path, workers=1, progress=False, retry_failed=True)
    assert retry.done == 2 and retry.failed == 2


def test_cli_exit_status_reflects_failures(tmp_path):
    from shiftsim.cli import main

    f = tmp_path / "s.py"
    f.write_text(textwrap.dedent("""
        import shiftsim as ss
        from shiftsim.study import Study
        syn = ss.data.synthetic(n=200, dim=5, classes=3)
        study = Study("cli", [ss.label_flip_tasks(syn, rate=0.5, tasks=2, steps_per_task=20)],
                      model={"mlp": ss.models.mlp(hidden=(8,))},
                      optimizers={"sgdm": "sgdm", "sparse": "torch.optim.SparseAdam"}, seeds=1)
    """))
    assert main(["study", str(f), "--out", str(tmp_path / "out"), "--workers", "1",
                 "--quiet"]) == 1
    res = store.load(tmp_path / "out")
    assert sorted(res.runs["status"]) == ["failed", "ok"]


def test_study_file_errors(tmp_path):
    f = tmp_path / "nostudy.py"
    f.write_text("x = 1\n")
    with pytest.raises(ShiftsimError, match="defines no 'study'"):
        study_from_file(f)
    f.write_text("study = 3\n")
    with pytest.raises(ShiftsimError, match="must be a shiftsim Study, got int"):
        study_from_file(f)


def test_flip_sweep_study_file():
    try:
        ss.optim.spec("tam")
    except ShiftsimError:
        pytest.skip("tam is not importable yet")
    study = study_from_file(os.path.join(ROOT, "scenarios", "flip_sweep.py"))
    assert isinstance(study, Study) and len(study.tuning_grid()) == 6 * 3 * 7 * 3
    sev = sorted({s.label_dict["severity"] for s in study.grid()})
    assert sev == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def test_keyboard_interrupt_leaves_only_complete_runs(tmp_path, tiny):
    study = Study("ki", [tiny], ss.models.mlp(hidden=(8,)), lr_grid("sgdm", [0.01, 0.1]),
                  seeds=2)

    class Interrupting(InProcess):
        def run(self, specs):
            for i, out in enumerate(super().run(specs)):
                if i == 2:
                    raise KeyboardInterrupt
                yield out

    with pytest.raises(KeyboardInterrupt):
        study.run(tmp_path, progress=False, executor=Interrupting("cpu"))
    res = store.load(tmp_path)
    assert res.counts()["ok"] == 2 and res.counts()["pending"] == 2
    rep = study.run(tmp_path, workers=1, progress=False)
    assert (rep.done, rep.skipped) == (2, 2)


# -- the same spec gives the same trace everywhere ----------------------------------------------

@pytest.mark.slow
def test_same_trace_in_process_and_in_the_pool(tmp_path, tiny):
    study = Study("pool", [tiny], ss.models.mlp(hidden=(16,)),
                  {"sgdm": ss.optim.spec("sgdm"), "adam": ss.optim.spec("adam")}, seeds=2)
    rep = study.run(tmp_path, workers=2, progress=True, fleet=False)
    assert rep.ok and rep.done == 4 and rep.backend == "local"
    res = store.load(tmp_path)
    workers = {json.loads((tmp_path / "runs" / r / "summary.json").read_text())["worker"]
               for r in res.runs.run_id}
    assert len(workers) >= 1 and all(w.split(":")[-1] != str(os.getpid()) for w in workers)
    for spec in study.grid():
        direct = execute(spec, device="cpu", threads=1)
        pd.testing.assert_frame_equal(res.trace(spec.run_id).drop(columns="run_id"),
                                      direct.trace)


# -- interrupts: SIGKILL, a dying worker, Ctrl-C ------------------------------------------------

KILL_STUDY = """
import shiftsim as ss
from shiftsim.study import Study, lr_grid

data = ss.data.digits()
study = Study(
    "kill",
    # the short runs finish well before the long ones: runs in fleets (the default) complete
    # a fleet at a time, and the long fleet is still in flight when the short one is written
    {"short": ss.label_flip_tasks(data, rate=0.5, tasks=2, steps_per_task=40, eval_every=20),
     "long": ss.label_flip_tasks(data, rate=1.0, tasks=2, steps_per_task=300, eval_every=100)},
    model=ss.models.mlp(hidden=(32,)),
    optimizers=lr_grid("sgdm", [0.02, 0.05, 0.1]),
    seeds=3,
)
"""


@pytest.fixture(scope="module")
def kill_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("kill") / "kill_study.py"
    f.write_text(KILL_STUDY)
    return f


def _default_sigint():
    """In the child: Ctrl-C as a terminal delivers it. A test suite started in the background
    by a non-interactive shell (``make test &``) inherits SIGINT ignored, and so would the
    study, which then rightly ignores the tests' Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(study_file, out, log, *extra):
    """`shiftsim study` (2 workers) as a subprocess in its own session and process group."""
    return subprocess.Popen(
        [sys.executable, "-m", "shiftsim.cli", "study", str(study_file), "--out", str(out),
         "--workers", "2", "--quiet", *extra],
        cwd=ROOT, start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
        preexec_fn=_default_sigint)


def _summaries(out):
    """{run_id: (bytes, mtime_ns)} of every summary.json: what a completed run left."""
    return {p.parent.name: (p.read_bytes(), p.stat().st_mtime_ns)
            for p in (out / "runs").glob("*/summary.json")}


def _wait_for_runs(proc, out, n, log, timeout=120.0):
    t0 = time.monotonic()
    while len(list((out / "runs").glob("*/summary.json"))) < n:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"the study exited early ({proc.returncode}): {log.read()[-2000:]}")
        if time.monotonic() - t0 > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"fewer than {n} runs completed within {timeout:.0f} s")
        time.sleep(0.02)


def _alive(pid):
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _group(pgid):
    """The live processes of process group ``pgid``."""
    pids = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                pids.add(int(d))
    return pids


def _wait_gone(pids, timeout=10.0):
    t0 = time.monotonic()
    while any(_alive(p) for p in pids):
        if time.monotonic() - t0 > timeout:
            for p in pids:
                with contextlib.suppress(OSError):
                    os.kill(p, signal.SIGKILL)
            pytest.fail(f"processes {sorted(p for p in pids if _alive(p))} outlived the driver")
        time.sleep(0.05)


linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self") or os.name != "posix",
                                reason="process-group checks read /proc (Linux)")


def _frames(res, run_ids=None):
    """A results folder's runs, phases, traces and evals (of ``run_ids``), sorted, without the
    columns that measure time."""
    keep = (lambda df: df) if run_ids is None else (lambda df: df[df["run_id"].isin(run_ids)])
    return {
        "runs": keep(res.runs.drop(columns=["total_s", "ms_per_step"])).sort_values("run_id"),
        "phases": keep(res.phases).sort_values(["run_id", "phase"]),
        "traces": keep(res.traces()).sort_values(["run_id", "step"]),
        "evals": keep(res.evals).sort_values(["run_id", "step", "regime"]),
    }


def _assert_same_results(res, refs):
    """``res`` equals, bit for bit, ``refs``: a list of (reference results, its run ids)."""
    got = _frames(res)
    parts = [_frames(ref, ids) for ref, ids in refs]
    for name, df in got.items():
        want = pd.concat([p[name] for p in parts]).sort_values(list(df.columns[:1]) + (
            {"runs": [], "phases": ["phase"], "traces": ["step"],
             "evals": ["step", "regime"]}[name]))
        pd.testing.assert_frame_equal(df.reset_index(drop=True), want.reset_index(drop=True),
                                      check_exact=True)


@pytest.mark.slow
@linux_only
def test_sigkill_loses_at_most_the_runs_in_flight(tmp_path, kill_file):
    study = study_from_file(kill_file)
    n = len(study)
    assert n == 18
    short = {s.run_id for s in study.grid() if s.label_dict["scenario"] == "short"}
    out = tmp_path / "out"
    with open(tmp_path / "log", "w+") as log:
        # 1. the default (fleets) as `shiftsim study`; SIGKILL the whole process group
        #    (driver and workers) once the first runs are written
        proc = _start(kill_file, out, log)
        _wait_for_runs(proc, out, 1, log)
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        _wait_gone(_group(proc.pid))
        first = _summaries(out)
        assert 1 <= len(first) and set(first) <= short  # the long fleet was in flight
        res = store.load(out)  # a killed study loads; the runs in flight are not complete
        counts = res.counts()
        assert counts["ok"] == len(first) and counts["incomplete"] + counts["pending"] == \
            n - len(first)
        # 2. resume with one learner per run in the process pool, then SIGKILL the driver
        #    alone: its workers notice and exit by themselves
        proc = _start(kill_file, out, log, "--no-fleet")
        _wait_for_runs(proc, out, len(first) + 2, log)
        workers = _group(proc.pid) - {proc.pid}
        assert len(workers) >= 1
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        _wait_gone(workers, timeout=10)
        second = _summaries(out)
        assert {r: second[r] for r in first} == first  # nothing complete was redone
    assert len(second) < n, "the study finished before the driver was killed"
    # 3. resume to the end (in this process): only the runs not complete are run, each once
    rep = study.run(out, workers=1, progress=False, fleet=False)
    assert rep.ok and (rep.skipped, rep.done) == (len(second), n - len(second))
    final = _summaries(out)
    assert len(final) == n and {r: final[r] for r in second} == second
    assert not [p for p in out.rglob("*") if store.TMP_MARK in p.name]
    # every file loads, and the results equal, bit for bit, those of uninterrupted runs: in
    # fleets for the runs written by the first attempt, one learner per run for the others
    res = store.load(out)
    assert res.complete and res.counts()["ok"] == n and not res.problems
    fleets = store.load(study.run(tmp_path / "ref-fleets", workers=1, progress=False).out_dir)
    singles = store.load(study.run(tmp_path / "ref-singles", workers=1, progress=False,
                                   fleet=False).out_dir)
    _assert_same_results(res, [(fleets, set(first)), (singles, set(final) - set(first))])


@pytest.mark.slow
@linux_only
@pytest.mark.parametrize("how", [(), ("--no-fleet",)], ids=["fleets", "pool"])
def test_ctrl_c_stops_cleanly_leaving_only_complete_runs(tmp_path, kill_file, how):
    out = tmp_path / "out"
    with open(tmp_path / "log", "w+") as log:
        proc = _start(kill_file, out, log, *how)
        _wait_for_runs(proc, out, 1, log)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        code = proc.wait(timeout=60)
        _wait_gone(_group(proc.pid))
        log.seek(0)
        text = log.read()
    assert code == 130, text
    assert "INTERRUPTED" in text and "run again to resume" in text and "interrupted" in text
    assert "Traceback" not in text
    folders = [p for p in (out / "runs").iterdir()]
    assert folders and all((p / "summary.json").is_file() for p in folders)
    assert not [p for p in out.rglob("*") if store.TMP_MARK in p.name]
    counts = store.load(out).counts()
    assert counts["ok"] == len(folders) and counts["incomplete"] == 0
    assert counts["pending"] == 18 - len(folders) > 0


class _KillingConn:
    """A worker's pipe that SIGKILLs the worker as soon as it is sent the victim run, and
    returns once the worker is gone: the pool then sees the death on the pass of its loop that
    sent the run (a death noticed late, after the other worker has drained the queue, needs no
    replacement worker, so the number of workers started would depend on timing)."""

    def __init__(self, conn, proc, victim):
        self._conn, self._proc, self._victim = conn, proc, victim

    def send(self, obj):
        self._conn.send(obj)
        if obj is not None and obj[0] == self._victim:
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.join(timeout=30)
            assert not self._proc.is_alive(), "the killed worker did not exit within 30 s"

    def __getattr__(self, name):
        return getattr(self._conn, name)


@pytest.mark.slow
def test_a_dying_worker_loses_only_its_run(tmp_path, tiny, caplog):
    # 6 runs, the victim second in the queue. With prefetch=1 a worker holds one run at a
    # time, and the victim, put back at the front of the queue after the first death, is the
    # next run sent; so when either death is seen at most 4 runs have left the queue (the first
    # run, the victim, one run sent beside each send of the victim) and at least 2 wait: each
    # death needs a replacement worker, however fast the other worker runs.
    study = Study("die", [tiny], ss.models.mlp(hidden=(8,)), lr_grid("sgdm", [0.01, 0.1]),
                  seeds=3)
    assert len(study.grid()) == 6
    victim = study.grid()[1].run_id
    starts = []

    class Killing(LocalPool):
        def _start(self, ctx, table):
            slot = super()._start(ctx, table)
            slot.conn = _KillingConn(slot.conn, slot.proc, victim)
            starts.append(slot.proc.pid)
            return slot

    # prefetch=1: a worker is sent its next run only when it is idle, so the victim is the run
    # it is running when it dies
    rep = study.run(tmp_path, progress=False, executor=Killing(2, "cpu", prefetch=1))
    # the victim's worker died twice (retried once in a fresh worker), each replaced; the others
    # went on: 2 workers + 2 replacements
    assert len(starts) == 4
    assert (rep.done, rep.failed) == (6, 1)
    runs = store.load(tmp_path).runs.set_index("run_id")
    assert runs.loc[victim, "status"] == "failed"
    assert "worker process died while running this run (killed by signal 9), 2 times" in \
        runs.loc[victim, "error"]
    assert (runs.drop(index=victim)["status"] == "ok").all()
    assert sum("died" in r.getMessage() for r in caplog.records) == 2
    assert not any(_alive(p) for p in starts)


# -- Ray ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module's Ray tests (starting one takes a few seconds)."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.mark.ray
@pytest.mark.slow
def test_ray_backend_same_traces_failures_and_resume(tmp_path, data, ray_session):
    syn = ss.data.synthetic(n=200, dim=5, classes=3)
    study = Study("ray",
                  {"digits": ss.label_flip_tasks(data, rate=0.5, tasks=2, steps_per_task=40),
                   "tabular": ss.label_flip_tasks(syn, rate=0.5, tasks=2, steps_per_task=40)},
                  model={"mlp": ss.models.mlp(hidden=(16,))},
                  # SparseAdam refuses dense gradients: it raises
                  optimizers={"sgdm": "sgdm", "sparse": "torch.optim.SparseAdam"}, seeds=1)
    rep = study.run(tmp_path, workers=2, backend="ray", progress=False)
    assert rep.backend == "ray" and (rep.done, rep.failed) == (4, 2)
    res = store.load(tmp_path)
    runs = res.runs.set_index(["scenario", "optimizer"])
    assert runs.loc[("tabular", "sparse"), "status"] == "failed"
    assert "SparseAdam does not support dense gradients" in runs.loc[("tabular", "sparse"), "error"]
    # the same spec gives the same trace, bit for bit, in a Ray worker and in this process
    for spec in study.grid():
        if spec.label_dict["optimizer"] == "sparse":
            continue
        summary = json.loads((tmp_path / "runs" / spec.run_id / "summary.json").read_text())
        assert summary["worker"].split(":")[-1] != str(os.getpid()) and summary["threads"] == 1
        pd.testing.assert_frame_equal(res.trace(spec.run_id).drop(columns="run_id"),
                                      execute(spec, device="cpu", threads=1).trace)
    again = study.run(tmp_path, backend="ray", progress=False)
    assert (again.done, again.skipped) == (0, 4)


@pytest.mark.ray
def test_ray_refuses_gpus_the_cluster_lacks(tmp_path, tiny, ray_session):
    study = Study("gpu", [tiny], ss.models.mlp(hidden=(8,)), ["sgdm"], seeds=1)
    with pytest.raises(ShiftsimError, match=r"gpus_per_run=0\.5 but the Ray cluster has 0 GPUs"):
        study.run(tmp_path, backend="ray", gpus_per_run=0.5, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]  # nothing was written
    assert ray_session.is_initialized()  # a Ray the study did not start is left running


# -- the README's Studies section -----------------------------------------------------------------

def _readme_study_blocks():
    import re

    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text.split("\n## Studies\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.mark.slow
def test_readme_studies_examples_run(tmp_path, monkeypatch, capsys):
    study_code, query_code = _readme_study_blocks()
    monkeypatch.chdir(tmp_path)
    ns = {"__name__": "__main__"}
    exec(compile(study_code, "README.md", "exec"), ns)
    out = capsys.readouterr().out
    assert "sweep: 12/12 runs complete (12 ran now)" in out and "online_acc" in out
    res = ss.store.load("results/sweep")
    assert res.counts()["ok"] == 12
    pytest.importorskip("duckdb")
    exec(compile(query_code.replace("results/flip-sweep", "results/sweep"), "README.md", "exec"),
         ns)
    df = ns["df"]
    assert len(df) == 6 and set(df["optimizer"]) == {"sgdm(lr=0.05)", "adam(lr=0.001)"}
    want = res.runs.groupby(["optimizer", "severity"])["online_acc"].mean()
    got = df.set_index(["optimizer", "severity"])["online_acc"]
    assert got.to_dict() == pytest.approx(want.to_dict())


@pytest.mark.slow
def test_a_script_without_the_main_guard_gets_a_clear_error(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        import shiftsim as ss
        from shiftsim.study import Study
        syn = ss.data.synthetic(n=100, dim=4, classes=2)
        study = Study("g", [ss.label_flip_tasks(syn, rate=0.5, tasks=2, steps_per_task=10)],
                      model=ss.models.mlp(hidden=(4,)), optimizers=["sgd"], seeds=2)
        study.run({str(tmp_path / "out")!r}, workers=2, progress=False, fleet=False)
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("shiftsim.errors.ShiftsimError: a worker process exited (code 1) "
                           "before it started; worker processes start by importing your "
                           "script") and 'if __name__ == "__main__":' in last
