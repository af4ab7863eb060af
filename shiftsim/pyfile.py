"""Run a user's Python file — a scenario or study file — and return what it defines.

The file runs as ``python file.py`` would run it, with three differences: its ``__name__`` is
``"__shiftsim__"`` (an ``if __name__ == "__main__":`` block does not run), ``sys.argv`` holds
only its path, and errors (``sys.exit()`` included) come back as one-line
:class:`~shiftsim.errors.ShiftsimError` messages that name the file and the line.
Its own folder is first on ``sys.path`` while it runs, so a file in ``scenarios/`` can
``import label_flips`` from beside it.

>>> import pathlib, tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     _ = (pathlib.Path(d) / "helper.py").write_text("RATE = 0.5\\n")
...     _ = (pathlib.Path(d) / "study.py").write_text(
...         "'''A study.\\n\\nMore.'''\\nimport helper\\nrate = helper.RATE\\n")
...     path = pathlib.Path(d) / "study.py"
...     load_python_file(path, "rate")["rate"], summary_line(path)
(0.5, 'A study.')

:func:`summary_line` reads what a file says about itself without running it.
"""

from __future__ import annotations

import ast
import os
import re
import runpy
import sys
import traceback
from pathlib import Path
from typing import Any

from .errors import ShiftsimError

__all__ = ["load_python_file", "summary_line"]


def load_python_file(path: str | os.PathLike, name: str) -> dict[str, Any]:
    """Execute a scenario/study file and return its globals; it must define ``name``.

    The file runs with ``__name__ == "__shiftsim__"``, so an ``if __name__ == "__main__":``
    block in it does not run. While it runs, its folder is first on ``sys.path`` (as with
    ``python file.py``), so it can import the modules beside it, and ``sys.argv`` is
    ``[path]``, so an argparse parser in it sees no arguments (not shiftsim's own); both are
    restored afterwards. A file that exits (``sys.exit()``, an argparse error) raises a
    one-line ShiftsimError instead of ending the program. (Spawned study workers receive
    pickled run specs and do not need that folder, unless the file's neighbours define classes
    the specs hold, such as a custom Shift: those must be importable in the workers, see
    ``check_portable``.)
    """
    p = Path(path)
    if not p.is_file():
        raise ShiftsimError(f"file not found: {str(p)!r}")
    if p.suffix != ".py":
        raise ShiftsimError(f"{str(p)!r} is not a Python file (.py)")
    folder = str(p.resolve().parent)
    sys.path.insert(0, folder)
    argv = sys.argv
    sys.argv = [str(p)]  # the file's own argparse, if any, sees no arguments (not shiftsim's)
    try:
        namespace = runpy.run_path(str(p), run_name="__shiftsim__")
    except ShiftsimError as exc:
        raise ShiftsimError(f"{p.name}: {exc}") from exc
    except SystemExit as exc:  # sys.exit() or an argparse error: it must not end shiftsim
        call = "sys.exit()" if exc.code is None else f"sys.exit({exc.code!r})"
        raise ShiftsimError(f"{p.name} called {call} while being loaded; a scenario file must "
                            f"define `scenario` (or `study`) without exiting") from None
    except SyntaxError as exc:
        raise ShiftsimError(f"{p.name}: syntax error at line {exc.lineno}: {exc.msg}") from exc
    except Exception as exc:  # the user's file raised: report where, in one line
        line = next((f.lineno for f in reversed(traceback.extract_tb(exc.__traceback__))
                     if Path(f.filename).resolve() == p.resolve()), None)
        where = f" at line {line}" if line else ""
        raise ShiftsimError(f"{p.name}{where} raised {type(exc).__name__}: {exc}") from exc
    finally:
        sys.argv = argv
        _remove_first(sys.path, folder)
    if name not in namespace:
        defined = sorted(k for k in namespace if not k.startswith("_"))[:10]
        raise ShiftsimError(f"{p.name} defines no {name!r}; it must define {name} = ... "
                            f"(found: {', '.join(defined) or 'nothing'})")
    return namespace


def _remove_first(paths: list[str], entry: str) -> None:
    """Remove the entry this module put first on ``paths`` (the file may have moved it)."""
    if paths and paths[0] == entry:
        del paths[0]
    elif entry in paths:
        paths.remove(entry)


#: the end of a sentence: . ? or ! before a space and a capital letter, or at the end
_SENTENCE_END = re.compile(r"[.?!](?=\s+[A-Z(]|$)")


def summary_line(path: str | os.PathLike) -> str:
    """The summary of a Python file on one line: the first sentence of its module docstring
    (its first paragraph joined, cut after the first full stop that ends a sentence), or ""
    when it has no docstring or cannot be parsed. The file is parsed, not run.
    """
    try:
        doc = ast.get_docstring(ast.parse(Path(path).read_text(encoding="utf-8")))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    if not doc:
        return ""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    end = _SENTENCE_END.search(paragraph)
    return paragraph[:end.end()] if end else paragraph
