"""What a training run reads: the kept samples of a pool or candidate pool (or a labelled
parquet for `train-filter` and the baseline), their captions, their image bytes, and the
identity of that data for the run's record.

Images stay in the webdataset shards; :class:`ShardImages` reads them either shard by shard
in file order (to fill the in-memory cache of small pools) or one sample at a time by byte
offset inside the tar (for pools too large to cache), so no image is copied out of a pool.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl

from curate.core.errors import InputNotFoundError, UserInputError
from curate.core.image_tables import read_image_parquet
from curate.core.images import IMAGE_EXTENSIONS
from curate.core.manifest import read_manifest


class ImageBytes(Protocol):
    """Image bytes of a training set, row-aligned with its captions."""

    def __len__(self) -> int: ...

    def iter_bytes(self) -> Iterator[tuple[int, bytes]]:
        """(row, bytes) for every row, in the order cheapest to read."""
        ...

    def read(self, row: int) -> bytes: ...


@dataclass(frozen=True)
class TrainingSet:
    """Captions in memory, images read on demand, and what identifies the data."""

    texts: list[str]
    images: ImageBytes
    identity: dict[str, Any]  # path, name, kind, created, sample_count, pool_id, recipe, ...

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class InlineImages:
    """Image bytes already in memory (a labelled parquet)."""

    data: Sequence[bytes]

    def __len__(self) -> int:
        return len(self.data)

    def iter_bytes(self) -> Iterator[tuple[int, bytes]]:
        return iter(enumerate(self.data))

    def read(self, row: int) -> bytes:
        return self.data[row]


@dataclass
class ShardImages:
    """Images inside webdataset tars: ``shards[i]``/``keys[i]`` locate row i under ``root``."""

    root: Path
    shards: list[str]
    keys: list[str]
    _offsets: np.ndarray | None = field(default=None, repr=False)  # (rows, 2): start, size
    _handles: dict[tuple[int, str], Any] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.keys)

    def _rows_by_shard(self) -> dict[str, dict[str, int]]:
        by_shard: dict[str, dict[str, int]] = {}
        for row, (shard, key) in enumerate(zip(self.shards, self.keys, strict=True)):
            by_shard.setdefault(shard, {})[key] = row
        return by_shard

    def iter_bytes(self) -> Iterator[tuple[int, bytes]]:
        for shard, rows in sorted(self._rows_by_shard().items()):
            found = 0
            for key, member, archive in _image_members(self.root / shard):
                row = rows.get(key)
                if row is not None:
                    handle = archive.extractfile(member)
                    assert handle is not None
                    found += 1
                    yield row, handle.read()
            if found != len(rows):
                raise InputNotFoundError(
                    f"{self.root / shard}: {len(rows) - found} images listed in samples.parquet "
                    "are missing from the shard; the pool is damaged, rebuild it"
                )

    def build_offsets(self, workers: int = 0) -> None:
        """Locate every row's image inside its tar (headers only: no image is read), reading
        the shards' headers in ``workers`` processes when there are several."""
        offsets = np.full((len(self.keys), 2), -1, dtype=np.int64)
        by_shard = sorted(self._rows_by_shard().items())
        paths = [self.root / shard for shard, _ in by_shard]
        if workers > 1 and len(paths) > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(min(workers, len(paths))) as pool:
                located = list(pool.map(_member_offsets, paths))
        else:
            located = [_member_offsets(path) for path in paths]
        for (_, rows), members in zip(by_shard, located, strict=True):
            for key, row in rows.items():
                if key in members:
                    offsets[row] = members[key]
        missing = np.flatnonzero(offsets[:, 0] < 0)
        if missing.size:
            row = int(missing[0])
            raise InputNotFoundError(
                f"{self.root / self.shards[row]}: image {self.keys[row]} listed in "
                "samples.parquet is missing from the shard; the pool is damaged, rebuild it"
            )
        self._offsets = offsets

    def read(self, row: int) -> bytes:
        if self._offsets is None:
            self.build_offsets()
        assert self._offsets is not None
        start, size = self._offsets[row]
        handle_key = (os.getpid(), self.shards[row])  # one handle per process (loader workers)
        handle = self._handles.get(handle_key)
        if handle is None:
            handle = self._handles[handle_key] = open(self.root / self.shards[row], "rb")
        handle.seek(int(start))
        return handle.read(int(size))

    def __getstate__(self) -> dict[str, Any]:  # open files do not travel to loader workers
        return {**self.__dict__, "_handles": {}}


