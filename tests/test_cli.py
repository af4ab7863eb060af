"""The command line's happy paths (the error paths are in test_bad_input.py)."""

import json

import pandas as pd
import pytest
import torch

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


STUDY = """
import shiftsim as ss
from shiftsim.study import Study, lr_grid
syn = ss.data.synthetic(n=200, dim=5, classes=3)
study = Study("cli-study", [ss.label_flip_tasks(syn, rate=0.5, tasks=2, steps_per_task=20)],
              model=ss.models.mlp(hidden=(8,)), optimizers=lr_grid("sgdm", [0.01, 0.1]),
              seeds=1)
"""


def test_study_runs_resumes_and_redoes(tmp_path, capsys):
    f = tmp_path / "s.py"
    f.write_text(STUDY)
    out = tmp_path / "out"
    args = ["study", str(f), "--out", str(out), "--workers", "1", "--quiet"]
    assert cli.main(args) == 0
    assert capsys.readouterr().out.startswith("cli-study: 2/2 runs complete (2 ran now); ")
    assert cli.main(args) == 0
    assert capsys.readouterr().out.startswith("cli-study: 2/2 runs complete (2 already complete)")
    assert cli.main([*args, "--no-resume", "--no-fleet"]) == 0
    assert capsys.readouterr().out.startswith("cli-study: 2/2 runs complete (2 ran now); ")
    from shiftsim import store

    runs = store.load(out).runs
    assert sorted(runs["lr"]) == [0.01, 0.1] and set(runs["status"]) == {"ok"}


