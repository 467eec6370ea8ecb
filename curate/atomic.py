"""Atomic writes and exclusive locks: the one place that decides how outputs reach disk.

Every output is written to a temporary sibling and renamed into place, so a reader sees
either the old file or the complete new one, never a half-written file. Directories
(pools, candidate pools) are staged the same way: see :func:`staged_directory`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class InUseError(RuntimeError):
    """Another process holds the lock on an output."""


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path; on success rename it onto ``path`` (file or directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        if path.is_dir() and tmp.is_dir():
            _remove(path)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet(path: Path, table: Any) -> None:
    """Write a polars DataFrame or pyarrow Table atomically (zstd, statistics on)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = table if isinstance(table, pa.Table) else table.to_arrow()
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp, compression="zstd")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def exclusive_lock(target: Path) -> Iterator[None]:
    """Hold ``<target>.lock`` for the block; a second holder gets :class:`InUseError`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.with_name(f".{target.name}.lock")
    handle = open(lock_path, "a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InUseError(
                f"{target} is in use by another curate process (lock {lock_path}); "
                "wait for it to finish or choose another output"
            ) from None
        yield
    finally:
        handle.close()


def staging_dir_for(final: Path) -> Path:
    """Where a directory output is built before it is renamed into place.

    Stable across runs (not per-process) so that an interrupted run can resume from it.
    """
    final = Path(final)
    return final.with_name(f".{final.name}.partial")


def remove_stale_temporaries(directory: Path) -> None:
    """Delete the temporaries of atomic writes that a killed process left under ``directory``.

    Call it only while holding the directory's lock, with none of this process's writes open.
    """
    for path in list(Path(directory).rglob(".*.tmp-*")):
        if path.name.rpartition(".tmp-")[2].isdigit():  # made by _tmp_sibling
            _remove(path)


def publish_directory(staging: Path, final: Path, overwrite: bool) -> None:
    """Rename a finished staging directory onto ``final``, without the temporaries of an
    interrupted earlier run that this one resumed."""
    remove_stale_temporaries(staging)
    if final.exists():
        if not overwrite:
            raise FileExistsError(f"{final} already exists; pass --overwrite to replace it")
        trash = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, trash)
        os.replace(staging, final)
        _remove(trash)
    else:
        os.replace(staging, final)
