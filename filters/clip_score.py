"""``clip_score``: keep samples whose image-text CLIP score is high (DataComp's "CLIP score"
baselines; Gadre et al. 2023, section 4 and appendix).

Either an absolute ``threshold`` (keep score >= threshold), or the top ``fraction`` of the
pool, turned into a threshold exactly as DataComp's ``baselines/utils.py`` does::

    n = int(len(scores) * fraction)
    threshold = -np.sort(-scores)[n]          # the (n+1)-th largest score
    keep = scores >= threshold                # ties at the threshold are all kept

so a pool with ties at the threshold keeps a little more than ``fraction``. Here the
``(n+1)``-th largest score comes from ``np.partition`` (linear time, the same element) while
the scores number at most :data:`IN_MEMORY_MAX_ROWS`; above that, from a two-pass selection
over the score column read in blocks (:mod:`curate.filters.clip_score_threshold`: a histogram pass,
then an exact pass inside the bin that holds the cut), which gives the same element in
bounded memory.
Edge cases: ``fraction: 1`` keeps every sample that has a score (DataComp's indexing would
fail there); ``fraction: 0`` keeps the samples tied at the maximum score (DataComp's rule).
Missing (null or NaN) scores sort last and never pass.

In build-pool the fraction's threshold is a map -> reduce over the pool's shards
(:func:`prepare_threshold`): each task answers the selection's passes over its own block
of the score column (a histogram of its keys, then its keys inside the bin that holds the
cut), the driver adds the answers; then every shard keeps ``score >= threshold`` on its
own. The same element as above, so the same rows, ties included. A removed row's reason
names the threshold; its score is in the decisions' ``score`` column (from the samples
table's column itself when the scores come from one).

The threshold is computed ``over: pool`` (every row of ``samples.parquet``, DataComp's
whole-pool semantics, whatever stages ran before) or ``over: remaining`` (only the rows this
stage receives). Scores come from a ``column`` of ``samples.parquet`` (e.g.
``clip_l14_similarity_score`` of a DataComp metadata pool) or from an embedding set's
``clip_score.parquet`` (written by ``curate embed``, or by ingest ``--copy`` of DataComp's
``.npz``); a DataComp set a pool uses in place has none, and its scores are computed from its
``.npz`` as ``--copy`` computes them (every embedding read, each pass: DataComp's own score
columns are far cheaper).

:func:`select_by_clip_score` applies the same rule to a directory of DataComp metadata
parquet files directly, reading only the score column and then only the kept uids.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from curate.core.embedding_store import (
    EmbeddingParts,
    MissingEmbeddingsError,
    embedding_layout,
    embedding_parts,
    list_embeddings,
)
from curate.core.errors import UserInputError
from curate.core.layout import PoolLayout
from curate.core.uid import halves_to_pairs, sort_pairs, uid_halves
from curate.filters.clip_score_threshold import (
    BLOCK_ROWS,
    Answer,
    Query,
    ScoreBlocks,
    answer,
    array_blocks,
    selected_threshold,
    top_fraction_threshold,
)
from curate.filters.dedup_inputs import in_place_clip_scores
from curate.filters.registry import (
    PlanContext,
    StageContext,
    StageParams,
    StageResult,
    register_stage,
)

IN_MEMORY_MAX_ROWS = 16_000_000
"""Up to this many scores the threshold comes from one ``np.partition`` in memory (about
``16·N`` bytes: 256 MB at the limit, the faster path); above it, from two passes over blocks."""


class ScoreSourceParams(StageParams):
    column: str | None = Field(
        None,
        description="take scores from this column of samples.parquet (for example "
        "clip_b32_similarity_score or clip_l14_similarity_score of a DataComp metadata pool)",
    )
    embeddings: str | None = Field(
        None,
        description="take scores from this embedding set's clip_score.parquet; when neither "
        "column nor embeddings is given: the recipe's embedding set, or the pool's only one",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ScoreSourceParams:
        if self.column is not None and self.embeddings is not None:
            raise ValueError("give either column or embeddings as the score source, not both")
        return self


class ClipScoreParams(ScoreSourceParams):
    threshold: float | None = Field(None, description="keep samples with score >= threshold")
    fraction: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="keep the top fraction of samples by score (DataComp's rule; ties kept)",
    )
    over: Literal["pool", "remaining"] = Field(
        "pool",
        description="rows the fraction's threshold is computed over: 'pool' = every row of "
        "samples.parquet (DataComp's whole-pool semantics), 'remaining' = the rows this stage "
        "receives",
    )

    @model_validator(mode="after")
    def _threshold_or_fraction(self) -> ClipScoreParams:
        if (self.threshold is None) == (self.fraction is None):
            raise ValueError("give exactly one of threshold or fraction")
        return self


def datacomp_threshold(scores: np.ndarray, fraction: float, *, overwrite: bool = False) -> float:
    """The score at index ``int(len(scores) * fraction)`` of the scores sorted descending
    (NaN last), as DataComp computes it; ``-inf`` when that index is past the end.
    ``overwrite=True`` works in ``scores``' own memory (scrambling it) instead of a copy."""
    index = int(len(scores) * fraction)
    if index >= len(scores):
        return -math.inf
    negated = np.negative(scores, out=scores if overwrite else None)
    negated.partition(index)
    return float(-negated[index])


