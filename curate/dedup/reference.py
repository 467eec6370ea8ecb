"""Embeddings of a set outside the pool (a target set, an eval set), read from a ``.npy``.

The file must hold L2-normalised image embeddings (rows × dim, float16 or float32) made with the
same model as the pool's embeddings; ``curate embed`` writes such an ``image.npy``. A directory
is read as ``<dir>/image.npy``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from curate.core.errors import InputNotFoundError, UserInputError

NORM_TOLERANCE = 1e-2  # float16 storage moves norms by ~1e-3


def load_reference_embeddings(path: Path, dim: int, field: str) -> np.ndarray:
    """Float32 (rows × ``dim``) embeddings from ``path``; ``field`` names the recipe parameter."""
    path = Path(path).expanduser()
    file = path / "image.npy" if path.is_dir() else path
    if not file.is_file():
        raise InputNotFoundError(
            f"{field}: {file} does not exist; give a .npy of image embeddings made with the "
            "pool's embedding model (`curate embed` writes one)"
        )
    try:
        vectors = np.load(file, mmap_mode="r")
    except ValueError as error:
        raise UserInputError(f"{field}: {file} is not a readable .npy file ({error})") from None
    if vectors.ndim != 2 or vectors.shape[1] != dim or vectors.shape[0] == 0:
        raise UserInputError(
            f"{field}: {file} has shape {vectors.shape}; expected (rows ≥ 1, {dim}) to match the "
            "pool's embeddings: embed it with the same model"
        )
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (np.abs(norms - 1.0) > NORM_TOLERANCE))
    if len(bad):
        raise UserInputError(
            f"{field}: {file} row {bad[0]} has norm {norms[bad[0]]:.4f} ({len(bad)} rows are not "
            "unit length); embeddings must be L2-normalised (divide each row by its norm)"
        )
    return vectors
