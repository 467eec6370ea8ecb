"""decisions.parquet: one row per sample and stage that saw it, streamed from the stages' files.

build-pool saves each finished stage's decisions (``row``, ``kept``, ``reason``, ``score``)
in its own parquet file for resume. This module assembles the candidate pool's
decisions.parquet from those files one row group at a time, adding each row's ``uid`` and
its stage, so memory stays at one row group plus the pool's uid column however many stages
and rows there are (a whole in-memory table of 10M rows x 3 stages was the peak of a
10M-row build).

The bytes are those ``pyarrow.parquet.write_table`` gives for the whole table built in
memory: row groups of ``ROW_GROUP_ROWS`` rows (its default), one chunk per column, and
``stage`` / ``reason`` dictionary-encoded with one dictionary for the whole file (distinct
values in order of first appearance, as ``pyarrow.compute.dictionary_encode`` makes it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.core.atomic import atomic_path

ROW = "row"
ROW_GROUP_ROWS = 1024 * 1024  # pyarrow.parquet.write_table's default row group size
READ_BATCH_ROWS = 256 * 1024
STRING_DICTIONARY = pa.dictionary(pa.int32(), pa.string())
SCHEMA = pa.schema(
    [
        ("uid", pa.large_string()),
        (ROW, pa.uint32()),
        ("stage_index", pa.uint16()),
        ("stage", STRING_DICTIONARY),
        ("kept", pa.bool_()),
        ("reason", STRING_DICTIONARY),
        ("score", pa.float32()),
    ]
)
STAGE_SCHEMA = {ROW: pl.UInt32, "kept": pl.Boolean, "reason": pl.String, "score": pl.Float32}


@dataclass(frozen=True)
class StageDecisions:
    """Where one stage's decisions (columns of ``STAGE_SCHEMA``, in pool order) lie."""

    index: int
    stage: str
    path: Path

    def rows(self) -> int:
        return pq.read_metadata(self.path).num_rows


def write_decisions(
    path: Path,
    uids: pl.Series,
    stages: Sequence[StageDecisions],
    *,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> int:
    """Write decisions.parquet at ``path`` atomically; returns its number of rows.

    ``uids`` is the pool's uid column (``row`` indexes it); ``stages`` in recipe order.
    """
    stage_position = _first_appearance(s.stage for s in stages if s.rows() > 0)
    reason_position = _first_appearance(_stage_reasons(stages))
    dictionaries = {"stage": _dictionary(stage_position), "reason": _dictionary(reason_position)}
    written = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, SCHEMA, compression="zstd") as writer:
        batches = _plain_batches(uids, stages, stage_position)
        for group in _row_groups(batches, row_group_rows):
            writer.write_table(_encode(group, dictionaries, reason_position))
            written += group.num_rows
        if written == 0:
            writer.write_table(SCHEMA.empty_table())
    return written


def _plain_batches(
    uids: pl.Series, stages: Sequence[StageDecisions], stage_position: dict[str, int]
) -> Iterator[pa.Table]:
    """Every stage's decisions in order, with uid and stage (its position in the dictionary);
    ``reason`` still as strings."""
    for stage in stages:
        for batch in pq.ParquetFile(stage.path).iter_batches(
            batch_size=READ_BATCH_ROWS, columns=list(STAGE_SCHEMA)
        ):
            rows = batch.column(ROW).cast(pa.uint32())
            n = len(rows)
            yield pa.table(
                {
                    "uid": uids.gather(rows.to_numpy()).to_arrow().cast(pa.large_string()),
                    ROW: rows,
                    "stage_index": pa.array(np.full(n, stage.index, np.uint16)),
                    "stage": pa.array(np.full(n, stage_position[stage.stage], np.int32)),
                    "kept": batch.column("kept").cast(pa.bool_()),
                    "reason": batch.column("reason").cast(pa.string()),
                    "score": batch.column("score").cast(pa.float32()),
                }
            )


def _row_groups(batches: Iterator[pa.Table], size: int) -> Iterator[pa.Table]:
    """Regroup ``batches`` into tables of exactly ``size`` rows (the last may be shorter)."""
    pending: list[pa.Table] = []
    pending_rows = 0
    for batch in batches:
        pending.append(batch)
        pending_rows += batch.num_rows
        while pending_rows >= size:
            table = pa.concat_tables(pending)
            yield table.slice(0, size).combine_chunks()
            rest = table.slice(size)
            pending, pending_rows = [rest], rest.num_rows
    if pending_rows:
        yield pa.concat_tables(pending).combine_chunks()


def _encode(
    group: pa.Table, dictionaries: dict[str, pa.Array], reason_position: dict[str, int]
) -> pa.Table:
    """``stage`` and ``reason`` as indices into the file-wide dictionaries.

    Reasons are first encoded against this row group's own (small) dictionary, whose values
    are then looked up once each: hashing every row against the file-wide dictionary (which
    may hold millions of distinct reasons) costs a second per row group.
    """
    local = pc.dictionary_encode(group.column("reason").combine_chunks())
    local_values = local.dictionary.to_pylist()
    to_file = np.fromiter(map(reason_position.__getitem__, local_values), np.int32)
    indices = {
        "stage": group.column("stage").combine_chunks(),
        "reason": pc.take(pa.array(to_file), local.indices),
    }
    for name, dictionary in dictionaries.items():
        encoded = pa.DictionaryArray.from_arrays(indices[name], dictionary)
        group = group.set_column(group.schema.get_field_index(name), name, encoded)
    return group.cast(SCHEMA)


def _dictionary(position: dict[str, int]) -> pa.Array:
    return pa.array(list(position), pa.string())


def _first_appearance(values: Iterable[str]) -> dict[str, int]:
    """Each distinct value and its position in order of first appearance."""
    distinct = dict.fromkeys(values)
    return dict(zip(distinct, range(len(distinct)), strict=True))


def _stage_reasons(stages: Sequence[StageDecisions]) -> Iterator[str]:
    """The non-null reasons of all stages in order (repeats within a read batch dropped)."""
    for stage in stages:
        for batch in pq.ParquetFile(stage.path).iter_batches(
            batch_size=READ_BATCH_ROWS, columns=["reason"]
        ):
            yield from pc.unique(batch.column("reason")).drop_null().to_pylist()
