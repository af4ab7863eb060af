"""The store's files: strict JSON, atomic writes, checked output folders and the folder lock.

Every file of a results folder is written by :func:`atomic_write_bytes`: to a temporary name
(marked :data:`TMP_MARK`) in the same folder, flushed to disk, then renamed, so a reader sees the
old file or the new one, never a part of it; :func:`clean_tmp` removes what a killed writer left.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ShiftsimError, SpecTypeError

__all__ = ["LOCK_FILE", "TMP_MARK", "atomic_write_bytes", "atomic_write_json", "check_out_dir",
           "clean_tmp", "dumps", "fsync_dir", "lock", "parquet_bytes", "plain", "read_json",
           "timestamp"]

#: the lock file of a results folder (created once, never written)
LOCK_FILE = ".lock"
#: part of the name of every temporary file the store writes
TMP_MARK = ".tmp-"


def plain(value: Any) -> Any:
    """A JSON-ready copy: numpy scalars -> Python, NaN/inf -> None, tuples -> lists."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
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
    return json.dumps(plain(obj), sort_keys=True, indent=1, allow_nan=False)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (renames) to disk where the platform allows it."""
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
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{os.urandom(3).hex()}")


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


def parquet_bytes(df: pd.DataFrame) -> bytes:
    """``df`` as the bytes of a parquet file (pyarrow, no index)."""
    import io

    buf = io.BytesIO()
    df.to_parquet(buf, index=False, engine="pyarrow")
    return buf.getvalue()


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object (ValueError otherwise; OSError when unreadable)."""
    with open(path, encoding="utf-8") as f:
        obj = json.load(f)
    if not isinstance(obj, dict):
        raise ValueError(f"{path.name} holds a {type(obj).__name__}, not an object")
    return obj


def timestamp() -> str:
    """The local time as the store records it (ISO 8601 with the UTC offset)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")



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



def clean_tmp(folder: Path) -> None:
    """Remove the temporary files a killed writer left in ``folder`` (never other files)."""
    if not folder.is_dir():
        return
    for f in folder.iterdir():
        if f.name.startswith(".") and TMP_MARK in f.name:
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

