"""decisions.parquet, compact: what each stage removed, not a row per sample and stage.

Each stage's task writes one part per shard (:func:`write_part`, in one of the two forms of
:mod:`curate.core.stage_parts`): the rows it removed with their reasons, and, only when the
stage computed scores of its own, every row it saw with its score; a stage that removed rows
for one reason and stores no scores writes them as a bitmap. A stage whose scores are a
column of the samples table (``StageResult.score_column``) stores none. At the end the parts
are appended, stage by stage and shard by shard, into one file (:func:`assemble`) whose
metadata names the stages: a stage whose parts are all bitmaps as bitmap records aligned to
pool order (one per block of ``CompactInfo.bitmap_rows`` rows with a removal), the others as
rows; :mod:`curate.core.decisions_view` expands it back to one row per sample and stage (the
``decisions`` view of ``curate sql`` and the report).

One stage removing 70 % of 12.8M rows stores 1.4 MB (a bit per pool row) where the full form
took 326 MB, and writing it takes a few milliseconds where its 8.9M rows took 0.4 CPU-s.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.core.arrow_numpy import binary_array, numpy_array, numpy_values, string_array
from curate.core.atomic import atomic_path
from curate.core.decisions_view import BITMAP_COLUMN, METADATA_KEY, CompactInfo
from curate.core.stage_parts import (
    PART_SCHEMA,
    Bitmap,
    bitmap_reason,
    read_bitmap,
    read_part,
    write_removed_bitmap,
)
from curate.filters.registry import SparseResult, StageResult

ROW_GROUP_ROWS = 1024 * 1024
BITMAP_GROUP_RECORDS = 16  # bitmap records in one row group: 16 MiB of bits at most
SCHEMA = pa.schema([("stage_index", pa.uint16()), *PART_SCHEMA, (BITMAP_COLUMN, pa.binary())])
WRITE_OPTIONS = {
    "compression": "zstd",
    "use_dictionary": ["reason"],
    "column_encoding": {"row": "DELTA_BINARY_PACKED", "score": "BYTE_STREAM_SPLIT"},
}
# parts are read whole, once: no statistics (a third of their write time); the file keeps
# them where a reader prunes row groups, on the stage and the row
PART_WRITE_OPTIONS = {**WRITE_OPTIONS, "write_statistics": False}
FILE_WRITE_OPTIONS = {**WRITE_OPTIONS, "write_statistics": ["stage_index", "row"]}


class StageAnswerError(RuntimeError):
    """A stage returned a keep-mask, reasons or scores that do not fit its rows."""


def check_result(stage: str, index: int, rows: int, result: StageResult) -> np.ndarray:
    """The keep-mask of ``result``, checked against the ``rows`` the stage was given."""
    keep = np.asarray(result.keep)
    if keep.shape != (rows,) or keep.dtype != np.bool_:
        raise StageAnswerError(
            f"stage {index} ({stage}) returned a keep-mask of shape {keep.shape} and "
            f"dtype {keep.dtype}; expected {rows} booleans, one per row it was given"
        )
    return keep


def check_sparse(stage: str, index: int, rows: int, result: SparseResult) -> None:
    """A sparse answer checked against the ``rows`` the stage was given: positions ascending,
    within the rows, a reason per removed row and a score per scored row."""
    problem = None
    if result.rows != rows:
        problem = f"answers for {result.rows} rows"
    elif not _ascending_within(result.removed, rows):
        problem = "removed positions that are not ascending row positions"
    elif not isinstance(result.reason, str) and len(result.reason) != len(result.removed):
        problem = f"{len(result.reason)} reasons for {len(result.removed)} removed rows"
    elif (result.scored is None) != (result.score is None):
        problem = "scored rows without scores, or scores without rows"
    elif result.scored is not None and result.score is not None:
        if not _ascending_within(result.scored, rows):
            problem = "scored positions that are not ascending row positions"
        elif len(result.score) != len(result.scored):
            problem = f"{len(result.score)} scores for {len(result.scored)} scored rows"
    if problem is not None:
        raise StageAnswerError(
            f"stage {index} ({stage}) returned {problem}; it was given {rows} rows"
        )


def _ascending_within(positions: np.ndarray, rows: int) -> bool:
    positions = np.asarray(positions)
    return positions.dtype.kind in "iu" and (
        not len(positions)
        or (
            bool(np.all(positions[1:] > positions[:-1]))
            and positions[0] >= 0
            and positions[-1] < rows
        )
    )


def write_part(
    path: Path, stage: str, index: int, rows: pl.Series, result: StageResult
) -> tuple[int, int]:
    """One shard's decisions of one stage (``rows``: the pool rows it was given, in order).
    Returns (rows in, rows kept)."""
    n = rows.len()
    keep = check_result(stage, index, n, result)
    store_scores = result.score is not None and result.score_column is None
    if n and not store_scores and isinstance(result.reason, str):  # the bitmap form
        write_removed_bitmap(path, rows.cast(pl.UInt64).to_numpy(), keep, result.reason)
        return n, int(keep.sum())
    if store_scores:
        score = np.asarray(result.score, dtype=np.float32)
        if score.shape != (n,):
            raise StageAnswerError(f"stage {stage} returned {score.shape} scores for {n} rows")
        selected = np.ones(n, dtype=bool)
    else:
        score = None
        selected = ~keep
    positions = np.flatnonzero(selected)
    if isinstance(result.reason, str):  # one reason: the dictionary's only value
        indices = numpy_array(np.zeros(len(positions), dtype=np.int32), keep[positions])
        reasons = pa.DictionaryArray.from_arrays(indices, string_array([result.reason]))
    else:
        all_reasons = _reasons(stage, result.reason, keep, n)
        reasons = all_reasons.take(numpy_array(positions.astype(np.int64)))
    table = pa.table(
        {
            "row": numpy_array(rows.cast(pl.UInt64).to_numpy()[positions]),
            "kept": numpy_array(keep[positions]),
            "reason": reasons,
            "score": numpy_array(score[positions])
            if score is not None
            else pa.nulls(len(positions), pa.float32()),
        },
        schema=PART_SCHEMA,
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **PART_WRITE_OPTIONS)
    return n, int(keep.sum())


def _reasons(stage: str, reason: object, keep: np.ndarray, n: int) -> pa.DictionaryArray:
    """Per row: its reason where removed, null where kept, as a dictionary array."""
    if isinstance(reason, str):
        indices = numpy_array(np.zeros(n, dtype=np.int32), keep)
        return pa.DictionaryArray.from_arrays(indices, string_array([reason]))
    if isinstance(reason, pl.Series):
        values = reason.cast(pl.String).to_arrow()
    else:
        array = np.asarray(reason, dtype=object)
        if array.shape != (n,):
            raise StageAnswerError(f"stage {stage} returned {array.shape} reasons for {n} rows")
        values = pa.array(array, pa.large_string())
    if len(values) != n:
        raise StageAnswerError(f"stage {stage} returned {len(values)} reasons for {n} rows")
    values = values.cast(pa.string())
    encoded = values.dictionary_encode()
    if not isinstance(encoded, pa.DictionaryArray):  # a ChunkedArray from a chunked Series
        encoded = encoded.combine_chunks()
    indices = numpy_array(numpy_values(encoded.indices, null_as=0).astype(np.int32), keep)
    return pa.DictionaryArray.from_arrays(indices, encoded.dictionary)


def assemble(
    path: Path,
    stages: Sequence[tuple[int, Sequence[Path]]],
    info: CompactInfo,
    *,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> int:
    """Append every stage's parts (in stage and shard order) into ``path``; returns its
    records.

    A stage in rows is regrouped into row groups of ``row_group_rows``, each group's reason
    dictionary holding the reasons it uses in order of first appearance; a stage in bitmaps
    is laid out in blocks of pool rows. Either way the file is the same bytes however the
    pool was cut into shards."""
    schema = SCHEMA.with_metadata({METADATA_KEY: info.to_json().encode("utf-8")})
    written = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, **FILE_WRITE_OPTIONS) as writer:
        for index, parts in stages:
            reason = _bitmap_reason(parts)
            if reason is None:
                groups = _row_groups(_tables(index, parts, schema), row_group_rows)
                tables = (_normal_reasons(group) for group in groups)
            else:
                tables = _bitmap_tables(index, parts, reason, info, schema)
            for table in tables:
                writer.write_table(table)
                written += table.num_rows
        if written == 0:
            writer.write_table(schema.empty_table())
    return written


def _bitmap_reason(parts: Sequence[Path]) -> str | None:
    """The stage's one reason when every part with rows is a bitmap and all share it; else
    None (the stage is written as rows). Only the parts' footers and reasons are read."""
    reasons = set()
    for part in parts:
        reason = bitmap_reason(part)
        if reason is None:
            if pq.ParquetFile(part).metadata.num_rows:
                return None
            continue  # a part of no rows (a shard the stage did not see)
        reasons.add(reason)
    return reasons.pop() if len(reasons) == 1 else None


