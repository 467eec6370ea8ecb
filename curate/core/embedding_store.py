"""Embeddings stored beside a pool: float16, L2-normalised, row-aligned with samples.parquet.

``embeddings/<name>/image.npy`` and ``text.npy`` are plain ``.npy`` files (shape rows x dim)
so that numpy can memory-map them and any tool can read them; ``meta.json`` records the
model that made them; ``clip_score.parquet`` holds (uid, clip_score).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.core.atomic import write_parquet
from curate.core.errors import InputNotFoundError
from curate.core.layout import EmbeddingLayout, PoolLayout


class MissingEmbeddingsError(InputNotFoundError):
    """A pool has no embedding set of that name (or not exactly one, when none is named)."""


@dataclass(frozen=True)
class Embeddings:
    name: str
    image: np.ndarray  # memory-mapped float16 (rows, dim)
    text: np.ndarray | None
    meta: dict[str, Any]


def list_embeddings(pool_root: Path) -> list[str]:
    directory = PoolLayout(Path(pool_root)).embeddings_dir
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if (p / "meta.json").is_file())


def load_embeddings(pool_root: Path, name: str | None = None) -> Embeddings:
    """Memory-map a pool's embeddings; ``name=None`` picks the only set (or errors)."""
    available = list_embeddings(pool_root)
    if name is None:
        if len(available) != 1:
            raise MissingEmbeddingsError(
                f"{pool_root}: expected exactly one embedding set, found {available or 'none'}; "
                "run `curate embed` first or name the set to use"
            )
        name = available[0]
    if name not in available:
        raise MissingEmbeddingsError(
            f"{pool_root}: no embeddings named {name!r} (have: {available or 'none'}); "
            "run `curate embed` first"
        )
    layout = PoolLayout(Path(pool_root)).embeddings(name)
    meta = json.loads(layout.meta.read_text("utf-8"))
    image = np.load(layout.image, mmap_mode="r")
    text = np.load(layout.text, mmap_mode="r") if layout.text.is_file() else None
    return Embeddings(name=name, image=image, text=text, meta=meta)


def embedding_layout(pool_root: Path, name: str) -> EmbeddingLayout:
    return PoolLayout(Path(pool_root)).embeddings(name)


CLIP_SCORE_CHUNK_ROWS = 65_536


def write_clip_score(layout: EmbeddingLayout, samples: Path) -> None:
    """Write ``clip_score.parquet`` (uid, clip_score) of an embedding set.

    clip_score is the dot product of the stored float16 unit vectors, computed in float32
    (the cosine of image and caption), so anyone can recompute it from image.npy and text.npy;
    uids come from ``samples`` (the samples.parquet the arrays are row-aligned with).
    """
    image = np.load(layout.image, mmap_mode="r")
    text = np.load(layout.text, mmap_mode="r")
    scores = np.empty(image.shape[0], dtype=np.float32)
    for start in range(0, image.shape[0], CLIP_SCORE_CHUNK_ROWS):
        stop = start + CLIP_SCORE_CHUNK_ROWS
        scores[start:stop] = np.einsum(
            "ij,ij->i", image[start:stop].astype(np.float32), text[start:stop].astype(np.float32)
        )
    uids = pl.read_parquet(samples, columns=["uid"])
    write_parquet(layout.clip_score, uids.with_columns(clip_score=pl.Series(scores)))
