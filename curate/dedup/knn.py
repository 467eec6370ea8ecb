"""FAISS indexes over L2-normalised embeddings, and the pairs above a cosine threshold.

Index choice (``plan_index``): up to :data:`FLAT_MAX_ROWS` rows an exact ``IndexFlatIP``
(all pairs in seconds); above it an inverted-file index whose lists hold the vectors as float16
(``IndexIVFScalarQuantizer``, ``QT_fp16``, no residuals: exact for the float16 embeddings
curate stores, half the memory of float32). The IVF rules:

- ``nlist = 2·√N`` lists, trained by k-means on a seeded sample of ``40·nlist`` rows (FAISS asks
  for at least 39 per list). More lists make each query scan less but make training
  (∝ nlist²) and the coarse assignment (∝ N·nlist) dearer; 2·√N balances them.
- ``nprobe = 16``: a query scans the 16 lists whose centroids are nearest to it. On clustered
  data with planted near-duplicates (100k rows, 512-d, cosine ≥ 0.95) recall against brute
  force was 0.86-1.0 at nprobe 1, 0.98-1.0 at 4 and 1.0 at 8: 16 leaves a 2× margin. A pair that
  close puts its two rows in each other's nearest lists, and the search runs from both rows.
  ``bench/bench_faiss_stages.py`` at 1M rows × 512-d (2 shared cores): recall 1.0 over 1,200
  exact pairs, 27× faster than exact all-pairs search (extrapolated from 2,000 queries).

``exact_pairs`` is the brute-force reference (a chunked matrix product, not FAISS) that
``pair_recall`` measures the approximate search against.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

FLAT_MAX_ROWS = 20_000
IVF_LISTS_PER_SQRT_N = 2
IVF_TRAIN_ROWS_PER_LIST = 40
IVF_NPROBE = 16
QUERY_BATCH = 8192
EXACT_BLOCK_CELLS = 1 << 26  # similarity entries per brute-force block (256 MB of float32)

IndexKind = Literal["auto", "flat", "ivf"]


def configure_threads(threads: int | None = None) -> int:
    """Let FAISS use every core this process may run on (or ``threads``); returns the count."""
    import faiss

    count = threads or len(os.sched_getaffinity(0))
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


def trained_ivf(vectors: np.ndarray, plan: IndexPlan, seed: int = 0) -> Any:
    """An empty IVF index (float16 lists, inner product) whose coarse quantizer is trained by
    k-means on a seeded sample of ``IVF_TRAIN_ROWS_PER_LIST · nlist`` rows."""
    import faiss

    configure_threads()
    dim = vectors.shape[1]
    index = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(dim),
        dim,
        plan.nlist,
        faiss.ScalarQuantizer.QT_fp16,
        faiss.METRIC_INNER_PRODUCT,
    )
    index.by_residual = False  # store the vectors themselves: fp16 is exact for fp16 embeddings
    index.cp.seed = seed
    index.cp.min_points_per_centroid = 1  # small N: fewer rows than 39 per list is fine
    index.cp.max_points_per_centroid = 1 << 30  # we sample ourselves, with our seed
    rng = np.random.default_rng(seed)
    n_train = min(len(vectors), IVF_TRAIN_ROWS_PER_LIST * plan.nlist)
    sample = np.sort(rng.choice(len(vectors), size=n_train, replace=False))
    index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
    index.nprobe = plan.nprobe
    return index


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


def self_pairs(
    vectors: np.ndarray,
    threshold: float,
    plan: IndexPlan | None = None,
    seed: int = 0,
    progress: bool = False,
) -> Pairs:
    """Every pair of rows with cosine ≥ ``threshold`` (all of them for a flat plan).

    IVF: each row's ``nprobe`` nearest lists are found once and serve both to file the row
    (its nearest list) and to search from it, which halves the coarse-quantizer work.
    """
    import faiss
    from faiss.contrib.ivf_tools import add_preassigned, range_search_preassigned
    from tqdm import tqdm

    plan = plan or plan_index(len(vectors))
    radius = range_radius(threshold)
    n_batches = math.ceil(len(vectors) / QUERY_BATCH)
    bar = tqdm(total=2 * n_batches, desc="near-duplicate search", disable=not progress)
    if plan.exact:
        configure_threads()
        index = faiss.IndexFlatIP(vectors.shape[1])
        for _, block in float32_batches(vectors, QUERY_BATCH):
            index.add(block)
            bar.update()
    else:
        index = trained_ivf(vectors, plan, seed)
        lists = np.empty((len(vectors), plan.nprobe), dtype=np.int64)
        for start, block in float32_batches(vectors, QUERY_BATCH):
            _, lists[start : start + len(block)] = index.quantizer.search(block, plan.nprobe)
            add_preassigned(
                index, block, np.ascontiguousarray(lists[start : start + len(block), 0])
            )
            bar.update()
    parts = []
    for start, block in float32_batches(vectors, QUERY_BATCH):
        if plan.exact:
            lims, distances, labels = index.range_search(block, radius)
        else:
            block_lists = lists[start : start + len(block)]
            lims, distances, labels = range_search_preassigned(index, block, radius, block_lists)
        queries = start + np.repeat(np.arange(len(block)), np.diff(lims.astype(np.int64)))
        parts.append((queries, labels, distances))
        bar.update()
    bar.close()
    return Pairs.from_directed(parts)


def exact_pairs(vectors: np.ndarray, query_rows: np.ndarray, threshold: float) -> Pairs:
    """Brute force: every pair (q, j), q in ``query_rows``, j any row ≠ q, with cosine ≥ threshold.

    A plain chunked matrix product in numpy, independent of FAISS, so that it can serve as the
    reference for the approximate search.
    """
    queries = np.asarray(vectors[np.asarray(query_rows)], dtype=np.float32)
    parts = []
    rows_per_block = max(1024, EXACT_BLOCK_CELLS // max(1, len(queries)))
    for start, block in float32_batches(vectors, rows_per_block):
        similarity = queries @ block.T
        q, j = np.nonzero(similarity >= np.float32(threshold))
        parts.append((np.asarray(query_rows)[q], start + j, similarity[q, j]))
    return Pairs.from_directed(parts)


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


def nearest(
    base: np.ndarray, queries: np.ndarray, progress: bool = False, desc: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest row of ``base`` (by inner product) for each query: (similarity, index)."""
    import faiss
    from tqdm import tqdm

    configure_threads()
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(np.ascontiguousarray(base, dtype=np.float32))
    similarity = np.empty(len(queries), dtype=np.float32)
    ids = np.empty(len(queries), dtype=np.int64)
    total = math.ceil(len(queries) / QUERY_BATCH)
    for start, block in tqdm(
        float32_batches(queries, QUERY_BATCH), total=total, desc=desc, disable=not progress
    ):
        found_similarity, found_ids = index.search(block, 1)
        similarity[start : start + len(block)] = found_similarity[:, 0]
        ids[start : start + len(block)] = found_ids[:, 0]
    return similarity, ids