def _bitmap_tables(
    index: int, parts: Sequence[Path], reason: str, info: CompactInfo, schema: pa.Schema
) -> Iterator[pa.Table]:
    """The stage's bitmap records, in row groups of ``BITMAP_GROUP_RECORDS``."""
    bitmaps = (bitmap for part in parts if (bitmap := read_bitmap(part)) is not None)
    records = _blocks(bitmaps, info.pool_rows, info.bitmap_rows)
    while group := list(itertools.islice(records, BITMAP_GROUP_RECORDS)):
        count = len(group)
        reasons = pa.DictionaryArray.from_arrays(
            numpy_array(np.zeros(count, dtype=np.int32)), string_array([reason])
        )
        columns = {
            "stage_index": numpy_array(np.full(count, index, dtype=np.uint16)),
            "row": numpy_array(np.array([first for first, _ in group], dtype=np.uint64)),
            "kept": numpy_array(np.zeros(count, dtype=bool)),
            "reason": reasons,
            "score": pa.nulls(count, pa.float32()),
            BITMAP_COLUMN: binary_array([bits for _, bits in group]),
        }
        yield pa.table(columns, schema=schema)


def _blocks(
    bitmaps: Iterable[Bitmap], pool_rows: int, block_rows: int
) -> Iterator[tuple[int, bytes]]:
    """(first row, bits) of every block of ``block_rows`` pool rows with a removed row: the
    parts' bits (ascending, not overlapping) laid out in pool order, most significant bit
    first. One block and one part in memory at a time."""
    block = np.zeros(block_rows, dtype=bool)
    start = 0

    def finished() -> Iterator[tuple[int, bytes]]:
        if block.any():
            bits = block[: min(block_rows, pool_rows - start)]
            yield start, np.packbits(bits, bitorder="big").tobytes()
            block[:] = False

    for bitmap in bitmaps:
        removed = np.unpackbits(bitmap.removed, count=bitmap.span, bitorder="little").view(bool)
        position, end = bitmap.first_row, bitmap.first_row + bitmap.span
        while position < end:
            if position >= start + block_rows:
                yield from finished()
                start = position - position % block_rows
            stop = min(end, start + block_rows)
            block[position - start : stop - start] = removed[
                position - bitmap.first_row : stop - bitmap.first_row
            ]
            position = stop
    yield from finished()


