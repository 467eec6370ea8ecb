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

Each shard is independent: :func:`sharded_pairs_on_executor` runs one executor task per
shard, reading the float16 file (not a memory map) and writing the shard's pairs to a file.

Memory: ``4·shard_rows·d`` for the shard's index, ``6·query_rows·d`` for a query block
(float16 read, float32 copy), ``8·N`` for the rows' pool positions, and the pairs found
(``20`` bytes each, about 3 times that while they are sorted at the end). Not ``N·d``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate.dedup.blocks import (
    NpyFile,
    Survivors,
    load_pair_parts,
    run_parts,
    save_arrays,
)
from curate.dedup.knn import QUERY_BATCH, Pairs, configure_threads, flat_range

SHARD_ROWS = 262_144  # 512 MB of float32 index at 512-d

ReadPositions = Callable[[int, int], np.ndarray]  # float32 vectors of positions [a, b)


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
    ``image[rows[j]]`` have cosine ≥ ``threshold``, the shards one after another in this
    process. ``image`` is typically the pool's float16 memory map and ``rows`` the surviving
    rows' pool row numbers; only blocks of it are read."""
    from tqdm import tqdm

    rows = np.asarray(rows, dtype=np.int64)

    def read(a: int, b: int) -> np.ndarray:
        return np.ascontiguousarray(image[rows[a:b]], dtype=np.float32)

    shards = shard_bounds(len(rows), shard_rows)
    parts = [
        _shard_pairs(read, image.shape[1], first, end, threshold, query_rows)
        for first, end in tqdm(shards, desc="near-duplicate search (sharded)", disable=not progress)
    ]
    return Pairs.from_directed(parts)


def sharded_pairs_on_executor(
    survivors: Survivors,
    rows_file: Path,
    threshold: float,
    shard_rows: int,
    work: Path,
    *,
    executor: Any = None,
    query_rows: int = QUERY_BATCH,
    progress: bool = False,
) -> Pairs:
    """:func:`sharded_self_pairs`, one executor task per shard (each reads its shard and the
    rows before the shard's end from the float16 file; ``rows_file`` holds
    ``survivors.rows``). ``work`` keeps each shard's pairs: a rerun resumes."""
    work.mkdir(parents=True, exist_ok=True)
    tasks = [
        ShardTask(
            survivors.image,
            NpyFile.open(rows_file),
            first,
            end,
            threshold,
            query_rows,
            work / f"shard-{i:05d}.npz",
        )
        for i, (first, end) in enumerate(shard_bounds(len(survivors), shard_rows))
    ]
    run_parts(
        executor, shard_part, tasks, desc="near-duplicate search (sharded)", progress=progress
    )
    return Pairs.from_directed(load_pair_parts([task.out for task in tasks]))


@dataclass(frozen=True)
class ShardTask:
    image: NpyFile
    rows: NpyFile  # pool row of every position
    first: int
    end: int
    threshold: float
    query_rows: int
    out: Path


def shard_part(task: ShardTask) -> None:
    def read(a: int, b: int) -> np.ndarray:
        return Survivors(task.image, task.rows.range(a, b)).block(0, b - a)

    queries, found, similarity = _shard_pairs(
        read, task.image.shape[1], task.first, task.end, task.threshold, task.query_rows
    )
    save_arrays(task.out, queries=queries, found=found, similarity=similarity)


def _shard_pairs(
    read: ReadPositions, dim: int, first: int, end: int, threshold: float, query_rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Directed pairs ``(q, j)``, ``q < j``, ``j`` in the shard ``[first, end)``: an index of
    the shard, searched by the positions ``[0, end)`` in blocks of ``query_rows``."""
    import faiss

    configure_threads()
    index = faiss.IndexFlatIP(dim)
    for start in range(first, end, query_rows):
        index.add(read(start, min(end, start + query_rows)))
    parts = []
    for start in range(0, end, query_rows):
        block = read(start, min(end, start + query_rows))
        queries, found, similarity = flat_range(index, block, threshold)
        queries, found = start + queries, first + found
        later = queries < found
        parts.append((queries[later], found[later], similarity[later]))
    return tuple(  # type: ignore[return-value]
        np.concatenate([np.zeros(0, dtype), *(p[i] for p in parts)])
        for i, dtype in enumerate((np.int64, np.int64, np.float32))
    )
