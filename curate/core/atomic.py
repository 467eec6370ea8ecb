"""Atomic writes and exclusive locks: the one place that decides how outputs reach disk.

Every output is written to a temporary sibling and renamed into place, so a reader sees
either the old file or the complete new one, never a half-written file. Directories
(pools, candidate pools) are staged the same way: see :func:`staged_output`.
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

from curate.core.errors import InUseError, OutputExistsError


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
    """Hold ``.<target>.lock`` for the block; a second holder gets :class:`InUseError`.

    The lock file is removed when the block ends. It is unlinked while still locked, and a
    process that locked a file which is no longer at that path (removed by the holder it
    waited for) treats the output as in use, so two processes never both hold the lock.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.with_name(f".{target.name}.lock")
    handle = open(lock_path, "a+")
    locked = False
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = _still_at(lock_path, handle.fileno())
        except BlockingIOError:
            pass
        if not locked:
            raise InUseError(
                f"{target} is in use by another curate process (lock {lock_path}); "
                "wait for it to finish or choose another output"
            ) from None
        yield
    finally:
        if locked:
            with contextlib.suppress(FileNotFoundError):
                lock_path.unlink()
        handle.close()


def _still_at(path: Path, descriptor: int) -> bool:
    """Whether the open file ``descriptor`` is still the file at ``path``."""
    try:
        return os.stat(path).st_ino == os.fstat(descriptor).st_ino
    except FileNotFoundError:
        return False


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
            raise OutputExistsError(f"{final} already exists; pass --overwrite to replace it")
        trash = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, trash)
        os.replace(staging, final)
        _remove(trash)
    else:
        os.replace(staging, final)


@contextlib.contextmanager
def staged_output(out: Path, *, overwrite: bool, resume: bool = False) -> Iterator[Path]:
    """Lock ``out``; refuse it if it exists unless ``overwrite``; yield its staging folder;
    publish that folder onto ``out`` when the block ends without an error.

    The staging folder is made fresh (emptied) and removed again if the block raises, unless
    ``resume``: then it is left as an interrupted run left it (missing, if none did) for the
    block to resume from, and kept when the block raises.
    """
    out = Path(out)
    with exclusive_lock(out):
        if out.exists() and not overwrite:
            raise OutputExistsError(f"{out} already exists; pass --overwrite to replace it")
        staging = staging_dir_for(out)
        if not resume:
            _remove(staging)
            staging.mkdir(parents=True)
        try:
            yield staging
        except BaseException:
            if not resume:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        publish_directory(staging, out, overwrite=overwrite)