def _tables(index: int, parts: Sequence[Path], schema: pa.Schema) -> Iterator[pa.Table]:
    for part in parts:
        table = read_part(part)
        if len(table):
            stage_index = numpy_array(np.full(len(table), index, np.uint16))
            table = table.add_column(0, "stage_index", stage_index)
            table = table.append_column(BITMAP_COLUMN, pa.nulls(len(table), pa.binary()))
            yield table.cast(schema)


def _row_groups(tables: Iterator[pa.Table], size: int) -> Iterator[pa.Table]:
    """Regroup ``tables`` into tables of exactly ``size`` rows (the last may be shorter)."""
    pending: list[pa.Table] = []
    pending_rows = 0
    for table in tables:
        pending.append(table)
        pending_rows += table.num_rows
        while pending_rows >= size:
            joined = pa.concat_tables(pending)  # chunks keep their own parts' dictionaries
            yield joined.slice(0, size)
            rest = joined.slice(size)
            pending, pending_rows = [rest], rest.num_rows
    if pending_rows:
        yield pa.concat_tables(pending)


def _normal_reasons(group: pa.Table) -> pa.Table:
    """The group with one reason dictionary: the values it uses, in order of first use."""
    column = group.column("reason").unify_dictionaries()
    dictionary = column.chunk(0).dictionary if column.num_chunks else string_array([])
    indices = pa.chunked_array(
        [chunk.indices for chunk in column.chunks], type=pa.int32()
    ).combine_chunks()
    if len(dictionary) == 1 and indices.null_count == 0:  # one reason for every row: normal
        reasons = pa.DictionaryArray.from_arrays(indices, dictionary)
        return group.set_column(group.schema.get_field_index("reason"), "reason", reasons)
    used = numpy_values(pc.unique(indices.drop_null())).astype(np.int64)
    remap = np.zeros(len(dictionary), dtype=np.int32)
    remap[used] = np.arange(len(used), dtype=np.int32)
    null = numpy_values(indices.is_null())
    values = numpy_values(indices, null_as=0).astype(np.int64)
    new_indices = numpy_array(np.where(null, 0, remap[values]), null)
    reasons = pa.DictionaryArray.from_arrays(new_indices, dictionary.take(numpy_array(used)))
    return group.set_column(group.schema.get_field_index("reason"), "reason", reasons)
