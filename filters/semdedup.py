"""``semdedup``: SemDeDup (Abbas et al., 2023) on the image embeddings.

Spherical k-means, then within each cluster a member is removed when its cosine to a member
ranked before it exceeds ``1 − eps``; members are ranked farthest from the centroid first
(``order: hard``, the paper's default) or nearest first (``easy``). See
:mod:`curate.dedup.semdedup` for the exact rule. The score is that maximum cosine; the report
gives the kept fraction for several ε from the same scores (``kept_fraction_by_eps``), to
choose ε without rerunning.
"""

from __future__ import annotations

from pydantic import Field

from curate.dedup.clustering import assign
from curate.dedup.semdedup import RankOrder, semdedup_scores
from curate.filters.dedup_inputs import cached_kmeans, reasons_naming
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


@register_stage("semdedup", SemDedupParams, needs_embeddings=True)
def semdedup(ctx: StageContext, params: SemDedupParams) -> StageResult:
    vectors = ctx.image_embeddings()
    n_clusters = params.n_clusters or max(1, round(len(vectors) / ROWS_PER_CLUSTER))
    centroids = cached_kmeans(
        ctx,
        "semdedup",
        vectors,
        n_clusters,
        n_iter=params.n_iter,
        train_sample=params.train_sample,
        spherical=params.spherical,
    )
    cluster_ids, _ = assign(vectors, centroids, progress=True)
    scores = semdedup_scores(vectors, cluster_ids, centroids, params.order, progress=True)
    keep = scores.keep(params.eps)
    return StageResult(
        keep=keep,
        reason=reasons_naming(
            ctx,
            keep,
            scores.most_similar,
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
