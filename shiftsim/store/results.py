"""A results folder, loaded: :func:`load` gives a :class:`StudyResults` of tidy DataFrames
over every run of the study; :func:`write_indexes` writes the derived ``runs.parquet`` and
``phases.parquet`` (for DuckDB and pandas).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ShiftsimError
from ..metrics import SCORE_COLUMNS
from ..metrics.recovery import (
    PLAN_COLUMNS,
    _recovery_frame,
    plan_recovery_records,
    recovery_records,
)
from . import tuning_file
from .files import atomic_write_bytes, check_out_dir, parquet_bytes
from .runs import (
    COMPLETE,
    EVALS_FILE,
    RUNS_DIR,
    STATUSES,
    STUDY_FILE,
    TRACE_FILE,
    RunState,
    list_run_ids,
    read_study,
    run_dir,
    scan,
)

#: recovery rows per comparison group computed in this process (see
#: :meth:`StudyResults._group_recovery`), oldest dropped first
_GROUP_CACHE: dict[tuple[str, str, str], pd.DataFrame] = {}
_GROUP_CACHE_SIZE = 256

#: the label columns every run has (others, from custom axes, follow them)
LABEL_COLUMNS = ("scenario", "model", "optimizer", "optimizer_name", "lr", "severity", "seed")


def _label_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for c in LABEL_COLUMNS:
        if c not in df.columns:
            df[c] = np.nan if c in ("lr", "severity") else None
    df["lr"] = pd.to_numeric(df["lr"], errors="coerce").astype(float)
    df["severity"] = pd.to_numeric(df["severity"], errors="coerce").astype(float)
    seeds = pd.to_numeric(df["seed"], errors="coerce")
    df["seed"] = seeds.astype("Int64") if seeds.isna().any() else seeds.astype("int64")
    if "stage" not in df.columns:  # a study without tuning: every run is an evaluation run
        df["stage"] = "eval"
    df["stage"] = df["stage"].fillna("eval")
    return df


def _joined(df: pd.DataFrame, by: Sequence[str]) -> pd.Series:
    """Each row's ``by`` columns as strings joined by ``\\x1f`` (a comparison group's key;
    empty without ``by``), column by column: the same strings as a row-wise join
    (``agg("\\x1f".join, axis=1)``), which took 1.97 s against 2 ms over the robustness
    league's 31,489 phase rows."""
    if not by:
        return pd.Series("", index=df.index)
    out = df[by[0]].astype(str)
    for c in by[1:]:
        out = out + "\x1f" + df[c].astype(str)
    return out


def _in_step_order(trace: Mapping[str, np.ndarray]) -> bool:
    """Whether a trace's columns need none of :func:`~shiftsim.metrics.recovery_records`'
    checks and ordering: it has ``step``, ``phase``, ``n`` and ``correct``, its steps rise
    and its phases do not fall (what the store writes)."""
    if any(c not in trace for c in ("step", "phase", "n", "correct")):
        return False
    step, phase = trace["step"], trace["phase"]
    return bool(np.all(step[1:] > step[:-1]) and np.all(phase[1:] >= phase[:-1]))


class _Plans:
    """The runs' phase plans (``run_id``, ``phase`` and the ``PLAN_COLUMNS`` present; one row
    per run and phase), split by run on demand: a run's rows as dicts by phase
    (:meth:`rows`), or as a frame (:meth:`table`). [speed] Splitting them into a frame per run
    up front (``groupby``) made 8,200 frames for the robustness league, each a few hundred
    objects in reference cycles that only the garbage collector's full passes free."""

    def __init__(self, plans: pd.DataFrame) -> None:
        self.frame = plans
        self.positions = plans.groupby("run_id", sort=False).indices
        self.columns = [c for c in PLAN_COLUMNS if c in plans.columns]
        self.values = {c: plans[c].tolist() for c in ("phase", *self.columns)}

    def rows(self, run_id: str) -> dict[Any, dict[str, Any]] | None:
        """The run's plan rows by phase, in phase order, as ``recovery_records`` reads them;
        None without a ``ceiling`` column (``recovery_records`` then says it is missing)."""
        if "ceiling" not in self.columns:
            return None
        phase = self.values["phase"]
        order = sorted(self.positions[run_id].tolist(), key=phase.__getitem__)
        return {phase[i]: {c: self.values[c][i] for c in self.columns} for i in order}

    def table(self, run_id: str) -> pd.DataFrame:
        """The run's plan rows as a frame (its rows of the plans, in their order)."""
        return self.frame.take(self.positions[run_id])