def passes(scores: np.ndarray, threshold: float) -> np.ndarray:
    """``scores >= threshold`` compared in the scores' own dtype, as pandas/numpy do in
    DataComp's baselines (a float32 column is compared with float32(threshold))."""
    return scores >= scores.dtype.type(threshold)


InPlaceSet = tuple[EmbeddingParts, EmbeddingParts]
"""A DataComp set's image and text parts, used in place (the pool has no clip_score.parquet)."""


def row_scores(context: StageContext, source: ScoreSourceParams) -> np.ndarray:
    """Scores of ``context.rows``, in row order (NaN where missing)."""
    if source.column is not None:
        return _column(context.rows, source.column, "the stage's rows").to_numpy()
    return _set_scores(_score_source(context, source.embeddings), context.rows)


def _set_scores(source: Path | InPlaceSet, rows: pl.DataFrame) -> np.ndarray:
    """An embedding set's scores of ``rows`` (columns ``row``, ``uid``): from its
    clip_score.parquet, or computed from the ``.npz`` the pool uses in place."""
    if isinstance(source, Path):
        return embedding_scores(source, rows)
    return in_place_clip_scores(rows["row"].to_numpy(), *source)


def embedding_scores(path: Path, rows: pl.DataFrame) -> np.ndarray:
    """``clip_score`` of ``rows`` (columns ``row``, ``uid``) from an embedding set's
    clip_score.parquet. ``curate embed`` writes it in pool order, so only the span of rows
    is read and checked by uid; a file in another order is joined by uid instead."""
    if rows.height and "row" in rows.columns:
        from curate.core.pool import TableShard

        first, last = int(rows["row"].min()), int(rows["row"].max())  # type: ignore[arg-type]
        span = TableShard(0, path, first, last - first + 1, first)
        if last < parquet_rows([path]):
            block = span.read(["uid", "clip_score"])
            picked = block[(rows["row"] - first).cast(pl.Int64)]
            if picked["uid"].equals(rows["uid"]):
                return picked["clip_score"].to_numpy()
    scores = pl.read_parquet(path, columns=["uid", "clip_score"])
    joined = rows.select("uid").join(scores, on="uid", how="left", maintain_order="left")
    missing = joined["clip_score"].is_null()
    if missing.any():
        uid = joined.filter(missing)["uid"][0]
        raise UserInputError(
            f"{path}: no clip score for {missing.sum()} sample(s), e.g. uid {uid}; "
            "rerun `curate embed` on this pool"
        )
    return joined["clip_score"].to_numpy()


def pool_score_blocks(context: StageContext, source: ScoreSourceParams) -> tuple[int, ScoreBlocks]:
    """(row count, blocks reader) of the scores of every sample of the pool (all rows of
    samples.parquet), read from their parquet file block by block."""
    if source.column is not None:
        path, column = PoolLayout(context.pool_root).samples, source.column
    else:
        path, column = _score_source(context, source.embeddings), "clip_score"
    if isinstance(path, tuple):  # a DataComp set used in place: scores from its .npz
        rows = path[0].rows
        return rows, _in_place_score_blocks(path, rows)
    _column(pl.DataFrame(schema=pl.read_parquet_schema(path)), column, str(path))
    return parquet_rows([path]), parquet_score_blocks([path], column)


def _in_place_score_blocks(source: InPlaceSet, rows: int) -> ScoreBlocks:
    def read() -> Iterator[np.ndarray]:
        for start in range(0, rows, BLOCK_ROWS):
            block = np.arange(start, min(start + BLOCK_ROWS, rows), dtype=np.int64)
            yield in_place_clip_scores(block, *source)

    return read


