"""Reading a pool: its manifest, its samples table and its images.

A pool's samples table is ``samples.parquet``, or, for metadata used in place (DataComp's
parquet files, see :mod:`curate.ingest.datacomp`), the files that ``sample_files.json``
lists: rows are numbered across the files in their order, and nothing was copied. Either
way :meth:`Pool.sample_files` lists the files and :meth:`Pool.table_shards` cuts the rows
into blocks that a task reads on its own (only the columns it asks for).
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from curate.core.errors import InputNotFoundError, NotAPoolError, UserInputError
from curate.core.layout import PoolLayout
from curate.core.manifest import Manifest, read_manifest

SHARD_ROWS = 1 << 20  # rows a table shard holds at most (one task's block of the samples table)


@dataclass(frozen=True)
class SampleFile:
    """One parquet file of a pool's samples table and the pool rows it holds."""

    path: Path
    rows: int
    first_row: int  # the pool row of its first row
    npz: Path | None = None  # DataComp's embeddings of its rows, used in place (row-aligned)


@dataclass(frozen=True)
class TableShard:
    """A block of consecutive pool rows inside one sample file: the unit of a table task.

    Picklable; :meth:`read` opens the file itself, so a task on another process or machine
    (with the same paths) reads only its own rows and columns.
    """

    index: int
    path: Path
    first_row: int  # pool row of the shard's first row
    rows: int
    file_offset: int  # its first row's position inside the file

    def read(self, columns: Sequence[str]) -> pl.DataFrame:
        """``row`` (the pool row, UInt64) and ``columns`` of the shard's rows, in pool order,
        reading only the row groups the shard spans."""

        rows = pl.int_range(self.first_row, self.first_row + self.rows, dtype=pl.UInt64, eager=True)
        frame = pl.DataFrame({"row": rows})
        wanted = [c for c in dict.fromkeys(columns) if c != "row"]
        if not wanted or not self.rows:
            if wanted:
                schema = pl.read_parquet_schema(self.path)
                return frame.with_columns(pl.Series(c, [], dtype=schema[c]) for c in wanted)
            return frame
        scan = pl.scan_parquet(self.path).select(wanted)
        if self.file_offset or self.rows < _file_rows(self.path):
            scan = scan.slice(self.file_offset, self.rows)
        read = scan.collect()
        assert isinstance(read, pl.DataFrame)
        if read.height != self.rows:
            raise RuntimeError(f"{self.path}: read {read.height} rows, expected {self.rows}")
        return frame.hstack(read)

    def read_arrow(self, columns: Sequence[str]) -> Any:
        """``columns`` of the shard's rows as an Arrow table (no ``row``), reading only the
        row groups the shard spans: for a task that stays in Arrow (strings are not
        converted)."""
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(self.path)
        metadata = parquet.metadata
        groups, group_start, skip = [], 0, 0
        stop = self.file_offset + self.rows
        for group in range(metadata.num_row_groups):
            group_rows = metadata.row_group(group).num_rows
            if group_start + group_rows > self.file_offset and group_start < stop:
                if not groups:
                    skip = self.file_offset - group_start
                groups.append(group)
            group_start += group_rows
        table = parquet.read_row_groups(groups, columns=list(columns), use_threads=False)
        if skip or table.num_rows != self.rows:
            table = table.slice(skip, self.rows)
        return table


@dataclass(frozen=True)
class Pool:
    root: Path
    manifest: Manifest

    @classmethod
    def open(cls, path: Path | str) -> Pool:
        root = Path(path)
        if not root.is_dir():
            raise NotAPoolError(f"{root} does not exist or is not a directory")
        manifest = read_manifest(root)
        if manifest.kind != "pool":
            raise NotAPoolError(f"{root} is a {manifest.kind}, not a pool")
        return cls(root, manifest)

    @property
    def layout(self) -> PoolLayout:
        return PoolLayout(self.root)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def in_place(self) -> bool:
        """True when the samples table is files used where they are (sample_files.json)."""
        return not self.layout.samples.is_file() and self.layout.sample_files.is_file()

    def sample_files(self) -> list[SampleFile]:
        """The samples table's parquet files in pool order (one for an ingested pool)."""
        return sample_files(self.root)

    def sample_paths(self) -> list[Path]:
        return [file.path for file in self.sample_files()]

    def scan_samples(self) -> pl.LazyFrame:
        return pl.scan_parquet(self.sample_paths())

    def samples(self, columns: list[str] | None = None) -> pl.DataFrame:
        if not self.in_place:
            return pl.read_parquet(self.layout.samples, columns=columns)
        scan = self.scan_samples()
        return (scan if columns is None else scan.select(columns)).collect()

    def columns(self) -> list[str]:
        """The samples table's column names (from the first file's schema)."""
        import pyarrow.parquet as pq

        return list(pq.read_schema(self.sample_paths()[0]).names)

    def table_shards(self, max_rows: int = SHARD_ROWS) -> list[TableShard]:
        """The rows cut into blocks of at most ``max_rows``, never across files: a pure
        function of the files, so every executor gets the same shards."""
        return table_shards(self.sample_files(), max_rows)

    def shard_paths(self) -> list[Path]:
        return sorted(self.layout.shards_dir.glob("*.tar"))

    def iter_images(self, shard: str) -> Iterator[tuple[str, str, bytes]]:
        """Yield (key, extension, image bytes) from one shard, in file order."""
        with tarfile.open(self.root / shard) as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, _, extension = member.name.partition(".")
                if extension in ("jpg", "png", "webp", "gif", "bmp"):
                    handle = archive.extractfile(member)
                    assert handle is not None
                    yield key, extension, handle.read()

    def read_images(self, rows: pl.DataFrame) -> list[bytes]:
        """Image bytes for the given sample rows (needs columns shard, key), in row order."""
        wanted: dict[tuple[str, str], int] = {
            (shard, key): i
            for i, (shard, key) in enumerate(rows.select("shard", "key").iter_rows())
        }
        found: list[bytes | None] = [None] * rows.height
        for shard in sorted({shard for shard, _ in wanted}):
            for key, _, data in self.iter_images(shard):
                index = wanted.get((shard, key))
                if index is not None:
                    found[index] = data
        missing = [i for i, data in enumerate(found) if data is None]
        if missing:
            shard, key = rows.row(missing[0], named=True)["shard"], rows["key"][missing[0]]
            raise InputNotFoundError(f"{self.root}: image {key} not found in {shard}")
        return found  # type: ignore[return-value]


