"""The results store: atomic run folders, completeness checks, loading as tidy DataFrames."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pytest

import shiftsim as ss
from shiftsim import store
from shiftsim.errors import ShiftsimError
from shiftsim.study import RunSpec, Study, execute, lr_grid


@pytest.fixture(scope="module")
def scenario():
    return ss.label_flip_tasks(ss.data.digits(), rate=1.0, tasks=2, steps_per_task=40,
                               eval_every=20)


@pytest.fixture(scope="module")
def spec(scenario):
    return RunSpec(scenario, ss.models.mlp(hidden=(16,)), ss.optim.spec("sgdm", lr=0.05), 0,
                   {"scenario": "flip", "optimizer": "sgdm", "severity": 1.0, "seed": 0})


@pytest.fixture(scope="module")
def result(spec):
    return execute(spec, device="cpu", threads=1)


def tmp_files(root):
    return [p for p in root.rglob("*") if store.TMP_MARK in p.name]


def test_write_result_round_trip(tmp_path, spec, result):
    folder = store.write_result(tmp_path, result, spec)
    assert folder == tmp_path / "runs" / spec.run_id
    assert sorted(p.name for p in folder.iterdir()) == [
        "evals.parquet", "spec.json", "summary.json", "trace.parquet"]
    assert not tmp_files(tmp_path)
    res = store.load(tmp_path)
    assert res.study is None and len(res) == 1
    row = res.runs.iloc[0]
    assert row["run_id"] == spec.run_id and row["status"] == "ok"
    assert row["scenario"] == "flip" and row["severity"] == 1.0 and row["seed"] == 0
    assert row["online_acc"] == pytest.approx(result.online_accuracy)
    assert row["steps_run"] == 80
    trace = res.trace(spec.run_id)
    assert (trace["run_id"] == spec.run_id).all()
    pd.testing.assert_frame_equal(trace.drop(columns="run_id"), result.trace)
    evals = res.evals
    pd.testing.assert_frame_equal(
        evals[result.evals.columns].reset_index(drop=True), result.evals)
    # one row per phase, with the run's labels and the summary's metrics
    ph = res.phases
    assert list(ph["phase"]) == [0, 1]
    assert {"scenario", "optimizer", "status", "online_acc", "recovery_steps", "censored",
            "regime", "ceiling", "label_kind"} <= set(ph.columns)
    expected = result.summary()
    assert ph["online_acc"].tolist() == pytest.approx(expected["online_acc"].tolist())
    # spec.json rebuilds the same RunSpec
    again = RunSpec.from_dict(json.loads((folder / "spec.json").read_text()))
    assert again.run_id == spec.run_id and again.label_dict == spec.label_dict


def test_write_result_without_spec_uses_the_same_run_id(tmp_path, spec, result):
    folder = store.write_result(tmp_path, result)  # what `shiftsim run --out` does
    assert folder.name == spec.run_id
    row = store.load(tmp_path).runs.iloc[0]
    assert row["scenario"] == spec.scenario.name and row["optimizer"] == "sgdm(lr=0.05)"
    assert row["optimizer_name"] == "sgdm" and row["lr"] == 0.05 and math.isnan(row["severity"])


def test_traces_concatenates_with_labels(tmp_path, scenario):
    study = Study("t", [scenario], ss.models.mlp(hidden=(8,)),
                  lr_grid("sgdm", [0.01, 0.1]), seeds=1)
    study.run(tmp_path, workers=1, progress=False)
    res = store.load(tmp_path)
    tr = res.traces(columns=["correct"])
    assert list(tr.columns) == [*res._label_columns(), "step", "correct"]
    assert len(tr) == 2 * 80
    assert set(tr["lr"]) == {0.01, 0.1}
    one = res.traces([res.runs.run_id[0]], columns=["loss"])
    assert len(one) == 80 and "loss" in one
    # the derived index is there for DuckDB and pandas
    idx = pd.read_parquet(tmp_path / "runs.parquet")
    assert sorted(idx["run_id"]) == sorted(res.runs["run_id"])


def test_traces_and_evals_equal_a_dataframe_per_file(tmp_path, scenario):
    """The runs' files are joined as Arrow tables and converted once: the same frame as
    pandas reading each file and concatenating, with columns only some runs have (TAM's and
    MoMo's diagnostics) filled with NaN where a run lacks them."""
    study = Study("t", [scenario], ss.models.mlp(hidden=(8,)),
                  {"sgdm": ss.optim.spec("sgdm", lr=0.05), "tam": ss.optim.spec("tam", lr=0.05),
                   "momo": ss.optim.spec("momo", lr=0.5)}, seeds=2)
    study.run(tmp_path, workers=1, progress=False)
    res = store.load(tmp_path)
    ids = res.runs["run_id"].tolist()
    keys = res.runs[res._label_columns()]
    for name, got in [("trace.parquet", res.traces()), ("evals.parquet", res.evals)]:
        per_file = pd.concat([pd.read_parquet(tmp_path / "runs" / r / name) for r in ids],
                             ignore_index=True)
        pd.testing.assert_frame_equal(got, keys.merge(per_file, on="run_id", how="right"))
    some = ids[::2]
    fresh = store.load(tmp_path).evals_of(some)  # only those files read
    pd.testing.assert_frame_equal(
        fresh, res.evals[res.evals["run_id"].isin(some)].reset_index(drop=True))
    pd.testing.assert_frame_equal(res.evals_of(some), fresh)  # from the loaded frame
    with pytest.raises(ShiftsimError, match="a list of run ids"):
        res.evals_of(ids[0])
    tr = res.traces()
    assert {"diag_damping", "diag_step_size"} <= set(tr.columns)
    assert tr.loc[tr["optimizer"] == "sgdm", "diag_damping"].isna().all()
    assert tr.loc[tr["optimizer"] == "tam", "diag_damping"].notna().all()
    one = res.trace(ids[0])
    pd.testing.assert_frame_equal(one, pd.read_parquet(tmp_path / "runs" / ids[0] /
                                                       "trace.parquet"))


def test_columns_arrow_cannot_unify_are_joined_by_pandas(tmp_path, scenario, monkeypatch):
    """A column with a string type in one run and a number in another: Arrow refuses to join
    them, and the frame is pandas' concatenation of the runs' frames (an object column)."""
    import pyarrow as pa

    study = Study("t", [scenario], ss.models.mlp(hidden=(8,)), lr_grid("sgdm", [0.01, 0.1]),
                  seeds=1)
    study.run(tmp_path, workers=1, progress=False)
    res = store.load(tmp_path)
    odd = res.runs["run_id"].iloc[0]
    real = store.StudyResults._read_table

    def read(self, run_id, name, columns=None):
        t = real(self, run_id, name, columns)
        if run_id != odd:
            return t
        i = t.schema.get_field_index("n")
        return t.set_column(i, "n", pa.array([str(x) for x in t.column("n").to_pylist()]))

    monkeypatch.setattr(store.StudyResults, "_read_table", read)
    with pytest.raises(pa.ArrowTypeError):  # what the fallback is for
        pa.concat_tables([read(res, r, "evals.parquet") for r in res.runs["run_id"]],
                         promote_options="permissive")
    got = res.evals
    per_run = pd.concat([read(res, r, "evals.parquet").to_pandas() for r in res.runs["run_id"]],
                        ignore_index=True)
    keys = res.runs[res._label_columns()]
    pd.testing.assert_frame_equal(got, keys.merge(per_run, on="run_id", how="right"))
    assert got["n"].dtype == object and set(map(type, got["n"])) == {str, int}


def corrupt_cases():
    def drop_summary(d):
        (d / "summary.json").unlink()

    def garbage_summary(d):
        (d / "summary.json").write_text('{"format": 1, "status": "ok", "run_')

    def truncate_trace(d):
        p = d / "trace.parquet"
        p.write_bytes(p.read_bytes()[:100])

    def flip_a_byte(d):  # same size: only the checksum notices
        p = d / "evals.parquet"
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))

    def drop_trace(d):
        (d / "trace.parquet").unlink()

    def drop_spec(d):
        (d / "spec.json").unlink()

    def wrong_run_id(d):
        s = json.loads((d / "summary.json").read_text())
        s["run_id"] = "0" * 16
        (d / "summary.json").write_text(json.dumps(s))

    def list_summary(d):
        (d / "summary.json").write_text("[1, 2]")

    return [drop_summary, garbage_summary, truncate_trace, flip_a_byte, drop_trace, drop_spec,
            wrong_run_id, list_summary]


