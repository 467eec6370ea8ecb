"""``semdedup``: SemDeDup (Abbas et al., 2023) on the image embeddings.

Spherical k-means, then within each cluster a member is removed when its cosine to a member
ranked before it exceeds ``1 − eps``; members are ranked farthest from the centroid first
(``order: hard``, the paper's default) or nearest first (``easy``). See
:mod:`curate.dedup.semdedup` for the exact rule. The score is that maximum cosine; the report
gives the kept fraction for several ε from the same scores (``kept_fraction_by_eps``), to
choose ε without rerunning.

Out of core, on the build's executor: k-means on a seeded sample (``train_sample``), one task
per block of ``task_rows`` rows assigning them to clusters, then one task per group of whole
clusters (about ``task_rows`` rows) computing the rule cluster by cluster from the float16
file. The scores are those of the in-memory computation (:func:`semdedup_scores`).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from curate.dedup.blocks import TASK_ROWS
from curate.dedup.nearest import nearest_blocked
from curate.dedup.semdedup import RankOrder, semdedup_scores_blocked
from curate.filters.dedup_inputs import (
    array_digest,
    cached_kmeans,
    reasons_naming,
    step_dir,
    survivors,
    task_rows_field,
    use_gpu,
)
from curate.filters.registry import StageContext, StageParams, StageResult, register_stage

ROWS_PER_CLUSTER = 1000


class SemDedupParams(StageParams):
    eps: float = Field(
        0.05, gt=0.0, lt=1.0, description="remove when cosine to an earlier member > 1 − eps"
    )
    n_clusters: int | None = Field(
        None, ge=1, description=f"k-means clusters (default: rows / {ROWS_PER_CLUSTER})"
    )
    n_iter: int = Field(20, ge=1, description="k-means iterations")
    train_sample: int | None = Field(
        None,
        ge=1,
        description="rows k-means trains on, a seeded sample (default: all, ≤ 256 per cluster)",
    )
    spherical: bool = Field(True, description="cosine k-means, as SemDeDup")
    order: RankOrder = Field(
        "hard",
        description="rank within a cluster: hard = farthest from the centroid first (kept), "
        "easy = nearest first",
    )
    report_eps: list[float] = Field(
        [0.01, 0.02, 0.05, 0.1, 0.2], description="ε values whose kept fraction the report gives"
    )
    task_rows: int | None = task_rows_field()


@register_stage(
    "semdedup", SemDedupParams, needs_embeddings=True, columns=("uid",), columns_on_demand=True
)
def semdedup(ctx: StageContext, params: SemDedupParams) -> StageResult:
    vectors = survivors(ctx)
    gpu = use_gpu(ctx)
    task_rows = params.task_rows or TASK_ROWS
    n_clusters = params.n_clusters or max(1, round(len(vectors) / ROWS_PER_CLUSTER))
    centroids = cached_kmeans(
        ctx,
        "semdedup",
        vectors,
        n_clusters,
        n_iter=params.n_iter,
        train_sample=params.train_sample,
        spherical=params.spherical,
        gpu=gpu,
    )
    digest = array_digest(centroids)
    assigned = nearest_blocked(
        vectors,
        centroids,
        step_dir(ctx, "semdedup-assign", centroids=digest, gpu=gpu),
        executor=ctx.executor,
        task_rows=task_rows,
        gpu=gpu,
        with_distance=True,
        progress=True,
        desc="assign clusters",
    )
    scores = semdedup_scores_blocked(
        vectors,
        assigned.index,
        assigned.distance,
        params.order,
        step_dir(ctx, "semdedup-clusters", centroids=digest, gpu=gpu, order=params.order),
        executor=ctx.executor,
        task_rows=task_rows,
        progress=True,
    )
    keep = scores.keep(params.eps)
    removed = np.flatnonzero(~keep)
    return StageResult(
        keep=keep,
        reason=reasons_naming(
            ctx,
            removed,
            scores.most_similar[removed],
            f"semantic duplicate (cosine > {1 - params.eps:.4g}) of earlier-ranked uid",
        ),
        score=scores.max_similarity,
        report={
            "n_clusters": n_clusters,
            "eps": params.eps,
            "order": params.order,
            "kept_fraction": scores.kept_fraction(params.eps),
            "kept_fraction_by_eps": {
                str(eps): scores.kept_fraction(eps) for eps in params.report_eps
            },
        },
    )
