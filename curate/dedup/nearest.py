"""Each row's nearest row of a small base set (k-means centroids, an eval set's images), one
executor task per block of rows read from the float16 file.

The same computation as :func:`curate.dedup.knn.nearest` over the whole float32 matrix: a
task searches its rows in the blocks that function would use (tasks start at multiples of
the block), so the answers are identical, and no process holds more than one block of rows
and the base set. The answers stay in the tasks' files (``12`` bytes a row, ``16`` with
``with_distance``); readers take the rows they answer for (:class:`NearestParts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate.dedup.blocks import (
    TASK_ROWS,
    Survivors,
    blocks,
    load_arrays,
    run_parts,
    save_arrays,
    task_bounds,
)
from curate.dedup.knn import centroid_distance, exact_top, flat_index


@dataclass(frozen=True)
class NearestRows:
    similarity: np.ndarray  # float32: inner product with the nearest base row
    index: np.ndarray  # int64: which base row
    distance: np.ndarray | None  # float64: 1 − cosine to that row normalised (with_distance)


@dataclass(frozen=True)
class NearestParts:
    """The answers of :func:`nearest_parts`' tasks, left in their files in ``work``: rows
    ``[bounds[i], bounds[i + 1])`` are in :meth:`file` ``(i)``. Small and picklable (no list
    of files), so that a task can read the answers for its own rows."""

    bounds: tuple[int, ...]
    work: Path
    with_distance: bool

    @property
    def rows(self) -> int:
        return self.bounds[-1]

    def file(self, task: int) -> Path:
        return self.work / f"{task:05d}.npz"

    def read(self, start: int, stop: int) -> NearestRows:
        """The answers for rows ``[start, stop)``, reading only the files that hold them."""
        pieces = []
        if stop > start:
            first = int(np.searchsorted(self.bounds, start, side="right")) - 1
            last = int(np.searchsorted(self.bounds, stop - 1, side="right")) - 1
            for task in range(max(first, 0), min(last, len(self.bounds) - 2) + 1):
                low, high = self.bounds[task], self.bounds[task + 1]
                arrays = load_arrays(self.file(task))
                begin, end = max(start, low) - low, min(stop, high) - low
                pieces.append({name: array[begin:end] for name, array in arrays.items()})

        def joined(name: str, dtype: type) -> np.ndarray:
            return np.concatenate([np.zeros(0, dtype), *(piece[name] for piece in pieces)])

        return NearestRows(
            similarity=joined("similarity", np.float32),
            index=joined("index", np.int64),
            distance=joined("distance", np.float64) if self.with_distance else None,
        )

    def windows(self) -> list[tuple[int, int]]:
        """``[start, stop)`` of each file's rows: to go over the answers a file at a time."""
        return list(zip(self.bounds[:-1], self.bounds[1:], strict=True))


def nearest_parts(
    survivors: Survivors,
    base: np.ndarray,
    work: Path,
    *,
    executor: Any = None,
    task_rows: int = TASK_ROWS,
    gpu: bool = False,
    with_distance: bool = False,
    progress: bool = False,
    desc: str = "nearest",
) -> NearestParts:
    """The nearest row of ``base`` (inner product) for every row of ``survivors``, left in
    the tasks' files; ``work`` keeps the base and each task's answers (a rerun resumes)."""
    work.mkdir(parents=True, exist_ok=True)
    base_file = work / "base.npz"
    if not base_file.is_file():
        save_arrays(base_file, base=np.ascontiguousarray(base, dtype=np.float32))
    bounds = task_bounds(len(survivors), task_rows)
    parts = NearestParts((0, *(stop for _, stop in bounds)), work, with_distance)
    tasks = [
        NearestTask(
            survivors.part(start, stop), start, base_file, gpu, with_distance, parts.file(i)
        )
        for i, (start, stop) in enumerate(bounds)
    ]
    run_parts(executor, nearest_part, tasks, gpus=1 if gpu else 0, desc=desc, progress=progress)
    return parts


@dataclass(frozen=True)
class NearestTask:
    survivors: Survivors  # this task's rows
    start: int  # position of its first row
    base: Path
    gpu: bool
    with_distance: bool
    out: Path


def nearest_part(task: NearestTask) -> None:
    base = np.ascontiguousarray(load_arrays(task.base)["base"], dtype=np.float32)
    index = flat_index(base, task.gpu)
    n = len(task.survivors)
    similarity = np.empty(n, dtype=np.float32)
    ids = np.empty(n, dtype=np.int64)
    distance = np.empty(n if task.with_distance else 0, dtype=np.float64)
    unit = base / np.maximum(np.linalg.norm(base, axis=1, keepdims=True), 1e-12)
    for a, b in blocks(task.start, task.start + n):
        first, last = a - task.start, b - task.start
        block = task.survivors.block(first, last)
        found_similarity, found_ids = exact_top(index, block, base, 1)
        similarity[first:last], ids[first:last] = found_similarity[:, 0], found_ids[:, 0]
        if task.with_distance:
            distance[first:last] = centroid_distance(block, unit[found_ids[:, 0]])
    arrays = {"similarity": similarity, "index": ids}
    if task.with_distance:
        arrays["distance"] = distance
    save_arrays(task.out, **arrays)
