"""Exact near-duplicate pairs in bounded memory: an exact search, one shard of rows at a time.

The rows (positions ``0..N-1`` of the surviving rows) are cut into shards of ``shard_rows``
consecutive positions (:func:`shard_bounds`, a pure function of ``N`` and ``shard_rows``).
For each shard ``[a, b)``: an ``IndexFlatIP`` of that shard only, filled block by block from
the float16 memory-mapped embeddings (converted to float32 a block at a time); a range
search of the rows ``[0, b)`` against it, in query blocks read from the memory map; the
pairs ``(q, j)`` with ``q < j`` and cosine ≥ threshold kept; the shard's index dropped.
Every pair ``i < j`` is found once, from query ``i`` against the shard holding ``j``: the same
direction in which the one-index flat search (:func:`curate.dedup.knn.self_pairs`) reports
it, so the pairs, their similarities, the groups and the kept set are the flat search's.
Queries at or after a shard's end are never needed, which makes this about half the flat
search's work (``N²/2·(1 + 1/S)`` products for ``S`` shards instead of ``N²``).

Memory: ``4·shard_rows·d`` for the shard's index, ``6·query_rows·d`` for a query block
(float16 read, float32 copy), ``8·N`` for the rows' pool positions, and the pairs found
(``20`` bytes each, about 3 times that while they are sorted at the end). Not ``N·d``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from curate.dedup.knn import QUERY_BATCH, Pairs, configure_threads, range_radius

SHARD_ROWS = 262_144  # 512 MB of float32 index at 512-d


def shard_bounds(n_rows: int, shard_rows: int) -> list[tuple[int, int]]:
    """``[a, b)`` position ranges of the shards, in order, ``shard_rows`` each (the last fewer)."""
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be at least 1, got {shard_rows}")
    return [(a, min(n_rows, a + shard_rows)) for a in range(0, n_rows, shard_rows)]


def describe_sharded(shard_rows: int) -> dict[str, Any]:
    return {"index": "sharded-flat", "exact": True, "shard_rows": shard_rows}


def sharded_self_pairs(
    image: np.ndarray,
    rows: np.ndarray,
    threshold: float,
    shard_rows: int = SHARD_ROWS,
    *,
    query_rows: int = QUERY_BATCH,
    progress: bool = False,
) -> Pairs:
    """Every pair of positions ``i < j`` of ``rows`` whose vectors ``image[rows[i]]`` and
    ``image[rows[j]]`` have cosine ≥ ``threshold``. ``image`` is typically the pool's float16
    memory map and ``rows`` the surviving rows' pool row numbers; only blocks of it are read.
    """
    import faiss
    from tqdm import tqdm

    rows = np.asarray(rows, dtype=np.int64)
    dim = image.shape[1]
    radius = range_radius(threshold)
    shards = shard_bounds(len(rows), shard_rows)
    steps = sum(math.ceil((b - a) / query_rows) + math.ceil(b / query_rows) for a, b in shards)
    bar = tqdm(total=steps, desc="near-duplicate search (sharded)", disable=not progress)
    configure_threads()
    parts = []
    for first, end in shards:
        index = faiss.IndexFlatIP(dim)
        for start in range(first, end, query_rows):
            index.add(_float32_rows(image, rows[start : min(end, start + query_rows)]))
            bar.update()
        for start in range(0, end, query_rows):
            block = _float32_rows(image, rows[start : min(end, start + query_rows)])
            lims, similarity, found = index.range_search(block, radius)
            queries = start + np.repeat(np.arange(len(block)), np.diff(lims.astype(np.int64)))
            found = first + found
            later = queries < found
            parts.append((queries[later], found[later], similarity[later]))
            bar.update()
        del index
    bar.close()
    return Pairs.from_directed(parts)


def _float32_rows(image: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[rows], dtype=np.float32)
