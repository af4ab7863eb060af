"""The results store: a folder of runs, written atomically, loaded as tidy DataFrames.

Layout (docs/architecture.md)::

    out_dir/
      study.json                 the study: name, axes, run ids and labels (written at start)
      runs.parquet, phases.parquet   derived indexes, refreshed at the end of every study.run()
      runs/<run_id>/
        spec.json                the RunSpec (scenario, model, optimizer, seed, labels)
        trace.parquet            one row per step (run_id, step, phase, n, correct, ...)
        evals.parquet            held-out evaluations (run_id, step, phase, regime, ...)
        summary.json             written last: status, labels, scores, per-phase metrics,
                                 timings, sizes and sha256 of the other files

Every file is written to a temporary name in the same folder, flushed to disk and renamed, and
``summary.json`` comes last, so a run folder is *complete* exactly when its ``summary.json``
parses and the files it lists have the recorded sizes and checksums. Anything else (a process
killed mid-write, a truncated or edited file, leftover temporary files) is *incomplete*: loading
reports it and never crashes, and a resumed study redoes it.

Statuses: ``ok``, ``diverged`` (the loss became non-finite; the trace keeps the steps before),
``failed`` (the run raised; ``summary.json`` holds the error and traceback, no parquet files),
``incomplete`` (a partial or corrupted folder) and ``pending`` (listed in ``study.json``, never
written).

The parquet files are plain tables that DuckDB or pandas read directly::

    import duckdb
    duckdb.sql('''
        SELECT r.optimizer, r.severity, sum(t.correct) / sum(t.n) AS online_acc
        FROM 'results/flip-sweep/runs/*/trace.parquet' t
        JOIN 'results/flip-sweep/runs.parquet' r USING (run_id)
        WHERE r.status = 'ok'
        GROUP BY ALL ORDER BY ALL''').df()

>>> import tempfile, shiftsim as ss
>>> sc = ss.label_flip_tasks(ss.data.digits(), rate=1.0, tasks=2, steps_per_task=30)
>>> res = ss.run(sc, ss.models.mlp(hidden=(16,)), ss.optim.spec("sgdm"), seed=0)
>>> with tempfile.TemporaryDirectory() as d:
...     path = write_result(d, res)
...     results = load(d)
...     (results.runs.loc[0, "status"], len(results.trace(path.name)), len(results.phases))
('ok', 60, 2)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
import traceback as tb_module
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .errors import ShiftsimError, SpecTypeError

if TYPE_CHECKING:  # pragma: no cover
    from .engine import RunResult
    from .study import RunSpec

#: version of the on-disk format; bumped only by incompatible changes. 2: recovery version 2
#: (chance, onset, collapse), held-out labels of partial concept shifts, phase ``shifted``
STORE_FORMAT = 2
RUNS_DIR = "runs"
STUDY_FILE = "study.json"
SPEC_FILE = "spec.json"
TRACE_FILE = "trace.parquet"
EVALS_FILE = "evals.parquet"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".lock"
DATA_FILES = (TRACE_FILE, EVALS_FILE)
STATUSES = ("ok", "diverged", "failed", "incomplete", "pending")
COMPLETE = ("ok", "diverged", "failed")
_TMP_MARK = ".tmp-"

#: the label columns every run has (others, from custom axes, follow them)
LABEL_COLUMNS = ("scenario", "model", "optimizer", "optimizer_name", "lr", "severity", "seed")
SCORE_COLUMNS = ("online_acc", "online_acc_true", "acc", "bwt", "forgetting", "anytime_acc")


# ----------------------------------------------------------------------------------------------
# JSON and atomic files


def _plain(value: Any) -> Any:
    """A JSON-ready copy: numpy scalars -> Python, NaN/inf -> None, tuples -> lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


