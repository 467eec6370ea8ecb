"""``image_based``: DataComp's image-based filter (see :mod:`curate.dedup.image_based`).

k-means over the surviving rows' image embeddings; keep the rows whose cluster is the nearest
cluster of at least one target image. The target set (ImageNet-1k train in DataComp) is a
``.npy`` of L2-normalised image embeddings made with the pool's embedding model. The centroids
are cached in the stage's work directory, so a resumed build skips k-means.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from curate.dedup.clustering import default_train_sample
from curate.dedup.image_based import ROWS_PER_CLUSTER, default_n_clusters, image_based_keep
from curate.dedup.reference import load_reference_embeddings
from curate.filters.dedup_inputs import cached_kmeans
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


@register_stage("image_based", ImageBasedParams, needs_embeddings=True)
def image_based(ctx: StageContext, params: ImageBasedParams) -> StageResult:
    vectors = ctx.image_embeddings()
    target = load_reference_embeddings(
        params.target_embeddings, vectors.shape[1], "target_embeddings"
    )
    n_clusters = params.n_clusters or default_n_clusters(len(vectors))
    centroids = cached_kmeans(
        ctx,
        "image_based",
        vectors,
        n_clusters,
        n_iter=params.n_iter,
        train_sample=params.train_sample,
        spherical=params.spherical,
    )
    selection = image_based_keep(vectors, target, centroids=centroids, progress=True)
    cluster_of_row = selection.cluster_ids.astype(str).astype(object)
    return StageResult(
        keep=selection.keep,
        reason=("no target image is nearest to cluster " + cluster_of_row).astype(object),
        report={
            "n_clusters": n_clusters,
            "train_rows": min(
                len(vectors), params.train_sample or default_train_sample(len(vectors), n_clusters)
            ),
            "target_rows": len(target),
            "target_clusters": len(selection.target_clusters),
            "kept_fraction": float(selection.keep.mean()),
        },
    )
