"""Find the pools and candidate pools under a folder by their manifests."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from curate.core.candidate_pool import Subset, open_subset
from curate.core.errors import InputNotFoundError, NotAPoolError
from curate.core.layout import MANIFEST
from curate.core.manifest import read_manifest
from curate.core.pool import Pool

# Folders inside a pool or candidate pool that never hold another one.
_NOT_POOLS = {"shards", "embeddings", "results", "checkpoint"}


@dataclass(frozen=True)
class Discovered:
    pools: tuple[Pool, ...]
    subsets: tuple[Subset, ...]
    problems: tuple[str, ...] = field(default=())  # unreadable manifests, missing parents


def manifest_dirs(root: Path) -> list[Path]:
    """Every folder under ``root`` (itself included) with a manifest, hidden folders skipped
    (``.<name>.partial`` staging folders of unfinished runs)."""
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(
            name for name in subdirs if not name.startswith(".") and name not in _NOT_POOLS
        )
        if MANIFEST in files:
            found.append(Path(directory))
    return found


def discover(root: Path) -> Discovered:
    """Open every pool and candidate pool under ``root``; what cannot be opened is reported."""
    root = Path(root)
    if not root.is_dir():
        raise InputNotFoundError(
            f"{root} does not exist or is not a folder; pass the folder that holds your pools, "
            "candidate pools and results"
        )
    pools, subsets, problems = [], [], []
    for directory in manifest_dirs(root):
        try:
            manifest = read_manifest(directory)
        except NotAPoolError as error:
            problems.append(f"{error} (skipped)")
            continue
        if manifest.kind == "pool":
            pools.append(Pool(directory, manifest))
        elif manifest.kind == "subset":
            try:
                subsets.append(open_subset(directory))
            except NotAPoolError as error:
                # its own files (stages, decisions, ground truth) still tell what it removed
                subsets.append(Subset(directory, manifest, None))
                problems.append(f"{error} (shown without sample images)")
        else:
            problems.append(f"{directory}: unknown manifest kind {manifest.kind!r} (skipped)")
    return Discovered(tuple(pools), tuple(subsets), tuple(problems))
