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


def test_the_readme_links_only_to_files_of_the_repository():
    root = README.parent
    text = README.read_text()
    assert "../shared" not in text and "DESIGN.md" not in text
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [ln for ln in links if not ln.startswith(("http://", "https://"))]
    assert "docs/metrics.md" in local and "docs/architecture.md" in local
    for link in local:
        assert (root / link).exists(), link
    for doc in ("docs/metrics.md", "docs/architecture.md"):
        body = (root / doc).read_text()
        for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", body):
            if not link.startswith(("http://", "https://")):
                assert (root / doc).parent.joinpath(link).exists(), (doc, link)


def test_no_project_file_refers_to_the_working_material():
    import subprocess

    import pytest

    root = README.parent
    listed = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    files = listed.stdout.split()
    bad = []
    for name in files:
        path = root / name
        if path.suffix in (".png", ".npz", ".parquet") or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for needle in ("../shared", "specs/metrics.md", "specs/shifts.md", "specs/optimizers.md",
                       "DESIGN.md"):
            if needle in text and name != "tests/test_readme.py":
                bad.append((name, needle))
    assert bad == []
