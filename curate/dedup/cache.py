"""Results of slow steps (k-means centroids, near-duplicate pairs) kept in a stage's work
directory, named by a hash of everything they depend on, so an interrupted build resumes
without recomputing them and a changed input never reads a stale result."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from curate.core.atomic import atomic_path


def cache_key(**parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


FINGERPRINT_ROWS = 1 << 20


def rows_fingerprint(rows: np.ndarray) -> str:
    """Identity of the rows a stage saw (their pool row numbers, in order), hashed a block at
    a time: ``rows`` may be a memory map of billions of positions."""
    digest = hashlib.sha256()
    for start in range(0, len(rows), FINGERPRINT_ROWS):
        digest.update(np.ascontiguousarray(rows[start : start + FINGERPRINT_ROWS], dtype=np.int64))
    return digest.hexdigest()


def cached_arrays(
    work_dir: Path, name: str, key: str, compute: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """``compute()``'s arrays, read from ``work_dir/<name>-<key>.npz`` when already there."""
    path = Path(work_dir) / f"{name}-{key}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return {field: stored[field] for field in stored.files}
    arrays = compute()
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return arrays
