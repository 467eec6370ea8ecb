"""DataComp-style metadata without images: parquet files with uid, url, text,
original_width, original_height, clip_b32/l14 similarity scores and sha256, each with an
optional ``.npz`` beside it holding the precomputed OpenAI CLIP embeddings of its rows
(``b32_img``, ``b32_txt``, ``l14_img``, ``l14_txt``, row-aligned with the parquet).

Two ways to make a metadata-only pool of them (no images; ``curate download`` fetches them):

- :func:`reference_in_place` (``curate ingest DIR --format datacomp``): check the files in
  one streaming pass and use them where they are; nothing is copied.
- :func:`read` through the ingest driver (``--copy``, and ``curate.ingest.ingest``): one
  polars table per file into the pool's own samples.parquet (captions stripped, bad rows
  skipped), and embeddings streamed from the ``.npz`` into ``embeddings/datacomp-b32/``
  and ``embeddings/datacomp-l14/`` without loading a whole array.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from curate.core.embedding_store import DATACOMP_NPZ_SETS
from curate.core.npy_header import read_npy_header
from curate.core.pool_writer import IngestError, PartEmbeddings
from curate.core.uid_index import UidIndex, bucket_bits, bucket_of, sorted_bucket
from curate.ingest.base import IngestOptions, MetadataPart, MetadataParts

if TYPE_CHECKING:
    from curate.core.executor import Executor
    from curate.ingest.run import IngestResult

REQUIRED_COLUMNS = ("uid", "url", "text")
RENAMED = {"original_width": "width", "original_height": "height"}


@dataclass(frozen=True)
class NpzMember:
    """One 2-d array inside an ``.npz``, read in row order a block at a time."""

    path: Path
    key: str
    rows: int
    dim: int
    dtype: np.dtype

    @classmethod
    def open(cls, path: Path, key: str) -> NpzMember:
        with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as handle:
            shape, dtype = _npy_header(handle, f"{path}:{key}")
        return cls(path, key, shape[0], shape[1], dtype)

    def chunks(self, rows_per_chunk: int) -> Iterator[np.ndarray]:
        row_bytes = self.dim * self.dtype.itemsize
        with zipfile.ZipFile(self.path) as archive, archive.open(f"{self.key}.npy") as handle:
            _npy_header(handle, f"{self.path}:{self.key}")
            for start in range(0, self.rows, rows_per_chunk):
                count = min(rows_per_chunk, self.rows - start)
                data = handle.read(count * row_bytes)
                if len(data) != count * row_bytes:
                    raise IngestError(f"{self.path}: {self.key} ends early at row {start}")
                yield np.frombuffer(data, dtype=self.dtype).reshape(count, self.dim)


def _npy_header(handle: IO[bytes], where: str) -> tuple[tuple[int, ...], np.dtype]:
    shape, dtype, fortran_order, _ = read_npy_header(handle)
    if fortran_order or len(shape) != 2 or dtype.kind != "f":
        raise IngestError(f"{where}: expected a 2-d float array in C order, got {dtype} {shape}")
    return shape, dtype


def parquet_files(path: Path) -> list[Path]:
    files = [path] if path.is_file() else sorted(path.glob("*.parquet"))
    if not files:
        raise IngestError(f"{path}: no .parquet files found")
    return files


def _part_embeddings(parquet: Path, rows: int) -> dict[str, PartEmbeddings]:
    npz = parquet.with_suffix(".npz")
    try:
        with zipfile.ZipFile(npz) as archive:
            keys = {name.removesuffix(".npy") for name in archive.namelist()}
    except zipfile.BadZipFile as error:
        raise IngestError(f"{npz}: not a readable .npz ({error})") from None
    embeddings = {}
    for name, (image_key, text_key, identity) in DATACOMP_NPZ_SETS.items():
        if image_key not in keys:
            continue
        image = NpzMember.open(npz, image_key)
        text = NpzMember.open(npz, text_key) if text_key in keys else None
        for member in (image, text):
            if member is not None and member.rows != rows:
                raise IngestError(
                    f"{npz}: {member.key} has {member.rows} rows but {parquet.name} has {rows}; "
                    "the embeddings must be row-aligned with the parquet"
                )
        meta = {**identity, "dim": image.dim, "source": f"DataComp metadata .npz ({image_key})"}
        embeddings[name] = PartEmbeddings(image=image, text=text, meta=meta)
    if not embeddings:
        raise IngestError(
            f"{npz}: has none of {', '.join(k for s in DATACOMP_NPZ_SETS.values() for k in s[:2])}"
        )
    return embeddings


def read(path: Path, options: IngestOptions) -> MetadataParts:
    files = parquet_files(path)
    text_column = options.caption_column or "text"
    total = 0
    for file in files:  # check every file before writing anything
        schema = pq.read_schema(file)
        wanted = [text_column if c == "text" else c for c in REQUIRED_COLUMNS]
        missing = [c for c in wanted if c not in schema.names]
        if missing:
            raise IngestError(
                f"{file}: missing column(s) {', '.join(missing)} of DataComp's metadata schema; "
                f"columns are: {', '.join(schema.names)}"
            )
        total += pq.read_metadata(file).num_rows
    with_npz = [f for f in files if f.with_suffix(".npz").is_file()]
    if with_npz and len(with_npz) != len(files):
        lacking = next(f for f in files if f not in with_npz)
        raise IngestError(
            f"{lacking.with_suffix('.npz')} is missing while {len(with_npz)} other parquet files "
            "have their .npz: embeddings must cover every row (add the missing .npz files, or "
            "ingest from a folder without any)"
        )
    source = path.name if path.is_dir() else path.parent.name
    return MetadataParts(parts=_parts(files, text_column, source, bool(with_npz)), total=total)


def _parts(
    files: list[Path], text_column: str, source: str, with_embeddings: bool
) -> Iterator[MetadataPart]:
    for file in files:
        table = pl.read_parquet(file)
        if text_column != "text":
            table = table.drop("text", strict=False).rename({text_column: "text"})
        renamed = {k: v for k, v in RENAMED.items() if k in table.columns}
        table = table.drop(list(renamed.values()), strict=False).rename(renamed)
        if "source" not in table.columns:
            table = table.with_columns(source=pl.lit(source))
        embeddings = _part_embeddings(file, table.height) if with_embeddings else {}
        yield MetadataPart(table=table, where=file.name, embeddings=embeddings)


# -- metadata used in place ------------------------------------------------------------------


@dataclass(frozen=True)
class _UidTask:
    """Check one file's uids; spill them and their pool rows into buckets by prefix."""

    file: Path
    file_index: int
    first_row: int
    bucket_bits: int
    spill_dir: Path