def _ordered_columns(df: pd.DataFrame, first: Sequence[str]) -> pd.DataFrame:
    head = [c for c in first if c in df.columns]
    return df[head + [c for c in df.columns if c not in head]]


class StudyResults:
    """A results folder, loaded: tidy DataFrames over every run of the study.

    * ``runs``: one row per run: ``run_id``, the labels (``scenario``, ``model``, ``optimizer``,
      ``optimizer_name``, ``lr``, ``severity``, ``seed`` and any custom axis), ``status``
      (ok / diverged / failed / incomplete / pending), ``error``, ``diverged_step``, ``steps``,
      ``steps_run``, the stream scores (``online_acc``, ``online_acc_true``, ``acc``, ``bwt``,
      ``forgetting``, ``anytime_acc``), ``total_s``, ``ms_per_step``, ``device``. Failed,
      diverged, incomplete and pending runs are rows with their status, never dropped.
    * ``phases``: one row per run and phase: the run's labels and status, then the
      per-phase summary (``phase``, ``name``, ``online_acc``, ``recovery_steps``, ``censored``,
      ``drop``, ``deficit``, ``heldout_acc``, ``ceiling``, ``regime``, ...), with recovery timed
      against the study's common reference (recomputed from the traces on first use);
      ``run_phases`` holds the same rows as stored, each run against its own plateau;
      :meth:`stage_phases` one stage's rows (a tuned study's ``"eval"`` runs) without reading
      the other stage's traces.
    * ``evals``: every run's held-out evaluations with the run's labels (read on first use);
      :meth:`evals_of` those of some runs.
    * :meth:`trace` / :meth:`traces`: the per-step traces, read on demand.
    * ``study``: the ``study.json`` dict (None for a folder written by ``shiftsim run``).
    * ``problems``: ``{run_id: reason}`` for incomplete folders.
    """

    def __init__(self, path: Path, study: dict[str, Any] | None, states: dict[str, RunState],
                 label_rows: dict[str, dict[str, Any]]) -> None:
        self.path = path
        self.study = study
        self.states = states
        self._labels = label_rows
        self._evals: pd.DataFrame | None = None
        self._phases: pd.DataFrame | None = None
        self._stage_phases: dict[str, pd.DataFrame] = {}
        self.runs = self._build_runs()
        self.run_phases = self._build_phases()

    # -- frames -----------------------------------------------------------------------------
    def _build_runs(self) -> pd.DataFrame:
        rows = []
        for rid, st in self.states.items():
            s = st.summary or {}
            row: dict[str, Any] = {"run_id": rid, **self._labels.get(rid, {})}
            row["status"] = st.status
            row["error"] = s.get("error") if st.complete else (st.reason or None)
            row["diverged_step"] = s.get("diverged_step")
            row["steps"] = s.get("steps")
            row["steps_run"] = s.get("steps_run")
            scores = s.get("scores") or {}
            for c in SCORE_COLUMNS:
                row[c] = scores.get(c)
            timings = s.get("timings") or {}
            row["total_s"] = timings.get("total_s")
            row["ms_per_step"] = timings.get("ms_per_step")
            row["device"] = s.get("device")
            row["machine"] = s.get("machine")
            rows.append(row)
        if not rows:
            cols = ["run_id", *LABEL_COLUMNS, "status", "error", "diverged_step", "steps",
                    "steps_run", *SCORE_COLUMNS, "total_s", "ms_per_step", "device",
                    "machine"]
            return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
        df = _label_frame(rows)
        for c in (*SCORE_COLUMNS, "total_s", "ms_per_step"):
            df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
        for c in ("diverged_step", "steps", "steps_run"):
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
        first = ["run_id", *LABEL_COLUMNS]
        extra = sorted(c for c in df.columns if c not in first and c not in (
            "status", "error", "diverged_step", "steps", "steps_run", *SCORE_COLUMNS,
            "total_s", "ms_per_step", "device", "machine"))
        return _ordered_columns(df, [*first, *extra, "status"]).reset_index(drop=True)

    def _label_columns(self) -> list[str]:
        return [c for c in self.runs.columns if c in LABEL_COLUMNS or c not in (
            "status", "error", "diverged_step", "steps", "steps_run", *SCORE_COLUMNS,
            "total_s", "ms_per_step", "device", "machine")]

    def _build_phases(self) -> pd.DataFrame:
        keys = self.runs[[*self._label_columns(), "status"]]
        rows = []
        for rid, st in self.states.items():
            for r in (st.summary or {}).get("phases") or []:
                rows.append({"run_id": rid, **r})
        if not rows:
            return keys.iloc[0:0].assign(phase=pd.Series(dtype="int64"))
        ph = pd.DataFrame(rows)
        for c in ph.columns:
            if c not in ("run_id", "name", "label_kind", "transition", "shifts", "concept",
                         "shift_kind",
                         "censored", "dipped", "collapsed", "shifted", "censored_true",
                         "dipped_true", "collapsed_true"):
                ph[c] = pd.to_numeric(ph[c], errors="coerce")
        for c in ("censored", "dipped", "collapsed", "shifted", "censored_true",
                  "dipped_true", "collapsed_true"):
            if c in ph.columns:
                ph[c] = ph[c].astype("boolean").fillna(False).astype(bool)
        return keys.merge(ph, on="run_id", how="inner").reset_index(drop=True)

    @property
    def phases(self) -> pd.DataFrame:
        """One row per run and phase: the run's labels and status, the per-phase summary, and
        the recovery columns timed against the study's ``common`` reference.

        A single run is timed against its own plateau (what each ``summary.json`` holds, see
        :attr:`run_phases`); learners are only comparable against one target, so here every
        run of a scenario (and stage) is timed against the same reference per phase: the lower
        of the ceiling and the best mean plateau over seeds that any optimizer reached
        (:func:`shiftsim.metrics.common_reference`). The recovery columns are recomputed from
        the stored traces on first use (no file is rewritten).
        """
        if self._phases is None:
            self._phases = self._common_phases()
        return self._phases

    def stage_phases(self, stage: str) -> pd.DataFrame:
        """The rows of :attr:`phases` whose run has ``stage`` (``"eval"`` or ``"tune"`` in a
        tuned study; every run of an untuned study is ``"eval"``). The common reference is
        per scenario and stage, so only that stage's traces are read: a report, which uses the
        evaluation runs, skips the tuning runs' (5,340 of the robustness league's 8,200)."""
        if not isinstance(stage, str):
            raise ShiftsimError(f"stage must be a string such as 'eval' or 'tune', got "
                                f"{stage!r}")
        if self._phases is not None:
            ph = self._phases
            return ph[ph["stage"] == stage].reset_index(drop=True) if "stage" in ph else ph
        kept = self._stage_phases.get(stage)
        if kept is None:
            kept = self._stage_phases[stage] = self._common_phases(stage)
        return kept

    def _common_phases(self, stage: str | None = None) -> pd.DataFrame:
        from .. import metrics

        rows = self.run_phases
        if stage is not None and "stage" in rows.columns:
            rows = rows[rows["stage"] == stage].reset_index(drop=True)
        done = rows[rows["status"].isin(("ok", "diverged"))] if "status" in rows else rows
        if done.empty or "plateau" not in done.columns:
            return rows
        by = [c for c in ("scenario", "stage") if c in done.columns]
        ref = metrics.common_reference(done, by=by)
        key = _joined(ref, by)
        refs: dict[str, tuple[dict[int, float], dict[int, float]]] = {}
        for k, g in ref.groupby(key.to_numpy(), sort=False):
            refs[k] = (dict(zip(g["phase"].astype(int), g["reference"])),
                       dict(zip(g["phase"].astype(int), g["reference_true"])))
        cols = [c for c in metrics.RECOVERY_COLUMNS if c != "phase"]
        plan_cols = [c for c in PLAN_COLUMNS if c in done.columns]
        run_key = _joined(done, by)
        plans = _Plans(done[["run_id", "phase", *plan_cols]].drop_duplicates(["run_id", "phase"]))
        groups = pd.Series(done["run_id"].to_numpy()).groupby(run_key.to_numpy(), sort=False)
        frames = []
        for k, rids in groups:
            mapping, mapping_true = refs.get(k, ({}, {}))
            ids = list(dict.fromkeys(rids))
            frames.append(self._group_recovery(k, ids, plans, mapping, mapping_true))
        parts = [f for f in frames if len(f)]
        if not parts:
            return rows
        rec = pd.concat(parts, ignore_index=True).set_index(["run_id", "phase"])
        out = rows.copy()
        at = rec.reindex(pd.MultiIndex.from_frame(out[["run_id", "phase"]]))
        has = at["shifted"].notna().to_numpy()  # phase 0 and runs without a trace: as stored
        for c in cols:
            values = at[c].to_numpy()[has]
            if c not in out.columns:
                out[c] = False if c in metrics.BOOL_COLUMNS else np.nan
            if c in metrics.BOOL_COLUMNS:
                out[c] = out[c].astype(bool)
                out.loc[has, c] = values.astype(bool)
            else:
                out[c] = out[c].astype(np.float64)
                out.loc[has, c] = values.astype(np.float64)
        return out

    def _group_recovery(self, key: str, run_ids: list[str], plans: _Plans,
                        reference: dict[int, float], reference_true: dict[int, float]
                        ) -> pd.DataFrame:
        """The recovery rows of one comparison group (a scenario and stage) against its common
        reference, from the runs' traces; kept for this process under the group's fingerprint
        (each run's id, status, trace sha256 and summary phase rows, and the reference), so a
        study that writes its indexes after each stage recomputes only the groups whose runs
        changed. ``plans``: the runs' phase plans (``PLAN_COLUMNS`` by phase)."""
        import hashlib

        h = hashlib.sha256(repr((sorted(reference.items()), sorted(reference_true.items())))
                           .encode())
        for rid in run_ids:
            st = self.states[rid]
            summary = st.summary or {}
            sha = ((summary.get("files") or {}).get(TRACE_FILE) or {}).get("sha256")
            plan = json.dumps(summary.get("phases"), sort_keys=True, default=str)
            h.update(f"{rid}\x1f{st.status}\x1f{sha}\x1f{plan}\x1e".encode())
        cache_key = (str(self.path.resolve()), key, h.hexdigest())
        hit = _GROUP_CACHE.get(cache_key)
        if hit is not None:
            return hit
        parts = []
        for rid in run_ids:
            trace = self._trace_columns(rid, ["step", "phase", "n", "correct", "correct_true"])
            plan = plans.rows(rid)
            if plan is not None and _in_step_order(trace):  # arrays, no frame per run
                records = plan_recovery_records(
                    trace["n"], trace["phase"],
                    {c: trace[c] for c in ("correct", "correct_true") if c in trace}, plan,
                    reference=reference, reference_true=reference_true)
            else:  # recovery_records orders the trace, or names what is missing
                records = recovery_records(pd.DataFrame(trace), plans.table(rid),
                                           reference=reference, reference_true=reference_true)
            for r in records:
                r["run_id"] = rid
                parts.append(r)
        frame = _recovery_frame(parts) if parts else pd.DataFrame()
        if len(_GROUP_CACHE) >= _GROUP_CACHE_SIZE:
            _GROUP_CACHE.pop(next(iter(_GROUP_CACHE)))
        _GROUP_CACHE[cache_key] = frame
        return frame

    def _trace_columns(self, run_id: str, columns: Sequence[str]) -> dict[str, np.ndarray]:
        """Trace columns of one run as arrays, those it has of ``columns`` (pyarrow, one
        thread, no pandas: 0.46 ms against 1.59 ms for :meth:`trace` on a 1,000-step trace of
        the robustness league)."""
        import pyarrow.parquet as pq

        path = run_dir(self.path, run_id) / TRACE_FILE
        try:
            with pq.ParquetFile(path) as pf:
                cols = [c for c in columns if c in pf.schema_arrow.names]
                table = pf.read(columns=cols, use_threads=False)
        except Exception as exc:  # changed on disk since loading
            raise ShiftsimError(f"cannot read {TRACE_FILE} of run {run_id}: {exc}") from exc
        return {c: table.column(c).to_numpy() for c in cols}

    @property
    def tuning(self) -> pd.DataFrame:
        """A tuned study's selection (``tuning.json``): one row per scenario × model ×
        optimizer with the chosen hyperparameters (``lr`` ...), the selection ``metric`` and its
        ``value`` (mean over the tuning seeds), the ``tolerance`` in decades with an interval,
        ``at_edge`` and the ``scope``; empty for a study without tuning."""
        scen = [str(x) for x in dict.fromkeys(self.runs["scenario"].dropna())] \
            if "scenario" in self.runs else None
        return tuning_file.table(tuning_file.read(self.path), scen)

    @property
    def tuning_curves(self) -> pd.DataFrame:
        """Every grid point a tuned study tried: its mean score over the tuning seeds with an
        interval, whether it was eligible and which one was chosen."""
        return tuning_file.curves(tuning_file.read(self.path))

    @property
    def evals(self) -> pd.DataFrame:
        """All held-out evaluations with the runs' labels (complete ok/diverged runs)."""
        if self._evals is None:
            self._evals = self._concat(EVALS_FILE, None, None)
        return self._evals

    def evals_of(self, run_ids: Iterable[str]) -> pd.DataFrame:
        """The held-out evaluations of ``run_ids`` (those that are ok or diverged) with the
        runs' labels: :attr:`evals`' rows of those runs, reading only their files (a tuned
        study's report reads its evaluation runs', 2,860 of the robustness league's 8,200)."""
        if isinstance(run_ids, str):
            raise ShiftsimError(f"run_ids must be a list of run ids, got the string {run_ids!r}")
        ids = list(run_ids)
        self._check_known(ids)
        if self._evals is not None:
            ev = self._evals
            return ev[ev["run_id"].isin(ids)].reset_index(drop=True)
        return self._concat(EVALS_FILE, ids, None)

    def _concat(self, name: str, run_ids: Iterable[str] | None,
                columns: Sequence[str] | None) -> pd.DataFrame:
        import pyarrow as pa

        ids = [r for r in (self.states if run_ids is None else run_ids)]
        # Arrow tables joined and converted once: half the time of a DataFrame per file and
        # pd.concat (8,200 evaluation files: 11-12 -> 5.3 s), the same frame (tested)
        tables = [self._read_table(rid, name, columns) for rid in ids
                  if rid in self.states and self.states[rid].status in ("ok", "diverged")]
        keys = self.runs[self._label_columns()]
        if not tables:
            return keys.iloc[0:0]
        try:
            df = pa.concat_tables(tables, promote_options="permissive").to_pandas()
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            # columns whose types Arrow cannot unify: pandas' rules (object columns)
            df = pd.concat([t.to_pandas() for t in tables], ignore_index=True)
        return keys.merge(df, on="run_id", how="right")

    def _read(self, run_id: str, name: str, columns: Sequence[str] | None = None
              ) -> pd.DataFrame:
        return self._read_table(run_id, name, columns).to_pandas()

    def _read_table(self, run_id: str, name: str, columns: Sequence[str] | None = None) -> Any:
        """One run's ``name`` file as a pyarrow Table (``columns``: those and ``run_id``)."""
        import pyarrow.parquet as pq

        self._check_known([run_id])
        st = self.states[run_id]
        if st.status not in ("ok", "diverged"):
            raise ShiftsimError(_unreadable(run_id, name, st))
        if isinstance(columns, str):
            raise ShiftsimError(f"columns must be a list of column names, got the string "
                                f"{columns!r} (write [{columns!r}])")
        cols = None if columns is None else ["run_id", *[c for c in columns if c != "run_id"]]
        path = run_dir(self.path, run_id) / name
        try:
            return pq.read_table(path, columns=cols, use_threads=False)
        except Exception as exc:  # a column it lacks, or the file changed on disk since loading
            try:
                have = pq.read_schema(path).names
            except Exception:
                have = None
            missing = [c for c in cols or () if have is not None and c not in have]
            if missing:
                known = ", ".join(repr(c) for c in have or () if not c.startswith("__"))
                raise ShiftsimError(f"{name} of run {run_id} has no column(s) "
                                    f"{', '.join(repr(c) for c in missing)}; it has: {known}"
                                    ) from None
            raise ShiftsimError(f"cannot read {name} of run {run_id}: {exc}") from exc

    def trace(self, run_id: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """One run's per-step trace (``run_id``, ``step``, ``phase``, ``n``, ``correct``, ...)."""
        return self._read(run_id, TRACE_FILE, columns)

    def traces(self, run_ids: Iterable[str] | None = None,
               columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The traces of several runs (default: every ok or diverged run), concatenated, with
        the runs' labels as columns; ``columns`` restricts the trace columns read."""
        if isinstance(run_ids, str):
            raise ShiftsimError(f"run_ids must be a list of run ids, got the string {run_ids!r}"
                                f" (write [{run_ids!r}], or use trace() for one run)")
        if isinstance(columns, str):
            raise ShiftsimError(f"columns must be a list of column names, got the string "
                                f"{columns!r} (write [{columns!r}])")
        if run_ids is not None:
            run_ids = list(run_ids)
            self._check_known(run_ids)
        if columns is not None and "step" not in columns:
            columns = ["step", *columns]
        return self._concat(TRACE_FILE, run_ids, columns)

    def _check_known(self, run_ids: Sequence[str]) -> None:
        """Refuse run ids this folder does not hold (a typo would read as an empty frame)."""
        unknown = [r for r in run_ids if r not in self.states]
        if unknown:
            known = ", ".join(list(self.states)[:5]) + (" ..." if len(self.states) > 5 else "")
            raise ShiftsimError(f"no run {unknown[0]!r} in {str(self.path)!r}"
                                + (f" (and {len(unknown) - 1} more unknown)"
                                   if len(unknown) > 1 else "") + f"; runs: {known}")

    def spec(self, run_id: str) -> dict[str, Any] | None:
        """The run's ``spec.json`` (None when its file is absent or unreadable, e.g. a run that
        never started); an id this folder does not hold raises
        :class:`~shiftsim.errors.ShiftsimError`."""
        self._check_known([run_id])
        return self.states[run_id].spec

    # -- summaries ----------------------------------------------------------------------------
    @property
    def problems(self) -> dict[str, str]:
        return {rid: st.reason for rid, st in self.states.items() if st.status == "incomplete"}

    def counts(self) -> dict[str, int]:
        """Number of runs per status."""
        vc = self.runs["status"].value_counts()
        return {s: int(vc.get(s, 0)) for s in STATUSES}

    @property
    def complete(self) -> bool:
        """True when every run of the study is complete (ok, diverged or failed)."""
        return bool(self.runs["status"].isin(COMPLETE).all())

    def __len__(self) -> int:
        return len(self.runs)

    def __repr__(self) -> str:
        name = (self.study or {}).get("name", self.path.name)
        c = ", ".join(f"{v} {k}" for k, v in self.counts().items() if v)
        n = len(self)
        return f"StudyResults({name!r}: {n} run{'s' if n != 1 else ''} — {c or 'empty'})"


def _unreadable(run_id: str, name: str, st: RunState) -> str:
    """Why a run's data file cannot be read, without contradicting the file's presence.

    >>> print(_unreadable("ab12", "trace.parquet", RunState("ab12", "incomplete",
    ...                   "trace.parquet: 100 bytes, expected 12363")))
    run ab12 is incomplete (trace.parquet: 100 bytes, expected 12363), so its trace.parquet
    cannot be used; run the study again to redo it
    """
    if st.status == "failed":
        error = (st.summary or {}).get("error")
        return (f"run {run_id} failed" + (f" ({error})" if error else "")
                + f", so it has no {name}")
    if st.status == "pending":
        return f"run {run_id} has not run yet, so it has no {name}"
    return (f"run {run_id} is {st.status}" + (f" ({st.reason})" if st.reason else "")
            + f", so its {name} cannot be used; run the study again to redo it")


def load(out_dir: str | os.PathLike, *, verify: bool = True,
         include_orphans: bool = False) -> StudyResults:
    """Load a results folder written by a study (or by ``shiftsim run --out``).

    The runs are those listed in ``study.json`` — a run folder left from an earlier version of
    the study is included only with ``include_orphans=True`` — or, without ``study.json``, every
    run folder. Damaged run folders are rows with status ``incomplete`` (see ``problems``);
    loading never raises for them. An unreadable ``study.json`` raises
    :class:`~shiftsim.errors.ShiftsimError` (the study's order, baseline and tuning are in it).
    ``verify`` checks the files' checksums.
    """
    p = check_out_dir(out_dir)
    if not p.is_dir():
        raise ShiftsimError(f"results folder {str(p)!r} does not exist")
    study = read_study(p)
    if study is None and (p / STUDY_FILE).exists():
        # the study's order, baseline and tuning would be lost without a word: refuse
        raise ShiftsimError(
            f"{str(p / STUDY_FILE)!r} is unreadable (not a JSON object): run the study again "
            f"with `shiftsim study <file> --out {p}` (it resumes and rewrites the file), or "
            "remove it to load the run folders alone")
    labels: dict[str, dict[str, Any]] = {}
    if study is not None and isinstance(study.get("runs"), list):
        for entry in study["runs"]:
            if isinstance(entry, dict) and isinstance(entry.get("run_id"), str):
                labels[entry["run_id"]] = dict(entry.get("labels") or {})
        ids = list(labels)
        if include_orphans:
            ids += [r for r in list_run_ids(p) if r not in labels]
    else:
        if not (p / RUNS_DIR).is_dir() and study is None and not any(p.iterdir()):
            raise ShiftsimError(f"{str(p)!r} is empty: no study.json and no runs/ folder")
        ids = list_run_ids(p)
    states = scan(p, ids, verify=verify)
    for rid, st in states.items():
        for source in (st.summary, st.spec):
            if source and isinstance(source.get("labels"), dict):
                labels[rid] = {**source["labels"], **labels.get(rid, {})}
                break
        labels.setdefault(rid, {})
    return StudyResults(p, study, states, labels)



def indexes_stale(out_dir: str | os.PathLike, statuses: Mapping[str, str]) -> bool:
    """True when ``runs.parquet`` is missing, unreadable or lists other runs or statuses than
    ``statuses`` (``{run_id: status}``, e.g. after a process was killed before refreshing it)."""
    try:
        df = pd.read_parquet(Path(out_dir) / "runs.parquet", columns=["run_id", "status"])
    except Exception:
        return True
    return dict(zip(df["run_id"], df["status"])) != dict(statuses)


def write_indexes(out_dir: str | os.PathLike, results: StudyResults | None = None) -> None:
    """Write the derived ``runs.parquet`` and ``phases.parquet`` (for DuckDB / pandas)."""
    p = Path(out_dir)
    results = results if results is not None else load(p)
    for name, df in (("runs.parquet", results.runs), ("phases.parquet", results.phases)):
        atomic_write_bytes(p / name, parquet_bytes(df), fsync=False)
