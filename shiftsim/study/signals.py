"""Ctrl-C in a study: the driver handles it, workers never see it.

* :func:`defer_sigint` — the driver delays Ctrl-C while it writes a run, so a run's files are
  written whole or not at all;
* :func:`sigint_ignored` — SIGINT is ignored while worker processes start: a process started
  with SIGINT ignored keeps ignoring it (Python leaves an inherited ``SIG_IGN`` alone), so a
  Ctrl-C that reaches a worker still importing never prints its traceback;
* :func:`ignore_sigint` — what a worker does first: Ctrl-C is the driver's business.

>>> with defer_sigint():
...     pass  # a Ctrl-C here would be raised as KeyboardInterrupt after the block
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["defer_sigint", "ignore_sigint", "sigint_ignored"]


@contextlib.contextmanager
def defer_sigint() -> Iterator[None]:
    """Delay Ctrl-C until the block ends (a run's files are written whole or not at all)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[Any] = []
    old = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, lambda sig, frame: caught.append(frame))
    except (ValueError, OSError):  # pragma: no cover - no signals here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if caught:
            if callable(old):
                old(signal.SIGINT, caught[0])
            else:
                raise KeyboardInterrupt


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while worker processes are started (they inherit it); the driver handles
    Ctrl-C."""
    try:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: no signals to manage here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def ignore_sigint() -> None:
    """In a worker process: ignore Ctrl-C for good (the driver stops the workers)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
