"""A run's folder: its layout, how it is written (``summary.json`` last) and how its state is
read back (complete, incomplete or pending), and ``study.json``.

A run folder is *complete* exactly when its ``summary.json`` parses and the files it lists have
the recorded sizes and checksums; anything else is *incomplete* (:func:`run_state` says why).
"""

from __future__ import annotations

import hashlib
import os
import traceback as tb_module
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..errors import ShiftsimError, SpecTypeError
from .files import (
    atomic_write_bytes,
    atomic_write_json,
    check_out_dir,
    clean_tmp,
    fsync_dir,
    parquet_bytes,
    plain,
    read_json,
    timestamp,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..result import RunResult
    from ..runspec import RunSpec

#: version of the on-disk format; bumped only by incompatible changes. 2: recovery version 2
#: (chance, onset, collapse), held-out labels of partial concept shifts, phase ``shifted``
STORE_FORMAT = 2
RUNS_DIR = "runs"
STUDY_FILE = "study.json"
SPEC_FILE = "spec.json"
TRACE_FILE = "trace.parquet"
EVALS_FILE = "evals.parquet"
SUMMARY_FILE = "summary.json"
DATA_FILES = (TRACE_FILE, EVALS_FILE)
STATUSES = ("ok", "diverged", "failed", "incomplete", "pending")
COMPLETE = ("ok", "diverged", "failed")


def run_dir(out_dir: str | os.PathLike, run_id: str) -> Path:
    """``out_dir/runs/<run_id>``."""
    return Path(out_dir) / RUNS_DIR / run_id


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
    # column by column, the plan's extra columns looked up by phase (DataFrame.merge and
    # to_dict(orient="records") cost ~9 ms for a summary's 40 columns; same values)
    columns = {str(c): summary[c].tolist() for c in summary.columns}
    if phases is not None and "phase" in phases.columns and "phase" in summary.columns:
        extra = [c for c in phases.columns if str(c) not in columns]
        if extra:
            where = {k: i for i, k in enumerate(phases["phase"].tolist())}
            rows = [where.get(k) for k in columns["phase"]]
            for c in extra:
                values = phases[c].tolist()
                columns[str(c)] = [None if i is None else values[i] for i in rows]
    return [plain(dict(zip(columns, values))) for values in zip(*columns.values())]


def serialized_result(run_id: str, result: RunResult, summary: pd.DataFrame | None
                      ) -> dict[str, Any]:
    """What :func:`write_run` derives from a run's result, serialized: the data files' bytes
    (``files``), the summary fields from the result (``body``) and the phase rows
    (``phases``). A study's workers build it (:meth:`shiftsim.study.executors.Outcome.packed`)
    so that the driver, which alone writes the store, only writes bytes."""
    files = {name: parquet_bytes(_with_run_id(df, run_id))
             for name, df in ((TRACE_FILE, result.trace), (EVALS_FILE, result.evals))}
    info = result.info
    body = plain({
        "diverged_step": result.diverged_step,
        "steps": int(result.phases["steps"].sum()) if "steps" in result.phases else None,
        "steps_run": len(result.trace),
        "timings": dict(result.timings),
        "device": info.get("device"),
        "device_name": info.get("device_name"),
        "machine": info.get("machine"),
        "determinism": info.get("determinism"),
        "versions": info.get("versions", {}),
        "learner": info.get("learner", {}),
    })
    return {"files": files, "body": body, "phases": _phase_rows(summary, result.phases)}


def begin_run(out_dir: str | os.PathLike, run_id: str) -> Path:
    """Prepare a run folder for (re)writing: create it, drop a stale summary and temp files."""
    folder = run_dir(out_dir, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    summary = folder / SUMMARY_FILE
    if summary.exists():  # invalidate first: a crash below leaves the folder incomplete
        summary.unlink()
        fsync_dir(folder)
    clean_tmp(folder)
    return folder


def write_run(out_dir: str | os.PathLike, run_id: str, *, spec: Mapping[str, Any],
              labels: Mapping[str, Any], status: str, result: RunResult | None = None,
              summary: pd.DataFrame | None = None, scores: Mapping[str, Any] | None = None,
              error: str | None = None, traceback: str | None = None,
              extra: Mapping[str, Any] | None = None, fsync: bool = True,
              payload: Mapping[str, Any] | None = None) -> Path:
    """Write one run's folder (the low-level writer behind :func:`write_result` and studies).

    ``status`` is ``ok``, ``diverged`` or ``failed``; a failed run has no ``result`` and gets
    only ``spec.json`` and ``summary.json``. ``payload``: the result already serialized by
    :func:`serialized_result` (then ``result`` and ``summary`` are not needed). Returns the run
    folder.
    """
    if status not in COMPLETE:
        raise ShiftsimError(f"a written run has status 'ok', 'diverged' or 'failed', "
                            f"got {status!r}")
    if status != "failed" and result is None and payload is None:
        raise ShiftsimError(f"a run with status {status!r} needs its result")
    if payload is None and result is not None:
        payload = serialized_result(run_id, result, summary)
    folder = begin_run(out_dir, run_id)
    files: dict[str, Any] = {}
    atomic_write_json(folder / SPEC_FILE, {**spec, "run_id": run_id}, fsync=fsync)
    body: dict[str, Any] = {
        "format": STORE_FORMAT, "run_id": run_id, "status": status,
        "labels": dict(labels), "error": error, "traceback": traceback,
        "finished": timestamp(),
    }
    if payload is not None:
        for name, data in payload["files"].items():
            atomic_write_bytes(folder / name, data, fsync=fsync)
            files[name] = _file_entry(data)
        body.update(payload["body"])
    body["scores"] = dict(scores or {})
    body["phases"] = (payload["phases"] if payload is not None
                      else _phase_rows(summary, None))
    body["files"] = files
    body.update(extra or {})
    atomic_write_json(folder / SUMMARY_FILE, body, fsync=fsync)
    if fsync:
        fsync_dir(folder)
    return folder


def _result_payload(result: RunResult) -> dict[str, Any]:
    info = result.info
    learner = info.get("learner") or {}
    return {"scenario": info.get("scenario"), "model": learner.get("model"),
            "optimizer": learner.get("optimizer"), "seed": info.get("seed")}


def write_result(out_dir: str | os.PathLike, result: RunResult, spec: RunSpec | None = None
                 ) -> Path:
    """Write one :class:`~shiftsim.result.RunResult` as ``out_dir/runs/<run_id>/`` and return
    that folder (what ``shiftsim run --out DIR`` does).

    With ``spec`` the folder is the spec's run id and labels; without, the id is computed the
    same way from what the result records (scenario, model, optimizer, seed), so a result
    written here and the same run from a study share their id. :func:`load` reads the folder.
    The status is the result's (:meth:`~shiftsim.result.RunResult.measure`): ``ok``,
    ``diverged``, or ``failed`` when its metrics cannot be computed.
    """
    from ..runspec import RunSpec, content_hash, labels_from_info

    check_out_dir(out_dir, create=True)
    if spec is not None:
        if not isinstance(spec, RunSpec):
            raise SpecTypeError(f"spec must be a RunSpec, got {type(spec).__name__}")
        run_id, spec_dict, labels = spec.run_id, spec.to_dict(), spec.label_dict
    else:
        payload = _result_payload(result)
        run_id = content_hash(payload)
        spec_dict = payload
        labels = labels_from_info(result.info)
    m = result.measure()
    return write_run(out_dir, run_id, spec=spec_dict, labels=labels, status=m.status,
                     result=result if m.status != "failed" else None, summary=m.summary,
                     scores=m.scores, error=m.error, traceback=m.traceback)


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
        summary = read_json(sfile)
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
        spec = read_json(folder / SPEC_FILE)
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
        return read_json(Path(out_dir) / STUDY_FILE)
    except (OSError, ValueError):
        return None


def write_study(out_dir: str | os.PathLike, description: Mapping[str, Any]) -> Path:
    """Write ``study.json`` (atomically), keeping the creation time of an earlier one."""
    p = check_out_dir(out_dir, create=True)
    old = read_study(p) or {}
    body = {**description, "format": STORE_FORMAT, "created": old.get("created", timestamp()),
            "updated": timestamp()}
    return atomic_write_json(p / STUDY_FILE, body)



def format_error(exc: BaseException) -> tuple[str, str]:
    """(one-line message, traceback text) of an exception, as failed runs record them."""
    message = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return message, "".join(tb_module.format_exception(type(exc), exc, exc.__traceback__))

