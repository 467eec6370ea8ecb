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
from pathlib import Path
from typing import Any, Literal

import numpy as np

from curate.dedup.blocks import (
    TASK_ROWS,
    NpyFile,
    Survivors,
    load_arrays,
    run_parts,
    save_arrays,
)
from curate.dedup.knn import QUERY_BATCH, RECHECK_MARGIN, dot_pairs, float32_batches, transposed

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

    ranked, starts, ends, rank = _ranking(cluster_ids, distance, order)
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
    """For ranked members: max cosine to any earlier member, and which one (column blocks).

    The matrix product proposes, for each member, the earlier members within
    ``RECHECK_MARGIN`` of its column's maximum; :func:`dot_rows` decides among them (ties to
    the earliest), so the answer does not depend on how the product was rounded."""
    size = len(members)
    block = max(1, BLOCK_CELLS // size)
    similarity = np.full(size, -np.inf, dtype=np.float32)
    earlier = np.zeros(size, dtype=np.int64)
    for first in range(1, size, block):
        last = min(size, first + block)
        products = members[:last] @ transposed(members[first:last])  # rows i, columns j
        later_or_self = np.arange(last)[:, None] >= np.arange(first, last)[None, :]
        products[later_or_self] = -np.inf
        close = products >= products.max(axis=0) - np.float32(RECHECK_MARGIN)
        candidate, column = np.nonzero(close)
        exact = dot_pairs(members, candidate, members, first + column)
        best = np.lexsort((candidate, -exact, column))  # per column: largest, then earliest
        chosen = best[np.r_[True, column[best][1:] != column[best][:-1]]]
        earlier[first + column[chosen]] = candidate[chosen]
        similarity[first + column[chosen]] = exact[chosen]
    return similarity, earlier


def _ranking(
    cluster_ids: np.ndarray, distance: np.ndarray, order: RankOrder
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(positions ranked by cluster then rank order, each cluster's [start, end) in that
    ranking, each position's rank within its cluster)."""
    n = len(cluster_ids)
    ranked = rank_within_clusters(cluster_ids, distance, order)
    sorted_clusters = cluster_ids[ranked]
    starts = np.flatnonzero(np.r_[True, sorted_clusters[1:] != sorted_clusters[:-1]])
    ends = np.r_[starts[1:], n].astype(np.int64)
    rank = np.empty(n, dtype=np.int64)
    rank[ranked] = np.arange(n) - np.repeat(starts, ends - starts)
    return ranked, starts, ends, rank


# -- out of core: one task per group of whole clusters ---------------------------------------


def semdedup_scores_blocked(
    survivors: Survivors,
    cluster_ids: np.ndarray,
    distance: np.ndarray,
    order: RankOrder,
    work: Path,
    *,
    executor: Any = None,
    task_rows: int = TASK_ROWS,
    progress: bool = False,
) -> SemDeDupScores:
    """:func:`semdedup_scores` with the vectors read from the file, cluster by cluster, by
    tasks of whole clusters of about ``task_rows`` rows in all (``cluster_ids`` and
    ``distance``, the distance to the normalised centroid, come from
    :func:`curate.dedup.nearest.nearest_blocked`). A task holds one cluster's vectors and its
    similarity blocks; this process holds ``~40`` bytes a row."""
    n = len(cluster_ids)
    ranked, starts, ends, rank = _ranking(cluster_ids, distance, order)
    work.mkdir(parents=True, exist_ok=True)
    tasks = []
    for number, (first, last) in enumerate(_cluster_groups(starts, ends, task_rows)):
        members = ranked[first:last]
        tasks.append(
            ClusterGroupTask(
                image=survivors.image,
                positions=members,
                pool_rows=survivors.rows[members],
                cluster_starts=starts[(starts >= first) & (starts < last)] - first,
                out=work / f"clusters-{number:05d}.npz",
            )
        )
    run_parts(executor, semdedup_part, tasks, desc="semdedup clusters", progress=progress)
    max_similarity = np.full(n, np.nan, dtype=np.float32)
    most_similar = np.full(n, -1, dtype=np.int64)
    for task in tasks:
        found = load_arrays(task.out)
        max_similarity[task.positions] = found["max_similarity"]
        most_similar[task.positions] = found["most_similar"]
    return SemDeDupScores(max_similarity, most_similar, rank, distance)


def _cluster_groups(starts: np.ndarray, ends: np.ndarray, task_rows: int) -> list[tuple[int, int]]:
    """[first, last) ranges of the ranking holding whole clusters, a new range whenever the
    next cluster would pass ``task_rows`` rows (a larger cluster is a range of its own)."""
    groups: list[tuple[int, int]] = []
    first = 0
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        if end - first > task_rows and start > first:
            groups.append((first, start))
            first = start
    if len(starts):
        groups.append((first, int(ends[-1])))
    return groups


@dataclass(frozen=True)
class ClusterGroupTask:
    image: NpyFile
    positions: np.ndarray  # ranked positions of this task's clusters
    pool_rows: np.ndarray  # their rows in the embeddings file
    cluster_starts: np.ndarray  # where each cluster starts in ``positions``
    out: Path


def semdedup_part(task: ClusterGroupTask) -> None:
    """M and the earlier member reaching it, for every position of the task (see module doc)."""
    n = len(task.positions)
    max_similarity = np.full(n, np.nan, dtype=np.float32)
    most_similar = np.full(n, -1, dtype=np.int64)
    ends = np.r_[task.cluster_starts[1:], n].astype(np.int64)
    for start, end in zip(task.cluster_starts.tolist(), ends.tolist(), strict=True):
        if end - start < 2:
            continue
        vectors = np.asarray(task.image.take(task.pool_rows[start:end]), dtype=np.float32)
        similarity, earlier = _max_to_earlier(vectors)
        max_similarity[start + 1 : end] = similarity[1:]
        most_similar[start + 1 : end] = task.positions[start + earlier[1:]]
    save_arrays(task.out, max_similarity=max_similarity, most_similar=most_similar)
