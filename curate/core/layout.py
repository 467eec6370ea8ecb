"""Where every file of a pool and of a candidate pool lives. The one place for these paths.

A pool directory::

    POOL/
      manifest.json            written last: its presence marks a complete pool
      samples.parquet          a row per sample: uid, text, width, height, sha256, shard, key, ...
      sample_files.json        instead of samples.parquet, for metadata used in place (DataComp's
                               parquet files, `curate ingest --format datacomp`): the files, their
                               rows, sizes and mtimes, in pool order (rows are numbered across them)
      ingest_report.json       what was skipped while ingesting, and why
      holdout.parquet          optional (demo pools): held-out clean images, the pool-holdout task
      shards/00000.tar ...     webdataset tars as img2dataset writes them (key.jpg|png, .txt, .json)
      embeddings/<name>/       float16 image.npy / text.npy row-aligned with samples.parquet,
                               clip_score.parquet, meta.json (model identity)
      results/                 scoring results (one JSON record per task and run)

A candidate pool (the output of ``curate build-pool``)::

    OUT/
      manifest.json            kind = "subset", the parent pool's path and id, provenance
      uids.npy                 the kept uids: DataComp's subset file (sorted u8,u8 pairs);
                               curate.core.kept_uids reads them as strings
      uids.parquet             the kept uids as strings, in candidate pools written before
                               uids.npy became the one copy (still read)
      decisions.parquet        compact: the rows each stage removed (and scores it computed),
                               as bitmaps for a stage with one reason and no scores of its own;
                               read it as one row per sample and stage with
                               curate.core.decisions_view.scan_decisions or `curate sql`
      stages.parquet           per stage: in, out, seconds
      recipe.yaml              the recipe that made it
      shards/                  optional resharded webdataset tars of the kept samples
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class PoolLayout:
    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def samples(self) -> Path:
        return self.root / "samples.parquet"

    @property
    def sample_files(self) -> Path:
        """The list of parquet files a pool uses in place (no samples.parquet of its own)."""
        return self.root / "sample_files.json"

    @property
    def ingest_report(self) -> Path:
        return self.root / "ingest_report.json"

    @property
    def uid_index(self) -> Path:
        """The pool's uids sorted in buckets (:mod:`curate.core.uid_index`), when it has them."""
        return self.root / "uid_index"

    @property
    def holdout(self) -> Path:
        """Held-out images of the pool's clean distribution (demo pools): HF image parquet."""
        return self.root / "holdout.parquet"

    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    def shard(self, index: int) -> Path:
        return self.shards_dir / shard_name(index)

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    def embeddings(self, name: str) -> EmbeddingLayout:
        return EmbeddingLayout(self.embeddings_dir / name)

    @property
    def results_dir(self) -> Path:
        return self.root / "results"


@dataclass(frozen=True)
class EmbeddingLayout:
    root: Path

    @property
    def image(self) -> Path:
        return self.root / "image.npy"

    @property
    def text(self) -> Path:
        return self.root / "text.npy"

    @property
    def clip_score(self) -> Path:
        return self.root / "clip_score.parquet"

    @property
    def meta(self) -> Path:
        return self.root / "meta.json"


@dataclass(frozen=True)
class SubsetLayout:
    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def uids_parquet(self) -> Path:
        return self.root / "uids.parquet"

    @property
    def uids_npy(self) -> Path:
        return self.root / "uids.npy"

    @property
    def decisions(self) -> Path:
        return self.root / "decisions.parquet"

    @property
    def stages(self) -> Path:
        return self.root / "stages.parquet"

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    @property
    def results_dir(self) -> Path:
        return self.root / "results"


def shard_name(index: int) -> str:
    return f"{index:05d}.tar"


def sample_key(shard_index: int, index_in_shard: int) -> str:
    """img2dataset's key: 5-digit shard number then 4-digit position (9 digits in all)."""
    return f"{shard_index:05d}{index_in_shard:04d}"