@dataclass(frozen=True)
class _BucketTask:
    bucket: int
    spill_dir: Path
    index: UidIndex
    files: tuple[tuple[Path, int], ...]  # each file and its first pool row


def _check_uids(task: _UidTask) -> int:
    """Map: every uid of ``task.file`` is 32 lowercase hex characters (else a one-line error
    naming the file and row); its halves and pool rows go to spill files by bucket."""
    from curate.core.uid import arrow_uid_halves

    # ParquetFile, not pq.read_table: that imports pyarrow.dataset (a third of a second)
    uids = pq.ParquetFile(task.file).read(columns=["uid"], use_threads=False).column("uid")
    try:
        halves, first_bad = arrow_uid_halves(uids)
    except ValueError as error:
        raise IngestError(f"{task.file}: column uid: {error}") from None
    if first_bad >= 0:
        raise IngestError(
            f"{task.file} row {first_bad}: invalid uid {uids[first_bad].as_py()!r} (expected 32 "
            "lowercase hex characters); fix the file, or ingest with --copy, which skips such rows"
        )
    rows = np.arange(task.first_row, task.first_row + len(halves), dtype=np.int64)
    buckets = bucket_of(halves, task.bucket_bits)
    for bucket in range(1 << task.bucket_bits):
        chosen = slice(None) if buckets is None else buckets == bucket
        folder = task.spill_dir / f"{bucket:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{task.file_index:06d}.npy", halves[chosen])
        np.save(folder / f"{task.file_index:06d}.rows.npy", rows[chosen])
    return len(halves)


