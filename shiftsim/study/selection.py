"""The tuning selection of a study, from its stored tuning runs to ``tuning.json``.

:func:`select_from_store` reads the tuning runs of a results folder, scores them with the
study's :class:`~shiftsim.study.tuning.Tuning` metric and picks each optimizer's setting
(:func:`shiftsim.study.tuning.select`); :func:`write` stores the choice (``tuning.json``, written
atomically before any evaluation run starts, by :mod:`shiftsim.store.tuning_file`, which also
reads it back: its :func:`~shiftsim.store.tuning_file.table` is the one-row-per scenario ×
optimizer DataFrame that ``ss.store.load(...).tuning`` gives).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .. import store
from ..errors import ShiftsimError
from ..store import tuning_file
from .tuning import metric_name, metric_values, select, widen

if TYPE_CHECKING:  # pragma: no cover
    from .grid import StudyGrid


def _noise(phases: pd.DataFrame) -> dict[str, bool]:
    """scenario -> True when a shifted phase of it carries label noise around a concept that
    the original labels express: ``other``, ``uniform``, or a partial ``permute`` / ``pair``
    below 0.5 (the protocol tunes those on the original labels). A partial concept shift of
    0.5 or more moves the majority of every class: there the original labels are the
    minority mapping, and scoring them would reward not learning the concept, so such a
    scenario is tuned on the stream's labels like a full concept shift."""
    if phases.empty or "label_kind" not in phases.columns:
        return {}
    from ..metrics import original_label_rows

    shifted = phases["shifted"].astype(bool) if "shifted" in phases else phases["phase"] > 0
    return (shifted & original_label_rows(phases)).groupby(phases["scenario"]).any().to_dict()


def _run_deficits(ph: pd.DataFrame, runs: pd.DataFrame) -> pd.Series:
    """run_id -> the recovery deficit a tuning on ``"deficit"`` scores: each kind of shift of
    the run reduced by its median (:func:`shiftsim.metrics.run_recovery`), against the
    original labels (``deficit_true``) for a kind judged on them (label noise, a partial flip
    below 0.5: :func:`shiftsim.metrics.judged_on_original`), else the stream's; then the mean
    over the run's kinds (each kind once), as reports judge them."""
    from .. import metrics

    out = pd.Series(np.nan, index=pd.Index(runs["run_id"].tolist()), dtype=float)
    if ph.empty:
        return out
    if "shift_kind" not in ph.columns:
        ph = ph.assign(shift_kind="")
    ph = ph.assign(shift_kind=ph["shift_kind"].fillna("").astype(str))
    original = metrics.original_label_rows(ph) & ph["shifted"].astype(bool)
    on_true = original.groupby([ph["scenario"], ph["shift_kind"]]).any()
    red = metrics.run_recovery(ph)[["run_id", "shift_kind", "deficit"]]
    if "deficit_true" in ph.columns:
        red = red.merge(metrics.run_recovery(ph, suffix="_true")[
            ["run_id", "shift_kind", "deficit_true"]], on=["run_id", "shift_kind"], how="left")
    else:
        red["deficit_true"] = np.nan
    scen = runs.set_index("run_id")["scenario"]
    red["scenario"] = red["run_id"].map(scen)
    use = on_true.reindex(pd.MultiIndex.from_frame(red[["scenario", "shift_kind"]])) \
        .fillna(False).to_numpy(bool)
    missing = red.loc[use & red["deficit_true"].isna(), "scenario"].dropna().unique()
    if len(missing):
        raise ShiftsimError(
            f"tuning on the recovery deficit needs the clean-label deficit of "
            f"{', '.join(map(str, missing[:4]))}, which these runs lack (stored before "
            "partial flips below 0.5 were judged on the original labels): run the study "
            "again into a new folder")
    red["score"] = np.where(use, red["deficit_true"], red["deficit"])
    mean = red.groupby("run_id", sort=False)["score"].mean()
    out.loc[mean.index] = mean.to_numpy()
    return out


def _chance(phases: pd.DataFrame, column: str) -> dict[str, float]:
    """scenario -> the stream's chance level: the phases' chance weighted by their steps."""
    if phases.empty or column not in phases.columns:
        return {}
    ph = phases.drop_duplicates(["scenario", "phase"])
    w = ph["steps"].astype(float)
    num = (ph[column].astype(float) * w).groupby(ph["scenario"]).sum()
    return (num / w.groupby(ph["scenario"]).sum()).to_dict()