def test_study_device_options_reach_the_runs(tmp_path, capsys):
    f = tmp_path / "s.py"
    f.write_text(STUDY)
    out = tmp_path / "out"
    args = ["study", str(f), "--out", str(out), "--workers", "1", "--quiet", "--device", "cpu",
            "--gpus-per-run", "0", "--deterministic"]
    assert cli.main(args) == 0
    from shiftsim import store

    summaries = [store.run_state(out, rid).summary for rid in store.list_run_ids(out)]
    assert [(s["device"], s["determinism"]["deterministic_algorithms"]) for s in summaries] \
        == [("cpu", True), ("cpu", True)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where there is no CUDA")
def test_study_on_cuda_without_cuda_is_one_line(tmp_path, capsys):
    f = tmp_path / "s.py"
    f.write_text(STUDY)
    assert cli.main(["study", str(f), "--out", str(tmp_path / "o"), "--device", "cuda",
                     "--quiet"]) == 2
    assert capsys.readouterr().err == ("error: device 'cuda' asked for, but CUDA is not "
                                       "available here; use device='auto' or 'cpu'\n")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize("extra,expect", [
    (["--workers", "0"], "error: argument --workers: expected a positive integer, got '0'"),
    (["--backend", "dask"], "error: argument --backend: invalid choice: 'dask'"),
    (["--out", "{tmp}/file"], "error: --out '{tmp}/file' exists and is not a folder"),
    (["--out", "{tmp}/file/sub"], "error: --out '{tmp}/file/sub' cannot be created: '{tmp}/file' "
                                  "is a file, not a folder"),
    (["--out", "{tmp}/other"], "error: '{tmp}/other' holds the results of study 'another', "
                               "not 'cli-study'; use another folder"),
    (["--gpus-per-run", "-1"], "error: argument --gpus-per-run: expected a number >= 0 "
                               "(fractions share a GPU), got '-1'"),
    (["--gpus-per-run", "x"], "error: argument --gpus-per-run: expected a number, got 'x'"),
    (["--gpus-per-run", "0.5", "--device", "cpu"],
     "error: gpus_per_run=0.5 needs a CUDA device, but device 'cpu' runs on the CPU; use "
     "gpus_per_run=0 or device='cuda'"),
    (["--device", "tpu9"], "error: unknown device 'tpu9'; allowed: 'auto', 'cpu', 'cuda', "
                           "'cuda:N', 'mps'"),
    (["--backend", "ray", "--device", "cuda"],
     "error: device='cuda' on Ray needs gpus_per_run > 0 (e.g. 1, or 0.25 to share a GPU by 4 "
     "runs): Ray hides the GPUs from tasks that ask for none"),
])
def test_study_errors_are_one_line_exit_2(tmp_path, capsys, extra, expect):
    from shiftsim import store

    f = tmp_path / "s.py"
    f.write_text(STUDY)
    (tmp_path / "file").write_text("")
    store.write_study(tmp_path / "other", {"name": "another", "runs": []})
    args = ["study", str(f), "--out", str(tmp_path / "out"), "--quiet"]
    args += [a.format(tmp=tmp_path) for a in extra]
    try:
        code = cli.main(args)
    except SystemExit as exc:  # argparse errors exit from the parser
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(expect.format(tmp=tmp_path)) and err.count("\n") == 1


def test_run_out_help_says_where_the_run_is_written(tmp_path, capsys):
    sub = cli.build_parser()._subparsers._group_actions[0].choices["run"]
    text = " ".join(sub.format_help().split())
    assert "--out OUT also store the run in the results folder OUT (as a study does): " \
           "OUT/runs/<run id>/ with spec.json, trace.parquet" in text
    f = tmp_path / "ok.py"
    f.write_text("import shiftsim as ss\n"
                 "scenario = ss.Scenario(ss.data.digits(), [ss.Phase(5)], batch_size=8)\n")
    assert cli.main(["run", str(f), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    (folder,) = (tmp_path / "o" / "runs").iterdir()
    assert capsys.readouterr().out.strip().endswith(f"wrote {folder}")
    assert sorted(p.name for p in folder.iterdir()) == ["evals.parquet", "spec.json",
                                                         "summary.json", "trace.parquet"]


# -- scenario libraries: files that import their neighbours, and `shiftsim list scenarios` --

NEIGHBOUR = '''"""Helpers a study file imports from beside it."""
import shiftsim as ss


def tiny(rate):
    syn = ss.data.synthetic(n=200, dim=5, classes=3)
    return ss.label_flip_tasks(syn, rate=rate, tasks=2, steps_per_task=10, name=f"tiny {rate}")
'''

STUDY_OF_NEIGHBOURS = '''"""A study built from the helpers beside it."""
import shiftsim as ss
from shiftsim.study import Study

import tiny_library

study = Study("neighbours", [tiny_library.tiny(0.5)], model=ss.models.mlp(hidden=(8,)),
              optimizers=["sgdm"], seeds=1)
'''


def test_a_study_file_imports_modules_beside_it(tmp_path, capsys):
    import sys

    lib = tmp_path / "library"
    lib.mkdir()
    (lib / "tiny_library.py").write_text(NEIGHBOUR)
    (lib / "neighbours.py").write_text(STUDY_OF_NEIGHBOURS)
    before = list(sys.path)
    try:
        assert cli.main(["study", str(lib / "neighbours.py"), "--out", str(tmp_path / "out"),
                         "--workers", "1", "--quiet"]) == 0
        assert sys.path == before  # the file's folder was on sys.path only while it ran
    finally:
        sys.modules.pop("tiny_library", None)
    assert "neighbours: 1/1 runs complete" in capsys.readouterr().out


def test_load_python_file_restores_sys_path_when_the_file_raises(tmp_path):
    import sys

    from shiftsim.pyfile import load_python_file

    f = tmp_path / "broken.py"
    f.write_text(f"import sys\nassert sys.path[0] == {str(tmp_path.resolve())!r}\n"
                 "raise RuntimeError('no')\n")
    before = list(sys.path)
    with pytest.raises(cli.ShiftsimError, match=r"^broken.py at line 3 raised RuntimeError: no$"):
        load_python_file(f, "scenario")
    assert sys.path == before


def test_list_scenarios_names_every_file_of_the_library_with_its_summary(capsys, monkeypatch):
    root = cli.LIBRARY
    monkeypatch.chdir(root.parent)  # the checkout: ./scenarios is the library
    assert cli.main(["list", "scenarios"]) == 0
    lines = capsys.readouterr().out.splitlines()
    files = sorted(root.glob("*.py"))
    assert len(lines) == len(files) > 5
    for line, f in zip(lines, files):
        assert line.startswith(f"scenarios/{f.name} ")
    quick = next(line for line in lines if line.startswith("scenarios/quickstart.py "))
    assert quick.split(maxsplit=1)[1] == (
        "Quickstart scenario: digits, a clean warm-up, a full label permutation, then a "
        "gradual drift to rotated, noisy digits with the original labels back.")


def test_list_scenarios_prefers_the_current_folders_library(tmp_path, capsys, monkeypatch):
    lib = tmp_path / "scenarios"
    lib.mkdir()
    (lib / "mine.py").write_text('"""My shift. It has two sentences."""\n')
    (lib / "bare.py").write_text("x = 1\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["list", "scenarios"]) == 0
    assert capsys.readouterr().out.splitlines() == ["scenarios/bare.py  (no docstring)",
                                                    "scenarios/mine.py  My shift."]
    assert cli.main(["list", "scenarios", "--dir", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err == f"error: --dir {str(tmp_path / 'none')!r} is not a folder\n"


def test_the_demo_runs_the_scenario_file_it_names():
    import runpy

    from shiftsim import quickstart

    ns = runpy.run_path(str(cli.LIBRARY / "quickstart.py"))
    assert ns["scenario"] is quickstart.scenario and ns["optimizers"] is quickstart.optimizers
    assert list(quickstart.optimizers) == ["sgdm", "adam", "tam", "adamem_sgd", "momo"]


ARGPARSE_SCENARIO = SCENARIO + """
import argparse
parser = argparse.ArgumentParser()
parser.add_argument("--rate", type=float, default=1.0)
args = parser.parse_args()
"""


def test_a_scenario_file_with_its_own_argparse_sees_no_shiftsim_arguments(tmp_path, capsys,
                                                                            monkeypatch):
    import sys

    f = tmp_path / "parsed.py"
    f.write_text(ARGPARSE_SCENARIO)
    argv = ["shiftsim", "run", str(f), "--device", "cpu", "--quiet"]
    monkeypatch.setattr(sys, "argv", list(argv))  # what the file's parser must not see
    assert cli.main(argv[1:]) == 0
    assert "80 steps on cpu" in capsys.readouterr().out
    assert sys.argv == argv  # restored after the file ran


def test_output_into_a_closed_pipe_ends_quietly():
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "shiftsim.cli", "list", "scenarios"],
                            cwd=cli.LIBRARY.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before anything is printed (like `| head -0`)
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == cli.EXIT_PIPE
    assert err == ""  # no BrokenPipeError traceback, no "Exception ignored" at exit


class _ClosedPipe:
    """A standard output whose reader has gone."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        pass


def test_run_out_stores_the_run_before_printing_into_a_closed_pipe(tmp_path, monkeypatch):
    pytest.importorskip("shiftsim.store")
    import sys

    f = tmp_path / "sc.py"
    f.write_text(SCENARIO)
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert cli.main(["run", str(f), "--out", str(tmp_path / "run"), "--quiet",
                     "--device", "cpu"]) == cli.EXIT_PIPE
    assert len(list((tmp_path / "run").rglob("summary.json"))) == 1