def _index_bucket(task: _BucketTask) -> str | None:
    """Reduce: one bucket of the pool's uid index, sorted and saved; or, when a uid repeats,
    a message naming both files and rows (and nothing saved)."""
    from curate.core.uid import pairs_to_uids

    directory = task.spill_dir / f"{task.bucket:05d}"
    names = sorted(p for p in directory.glob("*.npy") if not p.name.endswith(".rows.npy"))
    halves = np.concatenate([np.zeros((0, 2), np.uint64), *(np.load(p) for p in names)])
    rows = np.concatenate(
        [np.zeros(0, np.int64), *(np.load(p.with_suffix(".rows.npy")) for p in names)]
    )
    pairs, rows, repeated = sorted_bucket(halves, rows)
    if repeated >= 0:
        uid = pairs_to_uids(pairs[repeated : repeated + 1])[0]
        first, again = sorted(int(r) for r in rows[repeated - 1 : repeated + 1])
        return (
            f"{_where(task.files, again)}: uid {uid} repeats {_where(task.files, first)}; uids "
            "must be unique across the folder (or ingest with --copy, which keeps the first "
            "and skips the others)"
        )
    task.index.save_bucket(task.bucket, pairs, rows)
    return None


def _where(files: tuple[tuple[Path, int], ...], row: int) -> str:
    """``FILE row R`` of a pool row."""
    file, first_row = next((f, first) for f, first in reversed(files) if first <= row)
    return f"{file} row {row - first_row}"


def _schema_key(schema) -> list[tuple[str, str]]:
    return [(field.name, str(field.type)) for field in schema]


def _check_schemas(files: list[Path]) -> tuple[list[int], list[str]]:
    """Row counts of the files and their shared column names; one schema for all of them."""
    first = None
    rows = []
    for file in files:
        try:
            metadata = pq.read_metadata(file)
        except Exception as error:  # pyarrow raises several types for a damaged footer
            raise IngestError(f"{file}: not a readable parquet file ({error})") from None
        schema = metadata.schema.to_arrow_schema()
        if first is None:
            first = (file, schema)
            missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
            if missing:
                raise IngestError(
                    f"{file}: missing column(s) {', '.join(missing)} of DataComp's metadata "
                    f"schema; columns are: {', '.join(schema.names)}"
                )
        elif _schema_key(schema) != _schema_key(first[1]):
            theirs, ours = dict(_schema_key(schema)), dict(_schema_key(first[1]))
            differ = [
                f"{name}: {ours.get(name, 'absent')} vs {theirs.get(name, 'absent')}"
                for name in dict.fromkeys([*ours, *theirs])
                if ours.get(name) != theirs.get(name)
            ] or ["column order"]
            raise IngestError(
                f"{file}: its schema differs from {first[0].name} ({'; '.join(differ[:3])}); "
                "every parquet file of a folder used in place needs the same columns and types"
            )
        rows.append(metadata.num_rows)
    assert first is not None
    return rows, list(first[1].names)


def _check_npz(files: list[Path], rows: list[int]) -> list[Path | None]:
    with_npz = [f for f in files if f.with_suffix(".npz").is_file()]
    if not with_npz:
        return [None] * len(files)
    if len(with_npz) != len(files):
        lacking = next(f for f in files if f not in with_npz)
        raise IngestError(
            f"{lacking.with_suffix('.npz')} is missing while {len(with_npz)} other parquet "
            "files have their .npz: embeddings must cover every row (add the missing .npz "
            "files, or ingest from a folder without any)"
        )
    for file, count in zip(files, rows, strict=True):
        _part_embeddings(file, count)  # every member's header: keys, shapes, row counts
    return [f.with_suffix(".npz") for f in files]


def _compressed_npz_note(npz: list[Path | None]) -> str | None:
    """A note when some .npz are deflated (np.savez_compressed): the table stages use the pool
    in place, the embedding stages cannot read those files where they are."""
    compressed = []
    for path in npz:
        if path is not None:
            with zipfile.ZipFile(path) as archive:
                if any(i.compress_type != zipfile.ZIP_STORED for i in archive.infolist()):
                    compressed.append(path)
    if not compressed:
        return None
    return (
        f"{len(compressed)} of {len(npz)} .npz files are compressed (np.savez_compressed), "
        f"e.g. {compressed[0]}: stages that read the pool's columns use it in place, but the "
        "embedding stages cannot read those files where they are; ingest with --copy to use them"
    )


