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

:func:`exact_pairs_blocked` is the brute-force reference for a sample of query rows
(:func:`curate.dedup.knn.exact_pairs`), one task per block of the other rows.
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
    EXACT_BLOCK_CELLS,
    IndexPlan,
    ListProducts,
    Pairs,
    block_pairs,
    configure_threads,
    exact_top,
    flat_index,
    ivf_centroids,
    trained_ivf,
)

GROUP_ROWS = 1 << 18  # rows in one search task's lists: 2·d bytes each (403 MB at 768-d)
QUERY_ROWS = 4 * BLOCK_ROWS  # query rows per pass over a group's lists


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
    if plan.exact:
        raise ValueError("ivf_pairs needs an IVF plan")
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
    gpus = 1 if gpu or torch_device == "cuda" else 0
    run_parts(executor, assign_lists, assign_tasks, gpus=gpus, desc="IVF lists", progress=progress)
    sizes = sum(
        (load_arrays(task.out)["list_sizes"] for task in assign_tasks),
        np.zeros(plan.nlist, dtype=np.int64),
    )
    group_of_list = list_groups(sizes, group_rows)
    search_tasks = [
        ListGroupTask(
            image=survivors.image,
            rows=NpyFile.open(rows_file),
            bounds=tuple(bounds),
            list_files=tuple(task.out for task in assign_tasks),
            centroids=centroids,
            plan=plan,
            group_of_list=group_of_list,
            group=group,
            threshold=threshold,
            torch_device=torch_device,
            out=work / f"pairs-{group:05d}.npz",
        )
        for group in range(int(group_of_list.max()) + 1 if len(group_of_list) else 0)
    ]
    run_parts(
        executor, search_list_group, search_tasks, gpus=gpus, desc="IVF search", progress=progress
    )
    return Pairs.from_directed(load_pair_parts([task.out for task in search_tasks]))


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
    bounds: tuple[tuple[int, int], ...]  # the assign tasks' position ranges
    list_files: tuple[Path, ...]  # their outputs
    centroids: Path
    plan: IndexPlan
    group_of_list: np.ndarray
    group: int
    threshold: float
    torch_device: str | None
    out: Path


def search_list_group(task: ListGroupTask) -> None:
    """Directed pairs ``(queries, found, similarity)`` found in one group's lists."""
    configure_threads()
    in_group = task.group_of_list == task.group
    member_lists, member_ids = [], []
    for (start, _), list_file in zip(task.bounds, task.list_files, strict=True):
        filed_in = load_arrays(list_file)["lists"][:, 0]
        members = np.flatnonzero(in_group[filed_in])
        member_lists.append(filed_in[members])
        member_ids.append(start + members)

    def read(positions: np.ndarray) -> np.ndarray:
        return task.image.take(task.rows.take(positions))

    lists = ListProducts(
        np.concatenate(member_lists),
        np.concatenate(member_ids),
        read,
        task.image.shape[1],
        task.plan.nlist,
        task.threshold,
        task.torch_device,
    )
    parts = []
    for (start, stop), list_file in zip(task.bounds, task.list_files, strict=True):
        probes = load_arrays(list_file)["lists"]
        probes = np.where(in_group[probes], probes, -1)  # -1: a list of another group, skipped
        asking = np.flatnonzero((probes >= 0).any(axis=1))
        part = Survivors(task.image, task.rows.range(start, stop))
        for first in range(0, len(asking), QUERY_ROWS):
            chosen = asking[first : first + QUERY_ROWS]
            parts.append(lists.search(part.take(chosen), probes[chosen], start + chosen))
    queries, found, similarity = (
        np.concatenate([np.zeros(0, dtype), *(p[i] for p in parts)])
        for i, dtype in enumerate((np.int64, np.int64, np.float32))
    )
    save_arrays(task.out, queries=queries, found=found, similarity=similarity)


# -- the brute-force reference on a sample of query rows -------------------------------------


def exact_pairs_blocked(
    survivors: Survivors,
    rows_file: Path,
    queries: np.ndarray,
    threshold: float,
    work: Path,
    *,
    executor: Any = None,
    task_rows: int = TASK_ROWS,
    progress: bool = False,
) -> Pairs:
    """Every pair ``(q, j)``, ``q`` in ``queries`` (positions), ``j ≠ q`` any position, at
    cosine ≥ ``threshold``: chunked numpy products (no FAISS), one task per block of ``j``."""
    work.mkdir(parents=True, exist_ok=True)
    tasks = [
        ExactTask(
            survivors.image,
            NpyFile.open(rows_file),
            np.asarray(queries, dtype=np.int64),
            start,
            stop,
            threshold,
            work / f"exact-{i:05d}.npz",
        )
        for i, (start, stop) in enumerate(task_bounds(len(survivors), task_rows))
    ]
    run_parts(executor, exact_part, tasks, desc="exact search (sample)", progress=progress)
    return Pairs.from_directed(load_pair_parts([task.out for task in tasks]))


@dataclass(frozen=True)
class ExactTask:
    image: NpyFile
    rows: NpyFile
    queries: np.ndarray  # positions
    start: int
    stop: int
    threshold: float
    out: Path


def exact_part(task: ExactTask) -> None:
    query_vectors = Survivors(task.image, task.rows.take(task.queries)).block(0, len(task.queries))
    part = Survivors(task.image, task.rows.range(task.start, task.stop))
    rows_per_block = max(1024, EXACT_BLOCK_CELLS // max(1, len(task.queries)))
    found_queries, found_rows, found_similarity = [], [], []
    for first in range(0, len(part), rows_per_block):
        block = part.block(first, first + rows_per_block)
        q, j, similarity = block_pairs(query_vectors, block, task.threshold)
        found_queries.append(task.queries[q])
        found_rows.append(task.start + first + j)
        found_similarity.append(similarity)
    save_arrays(
        task.out,
        queries=np.concatenate([np.zeros(0, np.int64), *found_queries]),
        found=np.concatenate([np.zeros(0, np.int64), *found_rows]),
        similarity=np.concatenate([np.zeros(0, np.float32), *found_similarity]),
    )
