"""img2dataset's webdataset output: ``00000.tar`` (key.jpg, key.txt, key.json) with, per
shard, ``00000.parquet`` (one row per input url, with ``status`` and ``error_message``) and
``00000_stats.json``. Any folder of webdataset tars with jpg/txt(/json) members also works.

Failed downloads (parquet rows whose status is not "success") are counted skips, not
samples. A damaged tar keeps the samples before the damage; the rest of that tar is one
counted skip that names it.
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curate.core.images import IMAGE_EXTENSIONS
from curate.core.pool_writer import IngestError, Skip, SourceSample
from curate.ingest.base import ImageItems, IngestOptions, ItemsPart

# img2dataset's bookkeeping columns; the pool computes its own size, hash and key.
NOT_EXTRAS = ("key", "status", "error_message", "caption", "width", "height", "sha256", "uid")


def read(path: Path, options: IngestOptions) -> ImageItems:
    if not path.is_dir():
        raise IngestError(f"{path}: expected the folder img2dataset wrote (with the .tar files)")
    tars = sorted(path.glob("*.tar"))
    if not tars:
        raise IngestError(f"{path}: no .tar files found (is this img2dataset's output folder?)")
    parts = []
    for tar in tars:
        parquet = tar.with_suffix(".parquet")
        rows = None
        if parquet.is_file():
            try:
                metadata = pq.read_metadata(parquet)
            except Exception as error:  # pyarrow raises several types for a damaged footer
                raise IngestError(
                    f"{parquet}: unreadable ({error}); delete it to use the tar alone"
                ) from None
            _check_text_columns(parquet, metadata.schema.to_arrow_schema())
            rows = metadata.num_rows
        parts.append(ItemsPart(_items, ([tar], path.name), rows))
    total = sum(part.rows or 0 for part in parts)
    return ImageItems(
        items=_items(tars, source=path.name),
        total=total or None,
        source_stats=_stats(path),
        parts=tuple(parts),
    )


def _check_text_columns(parquet: Path, schema: pa.Schema) -> None:
    """The columns that match rows to tar members must be text, as img2dataset writes them."""
    for name in ("key", "status"):
        if name not in schema.names:
            continue
        kind = schema.field(name).type
        if not (
            pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)
        ):
            raise IngestError(
                f"{parquet}: column {name!r} is {kind}, expected strings as img2dataset writes "
                "them; fix it or delete the file to use the tar alone"
            )


def _stats(path: Path) -> dict[str, Any]:
    """img2dataset's own counts, summed over its ``*_stats.json`` files."""
    totals: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    for file in sorted(path.glob("*_stats.json")):
        stats = json.loads(file.read_text("utf-8"))
        for key in ("count", "successes", "failed_to_download", "failed_to_resize"):
            totals[key] += int(stats.get(key, 0))
        statuses.update(stats.get("status_dict", {}))
    if not totals:
        return {}
    return {"img2dataset": {**totals, "status_dict": dict(statuses.most_common())}}


def _shard_rows(parquet: Path) -> pl.DataFrame | None:
    if not parquet.is_file():
        return None
    try:
        return pl.read_parquet(parquet).with_row_index("row")
    except Exception as error:  # polars raises several types for a damaged file
        raise IngestError(
            f"{parquet}: unreadable ({error}); delete it to use the tar alone"
        ) from None


def _items(tars: list[Path], source: str) -> Iterator[SourceSample | Skip]:
    for tar in tars:
        parquet = tar.with_suffix(".parquet")
        rows = _shard_rows(parquet)
        expected: dict[str, dict[str, Any]] | None = None
        if rows is not None:
            if "status" in rows.columns:
                failed = rows.filter(pl.col("status") != "success")
                for row in failed.iter_rows(named=True):
                    yield Skip(
                        f"{parquet.name} row {row['row']} ({row.get('url')})",
                        f"download failed: {row.get('error_message') or row['status']}",
                    )
                rows = rows.filter(pl.col("status") == "success")
            if "key" in rows.columns:
                expected = {row["key"]: row for row in rows.iter_rows(named=True)}
        yield from _tar_samples(tar, source, expected)


