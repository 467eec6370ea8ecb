"""``image_based``: DataComp's image-based filter (see :mod:`curate.dedup.image_based`).

k-means over the surviving rows' image embeddings; keep the rows whose cluster is the nearest
cluster of at least one target image. The target set (ImageNet-1k train in DataComp) is a
``.npy`` of L2-normalised image embeddings made with the pool's embedding model. The centroids
are cached in the stage's work directory, so a resumed build skips k-means.

Out of core, on the build's executor: k-means trains on a seeded sample read from the
float16 file (``train_sample``: by default all rows up to 256 a cluster and at most
``curate.dedup.clustering.MAX_DEFAULT_TRAIN_ROWS``), then one task per block of ``task_rows``
rows assigns them to the centroids: the kept set of :func:`image_based_keep` on the whole
float32 matrix, without that matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from curate.dedup.blocks import TASK_ROWS
from curate.dedup.clustering import default_train_sample
from curate.dedup.image_based import (
    ROWS_PER_CLUSTER,
    TargetClusters,
    default_n_clusters,
    target_clusters_blocked,
)
from curate.dedup.reference import load_reference_embeddings
from curate.filters.dedup_inputs import (
    array_digest,
    cached_kmeans,
    step_dir,
    survivors,
    task_rows_field,
    use_gpu,
)
from curate.filters.registry import StageContext, StageParams, StageResult, register_stage


class ImageBasedParams(StageParams):
    target_embeddings: Path = Field(
        description=".npy (or a directory holding image.npy) of the target set's L2-normalised "
        "image embeddings, made with the pool's embedding model"
    )
    n_clusters: int | None = Field(
        None,
        ge=1,
        description=f"k-means clusters (default: rows / {ROWS_PER_CLUSTER}, DataComp's ratio)",
    )
    n_iter: int = Field(20, ge=1, description="k-means iterations (DataComp: 20)")
    train_sample: int | None = Field(
        None,
        ge=1,
        description="rows k-means trains on, a seeded sample (default: all, ≤ 256 per cluster)",
    )
    spherical: bool = Field(
        False, description="normalise centroids (cosine k-means); DataComp: plain L2 k-means"
    )
    task_rows: int | None = task_rows_field()


@register_stage(
    "image_based", ImageBasedParams, needs_embeddings=True, columns=(), columns_on_demand=True
)
def image_based(ctx: StageContext, params: ImageBasedParams) -> ImageBasedAnswer:
    vectors = survivors(ctx)
    gpu = use_gpu(ctx)
    target = load_reference_embeddings(params.target_embeddings, vectors.dim, "target_embeddings")
    n_clusters = params.n_clusters or default_n_clusters(len(vectors))
    centroids = cached_kmeans(
        ctx,
        "image_based",
        vectors,
        n_clusters,
        n_iter=params.n_iter,
        train_sample=params.train_sample,
        spherical=params.spherical,
        gpu=gpu,
    )
    selection = target_clusters_blocked(
        vectors,
        target,
        centroids,
        step_dir(ctx, "image_based-assign", centroids=array_digest(centroids), gpu=gpu),
        executor=ctx.executor,
        task_rows=params.task_rows or TASK_ROWS,
        gpu=gpu,
        progress=True,
    )
    return ImageBasedAnswer(
        selection,
        rows=len(vectors),
        report={
            "n_clusters": n_clusters,
            "train_rows": min(
                len(vectors), params.train_sample or default_train_sample(len(vectors), n_clusters)
            ),
            "target_rows": len(target),
            "target_clusters": len(selection.target_clusters),
            "kept_fraction": selection.kept_rows() / len(vectors),
        },
    )


@dataclass(frozen=True)
class ImageBasedAnswer:
    """image_based's answer for rows ``[start, start + rows)`` of the stage's, read from the
    assignment tasks' files when asked (in build-pool, by one task per shard)."""

    selection: TargetClusters
    rows: int
    start: int = 0
    report: dict[str, Any] = field(default_factory=dict)

    def piece(self, start: int, count: int) -> ImageBasedAnswer:
        return ImageBasedAnswer(self.selection, count, self.start + start)

    def dense(self) -> StageResult:
        cluster_ids = self.selection.cluster_ids(self.start, self.start + self.rows)
        keep = self.selection.keep(cluster_ids)
        removed = np.flatnonzero(~keep)
        reason = np.full(self.rows, "", dtype=object)
        reason[removed] = "no target image is nearest to cluster " + cluster_ids[removed].astype(
            str
        ).astype(object)
        return StageResult(keep=keep, reason=reason, report=self.report)
