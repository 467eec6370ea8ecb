"""Parquet files in the Hugging Face ``datasets`` image layout (``image`` = struct of bytes +
path, plus caption/text/label/class_name... columns), read one row group at a time so that
memory does not grow with the input.

For parallel ingest the rows are split into parts of about ``PART_ROWS``: consecutive whole
row groups, or slices of a larger row group (each such part reads its whole row group).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curate.core.pool_writer import IngestError, Skip, SourceSample
from curate.ingest.arrow_rows import ArrowLayout, parquet_features
from curate.ingest.base import ImageItems, IngestOptions, ItemsPart

BATCH_ROWS = 256
PART_ROWS = 2048


def parquet_files(path: Path) -> list[Path]:
    files = [path] if path.is_file() else sorted(path.glob("*.parquet"))
    if not files:
        raise IngestError(f"{path}: no .parquet files found")
    return files


def read(path: Path, options: IngestOptions) -> ImageItems:
    files = parquet_files(path)
    layouts: list[tuple[Path, ArrowLayout]] = []
    parts: list[ItemsPart] = []
    total = 0
    source = path.stem if path.is_file() else path.name
    for file in files:  # check every file's columns before ingesting any row
        try:
            metadata = pq.read_metadata(file)
        except Exception as error:  # pyarrow raises several types for a damaged footer
            raise IngestError(f"{file}: not a readable parquet file ({error})") from None
        schema = metadata.schema.to_arrow_schema()
        layout = ArrowLayout.resolve(schema, parquet_features(schema), options, str(file))
        layouts.append((file, layout))
        parts += [
            ItemsPart(_part_items, (file, layout, source, *rows), rows[-1] - rows[-2])
            for rows in _row_parts(metadata)
        ]
        total += metadata.num_rows
    return ImageItems(items=_items(layouts, source), total=total, parts=tuple(parts))


def _items(layouts: list[tuple[Path, ArrowLayout]], source: str) -> Iterator[SourceSample | Skip]:
    for file, layout in layouts:
        parquet = pq.ParquetFile(file)
        yield from layout.samples(
            parquet.iter_batches(batch_size=BATCH_ROWS),
            source=source,
            where=file.name,
            image_root=file.parent,
        )


def _row_parts(metadata: pq.FileMetaData) -> list[tuple[tuple[int, ...], int, int, int]]:
    """Per part: (its row groups, the first row of those groups, first row, stop row)."""
    parts: list[tuple[tuple[int, ...], int, int, int]] = []
    pending: list[int] = []
    pending_start = offset = 0
    for group in range(metadata.num_row_groups):
        rows = metadata.row_group(group).num_rows
        if rows > PART_ROWS:
            if pending:
                parts.append((tuple(pending), pending_start, pending_start, offset))
                pending = []
            for first in range(offset, offset + rows, PART_ROWS):
                parts.append(((group,), offset, first, min(first + PART_ROWS, offset + rows)))
        else:
            if not pending:
                pending_start = offset
            pending.append(group)
            if offset + rows - pending_start >= PART_ROWS:
                parts.append((tuple(pending), pending_start, pending_start, offset + rows))
                pending = []
        offset += rows
    if pending:
        parts.append((tuple(pending), pending_start, pending_start, offset))
    return parts


def _part_items(
    file: Path,
    layout: ArrowLayout,
    source: str,
    row_groups: tuple[int, ...],
    groups_start: int,
    first: int,
    stop: int,
) -> Iterator[SourceSample | Skip]:
    """The items of rows ``first`` .. ``stop - 1`` of ``file``, read from ``row_groups``."""
    batches = pq.ParquetFile(file).iter_batches(batch_size=BATCH_ROWS, row_groups=row_groups)
    sliced = _slice_batches(batches, groups_start, first, stop)
    yield from layout.samples(
        sliced, source=source, where=file.name, image_root=file.parent, first_row=first
    )


def _slice_batches(
    batches: Iterable[pa.RecordBatch], offset: int, first: int, stop: int
) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        start, offset = offset, offset + batch.num_rows
        low, high = max(first, start), min(stop, offset)
        if high > low:
            yield batch.slice(low - start, high - low)
        if offset >= stop:
            return