def parquet_rows(paths: Sequence[Path]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(path).metadata.num_rows for path in paths)


def parquet_score_blocks(
    paths: Sequence[Path], column: str, block_rows: int = BLOCK_ROWS
) -> ScoreBlocks:
    """A numeric column of parquet files, in file order, at most ``block_rows`` scores a
    block (nulls as NaN, integers as float64), one row group in memory at a time."""
    import pyarrow.parquet as pq

    def read() -> Iterator[np.ndarray]:
        for path in paths:
            batches = pq.ParquetFile(path).iter_batches(batch_size=block_rows, columns=[column])
            for batch in batches:
                yield _column(pl.from_arrow(batch), column, str(path)).to_numpy()

    return read


def fraction_threshold(
    rows: int, read_blocks: ScoreBlocks, fraction: float, in_memory_max_rows: int | None = None
) -> float:
    """DataComp's threshold over ``rows`` scores: one ``np.partition`` in memory up to
    ``in_memory_max_rows`` (default :data:`IN_MEMORY_MAX_ROWS`), else two passes over the
    blocks (:func:`top_fraction_threshold`). The same element either way."""
    limit = IN_MEMORY_MAX_ROWS if in_memory_max_rows is None else in_memory_max_rows
    if rows > limit:
        return top_fraction_threshold(read_blocks, fraction)
    blocks = list(read_blocks())
    scores = np.concatenate(blocks) if blocks else np.zeros(0)
    return datacomp_threshold(scores, fraction, overwrite=True)


def _column(table: pl.DataFrame, name: str, where: str) -> pl.Series:
    if name not in table.columns:
        raise UserInputError(f"{where}: no score column {name!r}; columns are {table.columns}")
    column = table[name]
    if not column.dtype.is_numeric():
        raise UserInputError(f"{where}: score column {name!r} is {column.dtype}, not numeric")
    return column.cast(pl.Float64) if column.dtype.is_integer() else column


def _score_source(context: StageContext, name: str | None) -> Path | InPlaceSet:
    """Where an embedding set's scores are: its clip_score.parquet, or (a DataComp set the
    pool uses in place) its image and text ``.npz`` members, from which they are computed."""
    available = list_embeddings(context.pool_root)
    name = name or context.embeddings_name
    if name is None:
        if len(available) != 1:
            raise MissingEmbeddingsError(
                f"{context.pool_root}: clip_score needs scores: name an embedding set "
                f"(have: {available or 'none'}) or a score column of samples.parquet"
            )
        name = available[0]
    path = embedding_layout(context.pool_root, name).clip_score
    if not path.is_file() and name in available:
        _, image, text = embedding_parts(context.pool_root, name)
        if image.normalize and text is not None:  # .npz used in place
            return image, text
    if not path.is_file():
        raise MissingEmbeddingsError(
            f"{path} not found (embedding sets: {available or 'none'}); run `curate embed` first"
        )
    return path


def threshold_stage_result(
    scores: np.ndarray, threshold: float, report: dict, score_column: str | None = None
) -> StageResult:
    """``score >= threshold``; every removed row has the one reason ``clip score < T`` (its
    own score is the decision's score)."""
    keep = passes(scores, threshold)
    return StageResult(
        keep=keep,
        reason=f"clip score < {round(threshold, 4)}",
        score=scores,
        report={"threshold": threshold, **report},
        score_column=score_column,
    )


def score_columns(params: ScoreSourceParams, available: Sequence[str]) -> list[str]:
    """The samples-table columns a score-reading stage needs (its score column, or uid to
    match an embedding set's clip_score.parquet)."""
    return [params.column] if params.column is not None else ["uid"]


def _per_row(params: ClipScoreParams) -> bool:
    return params.threshold is not None


@dataclass(frozen=True)
class _ScoreTask:
    """One shard's scores for the threshold: every row (``over: pool``) or those in play."""

    rows: object  # curate.core.pool.ShardRows
    over: str
    column: str | None
    scores_from: Path | InPlaceSet | None  # the embedding set's scores, without a column


def _shard_scores(task: _ScoreTask) -> np.ndarray:
    shard_rows = task.rows  # curate.core.pool.ShardRows
    reader = shard_rows.shard if task.over == "pool" else shard_rows  # type: ignore[attr-defined]
    if task.column is not None:
        where = str(shard_rows.shard.path)  # type: ignore[attr-defined]
        return _column(reader.read([task.column]), task.column, where).to_numpy()
    assert task.scores_from is not None
    return _set_scores(task.scores_from, reader.read(["uid"]))


