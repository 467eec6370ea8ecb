"""Reading a candidate pool (the output of ``curate build-pool``) the way training reads a pool.

The rule: when the subset was resharded it has its own ``samples.parquet``
and ``shards/``; otherwise its samples are the parent pool's rows whose uid was kept, and
their images stay in the parent pool's shards.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from curate.core.errors import NotAPoolError
from curate.core.kept_uids import kept_uids
from curate.core.layout import SubsetLayout
from curate.core.manifest import Manifest, read_manifest
from curate.core.pool import Pool


@dataclass(frozen=True)
class Subset:
    root: Path
    manifest: Manifest
    parent: Pool | None  # None when resharded and the parent pool is gone

    @property
    def layout(self) -> SubsetLayout:
        return SubsetLayout(self.root)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def resharded(self) -> bool:
        return (self.root / "samples.parquet").is_file()

    @property
    def images_root(self) -> Path:
        """The directory that ``samples()["shard"]`` paths are relative to."""
        if self.resharded:
            return self.root
        assert self.parent is not None
        return self.parent.root

    def uids(self) -> pl.Series:
        """The kept uids, sorted."""
        return kept_uids(self.layout)

    def samples(self, columns: list[str] | None = None) -> pl.DataFrame:
        """Rows of the kept samples (pool order), with ``shard``/``key`` under images_root."""
        if self.resharded:
            return pl.read_parquet(self.root / "samples.parquet", columns=columns)
        assert self.parent is not None
        wanted = columns if columns is None or "uid" in columns else [*columns, "uid"]
        rows = self.parent.scan_samples().select(wanted or pl.all())
        kept = kept_uids(self.layout).to_frame().lazy()
        rows = rows.join(kept, on="uid", how="semi", maintain_order="left").collect()
        return rows if columns is None or "uid" in columns else rows.drop("uid")

    def shard_paths(self) -> list[Path]:
        """The tar files that hold the kept samples (parent shards hold removed ones too)."""
        shards = self.samples(columns=["shard"])["shard"].unique().sort().to_list()
        return [self.images_root / shard for shard in shards]

    def _images(self) -> Pool:
        return Pool(self.images_root, self.manifest)

    def iter_images(self, shard: str) -> Iterator[tuple[str, str, bytes]]:
        """(key, extension, bytes) of every image in one shard, kept or not, in file order."""
        return self._images().iter_images(shard)

    def read_images(self, rows: pl.DataFrame) -> list[bytes]:
        """Image bytes for rows of :meth:`samples` (columns shard, key), in row order."""
        return self._images().read_images(rows)


def open_subset(path: Path | str) -> Subset:
    """Open a candidate pool; its parent pool must still exist unless it was resharded."""
    root = Path(path)
    if not root.is_dir():
        raise NotAPoolError(f"{root} does not exist or is not a directory")
    manifest = read_manifest(root)
    if manifest.kind != "subset":
        raise NotAPoolError(
            f"{root} is a {manifest.kind}, not a candidate pool (make one with `curate build-pool`)"
        )
    resharded = (root / "samples.parquet").is_file()
    parent_path = Path(manifest.source.get("pool", ""))
    try:
        parent = Pool.open(parent_path)
    except NotAPoolError:
        if resharded:
            return Subset(root, manifest, None)
        raise NotAPoolError(
            f"{root}: its parent pool {str(parent_path)!r} is missing or incomplete, and the "
            "subset was not resharded; restore the pool there or rebuild with --reshard"
        ) from None
    expected = manifest.source.get("pool_manifest_created")
    if not resharded and expected and parent.manifest.created != expected:
        raise NotAPoolError(
            f"{root}: the parent pool {parent_path} was rebuilt after this subset was made "
            f"(pool created {parent.manifest.created}, subset expects {expected}); "
            "rerun `curate build-pool` on it"
        )
    return Subset(root, manifest, parent)
