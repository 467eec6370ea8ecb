"""near_dedup's IVF search out of core, as executor tasks (map, then search per list group).

The same search as :func:`curate.dedup.knn.self_pairs` with an IVF plan, in four steps:

1. **train** (here): the coarse centroids, by k-means on the same seeded sample of
   ``40·nlist`` rows (read from the float16 file, the only rows this process holds);
2. **assign** (one task per ``task_rows`` rows): each row's ``nprobe`` nearest lists, from
   blocks of the file; a task writes them (``nprobe`` int32 a row) and its list sizes;
3. **search** (one task per group of lists): the lists are cut into groups of consecutive
   list numbers holding at most ``group_rows`` rows (:func:`list_groups`); a task holds the
   rows filed in its group's lists (float16, ``2·d`` bytes a row, sorted by list:
   :class:`curate.dedup.knn.ListProducts`), then meets every row that probes a list of the
   group with those lists only, one matrix product per list. A row is searched, in parts,
   by every group its ``nprobe`` lists touch, so the union over groups is the one-index
   search (:func:`curate.dedup.knn.self_pairs`): the same pairs, with the same cosines;
4. **reduce** (here): the pairs of all groups, made undirected and unique.

The driver holds the centroids, the training sample while it trains, and the pairs; a task
holds one block of rows, or one group's lists. With ``torch_device`` set (``--device
cuda``), the products run on that device (faiss-gpu has no range search); every cosine is
still rechecked on the CPU, so the pairs are the CPU's.

:func:`exact_pairs_bounded` is the exact reference for a sample of query rows: the brute
force's pairs (:func:`curate.dedup.knn.exact_pairs`), with only the lists that the triangle
inequality cannot rule out searched, by the same list tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate.dedup.blocks import (
    BLOCK_ROWS,
    TASK_ROWS,
    NpyFile,
    Survivors,
    blocks,
    load_arrays,
    load_pair_parts,
    run_parts,
    save_arrays,
    task_bounds,
)
from curate.dedup.knn import (
    RECHECK_MARGIN,
    IndexPlan,
    ListProducts,
    Pairs,
    configure_threads,
    exact_top,
    flat_index,
    ivf_centroids,
    trained_ivf,
)

GROUP_ROWS = 1 << 18  # rows in one search task's lists: 2·d bytes each (403 MB at 768-d)
QUERY_ROWS = 4 * BLOCK_ROWS  # query rows per pass over a group's lists
ANGLE_SLACK = 1e-3  # radians to spare: float64 rounding of the angles is far below (~1e-7)
CANDIDATE_QUERIES = 2048  # query rows whose candidate lists are found at a time
PROBE_ENTRIES = 1 << 22  # (query, list) entries an exact-search task meets at a time


@dataclass(frozen=True)
class IvfLists:
    """The trained and assigned inverted file, as its tasks wrote it under the work folder."""

    centroids: Path  # centroids.npz
    bounds: tuple[tuple[int, int], ...]  # the assign tasks' position ranges
    list_files: tuple[Path, ...]  # their outputs: each row's lists (the first: where it is filed)
    sizes: np.ndarray  # rows filed in each list

    def group_products(
        self,
        image: NpyFile,
        rows: NpyFile,
        group_of_list: np.ndarray,
        group: int,
        threshold: float,
        torch_device: str | None = None,
    ) -> ListProducts:
        """The rows filed in the lists of one group, sorted by list, ready to be searched
        (``rows``: the pool row of every position, read as needed)."""
        in_group = group_of_list == group
        member_lists, member_ids = [], []
        for (start, _), list_file in zip(self.bounds, self.list_files, strict=True):
            filed_in = load_arrays(list_file)["lists"][:, 0]
            members = np.flatnonzero(in_group[filed_in])
            member_lists.append(filed_in[members])
            member_ids.append(start + members)
        return ListProducts(
            np.concatenate(member_lists),
            np.concatenate(member_ids),
            lambda positions: image.take(rows.take(positions)),
            image.shape[1],
            len(self.sizes),
            threshold,
            torch_device,
        )


def ivf_lists(
    survivors: Survivors,
    plan: IndexPlan,
    work: Path,
    *,
    seed: int = 0,
    executor: Any = None,
    task_rows: int = TASK_ROWS,
    gpu: bool = False,
    gpus: int = 0,
    progress: bool = False,
) -> IvfLists:
    """Steps 1 and 2 (see module doc): the centroids, then each row's ``nprobe`` nearest
    lists; a rerun with the same ``work`` reuses what is there."""
    if plan.exact:
        raise ValueError("ivf_lists needs an IVF plan")
    work.mkdir(parents=True, exist_ok=True)
    centroids = work / "centroids.npz"
    if not centroids.is_file():
        index = trained_ivf(survivors, plan, seed, gpu=gpu)
        save_arrays(centroids, centroids=ivf_centroids(index))
        del index
    bounds = task_bounds(len(survivors), task_rows)
    assign_tasks = [
        ListAssignTask(
            survivors.part(start, stop),
            start,
            centroids,
            plan.nprobe,
            gpu,
            work / f"lists-{i:05d}.npz",
        )
        for i, (start, stop) in enumerate(bounds)
    ]
    run_parts(executor, assign_lists, assign_tasks, gpus=gpus, desc="IVF lists", progress=progress)
    sizes = sum(
        (load_arrays(task.out)["list_sizes"] for task in assign_tasks),
        np.zeros(plan.nlist, dtype=np.int64),
    )
    return IvfLists(centroids, tuple(bounds), tuple(task.out for task in assign_tasks), sizes)


def ivf_pairs(
    survivors: Survivors,
    rows_file: Path,
    threshold: float,
    plan: IndexPlan,
    work: Path,
    *,
    seed: int = 0,
    executor: Any = None,
    task_rows: int = TASK_ROWS,
    group_rows: int = GROUP_ROWS,
    gpu: bool = False,
    torch_device: str | None = None,
    progress: bool = False,
) -> Pairs:
    """Every pair the IVF search finds (see module doc); ``rows_file`` holds
    ``survivors.rows`` (the search tasks read it in slices); ``work`` keeps each step's
    output, so a rerun resumes where it stopped."""
    gpus = 1 if gpu or torch_device == "cuda" else 0
    lists = ivf_lists(
        survivors,
        plan,
        work,
        seed=seed,
        executor=executor,
        task_rows=task_rows,
        gpu=gpu,
        gpus=gpus,
        progress=progress,
    )
    group_of_list = list_groups(lists.sizes, group_rows)
    search_tasks = [
        ListGroupTask(
            image=survivors.image,
            rows=NpyFile.open(rows_file),
            lists=lists,
            group_of_list=group_of_list,
            group=group,
            threshold=threshold,
            torch_device=torch_device,
            out=work / f"pairs-{group:05d}.npz",
        )
        for group in range(_group_count(group_of_list))
    ]
    run_parts(
        executor, search_list_group, search_tasks, gpus=gpus, desc="IVF search", progress=progress
    )
    return Pairs.from_directed(load_pair_parts([task.out for task in search_tasks]))


def _group_count(group_of_list: np.ndarray) -> int:
    return int(group_of_list.max()) + 1 if len(group_of_list) else 0


def list_groups(list_sizes: np.ndarray, group_rows: int) -> np.ndarray:
    """Group of each list: consecutive lists, a new group whenever adding the next list would
    pass ``group_rows`` rows (a list larger than that is a group of its own)."""
    group_of_list = np.zeros(len(list_sizes), dtype=np.int32)
    group, filled = 0, 0
    for number, size in enumerate(np.asarray(list_sizes).tolist()):
        if filled and filled + size > group_rows:
            group, filled = group + 1, 0
        group_of_list[number] = group
        filled += size
    return group_of_list


@dataclass(frozen=True)
class ListAssignTask:
    survivors: Survivors  # this task's rows
    start: int  # position of its first row
    centroids: Path
    nprobe: int
    gpu: bool
    out: Path


def assign_lists(task: ListAssignTask) -> None:
    """Each row's ``nprobe`` nearest lists (``lists``, int32; the first is the list the row is
    filed in) and how many rows each list got (``list_sizes``)."""
    centroids = load_arrays(task.centroids)["centroids"]
    quantizer = flat_index(centroids, task.gpu)
    lists = np.empty((len(task.survivors), task.nprobe), dtype=np.int32)
    for a, b in blocks(task.start, task.start + len(task.survivors)):
        block = task.survivors.block(a - task.start, b - task.start)
        lists[a - task.start : b - task.start] = exact_top(
            quantizer, block, centroids, task.nprobe
        )[1]
    sizes = np.bincount(lists[:, 0], minlength=len(centroids)).astype(np.int64)
    save_arrays(task.out, lists=lists, list_sizes=sizes)


@dataclass(frozen=True)
class ListGroupTask:
    image: NpyFile
    rows: NpyFile  # pool row of every position
    lists: IvfLists
    group_of_list: np.ndarray
    group: int
    threshold: float
    torch_device: str | None
    out: Path


def search_list_group(task: ListGroupTask) -> None:
    """Directed pairs ``(queries, found, similarity)`` found in one group's lists."""
    configure_threads()
    products = task.lists.group_products(
        task.image, task.rows, task.group_of_list, task.group, task.threshold, task.torch_device
    )
    in_group = task.group_of_list == task.group
    parts = []
    for (start, stop), list_file in zip(task.lists.bounds, task.lists.list_files, strict=True):
        probes = load_arrays(list_file)["lists"]
        probes = np.where(in_group[probes], probes, -1)  # -1: a list of another group, skipped
        asking = np.flatnonzero((probes >= 0).any(axis=1))
        part = Survivors(task.image, task.rows.range(start, stop))
        for first in range(0, len(asking), QUERY_ROWS):
            chosen = asking[first : first + QUERY_ROWS]
            parts.append(products.search(part.take(chosen), probes[chosen], start + chosen))
    _save_directed(task.out, parts)


