"""Reading a pool: its manifest, its samples table and its images."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from curate.core.errors import InputNotFoundError, NotAPoolError
from curate.core.layout import PoolLayout
from curate.core.manifest import Manifest, read_manifest


@dataclass(frozen=True)
class Pool:
    root: Path
    manifest: Manifest

    @classmethod
    def open(cls, path: Path | str) -> Pool:
        root = Path(path)
        if not root.is_dir():
            raise NotAPoolError(f"{root} does not exist or is not a directory")
        manifest = read_manifest(root)
        if manifest.kind != "pool":
            raise NotAPoolError(f"{root} is a {manifest.kind}, not a pool")
        return cls(root, manifest)

    @property
    def layout(self) -> PoolLayout:
        return PoolLayout(self.root)

    @property
    def name(self) -> str:
        return self.manifest.name

    def scan_samples(self) -> pl.LazyFrame:
        return pl.scan_parquet(self.layout.samples)

    def samples(self, columns: list[str] | None = None) -> pl.DataFrame:
        return pl.read_parquet(self.layout.samples, columns=columns)

    def shard_paths(self) -> list[Path]:
        return sorted(self.layout.shards_dir.glob("*.tar"))

    def iter_images(self, shard: str) -> Iterator[tuple[str, str, bytes]]:
        """Yield (key, extension, image bytes) from one shard, in file order."""
        with tarfile.open(self.root / shard) as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, _, extension = member.name.partition(".")
                if extension in ("jpg", "png", "webp", "gif", "bmp"):
                    handle = archive.extractfile(member)
                    assert handle is not None
                    yield key, extension, handle.read()

    def read_images(self, rows: pl.DataFrame) -> list[bytes]:
        """Image bytes for the given sample rows (needs columns shard, key), in row order."""
        wanted: dict[tuple[str, str], int] = {
            (shard, key): i
            for i, (shard, key) in enumerate(rows.select("shard", "key").iter_rows())
        }
        found: list[bytes | None] = [None] * rows.height
        for shard in sorted({shard for shard, _ in wanted}):
            for key, _, data in self.iter_images(shard):
                index = wanted.get((shard, key))
                if index is not None:
                    found[index] = data
        missing = [i for i, data in enumerate(found) if data is None]
        if missing:
            shard, key = rows.row(missing[0], named=True)["shard"], rows["key"][missing[0]]
            raise InputNotFoundError(f"{self.root}: image {key} not found in {shard}")
        return found  # type: ignore[return-value]
