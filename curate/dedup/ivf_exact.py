"""The exact reference for near_dedup's recall: every pair of a sample of query rows at cosine
≥ the threshold, as brute force finds them, searched through the IVF search's own lists with
the lists that cannot hold a pair left out (:func:`exact_pairs_bounded`).

Brute force for 100,000 query rows over 12.8M × 768 is ~2·10¹⁵ flops (hours on a few cores);
the lists cut it to the share the bound cannot rule out, which the data decide (all of them
at worst). The pairs and cosines are the brute force's (``tests/test_dedup_out_of_core.py``
against :func:`curate.dedup.knn.exact_pairs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate.dedup.blocks import (
    NpyFile,
    Survivors,
    blocks,
    load_arrays,
    load_pair_parts,
    run_parts,
    save_arrays,
)
from curate.dedup.ivf import GROUP_ROWS, IvfLists, group_count, list_groups, save_directed
from curate.dedup.knn import RECHECK_MARGIN, Pairs, configure_threads

ANGLE_SLACK = 1e-3  # radians to spare: float64 rounding of the angles is far below (~1e-7)
CANDIDATE_QUERIES = 512  # query rows whose candidate lists are found at a time
ANGLE_ROWS = 8192  # rows whose angles a task computes at a time (float64: 8·d bytes a row)
PROBE_ENTRIES = 1 << 22  # query–list cells an exact-search task unpacks at a time


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
    candidates = work / "candidate-lists.npz"
    if not candidates.is_file():
        centroids = load_arrays(lists.centroids)["centroids"]
        within, products = candidate_lists(
            survivors, queries, centroids, angle, norm, threshold, lists.sizes
        )
        save_arrays(
            candidates,
            queries=np.asarray(queries, np.int64),
            within=within,
            products=np.int64(products),
        )
    products = int(load_arrays(candidates)["products"])
    scanned = products / max(1, len(queries) * len(survivors))
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
        for group in range(group_count(group_of_list))
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
    for a, b in blocks(0, len(task.survivors), ANGLE_ROWS):
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
    sizes: np.ndarray,
) -> tuple[np.ndarray, int]:
    """The lists a pair of each query can be in (see :func:`exact_pairs_bounded`), as bits
    (a row per query, a bit per list: ``np.packbits``, ``len(queries)·L/8`` bytes however
    many pass), and the number of products they ask (``sizes``: rows in each list)."""
    directions = _directions(centroids)
    floor = threshold - RECHECK_MARGIN  # a float32 product may pass t below it
    rows, products = [np.zeros((0, (len(centroids) + 7) // 8), np.uint8)], 0
    for first in range(0, len(queries), CANDIDATE_QUERIES):
        vectors = survivors.take(np.asarray(queries[first : first + CANDIDATE_QUERIES]))
        to_centroid, lengths = _angles(vectors, directions)
        with np.errstate(divide="ignore"):
            reach = np.arccos(np.clip(floor / (lengths * norm), -1.0, 1.0))
        reach[lengths == 0] = -np.inf  # a zero vector is in no pair
        within = to_centroid <= angle[None, :] + reach[:, None] + ANGLE_SLACK
        products += int((within.astype(np.int64) @ np.asarray(sizes, np.int64)).sum())
        rows.append(np.packbits(within, axis=1))
    return np.concatenate(rows), products


@dataclass(frozen=True)
class BoundedGroupTask:
    image: NpyFile
    rows: NpyFile  # pool row of every position
    lists: IvfLists
    candidates: Path  # candidate_lists' bits, with the query positions
    group_of_list: np.ndarray
    group: int
    threshold: float
    out: Path


def search_bounded_group(task: BoundedGroupTask) -> None:
    """Directed pairs of the query rows with the rows of their candidate lists in one group
    (consecutive lists ``lo:hi``), :data:`PROBE_ENTRIES` query–list cells at a time."""
    configure_threads()
    stored = load_arrays(task.candidates)
    queries, within = stored["queries"], stored["within"]
    lo, hi = np.flatnonzero(task.group_of_list == task.group)[[0, -1]] + [0, 1]
    products = task.lists.group_products(
        task.image, task.rows, task.group_of_list, task.group, task.threshold
    )
    span = max(1, PROBE_ENTRIES // int(hi - lo))
    first_byte, skip = divmod(int(lo), 8)
    parts = []
    for start in range(0, len(queries), span):
        packed = within[start : start + span, first_byte : (int(hi) + 7) // 8]
        reached = np.unpackbits(packed, axis=1)[:, skip : skip + int(hi - lo)].astype(bool)
        asking = np.flatnonzero(reached.any(axis=1))
        if len(asking) == 0:
            continue
        probes = np.where(reached[asking], np.arange(lo, hi), -1)
        positions = queries[start + asking]
        vectors = Survivors(task.image, task.rows.take(positions)).block(0, len(positions))
        parts.append(products.search(vectors, probes, positions))
    save_directed(task.out, parts)
