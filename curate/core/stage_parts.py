"""A stage's decisions for one shard (a "part"), as build-pool keeps them while it runs.

Two forms, both parquet files:

- rows (:data:`PART_SCHEMA`): the rows the stage removed (``row``, ``kept`` false,
  ``reason``, ``score``) and, when the stage computed scores of its own, every row it saw
  with its score;
- bitmap (:data:`BITMAP_SCHEMA`), for a stage that removed rows for one reason and stores no
  scores (clip_score with a score column, most filters): one record holding the first pool
  row of the span the stage saw, the span's length, the removed rows as bits and the reason.
  It is written and read several times faster than the same rows as a column.

:func:`read_part` gives either as the rows form; :func:`removed_rows` gives the rows removed;
:func:`read_bitmap` gives a bitmap part as it is and :func:`bitmap_reason` its reason (None
for the rows form).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.core.arrow_numpy import binary_array, numpy_array, numpy_values, string_array
from curate.core.atomic import atomic_path

REASONS = pa.dictionary(pa.int32(), pa.string())
PART_SCHEMA = pa.schema(
    [("row", pa.uint64()), ("kept", pa.bool_()), ("reason", REASONS), ("score", pa.float32())]
)
BITMAP_SCHEMA = pa.schema(
    [
        ("first_row", pa.uint64()),
        ("span", pa.uint64()),
        ("removed", pa.binary()),  # bit i (little-endian bit order): row first_row + i
        ("reason", pa.string()),
    ]
)


def write_removed_bitmap(path: Path, rows: np.ndarray, keep: np.ndarray, reason: str) -> None:
    """The bitmap part of a stage that saw pool ``rows`` (ascending) and kept ``keep``."""
    first = int(rows[0]) if len(rows) else 0
    span = int(rows[-1]) - first + 1 if len(rows) else 0
    removed = np.zeros(span, dtype=bool)
    removed[rows[~keep].astype(np.int64) - first] = True
    record = {
        "first_row": numpy_array(np.array([first], dtype=np.uint64)),
        "span": numpy_array(np.array([span], dtype=np.uint64)),
        "removed": binary_array([np.packbits(removed, bitorder="little").tobytes()]),
        "reason": string_array([reason]),
    }
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(record, schema=BITMAP_SCHEMA), tmp, write_statistics=False)


@dataclass(frozen=True)
class Bitmap:
    first_row: int
    span: int
    removed: np.ndarray  # packed bits, little-endian bit order: bit i is row first_row + i
    reason: str


def read_bitmap(path: Path) -> Bitmap | None:
    """The part as it was written, when in the bitmap form (a rows part: only its footer
    is read)."""
    part = pq.ParquetFile(path)
    return _as_bitmap(part.read()) if part.schema_arrow.names == BITMAP_SCHEMA.names else None


def bitmap_reason(path: Path) -> str | None:
    """The reason of a bitmap part (its bits are not read); None for the rows form."""
    part = pq.ParquetFile(path)
    if part.schema_arrow.names != BITMAP_SCHEMA.names:
        return None
    return part.read(columns=["reason"]).column("reason")[0].as_py()


def read_part(path: Path) -> pa.Table:
    """The part as :data:`PART_SCHEMA` rows, whichever form it was written in."""
    table = pq.ParquetFile(path).read()
    bitmap = _as_bitmap(table)
    if bitmap is None:
        return table.cast(PART_SCHEMA)
    rows = bitmap_rows(bitmap)
    count = len(rows)
    indices = numpy_array(np.zeros(count, dtype=np.int32))
    columns = {
        "row": numpy_array(rows.astype(np.uint64)),
        "kept": numpy_array(np.zeros(count, dtype=bool)),
        "reason": pa.DictionaryArray.from_arrays(indices, string_array([bitmap.reason])),
        "score": pa.nulls(count, pa.float32()),
    }
    return pa.table(columns, schema=PART_SCHEMA)


def removed_rows(path: Path) -> np.ndarray:
    """The pool rows (int64) the part's stage removed."""
    table = pq.ParquetFile(path).read()
    bitmap = _as_bitmap(table)
    if bitmap is not None:
        return bitmap_rows(bitmap)
    rows = numpy_values(table.column("row")).astype(np.int64)
    return rows[~numpy_values(table.column("kept"))]


def bitmap_rows(bitmap: Bitmap) -> np.ndarray:
    """The pool rows (int64) whose bits are set."""
    bits = np.unpackbits(bitmap.removed, count=bitmap.span, bitorder="little")
    return np.flatnonzero(bits) + bitmap.first_row


def _as_bitmap(table: pa.Table) -> Bitmap | None:
    if table.schema.names != BITMAP_SCHEMA.names:
        return None
    return Bitmap(
        table.column("first_row")[0].as_py(),
        table.column("span")[0].as_py(),
        np.frombuffer(table.column("removed")[0].as_py(), dtype=np.uint8),
        table.column("reason")[0].as_py(),
    )
