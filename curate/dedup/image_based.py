"""DataComp's image-based filter (Gadre et al., 2023; mlfoundations/datacomp, baselines/).

Cluster the pool's image embeddings with k-means (100,000 clusters for the 12.8M-sample small
pool: 128 samples per cluster, the default here), find for each image of a
target set (ImageNet-1k train in DataComp; here any set embedded with the same model) its
nearest centroid, and keep the pool samples whose own nearest centroid is one of those.
DataComp trains plain L2 k-means and assigns by the largest inner product with the centroids;
this module does the same (``spherical=True`` normalises centroids instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate.dedup.blocks import TASK_ROWS, Survivors
from curate.dedup.clustering import assign, kmeans
from curate.dedup.nearest import NearestParts, nearest_parts

ROWS_PER_CLUSTER = 128  # DataComp: 12.8M samples / 100,000 clusters


def default_n_clusters(n_rows: int) -> int:
    return max(1, round(n_rows / ROWS_PER_CLUSTER))


@dataclass(frozen=True)
class ImageBasedSelection:
    keep: np.ndarray  # per pool row: its cluster is the nearest cluster of some target image
    cluster_ids: np.ndarray  # per pool row: nearest centroid
    target_clusters: np.ndarray  # sorted unique nearest centroids of the target images
    centroids: np.ndarray


def image_based_keep(
    pool_image_emb: np.ndarray,
    target_image_emb: np.ndarray,
    n_clusters: int | None = None,
    seed: int = 0,
    *,
    n_iter: int = 20,
    train_sample: int | None = None,
    spherical: bool = False,
    centroids: np.ndarray | None = None,
    progress: bool = False,
) -> ImageBasedSelection:
    """Select the pool rows that fall into a cluster some target image falls into.

    ``centroids`` skips k-means (precomputed or cached centroids); otherwise k-means runs on a
    seeded sample of ``train_sample`` pool rows (see :func:`curate.dedup.clustering.kmeans`).
    """
    if centroids is None:
        centroids = kmeans(
            pool_image_emb,
            n_clusters or default_n_clusters(len(pool_image_emb)),
            n_iter=n_iter,
            seed=seed,
            train_sample=train_sample,
            spherical=spherical,
        )
    cluster_ids, _ = assign(pool_image_emb, centroids, progress=progress)
    target_ids, _ = assign(target_image_emb, centroids)
    target_clusters = np.unique(target_ids)
    return ImageBasedSelection(
        keep=np.isin(cluster_ids, target_clusters),
        cluster_ids=cluster_ids,
        target_clusters=target_clusters,
        centroids=centroids,
    )


@dataclass(frozen=True)
class TargetClusters:
    """The image-based selection left in the assignment tasks' files: a row is kept when its
    nearest centroid (``assigned``) is one of ``target_clusters``. Picklable: a task reads the
    rows it answers for."""

    assigned: NearestParts
    target_clusters: np.ndarray  # sorted unique nearest centroids of the target images

    def cluster_ids(self, start: int, stop: int) -> np.ndarray:
        """Nearest centroid of rows ``[start, stop)``."""
        return self.assigned.read(start, stop).index

    def keep(self, cluster_ids: np.ndarray) -> np.ndarray:
        return np.isin(cluster_ids, self.target_clusters)

    def kept_rows(self) -> int:
        """How many rows are kept, a task's file at a time."""
        return sum(
            int(self.keep(self.cluster_ids(start, stop)).sum())
            for start, stop in self.assigned.windows()
        )


def target_clusters_blocked(
    survivors: Survivors,
    target_image_emb: np.ndarray,
    centroids: np.ndarray,
    work: Path,
    *,
    executor: Any = None,
    task_rows: int = TASK_ROWS,
    gpu: bool = False,
    progress: bool = False,
) -> TargetClusters:
    """:func:`image_based_keep` with given centroids, the pool's rows read from the float16
    file a block at a time by tasks of ``task_rows`` rows: the same assignment, left in the
    tasks' files. This process holds the centroids and the target set."""
    assigned = nearest_parts(
        survivors,
        centroids,
        work,
        executor=executor,
        task_rows=task_rows,
        gpu=gpu,
        progress=progress,
        desc="assign clusters",
    )
    target_ids, _ = assign(target_image_emb, centroids, gpu=gpu)
    return TargetClusters(assigned, np.unique(target_ids))
