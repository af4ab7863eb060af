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
