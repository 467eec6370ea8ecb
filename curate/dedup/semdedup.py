"""SemDeDup's rule (Abbas et al., 2023, "SemDeDup: Data-efficient learning at web-scale
through semantic deduplication"; facebookresearch/SemDeDup).

Within each k-means cluster the members are ranked by cosine distance to the (normalised)
cluster centroid, **farthest first** (the paper's default ``keep_hard``: prototypical,
near-centroid examples are the redundant ones); ``order="easy"`` ranks nearest first. Ties
break by position (pool order). Member ``j`` gets ``M[j] = max cosine(i, j)`` over the members
``i`` ranked before it; it is removed when ``M[j] > 1 − ε``. As in the paper the rule is not
greedy: ``j`` is removed even when the earlier member it resembles was itself removed. The first
member of each cluster has no earlier member: ``M = NaN``, always kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from curate.dedup.knn import QUERY_BATCH, float32_batches

RankOrder = Literal["hard", "easy"]
BLOCK_CELLS = 1 << 24  # similarity entries per block (64 MB of float32)


@dataclass(frozen=True)
class SemDeDupScores:
    max_similarity: np.ndarray  # M per row (NaN for the first-ranked member of a cluster)
    most_similar: np.ndarray  # position of the earlier-ranked member reaching M (-1: none)
    rank: np.ndarray  # rank within its cluster (0 = first)
    distance_to_centroid: np.ndarray  # 1 − cosine(row, centroid)

    def keep(self, eps: float) -> np.ndarray:
        return ~(self.max_similarity > 1.0 - eps)  # NaN compares False: kept

    def kept_fraction(self, eps: float) -> float:
        return float(self.keep(eps).mean()) if len(self.max_similarity) else 1.0


def rank_within_clusters(
    cluster_ids: np.ndarray, distance_to_centroid: np.ndarray, order: RankOrder
) -> np.ndarray:
    """Positions sorted by cluster, then by the rank order, then by position."""
    positions = np.arange(len(cluster_ids))
    key = -distance_to_centroid if order == "hard" else distance_to_centroid
    return np.lexsort((positions, key, cluster_ids))


def semdedup_scores(
    vectors: np.ndarray,
    cluster_ids: np.ndarray,
    centroids: np.ndarray,
    order: RankOrder = "hard",
    progress: bool = False,
) -> SemDeDupScores:
    """``M`` for every row (see module doc); ``vectors`` row-aligned with ``cluster_ids``."""
    from tqdm import tqdm

    n = len(vectors)
    unit_centroids = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    distance = np.empty(n, dtype=np.float32)
    for start, block in float32_batches(vectors, QUERY_BATCH):
        centroid = unit_centroids[cluster_ids[start : start + len(block)]]
        distance[start : start + len(block)] = 1.0 - np.einsum("ij,ij->i", block, centroid)

    ranked = rank_within_clusters(cluster_ids, distance, order)
    sorted_clusters = cluster_ids[ranked]
    starts = np.flatnonzero(np.r_[True, sorted_clusters[1:] != sorted_clusters[:-1]])
    ends = np.r_[starts[1:], n]
    rank = np.empty(n, dtype=np.int64)
    rank[ranked] = np.arange(n) - np.repeat(starts, ends - starts)

    max_similarity = np.full(n, np.nan, dtype=np.float32)
    most_similar = np.full(n, -1, dtype=np.int64)
    sizes = ends - starts
    for start, end in tqdm(
        zip(starts[sizes > 1], ends[sizes > 1], strict=True),
        total=int((sizes > 1).sum()),
        desc="semdedup clusters",
        disable=not progress,
    ):
        members = ranked[start:end]
        similarity, earlier = _max_to_earlier(np.asarray(vectors[members], dtype=np.float32))
        max_similarity[members[1:]] = similarity[1:]
        most_similar[members[1:]] = members[earlier[1:]]
    return SemDeDupScores(max_similarity, most_similar, rank, distance)


def _max_to_earlier(members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ranked members: max cosine to any earlier member, and which one (column blocks)."""
    size = len(members)
    block = max(1, BLOCK_CELLS // size)
    similarity = np.full(size, -np.inf, dtype=np.float32)
    earlier = np.zeros(size, dtype=np.int64)
    for first in range(1, size, block):
        last = min(size, first + block)
        products = members[:last] @ members[first:last].T  # rows: candidates i, columns: j
        later_or_self = np.arange(last)[:, None] >= np.arange(first, last)[None, :]
        products[later_or_self] = -np.inf
        earlier[first:last] = products.argmax(axis=0)
        similarity[first:last] = products[earlier[first:last], np.arange(last - first)]
    return similarity, earlier
