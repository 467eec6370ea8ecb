"""``exact_dedup``: drop samples whose image bytes repeat an earlier sample's (same sha256).

Of each group of identical images the sample with the lowest pool row is kept, so the result
does not depend on the order stages or shards ran in. Rows without a sha256 are kept.

In build-pool this is map -> reduce on the executor (:func:`prepare_duplicates`): one task
per shard spills its rows' (sha256, row, uid) into partitions by a hash of the sha256; one
task per partition finds the groups of equal hashes there and lists every row but the
lowest of each, with the uid it repeats; then each shard drops the listed rows of its own.
No process holds more than a shard or a partition.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.core.errors import UserInputError
from curate.filters.dedup_inputs import reasons_naming
from curate.filters.registry import (
    PlanContext,
    StageContext,
    StageParams,
    StageResult,
    register_stage,
)

REASON = "same image bytes (sha256) as uid"
PARTITION_ROWS = 4 << 20  # rows a partition task holds at most


class ExactDedupParams(StageParams):
    pass


@dataclass(frozen=True)
class DuplicatePlan:
    """Where the partition tasks listed the rows to drop (``row``, ``uid_kept``)."""

    directory: Path
    partitions: int
    report: dict[str, int]


@dataclass(frozen=True)
class _SpillTask:
    rows: Any  # curate.core.pool.ShardRows
    partition_bits: int
    directory: Path


@dataclass(frozen=True)
class _PartitionTask:
    partition: int
    directory: Path
    shards: int


def _spill(task: _SpillTask) -> int:
    """Map: this shard's rows in play with a sha256, into partitions by its hash."""
    rows = task.rows.read(["sha256", "uid"]).filter(pl.col("sha256").is_not_null())
    # the hash only spreads the work: equal sha256 values meet in one partition whatever it is
    partition = pl.col("sha256").hash(seed=0) // (1 << (64 - task.partition_bits))
    frame = rows.with_columns(
        (partition if task.partition_bits else pl.lit(0, pl.UInt64)).alias("partition")
    )
    shard = task.rows.shard.index
    for (index,), part in frame.partition_by("partition", as_dict=True).items():
        target = task.directory / f"p{int(index):05d}" / f"s{shard:06d}.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        part.drop("partition").write_parquet(target)
    return rows.height


def _duplicates(task: _PartitionTask) -> dict[str, int]:
    """Reduce: in one partition, every row whose sha256 a lower row has, and that row's uid."""
    folder = task.directory / f"p{task.partition:05d}"
    files = sorted(folder.glob("s*.parquet")) if folder.is_dir() else []
    target = task.directory / f"removed-{task.partition:05d}.parquet"
    if not files:
        pl.DataFrame(schema={"row": pl.UInt64, "uid_kept": pl.String}).write_parquet(target)
        return {"removed_duplicates": 0, "duplicate_groups": 0}
    rows = pl.concat([pl.read_parquet(f) for f in files]).sort("row")
    grouped = rows.with_columns(
        first_row=pl.col("row").first().over("sha256"),
        uid_kept=pl.col("uid").first().over("sha256"),
    )
    removed = grouped.filter(pl.col("row") != pl.col("first_row")).select("row", "uid_kept")
    removed.write_parquet(target)
    groups = grouped.filter(pl.col("row") != pl.col("first_row"))["sha256"].n_unique()
    shutil.rmtree(folder)
    return {"removed_duplicates": removed.height, "duplicate_groups": groups}


def prepare_duplicates(context: PlanContext, params: ExactDedupParams) -> DuplicatePlan:
    directory = context.work_dir / "partitions"
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    total = sum(rows.shard.rows for rows in context.survivors)
    bits = (max(1, -(-total // PARTITION_ROWS)) - 1).bit_length()  # 2**bits partitions
    spills = [_SpillTask(rows, bits, directory) for rows in context.survivors]
    for _ in context.executor.map(_spill, spills, threads_ok=True):
        pass
    reduces = [_PartitionTask(p, directory, len(spills)) for p in range(1 << bits)]
    report = {"removed_duplicates": 0, "duplicate_groups": 0}
    for counts in context.executor.map(_duplicates, reduces, threads_ok=True):
        for key, value in counts.items():
            report[key] += value
    return DuplicatePlan(directory, 1 << bits, report)


def _apply_plan(ctx: StageContext, plan: DuplicatePlan) -> StageResult:
    rows = ctx.rows["row"].cast(pl.UInt64)
    if rows.len() == 0:
        return StageResult(keep=np.zeros(0, dtype=bool), reason="")
    low, high = rows.min(), rows.max()
    files = [plan.directory / f"removed-{p:05d}.parquet" for p in range(plan.partitions)]
    removed = (
        pl.scan_parquet(files)
        .filter(pl.col("row").is_between(low, high))
        .collect()
        .join(rows.to_frame("row"), on="row", how="semi")
    )
    joined = rows.to_frame("row").join(removed, on="row", how="left", maintain_order="left")
    keep = joined["uid_kept"].is_null().to_numpy()
    reason = np.full(len(keep), None, dtype=object)
    reason[~keep] = (REASON + " " + joined["uid_kept"].filter(~pl.Series(keep))).to_numpy()
    return StageResult(keep=keep, reason=reason, report=plan.report)


def _first_report(reports: list[dict]) -> dict:
    return reports[0] if reports else {}


@register_stage(
    "exact_dedup",
    ExactDedupParams,
    columns=("sha256", "uid"),
    prepare=prepare_duplicates,
    merge_reports=_first_report,
)
def exact_dedup(ctx: StageContext, params: ExactDedupParams) -> StageResult:
    if "sha256" not in ctx.rows.columns:
        raise UserInputError(
            f"{ctx.pool_root}/samples.parquet has no sha256 column; exact_dedup needs the image "
            "hashes that `curate ingest` records: re-ingest the pool"
        )
    if ctx.plan is not None:
        return _apply_plan(ctx, ctx.plan)
    table = ctx.rows.select("sha256", "row").with_row_index("position")
    first = table.select(
        pl.when(pl.col("sha256").is_null())
        .then(pl.col("position"))
        .otherwise(pl.col("position").sort_by("row").first().over("sha256"))
    ).to_series()
    representative = first.to_numpy().astype(np.int64)
    keep = representative == np.arange(len(representative))
    removed = np.flatnonzero(~keep)
    duplicates = len(removed)
    return StageResult(
        keep=keep,
        reason=reasons_naming(ctx, removed, representative[removed], REASON),
        report={
            "removed_duplicates": duplicates,
            "duplicate_groups": int(
                table.filter(pl.col("sha256").is_duplicated())["sha256"].n_unique()
            ),
        },
    )
