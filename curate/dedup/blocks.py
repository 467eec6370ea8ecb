"""The embedding stages' rows as blocks of the pool's float16 file, and their work as tasks.

A stage sees its surviving rows in pool order; their vectors are rows of
``embeddings/<set>/image.npy``, or, for DataComp's files used in place, of the ``.npz``
members beside them, one part per file in pool order. :class:`NpyFile` reads rows of either
with explicit reads (``pread``), not through a memory map, so a process holds only the
blocks it asked for (a memory map's pages count in its resident set, up to the whole
``2·N·d`` file); rows read in place come out as ``--copy`` would have stored them.

The rows are cut into tasks of ``task_rows`` consecutive positions (:func:`task_bounds`, a
pure function of the row count); ``task_rows`` is a multiple of :data:`BLOCK_ROWS`, the
block every search reads at a time, so a task's blocks are the blocks the whole-pool loop
would read and every FAISS call sees the same rows: the same bytes come out whichever
executor ran the tasks and however many there were. :func:`run_parts` runs tasks on an
executor (in this process when there is none); each task writes its own output file, named
by the task alone, and a task whose file exists is skipped, so an interrupted stage resumes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from curate.core.atomic import atomic_path
from curate.core.embedding_store import ArrayPart, EmbeddingParts, c_order_header, unit_rows

BLOCK_ROWS = 8192  # rows per FAISS call (curate.dedup.knn.QUERY_BATCH)
TASK_ROWS = 32 * BLOCK_ROWS  # rows per executor task: 262,144 (805 MB of float32 at 768-d)
MERGE_GAP_ROWS = 4  # wanted rows this close are read in one request, the rows between dropped
SPAN_ROWS = 8192  # at most this many rows of the file per read request


@dataclass(frozen=True)
class NpyFile:
    """An array (C order) read by row ranges or row lists, never memory-mapped: a ``.npy``
    file, or several parts concatenated in row order (the ``.npz`` members of a pool used in
    place: a file, the offset of its data and its rows each, see
    :class:`curate.core.embedding_store.EmbeddingParts`). With ``normalize`` the rows read are
    L2-normalised float16, as ``--copy`` would have stored them."""

    parts: tuple[ArrayPart, ...]
    shape: tuple[int, ...]
    stored_dtype: str  # the parts' dtype on disk
    normalize: bool = False

    @classmethod
    def open(cls, path: Path | str) -> NpyFile:
        path = Path(path)
        with open(path, "rb") as handle:
            shape, dtype, _, offset = c_order_header(handle, str(path))
        return cls((ArrayPart(path, offset, shape[0], str(path)),), shape, dtype.str)

    @classmethod
    def of(cls, source: EmbeddingParts) -> NpyFile:
        """The rows of an embedding set's image or text array, wherever they are stored."""
        return cls(source.parts, source.shape, source.stored_dtype, source.normalize)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def dtype(self) -> str:
        """The dtype of the rows :meth:`range` and :meth:`take` return."""
        return np.dtype(np.float16).str if self.normalize else self.stored_dtype

    @property
    def where(self) -> str:
        """The file (or first part) for messages."""
        more = len(self.parts) - 1
        return self.parts[0].where + (f" and {more} more part(s)" if more else "")

    @property
    def row_bytes(self) -> int:
        return np.dtype(self.stored_dtype).itemsize * math.prod(self.shape[1:])

    def range(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (clipped to the array), a fresh array of :attr:`dtype`."""
        start, stop = max(0, start), min(len(self), stop)
        raw = np.empty((max(0, stop - start), *self.shape[1:]), dtype=self.stored_dtype)
        edges = self._edges()
        for index, part in enumerate(self.parts):
            low, high = max(start, int(edges[index])), min(stop, int(edges[index + 1]))
            if high > low:
                with open(part.path, "rb", buffering=0) as handle:
                    self._read_into(
                        handle, part, low - int(edges[index]), raw[low - start : high - start]
                    )
        return self._values(raw)

    def take(self, index: np.ndarray) -> np.ndarray:
        """Rows at ``index`` (any order, repeats allowed), read in ascending runs: wanted rows
        at most :data:`MERGE_GAP_ROWS` apart share one read of at most :data:`SPAN_ROWS`,
        inside one part."""
        index = np.asarray(index, dtype=np.int64)
        raw = np.empty((len(index), *self.shape[1:]), dtype=self.stored_dtype)
        if not len(index):
            return self._values(raw)
        if index.min() < 0 or index.max() >= len(self):
            raise IndexError(f"{self.where}: row index out of range 0..{len(self) - 1}")
        order = np.argsort(index, kind="stable")
        wanted = index[order]
        edges = self._edges()
        part_of = np.searchsorted(edges, wanted, side="right") - 1
        split = (
            (np.diff(wanted) > MERGE_GAP_ROWS)
            | (np.diff(wanted // SPAN_ROWS) != 0)  # a read never crosses a span boundary
            | (np.diff(part_of) != 0)  # nor a part's end
        )
        starts = np.r_[0, np.flatnonzero(split) + 1]
        ends = np.r_[starts[1:], len(wanted)]
        buffer = np.empty((SPAN_ROWS, *self.shape[1:]), dtype=self.stored_dtype)
        handle, open_part = None, -1
        try:
            for first, last in zip(starts.tolist(), ends.tolist(), strict=True):
                part = int(part_of[first])
                if part != open_part:
                    if handle is not None:
                        handle.close()
                    handle, open_part = open(self.parts[part].path, "rb", buffering=0), part
                low, high = int(wanted[first]), int(wanted[last - 1]) + 1
                span = buffer[: high - low]
                self._read_into(handle, self.parts[part], low - int(edges[part]), span)
                raw[order[first:last]] = span[wanted[first:last] - low]
        finally:
            if handle is not None:
                handle.close()
        return self._values(raw)

    def _edges(self) -> np.ndarray:
        return np.cumsum([0, *(part.rows for part in self.parts)], dtype=np.int64)

    def _values(self, raw: np.ndarray) -> np.ndarray:
        return unit_rows(raw).astype(np.float16) if self.normalize else raw

    def _read_into(self, handle: Any, part: ArrayPart, start: int, out: np.ndarray) -> None:
        view = memoryview(out.reshape(-1).view(np.uint8))
        handle.seek(part.offset + start * self.row_bytes)
        done = 0
        while done < len(view):
            count = handle.readinto(view[done:])
            if not count:
                raise OSError(f"{part.where}: ends before row {start + len(out)}")
            done += count


@dataclass(frozen=True)
class Survivors:
    """The image vectors of a stage's rows: position ``i`` is pool row ``rows[i]`` of
    ``image`` (ascending). Picklable and small: a task gets the slice of ``rows`` it reads."""

    image: NpyFile
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def dim(self) -> int:
        return self.image.shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.rows), self.dim)

    def block(self, start: int, stop: int) -> np.ndarray:
        """Float32 vectors of positions ``start:stop``."""
        return self.take(np.arange(start, min(stop, len(self.rows))))

    def take(self, positions: np.ndarray) -> np.ndarray:
        """Float32 vectors of ``positions`` (row-aligned with them)."""
        return np.ascontiguousarray(self.image.take(self.rows[positions]), dtype=np.float32)

    def __getitem__(self, positions: np.ndarray) -> np.ndarray:
        """``vectors[positions]`` as for an array (the k-means and IVF training samples)."""
        return self.take(np.asarray(positions))

    def part(self, start: int, stop: int) -> Survivors:
        """Positions ``start:stop`` only: what one task reads (its positions start at 0)."""
        return Survivors(self.image, self.rows[start:stop])


def consecutive_groups(sizes: np.ndarray, group_rows: int) -> np.ndarray:
    """Group of each item (an IVF list, a cluster): consecutive items, a new group whenever
    adding the next item would pass ``group_rows`` rows (an item larger than that is a group
    of its own)."""
    group_of_item = np.zeros(len(sizes), dtype=np.int32)
    group, filled = 0, 0
    for number, size in enumerate(np.asarray(sizes).tolist()):
        if filled and filled + size > group_rows:
            group, filled = group + 1, 0
        group_of_item[number] = group
        filled += size
    return group_of_item


def group_count(group_of_item: np.ndarray) -> int:
    return int(group_of_item.max()) + 1 if len(group_of_item) else 0


def task_bounds(n_rows: int, task_rows: int = TASK_ROWS) -> list[tuple[int, int]]:
    """``[start, stop)`` of each task, in order: ``task_rows`` positions each (the last fewer)."""
    if task_rows < BLOCK_ROWS or task_rows % BLOCK_ROWS:
        raise ValueError(f"task_rows must be a multiple of {BLOCK_ROWS}, got {task_rows}")
    return [(start, min(n_rows, start + task_rows)) for start in range(0, n_rows, task_rows)]


def blocks(start: int, stop: int, block_rows: int = BLOCK_ROWS) -> list[tuple[int, int]]:
    """``[a, b)`` blocks of ``start:stop`` aligned to multiples of ``block_rows`` (so a task's
    blocks are those of the whole-pool loop)."""
    edges = [start, *range((start // block_rows + 1) * block_rows, stop, block_rows), stop]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


class Part(Protocol):
    out: Path  # the task's output file; present = done


def run_parts(
    executor: Any,
    fn: Callable[[Any], Any],
    parts: Sequence[Part],
    *,
    gpus: float = 0,
    desc: str = "",
    progress: bool = False,
) -> None:
    """Run ``fn(part)`` for the parts whose ``out`` file does not exist yet: on ``executor``
    (a :class:`curate.core.executor.Executor`), or in this process when it is None."""
    from tqdm import tqdm

    todo = [part for part in parts if not Path(part.out).is_file()]
    results = executor.map(fn, todo, gpus=gpus) if executor is not None else map(fn, todo)
    for _ in tqdm(results, total=len(todo), desc=desc, disable=not progress or not todo):
        pass


def save_arrays(path: Path, **arrays: np.ndarray) -> None:
    """A task's output: one ``.npz``, published atomically (its presence means done)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as stored:
        return {name: stored[name] for name in stored.files}


def load_pair_parts(paths: Sequence[Path]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The directed (queries, found, similarity) blocks that search tasks wrote, in task
    order, for :meth:`curate.dedup.knn.Pairs.from_directed`."""
    parts = []
    for path in paths:
        found = load_arrays(path)
        parts.append((found["queries"], found["found"], found["similarity"]))
    return parts
