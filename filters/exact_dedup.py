"""``exact_dedup``: drop samples whose image bytes repeat an earlier sample's (same sha256).

Of each group of identical images the sample with the lowest pool row is kept, so the result
does not depend on the order stages or shards ran in. Rows without a sha256 are kept.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from curate.core.errors import UserInputError
from curate.filters.dedup_inputs import reasons_naming
from curate.filters.registry import StageContext, StageParams, StageResult, register_stage


class ExactDedupParams(StageParams):
    pass


@register_stage("exact_dedup", ExactDedupParams)
def exact_dedup(ctx: StageContext, params: ExactDedupParams) -> StageResult:
    if "sha256" not in ctx.rows.columns:
        raise UserInputError(
            f"{ctx.pool_root}/samples.parquet has no sha256 column; exact_dedup needs the image "
            "hashes that `curate ingest` records: re-ingest the pool"
        )
    table = ctx.rows.select("sha256", "row").with_row_index("position")
    first = table.select(
        pl.when(pl.col("sha256").is_null())
        .then(pl.col("position"))
        .otherwise(pl.col("position").sort_by("row").first().over("sha256"))
    ).to_series()
    representative = first.to_numpy().astype(np.int64)
    keep = representative == np.arange(len(representative))
    duplicates = int((~keep).sum())
    return StageResult(
        keep=keep,
        reason=reasons_naming(ctx, keep, representative, "same image bytes (sha256) as uid"),
        report={
            "removed_duplicates": duplicates,
            "duplicate_groups": int(
                table.filter(pl.col("sha256").is_duplicated())["sha256"].n_unique()
            ),
        },
    )
