"""What the dedup and image-based stages read beside their rows: their rows' vectors as
blocks of the float16 file (or of the ``.npz`` members a DataComp pool uses in place), CLIP
scores, a cache key and work directory for their slow steps, and per-row reasons that name
the sample a removed row duplicates."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import Field

from curate.core.atomic import atomic_path
from curate.core.embedding_store import (
    EmbeddingParts,
    clip_score_rows,
    embedding_layout,
    embedding_parts,
)
from curate.core.errors import UserInputError
from curate.dedup.blocks import BLOCK_ROWS, TASK_ROWS, NpyFile, Survivors
from curate.dedup.cache import cache_key, cached_arrays, rows_fingerprint
from curate.dedup.clustering import kmeans
from curate.dedup.device import faiss_gpu
from curate.filters.registry import NamedReasons, StageContext, reason_column


def set_parts(ctx: StageContext) -> tuple[str, EmbeddingParts, EmbeddingParts | None]:
    """The embedding set's name and where its image and text rows are: ``image.npy`` and
    ``text.npy``, or the ``.npz`` members of a pool used in place (looked up once per stage)."""
    if "embedding_parts" not in ctx._cache:
        ctx._cache["embedding_parts"] = embedding_parts(ctx.pool_root, ctx.embeddings_name)
    return ctx._cache["embedding_parts"]


def embeddings_identity(ctx: StageContext) -> dict[str, Any]:
    """Which embedding set, and which version of its files, a result was computed from."""
    name, image, _ = set_parts(ctx)
    files = [Path(p) for p in dict.fromkeys(str(part.path) for part in image.parts)]
    stats = [path.stat() for path in files]
    if not image.normalize:  # the pool's own image.npy
        return {"name": name, "image_npy": [stats[0].st_size, stats[0].st_mtime_ns]}
    return {
        "name": name,
        "image_npz": [
            [str(f), s.st_size, s.st_mtime_ns] for f, s in zip(files, stats, strict=True)
        ],
    }


def survivors(ctx: StageContext) -> Survivors:
    """The stage's rows as positions in the float16 image rows (read in blocks, by tasks)."""
    return Survivors(NpyFile.of(set_parts(ctx)[1]), row_positions(ctx))


def row_positions(ctx: StageContext) -> np.ndarray:
    """The rows' pool positions as int64, without a copy of build-pool's uint64 column."""
    rows = ctx.rows["row"].to_numpy()
    return rows.view(np.int64) if rows.dtype == np.uint64 else rows.astype(np.int64, copy=False)


def rows_identity(ctx: StageContext) -> str:
    """The stage's rows' fingerprint, hashed once per stage: every step's cache key and the
    rows file's name use it, and at 1.28B rows one hash reads 10 GB of positions."""
    if "rows_fingerprint" not in ctx._cache:
        ctx._cache["rows_fingerprint"] = rows_fingerprint(row_positions(ctx))
    return ctx._cache["rows_fingerprint"]


def rows_file(ctx: StageContext) -> Path:
    """The rows' positions (``survivors(ctx).rows``) saved in the work directory, for the
    tasks that read all of them."""
    path = ctx.work_dir / f"rows-{rows_identity(ctx)[:24]}.npy"
    if not path.is_file():
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.save(handle, row_positions(ctx))
    return path


def step_dir(ctx: StageContext, step: str, **params: Any) -> Path:
    """The work directory of one step (its tasks' outputs), named by all it depends on."""
    return ctx.work_dir / f"{step}-{stage_cache_key(ctx, **params)}"


def use_gpu(ctx: StageContext) -> bool:
    """``--device cuda`` and a faiss with GPU support (else a message and the CPU)."""
    return faiss_gpu(ctx.device)


def task_rows_field() -> Any:
    """The ``task_rows`` parameter of the embedding stages: rows per executor task. It changes
    where the work runs, never the result, and stays out of the recipe's hash while unset."""
    return Field(
        None,
        ge=BLOCK_ROWS,
        multiple_of=BLOCK_ROWS,
        exclude_if=lambda value: value is None,
        description=f"rows per executor task, a multiple of {BLOCK_ROWS:,} (default "
        f"{TASK_ROWS:,}); a task reads {BLOCK_ROWS:,} rows at a time, whatever this is",
    )


