"""``decontaminate``: drop pool samples that near-duplicate an image of an evaluation set.

Each pool image's cosine to its nearest eval image is found by exact search (a flat FAISS
index over the eval embeddings); samples at or above ``threshold`` are removed, their score
is that cosine. Eval sets are ``.npy`` files of L2-normalised image embeddings made with the
pool's embedding model.

Out of core, on the build's executor: one task per block of ``task_rows`` rows of the float16
file searches each eval set (the same search as one flat index over all rows at once).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from curate.dedup.blocks import TASK_ROWS
from curate.dedup.nearest import nearest_blocked
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
def decontaminate(ctx: StageContext, params: DecontaminateParams) -> StageResult:
    vectors = survivors(ctx)
    gpu = use_gpu(ctx)
    eval_sets = [
        load_reference_embeddings(path, vectors.dim, f"eval_embeddings[{position}]")
        for position, path in enumerate(params.eval_embeddings)
    ]
    best = np.full(len(vectors), -np.inf, dtype=np.float32)
    which_set = np.full(len(vectors), -1, dtype=np.int64)
    which_row = np.full(len(vectors), -1, dtype=np.int64)
    per_set = {}
    for position, (path, eval_vectors) in enumerate(
        zip(params.eval_embeddings, eval_sets, strict=True)
    ):
        found = nearest_blocked(
            vectors,
            eval_vectors,
            step_dir(ctx, "decontaminate", eval_set=array_digest(eval_vectors), gpu=gpu),
            executor=ctx.executor,
            task_rows=params.task_rows or TASK_ROWS,
            gpu=gpu,
            progress=True,
            desc=f"decontaminate {Path(path).name}",
        )
        better = found.similarity > best
        best[better] = found.similarity[better]
        which_set[better] = position
        which_row[better] = found.index[better]
        per_set[str(path)] = int((found.similarity >= params.threshold).sum())
    keep = ~(best >= np.float32(params.threshold))
    removed = np.flatnonzero(~keep)
    reason = np.full(len(vectors), "", dtype=object)
    paths = np.array([str(path) for path in params.eval_embeddings], dtype=object)
    reason[removed] = (
        f"near-duplicate (cosine ≥ {params.threshold}) of eval image "
        + paths[which_set[removed]]
        + " row "
        + which_row[removed].astype(str).astype(object)
    )
    return StageResult(
        keep=keep,
        reason=reason,
        score=best,
        report={
            "threshold": params.threshold,
            "removed": int((~keep).sum()),
            "removed_by_eval_set": per_set,
        },
    )