@pytest.mark.parametrize("damage", corrupt_cases(), ids=lambda f: f.__name__)
def test_damaged_folders_are_incomplete_never_a_crash(tmp_path, spec, result, damage):
    folder = store.write_result(tmp_path, result, spec)
    damage(folder)
    st = store.run_state(tmp_path, spec.run_id)
    assert st.status == "incomplete" and st.reason
    res = store.load(tmp_path)
    assert res.runs.loc[0, "status"] == "incomplete"
    assert spec.run_id in res.problems
    assert len(res.phases) == 0 and len(res.evals) == 0
    with pytest.raises(ShiftsimError, match="incomplete"):
        res.trace(spec.run_id)


def test_resume_redoes_damaged_and_partial_runs_only(tmp_path, scenario):
    study = Study("resume", [scenario], ss.models.mlp(hidden=(8,)),
                  {"a": ss.optim.spec("sgdm", lr=0.05), "b": ss.optim.spec("sgd", lr=0.1)},
                  seeds=2)
    first = study.run(tmp_path, workers=1, progress=False)
    assert first.done == 4 and first.ok
    ids = [s.run_id for s in study.grid()]
    runs = tmp_path / "runs"
    # a process killed mid-write leaves temp files and no summary; another folder is corrupted
    (runs / ids[0] / "summary.json").unlink()
    (runs / ids[0] / ".trace.parquet.tmp-1-abc").write_bytes(b"partial")
    p = runs / ids[1] / "trace.parquet"
    p.write_bytes(p.read_bytes()[:-10])
    stamps = {i: (runs / i / "summary.json").stat().st_mtime_ns for i in ids[2:]}
    res = store.load(tmp_path)
    assert res.counts()["incomplete"] == 2 and res.counts()["ok"] == 2
    again = study.run(tmp_path, workers=1, progress=False)
    assert (again.done, again.skipped) == (2, 2) and again.ok
    assert {i: (runs / i / "summary.json").stat().st_mtime_ns for i in ids[2:]} == stamps
    assert not tmp_files(tmp_path)
    assert store.load(tmp_path).counts()["ok"] == 4


