"""What the dedup and image-based stages read beside their rows: CLIP scores, a cache key for
their slow steps, and per-row reasons that name the sample a removed row duplicates."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from curate.core.errors import UserInputError
from curate.dedup.cache import cache_key, cached_arrays, rows_fingerprint
from curate.dedup.clustering import kmeans
from curate.filters.registry import StageContext


def embeddings_identity(ctx: StageContext) -> dict[str, Any]:
    """Which embedding set, and which version of its file, a result was computed from."""
    from curate.core.embedding_store import embedding_layout, load_embeddings

    name = load_embeddings(ctx.pool_root, ctx.embeddings_name).name
    stat = embedding_layout(ctx.pool_root, name).image.stat()
    return {"name": name, "image_npy": [stat.st_size, stat.st_mtime_ns]}


def stage_cache_key(ctx: StageContext, **params: Any) -> str:
    return cache_key(
        rows=rows_fingerprint(ctx.rows["row"].to_numpy()),
        embeddings=embeddings_identity(ctx),
        seed=ctx.seed,
        **params,
    )


def clip_scores(ctx: StageContext) -> np.ndarray:
    """CLIP score of each row: the rows' ``clip_score`` column, else the embedding set's
    ``clip_score.parquet`` joined on uid (NaN where a uid has none)."""
    if "clip_score" in ctx.rows.columns:
        return ctx.rows["clip_score"].cast(pl.Float64).to_numpy()
    from curate.core.embedding_store import embedding_layout, load_embeddings

    name = load_embeddings(ctx.pool_root, ctx.embeddings_name).name
    path = embedding_layout(ctx.pool_root, name).clip_score
    if not path.is_file():
        raise UserInputError(
            f"{path} is missing: keep: highest_clip_score needs the CLIP scores that "
            "`curate embed` writes; re-run `curate embed` or use keep: lowest_row"
        )
    scores = pl.read_parquet(path, columns=["uid", "clip_score"])
    joined = ctx.rows.select("uid").join(scores, on="uid", how="left", maintain_order="left")
    return joined["clip_score"].cast(pl.Float64).to_numpy()


def reasons_naming(ctx: StageContext, keep: np.ndarray, other: np.ndarray, text: str) -> np.ndarray:
    """Per row: ``"<text> <uid of rows[other]>"`` where removed, ``""`` where kept."""
    uids = ctx.rows["uid"].to_numpy()
    reasons = np.full(len(keep), "", dtype=object)
    removed = np.flatnonzero(~keep)
    reasons[removed] = (text + " " + uids[other[removed]].astype(object)).astype(object)
    return reasons


def cached_kmeans(
    ctx: StageContext,
    stage: str,
    vectors: np.ndarray,
    n_clusters: int,
    *,
    n_iter: int,
    train_sample: int | None,
    spherical: bool,
) -> np.ndarray:
    """Seeded k-means centroids of ``vectors``, cached in the stage's work directory so that a
    resumed build does not retrain them."""
    if n_clusters > len(vectors):
        raise UserInputError(
            f"{stage}: n_clusters {n_clusters} exceeds the {len(vectors)} rows left; lower it"
        )
    settings = dict(
        n_clusters=n_clusters, n_iter=n_iter, train_sample=train_sample, spherical=spherical
    )

    def train() -> dict[str, np.ndarray]:
        return {"centroids": kmeans(vectors, seed=ctx.seed, **settings)}

    return cached_arrays(ctx.work_dir, "kmeans", stage_cache_key(ctx, **settings), train)[
        "centroids"
    ]