def select_from_store(study: StudyGrid, out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score the study's tuning runs stored in ``out`` and choose (see :func:`select`)."""
    tuning = study.tuning
    assert tuning is not None
    ids = [s.run_id for s in study.tuning_grid()]
    res = store.load(out)
    runs = res.runs[res.runs["run_id"].isin(ids)].copy()
    if runs.empty:
        raise ShiftsimError(f"no tuning run of study {study.name!r} in {str(out)!r}")
    phases = res.run_phases[res.run_phases["run_id"].isin(ids)]
    noise = _noise(phases)
    deficits = None
    if tuning.metric == "deficit":
        deficits = _run_deficits(res.phases[res.phases["run_id"].isin(ids)], runs)
    runs["score"] = metric_values(runs, tuning.metric, noise, deficits)
    runs["group"] = runs["scenario"].map(tuning.group_of)
    hp_names: dict[str, list[str]] = {}
    grids: dict[tuple[str, str, str], dict[str, Any]] = {}
    for (group, model, opt), g in runs.groupby(["group", "model", "optimizer"], sort=False):
        scen = str(g["scenario"].iloc[0])
        grid = study.tuned_grid(scen, str(model), str(opt))
        assert grid is not None
        grids[(group, model, opt)] = grid
        hp_names[opt] = [n for n in sorted(grid, key=lambda n: (n != "lr", n))]
        for n in hp_names[opt]:
            if n not in runs.columns:
                raise ShiftsimError(f"tuning runs lack the label {n!r}")
    chance: dict[str, float] = {}
    if tuning.metric in ("auto", "online_acc", "online_acc_true"):
        stream, true = _chance(phases, "chance"), _chance(phases, "chance_true")
        for scen in runs["scenario"].unique():
            name = metric_name(tuning.metric, bool(noise.get(scen)))
            value = (true if name.endswith("_true") else stream).get(scen, math.nan)
            chance.setdefault(tuning.group_of(scen), [])  # type: ignore[arg-type]
            chance[tuning.group_of(scen)].append(value)  # type: ignore[union-attr]
        chance = {k: float(np.nanmean(v)) for k, v in chance.items()}  # type: ignore[arg-type]
    choices, curves = select(runs, tuning, hp_names, grids, chance)
    groups = runs.groupby("group")["scenario"].agg(lambda x: sorted(set(map(str, x))))
    choices["metric"] = [
        metric_name(tuning.metric, any(noise.get(sc) for sc in groups[g]))
        for g in choices["group"]]
    choices["chance"] = choices["group"].map(chance)
    return choices, curves


def widenings(study: StudyGrid, choices: pd.DataFrame) -> dict[tuple[str, str, str], list[float]]:
    """Learning rates to add where the chosen one sits at its grid's edge (``extend``)."""
    out = {}
    for r in choices.itertuples():
        edge = [e for e in str(r.at_edge).split(",") if e.startswith("lr:")]
        if not edge:
            continue
        grid = study.tuned_grid(_any_scenario(study, r.group), r.model, r.optimizer)
        assert grid is not None
        out[(r.group, r.model, r.optimizer)] = widen(grid["lr"], edge[0].split(":")[1])
    return out


def _any_scenario(study: StudyGrid, group: str) -> str:
    assert study.tuning is not None
    return group if group != "*" else study.tuning.tuning_scenarios(list(study.scenarios))[0]


def write(study: StudyGrid, out: Path, choices: pd.DataFrame, curves: pd.DataFrame) -> Path:
    """Write ``tuning.json``: the tuning settings, the choice per group, model and optimizer,
    and every grid point's score (for the report's sensitivity figure)."""
    assert study.tuning is not None
    body = {
        "study": study.name, "tuning": study.tuning.to_dict(),
        "evaluation_seeds": list(study.seeds),
        "tuned_on": study.tuning.tuning_scenarios(list(study.scenarios)),
        "choices": choices.to_dict(orient="records"),
        "curves": curves.to_dict(orient="records"),
    }
    return tuning_file.write(out, body)
