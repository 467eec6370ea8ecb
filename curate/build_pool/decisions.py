"""decisions.parquet, compact: what each stage removed, not a row per sample and stage.

Each stage's task writes one part per shard (:func:`write_part`, in one of the two forms of
:mod:`curate.core.stage_parts`): the rows it removed with their reasons, and, only when the
stage computed scores of its own, every row it saw with its score; a stage that removed rows
for one reason and stores no scores writes them as a bitmap. A stage whose scores are a
column of the samples table (``StageResult.score_column``) stores none. At the end the parts
are appended, stage by stage and shard by shard, into one file (:func:`assemble`) whose
metadata names the stages; :mod:`curate.core.decisions_view` expands it back to one row per
sample and stage (the ``decisions`` view of ``curate sql`` and the report).

One stage removing 70 % of 12.8M rows stores about 2 MB (the rows, delta-encoded; the reason,
one dictionary entry) where the full form took 326 MB.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.core.arrow_numpy import numpy_array, numpy_values, string_array
from curate.core.atomic import atomic_path
from curate.core.decisions_view import METADATA_KEY, CompactInfo
from curate.core.stage_parts import PART_SCHEMA, read_part, write_removed_bitmap
from curate.filters.registry import StageResult

ROW_GROUP_ROWS = 1024 * 1024
SCHEMA = pa.schema([("stage_index", pa.uint16()), *PART_SCHEMA])
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
    """Append every stage's parts (in stage and shard order) into ``path``; returns its rows.

    The rows are regrouped into row groups of ``row_group_rows`` and each group's reason
    dictionary holds the reasons it uses in order of first appearance, so the file is the
    same bytes however the pool was cut into shards."""
    schema = SCHEMA.with_metadata({METADATA_KEY: info.to_json().encode("utf-8")})
    written = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, **FILE_WRITE_OPTIONS) as writer:
        for group in _row_groups(_tables(stages, schema), row_group_rows):
            writer.write_table(_normal_reasons(group))
            written += group.num_rows
        if written == 0:
            writer.write_table(schema.empty_table())
    return written


def _tables(stages: Sequence[tuple[int, Sequence[Path]]], schema: pa.Schema) -> Iterator[pa.Table]:
    for index, parts in stages:
        for part in parts:
            table = read_part(part)
            if len(table):
                stage_index = numpy_array(np.full(len(table), index, np.uint16))
                yield table.add_column(0, "stage_index", stage_index).cast(schema)


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
