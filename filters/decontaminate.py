"""``decontaminate``: drop pool samples that near-duplicate an image of an evaluation set.

Each pool image's cosine to its nearest eval image is found by exact search (a flat FAISS
index over the eval embeddings); samples at or above ``threshold`` are removed, their score
is that cosine. Eval sets are ``.npy`` files of L2-normalised image embeddings made with the
pool's embedding model.

Out of core, on the build's executor: one task per block of ``task_rows`` rows of the float16
file searches each eval set (the same search as one flat index over all rows at once).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from curate.dedup.blocks import TASK_ROWS
from curate.dedup.nearest import NearestParts, NearestRows, nearest_parts
from curate.dedup.reference import load_reference_embeddings
from curate.filters.dedup_inputs import (
    array_digest,
    step_dir,
    survivors,
    task_rows_field,
    use_gpu,
)
from curate.filters.registry import StageContext, StageParams, StageResult, register_stage


class DecontaminateParams(StageParams):
    eval_embeddings: list[Path] = Field(
        min_length=1,
        description="one or more .npy files (or directories holding image.npy) of eval-set "
        "image embeddings, made with the pool's embedding model",
    )
    threshold: float = Field(
        0.95, gt=0.0, le=1.0, description="remove pool samples with cosine ≥ this to any eval image"
    )
    task_rows: int | None = task_rows_field()


@register_stage(
    "decontaminate",
    DecontaminateParams,
    needs_embeddings=True,
    columns=(),
    columns_on_demand=True,
)
def decontaminate(ctx: StageContext, params: DecontaminateParams) -> NearestEvalImages:
    vectors = survivors(ctx)
    gpu = use_gpu(ctx)
    eval_sets = [
        load_reference_embeddings(path, vectors.dim, f"eval_embeddings[{position}]")
        for position, path in enumerate(params.eval_embeddings)
    ]
    found = tuple(
        nearest_parts(
            vectors,
            eval_vectors,
            step_dir(ctx, "decontaminate", eval_set=array_digest(eval_vectors), gpu=gpu),
            executor=ctx.executor,
            task_rows=params.task_rows or TASK_ROWS,
            gpu=gpu,
            progress=True,
            desc=f"decontaminate {Path(path).name}",
        )
        for path, eval_vectors in zip(params.eval_embeddings, eval_sets, strict=True)
    )
    answer = NearestEvalImages(
        found, tuple(str(path) for path in params.eval_embeddings), params.threshold, len(vectors)
    )
    over_threshold = np.zeros(len(found), dtype=np.int64)  # per eval set
    removed = 0
    for start, stop in found[0].windows():  # a task's rows at a time, each set's file read once
        nearest = [parts.read(start, stop) for parts in found]
        removed += int((answer.best_of(nearest)[0] >= np.float32(params.threshold)).sum())
        over_threshold += [int((n.similarity >= params.threshold).sum()) for n in nearest]
    report = {
        "threshold": params.threshold,
        "removed": removed,
        "removed_by_eval_set": dict(zip(answer.paths, over_threshold.tolist(), strict=True)),
    }
    return replace(answer, report=report)


@dataclass(frozen=True)
class NearestEvalImages:
    """decontaminate's answer for rows ``[start, start + rows)`` of the stage's, read from the
    search tasks' files (one :class:`NearestParts` per eval set) when asked (in build-pool, by
    one task per shard): a row is removed when its nearest eval image, over all the sets, is
    at ``threshold`` or above, and scored with that cosine."""

    found: tuple[NearestParts, ...]
    paths: tuple[str, ...]
    threshold: float
    rows: int
    start: int = 0
    report: dict[str, Any] = field(default_factory=dict)

    def piece(self, start: int, count: int) -> NearestEvalImages:
        return replace(self, rows=count, start=self.start + start, report={})

    @staticmethod
    def best_of(nearest: list[NearestRows]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row, over the sets' answers: the highest cosine, which set, which row of it."""
        rows = len(nearest[0].similarity)
        best = np.full(rows, -np.inf, dtype=np.float32)
        which_set = np.full(rows, -1, dtype=np.int64)
        which_row = np.full(rows, -1, dtype=np.int64)
        for position, found in enumerate(nearest):
            better = found.similarity > best
            best[better] = found.similarity[better]
            which_set[better] = position
            which_row[better] = found.index[better]
        return best, which_set, which_row

    def dense(self) -> StageResult:
        stop = self.start + self.rows
        best, which_set, which_row = self.best_of([f.read(self.start, stop) for f in self.found])
        keep = ~(best >= np.float32(self.threshold))
        removed = np.flatnonzero(~keep)
        reason = np.full(self.rows, "", dtype=object)
        paths = np.array(self.paths, dtype=object)
        reason[removed] = (
            f"near-duplicate (cosine ≥ {self.threshold}) of eval image "
            + paths[which_set[removed]]
            + " row "
            + which_row[removed].astype(str).astype(object)
        )
        return StageResult(keep=keep, reason=reason, score=best, report=self.report)