def dumps(obj: Any) -> str:
    """Deterministic, strict JSON (sorted keys, no NaN) as the store writes it."""
    return json.dumps(_plain(obj), sort_keys=True, indent=1, allow_nan=False)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}-{os.urandom(3).hex()}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to a temporary file next to ``path``, flush it to disk and rename it.

    A reader sees the old file or the new one, never a part of it.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = atomic_write_bytes(Path(d) / "x.txt", b"hello")
    ...     p.read_bytes(), sorted(f.name for f in Path(d).iterdir())
    (b'hello', ['x.txt'])
    """
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any, *, fsync: bool = True) -> Path:
    return atomic_write_bytes(path, (dumps(obj) + "\n").encode(), fsync=fsync)


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    import io

    buf = io.BytesIO()
    df.to_parquet(buf, index=False, engine="pyarrow")
    return buf.getvalue()


def _read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        obj = json.load(f)
    if not isinstance(obj, dict):
        raise ValueError(f"{path.name} holds a {type(obj).__name__}, not an object")
    return obj


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ----------------------------------------------------------------------------------------------
# folders


def check_out_dir(out_dir: str | os.PathLike, *, create: bool = False,
                  what: str = "results folder") -> Path:
    """Return ``out_dir`` as a Path after checking, before any work, that it is or can become a
    writable folder: it is not a file, no component of its path is a file, and the folder (or
    its nearest existing parent) is writable. ``what`` names it in the error.

    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = (pathlib.Path(d) / "afile").write_text("x")
    ...     check_out_dir(pathlib.Path(d) / "afile" / "sub", what="--out")
    Traceback (most recent call last):
    ...
    shiftsim.errors.ShiftsimError: --out '.../afile/sub' cannot be created: '.../afile' is a
    file, not a folder
    """
    if not isinstance(out_dir, (str, os.PathLike)):
        raise SpecTypeError(f"out_dir must be a folder path, got {out_dir!r}")
    p = Path(out_dir)
    if p.exists() and not p.is_dir():
        raise ShiftsimError(f"{what} {str(p)!r} exists and is not a folder")
    existing = p
    while not existing.is_dir():  # the nearest existing ancestor must be a folder
        if existing.exists() or existing.is_symlink():  # a file, a broken link ...
            kind = "a file, not a folder" if existing.is_file() else "not a folder"
            raise ShiftsimError(f"{what} {str(p)!r} cannot be created: {str(existing)!r} is "
                                f"{kind}")
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        where = "is not writable" if existing == p else \
            f"cannot be created: {str(existing)!r} is not writable"
        raise ShiftsimError(f"{what} {str(p)!r} {where}")
    if create:
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ShiftsimError(f"cannot create {what} {str(p)!r}: {exc.strerror or exc}") \
                from None
    return p


def run_dir(out_dir: str | os.PathLike, run_id: str) -> Path:
    return Path(out_dir) / RUNS_DIR / run_id


def _clean_tmp(folder: Path) -> None:
    if not folder.is_dir():
        return
    for f in folder.iterdir():
        if f.name.startswith(".") and _TMP_MARK in f.name:
            with contextlib.suppress(OSError):
                f.unlink()


@contextlib.contextmanager
def lock(out_dir: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the results folder (released when the process dies).

    Two study runs writing the same folder at once would redo each other's runs; the second
    one is refused with a clear error. The lock file is created once and never written, so a
    study run that has nothing to do changes nothing in the folder. (A no-op where ``fcntl`` is
    unavailable.)
    """
    p = check_out_dir(out_dir, create=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(p / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ShiftsimError(f"another shiftsim process is running a study in {str(p)!r} "
                                "(its lock is held); wait for it or use another folder") from None
        yield
    finally:
        os.close(fd)  # closing releases the flock


# ----------------------------------------------------------------------------------------------
# writing runs


def _file_entry(data: bytes) -> dict[str, Any]:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _with_run_id(df: pd.DataFrame, run_id: str) -> pd.DataFrame:
    out = df.copy()
    if "run_id" in out.columns:
        out = out.drop(columns="run_id")
    out.insert(0, "run_id", pd.Series([run_id] * len(out), dtype=object, index=out.index))
    return out


def _phase_rows(summary: pd.DataFrame | None, phases: pd.DataFrame | None) -> list[dict]:
    """The summary rows merged with the phase plan's columns the summary lacks."""
    if summary is None:
        return []
    table = summary.copy()
    if phases is not None and "phase" in phases.columns:
        extra = [c for c in phases.columns if c not in table.columns]
        if extra:
            table = table.merge(phases[["phase", *extra]], on="phase", how="left")
    return [_plain(r) for r in table.to_dict(orient="records")]


def begin_run(out_dir: str | os.PathLike, run_id: str) -> Path:
    """Prepare a run folder for (re)writing: create it, drop a stale summary and temp files."""
    folder = run_dir(out_dir, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    summary = folder / SUMMARY_FILE
    if summary.exists():  # invalidate first: a crash below leaves the folder incomplete
        summary.unlink()
        _fsync_dir(folder)
    _clean_tmp(folder)
    return folder


def write_run(out_dir: str | os.PathLike, run_id: str, *, spec: Mapping[str, Any],
              labels: Mapping[str, Any], status: str, result: RunResult | None = None,
              summary: pd.DataFrame | None = None, scores: Mapping[str, Any] | None = None,
              error: str | None = None, traceback: str | None = None,
              extra: Mapping[str, Any] | None = None, fsync: bool = True) -> Path:
    """Write one run's folder (the low-level writer behind :func:`write_result` and studies).

    ``status`` is ``ok``, ``diverged`` or ``failed``; a failed run has no ``result`` and gets
    only ``spec.json`` and ``summary.json``. Returns the run folder.
    """
    if status not in COMPLETE:
        raise ShiftsimError(f"a written run has status 'ok', 'diverged' or 'failed', "
                            f"got {status!r}")
    if status != "failed" and result is None:
        raise ShiftsimError(f"a run with status {status!r} needs its result")
    folder = begin_run(out_dir, run_id)
    files: dict[str, Any] = {}
    atomic_write_json(folder / SPEC_FILE, {**spec, "run_id": run_id}, fsync=fsync)
    body: dict[str, Any] = {
        "format": STORE_FORMAT, "run_id": run_id, "status": status,
        "labels": dict(labels), "error": error, "traceback": traceback,
        "finished": _now(),
    }
    if result is not None:
        for name, df in ((TRACE_FILE, result.trace), (EVALS_FILE, result.evals)):
            data = _parquet_bytes(_with_run_id(df, run_id))
            atomic_write_bytes(folder / name, data, fsync=fsync)
            files[name] = _file_entry(data)
        info = result.info
        body.update({
            "diverged_step": result.diverged_step,
            "steps": int(result.phases["steps"].sum()) if "steps" in result.phases else None,
            "steps_run": len(result.trace),
            "timings": dict(result.timings),
            "device": info.get("device"),
            "machine": info.get("machine"),
            "versions": info.get("versions", {}),
            "learner": info.get("learner", {}),
        })
    body["scores"] = dict(scores or {})
    body["phases"] = _phase_rows(summary, result.phases if result is not None else None)
    body["files"] = files
    body.update(extra or {})
    atomic_write_json(folder / SUMMARY_FILE, body, fsync=fsync)
    if fsync:
        _fsync_dir(folder)
    return folder


def _result_payload(result: RunResult) -> dict[str, Any]:
    info = result.info
    learner = info.get("learner") or {}
    return {"scenario": info.get("scenario"), "model": learner.get("model"),
            "optimizer": learner.get("optimizer"), "seed": info.get("seed")}


def write_result(out_dir: str | os.PathLike, result: RunResult, spec: RunSpec | None = None
                 ) -> Path:
    """Write one :class:`~shiftsim.engine.RunResult` as ``out_dir/runs/<run_id>/`` and return
    that folder (what ``shiftsim run --out DIR`` does).

    With ``spec`` the folder is the spec's run id and labels; without, the id is computed the
    same way from what the result records (scenario, model, optimizer, seed), so a result
    written here and the same run from a study share their id. :func:`load` reads the folder.
    """
    from . import study as study_mod

    check_out_dir(out_dir, create=True)
    if spec is not None:
        if not isinstance(spec, study_mod.RunSpec):
            raise SpecTypeError(f"spec must be a RunSpec, got {type(spec).__name__}")
        run_id, spec_dict, labels = spec.run_id, spec.to_dict(), spec.label_dict
    else:
        payload = _result_payload(result)
        run_id = study_mod.content_hash(payload)
        spec_dict = payload
        labels = study_mod.labels_from_info(result.info)
    summary, scores, status, error, trace_text = _summarize(result)
    return write_run(out_dir, run_id, spec=spec_dict, labels=labels, status=status,
                     result=result if status != "failed" else None, summary=summary,
                     scores=scores, error=error, traceback=trace_text)


def _summarize(result: RunResult) -> tuple[pd.DataFrame | None, dict, str, str | None,
                                          str | None]:
    """(summary, scores, status, error, traceback) of a finished run; metrics errors -> failed."""
    try:
        summary = result.summary()
        scores = result.scores()
    except Exception as exc:
        return (None, {}, "failed", f"computing the metrics failed: {type(exc).__name__}: {exc}",
                tb_module.format_exc())
    return summary, scores, "diverged" if result.diverged else "ok", None, None


# ----------------------------------------------------------------------------------------------
# reading runs


@dataclass(frozen=True)
class RunState:
    """What a run folder holds: its status and, when complete, its summary.

    ``reason`` says why a folder is incomplete (``"no summary.json"``, ``"trace.parquet: size
    1234 != 5678"`` ...).
    """

    run_id: str
    status: str
    reason: str = ""
    summary: dict[str, Any] | None = None
    spec: dict[str, Any] | None = None

    @property
    def complete(self) -> bool:
        return self.status in COMPLETE


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_state(out_dir: str | os.PathLike, run_id: str, *, verify: bool = True) -> RunState:
    """Inspect ``runs/<run_id>``: complete (ok / diverged / failed), incomplete or pending.

    Never raises for a damaged folder. ``verify`` checks the sha256 of every data file (cheap:
    the files are small); without it only their sizes are checked.
    """
    folder = run_dir(out_dir, run_id)
    if not folder.is_dir():
        return RunState(run_id, "pending", "not run yet")
    sfile = folder / SUMMARY_FILE
    if not sfile.is_file():
        return RunState(run_id, "incomplete", "no summary.json (interrupted)")
    try:
        summary = _read_json(sfile)
    except (OSError, ValueError) as exc:
        return RunState(run_id, "incomplete", f"unreadable summary.json: {exc}")
    status = summary.get("status")
    if isinstance(summary.get("format"), int) and summary["format"] < STORE_FORMAT:
        return RunState(run_id, "incomplete",
                        f"written by an older shiftsim (store format {summary['format']}, now "
                        f"{STORE_FORMAT}: its metrics are out of date); a resumed study redoes it")
    if summary.get("format") != STORE_FORMAT or status not in COMPLETE:
        return RunState(run_id, "incomplete",
                        f"summary.json has format {summary.get('format')!r} / status {status!r}")
    if summary.get("run_id") != run_id:
        return RunState(run_id, "incomplete", f"summary.json is for run "
                                              f"{summary.get('run_id')!r}, not {run_id!r}")
    try:
        spec = _read_json(folder / SPEC_FILE)
    except (OSError, ValueError) as exc:
        return RunState(run_id, "incomplete", f"unreadable spec.json: {exc}")
    files = summary.get("files")
    if not isinstance(files, dict) or (status != "failed" and set(files) != set(DATA_FILES)):
        return RunState(run_id, "incomplete", "summary.json lists no data files")
    for name, entry in files.items():
        path = folder / name
        try:
            size = path.stat().st_size
        except OSError:
            return RunState(run_id, "incomplete", f"{name} is missing")
        if not isinstance(entry, dict) or size != entry.get("bytes"):
            want = entry.get("bytes") if isinstance(entry, dict) else None
            return RunState(run_id, "incomplete", f"{name}: {size} bytes, expected {want}")
        if verify:
            try:
                digest = _sha256(path)
            except OSError as exc:
                return RunState(run_id, "incomplete", f"{name} unreadable: {exc}")
            if digest != entry.get("sha256"):
                return RunState(run_id, "incomplete", f"{name}: checksum mismatch (corrupted)")
    return RunState(run_id, status, "", summary, spec)


def list_run_ids(out_dir: str | os.PathLike) -> list[str]:
    """The run folders present under ``out_dir/runs`` (sorted)."""
    root = Path(out_dir) / RUNS_DIR
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan(out_dir: str | os.PathLike, run_ids: Iterable[str] | None = None, *,
         verify: bool = True) -> dict[str, RunState]:
    """:func:`run_state` of every listed run (default: every folder present)."""
    ids = list_run_ids(out_dir) if run_ids is None else list(run_ids)
    return {rid: run_state(out_dir, rid, verify=verify) for rid in ids}


def read_study(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``study.json`` as a dict, or None when absent or unreadable."""
    try:
        return _read_json(Path(out_dir) / STUDY_FILE)
    except (OSError, ValueError):
        return None


def write_study(out_dir: str | os.PathLike, description: Mapping[str, Any]) -> Path:
    """Write ``study.json`` (atomically), keeping the creation time of an earlier one."""
    p = check_out_dir(out_dir, create=True)
    old = read_study(p) or {}
    body = {**description, "format": STORE_FORMAT, "created": old.get("created", _now()),
            "updated": _now()}
    return atomic_write_json(p / STUDY_FILE, body)


# ----------------------------------------------------------------------------------------------
# loading


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
      ``run_phases`` holds the same rows as stored, each run against its own plateau.
    * ``evals``: every run's held-out evaluations with the run's labels (read on first use).
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
                    "steps_run", *SCORE_COLUMNS, "total_s", "ms_per_step", "device", "machine"]
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
            if c not in ("run_id", "name", "label_kind", "transition", "shifts", "censored",
                         "dipped", "collapsed", "shifted", "censored_true", "dipped_true",
                         "collapsed_true"):
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

    def _common_phases(self) -> pd.DataFrame:
        from . import metrics

        rows = self.run_phases
        done = rows[rows["status"].isin(("ok", "diverged"))] if "status" in rows else rows
        if done.empty or "plateau" not in done.columns:
            return rows
        by = [c for c in ("scenario", "stage") if c in done.columns]
        ref = metrics.common_reference(done, by=by)
        key = ref[by].astype(str).agg("\x1f".join, axis=1) if by else pd.Series("", ref.index)
        refs: dict[str, tuple[dict[int, float], dict[int, float]]] = {}
        for k, g in ref.groupby(key.to_numpy(), sort=False):
            refs[k] = (dict(zip(g["phase"].astype(int), g["reference"])),
                       dict(zip(g["phase"].astype(int), g["reference_true"])))
        cols = [c for c in metrics.RECOVERY_COLUMNS if c != "phase"]
        parts = []
        run_key = done[by].astype(str).agg("\x1f".join, axis=1) if by else None
        for rid, ph in done.groupby("run_id", sort=False):
            k = run_key.loc[ph.index[0]] if run_key is not None else ""
            mapping, mapping_true = refs.get(k, ({}, {}))
            trace = self.trace(rid, ["step", "phase", "n", "correct", "correct_true"])
            table = ph.drop_duplicates("phase")
            rec = metrics.recovery(trace, table, reference=mapping, reference_true=mapping_true)
            parts.append(rec.assign(run_id=rid))
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

    @property
    def tuning(self) -> pd.DataFrame:
        """A tuned study's selection (``tuning.json``): one row per scenario × model ×
        optimizer with the chosen hyperparameters (``lr`` ...), the selection ``metric`` and its
        ``value`` (mean over the tuning seeds), the ``tolerance`` in decades with an interval,
        ``at_edge`` and the ``scope``; empty for a study without tuning."""
        from .study import selection

        scen = [str(x) for x in dict.fromkeys(self.runs["scenario"].dropna())] \
            if "scenario" in self.runs else None
        return selection.table(selection.read(self.path), scen)

    @property
    def tuning_curves(self) -> pd.DataFrame:
        """Every grid point a tuned study tried: its mean score over the tuning seeds with an
        interval, whether it was eligible and which one was chosen."""
        from .study import selection

        return selection.curves(selection.read(self.path))

    @property
    def evals(self) -> pd.DataFrame:
        """All held-out evaluations with the runs' labels (complete ok/diverged runs)."""
        if self._evals is None:
            self._evals = self._concat(EVALS_FILE, None, None)
        return self._evals

    def _concat(self, name: str, run_ids: Iterable[str] | None,
                columns: Sequence[str] | None) -> pd.DataFrame:
        ids = [r for r in (self.states if run_ids is None else run_ids)]
        frames = [self._read(rid, name, columns) for rid in ids
                  if rid in self.states and self.states[rid].status in ("ok", "diverged")]
        keys = self.runs[self._label_columns()]
        if not frames:
            return keys.iloc[0:0]
        df = pd.concat(frames, ignore_index=True)
        return keys.merge(df, on="run_id", how="right")

    def _read(self, run_id: str, name: str, columns: Sequence[str] | None = None
              ) -> pd.DataFrame:
        st = self.states.get(run_id)
        if st is None:
            known = ", ".join(list(self.states)[:5]) + (" ..." if len(self.states) > 5 else "")
            raise ShiftsimError(f"no run {run_id!r} in {str(self.path)!r}; runs: {known}")
        if st.status not in ("ok", "diverged"):
            raise ShiftsimError(_unreadable(run_id, name, st))
        cols = None if columns is None else ["run_id", *[c for c in columns if c != "run_id"]]
        try:
            return pd.read_parquet(run_dir(self.path, run_id) / name, columns=cols)
        except Exception as exc:  # changed on disk since loading
            raise ShiftsimError(f"cannot read {name} of run {run_id}: {exc}") from exc

    def trace(self, run_id: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """One run's per-step trace (``run_id``, ``step``, ``phase``, ``n``, ``correct``, ...)."""
        return self._read(run_id, TRACE_FILE, columns)

    def traces(self, run_ids: Iterable[str] | None = None,
               columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The traces of several runs (default: every ok or diverged run), concatenated, with
        the runs' labels as columns; ``columns`` restricts the trace columns read."""
        if columns is not None and "step" not in columns:
            columns = ["step", *columns]
        return self._concat(TRACE_FILE, run_ids, columns)

    def spec(self, run_id: str) -> dict[str, Any] | None:
        """The run's ``spec.json`` (None when absent)."""
        st = self.states.get(run_id)
        return st.spec if st is not None else None

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
    run folder. Damaged folders are rows with status ``incomplete`` (see ``problems``); loading
    never raises for them. ``verify`` checks the files' checksums.
    """
    p = check_out_dir(out_dir)
    if not p.is_dir():
        raise ShiftsimError(f"results folder {str(p)!r} does not exist")
    study = read_study(p)
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


def format_error(exc: BaseException) -> tuple[str, str]:
    """(one-line message, traceback text) of an exception, as failed runs record them."""
    message = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return message, "".join(tb_module.format_exception(type(exc), exc, exc.__traceback__))


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
        atomic_write_bytes(p / name, _parquet_bytes(df), fsync=False)
