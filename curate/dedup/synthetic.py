"""Clustered unit vectors with planted near-duplicates: test and benchmark data for the dedup
stages, made without any model (vectorised, in blocks, so 1M × 512 is a few seconds).

Rows are ``normalise(center + spread · g/√dim)`` around ``n_centers`` random centers
(``spread = 1`` gives cosine ≈ 0.7 to the center, ≈ 0.5 between members of a cluster). A share
``duplicate_fraction`` of rows are then replaced by ``normalise(source + noise · g/√dim)`` of
a random non-duplicate source row, ``noise`` uniform in ``[0, max_noise]`` (cosine to the source
≈ 1/√(1 + noise²): 1 down to 0.91 for 0.45), so near-duplicate groups of 2 and more straddle
a 0.95 threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

BLOCK = 65_536


@dataclass(frozen=True)
class PlantedVectors:
    vectors: np.ndarray  # (n, dim), unit rows, the requested dtype
    center: np.ndarray  # each row's cluster center
    source: np.ndarray  # for a planted duplicate: its source row; -1 otherwise


def _normalise(block: np.ndarray) -> np.ndarray:
    return block / np.linalg.norm(block, axis=1, keepdims=True)


def planted_near_duplicates(
    n: int,
    dim: int,
    *,
    n_centers: int = 100,
    spread: float = 1.0,
    duplicate_fraction: float = 0.1,
    max_noise: float = 0.45,
    seed: int = 0,
    dtype: type = np.float32,
    centers: np.ndarray | None = None,
) -> PlantedVectors:
    """``centers``: use these cluster centers (unit rows) instead of drawing ``n_centers``."""
    rng = np.random.default_rng(seed)
    if centers is None:
        centers = _normalise(rng.standard_normal((n_centers, dim), dtype=np.float32))
    n_centers = len(centers)
    center = rng.integers(0, n_centers, size=n)
    vectors = np.empty((n, dim), dtype=dtype)
    scale = np.float32(spread / np.sqrt(dim))
    for start in range(0, n, BLOCK):
        stop = min(n, start + BLOCK)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) * scale
        vectors[start:stop] = _normalise(centers[center[start:stop]] + noise)

    duplicate = rng.random(n) < duplicate_fraction
    originals = np.flatnonzero(~duplicate)
    source = np.full(n, -1, dtype=np.int64)
    duplicates = np.flatnonzero(duplicate)
    source[duplicates] = originals[rng.integers(0, len(originals), size=len(duplicates))]
    center[duplicates] = center[source[duplicates]]
    for start in range(0, len(duplicates), BLOCK):
        rows = duplicates[start : start + BLOCK]
        amount = rng.uniform(0.0, max_noise, size=(len(rows), 1)).astype(np.float32)
        noise = rng.standard_normal((len(rows), dim), dtype=np.float32) * (amount / np.sqrt(dim))
        vectors[rows] = _normalise(vectors[source[rows]].astype(np.float32) + noise)
    return PlantedVectors(vectors, center, source)


def planted_near_duplicates_file(
    path: Path,
    n: int,
    dim: int,
    *,
    n_centers: int = 100,
    duplicate_fraction: float = 0.1,
    seed: int = 0,
    block_rows: int = 1 << 20,
) -> np.ndarray:
    """Write ``n`` planted float16 rows to the ``.npy`` at ``path`` a block at a time (pools
    larger than memory): the blocks share one set of centers, and each block's duplicates
    copy rows of the same block. Returns each row's center."""
    rng = np.random.default_rng(seed)
    centers = _normalise(rng.standard_normal((n_centers, dim), dtype=np.float32))
    center = np.empty(n, dtype=np.int64)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False}
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_2_0(handle, {**header, "shape": (n, dim)})
        for number, start in enumerate(range(0, n, block_rows)):
            stop = min(n, start + block_rows)
            block = planted_near_duplicates(
                stop - start,
                dim,
                duplicate_fraction=duplicate_fraction,
                seed=seed + 1 + number,
                dtype=np.float16,
                centers=centers,
            )
            handle.write(block.vectors.tobytes())
            center[start:stop] = block.center
    return center
