"""What the processes of a study hold for long (torch, shiftsim, the scenarios and their data;
in the driver each run's state and spec) is kept out of the garbage collector's full passes:
each worker process freezes its heap before its first run, and the driver freezes what exists
when a stage's runs or a tuning selection start, for that block (``runtime.frozen_heap``),
then unfreezes (the user's process keeps its collector as it was)."""

from __future__ import annotations

import gc
import os

import pytest
from test_cli import STUDY

import shiftsim as ss
from shiftsim.runtime import frozen_heap
from shiftsim.study import Study, executors, runner
from shiftsim.study import fleet_executor as fx


def test_freeze_heap_freezes_what_is_there():
    assert gc.get_freeze_count() == 0
    try:
        executors._freeze_heap()
        assert gc.get_freeze_count() > 10_000  # torch alone is far more
    finally:
        gc.unfreeze()


def test_both_kinds_of_worker_freeze_before_their_first_run(monkeypatch):
    events: list[object] = []
    for mod in (executors, fx):
        monkeypatch.setattr(mod, "_watch_parent", lambda pid: None)
        monkeypatch.setattr(mod, "ignore_sigint", lambda: None)
        monkeypatch.setattr(mod, "_freeze_heap", lambda: events.append("freeze"))
    fx._init_worker({}, None, os.getppid(), False)
    assert events == ["freeze"]

    class Conn:  # the driver's pipe: stop at once
        def send(self, message: object) -> None:
            events.append(message)

        def recv(self) -> None:
            return None

    executors._serve(Conn(), {}, "cpu", None, os.getppid())
    assert events == ["freeze", "freeze", ("ready", os.getpid())]


def _collected(obj: object) -> bool:
    """Whether the collector's passes see ``obj`` (frozen objects they do not)."""
    return any(o is obj for o in gc.get_objects())


def test_frozen_heap_freezes_for_the_block_and_nested_does_nothing():
    assert gc.get_freeze_count() == 0
    before = []
    with frozen_heap():
        assert not _collected(before)
        new: list[object] = []  # made inside the block: not frozen
        with frozen_heap():  # frozen already: nothing more (its garbage would stay frozen)
            assert _collected(new)
        assert _collected(new) and gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0 and _collected(before) and _collected(new)
    with pytest.raises(ZeroDivisionError), frozen_heap():
        raise ZeroDivisionError
    assert gc.get_freeze_count() == 0


def test_frozen_heap_leaves_a_freeze_of_the_caller_alone():
    gc.freeze()
    try:
        new: list[object] = []
        with frozen_heap():
            assert _collected(new)
        assert gc.get_freeze_count() > 0 and _collected(new)
    finally:
        gc.unfreeze()


def test_each_stage_and_selection_runs_frozen_and_the_study_ends_unfrozen(tmp_path,
                                                                          monkeypatch):
    from shiftsim.study import Tuning, selection

    seen: list[tuple[str, int]] = []

    def counted(name, real):
        def call(*args, **kwargs):
            seen.append((name, gc.get_freeze_count()))
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(runner, "_execute", counted("stage", runner._execute))
    monkeypatch.setattr(selection, "select_from_store",
                        counted("selection", selection.select_from_store))
    syn = ss.data.synthetic(n=200, dim=5, classes=3)
    study = Study("frozen", [ss.label_flip_tasks(syn, rate=0.5, tasks=2, steps_per_task=20)],
                  model=ss.models.mlp(hidden=(8,)), optimizers={"sgdm": ss.optim.spec("sgdm")},
                  seeds=1, tuning=Tuning(grid={"sgdm": {"lr": [0.01, 0.1]}}, seeds=1))
    study.run(tmp_path / "out", workers=1, progress=False)
    assert [name for name, _ in seen] == ["stage", "selection", "stage"]
    assert all(count > 10_000 for _, count in seen) and gc.get_freeze_count() == 0


def test_a_study_that_fails_mid_stage_ends_unfrozen(tmp_path, monkeypatch, capsys):
    from shiftsim import cli

    def execute(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_execute", execute)
    f = tmp_path / "s.py"
    f.write_text(STUDY)
    assert cli.main(["study", str(f), "--out", str(tmp_path / "out"), "--workers", "1",
                     "--quiet"]) == 130
    assert gc.get_freeze_count() == 0

