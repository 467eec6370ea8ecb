"""Seeded k-means (FAISS) and assignment of rows to their nearest centroid.

Same run, same seed, same thread count → same centroids: the training rows are a seeded sample
drawn here (FAISS's own subsampling is switched off) and FAISS's initialisation takes the seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from curate.dedup.knn import configure_threads, nearest

FAISS_MAX_POINTS_PER_CENTROID = 256  # FAISS's default cap on training rows per centroid
MAX_DEFAULT_TRAIN_ROWS = 1 << 19  # 524,288 rows: 1.6 GB of float32 at 768-d, in one process


def default_train_sample(n_rows: int, n_clusters: int) -> int:
    """All rows, capped at FAISS's default of 256 per centroid (more changes little) and at
    :data:`MAX_DEFAULT_TRAIN_ROWS` (k-means holds its sample in memory as float32; pools
    above that size train on a seeded sample unless the recipe sets ``train_sample``)."""
    return min(n_rows, FAISS_MAX_POINTS_PER_CENTROID * n_clusters, MAX_DEFAULT_TRAIN_ROWS)


def training_rows(n_rows: int, train_sample: int | None, n_clusters: int, seed: int) -> np.ndarray:
    """Sorted positions of the rows k-means trains on: a seeded sample, or every row."""
    size = min(n_rows, train_sample or default_train_sample(n_rows, n_clusters))
    if size >= n_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=size, replace=False))


def kmeans(
    vectors: Any,
    n_clusters: int,
    *,
    n_iter: int = 20,
    seed: int = 0,
    train_sample: int | None = None,
    spherical: bool = False,
    gpu: bool = False,
) -> np.ndarray:
    """Centroids (``n_clusters`` × dim, float32) of k-means on a seeded sample of ``vectors``
    (an array, or anything that answers ``vectors[positions]`` with rows, such as
    :class:`curate.dedup.blocks.Survivors`: only the sample is read).

    ``spherical=True`` re-normalises centroids after each step (k-means on cosine, as SemDeDup);
    ``False`` is plain L2 k-means, as DataComp's image-based baseline. ``gpu``: on GPU 0.
    """
    import faiss

    if not 1 <= n_clusters <= len(vectors):
        raise ValueError(
            f"k-means needs 1 ≤ n_clusters ≤ rows; got {n_clusters} for {len(vectors)} rows"
        )
    configure_threads()
    rows = training_rows(len(vectors), train_sample, n_clusters, seed)
    if len(rows) < n_clusters:
        raise ValueError(f"train_sample {len(rows)} is smaller than n_clusters {n_clusters}")
    sample = np.ascontiguousarray(vectors[rows], dtype=np.float32)
    model = faiss.Kmeans(
        sample.shape[1],
        n_clusters,
        niter=n_iter,
        seed=seed,
        spherical=spherical,
        min_points_per_centroid=1,
        max_points_per_centroid=1 << 30,
        verbose=False,
        gpu=gpu,
    )
    model.train(sample)
    return np.array(model.centroids, dtype=np.float32)


def assign(
    vectors: np.ndarray, centroids: np.ndarray, progress: bool = False, gpu: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's cluster (the centroid of largest inner product, DataComp's rule) and that
    inner product."""
    similarity, cluster_ids = nearest(
        centroids, vectors, progress=progress, desc="assign clusters", gpu=gpu
    )
    return cluster_ids, similarity