def array_digest(array: np.ndarray) -> str:
    """Identity of an array's contents (centroids, an eval set) for a step's cache key."""
    contiguous = np.ascontiguousarray(array)
    return hashlib.sha256(str(contiguous.shape).encode() + contiguous.tobytes()).hexdigest()[:24]


def stage_cache_key(ctx: StageContext, **params: Any) -> str:
    return cache_key(
        rows=rows_identity(ctx),
        embeddings=embeddings_identity(ctx),
        seed=ctx.seed,
        **params,
    )


def clip_scores(ctx: StageContext, positions: np.ndarray) -> np.ndarray:
    """CLIP score of ``rows[positions]``: the rows' ``clip_score`` column, else the embedding
    set's ``clip_score.parquet`` joined on uid (NaN where a uid has none)."""
    if ctx.has_column("clip_score"):
        return ctx.column_at("clip_score", positions).cast(pl.Float64).to_numpy()
    name, image, text = set_parts(ctx)
    if image.normalize and text is not None:  # .npz used in place: no clip_score.parquet
        return in_place_clip_scores(row_positions(ctx)[positions], image, text).astype(np.float64)
    path = embedding_layout(ctx.pool_root, name).clip_score
    if not path.is_file():
        raise UserInputError(
            f"{path} is missing: keep: highest_clip_score needs the CLIP scores that "
            "`curate embed` writes; re-run `curate embed` or use keep: lowest_row"
        )
    uids = ctx.column_at("uid", positions).to_frame("uid")
    scores = (
        pl.scan_parquet(path)
        .select("uid", "clip_score")
        .filter(pl.col("uid").is_in(uids["uid"].implode()))
        .collect()
    )
    joined = uids.join(scores, on="uid", how="left", maintain_order="left")
    return joined["clip_score"].cast(pl.Float64).to_numpy()


def in_place_clip_scores(
    rows: np.ndarray, image: EmbeddingParts, text: EmbeddingParts
) -> np.ndarray:
    """Float32 CLIP scores of pool ``rows`` computed from the ``.npz`` a pool uses in place,
    as ``--copy`` computes the clip_score.parquet it writes (same float16 unit vectors, same
    float32 dot product), block by block."""
    rows = rows.astype(np.int64, copy=False)
    image_file, text_file = NpyFile.of(image), NpyFile.of(text)
    scores = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(rows), BLOCK_ROWS):
        block = rows[start : start + BLOCK_ROWS]
        scores[start : start + BLOCK_ROWS] = clip_score_rows(
            image_file.take(block), text_file.take(block)
        )
    return scores


def reasons_naming(
    ctx: StageContext, removed: np.ndarray, named: np.ndarray, text: str
) -> pl.Series:
    """Per row: ``"<text> <uid of rows[named[i]]>"`` for row ``removed[i]``, null for every
    other row. Only the named rows' uids are read, in Arrow: no Python string per row (12.8M
    of them would be about 1 GB in the driver)."""
    return reason_column(ctx.rows.height, removed, removal_reasons(ctx, named, text).series())


def removal_reasons(ctx: StageContext, named: np.ndarray, text: str) -> NamedReasons:
    """``"<text> <uid of rows[named[i]]>"`` for each ``i``: the reasons of a sparse answer.
    The uids are read here, each shard once (read by each shard's task, the named rows
    scattered over the pool would have every task read every shard)."""
    return NamedReasons(text, ctx.column_at("uid", named))


def cached_kmeans(
    ctx: StageContext,
    stage: str,
    vectors: Any,
    n_clusters: int,
    *,
    n_iter: int,
    train_sample: int | None,
    spherical: bool,
    gpu: bool = False,
) -> np.ndarray:
    """Seeded k-means centroids of ``vectors`` (an array or :class:`Survivors`: only the
    training sample is read), cached in the stage's work directory so that a resumed build
    does not retrain them."""
    if n_clusters > len(vectors):
        raise UserInputError(
            f"{stage}: n_clusters {n_clusters} exceeds the {len(vectors)} rows left; lower it"
        )
    settings = dict(
        n_clusters=n_clusters, n_iter=n_iter, train_sample=train_sample, spherical=spherical
    )

    def train() -> dict[str, np.ndarray]:
        return {"centroids": kmeans(vectors, seed=ctx.seed, gpu=gpu, **settings)}

    key = stage_cache_key(ctx, **settings, **({"gpu": True} if gpu else {}))
    return cached_arrays(ctx.work_dir, "kmeans", key, train)["centroids"]