def reference_in_place(
    source: Path | str,
    out: Path | str,
    *,
    name: str | None = None,
    overwrite: bool = False,
    executor: Executor | None = None,
) -> IngestResult:
    """Make a metadata-only pool that uses DataComp's parquet files (and .npz) where they are.

    One streaming pass checks them: one schema for every file, each .npz present with as
    many rows as its parquet, every uid 32 lowercase hex characters and unique across the
    folder. The uids are checked by file on ``executor`` (a task per file spills the uid
    halves and rows into buckets by prefix; a task per bucket sorts them, which finds any
    repeat, and keeps them as the pool's :mod:`uid index <curate.core.uid_index>`), so no
    process holds more than a file's or a bucket's uids. Bad input stops with a one-line
    error naming the file, and nothing is written.

    The pool then holds ``sample_files.json`` (the files, their rows, sizes and mtimes)
    instead of a copy: rows are numbered across the files in name order. Rows are kept as
    they are (no captions stripped or skipped; ``ingest`` with ``--copy`` does that).
    """
    import shutil
    import time

    from curate.core.atomic import staged_output, write_json
    from curate.core.errors import InputNotFoundError
    from curate.core.executor import LocalExecutor
    from curate.core.layout import PoolLayout
    from curate.core.manifest import Manifest, produced_by
    from curate.ingest.run import IngestResult

    started = time.perf_counter()
    source, out = Path(source), Path(out)
    if not source.exists():
        raise InputNotFoundError(f"{source} does not exist")
    files = [f.resolve() for f in parquet_files(source)]
    rows, columns = _check_schemas(files)
    npz = _check_npz(files, rows)
    total = sum(rows)
    executor = executor or LocalExecutor(workers=1)
    with staged_output(out, overwrite=overwrite) as staging:
        spill = staging / "_uids"
        spill.mkdir()
        index = UidIndex(PoolLayout(staging).uid_index, total, bucket_bits(total))
        index.directory.mkdir()
        first_rows = np.cumsum([0, *rows[:-1]]).tolist()
        uid_tasks = [
            _UidTask(f, i, first, index.bucket_bits, spill)
            for i, (f, first) in enumerate(zip(files, first_rows, strict=True))
        ]
        for file, count, expected in zip(
            files, executor.map(_check_uids, uid_tasks, threads_ok=True), rows, strict=True
        ):
            if count != expected:
                raise IngestError(f"{file}: read {count} uids but its footer says {expected}")
        located = tuple(zip(files, first_rows, strict=True))
        bucket_tasks = [_BucketTask(b, spill, index, located) for b in range(index.buckets)]
        for problem in executor.map(_index_bucket, bucket_tasks, threads_ok=True):
            if problem is not None:
                raise IngestError(problem)
        index.write_header()
        shutil.rmtree(spill)
        layout = PoolLayout(staging)
        listing = []
        for file, count, embeddings in zip(files, rows, npz, strict=True):
            stat = file.stat()
            entry = {
                "path": str(file),
                "rows": count,
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "npz": None if embeddings is None else str(embeddings),
            }
            if embeddings is not None:
                npz_stat = embeddings.stat()
                entry |= {"npz_size": npz_stat.st_size, "npz_mtime_ns": npz_stat.st_mtime_ns}
            listing.append(entry)
        write_json(layout.sample_files, {"columns": columns, "files": listing})
        report = {"accepted": total, "skipped": 0, "skipped_by_reason": {}, "skip_examples": []}
        if (note := _compressed_npz_note(npz)) is not None:
            report["notes"] = [note]
        write_json(layout.ingest_report, report)
        record = {"type": "datacomp", "path": str(source.resolve()), "in_place": True}
        Manifest(
            name=name or out.name,
            kind="pool",
            source=record,
            sample_count=total,
            has_images=False,
            produced_by=produced_by("ingest", in_place=True, files=len(files)),
            extra={
                "ingest": {"accepted": total, "skipped": 0},
                "in_place": {"files": len(files), "npz": npz[0] is not None},
            },
        ).write(staging)
    return IngestResult(
        pool=out,
        format="datacomp",
        has_images=False,
        report=report,
        seconds=time.perf_counter() - started,
    )
