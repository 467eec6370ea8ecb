"""Reading a candidate pool's decisions: one row per sample and stage that saw it.

build-pool stores them compactly (:mod:`curate.build_pool.decisions` writes the file):
``decisions.parquet`` holds only what cannot be derived, the rows each stage *removed*
(``stage_index``, ``row``, ``kept`` false, ``reason``, ``score``) and, for a stage that
computed scores of its own, its kept rows with their scores (``kept`` true). A stage that
removed rows for one reason and stores no scores keeps them as bitmap records instead (format
2): one record per block of ``bitmap_rows`` pool rows (aligned to multiples of it; the last
block ends at the pool's end) holding, in ``removed``, a bit per row of the block (most
significant bit of each byte first, as DuckDB's ``BIT`` reads them), ``row`` the block's first
row, ``kept`` false and the reason; ``removed`` is null in the row records. The rest follows
from the pool: stage ``k`` saw every row that no earlier stage removed; it kept
those it did not remove; a stage whose scores are a column of the samples table
(``clip_score`` with ``column:``) names that column instead of copying it. The file's
metadata (``curate.decisions``) lists the stages, the pool's row count and ``bitmap_rows``.

:func:`scan_decisions` (polars) and :func:`decisions_relation` (DuckDB, for ``curate sql``)
expand it back to the table earlier versions wrote, with columns ``uid``, ``row``,
``stage_index``, ``stage``, ``kept``, ``reason``, ``score``, in stage then row order. A
decisions.parquet written in that full form is read as it is, one of format 1 (no bitmap
records) too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

METADATA_KEY = b"curate.decisions"
FORMAT = 2
READABLE_FORMATS = (1, 2)
BITMAP_COLUMN = "removed"


@dataclass(frozen=True)
class StageEntry:
    index: int
    stage: str
    score_column: str | None  # the samples-table column that holds the stage's scores


@dataclass(frozen=True)
class CompactInfo:
    pool_rows: int
    stages: tuple[StageEntry, ...]
    bitmap_rows: int = 1 << 23  # the pool rows of one bitmap record (1 MiB of bits)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "pool_rows": self.pool_rows,
                "bitmap_rows": self.bitmap_rows,
                "stages": [
                    {"index": s.index, "stage": s.stage, "score_column": s.score_column}
                    for s in self.stages
                ],
            },
            sort_keys=True,
        )


def compact_info(path: Path) -> CompactInfo | None:
    """The stages and pool size of a compact decisions file; None for the full form."""
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    if METADATA_KEY not in metadata:
        return None
    data = json.loads(metadata[METADATA_KEY])
    if data.get("format") not in READABLE_FORMATS:
        raise ValueError(
            f"{path}: decisions format {data.get('format')} is not one of {READABLE_FORMATS}"
        )
    stages = tuple(
        StageEntry(int(s["index"]), str(s["stage"]), s.get("score_column")) for s in data["stages"]
    )
    return CompactInfo(int(data["pool_rows"]), stages, int(data.get("bitmap_rows", 0)))


def scan_decisions(path: Path, pool_files: Sequence[Path] | None = None) -> pl.LazyFrame:
    """The decisions at ``path`` as one row per sample and stage (see the module doc).

    ``pool_files``: the parent pool's samples files (``Pool.sample_paths()``), needed for a
    compact file (uids and score columns come from them)."""
    info = compact_info(path)
    if info is None:
        return pl.scan_parquet(path)
    if pool_files is None:
        raise ValueError(f"{path} is compact: reading it needs the pool's samples files")
    score_columns = sorted({s.score_column for s in info.stages if s.score_column})
    pool = pl.scan_parquet(list(pool_files)).select(
        pl.int_range(pl.len(), dtype=pl.UInt64).alias("row"), "uid", *score_columns
    )
    stored = _stored_rows(path, info)
    removed = stored.filter(~pl.col("kept")).select(
        "row", pl.col("stage_index").alias("removed_at"), pl.col("reason").cast(pl.String)
    )
    rows = pool.join(removed, on="row", how="left", maintain_order="left")
    parts = []
    for stage in info.stages:
        seen = rows.filter(pl.col("removed_at").is_null() | (pl.col("removed_at") >= stage.index))
        removed_here = pl.col("removed_at") == stage.index
        own_scores = stored.filter(
            (pl.col("stage_index") == stage.index) & pl.col("score").is_not_null()
        ).select("row", pl.col("score").alias("stored_score"))
        seen = seen.join(own_scores, on="row", how="left", maintain_order="left")
        column_score = (
            pl.col(stage.score_column).cast(pl.Float32)
            if stage.score_column
            else pl.lit(None, pl.Float32)
        )
        parts.append(
            seen.select(
                "uid",
                pl.col("row").cast(pl.UInt32) if info.pool_rows < 2**32 else pl.col("row"),
                pl.lit(stage.index, pl.UInt16).alias("stage_index"),
                pl.lit(stage.stage).alias("stage"),
                (~removed_here.fill_null(False)).alias("kept"),
                pl.when(removed_here).then(pl.col("reason")).alias("reason"),
                pl.coalesce(pl.col("stored_score"), column_score).alias("score"),
            )
        )
    if not parts:
        return pl.LazyFrame(
            schema={
                "uid": pl.String,
                "row": pl.UInt32,
                "stage_index": pl.UInt16,
                "stage": pl.String,
                "kept": pl.Boolean,
                "reason": pl.String,
                "score": pl.Float32,
            }
        )
    return pl.concat(parts)


def _stored_rows(path: Path, info: CompactInfo) -> pl.LazyFrame:
    """The file's records as rows (``stage_index``, ``row``, ``kept``, ``reason``,
    ``score``): each bitmap record expanded to a row per removed row of its block."""
    import numpy as np

    stored = pl.scan_parquet(path).with_columns(pl.col("reason").cast(pl.String))
    if BITMAP_COLUMN not in stored.collect_schema().names():
        return stored
    records = stored.filter(pl.col(BITMAP_COLUMN).is_null()).drop(BITMAP_COLUMN)
    bitmaps = stored.filter(pl.col(BITMAP_COLUMN).is_not_null()).collect()
    rows, counts = [], []
    for first, bits in bitmaps.select("row", BITMAP_COLUMN).iter_rows():
        span = min(info.bitmap_rows, info.pool_rows - first)
        removed = np.unpackbits(np.frombuffer(bits, np.uint8), count=span, bitorder="big")
        rows.append(np.flatnonzero(removed).astype(np.uint64) + np.uint64(first))
        counts.append(len(rows[-1]))
    record_of_row = np.repeat(np.arange(len(counts)), counts)
    expanded = pl.DataFrame(
        {
            "stage_index": bitmaps["stage_index"].gather(record_of_row),
            "row": pl.Series(np.concatenate(rows) if rows else [], dtype=pl.UInt64),
            "kept": pl.repeat(False, len(record_of_row), eager=True),
            "reason": bitmaps["reason"].gather(record_of_row),
            "score": pl.repeat(None, len(record_of_row), dtype=pl.Float32, eager=True),
        }
    )
    return pl.concat([records, expanded.lazy()])


def subset_decisions(subset_root: Path) -> pl.LazyFrame:
    """The decisions of the candidate pool at ``subset_root`` (its parent pool's uids)."""
    from curate.core.layout import SubsetLayout
    from curate.core.manifest import read_manifest
    from curate.core.pool import sample_files

    path = SubsetLayout(Path(subset_root)).decisions
    if compact_info(path) is None:
        return pl.scan_parquet(path)
    parent = Path(read_manifest(Path(subset_root)).source["pool"])
    return scan_decisions(path, [f.path for f in sample_files(parent)])


def decisions_relation(connection: Any, decisions: Any, pool: Any, info: CompactInfo) -> Any:
    """The same view as :func:`scan_decisions` as a DuckDB relation, from Arrow data
    (``decisions``: the compact file; ``pool``: the parent pool's samples, in pool order)."""
    score_columns = sorted({s.score_column for s in info.stages if s.score_column})
    listed = ", ".join(_quote(c) for c in ["uid", *score_columns])
    samples = connection.from_arrow(pool).project(listed)
    numbers = connection.sql(f"SELECT range::UBIGINT AS row FROM range({info.pool_rows})")
    numbered = samples.join(numbers, how="positional")
    stored = _stored_relation(connection.from_arrow(decisions), info)
    removed = stored.filter("NOT kept").project(
        "row AS removed_row, stage_index AS removed_at, reason::VARCHAR AS removed_reason"
    )
    rows = numbered.join(removed, "row = removed_row", how="left")
    union = None
    for stage in info.stages:
        own = stored.filter(f"stage_index = {stage.index} AND score IS NOT NULL").project(
            "row AS score_row, score AS stored_score"
        )
        seen = rows.filter(f"removed_at IS NULL OR removed_at >= {stage.index}")
        seen = seen.join(own, "row = score_row", how="left")
        column_score = (
            f"{_quote(stage.score_column)}::FLOAT" if stage.score_column else "NULL::FLOAT"
        )
        part = seen.project(
            f"uid, row, {stage.index}::USMALLINT AS stage_index, "
            f"{_literal(stage.stage)} AS stage, "
            f"coalesce(removed_at <> {stage.index}, true) AS kept, "
            f"CASE WHEN removed_at = {stage.index} THEN removed_reason END AS reason, "
            f"coalesce(stored_score, {column_score}) AS score"
        )
        union = part if union is None else union.union(part)
    if union is None:
        return connection.sql(
            "SELECT NULL::VARCHAR AS uid, NULL::UBIGINT AS row, NULL::USMALLINT AS stage_index, "
            "NULL::VARCHAR AS stage, NULL::BOOLEAN AS kept, NULL::VARCHAR AS reason, "
            "NULL::FLOAT AS score WHERE false"
        )
    return union


def _stored_relation(stored: Any, info: CompactInfo) -> Any:
    """:func:`_stored_rows` in DuckDB: a bitmap record's set bits become rows, lazily."""
    columns = "stage_index, row, kept, reason::VARCHAR AS reason, score"
    if BITMAP_COLUMN not in stored.columns:
        return stored.project(columns)
    records = stored.filter(f"{BITMAP_COLUMN} IS NULL").project(columns)
    bits = stored.filter(f"{BITMAP_COLUMN} IS NOT NULL").project(
        f"stage_index, row AS first_row, reason::VARCHAR AS reason, {BITMAP_COLUMN}::BIT AS bits, "
        f"unnest(range(least({info.bitmap_rows}, {info.pool_rows} - row)::BIGINT)) AS bit"
    )
    expanded = bits.filter("get_bit(bits, bit::INTEGER) = 1").project(
        "stage_index, (first_row + bit)::UBIGINT AS row, false AS kept, reason, "
        "NULL::FLOAT AS score"
    )
    return records.union(expanded)


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
