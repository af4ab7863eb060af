"""Tune, then test: each optimizer at its own best setting before it is compared.

A study that gives every optimizer one learning rate compares learning rates, not optimizers.
With ``Study(..., tuning=Tuning(...))`` a study first runs every optimizer over a grid of
hyperparameters on *tuning seeds*, picks each optimizer's best setting from those runs, and only
then runs the comparison on *evaluation seeds* that the selection never saw (docs/protocol.md):

* grids: per optimizer label, ``{"lr": [...], ...}`` (the cartesian product), or ``"auto"`` —
  the registry's default learning-rate grid for each optimizer family (log-spaced, three
  decades, seven points: :data:`DEFAULT_LRS`);
* the selection metric, averaged over the tuning seeds: ``"auto"`` (online accuracy against the
  stream's labels, or against the original labels when the scenario's shifts are label noise —
  ``other``, ``uniform``, a partial ``permute`` / ``pair`` below 0.5; at 0.5 and above a
  partial flip moves the majority of every class, so the original labels are the minority
  mapping and the stream's labels are scored), ``"online_acc"``,
  ``"online_acc_true"``, ``"deficit"`` (recovery deficit, lower is better; a run's shifts
  of one kind reduced by their median, several kinds by the mean of those; a kind of label
  noise, or of partial flips below 0.5, on the original labels) or a function of
  the tuning runs table returning one number per run (higher is better). A grid point where a
  tuning run diverged or failed is not eligible; ties go to the better worst seed;
* the scope: ``"per_scenario"`` (each optimizer's best on each scenario: the most favourable
  case for every optimizer) or ``"shared"`` (tuned once — on the scenario named by ``on``, or
  on all scenarios pooled — and used everywhere: what a practitioner who does not know the
  shift in advance would do);
* a chosen value at the edge of its grid is flagged; ``extend=True`` (or a number of rounds)
  widens the learning-rate grid by a decade on that side and tunes again;
* each optimizer's *tolerance*: the width in decades of the learning-rate range around its best
  whose mean metric stays within 95 % of the best, chance-normalised (MoMo's robustness claim),
  with a bootstrap interval over the tuning seeds.

Tuning runs are ordinary runs of the study (label ``stage="tune"``, their own run ids, fleets,
resume); the evaluation runs (``stage="eval"``) start once the selection is known, and the
selection is written to ``tuning.json`` in the results folder (``ss.store.load(...).tuning``).

>>> t = Tuning(grid={"sgdm": {"lr": [0.01, 0.1]}}, seeds=2)
>>> t.tuning_seeds(), t.scope, t.metric
([1000000, 1000001], 'per_scenario', 'auto')
>>> Tuning(scope="everywhere")
Traceback (most recent call last):
...
shiftsim.errors.ShiftsimError: unknown tuning scope 'everywhere'; allowed: 'per_scenario', 'shared'
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ShiftsimError, SpecTypeError, allowed, check_range
from .axes import seed_list

SCOPES = ("per_scenario", "shared")
METRICS = ("auto", "online_acc", "online_acc_true", "deficit")
#: tuning seed i is TUNING_SEED_BASE + i unless seeds are given: far from evaluation seeds
TUNING_SEED_BASE = 1_000_000
#: rounds of grid widening that ``extend=True`` allows
MAX_EXTENSIONS = 2
#: the fraction of the best (chance-normalised) that counts as "as good" for the tolerance
TOLERANCE_LEVEL = 0.95

_SGD_LRS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
_ADAM_LRS = (3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
#: default learning-rate grids per registry name (log-spaced, 3 decades, 7 points)
DEFAULT_LRS: dict[str, tuple[float, ...]] = {
    **{n: _SGD_LRS for n in ("sgd", "sgdm", "nesterov", "tam", "adamem_sgd")},
    **{n: _ADAM_LRS for n in ("adam", "adamw", "adatam", "adatamw", "adamem_adamw", "grams",
                              "grams_official")},
    "momo": (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0),
    "momo_adam": (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0),
}


def _check_grid(grid: Any) -> Any:
    if isinstance(grid, str):
        if grid != "auto":
            raise ShiftsimError(f"Tuning grid must be 'auto' or a dict optimizer -> "
                                f"{{hyperparameter: [values]}}, got {grid!r}")
        return grid
    if not isinstance(grid, Mapping) or not grid:
        raise ShiftsimError("Tuning grid must be 'auto' or a non-empty dict optimizer -> "
                            f"{{hyperparameter: [values]}}, got {grid!r}")
    out: dict[str, dict[str, tuple[Any, ...]]] = {}
    for label, hp in grid.items():
        if hp == "auto":
            out[str(label)] = {}
            continue
        if not isinstance(hp, Mapping) or not hp:
            raise ShiftsimError(f"Tuning grid[{label!r}] must be 'auto' or a non-empty dict "
                                f"hyperparameter -> [values], got {hp!r}")
        values: dict[str, tuple[Any, ...]] = {}
        for name, vals in hp.items():
            if isinstance(vals, (str, bytes)) or not isinstance(vals, (list, tuple, range,
                                                                       np.ndarray)):
                raise SpecTypeError(f"Tuning grid[{label!r}][{name!r}] must be a list of "
                                    f"values, got {vals!r}")
            vals = tuple(v.item() if isinstance(v, np.generic) else v for v in vals)
            if not vals:
                raise ShiftsimError(f"Tuning grid[{label!r}][{name!r}] is empty; give at least "
                                    "one value")
            if len(set(map(repr, vals))) != len(vals):
                raise ShiftsimError(f"Tuning grid[{label!r}][{name!r}] lists a value twice: "
                                    f"{list(vals)}")
            if name == "lr":
                for v in vals:
                    check_range(v, f"Tuning grid[{label!r}] learning rate", 0, None,
                                low_open=True)
            values[str(name)] = vals
        out[str(label)] = values
    return out


@dataclass(frozen=True)
class Tuning:
    """How a study tunes its optimizers before comparing them (see the module docstring).

    Args:
        grid: ``"auto"`` (every optimizer on its registry family's default learning-rate grid)
            or a dict optimizer label -> ``{hyperparameter: [values]}`` (or ``"auto"`` for that
            optimizer); optimizers of the study left out are not tuned.
        seeds: tuning seeds: a count (seeds 1,000,000 + i) or a list; disjoint from the
            study's evaluation seeds.
        scope: ``"per_scenario"`` or ``"shared"``.
        metric: ``"auto"``, ``"online_acc"``, ``"online_acc_true"``, ``"deficit"`` or a
            function ``runs -> one number per run`` (higher is better).
        on: with ``scope="shared"``, the label of the scenario to tune on (None: all
            scenarios pooled).
        extend: widen the learning-rate grid by a decade on the side where the best value sits
            at the edge and tune again: ``True`` (up to 2 rounds) or a number of rounds.
    """

    grid: Any = "auto"
    seeds: Any = 3
    scope: str = "per_scenario"
    metric: Any = "auto"
    on: str | None = None
    extend: bool | int = False
    _seeds: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", _check_grid(self.grid))
        seeds = seed_list(self.seeds, "Tuning seeds", TUNING_SEED_BASE)
        object.__setattr__(self, "_seeds", tuple(seeds))
        if self.scope not in SCOPES:
            raise allowed(self.scope, "tuning scope", SCOPES)
        if not callable(self.metric) and self.metric not in METRICS:
            raise allowed(self.metric, "tuning metric", [*METRICS, "<function of the runs>"])
        if self.on is not None:
            if not isinstance(self.on, str) or not self.on:
                raise SpecTypeError(f"Tuning on= must be a scenario label, got {self.on!r}")
            if self.scope != "shared":
                raise ShiftsimError("Tuning on= names the tuning scenario of scope='shared'; "
                                    f"scope is {self.scope!r}")
        if isinstance(self.extend, bool):
            rounds = MAX_EXTENSIONS if self.extend else 0
        elif isinstance(self.extend, int) and self.extend >= 0:
            rounds = self.extend
        else:
            raise ShiftsimError(f"Tuning extend must be True, False or a number of rounds >= 0, "
                                f"got {self.extend!r}")
        object.__setattr__(self, "extend", rounds)

    # -- what is tuned ------------------------------------------------------------------------
    def tuning_seeds(self) -> list[int]:
        return list(self._seeds)

    def grid_of(self, label: str, optimizer: Any) -> dict[str, tuple[Any, ...]] | None:
        """The grid of one optimizer of the study (None: not tuned)."""
        if self.grid == "auto":
            hp: dict[str, tuple[Any, ...]] | None = {}
        else:
            hp = self.grid.get(label)
        if hp is None:
            return None
        if hp:
            return dict(hp)
        lrs = DEFAULT_LRS.get(optimizer.name)
        if lrs is None:
            raise ShiftsimError(f"no default tuning grid for optimizer {label!r} "
                                f"({optimizer.name}); give one: Tuning(grid={{{label!r}: "
                                "{'lr': [...]}})")
        return {"lr": lrs}

    def check(self, scenarios: Sequence[str], optimizers: Mapping[str, Any],
              eval_seeds: Sequence[int]) -> None:
        """Refuse what cannot be run, before any run starts."""
        if self.grid != "auto":
            unknown = [k for k in self.grid if k not in optimizers]
            if unknown:
                raise ShiftsimError(f"Tuning grid names optimizer {unknown[0]!r}, which is not "
                                    f"in the study; optimizers: {', '.join(map(repr, optimizers))}")
        both = sorted(set(self._seeds) & set(eval_seeds))
        if both:
            raise ShiftsimError(f"tuning seeds and evaluation seeds must be disjoint; both have "
                                f"{both[:5]}")
        if self.on is not None and self.on not in scenarios:
            raise ShiftsimError(f"Tuning on={self.on!r} is not a scenario of the study; "
                                f"scenarios: {', '.join(map(repr, scenarios))}")
        for label, opt in optimizers.items():
            for point in points(self.grid_of(label, opt) or {}):
                opt.replace(**point)  # unknown or invalid hyperparameters raise here

    def tuning_scenarios(self, scenarios: Sequence[str]) -> list[str]:
        """The scenarios tuned on."""
        if self.scope == "shared" and self.on is not None:
            return [self.on]
        return list(scenarios)

    def group_of(self, scenario: str) -> str:
        """The selection group a scenario's tuning runs belong to (``*``: all, shared)."""
        return scenario if self.scope == "per_scenario" else "*"

    def to_dict(self) -> dict[str, Any]:
        metric = self.metric if isinstance(self.metric, str) else getattr(
            self.metric, "__qualname__", repr(self.metric))
        grid = self.grid if self.grid == "auto" else {
            k: {n: list(v) for n, v in hp.items()} for k, hp in self.grid.items()}
        return {"grid": grid, "seeds": self.tuning_seeds(), "scope": self.scope,
                "metric": metric, "on": self.on, "extend": self.extend}


def points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every grid point (the cartesian product), learning rates ascending first.

    >>> points({"lr": [0.1, 0.01], "momentum": [0.9]})
    [{'lr': 0.01, 'momentum': 0.9}, {'lr': 0.1, 'momentum': 0.9}]
    """
    if not grid:
        return []
    names = sorted(grid, key=lambda n: (n != "lr", n))
    lists = [sorted(grid[n]) if all(isinstance(v, (int, float)) for v in grid[n])
             else list(grid[n]) for n in names]
    return [dict(zip(names, combo)) for combo in itertools.product(*lists)]


def widen(values: Sequence[float], side: str) -> list[float]:
    """The learning rates one decade beyond ``side`` ("low" / "high"): the grid's own points of
    its last (first) decade, moved up (down) by a factor of 10.

    >>> widen([0.01, 0.03, 0.1], "high")
    [0.3, 1.0]
    >>> widen([0.001, 0.003, 0.01], "low")
    [0.0001, 0.0003]
    >>> widen([0.5], "high")
    [5.0]
    """
    v = sorted(float(x) for x in values)
    if side == "high":
        top = [x for x in v if x > v[-1] / 10 * (1 + 1e-9)] or v[-1:]
        new = [x * 10 for x in top]
    else:
        bottom = [x for x in v if x < v[0] * 10 * (1 - 1e-9)] or v[:1]
        new = [x / 10 for x in bottom]
    return [float(f"{x:.3g}") for x in new]


# ----------------------------------------------------------------------------------------------
# selection


def metric_values(runs: pd.DataFrame, metric: Any, noise: Mapping[str, bool],
                  deficits: pd.Series | None = None) -> pd.Series:
    """One selection score per tuning run (higher is better), indexed like ``runs``.

    ``noise``: scenario -> True when its shifts are label noise (``"auto"`` then scores the
    original labels); ``deficits``: per run_id, the recovery deficit (for ``"deficit"``).
    """
    if callable(metric):
        out = metric(runs)
        try:
            out = pd.Series(out, index=runs.index, dtype=np.float64)
        except (TypeError, ValueError):
            raise ShiftsimError("a tuning metric function must return one number per run "
                                "(higher is better)") from None
        return out
    if metric == "auto":
        true = runs["scenario"].map(lambda s: bool(noise.get(s))).astype(bool)
        return runs["online_acc_true"].where(true, runs["online_acc"]).astype(np.float64)
    if metric == "deficit":
        d = runs["run_id"].map(deficits if deficits is not None else {}).astype(np.float64)
        return -d
    return runs[metric].astype(np.float64)


def metric_name(metric: Any, noisy: bool) -> str:
    if callable(metric):
        return getattr(metric, "__name__", "custom")
    if metric == "auto":
        return "online_acc_true" if noisy else "online_acc"
    return str(metric)


def curve(rows: pd.DataFrame, hp_names: Sequence[str]) -> pd.DataFrame:
    """Per grid point: ``mean``, ``worst``, ``n`` seeds, ``low`` / ``high`` (Student-t 95 %)
    and ``eligible`` (no run diverged or failed)."""
    from .. import metrics

    names = list(hp_names)
    # the grid points in groupby's order (sorted, NaN last), each point's rows in their order;
    # arrays, not a frame per point (the robustness league's 286 curves: 1.09 -> 0.43 s)
    codes = rows.groupby(names, sort=True, dropna=False).ngroup().to_numpy()
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(codes.max() + 1 if codes.size else 0))
    ends = np.r_[starts[1:], codes.size]
    score = rows["score"].to_numpy(np.float64)
    good = (rows["status"].eq("ok") & rows["score"].notna()).to_numpy(bool)
    keys = {n: rows[n] for n in names}
    out = []
    for lo, hi in zip(starts, ends):
        idx = order[lo:hi]
        ok = good[idx]
        vals = score[idx][ok]
        mean, low, high = metrics.mean_interval(vals)
        out.append({**{n: keys[n].iloc[idx[0]] for n in names}, "mean": mean, "low": low,
                    "high": high, "worst": float(vals.min()) if vals.size else math.nan,
                    "n": int(ok.sum()), "runs": int(idx.size), "eligible": bool(ok.all())})
    return pd.DataFrame(out)


def choose(points_df: pd.DataFrame) -> int:
    """Index of the chosen grid point: the best mean among eligible points (ties: the better
    worst seed); without eligible points, among those with the most completed seeds."""
    cand = points_df[points_df["eligible"] & points_df["mean"].notna()]
    if cand.empty:
        cand = points_df[points_df["mean"].notna()]
        if cand.empty:
            return int(points_df.index[0])
        cand = cand[cand["n"] == cand["n"].max()]
    best = cand["mean"].max()
    tied = cand[cand["mean"] >= best - 1e-12]
    return int(tied["worst"].idxmax()) if len(tied) > 1 else int(tied.index[0])


def tolerance(lrs: np.ndarray, means: np.ndarray, eligible: np.ndarray, best: int,
              chance: float | None) -> float:
    """Width in decades of the contiguous learning-rate range around ``best`` whose mean stays
    within :data:`TOLERANCE_LEVEL` of the best: (m − χ) ≥ 0.95 (m_best − χ) for accuracies
    (``chance`` χ), or (m − worst) ≥ 0.95 (m_best − worst) for other metrics (χ None).

    >>> tolerance(np.array([0.01, 0.1, 1.0]), np.array([0.5, 0.9, 0.88]),
    ...           np.array([True, True, True]), 1, 0.1)
    1.0
    """
    return float(_tolerances(lrs, np.asarray(means, np.float64)[None, :],
                             np.asarray(eligible, bool)[None, :],
                             np.array([best]), chance)[0])


#: bootstrap resamples of a tolerance (the same resampled seeds for every optimizer of a
#: group, so two optimizers' replicates are paired)
TOLERANCE_BOOT = 1000


def _bootstrap_tolerance(g: pd.DataFrame, lrs: np.ndarray, chance: float | None,
                         n_boot: int = TOLERANCE_BOOT, seed: int = 0
                         ) -> tuple[float, float, list[float]]:
    """Percentile interval of the tolerance over resampled tuning seeds, and the replicates
    (NaN where a resample has no eligible point). The draws depend only on the number of
    tuning seeds, so every optimizer tuned on the same seeds gets the same resamples."""
    X, OK = _seed_tables(g, lrs)
    if X.shape[0] < 2:
        return (math.nan, math.nan, [])
    rng = np.random.default_rng(seed)
    # all resamples at once (the same draws as one ``integers(0, n, n)`` call per resample)
    idx = rng.integers(0, X.shape[0], (n_boot, X.shape[0]))
    with warnings.catch_warnings():  # an all-NaN column (every run diverged): NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(X[idx], axis=1)  # (resamples, lrs)
    elig = OK[idx].all(axis=1)
    # each resample's best: its first highest eligible mean
    best = np.argmax(np.where(elig & ~np.isnan(means), means, -np.inf), axis=1)
    out = _tolerances(lrs, means, elig, best, chance)
    vals = out[~np.isnan(out)]
    if not vals.size:
        return (math.nan, math.nan, out.tolist())
    return (float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975)), out.tolist())


def seed_tolerances(g: pd.DataFrame, lrs: np.ndarray, chance: float | None
                    ) -> list[list[float]]:
    """Each tuning seed's own tolerance: :func:`tolerance` of that seed's curve around that
    seed's best eligible learning rate (its first highest score), as ``[seed, decades]`` pairs
    in seed order (NaN where the seed has no eligible point). Two optimizers tuned on the same
    seeds pair these by seed, so that a difference of tolerances can be tested over seeds.

    >>> g = pd.DataFrame({"seed": [0, 0, 0, 1, 1, 1], "lr": [0.01, 0.1, 1.0] * 2,
    ...                   "score": [0.5, 0.9, 0.88, 0.9, 0.89, 0.3], "ok": True})
    >>> seed_tolerances(g, np.array([0.01, 0.1, 1.0]), 0.1)
    [[0, 1.0], [1, 1.0]]
    """
    seeds = np.unique(g["seed"].to_numpy())
    X, OK = _seed_tables(g, lrs)
    if not X.size:
        return []
    best = np.argmax(np.where(OK & ~np.isnan(X), X, -np.inf), axis=1)
    tol = _tolerances(lrs, X, OK, best, chance)
    return [[_plain(sd), float(t)] for sd, t in zip(seeds, tol)]


def _seed_tables(g: pd.DataFrame, lrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Seeds (sorted) x ``lrs``: each seed's first non-NaN ``score`` at each learning rate
    (NaN where none) and whether all its runs there are ``ok`` (False where it has none): the
    numbers of pandas' ``pivot_table`` (``aggfunc="first"`` and ``"all"``), rows whose lr is
    not in ``lrs`` left out, with one difference: a seed without any score keeps its row in
    both tables (``pivot_table`` dropped it from the scores only, so the two tables' rows no
    longer belonged to the same seeds). [speed] 0.095 ms against 6.2 ms for the two
    ``pivot_table`` calls on 5 seeds x 7 learning rates; the robustness league's selection
    makes them for 286 groups (the whole selection 7.87 -> 5.61 s)."""
    seeds, row = np.unique(g["seed"].to_numpy(), return_inverse=True)
    col_of = {float(lr): j for j, lr in enumerate(lrs)}
    col = np.array([col_of.get(float(x), -1) for x in g["lr"].to_numpy(np.float64)],
                   dtype=np.int64)
    score = g["score"].to_numpy(np.float64)
    ok = g["ok"].to_numpy(bool)
    cell = row * len(lrs) + col  # flat index of each row's (seed, lr) cell
    keep = col >= 0
    seen = np.bincount(cell[keep], minlength=seeds.size * len(lrs)) > 0
    bad = np.bincount(cell[keep], weights=~ok[keep], minlength=seen.size) > 0
    X = np.full(seen.size, np.nan)
    has = np.flatnonzero(keep & ~np.isnan(score))
    _, first = np.unique(cell[has], return_index=True)  # each cell's first scored row
    X[cell[has][first]] = score[has][first]
    shape = (seeds.size, len(lrs))
    return X.reshape(shape), (seen & ~bad).reshape(shape)


def _tolerances(lrs: np.ndarray, means: np.ndarray, elig: np.ndarray, best: np.ndarray,
                chance: float | None, ends: bool = False) -> Any:
    """:func:`tolerance` of each row of ``means`` (rows x learning rates) around its ``best``
    column, vectorized over the rows; NaN where that point is not eligible or NaN. With
    ``ends``: also the first and last column of each row's range."""
    rows = np.arange(means.shape[0])
    ok = elig & ~np.isnan(means)
    if chance is not None:
        floor = np.full(means.shape[0], float(chance))
    else:  # the worst eligible mean (inf for a row without one: NaN below)
        floor = np.min(np.where(ok, means, np.inf), axis=1)
    top = means[rows, best] - floor
    good = ok & ((means - floor[:, None]) >= TOLERANCE_LEVEL * top[:, None] - 1e-12)
    lo, hi = best.copy(), best.copy()
    last = means.shape[1] - 1
    for _ in range(last):  # widen one step at a time while the neighbour stays good
        lo = np.where((lo > 0) & good[rows, np.maximum(lo - 1, 0)], lo - 1, lo)
        hi = np.where((hi < last) & good[rows, np.minimum(hi + 1, last)], hi + 1, hi)
    tol = np.where(ok[rows, best], np.log10(lrs[hi] / lrs[lo]), np.nan)
    return (tol, lo, hi) if ends else tol


def select(runs: pd.DataFrame, tuning: Tuning, hp_names: Mapping[str, Sequence[str]],
           grids: Mapping[tuple[str, str, str], Mapping[str, Sequence[Any]]],
           chance: Mapping[str, float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The selection: ``(choices, curves)``.

    ``runs``: the tuning runs with ``group``, ``model``, ``optimizer``, ``seed``, ``status``,
    ``score`` and one column per tuned hyperparameter; ``grids``: (group, model, optimizer) ->
    the grid it was tuned on; ``chance``: group -> the chance level of the metric (for the
    tolerance), missing for metrics that are not accuracies.

    ``choices``: one row per group × model × optimizer: ``chosen`` (dict), ``value`` (mean
    score), ``worst``, ``n``, ``eligible``, ``at_edge`` ("", "low", "high" per tuned
    hyperparameter, e.g. "lr:high"), ``tolerance`` (decades) with ``tolerance_low`` /
    ``tolerance_high`` (the bootstrap interval; ``tolerance_boot`` its replicates),
    ``tolerance_seeds`` (each tuning seed's own tolerance, :func:`seed_tolerances`) and
    ``tolerance_open`` ("low", "high", "low,high" or "": the ends of the grid that the good
    range reaches, where the tolerance is only a lower bound). ``curves``: every grid point's
    mean, interval and ``chosen`` flag.
    """
    rows, curves = [], []
    runs = runs.assign(ok=runs["status"].eq("ok") & runs["score"].notna())
    for (group, model, opt), g in runs.groupby(["group", "model", "optimizer"], sort=False):
        names = list(hp_names[opt])
        pts = curve(g, names).reset_index(drop=True)
        best = choose(pts)
        chosen = {n: _plain(pts.loc[best, n]) for n in names}
        grid = grids[(group, model, opt)]
        edges = []
        for n in names:
            vals = sorted(grid[n]) if all(isinstance(v, (int, float)) for v in grid[n]) else []
            if len(vals) > 1 and chosen[n] == vals[0]:
                edges.append(f"{n}:low")
            elif len(vals) > 1 and chosen[n] == vals[-1]:
                edges.append(f"{n}:high")
        row = {"group": group, "model": model, "optimizer": opt, "chosen": chosen,
               "value": pts.loc[best, "mean"], "worst": pts.loc[best, "worst"],
               "n": int(pts.loc[best, "n"]), "eligible": bool(pts.loc[best, "eligible"]),
               "at_edge": ",".join(edges), "points": len(pts),
               "tolerance": math.nan, "tolerance_low": math.nan, "tolerance_high": math.nan}
        if "lr" in names:
            others = {n: chosen[n] for n in names if n != "lr"}
            line = pts
            for n, v in others.items():
                line = line[line[n] == v]
            line = line.sort_values("lr")
            lrs = line["lr"].to_numpy(np.float64)
            pos = int(np.flatnonzero(line.index.to_numpy() == best)[0])
            ch = chance.get(group)
            tol, lo, hi = _tolerances(lrs, line["mean"].to_numpy(np.float64)[None, :],
                                      line["eligible"].to_numpy(bool)[None, :],
                                      np.array([pos]), ch, ends=True)
            row["tolerance"] = float(tol[0])
            # a good range that reaches the grid's end may go on past it: a lower bound
            row["tolerance_open"] = ",".join(
                side for side, at_end in (("low", lo[0] == 0), ("high", hi[0] == len(lrs) - 1))
                if at_end and len(lrs) > 1 and not math.isnan(row["tolerance"]))
            sub = g
            for n, v in others.items():
                sub = sub[sub[n] == v]
            low, high, boot = _bootstrap_tolerance(sub, lrs, ch)
            row["tolerance_low"], row["tolerance_high"] = low, high
            row["tolerance_boot"] = [round(x, 4) for x in boot]
            row["tolerance_seeds"] = [[sd, round(t, 4)] for sd, t in seed_tolerances(sub, lrs,
                                                                                     ch)]
        rows.append(row)
        pts = pts.assign(group=group, model=model, optimizer=opt,
                         chosen=pts.index == best)
        curves.append(pts)
    choices = pd.DataFrame(rows)
    curves_df = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
    return choices, curves_df


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def describe_chosen(chosen: Mapping[str, Any]) -> str:
    """``lr=0.03, momentum=0.9``.

    >>> describe_chosen({"lr": 0.03})
    'lr=0.03'
    """
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in chosen.items())
