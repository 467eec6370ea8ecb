"""``semdedup``: SemDeDup (Abbas et al., 2023) on the image embeddings.

Spherical k-means, then within each cluster a member is removed when its cosine to a member
ranked before it exceeds ``1 − eps``; members are ranked farthest from the centroid first
(``order: hard``, the paper's default) or nearest first (``easy``). See
:mod:`curate.dedup.semdedup` for the exact rule. The score is that maximum cosine; the report
gives the kept fraction for several ε from the same scores (``kept_fraction_by_eps``), to
choose ε without rerunning.

Out of core, on the build's executor: k-means on a seeded sample (``train_sample``), one task
per block of ``task_rows`` rows assigning them to clusters and sending them (with their uids)
to their cluster's group, then one task per group of whole clusters (about ``task_rows``
rows) computing the rule cluster by cluster from the float16 file
(:func:`curate.dedup.semdedup.semdedup_parts`); in build-pool one task per shard reads its
rows' answers back. The scores are those of the in-memory computation
(:func:`semdedup_scores`); the driver holds the clusters' sizes, not a value per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from pydantic import Field

from curate.dedup.blocks import TASK_ROWS
from curate.dedup.nearest import nearest_parts
from curate.dedup.semdedup import RankOrder, SemDeDupParts, semdedup_parts
from curate.filters.dedup_inputs import (
    array_digest,
    cached_kmeans,
    step_dir,
    survivors,
    task_rows_field,
    use_gpu,
)
from curate.filters.registry import (
    StageContext,
    StageParams,
    StageResult,
    reason_column,
    register_stage,
)

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
def semdedup(ctx: StageContext, params: SemDedupParams) -> SemDeDupAnswer:
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
    assigned = nearest_parts(
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
    found = semdedup_parts(
        vectors,
        assigned,
        ctx.column_reader("uid"),
        n_clusters,
        params.order,
        step_dir(ctx, "semdedup-groups", centroids=digest, gpu=gpu, order=params.order),
        executor=ctx.executor,
        task_rows=task_rows,
        progress=True,
    )
    every_eps = sorted({params.eps, *params.report_eps})
    kept = dict.fromkeys(every_eps, 0)
    for start, stop in found.windows():  # a window's answers at a time
        max_similarity, _ = found.read(start, stop)
        for eps in every_eps:
            kept[eps] += int(_keep(max_similarity, eps).sum())
    rows = len(vectors)
    return SemDeDupAnswer(
        found,
        params.eps,
        rows,
        report={
            "n_clusters": n_clusters,
            "eps": params.eps,
            "order": params.order,
            "kept_fraction": kept[params.eps] / rows,
            "kept_fraction_by_eps": {str(eps): kept[eps] / rows for eps in params.report_eps},
        },
    )


def _keep(max_similarity: np.ndarray, eps: float) -> np.ndarray:
    return ~(max_similarity > 1.0 - eps)  # NaN (first of its cluster) compares False: kept


@dataclass(frozen=True)
class SemDeDupAnswer:
    """semdedup's answer for rows ``[start, start + rows)`` of the stage's, read from the
    cluster groups' files when asked (in build-pool, by one task per shard)."""

    found: SemDeDupParts
    eps: float
    rows: int
    start: int = 0
    report: dict[str, Any] = field(default_factory=dict)

    def piece(self, start: int, count: int) -> SemDeDupAnswer:
        return replace(self, rows=count, start=self.start + start, report={})

    def dense(self) -> StageResult:
        max_similarity, most_similar = self.found.read(self.start, self.start + self.rows)
        keep = _keep(max_similarity, self.eps)
        text = f"semantic duplicate (cosine > {1 - self.eps:.4g}) of earlier-ranked uid "
        removed = np.flatnonzero(~keep)  # a string for these rows only, not every row
        reason = reason_column(self.rows, removed, text + most_similar.gather(removed))
        return StageResult(keep=keep, reason=reason, score=max_similarity, report=self.report)