def _file_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows


def sample_files(root: Path) -> list[SampleFile]:
    """The samples table's files of the pool at ``root``: ``samples.parquet``, or the files
    ``sample_files.json`` lists (checked unchanged since ingest: same size and mtime)."""
    import pyarrow.parquet as pq

    layout = PoolLayout(Path(root))
    if layout.samples.is_file() or not layout.sample_files.is_file():
        rows = pq.read_metadata(layout.samples).num_rows if layout.samples.is_file() else 0
        return [SampleFile(layout.samples, rows, 0)]
    listing = json.loads(layout.sample_files.read_text("utf-8"))
    files, first = [], 0
    for entry in listing["files"]:
        path = Path(entry["path"])
        _check_unchanged(path, entry["size"], entry["mtime_ns"], root)
        npz = Path(entry["npz"]) if entry.get("npz") else None
        if npz is not None and "npz_size" in entry:
            _check_unchanged(npz, entry["npz_size"], entry["npz_mtime_ns"], root)
        files.append(SampleFile(path, int(entry["rows"]), first, npz))
        first += int(entry["rows"])
    return files


def _check_unchanged(path: Path, size: int, mtime_ns: int, root: Path) -> None:
    """A file a pool uses in place is still there, with the size and mtime ingest saw."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise InputNotFoundError(
            f"{path} is missing: the pool {root} uses it in place; restore it, or ingest "
            "again (with --copy to keep a copy inside the pool)"
        ) from None
    if [stat.st_size, stat.st_mtime_ns] != [size, mtime_ns]:
        raise UserInputError(
            f"{path} changed since `curate ingest` referenced it into {root} (size or "
            "mtime differ); ingest it again so that rows and checks stay right"
        )


def table_shards(files: Sequence[SampleFile], max_rows: int = SHARD_ROWS) -> list[TableShard]:
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1 (got {max_rows})")
    shards: list[TableShard] = []
    for file in files:
        count = -(-file.rows // max_rows)
        bounds = [file.rows * i // count for i in range(count + 1)] if count else [0]
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            shards.append(
                TableShard(len(shards), file.path, file.first_row + start, stop - start, start)
            )
    return shards


@dataclass(frozen=True)
class ShardRows:
    """The rows of a shard still in play: the shard minus the rows that earlier stages
    removed, as listed (column ``row``, ``kept`` false) in their decision files for it.
    Picklable: a task reads the files itself."""

    shard: TableShard
    removed_files: tuple[Path, ...] = ()

    def mask(self) -> pl.Series | None:
        """Boolean mask over the shard's rows (None: every row is in play)."""
        import numpy as np

        from curate.core.stage_parts import removed_rows

        if not self.removed_files:
            return None
        keep = np.ones(self.shard.rows, dtype=bool)
        for path in self.removed_files:
            keep[removed_rows(path) - self.shard.first_row] = False
        return pl.Series("keep", keep)

    def read(self, columns: Sequence[str]) -> pl.DataFrame:
        """``row`` and ``columns`` of the rows in play, in pool order."""
        rows = self.shard.read(columns)
        mask = self.mask()
        return rows if mask is None else rows.filter(mask)

    def read_arrow(self, columns: Sequence[str]) -> Any:
        """``columns`` of the rows in play as an Arrow table (no ``row``), in pool order."""
        table = self.shard.read_arrow(columns)
        mask = self.mask()
        return table if mask is None else table.filter(mask.to_arrow())