def _member_offsets(path: Path) -> dict[str, tuple[int, int]]:
    """key -> (byte offset, size) of every image in one tar."""
    return {key: (member.offset_data, member.size) for key, member, _ in _image_members(path)}


def _image_members(path: Path) -> Iterator[tuple[str, tarfile.TarInfo, tarfile.TarFile]]:
    with tarfile.open(path) as archive:
        for member in archive:
            key, _, extension = member.name.partition(".")
            if member.isfile() and extension.lower() in IMAGE_EXTENSIONS:
                yield key, member, archive


# -- opening --------------------------------------------------------------------------------
def open_training_set(path: Path | str) -> TrainingSet:
    """The kept samples of a pool or candidate pool directory."""
    root = Path(path).resolve()
    manifest = read_manifest(root)
    if manifest.kind == "subset":
        from curate.core.candidate_pool import open_subset

        subset = open_subset(root)
        rows = subset.samples(columns=["uid", "text", "shard", "key"])
        images_root = subset.images_root
        parent = subset.parent
        identity = _identity(root, manifest, rows["uid"])
        identity["recipe"] = manifest.source.get("recipe")
        identity["parent_pool"] = (
            {
                "path": str(parent.root),
                "name": parent.name,
                "created": parent.manifest.created,
            }
            if parent is not None
            else {"path": manifest.source.get("pool"), "name": manifest.source.get("pool_name")}
        )
        # the raw pool, whose holdout.parquet is the pool-holdout task of its subsets
        identity["raw_pool"] = identity["parent_pool"]["path"]
    else:
        from curate.core.pool import Pool

        pool = Pool.open(root)
        rows = pool.samples(columns=["uid", "text", "shard", "key"])
        images_root = root
        identity = _identity(root, manifest, rows["uid"])
        identity["recipe"] = None
        identity["raw_pool"] = str(root)
    if not manifest.has_images:
        raise UserInputError(
            f"{root}: this pool has no images (metadata only), so no model can be trained on "
            "it; ingest it with images (img2dataset download) first"
        )
    if rows.height == 0:
        raise UserInputError(f"{root}: no samples to train on (the pool or subset is empty)")
    images = ShardImages(images_root, rows["shard"].to_list(), rows["key"].to_list())
    return TrainingSet(rows["text"].to_list(), images, identity)


def labelled_parquet_training_set(
    path: Path | str, caption_templates: Sequence[str], row_filter: str | None = None
) -> TrainingSet:
    """A labelled image parquet (HF image layout with ``class_name``) captioned by templates.

    Row i gets ``caption_templates[i % len(templates)]`` filled with its class name, so the
    captions are deterministic. Used for `train-filter` on a trusted labelled slice.
    """
    path = Path(path).resolve()
    table = read_image_parquet(path, ["class_name"], row_filter)
    if not caption_templates:
        raise UserInputError("give at least one caption template, e.g. 'a photo of a {}.'")
    names = table["class_name"].to_list()
    texts = [
        caption_templates[i % len(caption_templates)].format(name) for i, name in enumerate(names)
    ]
    digest = hashlib.sha256()
    digest.update(path.read_bytes())
    digest.update(repr((row_filter, list(caption_templates))).encode())
    identity = {
        "path": str(path),
        "name": path.stem,
        "kind": "labelled_parquet",
        "created": None,
        "sample_count": table.height,
        "pool_id": digest.hexdigest(),
        "recipe": None,
        "row_filter": row_filter,
        "caption_templates": list(caption_templates),
        "raw_pool": None,
    }
    return TrainingSet(texts, InlineImages(table["image_bytes"].to_list()), identity)


def _identity(root: Path, manifest: Any, uids: pl.Series) -> dict[str, Any]:
    """Pool identity: the pool id is the sha256 of the sorted kept uids, one per line."""
    joined = "\n".join(uids.sort().to_list()).encode("utf-8")
    return {
        "path": str(root),
        "name": manifest.name,
        "kind": manifest.kind,
        "created": manifest.created,
        "sample_count": len(uids),
        "pool_id": hashlib.sha256(joined).hexdigest(),
    }
