"""``near_dedup``: drop samples whose image embedding is a near-duplicate of another's.

Pairs with cosine ≥ ``threshold`` are found by a FAISS range search (exact below
``curate.dedup.knn.FLAT_MAX_ROWS`` rows, IVF above: see that module for the nlist and nprobe
rules); rows linked by pairs, directly or through others, form a group, and each group keeps
one row: the lowest pool row, or the highest CLIP score (ties to the lower row). When the
search is approximate the report gives its recall against brute force on a seeded sample of
query rows (``recall_sample``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from curate.dedup.cache import cached_arrays
from curate.dedup.groups import GroupKeep, connected_components, keep_one_per_group, keep_order
from curate.dedup.knn import Pairs, exact_pairs, pair_recall, plan_index, self_pairs
from filters.dedup_inputs import clip_scores, reasons_naming, stage_cache_key
from filters.registry import StageContext, StageParams, StageResult, register_stage


class NearDedupParams(StageParams):
    threshold: float = Field(
        0.95, gt=0.0, le=1.0, description="pairs with image cosine similarity ≥ this are duplicates"
    )
    keep: GroupKeep = Field(
        "lowest_row",
        description="which sample of a group stays: lowest_row (first in the pool) or "
        "highest_clip_score (ties to the lower row)",
    )
    index: Literal["auto", "flat", "ivf"] = Field(
        "auto", description="auto: exact flat index for small pools, IVF for large ones"
    )
    nprobe: int | None = Field(
        None, ge=1, description="IVF lists scanned per query (default: curate.dedup.knn's rule)"
    )
    recall_sample: int = Field(
        1000, ge=0, description="query rows checked against brute force when the index is IVF"
    )


@register_stage("near_dedup", NearDedupParams, needs_embeddings=True)
def near_dedup(ctx: StageContext, params: NearDedupParams) -> StageResult:
    vectors = ctx.image_embeddings()
    n = len(vectors)
    plan = plan_index(n, params.index, params.nprobe)

    def search() -> dict[str, np.ndarray]:
        pairs = self_pairs(vectors, params.threshold, plan, seed=ctx.seed, progress=True)
        return {"left": pairs.left, "right": pairs.right, "similarity": pairs.similarity}

    key = stage_cache_key(ctx, threshold=params.threshold, plan=plan.describe())
    pairs = Pairs(**cached_arrays(ctx.work_dir, "near-pairs", key, search))

    labels = connected_components(n, pairs.left, pairs.right)
    scores = clip_scores(ctx) if params.keep == "highest_clip_score" else None
    order = keep_order(ctx.rows["row"].to_numpy(), params.keep, scores)
    keep, representative = keep_one_per_group(labels, order)

    best = np.full(n, np.nan, dtype=np.float32)
    np.fmax.at(best, pairs.left, pairs.similarity)
    np.fmax.at(best, pairs.right, pairs.similarity)

    report = {
        **plan.describe(),
        "threshold": params.threshold,
        "pairs": len(pairs),
        "groups": int(len(np.unique(labels[pairs.left]))),
        "rows_in_groups": int(np.isfinite(best).sum()),
        "removed": int((~keep).sum()),
    }
    if not plan.exact and params.recall_sample:
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
