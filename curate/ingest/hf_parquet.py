"""Parquet files in the Hugging Face ``datasets`` image layout (``image`` = struct of bytes +
path, plus caption/text/label/class_name... columns), read one row group at a time so that
memory does not grow with the input."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from curate.ingest.arrow_rows import ArrowLayout, parquet_features
from curate.ingest.base import ImageItems, IngestOptions
from curate.pool_writer import IngestError, Skip, SourceSample

BATCH_ROWS = 256


def parquet_files(path: Path) -> list[Path]:
    files = [path] if path.is_file() else sorted(path.glob("*.parquet"))
    if not files:
        raise IngestError(f"{path}: no .parquet files found")
    return files


def read(path: Path, options: IngestOptions) -> ImageItems:
    files = parquet_files(path)
    layouts: list[tuple[Path, ArrowLayout]] = []
    total = 0
    for file in files:  # check every file's columns before ingesting any row
        try:
            metadata = pq.read_metadata(file)
        except Exception as error:  # pyarrow raises several types for a damaged footer
            raise IngestError(f"{file}: not a readable parquet file ({error})") from None
        schema = metadata.schema.to_arrow_schema()
        layouts.append(
            (file, ArrowLayout.resolve(schema, parquet_features(schema), options, str(file)))
        )
        total += metadata.num_rows
    source = path.stem if path.is_file() else path.name
    return ImageItems(items=_items(layouts, source), total=total)


def _items(layouts: list[tuple[Path, ArrowLayout]], source: str) -> Iterator[SourceSample | Skip]:
    for file, layout in layouts:
        parquet = pq.ParquetFile(file)
        yield from layout.samples(
            parquet.iter_batches(batch_size=BATCH_ROWS),
            source=source,
            where=file.name,
            image_root=file.parent,
        )
