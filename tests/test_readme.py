"""The README's Python example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_mentions_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def test_the_first_python_example_runs_as_written(capsys):
    code = _python_blocks()[0]
    assert len(code.strip().splitlines()) <= 20
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "online_acc" in out and "recovery_steps" in out
    assert len(namespace["result"].trace) == 900


def test_the_fleet_example_runs_as_written(capsys):
    code = next(b for b in _python_blocks() if "ss.run_fleet(" in b)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    results = namespace["results"]
    assert len(results) == 16 and all(len(r.trace) == 400 for r in results)
    assert {r.info["learner"]["optimizer"]["name"] for r in results} == {"sgdm", "tam"}
    printed = capsys.readouterr().out
    assert printed.count(",") == 15


def test_the_custom_shift_example_runs_as_written(capsys):
    code = next(b for b in _python_blocks() if "class DeadPixels" in b)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert len(result.trace) == 400
    summary = result.summary()
    assert list(summary["name"]) == ["clean", "deadpixels 0.5"]
    assert "deadpixels 0.5" in capsys.readouterr().out
    # the shift really applies: the stream's phase-1 inputs have the regime's dark pixels
    import torch

    from shiftsim.stream import Stream

    stream = Stream(namespace["scenario"], 0, torch.device("cpu"))
    plan = stream.plan(1)
    x = torch.stack([plan.inputs(s, stream.noise) for s in range(20)])
    dark = (x == 0).all(dim=(0, 1, 2))  # (8, 8): dark in every sample of 20 batches
    assert 20 <= int(dark.sum()) <= 48
    x0 = torch.stack([stream.plan(0).inputs(s, stream.noise) for s in range(20)])
    assert int((x0 == 0).all(dim=(0, 1, 2)).sum()) < int(dark.sum())
