"""near_dedup's IVF search out of core, as executor tasks (map, then search per list group).

The same search as :func:`curate.dedup.knn.self_pairs` with an IVF plan, in four steps:

1. **train** (here): the coarse centroids, by k-means on the same seeded sample of
   ``40·nlist`` rows (read from the float16 file, the only rows this process holds);
2. **assign** (one task per ``task_rows`` rows): each row's ``nprobe`` nearest lists, from
   blocks of the file; a task writes them (``nprobe`` int32 a row) and its list sizes;
3. **search** (one task per group of lists): the lists are cut into groups of consecutive
   list numbers holding at most ``group_rows`` rows
   (:func:`curate.dedup.blocks.consecutive_groups`); a task holds the rows filed in its
   group's lists (float16, ``2·d`` bytes a row, sorted by list:
   :class:`curate.dedup.knn.ListProducts`), then meets every row that probes a list of the
   group with those lists only, one matrix product per list. A row is searched, in parts,
   by every group its ``nprobe`` lists touch, so the union over groups is the one-index
   search (:func:`curate.dedup.knn.self_pairs`): the same pairs, with the same cosines;
4. **reduce** (here): the pairs of all groups, made undirected and unique.

The driver holds the centroids, the training sample while it trains, and the pairs; a task
holds one block of rows, or one group's lists. With ``torch_device`` set (``--device
cuda``), the products run on that device (faiss-gpu has no range search); every cosine is
still rechecked on the CPU, so the pairs are the CPU's.

:mod:`curate.dedup.ivf_exact` is the exact reference for a sample of query rows, searched
through the same lists.
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
    consecutive_groups,
    group_count,
    load_arrays,
    load_pair_parts,
    run_parts,
    save_arrays,
    task_bounds,
)
from curate.dedup.knn import (
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
        order_key: np.ndarray | None = None,
    ) -> ListProducts:
        """The rows filed in the lists of one group, sorted by list (within a list by
        ``order_key[position]``, else by position), ready to be searched (``rows``: the pool
        row of every position, read as needed)."""
        in_group = group_of_list == group
        member_lists, member_ids = [], []
        for (start, _), list_file in zip(self.bounds, self.list_files, strict=True):
            filed_in = load_arrays(list_file)["lists"][:, 0]
            members = np.flatnonzero(in_group[filed_in])
            member_lists.append(filed_in[members])
            member_ids.append(start + members)
        filed, ids = np.concatenate(member_lists), np.concatenate(member_ids)
        if order_key is not None:  # ListProducts' stable sort by list keeps this order
            order = np.lexsort((order_key[ids], filed))
            filed, ids = filed[order], ids[order]
        return ListProducts(
            filed,
            ids,
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
    lists: IvfLists,
    work: Path,
    *,
    executor: Any = None,
    group_rows: int = GROUP_ROWS,
    torch_device: str | None = None,
    progress: bool = False,
) -> Pairs:
    """Every pair the IVF search of ``lists`` (:func:`ivf_lists`) finds (see module doc);
    ``rows_file`` holds ``survivors.rows`` (the search tasks read it in slices); ``work``
    keeps each task's output, so a rerun resumes where it stopped."""
    gpus = 1 if torch_device == "cuda" else 0
    group_of_list = consecutive_groups(lists.sizes, group_rows)
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
        for group in range(group_count(group_of_list))
    ]
    run_parts(
        executor, search_list_group, search_tasks, gpus=gpus, desc="IVF search", progress=progress
    )
    return Pairs.from_directed(load_pair_parts([task.out for task in search_tasks]))


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
    save_directed(task.out, parts)


def save_directed(
    out: Path, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], **extra: Any
) -> None:
    """A search task's directed pairs (``queries``, ``found``, ``similarity``), and
    ``extra`` arrays."""
    queries, found, similarity = (
        np.concatenate([np.zeros(0, dtype), *(p[i] for p in parts)])
        for i, dtype in enumerate((np.int64, np.int64, np.float32))
    )
    save_arrays(out, queries=queries, found=found, similarity=similarity, **extra)
