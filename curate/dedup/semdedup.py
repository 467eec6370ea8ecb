"""SemDeDup's rule (Abbas et al., 2023, "SemDeDup: Data-efficient learning at web-scale
through semantic deduplication"; facebookresearch/SemDeDup).

Within each k-means cluster the members are ranked by cosine distance to the (normalised)
cluster centroid, **farthest first** (the paper's default ``keep_hard``: prototypical,
near-centroid examples are the redundant ones); ``order="easy"`` ranks nearest first. The
distances are summed in float64, so near-ties rank in their exact order; equal distances
break by pool order (reversed for ``easy``, which is SemDeDup's hard ranking reversed).
Member ``j`` gets ``M[j] = max cosine(i, j)`` over the members ``i`` ranked before it; it is
removed when ``M[j] > 1 − ε``. As in the paper the rule is not greedy: ``j`` is removed even
when the earlier member it resembles was itself removed. The first member of each cluster has
no earlier member: ``M = NaN``, always kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa

from curate.core.atomic import atomic_path
from curate.dedup.blocks import (
    TASK_ROWS,
    NpyFile,
    Survivors,
    consecutive_groups,
    group_count,
    run_parts,
)
from curate.dedup.knn import (
    QUERY_BATCH,
    RECHECK_MARGIN,
    centroid_distance,
    dot_pairs,
    float32_batches,
    transposed,
)
from curate.dedup.nearest import NearestParts
from curate.dedup.shuffle import read_spills, write_spill

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
    """Positions sorted by cluster, then by the rank order; equal distances by position, in
    reverse for ``easy`` (SemDeDup's ``which_to_keep: easy`` reverses its hard ranking)."""
    positions = np.arange(len(cluster_ids))
    if order == "hard":
        return np.lexsort((positions, -distance_to_centroid, cluster_ids))
    return np.lexsort((-positions, distance_to_centroid, cluster_ids))


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
    distance = np.empty(n, dtype=np.float64)
    for start, block in float32_batches(vectors, QUERY_BATCH):
        centroid = unit_centroids[cluster_ids[start : start + len(block)]]
        distance[start : start + len(block)] = centroid_distance(block, centroid)

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


# -- out of core: a shuffle by cluster group, one task per group of whole clusters ---------


def semdedup_parts(
    survivors: Survivors,
    assigned: NearestParts,
    uids: Callable[[np.ndarray], pl.Series],
    n_clusters: int,
    order: RankOrder,
    work: Path,
    *,
    executor: Any = None,
    task_rows: int = TASK_ROWS,
    progress: bool = False,
) -> SemDeDupParts:
    """:func:`semdedup_scores` with the vectors read from the file, cluster by cluster, by
    tasks of whole clusters of about ``task_rows`` rows in all, and no array of every row in
    this process. ``assigned`` (from :func:`curate.dedup.nearest.nearest_parts` with
    ``with_distance``) gives each row's cluster and distance to the normalised centroid;
    ``uids(positions)`` (picklable) reads the rows' uids, which the answers carry so that a
    removal names the member it resembles. This process holds ``O(k)``: the clusters' sizes.

    One task per assignment file sends its rows (position, pool row, cluster, distance, uid)
    to their cluster group (:mod:`curate.dedup.shuffle`); one task per group ranks each of its
    clusters, as the whole ranking would (cluster, rank order, position), computes ``M`` and
    sends each member's answer back to the assignment file's window its position is in, where
    :meth:`SemDeDupParts.read` finds it."""
    sizes = np.zeros(n_clusters, dtype=np.int64)
    for start, stop in assigned.windows():
        sizes += np.bincount(assigned.read(start, stop).index, minlength=n_clusters)
    group_of_cluster = consecutive_groups(sizes, task_rows)
    groups = group_count(group_of_cluster)
    found = SemDeDupParts(assigned.bounds, work, groups)
    groups_file = work / "group_of_cluster.npy"
    if not groups_file.is_file():
        with atomic_path(groups_file) as tmp, open(tmp, "wb") as handle:
            np.save(handle, group_of_cluster)
    senders = [
        SpillTask(
            survivors.part(start, stop),
            start,
            assigned,
            uids,
            groups_file,
            groups,
            found.spill(number),
        )
        for number, (start, stop) in enumerate(assigned.windows())
    ]
    run_parts(executor, semdedup_spill, senders, desc="semdedup shuffle", progress=progress)
    receivers = [
        ClusterGroupTask(survivors.image, found, group, order, found.file(group))
        for group in range(groups)
    ]
    run_parts(executor, semdedup_part, receivers, desc="semdedup clusters", progress=progress)
    return found


@dataclass(frozen=True)
class SpillTask:
    survivors: Survivors  # this window's rows (positions start at 0)
    start: int  # position of its first row
    assigned: NearestParts
    uids: Callable[[np.ndarray], pl.Series]
    group_of_cluster: Path  # .npy: each cluster's group
    groups: int
    out: Path


def semdedup_spill(task: SpillTask) -> None:
    """Map: a window's rows, sent to their clusters' groups."""
    stop = task.start + len(task.survivors)
    found = task.assigned.read(task.start, stop)
    positions = np.arange(task.start, stop, dtype=np.int64)
    rows = pa.table(
        {
            "position": positions,
            "pool_row": task.survivors.rows.astype(np.int64, copy=False),
            "cluster": found.index,
            "distance": found.distance,
            "uid": task.uids(positions).cast(pl.String).to_arrow(),
        }
    )
    group = np.load(task.group_of_cluster, mmap_mode="r")[found.index]
    write_spill(task.out, rows, group, task.groups)


@dataclass(frozen=True)
class ClusterGroupTask:
    image: NpyFile
    parts: SemDeDupParts  # where the spills are, and where the answers go back
    group: int
    order: RankOrder
    out: Path


def semdedup_part(task: ClusterGroupTask) -> None:
    """Reduce: M, and the uid of the earlier member reaching it, for every member of the
    group's clusters (see module doc), sent back by window."""
    spills = [task.parts.spill(sender) for sender in range(len(task.parts.bounds) - 1)]
    members = read_spills(spills, task.group).sort_by("position")
    positions = members["position"].to_numpy()
    cluster = members["cluster"].to_numpy()
    ranked, starts, ends, _ = _ranking(cluster, members["distance"].to_numpy(), task.order)
    pool_rows = members["pool_row"].to_numpy()[ranked]
    n = len(ranked)
    max_similarity = np.full(n, np.nan, dtype=np.float32)
    earlier_member = np.full(n, -1, dtype=np.int64)  # in ranked order
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        if end - start < 2:
            continue
        vectors = np.asarray(task.image.take(pool_rows[start:end]), dtype=np.float32)
        similarity, earlier = _max_to_earlier(vectors)
        max_similarity[start + 1 : end] = similarity[1:]
        earlier_member[start + 1 : end] = start + earlier[1:]
    uid = members["uid"].take(pa.array(ranked))
    answers = pa.table(
        {
            "position": positions[ranked],
            "max_similarity": max_similarity,
            # a null index takes a null: the first of a cluster names no one
            "most_similar_uid": uid.take(pa.array(earlier_member, mask=earlier_member < 0)),
        }
    )
    windows = task.parts.bounds
    window = np.searchsorted(windows, positions[ranked], side="right") - 1
    write_spill(task.out, answers, window, len(windows) - 1)


@dataclass(frozen=True)
class SemDeDupParts:
    """:func:`semdedup_parts`' files in ``work``: the senders' spills (one per assignment
    window, ``bounds``) and the answers of each of the ``groups``, sorted by the window their
    positions are in. Small and picklable: a task reads its own rows."""

    bounds: tuple[int, ...]
    work: Path
    groups: int

    def spill(self, sender: int) -> Path:
        return self.work / f"spill-{sender:05d}.arrow"

    def file(self, group: int) -> Path:
        return self.work / f"clusters-{group:05d}.arrow"

    def read(self, start: int, stop: int) -> tuple[np.ndarray, pl.Series]:
        """``M`` of rows ``[start, stop)`` (NaN: first of its cluster) and the uid of the
        earlier member reaching it (null: none), reading only those windows' slices."""
        rows = stop - start
        max_similarity = np.full(rows, np.nan, dtype=np.float32)
        most_similar = pl.Series("uid", dtype=pl.String).extend_constant(None, rows)
        if rows <= 0 or not self.groups:
            return max_similarity, most_similar
        first = int(np.searchsorted(self.bounds, start, side="right")) - 1
        last = int(np.searchsorted(self.bounds, stop - 1, side="right")) - 1
        files = [self.file(group) for group in range(self.groups)]
        found = pl.from_arrow(read_spills(files, first, last))
        assert isinstance(found, pl.DataFrame)
        found = found.filter(pl.col("position").is_between(start, stop - 1))
        at = found["position"].to_numpy() - start
        max_similarity[at] = found["max_similarity"].to_numpy()
        return max_similarity, most_similar.scatter(at, found["most_similar_uid"])

    def windows(self) -> list[tuple[int, int]]:
        return list(zip(self.bounds[:-1], self.bounds[1:], strict=True))
