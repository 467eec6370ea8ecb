"""The exact reference for near_dedup's recall: every pair of a sample of query rows at cosine
≥ the threshold, as brute force finds them, searched through the IVF search's own lists with
the lists, and the rows within a list, that cannot hold a pair left out
(:func:`exact_pairs_bounded`).

Brute force for 100,000 query rows over 12.8M × 768 is ~2·10¹⁵ flops (hours on a few cores);
the bounds cut it to the share they cannot rule out, which the data decide (all of it at
worst; 2 % on the 12.8M planted pool, 50 % on the 1M one). The pairs and cosines are the
brute force's (``tests/test_dedup_out_of_core.py`` against
:func:`curate.dedup.knn.exact_pairs`).
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
    consecutive_groups,
    group_count,
    load_arrays,
    load_pair_parts,
    run_parts,
    save_arrays,
)
from curate.dedup.ivf import GROUP_ROWS, IvfLists, save_directed
from curate.dedup.knn import (
    RECHECK_MARGIN,
    ListProducts,
    Pairs,
    configure_threads,
    dot_pairs,
    transposed,
)

ANGLE_SLACK = 1e-3  # radians to spare: float64 rounding of the angles is far below (~1e-7)
CANDIDATE_QUERIES = 512  # query rows whose candidate lists are found at a time
ANGLE_ROWS = 8192  # rows whose angles a task computes at a time (float64: 8·d bytes a row)
PROBE_ENTRIES = 1 << 22  # query–list cells an exact-search task unpacks at a time
SPAN_QUERIES = 8192  # and at most these queries (their angles: about 22·d bytes each)
RING_QUERIES = 256  # queries of one list that share a product
EXACT_GROUP_ROWS = GROUP_ROWS // 2  # a task also holds every row's angle and a span's queries


def exact_pairs_bounded(
    survivors: Survivors,
    rows_file: Path,
    queries: np.ndarray,
    threshold: float,
    lists: IvfLists,
    work: Path,
    *,
    executor: Any = None,
    group_rows: int = EXACT_GROUP_ROWS,
    progress: bool = False,
) -> tuple[Pairs, float]:
    """Every pair ``(q, j)``, ``q`` in ``queries`` (positions), ``j ≠ q`` any position, at
    cosine ≥ ``threshold``: the brute force's pairs and cosines, with the lists and rows that
    cannot hold one left out by the triangle inequality for angles on the sphere.

    Let ``u_L`` be the direction of list ``L``'s centroid and ``α_L`` the largest angle
    between it and the direction of a row filed in ``L``. A pair at cosine ``q·x ≥ t`` has
    ``cos∠(q, x) ≥ t / (‖q‖·max‖x‖)``, an angle of at most ``θ_q``; and
    ``∠(q, u_L) ≤ ∠(q, x) + ∠(x, u_L) ≤ θ_q + α_L``. Each query meets every list within that
    angle (float64, with :data:`ANGLE_SLACK` to spare, and ``t`` lowered by the float32
    products' :data:`~curate.dedup.knn.RECHECK_MARGIN`), and in it the rows ``x`` with
    ``|∠(x, u_L) − ∠(q, u_L)| ≤ θ_q`` (:func:`search_bounded_group`), by the products and
    rechecks of the IVF search (:class:`curate.dedup.knn.ListProducts`); no other row can be
    in a pair. How much passes depends on the data: all at worst, the brute force's cost.
    Steps, each resumable under ``work``: the lists' angles (one task per assign
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
        within = candidate_lists(survivors, queries, centroids, angle, norm, threshold)
        save_arrays(candidates, queries=np.asarray(queries, np.int64), within=within)
    group_of_list = consecutive_groups(lists.sizes, group_rows)
    search_tasks = [
        BoundedGroupTask(
            image=survivors.image,
            rows=NpyFile.open(rows_file),
            lists=lists,
            angle_files=tuple(task.out for task in angle_tasks),
            norm=norm,
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
    made = 0
    for task in search_tasks:
        with np.load(task.out) as stored:  # this member only, not the pairs again
            made += int(stored["products"])
    pairs = Pairs.from_directed(load_pair_parts([task.out for task in search_tasks]))
    return pairs, made / max(1, len(queries) * len(survivors))


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
    """Each row's angle to its list's centroid direction (``row_angle``, radians, float32);
    per list, the largest (``angle``: 0 for a list with no row, π for a zero centroid); and
    the largest norm of a row (``norm``)."""
    directions = _directions(load_arrays(task.centroids)["centroids"])
    filed_in = load_arrays(task.list_file)["lists"][:, 0]
    angle = np.where(directions.any(axis=1), 0.0, np.pi)
    row_angle = np.empty(len(task.survivors), dtype=np.float32)
    norm = 0.0
    for a, b in blocks(0, len(task.survivors), ANGLE_ROWS):
        block = np.asarray(task.survivors.block(a, b), dtype=np.float64)
        own = filed_in[a:b]
        lengths = np.linalg.norm(block, axis=1)
        cosine = np.einsum("ij,ij->i", block, directions[own])
        cosine = np.divide(cosine, lengths, out=np.ones_like(cosine), where=lengths > 0)
        row_angle[a:b] = np.arccos(np.clip(cosine, -1.0, 1.0))
        np.maximum.at(angle, own, row_angle[a:b].astype(np.float64))
        norm = max(norm, float(lengths.max(initial=0.0)))
    save_arrays(task.out, angle=angle, row_angle=row_angle, norm=np.float64(norm))


def candidate_lists(
    survivors: Survivors,
    queries: np.ndarray,
    centroids: np.ndarray,
    angle: np.ndarray,
    norm: float,
    threshold: float,
) -> np.ndarray:
    """The lists a pair of each query can be in (see :func:`exact_pairs_bounded`), as bits:
    a row per query, a bit per list (``np.packbits``; ``len(queries)·L/8`` bytes however many
    pass)."""
    directions = _directions(centroids)
    rows = [np.zeros((0, (len(centroids) + 7) // 8), np.uint8)]
    for first in range(0, len(queries), CANDIDATE_QUERIES):
        vectors = survivors.take(np.asarray(queries[first : first + CANDIDATE_QUERIES]))
        to_centroid, lengths = _angles(vectors, directions)
        reach = _reach(lengths, norm, threshold)
        rows.append(np.packbits(to_centroid <= angle[None, :] + reach[:, None], axis=1))
    return np.concatenate(rows)


def _reach(lengths: np.ndarray, norm: float, threshold: float) -> np.ndarray:
    """Per query, the largest angle to a row it can be in a pair with, plus
    :data:`ANGLE_SLACK` (``-inf`` for a zero vector, which is in no pair)."""
    floor = threshold - RECHECK_MARGIN  # a float32 product may pass t below it
    with np.errstate(divide="ignore"):
        reach = np.arccos(np.clip(floor / (lengths * norm), -1.0, 1.0)) + ANGLE_SLACK
    reach[lengths == 0] = -np.inf
    return reach


@dataclass(frozen=True)
class BoundedGroupTask:
    image: NpyFile
    rows: NpyFile  # pool row of every position
    lists: IvfLists
    angle_files: tuple[Path, ...]  # list_angles' outputs, in position order
    norm: float  # the largest norm of a row
    candidates: Path  # candidate_lists' bits, with the query positions
    group_of_list: np.ndarray
    group: int
    threshold: float
    out: Path


def search_bounded_group(task: BoundedGroupTask) -> None:
    """Directed pairs of the query rows with the rows of their candidate lists in one group
    (consecutive lists ``lo:hi``), :data:`PROBE_ENTRIES` query–list cells at a time.

    Within a list only the rows at an angle to its centroid's direction that is within the
    query's reach of the query's own (the same triangle inequality, from the other side)
    can be in a pair; the rows are sorted by that angle, so those are one slice, and
    queries with similar slices share one product (:func:`_ring_products`). The output
    also holds ``products``: the query–row products made."""
    configure_threads()
    stored = load_arrays(task.candidates)
    queries, within = stored["queries"], stored["within"]
    lo, hi = (int(i) for i in np.flatnonzero(task.group_of_list == task.group)[[0, -1]] + [0, 1])
    negated = np.concatenate([-load_arrays(path)["row_angle"] for path in task.angle_files])
    ring = task.lists.group_products(
        task.image,
        task.rows,
        task.group_of_list,
        task.group,
        task.threshold,
        order_key=negated,  # largest angle first
    )
    member_angle = -negated[ring.ids]
    del negated
    directions = _directions(load_arrays(task.lists.centroids)["centroids"][lo:hi])
    span = max(1, min(PROBE_ENTRIES // (hi - lo), SPAN_QUERIES))
    first_byte, skip = divmod(lo, 8)
    parts, made = [], 0
    for start in range(0, len(queries), span):
        packed = within[start : start + span, first_byte : (hi + 7) // 8]
        reached = np.unpackbits(packed, axis=1)[:, skip : skip + hi - lo].astype(bool)
        asking = np.flatnonzero(reached.any(axis=1))
        if len(asking) == 0:
            continue
        positions = queries[start + asking]
        vectors = Survivors(task.image, task.rows.take(positions)).block(0, len(positions))
        to_centroid, lengths = _angles(vectors, directions)
        reach = _reach(lengths, task.norm, task.threshold)
        for column in range(hi - lo):
            first, last = int(ring.offsets[lo + column]), int(ring.offsets[lo + column + 1])
            meeting = np.flatnonzero(reached[asking, column])
            if first == last or len(meeting) == 0:
                continue
            # rows by angle, largest first: those within [to_centroid ± reach] are one slice
            descending = -member_angle[first:last]
            near = to_centroid[meeting, column]
            begin = np.searchsorted(descending, -(near + reach[meeting]), "left")
            end = np.searchsorted(descending, -(near - reach[meeting]), "right")
            found, count = _ring_products(ring, vectors, meeting, first + begin, first + end)
            parts.append((positions[found[0]], ring.ids[found[1]], found[2]))
            made += count
    save_directed(task.out, parts, products=made)


def _ring_products(
    ring: ListProducts,
    vectors: np.ndarray,
    meeting: np.ndarray,
    begin: np.ndarray,
    end: np.ndarray,
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], int]:
    """(query, member, cosine) of the pairs of ``vectors[meeting]`` with the member rows
    ``begin:end`` of each, and the number of products made: queries sorted by their slice's
    end, :data:`RING_QUERIES` at a time, each group meeting the union of its slices (a row
    outside a query's slice is checked too, and cannot pass)."""
    order = np.lexsort((begin, end))
    found_queries, found_members, made = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], 0
    floor = np.float32(ring.threshold - RECHECK_MARGIN)
    for chunk in range(0, len(order), RING_QUERIES):
        chosen = order[chunk : chunk + RING_QUERIES]
        a, b = int(begin[chosen].min()), int(end[chosen].max())
        if b <= a:
            continue
        products = vectors[meeting[chosen]] @ transposed(ring.members[a:b])
        q, m = np.nonzero(products >= floor)
        found_queries.append(meeting[chosen][q])
        found_members.append(a + m)
        made += len(chosen) * (b - a)
    q, m = np.concatenate(found_queries), np.concatenate(found_members)
    similarity = dot_pairs(vectors, q, ring.members, m)
    close = similarity >= np.float32(ring.threshold)
    return (q[close], m[close], similarity[close]), made
