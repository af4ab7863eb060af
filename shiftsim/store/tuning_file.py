"""``tuning.json``: a tuned study's selection, as the store keeps it and reads it back.

The study layer decides what to write (:mod:`shiftsim.study.selection` chooses each optimizer's
setting and builds the body); this module owns the file: its name and format, writing it
atomically, and reading it back as the tables :attr:`shiftsim.store.StudyResults.tuning` and
:attr:`~shiftsim.store.StudyResults.tuning_curves` give.

>>> table(None).empty, curves(None).empty
(True, True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .files import atomic_write_json, read_json

__all__ = ["TUNING_FILE", "TUNING_FORMAT", "curves", "read", "table", "tolerance_differences",
           "write"]

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
    ``tolerance_high`` and ``tolerance_open`` (the grid's ends its good range reaches: a lower
    bound), ``at_edge``, ``scope`` and ``tuned_on``."""
    cols = ["scenario", "model", "optimizer", "metric", "value", "worst", "n", "eligible",
            "tolerance", "tolerance_low", "tolerance_high", "tolerance_open", "at_edge", "scope",
            "tuned_on"]
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


def tolerance_differences(body: dict[str, Any] | None, baseline: str,
                          scenarios: list[str] | None = None) -> pd.DataFrame:
    """Each optimizer's tolerance minus the baseline's, per scenario and model: the point
    difference and a 95 % percentile interval from the paired bootstrap replicates (every
    optimizer of a group was resampled on the same tuning seeds), and a test over the tuning
    seeds: each seed's own tolerance (``tolerance_seeds``) paired by seed, ``n`` pairs,
    ``wins`` / ``losses`` (seeds where the optimizer's is wider / narrower) and ``p``, the
    two-sided Wilcoxon signed-rank p-value of those differences
    (:func:`shiftsim.metrics.paired_p_value`; NaN where the choices predate per-seed
    tolerances). Empty without replicates.

    Columns: ``scenario``, ``model``, ``optimizer``, ``baseline``, ``difference``, ``low``,
    ``high``, ``n``, ``wins``, ``losses``, ``p``, and ``open`` / ``baseline_open`` (the ends of
    the grid that each one's good range reaches: its tolerance is then a lower bound).

    >>> body = {"choices": [
    ...     {"group": "s", "model": "m", "optimizer": "a", "tolerance": 2.0,
    ...      "tolerance_boot": [2.0, 1.5, 2.0]},
    ...     {"group": "s", "model": "m", "optimizer": "b", "tolerance": 1.0,
    ...      "tolerance_boot": [1.0, 1.0, 1.5]}]}
    >>> tolerance_differences(body, "b")[["optimizer", "difference"]].values.tolist()
    [['a', 1.0]]
    >>> for c, t in zip(body["choices"], ([2.0, 2.5, 1.5, 2.0, 2.0], [1.0, 1.0, 1.0, 1.5, 1.0])):
    ...     c["tolerance_seeds"] = [[seed, x] for seed, x in enumerate(t)]
    >>> tolerance_differences(body, "b")[["n", "wins", "losses", "p"]].to_dict("records")
    [{'n': 5, 'wins': 5, 'losses': 0, 'p': 0.0625}]
    """
    from ..metrics import paired_p_value

    cols = ["scenario", "model", "optimizer", "baseline", "difference", "low", "high", "n",
            "wins", "losses", "p", "open", "baseline_open"]
    if not body:
        return pd.DataFrame(columns=cols)
    choices = body.get("choices") or []
    base = {(c["group"], c["model"]): c for c in choices if c["optimizer"] == baseline}
    names = scenarios or body.get("tuned_on") or []
    rows = []
    for c in choices:
        b = base.get((c["group"], c["model"]))
        if b is None or c["optimizer"] == baseline:
            continue
        x = np.array(c.get("tolerance_boot") or [], dtype=float)
        y = np.array(b.get("tolerance_boot") or [], dtype=float)
        if not x.size or x.size != y.size:
            continue
        d = x - y
        d = d[~np.isnan(d)]
        ta, tb = c.get("tolerance"), b.get("tolerance")
        diff = (math.nan if ta is None else ta) - (math.nan if tb is None else tb)
        low, high = (float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))) if d.size \
            else (math.nan, math.nan)
        own = dict((sd, t) for sd, t in c.get("tolerance_seeds") or [])
        theirs = dict((sd, t) for sd, t in b.get("tolerance_seeds") or [])
        per = np.array([own[sd] - theirs[sd] for sd in own if sd in theirs], dtype=float)
        per = per[~np.isnan(per)]
        test = {"n": int(per.size), "wins": int((per > 0).sum()),
                "losses": int((per < 0).sum()),
                "p": paired_p_value(per, "wilcoxon") if per.size else math.nan}
        for scen in ([c["group"]] if c["group"] != "*" else names):
            rows.append({"scenario": scen, "model": c["model"], "optimizer": c["optimizer"],
                         "baseline": baseline, "difference": diff, "low": low, "high": high,
                         **test, "open": c.get("tolerance_open") or "",
                         "baseline_open": b.get("tolerance_open") or ""})
    return pd.DataFrame(rows, columns=cols)

