"""FAISS indexes over L2-normalised embeddings, and the pairs above a cosine threshold.

Index choice (``plan_index``): up to :data:`FLAT_MAX_ROWS` rows an exact ``IndexFlatIP``
(all pairs in seconds); above it an inverted file: each row is filed in the list of its
nearest centroid and searched against the rows of its ``nprobe`` nearest lists
(:class:`ListProducts`: the rows as float16, exact for the float16 embeddings curate stores,
one matrix product per list). The IVF rules:

- ``nlist = 2·√N`` lists, trained by k-means on a seeded sample of ``40·nlist`` rows (FAISS asks
  for at least 39 per list). More lists make each query scan less but make training
  (∝ nlist²) and the coarse assignment (∝ N·nlist) dearer; 2·√N balances them.
- ``nprobe = 16``: a query scans the 16 lists whose centroids are nearest to it. On clustered
  data with planted near-duplicates (100k rows, 512-d, cosine ≥ 0.95) recall against brute
  force was 0.86-1.0 at nprobe 1, 0.98-1.0 at 4 and 1.0 at 8: 16 leaves a 2× margin. A pair that
  close puts its two rows in each other's nearest lists, and the search runs from both rows.
  ``bench/bench_faiss_stages.py`` at 1M rows × 768-d (2 shared cores, ``curate build-pool``):
  recall 1.0 over 305 exact pairs of 2,000 query rows, 61× less CPU than exact all-pairs
  search (extrapolated from those 2,000 queries).

``exact_pairs`` is the brute-force reference (a chunked matrix product, not FAISS) that
``pair_recall`` measures the approximate search against.

Matrix products (FAISS's flat search, numpy's ``@``) round differently with the number of
threads they run on, in the last bit. So that a stage writes the same bytes in one process
with all cores as in tasks of one thread each, the matrix products here only propose
candidates: nearest neighbours are ``k + 2`` candidates and range searches take a margin of
:data:`RECHECK_MARGIN` below the threshold, and every cosine kept or reported is recomputed by
:func:`dot_rows` (numpy's einsum: one row at a time, the same value whatever the block or the
thread count). The IVF lists' float16 scan computes each cosine on its own, thread-free.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

FLAT_MAX_ROWS = 20_000
IVF_LISTS_PER_SQRT_N = 2
IVF_TRAIN_ROWS_PER_LIST = 40
IVF_NPROBE = 16
QUERY_BATCH = 8192
EXACT_BLOCK_CELLS = 1 << 26  # similarity entries per brute-force block (256 MB of float32)
RECHECK_MARGIN = 1e-4  # float32 rounding of a unit-vector product stays far below (d·2⁻²⁴)
CANDIDATE_EXTRA = 2  # nearest-neighbour candidates beyond k, rechecked exactly
RECHECK_ROWS = 32_768  # candidate pairs rechecked at a time

IndexKind = Literal["auto", "flat", "ivf"]


def configure_threads(threads: int | None = None) -> int:
    """Let FAISS use ``threads``, else ``OMP_NUM_THREADS`` (what an executor's worker gets:
    its share of the cores), else every core this process may run on; returns the count."""
    import faiss

    count = threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or len(os.sched_getaffinity(0))
    faiss.omp_set_num_threads(count)
    return count


@dataclass(frozen=True)
class IndexPlan:
    kind: Literal["flat", "ivf"]
    nlist: int = 0
    nprobe: int = 0

    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    def describe(self) -> dict[str, Any]:
        if self.exact:
            return {"index": "flat", "exact": True}
        return {"index": "ivf-fp16", "exact": False, "nlist": self.nlist, "nprobe": self.nprobe}


def ivf_nlist(n_rows: int) -> int:
    return max(1, min(n_rows, round(IVF_LISTS_PER_SQRT_N * math.sqrt(n_rows))))


def plan_index(n_rows: int, kind: IndexKind = "auto", nprobe: int | None = None) -> IndexPlan:
    """Exact below :data:`FLAT_MAX_ROWS` rows (or when asked), IVF above (see module doc)."""
    if kind == "flat" or (kind == "auto" and n_rows <= FLAT_MAX_ROWS):
        return IndexPlan("flat")
    nlist = ivf_nlist(n_rows)
    return IndexPlan("ivf", nlist, min(nlist, nprobe or IVF_NPROBE))


def float32_batches(vectors: np.ndarray, batch: int) -> Iterator[tuple[int, np.ndarray]]:
    """(start, contiguous float32 block) over ``vectors``: FAISS on CPU takes float32 only."""
    for start in range(0, len(vectors), batch):
        yield start, np.ascontiguousarray(vectors[start : start + batch], dtype=np.float32)


def ivf_training_rows(n_rows: int, plan: IndexPlan, seed: int = 0) -> np.ndarray:
    """Sorted positions of the seeded sample of ``IVF_TRAIN_ROWS_PER_LIST · nlist`` rows."""
    n_train = min(n_rows, IVF_TRAIN_ROWS_PER_LIST * plan.nlist)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=n_train, replace=False))


def trained_ivf(vectors: Any, plan: IndexPlan, seed: int = 0, gpu: bool = False) -> Any:
    """An empty IVF index (inner product) whose coarse quantizer (``.quantizer``, alive as long
    as the index) is trained by k-means on a seeded sample of ``IVF_TRAIN_ROWS_PER_LIST ·
    nlist`` rows (``vectors``: an array, or anything that answers ``vectors[positions]`` with
    float32 rows). ``gpu``: the k-means runs on GPU 0."""
    import faiss

    configure_threads()
    dim = vectors.shape[1]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, plan.nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.min_points_per_centroid = 1  # small N: fewer rows than 39 per list is fine
    index.cp.max_points_per_centroid = 1 << 30  # we sample ourselves, with our seed
    if gpu:
        from curate.dedup.device import to_gpu

        index.clustering_index = to_gpu(faiss.IndexFlatIP(dim))
    sample = ivf_training_rows(len(vectors), plan, seed)
    index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
    return index


def ivf_centroids(index: Any) -> np.ndarray:
    """The coarse centroids of a trained IVF index (nlist × dim, float32)."""
    return index.quantizer.reconstruct_n(0, index.nlist)


@dataclass(frozen=True)
class Pairs:
    """Undirected pairs of row positions (``left < right``, sorted, unique) and their cosine."""

    left: np.ndarray
    right: np.ndarray
    similarity: np.ndarray

    def __len__(self) -> int:
        return len(self.left)

    @staticmethod
    def from_directed(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Pairs:
        """Pairs from blocks of directed (i, j, cosine) results: (i, j) and (j, i) become one
        (min, max) pair; self-pairs are dropped."""
        first = np.concatenate([np.zeros(0, np.int64), *(p[0] for p in parts)]).astype(np.int64)
        second = np.concatenate([np.zeros(0, np.int64), *(p[1] for p in parts)]).astype(np.int64)
        similarity = np.concatenate([np.zeros(0, np.float32), *(p[2] for p in parts)])
        distinct = first != second
        first, second, similarity = first[distinct], second[distinct], similarity[distinct]
        left, right = np.minimum(first, second), np.maximum(first, second)
        order = np.lexsort((right, left))
        left, right, similarity = left[order], right[order], similarity[order]
        unique = np.ones(len(left), dtype=bool)
        unique[1:] = (left[1:] != left[:-1]) | (right[1:] != right[:-1])
        return Pairs(left[unique], right[unique], similarity[unique].astype(np.float32))


def range_radius(threshold: float) -> float:
    """FAISS keeps inner products strictly above the radius; we want ``≥ threshold``."""
    return float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))


def transposed(rows: np.ndarray) -> np.ndarray:
    """``rows.T`` as a C-contiguous float32 array: numpy's ``a @ b.T`` with ``b`` a transposed
    view took 100-1000× longer on small blocks here (OpenBLAS's threads on a busy machine)."""
    return np.ascontiguousarray(rows.T, dtype=np.float32)


def dot_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Inner product of each row of ``a`` with the same row of ``b`` (float32), computed the
    same way for the same two rows whatever else is in the block and however many threads
    run: the value every stage reports (see module doc)."""
    return np.einsum("ij,ij->i", a, b)


def centroid_distance(block: np.ndarray, unit_centroids: np.ndarray) -> np.ndarray:
    """``1 − cosine`` of each row with its (normalised) centroid, row-aligned, summed in
    float64: rows whose distances differ below float32's resolution still rank in their exact
    order (SemDeDup ranks cluster members by this distance)."""
    return 1.0 - np.einsum("ij,ij->i", block, unit_centroids, dtype=np.float64)


def dot_pairs(
    left: np.ndarray, left_rows: np.ndarray, right: np.ndarray, right_rows: np.ndarray
) -> np.ndarray:
    """``dot_rows(left[left_rows], right[right_rows])``, a bounded number of pairs at a time."""
    out = np.empty(len(left_rows), dtype=np.float32)
    for start in range(0, len(left_rows), RECHECK_ROWS):
        stop = start + RECHECK_ROWS
        out[start:stop] = dot_rows(
            np.asarray(left[left_rows[start:stop]], dtype=np.float32),
            np.asarray(right[right_rows[start:stop]], dtype=np.float32),
        )
    return out


def exact_top(
    index: Any, queries: np.ndarray, base: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(similarity, ids), each ``len(queries)`` × ``k``: the rows of ``base`` (indexed by
    ``index``) with the largest inner product, largest first, ties to the lower row; FAISS
    proposes ``k + 2`` candidates and :func:`dot_rows` decides."""
    want = min(len(base), k + CANDIDATE_EXTRA)
    candidates = index.search(queries, want)[1].astype(np.int64)
    exact = np.empty(candidates.shape, dtype=np.float32)
    for column in range(want):
        exact[:, column] = dot_rows(queries, base[candidates[:, column]])
    chosen = np.lexsort((candidates, -exact))[:, :k]
    return np.take_along_axis(exact, chosen, 1), np.take_along_axis(candidates, chosen, 1)


def flat_storage(index: Any) -> np.ndarray:
    """The float32 rows a flat FAISS index holds (a view, not a copy)."""
    import faiss

    if index.ntotal == 0:
        return np.zeros((0, index.d), dtype=np.float32)
    return faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(-1, index.d)


def flat_range(
    index: Any, block: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query row in ``block``, row of ``index``, cosine) for every cosine ≥ ``threshold``: a
    range search with :data:`RECHECK_MARGIN` to spare, every candidate rechecked exactly."""
    lims, _, found = index.range_search(block, range_radius(threshold - RECHECK_MARGIN))
    queries = np.repeat(np.arange(len(block)), np.diff(lims.astype(np.int64)))
    similarity = dot_pairs(block, queries, flat_storage(index), found)
    close = similarity >= np.float32(threshold)
    return queries[close], found[close], similarity[close]


def self_pairs(
    vectors: np.ndarray,
    threshold: float,
    plan: IndexPlan | None = None,
    seed: int = 0,
    progress: bool = False,
) -> Pairs:
    """Every pair of rows with cosine ≥ ``threshold`` (all of them for a flat plan).

    IVF: each row's ``nprobe`` nearest lists are found once and serve both to file the row
    (its nearest list) and to search from it, which halves the coarse-quantizer work; the
    lists are searched by :class:`ListProducts`. ``curate.dedup.ivf.ivf_pairs`` is the same
    search out of core.
    """
    import faiss
    from tqdm import tqdm

    plan = plan or plan_index(len(vectors))
    dim = vectors.shape[1]
    n_batches = math.ceil(len(vectors) / QUERY_BATCH)
    bar = tqdm(total=2 * n_batches, desc="near-duplicate search", disable=not progress)
    if plan.exact:
        configure_threads()
        index = faiss.IndexFlatIP(dim)
        for _, block in float32_batches(vectors, QUERY_BATCH):
            index.add(block)
            bar.update()
    else:
        trained = trained_ivf(vectors, plan, seed)
        quantizer, centroids = trained.quantizer, ivf_centroids(trained)
        lists = np.empty((len(vectors), plan.nprobe), dtype=np.int64)
        for start, block in float32_batches(vectors, QUERY_BATCH):
            lists[start : start + len(block)] = exact_top(quantizer, block, centroids, plan.nprobe)[
                1
            ]
            bar.update()
        index = ListProducts(
            lists[:, 0], np.arange(len(vectors)), vectors.__getitem__, dim, plan.nlist, threshold
        )
    parts = []
    for start, block in float32_batches(vectors, QUERY_BATCH):
        if plan.exact:
            queries, found, similarity = flat_range(index, block, threshold)
            parts.append((start + queries, found, similarity))
        else:
            rows = start + np.arange(len(block))
            parts.append(index.search(block, lists[start : start + len(block)], rows))
        bar.update()
    bar.close()
    return Pairs.from_directed(parts)


class ListProducts:
    """Inverted lists searched by matrix products: the member rows as float16, sorted by list
    (``2·d`` bytes a row); a query meets every list it probes in one product per list (numpy,
    or torch on ``device``), with :data:`RECHECK_MARGIN` to spare, and each candidate pair is
    rechecked by :func:`dot_rows`: a pair is found when its rows' vectors have cosine ≥
    ``threshold`` and the list one of them is filed in is probed by the other."""

    def __init__(
        self,
        lists: np.ndarray,
        ids: np.ndarray,
        read: Callable[[np.ndarray], np.ndarray],
        dim: int,
        nlist: int,
        threshold: float,
        device: str | None = None,
    ) -> None:
        """Members ``ids`` filed in ``lists``; ``read(ids)`` answers their vectors (float16 or
        float32), asked in list order a block at a time, so that only the sorted copy is held."""
        self.threshold, self.device = threshold, device
        order = np.argsort(np.asarray(lists), kind="stable")
        self.ids = np.asarray(ids, dtype=np.int64)[order]
        self.offsets = np.searchsorted(np.asarray(lists)[order], np.arange(nlist + 1))
        self.members = np.empty((len(order), dim), dtype=np.float16)
        for start in range(0, len(order), QUERY_BATCH):
            self.members[start : start + QUERY_BATCH] = read(self.ids[start : start + QUERY_BATCH])
        if device is not None:
            import torch

            self.on_device = torch.from_numpy(self.members).to(device)

    def search(
        self, queries: np.ndarray, probes: np.ndarray, query_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query id, member id, cosine) of the pairs; ``probes``: each query's lists (-1:
        none)."""
        rows, slots = np.nonzero(probes >= 0)
        probed = probes[rows, slots].astype(np.int64)
        order = np.argsort(probed, kind="stable")
        rows, probed = rows[order], probed[order]
        edges = np.flatnonzero(np.r_[True, probed[1:] != probed[:-1], True])
        floor = np.float32(self.threshold - RECHECK_MARGIN)
        if self.device is not None:
            import torch

            on_device = torch.from_numpy(np.ascontiguousarray(queries)).to(self.device)
        found_queries, found_members = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for a, b in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
            first, last = int(self.offsets[probed[a]]), int(self.offsets[probed[a] + 1])
            if first == last:
                continue
            asking = rows[a:b]
            if self.device is None:
                products = queries[asking] @ transposed(self.members[first:last])
                q, m = np.nonzero(products >= floor)
            else:
                index = torch.from_numpy(asking).to(self.device)
                products = on_device[index] @ self.on_device[first:last].float().T
                q, m = torch.nonzero(products >= float(floor)).cpu().numpy().T
            found_queries.append(asking[q])
            found_members.append(first + m)
        q, m = np.concatenate(found_queries), np.concatenate(found_members)
        similarity = dot_pairs(queries, q, self.members, m)
        close = similarity >= np.float32(self.threshold)
        return query_ids[q[close]], self.ids[m[close]], similarity[close]


def exact_pairs(vectors: np.ndarray, query_rows: np.ndarray, threshold: float) -> Pairs:
    """Brute force: every pair (q, j), q in ``query_rows``, j any row ≠ q, with cosine ≥ threshold.

    A plain chunked matrix product in numpy, independent of FAISS, so that it can serve as the
    reference for the approximate search.
    """
    query_rows = np.asarray(query_rows)
    queries = np.asarray(vectors[query_rows], dtype=np.float32)
    parts = []
    rows_per_block = max(1024, EXACT_BLOCK_CELLS // max(1, len(queries)))
    for start, block in float32_batches(vectors, rows_per_block):
        q, j, similarity = block_pairs(queries, block, threshold)
        parts.append((query_rows[q], start + j, similarity))
    return Pairs.from_directed(parts)


def block_pairs(
    queries: np.ndarray, block: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query, row of ``block``, cosine) for every cosine ≥ ``threshold`` between the two
    float32 blocks: numpy's product proposes (with a margin), :func:`dot_rows` decides."""
    products = queries @ transposed(block)
    q, j = np.nonzero(products >= np.float32(threshold - RECHECK_MARGIN))
    similarity = dot_pairs(queries, q, block, j)
    close = similarity >= np.float32(threshold)
    return q[close], j[close], similarity[close]


def pair_recall(found: Pairs, exact: Pairs, query_rows: np.ndarray, n_rows: int) -> float | None:
    """Share of the exact pairs touching ``query_rows`` that ``found`` also holds (None: no pairs).

    ``exact`` must be ``exact_pairs(vectors, query_rows, threshold)``; ``found`` may hold pairs of
    any rows (the ones that touch no query row are ignored).
    """
    if len(exact) == 0:
        return None
    is_query = np.zeros(n_rows, dtype=bool)
    is_query[np.asarray(query_rows)] = True
    touching = is_query[found.left] | is_query[found.right]
    found_keys = found.left[touching] * n_rows + found.right[touching]
    exact_keys = exact.left * n_rows + exact.right
    return float(np.isin(exact_keys, found_keys).mean())


def flat_index(base: np.ndarray, gpu: bool = False) -> Any:
    """An exact inner-product index over ``base`` (on GPU 0 when ``gpu``)."""
    import faiss

    configure_threads()
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(np.ascontiguousarray(base, dtype=np.float32))
    if gpu:
        from curate.dedup.device import to_gpu

        return to_gpu(index)
    return index


def nearest(
    base: np.ndarray,
    queries: np.ndarray,
    progress: bool = False,
    desc: str = "",
    gpu: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest row of ``base`` (by inner product) for each query: (similarity, index)."""
    from tqdm import tqdm

    base = np.ascontiguousarray(base, dtype=np.float32)
    index = flat_index(base, gpu)
    similarity = np.empty(len(queries), dtype=np.float32)
    ids = np.empty(len(queries), dtype=np.int64)
    total = math.ceil(len(queries) / QUERY_BATCH)
    for start, block in tqdm(
        float32_batches(queries, QUERY_BATCH), total=total, desc=desc, disable=not progress
    ):
        found_similarity, found_ids = exact_top(index, block, base, 1)
        similarity[start : start + len(block)] = found_similarity[:, 0]
        ids[start : start + len(block)] = found_ids[:, 0]
    return similarity, ids
