"""Embed a labelled image parquet (HF image layout) with a pool's embedding model.

Stages that compare the pool with another image set need that set's embeddings from the
SAME model as the pool's: ``image_based`` (the downstream task's training images) and
``decontaminate`` (the evaluation images). This writes them as one float16 ``.npy`` of
L2-normalised rows, the format those stages read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from curate.core.atomic import atomic_path
from curate.core.errors import UserInputError
from curate.core.image_tables import read_image_parquet


def embed_image_parquet(
    images: Path | str,
    out: Path | str,
    *,
    pool: Path | str | None = None,
    embeddings: str | None = None,
    checkpoint: Path | str | None = None,
    row_filter: str | None = None,
    batch_size: int = 256,
    device: str = "cpu",
) -> np.ndarray:
    """Embed ``images`` with the model of ``pool``'s embedding set (or a checkpoint) to ``out``."""
    from curate.models.encode import encode_images
    from curate.models.loading import load_clip

    arch, pretrained = None, None
    if checkpoint is None:
        if pool is None:
            raise UserInputError("give the pool whose embedding model to use, or a checkpoint")
        arch, pretrained, checkpoint = _embedding_model(Path(pool), embeddings)
    table = read_image_parquet(Path(images), [], row_filter)
    loaded = load_clip(arch, pretrained=pretrained, checkpoint=checkpoint, device=device)
    images_bytes = table["image_bytes"].to_list()
    features, _ = encode_images(loaded, images_bytes, None, device, batch_size, workers=0)
    vectors = features.astype(np.float16)
    with atomic_path(Path(out)) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, vectors)
    return vectors


def _embedding_model(pool: Path, name: str | None) -> tuple[str, str | None, str | None]:
    """(arch, pretrained tag, checkpoint file) recorded in an embedding set's meta.json."""
    from curate.core.embedding_store import load_embeddings

    meta = load_embeddings(pool, name).meta
    if not meta.get("arch") or not (meta.get("checkpoint") or meta.get("pretrained")):
        raise UserInputError(
            f"{pool}: embedding set {name or '(default)'} does not record its model "
            f"(meta: {json.dumps(meta)[:200]}); pass --checkpoint"
        )
    return meta["arch"], meta.get("pretrained"), meta.get("checkpoint")
