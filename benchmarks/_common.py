"""Helpers shared by the benchmark scripts: interleaved timing and a table printer."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(fns: dict[str, Callable[[], object]], rounds: int = 5,
                warmup: int = 1) -> dict[str, list[float]]:
    """Time each function ``rounds`` times, interleaving them round by round so that machine
    noise hits all of them alike. Returns the seconds of every round per name."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def paired_ratios(a: list[float], b: list[float]) -> list[float]:
    """Per-round ratios a/b (rounds were interleaved, so each pair saw the same conditions)."""
    return [x / y for x, y in zip(a, b)]