def _answer_shard(job: tuple[_ScoreTask, Query]) -> Answer:
    task, query = job
    return answer([_shard_scores(task)], query)


def prepare_threshold(context: PlanContext, params: ClipScoreParams) -> tuple[float, int]:
    """The fraction's threshold as map -> reduce: every pass of the selection is one task
    per shard (:func:`_answer_shard`), the driver adds their answers."""
    source = None
    if params.column is None:
        stage_context = StageContext(
            rows=pl.DataFrame(),
            pool_root=context.pool_root,
            seed=context.seed,
            work_dir=context.work_dir,
            embeddings_name=context.embeddings_name,
        )
        source = _score_source(stage_context, params.embeddings)
    tasks = [_ScoreTask(rows, params.over, params.column, source) for rows in context.survivors]

    rows = 0

    def scan(query: Query) -> list[Answer]:
        nonlocal rows
        jobs = [(task, query) for task in tasks]
        answers = list(context.executor.map(_answer_shard, jobs, threads_ok=True))
        if query.known == 0 and query.kind == "count":
            rows = sum(reply.rows for reply in answers)
        return answers

    return selected_threshold(scan, params.fraction or 0.0), rows


def _first_report(reports: list[dict]) -> dict:
    """Every shard reports the same threshold and fraction."""
    return reports[0] if reports else {}


@register_stage(
    "clip_score",
    ClipScoreParams,
    columns=score_columns,
    per_row=_per_row,
    prepare=prepare_threshold,
    merge_reports=_first_report,
)
def clip_score(context: StageContext, params: ClipScoreParams) -> StageResult:
    scores = row_scores(context, params)
    if params.threshold is not None:
        return threshold_stage_result(scores, params.threshold, {}, params.column)
    if context.plan is not None:
        threshold, over_rows = context.plan
    elif params.over == "pool":
        over_rows, read_blocks = pool_score_blocks(context, params)
        threshold = fraction_threshold(over_rows, read_blocks, params.fraction)
    else:
        over_rows, read_blocks = len(scores), array_blocks(scores)
        threshold = fraction_threshold(over_rows, read_blocks, params.fraction)
    report = {"fraction": params.fraction, "over": params.over, "over_rows": over_rows}
    return threshold_stage_result(scores, threshold, report, params.column)


@dataclass(frozen=True)
class ClipScoreSelection:
    threshold: float
    subset: np.ndarray  # DataComp subset array: sorted u8,u8 uid pairs of the kept samples


def select_by_clip_score(
    paths: Sequence[Path],
    column: str,
    *,
    fraction: float | None = None,
    threshold: float | None = None,
    in_memory_max_rows: int | None = None,
) -> ClipScoreSelection:
    """DataComp's CLIP-score baseline over metadata parquet files (each with ``uid`` and the
    score column): reads only the score column for the threshold (whole, up to
    ``in_memory_max_rows`` rows, default :data:`IN_MEMORY_MAX_ROWS`; above, in two passes
    over blocks), then streams the files once more and turns only the kept rows' uids into
    ``u8,u8`` pairs."""
    if (threshold is None) == (fraction is None):
        raise ValueError("give exactly one of threshold or fraction")
    metadata = pl.scan_parquet([str(p) for p in paths])
    schema = metadata.collect_schema()
    if column not in schema or not schema[column].is_float():
        raise UserInputError(
            f"{paths[0]}: no float score column {column!r}; columns are {dict(schema)}"
        )
    limit = IN_MEMORY_MAX_ROWS if in_memory_max_rows is None else in_memory_max_rows
    if threshold is None and parquet_rows(paths) > limit:
        threshold = top_fraction_threshold(parquet_score_blocks(paths, column), fraction)
    elif threshold is None:
        scores = metadata.select(column).collect()[column].to_numpy(writable=True)
        threshold = datacomp_threshold(scores, fraction, overwrite=True)
        del scores
    score = pl.col(column)
    # NaN sorts above every number in polars comparisons: exclude it as numpy/pandas do.
    kept = metadata.filter((score >= pl.lit(threshold, dtype=schema[column])) & score.is_not_nan())
    try:
        pairs = halves_to_pairs(kept.select(uid_halves(pl.col("uid"))).collect(engine="streaming"))
    except (ValueError, pl.exceptions.PolarsError) as error:
        raise UserInputError(f"{paths[0]} (or a sibling file): bad uid: {error}") from None
    return ClipScoreSelection(threshold=threshold, subset=sort_pairs(pairs))