def _save_directed(out: Path, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    queries, found, similarity = (
        np.concatenate([np.zeros(0, dtype), *(p[i] for p in parts)])
        for i, dtype in enumerate((np.int64, np.int64, np.float32))
    )
    save_arrays(out, queries=queries, found=found, similarity=similarity)


# -- the exact reference on a sample of query rows ---------------------------------------------


def exact_pairs_bounded(
    survivors: Survivors,
    rows_file: Path,
    queries: np.ndarray,
    threshold: float,
    lists: IvfLists,
    work: Path,
    *,
    executor: Any = None,
    group_rows: int = GROUP_ROWS,
    progress: bool = False,
) -> tuple[Pairs, float]:
    """Every pair ``(q, j)``, ``q`` in ``queries`` (positions), ``j ≠ q`` any position, at
    cosine ≥ ``threshold``: the brute force's pairs and cosines, with the lists that cannot
    hold one left out by the triangle inequality for angles on the sphere.

    Let ``u_L`` be the direction of list ``L``'s centroid and ``α_L`` the largest angle
    between it and the direction of a row filed in ``L``. A pair at cosine ``q·x ≥ t`` has
    ``cos∠(q, x) ≥ t / (‖q‖·max‖x‖)``, an angle of at most ``θ_q``; and
    ``∠(q, u_L) ≤ ∠(q, x) + ∠(x, u_L) ≤ θ_q + α_L``. Each query meets, in full, every list
    within that angle (float64, with :data:`ANGLE_SLACK` to spare, and ``t`` lowered by the
    float32 products' :data:`~curate.dedup.knn.RECHECK_MARGIN`), by the same products and
    rechecks as the IVF search (:class:`curate.dedup.knn.ListProducts`); no other list can
    hold a pair. How many lists pass depends on the data: all at worst, the brute force's
    cost. Steps, each resumable under ``work``: the lists' angles (one task per assign
    task), each query's lists (here), the search (one task per group of lists).

    Returns the pairs and the share of the ``len(queries)·N`` products that were made.
    """
    work.mkdir(parents=True, exist_ok=True)
    angle_tasks = [
        ListAngleTask(
            survivors.part(start, stop), lists.centroids, list_file, work / f"angles-{i:05d}.npz"
        )
        for i, ((start, stop), list_file) in enumerate(
            zip(lists.bounds, lists.list_files, strict=True)
        )
    ]
    run_parts(
        executor, list_angles, angle_tasks, desc="exact search: list angles", progress=progress
    )
    angle = np.zeros(len(lists.sizes))
    norm = 0.0
    for task in angle_tasks:
        found = load_arrays(task.out)
        angle = np.maximum(angle, found["angle"])
        norm = max(norm, float(found["norm"]))
    candidates = work / "candidates.npz"
    if not candidates.is_file():
        centroids = load_arrays(lists.centroids)["centroids"]
        owner, listed = candidate_lists(survivors, queries, centroids, angle, norm, threshold)
        save_arrays(candidates, queries=np.asarray(queries, np.int64), owner=owner, lists=listed)
    listed = load_arrays(candidates)["lists"]
    scanned = float(lists.sizes[listed].sum()) / max(1, len(queries) * len(survivors))
    group_of_list = list_groups(lists.sizes, group_rows)
    search_tasks = [
        BoundedGroupTask(
            image=survivors.image,
            rows=NpyFile.open(rows_file),
            lists=lists,
            candidates=candidates,
            group_of_list=group_of_list,
            group=group,
            threshold=threshold,
            out=work / f"exact-{group:05d}.npz",
        )
        for group in range(_group_count(group_of_list))
    ]
    run_parts(
        executor,
        search_bounded_group,
        search_tasks,
        desc="exact search (sample)",
        progress=progress,
    )
    return Pairs.from_directed(load_pair_parts([task.out for task in search_tasks])), scanned


def _directions(centroids: np.ndarray) -> np.ndarray:
    """Unit rows of ``centroids`` in float64 (a zero row stays zero)."""
    centroids = np.asarray(centroids, dtype=np.float64)
    lengths = np.linalg.norm(centroids, axis=1, keepdims=True)
    return np.divide(centroids, lengths, out=np.zeros_like(centroids), where=lengths > 0)


def _angles(vectors: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(angle of each row of ``vectors`` to each direction, in radians; each row's norm), in
    float64; a zero row is at π/2 from every direction."""
    vectors = np.asarray(vectors, dtype=np.float64)
    lengths = np.linalg.norm(vectors, axis=1)
    unit = np.divide(
        vectors, lengths[:, None], out=np.zeros_like(vectors), where=lengths[:, None] > 0
    )
    return np.arccos(np.clip(unit @ directions.T, -1.0, 1.0)), lengths


@dataclass(frozen=True)
class ListAngleTask:
    survivors: Survivors  # one assign task's rows
    centroids: Path
    list_file: Path  # their lists
    out: Path


def list_angles(task: ListAngleTask) -> None:
    """Per list, the largest angle between a row filed in it and its centroid's direction
    (``angle``, radians: 0 for a list with no row, π for a zero centroid), and the largest
    norm of a row (``norm``)."""
    directions = _directions(load_arrays(task.centroids)["centroids"])
    filed_in = load_arrays(task.list_file)["lists"][:, 0]
    angle = np.where(directions.any(axis=1), 0.0, np.pi)
    norm = 0.0
    for a, b in blocks(0, len(task.survivors)):
        block = np.asarray(task.survivors.block(a, b), dtype=np.float64)
        own = filed_in[a:b]
        lengths = np.linalg.norm(block, axis=1)
        cosine = np.einsum("ij,ij->i", block, directions[own])
        cosine = np.divide(cosine, lengths, out=np.ones_like(cosine), where=lengths > 0)
        np.maximum.at(angle, own, np.arccos(np.clip(cosine, -1.0, 1.0)))
        norm = max(norm, float(lengths.max(initial=0.0)))
    save_arrays(task.out, angle=angle, norm=np.float64(norm))


def candidate_lists(
    survivors: Survivors,
    queries: np.ndarray,
    centroids: np.ndarray,
    angle: np.ndarray,
    norm: float,
    threshold: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(query index, list) of every list a pair of that query can be in (see
    :func:`exact_pairs_bounded`), by query index."""
    directions = _directions(centroids)
    floor = threshold - RECHECK_MARGIN  # a float32 product may pass t below it
    owners, listed = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for first in range(0, len(queries), CANDIDATE_QUERIES):
        vectors = survivors.take(np.asarray(queries[first : first + CANDIDATE_QUERIES]))
        to_centroid, lengths = _angles(vectors, directions)
        with np.errstate(divide="ignore"):
            reach = np.arccos(np.clip(floor / (lengths * norm), -1.0, 1.0))
        reach[lengths == 0] = -np.inf  # a zero vector is in no pair
        within = to_centroid <= angle[None, :] + reach[:, None] + ANGLE_SLACK
        owner, listed_here = np.nonzero(within)
        owners.append(first + owner)
        listed.append(listed_here)
    return np.concatenate(owners), np.concatenate(listed)


@dataclass(frozen=True)
class BoundedGroupTask:
    image: NpyFile
    rows: NpyFile  # pool row of every position
    lists: IvfLists
    candidates: Path  # candidate_lists' output, with the query positions
    group_of_list: np.ndarray
    group: int
    threshold: float
    out: Path


def search_bounded_group(task: BoundedGroupTask) -> None:
    """Directed pairs of the query rows with the rows of their candidate lists in one group,
    :data:`PROBE_ENTRIES` (query, list) entries at a time."""
    configure_threads()
    stored = load_arrays(task.candidates)
    mine = task.group_of_list[stored["lists"]] == task.group
    owner, listed = stored["owner"][mine], stored["lists"][mine]  # by owner
    products = task.lists.group_products(
        task.image, task.rows, task.group_of_list, task.group, task.threshold
    )
    parts = []
    for a, b in _whole_query_spans(owner, PROBE_ENTRIES):
        queries, slot, counts = np.unique(owner[a:b], return_inverse=True, return_counts=True)
        probes = np.full((len(queries), int(counts.max())), -1, dtype=np.int64)
        rank = np.arange(b - a) - np.repeat(np.cumsum(counts) - counts, counts)
        probes[slot, rank] = listed[a:b]
        positions = stored["queries"][queries]
        vectors = Survivors(task.image, task.rows.take(positions)).block(0, len(positions))
        parts.append(products.search(vectors, probes, positions))
    _save_directed(task.out, parts)


def _whole_query_spans(owner: np.ndarray, entries: int) -> list[tuple[int, int]]:
    """``[a, b)`` spans of ``owner`` (sorted) that cut no query's entries, each holding at
    most ``entries`` of them (or one query's, when it has more)."""
    edges = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1], True]) if len(owner) else []
    spans, first = [], 0
    while first < len(edges) - 1:
        last = int(np.searchsorted(edges, edges[first] + entries, "right")) - 1
        last = max(first + 1, last)
        spans.append((int(edges[first]), int(edges[last])))
        first = last
    return spans
