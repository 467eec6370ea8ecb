"""``decontaminate``: drop pool samples that near-duplicate an image of an evaluation set.

Each pool image's cosine to its nearest eval image is found by exact search (a flat FAISS
index over the eval embeddings); samples at or above ``threshold`` are removed, their score
is that cosine. Eval sets are ``.npy`` files of L2-normalised image embeddings made with the
pool's embedding model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from curate.dedup.knn import nearest
from curate.dedup.reference import load_reference_embeddings
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


@register_stage("decontaminate", DecontaminateParams, needs_embeddings=True)
def decontaminate(ctx: StageContext, params: DecontaminateParams) -> StageResult:
    vectors = ctx.image_embeddings()
    best = np.full(len(vectors), -np.inf, dtype=np.float32)
    which = np.full(len(vectors), "", dtype=object)
    per_set = {}
    for position, path in enumerate(params.eval_embeddings):
        field = f"eval_embeddings[{position}]"
        eval_vectors = load_reference_embeddings(path, vectors.shape[1], field)
        similarity, index = nearest(
            eval_vectors, vectors, progress=True, desc=f"decontaminate {Path(path).name}"
        )
        better = similarity > best
        best[better] = similarity[better]
        which[better] = (f"{path} row " + index[better].astype(str).astype(object)).astype(object)
        per_set[str(path)] = int((similarity >= params.threshold).sum())
    keep = ~(best >= np.float32(params.threshold))
    return StageResult(
        keep=keep,
        reason=(f"near-duplicate (cosine ≥ {params.threshold}) of eval image " + which).astype(
            object
        ),
        score=best,
        report={
            "threshold": params.threshold,
            "removed": int((~keep).sum()),
            "removed_by_eval_set": per_set,
        },
    )
