"""The command line's happy paths (the error paths are in test_bad_input.py)."""

import json

import pandas as pd
import pytest

from shiftsim import cli

SCENARIO = """
import shiftsim as ss
scenario = ss.label_flip_tasks(ss.data.digits(), rate=1.0, tasks=2, steps_per_task=40,
                               batch_size=16, eval_every=20)
model = ss.models.mlp(hidden=(16,))
"""


def test_run_prints_the_phase_summary(tmp_path, capsys):
    f = tmp_path / "sc.py"
    f.write_text(SCENARIO)
    assert cli.main(["run", str(f), "--optimizer", "adam", "--lr", "0.01", "--seed", "3",
                     "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "adam(lr=0.01), seed 3, 80 steps on cpu" in out
    assert "online_acc" in out and "flip permute 100%" in out


@pytest.mark.parametrize("what,expect", [("optimizers", "sgdm"), ("shifts", "LabelFlip"),
                                         ("datasets", "fashion_mnist"), ("models", "resnet")])
def test_list(capsys, what, expect):
    assert cli.main(["list", what]) == 0
    assert expect in capsys.readouterr().out


def test_list_optimizers_names_every_registry_entry(capsys):
    from shiftsim.optim import names

    cli.main(["list", "optimizers"])
    out = capsys.readouterr().out
    for n in names():
        assert f"\n{n} " in "\n" + out


def test_run_out_writes_the_run(tmp_path, capsys):
    pytest.importorskip("shiftsim.store")
    f = tmp_path / "sc.py"
    f.write_text(SCENARIO)
    out = tmp_path / "run"
    assert cli.main(["run", str(f), "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    files = {p.name for p in out.rglob("*") if p.is_file()}
    assert {"trace.parquet", "evals.parquet", "summary.json"} <= files
    trace = pd.read_parquet(next(out.rglob("trace.parquet")))
    assert len(trace) == 80
    json.loads(next(out.rglob("summary.json")).read_text())
