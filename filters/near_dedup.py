"""``near_dedup``: drop samples whose image embedding is a near-duplicate of another's.

Pairs with cosine ≥ ``threshold`` are found by a FAISS range search (exact below
``curate.dedup.knn.FLAT_MAX_ROWS`` rows, IVF above: see that module for the nlist and nprobe
rules); rows linked by pairs, directly or through others, form a group, and each group keeps
one row: the lowest pool row, or the highest CLIP score (ties to the lower row). When the
search is approximate the report gives its recall against brute force on a seeded sample of
query rows (``recall_sample``).

``index: sharded_flat`` is the exact search in bounded memory (``curate.dedup.sharded``): one
flat index of ``shard_rows`` rows at a time, the rows read in blocks from the float16
embeddings file instead of one float32 copy of them all; the same pairs, groups and kept set
as ``flat``, in memory ``4·shard_rows·d`` plus the pairs instead of ``8·N·d``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from curate.core.embedding_store import load_embeddings
from curate.dedup.cache import cached_arrays
from curate.dedup.groups import GroupKeep, connected_components, keep_one_per_group, keep_order
from curate.dedup.knn import Pairs, exact_pairs, pair_recall, plan_index, self_pairs
from curate.dedup.sharded import SHARD_ROWS, describe_sharded, sharded_self_pairs
from curate.filters.dedup_inputs import clip_scores, reasons_naming, stage_cache_key
from curate.filters.registry import StageContext, StageParams, StageResult, register_stage


class NearDedupParams(StageParams):
    threshold: float = Field(
        0.95, gt=0.0, le=1.0, description="pairs with image cosine similarity ≥ this are duplicates"
    )
    keep: GroupKeep = Field(
        "lowest_row",
        description="which sample of a group stays: lowest_row (first in the pool) or "
        "highest_clip_score (ties to the lower row)",
    )
    index: Literal["auto", "flat", "ivf", "sharded_flat"] = Field(
        "auto",
        description="auto: exact flat index for small pools, IVF for large ones; sharded_flat: "
        "the exact flat search one shard of rows at a time, in bounded memory",
    )
    shard_rows: int | None = Field(
        None,
        ge=1,
        # left out of the recipe's hash while unset: recipes written before it hash the same
        exclude_if=lambda value: value is None,
        description=f"rows per shard for index: sharded_flat (default {SHARD_ROWS:,}); the "
        "shard's index holds 4·shard_rows·dim bytes",
    )
    nprobe: int | None = Field(
        None, ge=1, description="IVF lists scanned per query (default: curate.dedup.knn's rule)"
    )
    recall_sample: int = Field(
        1000, ge=0, description="query rows checked against brute force when the index is IVF"
    )

    @model_validator(mode="after")
    def _shard_rows_needs_sharded_index(self) -> NearDedupParams:
        if self.shard_rows is not None and self.index != "sharded_flat":
            raise ValueError("shard_rows applies to index: sharded_flat only")
        return self


@register_stage("near_dedup", NearDedupParams, needs_embeddings=True)
def near_dedup(ctx: StageContext, params: NearDedupParams) -> StageResult:
    n = ctx.rows.height
    vectors = None
    if params.index == "sharded_flat":
        shard_rows = params.shard_rows or SHARD_ROWS
        plan_description = describe_sharded(shard_rows)

        def find_pairs() -> Pairs:
            image = load_embeddings(ctx.pool_root, ctx.embeddings_name).image
            rows = ctx.rows["row"].to_numpy()
            return sharded_self_pairs(image, rows, params.threshold, shard_rows, progress=True)
    else:
        vectors = ctx.image_embeddings()
        plan = plan_index(n, params.index, params.nprobe)
        plan_description = plan.describe()

        def find_pairs() -> Pairs:
            return self_pairs(vectors, params.threshold, plan, seed=ctx.seed, progress=True)

    def search() -> dict[str, np.ndarray]:
        pairs = find_pairs()
        return {"left": pairs.left, "right": pairs.right, "similarity": pairs.similarity}

    key = stage_cache_key(ctx, threshold=params.threshold, plan=plan_description)
    pairs = Pairs(**cached_arrays(ctx.work_dir, "near-pairs", key, search))

    labels = connected_components(n, pairs.left, pairs.right)
    scores = clip_scores(ctx) if params.keep == "highest_clip_score" else None
    order = keep_order(ctx.rows["row"].to_numpy(), params.keep, scores)
    keep, representative = keep_one_per_group(labels, order)

    best = np.full(n, np.nan, dtype=np.float32)
    np.fmax.at(best, pairs.left, pairs.similarity)
    np.fmax.at(best, pairs.right, pairs.similarity)

    report = {
        **plan_description,
        "threshold": params.threshold,
        "pairs": len(pairs),
        "groups": int(len(np.unique(labels[pairs.left]))),
        "rows_in_groups": int(np.isfinite(best).sum()),
        "removed": int((~keep).sum()),
    }
    if not plan_description["exact"] and params.recall_sample:
        report.update(_recall_report(vectors, pairs, params, ctx.seed))
    return StageResult(
        keep=keep,
        reason=reasons_naming(
            ctx,
            keep,
            representative,
            f"near-duplicate group (cosine ≥ {params.threshold} links) kept as uid",
        ),
        score=best,
        report=report,
    )


def _recall_report(vectors: np.ndarray, pairs: Pairs, params: NearDedupParams, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    queries = np.sort(
        rng.choice(len(vectors), size=min(len(vectors), params.recall_sample), replace=False)
    )
    exact = exact_pairs(vectors, queries, params.threshold)
    return {
        "recall_vs_exact": pair_recall(pairs, exact, queries, len(vectors)),
        "recall_query_rows": len(queries),
        "recall_exact_pairs": len(exact),
    }