def test_pending_runs_are_rows(tmp_path, scenario):
    study = Study("pending", [scenario], ss.models.mlp(hidden=(8,)), ["sgdm"], seeds=2)
    store.write_study(tmp_path, study.to_dict())
    res = store.load(tmp_path)
    assert list(res.runs["status"]) == ["pending", "pending"]
    assert list(res.runs["seed"]) == [0, 1] and not res.complete
    assert res.runs["online_acc"].isna().all()


def test_failed_run_summary(tmp_path, spec):
    msg, tb = store.format_error(RuntimeError("boom\n  at step 3"))
    folder = store.write_run(tmp_path, spec.run_id, spec=spec.to_dict(), labels=spec.label_dict,
                             status="failed", error=msg, traceback=tb)
    assert sorted(p.name for p in folder.iterdir()) == ["spec.json", "summary.json"]
    s = json.loads((folder / "summary.json").read_text())
    assert s["status"] == "failed" and s["error"] == "RuntimeError: boom at step 3"
    assert "Traceback" not in s["error"] and "RuntimeError" in s["traceback"]
    row = store.load(tmp_path).runs.iloc[0]
    assert row["status"] == "failed" and row["error"] == "RuntimeError: boom at step 3"
    with pytest.raises(ShiftsimError, match="failed"):
        store.load(tmp_path).trace(spec.run_id)


def test_bad_folders(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ShiftsimError, match="not a folder"):
        store.load(f)
    with pytest.raises(ShiftsimError, match="not a folder"):
        store.write_result(f, None)
    with pytest.raises(ShiftsimError, match="does not exist"):
        store.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShiftsimError, match="empty"):
        store.load(tmp_path / "empty")