def _tar_samples(
    tar: Path, source: str, expected: dict[str, dict[str, Any]] | None
) -> Iterator[SourceSample | Skip]:
    """Samples of one tar in file order; ``expected`` = its successful parquet rows by key."""
    kept, last_key = 0, None
    try:
        for key, members, conflict in _groups(tar):
            if conflict is not None:
                yield Skip(f"{tar.name} key {key}", f"key conflict: {conflict}")
                if members is None:
                    continue
            assert members is not None
            row = expected.pop(key, None) if expected is not None else None
            yield _sample(tar, source, key, members, row)
            kept, last_key = kept + 1, key
    except MissingEndOfArchive as error:
        yield Skip(
            str(tar),
            f"possibly truncated tar: {error} ({kept} samples kept; a copy or download may have "
            "stopped early, so check the file against its source)",
        )
    except (tarfile.TarError, EOFError, OSError) as error:
        after = f"after key {last_key}" if last_key else "from its start"
        lost = f", {len(expected)} listed downloads lost" if expected else ""
        yield Skip(
            str(tar), f"damaged tar: {error} ({kept} samples kept, the rest lost {after}{lost})"
        )
        return
    if expected:
        yield Skip(
            str(tar),
            f"incomplete tar: {len(expected)} successful downloads listed in "
            f"{tar.with_suffix('.parquet').name} are not in it (first key {next(iter(expected))})",
        )


def _member_key(name: str) -> tuple[str, str]:
    """webdataset's split of a member name: key = path up to the first dot of the basename."""
    folder, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


class MissingEndOfArchive(tarfile.TarError):
    """The archive stops at a member boundary without tar's end-of-archive blocks."""


# Samples handed out by _groups: (key, members or None when nothing of it is kept, conflict)
Group = tuple[str, dict[str, bytes] | None, str | None]


def _groups(tar: Path) -> Iterator[Group]:
    """(key, {extension: bytes}, conflict) per sample, streaming; a damaged tar raises where
    it breaks. A key met again later in the tar, or a member repeated with other bytes, is a
    conflict: the first is kept and the later one reported (never a silent overwrite)."""
    seen: set[str] = set()
    with tarfile.open(tar, mode="r|") as archive:
        key: str | None = None
        members: dict[str, bytes] = {}
        conflicts: list[str] = []
        for member in archive:
            if not member.isfile():
                continue
            member_key, extension = _member_key(member.name)
            if member_key != key:  # the previous sample is complete: hand it out first
                if key is not None:
                    yield from _finished(key, members, conflicts, seen)
                key, members, conflicts = member_key, {}, []
            handle = archive.extractfile(member)
            assert handle is not None
            data = handle.read()
            if extension in members and members[extension] != data:
                conflicts.append(f"member {member.name} repeated with other bytes; first kept")
            else:
                members.setdefault(extension, data)
        if key is not None:
            yield from _finished(key, members, conflicts, seen)
        end = archive.offset
    _check_end(tar, end)


def _finished(key: str, members: dict[str, bytes], conflicts: list[str], seen: set[str]):
    if key in seen:
        yield key, None, f"key {key} appears again later in the tar; its first sample is kept"
        return
    seen.add(key)
    yield key, members, "; ".join(conflicts) or None


def _check_end(tar: Path, end: int) -> None:
    """tarfile's stream mode stops quietly at a damaged header after the first one: what
    follows the last member must be the zero blocks that end an archive (at least two of
    512 bytes, POSIX), and nothing but zeros."""
    zeros = 0
    with open(tar, "rb") as handle:
        handle.seek(end)
        while chunk := handle.read(1 << 20):
            if chunk.count(0) != len(chunk):
                raise tarfile.ReadError(f"invalid member header at byte {end + zeros}")
            zeros += len(chunk)
    if zeros < 2 * tarfile.BLOCKSIZE:
        raise MissingEndOfArchive(
            f"it ends at byte {end + zeros} without tar's end-of-archive blocks"
        )


def _sample(
    tar: Path, source: str, key: str, members: dict[str, bytes], row: dict[str, Any] | None
) -> SourceSample | Skip:
    where = f"{tar.name} key {key}"
    if key.startswith("/") or ".." in key.split("/"):
        return Skip(where, f"unsafe member name: {key!r} is absolute or climbs out with '..'")
    extension = next((e for e in IMAGE_EXTENSIONS if e in members), None)
    if extension is None:
        return Skip(where, f"no image member (has {', '.join(sorted(members)) or 'nothing'})")
    meta: dict[str, Any] = row if row is not None else {}
    if row is None and "json" in members:
        try:
            parsed = json.loads(members["json"])
        except ValueError:
            parsed = None
        meta = parsed if isinstance(parsed, dict) else {}
    text = members.get("txt", meta.get("caption"))
    uid = meta.get("uid")
    return SourceSample(
        source=source,
        where=where,
        text=text,
        image=members[extension],
        uid=uid if isinstance(uid, str) else None,
        extras={k: v for k, v in meta.items() if k not in NOT_EXTRAS and k != "row"},
    )
