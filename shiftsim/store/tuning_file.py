"""``tuning.json``: a tuned study's selection, as the store keeps it and reads it back.

The study layer decides what to write (:mod:`shiftsim.study.selection` chooses each optimizer's
setting and builds the body); this module owns the file: its name and format, writing it
atomically, and reading it back as the tables :attr:`shiftsim.store.StudyResults.tuning` and
:attr:`~shiftsim.store.StudyResults.tuning_curves` give.

>>> table(None).empty, curves(None).empty
(True, True)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from .files import atomic_write_json, read_json

__all__ = ["TUNING_FILE", "TUNING_FORMAT", "curves", "read", "table", "write"]

TUNING_FILE = "tuning.json"
TUNING_FORMAT = 1


def write(out: str | Path, body: Mapping[str, Any]) -> Path:
    """Write ``tuning.json`` in the results folder ``out`` (atomically; ``format`` is set)."""
    return atomic_write_json(Path(out) / TUNING_FILE, {"format": TUNING_FORMAT, **body})


def read(out: str | Path) -> dict[str, Any] | None:
    """``tuning.json`` of a results folder, or None (an untuned study)."""
    try:
        body = read_json(Path(out) / TUNING_FILE)
    except (OSError, ValueError):
        return None
    return body if body.get("format") == TUNING_FORMAT else None


def table(body: dict[str, Any] | None, scenarios: list[str] | None = None) -> pd.DataFrame:
    """One row per scenario × model × optimizer: ``scenario``, ``model``, ``optimizer``, the
    chosen hyperparameters as columns (``lr`` ...), ``metric``, ``value`` (mean over tuning
    seeds), ``worst``, ``n``, ``eligible``, ``tolerance`` (decades) with ``tolerance_low`` /
    ``tolerance_high``, ``at_edge``, ``scope`` and ``tuned_on``."""
    cols = ["scenario", "model", "optimizer", "metric", "value", "worst", "n", "eligible",
            "tolerance", "tolerance_low", "tolerance_high", "at_edge", "scope", "tuned_on"]
    if not body:
        return pd.DataFrame(columns=cols)
    t = body.get("tuning", {})
    scope = t.get("scope", "")
    tuned_on = body.get("tuned_on") or []
    names = scenarios or tuned_on
    rows = []
    for c in body.get("choices", []):
        targets = [c["group"]] if c["group"] != "*" else names
        for scen in targets:
            row = {"scenario": scen, "model": c["model"], "optimizer": c["optimizer"]}
            row.update(c.get("chosen") or {})
            row.update({k: c.get(k) for k in cols if k not in row and k in c})
            row["scope"] = scope
            row["tuned_on"] = c["group"] if c["group"] != "*" else (
                ", ".join(tuned_on) if len(tuned_on) == 1 else "all scenarios pooled")
            rows.append(row)
    df = pd.DataFrame(rows)
    first = [c for c in ("scenario", "model", "optimizer") if c in df.columns]
    hp = [c for c in df.columns if c not in cols]
    return df[first + hp + [c for c in cols if c in df.columns and c not in first]]


def curves(body: dict[str, Any] | None) -> pd.DataFrame:
    """Every tuned grid point: group, model, optimizer, the hyperparameters, ``mean``,
    ``low``, ``high``, ``worst``, ``n``, ``eligible``, ``chosen``."""
    return pd.DataFrame((body or {}).get("curves") or [])