def test_lock_refuses_a_second_writer(tmp_path):
    with store.lock(tmp_path):
        with pytest.raises(ShiftsimError, match="another shiftsim process"):
            with store.lock(tmp_path):
                pass
    with store.lock(tmp_path):  # released
        pass


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "a.json"
    store.atomic_write_json(p, {"v": 1})

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        store.atomic_write_json(p, {"v": 2})
    assert json.loads(p.read_text()) == {"v": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["a.json"]


def test_json_is_strict(tmp_path):
    text = store.dumps({"a": float("nan"), "b": (1, 2), "c": float("inf")})
    assert json.loads(text) == {"a": None, "b": [1, 2], "c": None}


def test_duckdb_reads_the_parquet_files(tmp_path, scenario):
    duckdb = pytest.importorskip("duckdb")
    study = Study("duck", [scenario], ss.models.mlp(hidden=(8,)), lr_grid("sgdm", [0.01, 0.1]),
                  seeds=1)
    study.run(tmp_path, workers=1, progress=False)
    res = store.load(tmp_path)
    glob = (tmp_path / "runs" / "*" / "trace.parquet").as_posix()
    df = duckdb.sql(f"""
        SELECT r.lr, sum(t.correct) / sum(t.n) AS online_acc
        FROM read_parquet('{glob}') t
        JOIN read_parquet('{(tmp_path / "runs.parquet").as_posix()}') r USING (run_id)
        WHERE r.status = 'ok' GROUP BY r.lr ORDER BY r.lr""").df()
    assert df["lr"].tolist() == [0.01, 0.1]
    expected = res.runs.sort_values("lr")["online_acc"].tolist()
    assert df["online_acc"].tolist() == pytest.approx(expected)


def test_an_incomplete_runs_message_does_not_contradict_itself(tmp_path, spec, result):
    folder = store.write_result(tmp_path, result, spec)
    size = (folder / "trace.parquet").stat().st_size
    p = folder / "trace.parquet"
    p.write_bytes(p.read_bytes()[:100])
    res = store.load(tmp_path)
    assert repr(res).startswith(f"StudyResults('{tmp_path.name}': 1 run — ")
    with pytest.raises(ShiftsimError) as err:
        res.trace(spec.run_id)
    assert str(err.value) == (f"run {spec.run_id} is incomplete (trace.parquet: 100 bytes, "
                              f"expected {size}), so its trace.parquet cannot be used; run the "
                              "study again to redo it")
    failed = tmp_path / "f"
    store.write_run(failed, spec.run_id, spec=spec.to_dict(), labels=spec.label_dict,
                    status="failed", error="RuntimeError: boom", traceback="...")
    with pytest.raises(ShiftsimError, match=r"^run \w+ failed \(RuntimeError: boom\), so it has "
                                            r"no trace\.parquet$"):
        store.load(failed).trace(spec.run_id)


def test_dir_lists_the_lazily_loaded_names():
    names = dir(ss)
    for name in ("run", "Study", "report", "store", "plots", "run_fleet", "metrics", "Scenario",
                 "data", "optim"):
        assert name in names, name
    assert names == sorted(names)


def test_common_phases_recompute_only_changed_groups(tmp_path, scenario, monkeypatch):
    """The recovery recompute of ``phases`` is kept per comparison group (scenario and stage)
    for the process: loading again reads no trace; after one run's summary changes only its
    group's traces are read again, and the rows equal a recompute from scratch."""
    other = ss.label_flip_tasks(ss.data.digits(), rate=0.5, mode="other", tasks=2,
                                steps_per_task=40, eval_every=20)
    study = Study("groups", {"flip": scenario, "half": other}, ss.models.mlp(hidden=(8,)),
                  {"a": ss.optim.spec("sgdm", lr=0.05), "b": ss.optim.spec("sgd", lr=0.1)},
                  seeds=2)
    study.run(tmp_path, workers=1, progress=False)
    store.results._GROUP_CACHE.clear()
    first = store.load(tmp_path).phases
    reads = []
    real = store.StudyResults._trace_columns

    def counting(self, run_id, columns):
        reads.append(run_id)
        return real(self, run_id, columns)

    monkeypatch.setattr(store.StudyResults, "_trace_columns", counting)
    pd.testing.assert_frame_equal(store.load(tmp_path).phases, first)
    assert reads == []  # nothing changed: no trace read
    runs = store.load(tmp_path).runs
    changed = runs[runs["scenario"] == "half"]["run_id"].iloc[0]
    path = tmp_path / "runs" / changed / "summary.json"
    body = json.loads(path.read_text())
    body["phases"][1]["ceiling"] = 0.55  # another phase plan for this run
    path.write_text(json.dumps(body))
    half = set(runs[runs["scenario"] == "half"]["run_id"])
    again = store.load(tmp_path).phases
    assert changed in reads and set(reads) == half  # only the changed group was read again
    assert (again["ceiling"] == 0.55).sum() == 1
    reads.clear()
    pd.testing.assert_frame_equal(store.load(tmp_path).phases, again)
    assert reads == []
    store.results._GROUP_CACHE.clear()
    pd.testing.assert_frame_equal(again, store.load(tmp_path).phases)


def test_phases_from_arrays_equal_the_frame_path(tmp_path, scenario, monkeypatch):
    """The common-reference recompute reads each run's trace and phase plan as arrays (no
    frame per run) where the trace is in step order; the frame path (recovery_records, which
    orders a trace and names what is missing) gives the same frame, bit for bit: label noise
    (clean-label rows) and a gradual shift among the scenarios."""
    noise = ss.label_flip_tasks(ss.data.digits(), rate=0.4, mode="other", tasks=2,
                                steps_per_task=40, eval_every=20)
    drift = ss.covariate_drift(ss.data.digits(), [ss.Rotate(60)], 40,
                               transition=ss.Gradual(10))
    study = Study("arrays", {"flip": scenario, "noise": noise, "drift": drift},
                  ss.models.mlp(hidden=(8,)),
                  {"a": ss.optim.spec("sgdm", lr=0.05), "b": ss.optim.spec("sgd", lr=0.1)},
                  seeds=2)
    study.run(tmp_path, workers=1, progress=False)
    store.results._GROUP_CACHE.clear()
    fast = store.load(tmp_path).phases
    assert fast["dipped_true"].notna().any() and (fast["width"] > 0).any()
    store.results._GROUP_CACHE.clear()
    monkeypatch.setattr(store.results, "_in_step_order", lambda trace: False)
    framed = store.load(tmp_path).phases
    pd.testing.assert_frame_equal(fast, framed, check_exact=True)


def test_in_step_order_and_joined_keys():
    from shiftsim.store.results import _in_step_order, _joined

    ok = {"step": np.arange(5), "phase": np.array([0, 0, 1, 1, 2]), "n": np.ones(5),
          "correct": np.ones(5)}
    assert _in_step_order(ok)
    assert not _in_step_order({**ok, "step": np.array([0, 2, 1, 3, 4])})
    assert not _in_step_order({**ok, "step": np.array([0, 1, 1, 3, 4])})
    assert not _in_step_order({**ok, "phase": np.array([0, 1, 0, 1, 2])})
    assert not _in_step_order({k: v for k, v in ok.items() if k != "correct"})
    df = pd.DataFrame({"scenario": ["a", "b", "c"], "stage": ["eval", "tune", "eval"],
                       "k": [1, 2.5, 3.0]})
    for by in (["scenario"], ["scenario", "stage"], ["scenario", "stage", "k"]):
        assert _joined(df, by).tolist() == df[by].astype(str).agg("\x1f".join, axis=1).tolist()
    assert _joined(df, []).tolist() == ["", "", ""]


def test_stage_phases_read_only_that_stages_traces(tmp_path, scenario, monkeypatch):
    """``stage_phases("eval")`` equals the evaluation rows of ``phases`` (the common
    reference is per scenario and stage) and reads no tuning run's trace."""
    from shiftsim.study import Tuning

    study = Study("staged", [scenario], ss.models.mlp(hidden=(8,)),
                  {"a": ss.optim.spec("sgdm"), "b": ss.optim.spec("sgd")}, seeds=2,
                  tuning=Tuning(grid={"a": {"lr": [0.01, 0.1]}, "b": {"lr": [0.03, 0.3]}},
                                seeds=1))
    study.run(tmp_path, workers=1, progress=False)
    store.results._GROUP_CACHE.clear()
    runs = store.load(tmp_path).runs
    assert set(runs["stage"]) == {"tune", "eval"}
    reads = []
    real = store.StudyResults._trace_columns
    monkeypatch.setattr(store.StudyResults, "_trace_columns",
                        lambda self, rid, cols: (reads.append(rid), real(self, rid, cols))[1])
    res = store.load(tmp_path)
    got = res.stage_phases("eval")
    assert set(reads) == set(runs.loc[runs["stage"] == "eval", "run_id"])
    assert set(got["stage"]) == {"eval"} and got["shifted"].any()
    everything = store.load(tmp_path).phases
    for stage in ("eval", "tune"):
        pd.testing.assert_frame_equal(
            store.load(tmp_path).stage_phases(stage),
            everything[everything["stage"] == stage].reset_index(drop=True))
    assert len(res.phases)  # computed: the stages are its rows from now on
    pd.testing.assert_frame_equal(res.stage_phases("tune"), store.load(tmp_path)
                                  .stage_phases("tune"))
    with pytest.raises(ShiftsimError, match="stage must be a string"):
        res.stage_phases(1)


def test_a_serialized_result_writes_the_same_folder(tmp_path, spec, result):
    """What a study's workers send (:meth:`Outcome.packed`: parquet bytes and plain summary
    rows instead of DataFrames) writes the same files as the result itself."""
    from shiftsim.study.executors import Outcome

    m = result.measure()
    packed = Outcome(spec.run_id, m.status, result, m.summary, m.scores).packed()
    assert packed.result is None and packed.summary is None and packed.payload is not None
    folders = []
    for i, kw in enumerate(({"result": result, "summary": m.summary},
                            {"payload": packed.payload})):
        folders.append(store.write_run(tmp_path / str(i), spec.run_id, spec=spec.to_dict(),
                                       labels=spec.label_dict, status=m.status,
                                       scores=m.scores, **kw))
    a, b = folders
    for name in ("spec.json", "trace.parquet", "evals.parquet"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    sa, sb = (json.loads((f / "summary.json").read_text()) for f in folders)
    sa.pop("finished"), sb.pop("finished")
    assert sa == sb and len(sa["phases"]) == len(result.phases)


def test_lookups_of_what_the_folder_does_not_hold_say_so(tmp_path, spec, result):
    """A typo in a run id, a string where a list goes, a column a file lacks: each a one-line
    error naming it (they read as an empty frame, None or a pyarrow schema dump before)."""
    store.write_result(tmp_path, result, spec)
    res = store.load(tmp_path)
    rid = res.runs["run_id"].iloc[0]
    with pytest.raises(ShiftsimError, match=r"^run_ids must be a list of run ids, got the "
                                            r"string '[0-9a-f]+' \(write \["):
        res.traces(rid)
    with pytest.raises(ShiftsimError, match=r"^no run 'typo' in .*; runs: "):
        res.traces(["typo"])
    with pytest.raises(ShiftsimError, match=r"^no run 'typo' in "):
        res.spec("typo")
    with pytest.raises(ShiftsimError, match=r"^no run 'typo' in "):
        res.evals_of(["typo"])
    with pytest.raises(ShiftsimError, match=r"^trace\.parquet of run [0-9a-f]+ has no "
                                            r"column\(s\) 'nope'; it has: 'run_id', 'step'"):
        res.trace(rid, columns=["nope"])
    with pytest.raises(ShiftsimError, match=r"^columns must be a list of column names, got "
                                            r"the string 'step'"):
        res.trace(rid, columns="step")
    assert res.spec(rid)["run_id"] == rid
    assert len(res.traces([rid], columns=["correct"])) == len(result.trace)
