"""Writing a pool: validate each incoming sample, pack images into webdataset shards,
collect the rows of ``samples.parquet``, and publish the directory atomically.

Sources (``curate.ingest.*``) yield :class:`SourceSample` or :class:`Skip`; the writer is
the only place that decides what a valid sample is, so every source treats bad input alike.

Metadata-only pools (``has_images=False``, e.g. DataComp's parquet without images) take
whole tables instead: :meth:`PoolWriter.add_table` validates a part with polars expressions
and appends its precomputed embeddings, so millions of rows never pass through Python one
by one.

Crash safety: the pool is built in ``.<name>.partial`` beside the output and renamed into
place only when complete (manifest last). Each finished shard (or table part) is recorded
there, so a rerun of the same command resumes after it instead of starting over.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import polars as pl

from curate.core.atomic import (
    atomic_path,
    exclusive_lock,
    publish_directory,
    staging_dir_for,
    write_json,
    write_parquet,
)
from curate.core.embedding_store import unit_rows, write_clip_score
from curate.core.errors import OutputExistsError, UserInputError
from curate.core.images import BadImageError, ImageInfo, inspect_image
from curate.core.layout import PoolLayout, sample_key
from curate.core.manifest import Manifest, produced_by
from curate.core.npy_appender import NpyAppender, compact_rows
from curate.core.uid import is_valid_uid, make_uid

if TYPE_CHECKING:  # webdataset imports torch (seconds): loaded only to write shards
    from webdataset import TarWriter

# Fixed tar member mtime so that the same input gives byte-identical shards.
SHARD_MTIME = 1_700_000_000
MAX_SKIP_EXAMPLES = 50
CORE_COLUMNS = ("uid", "text", "width", "height", "sha256", "source", "shard", "key", "image_ext")
CORE_SCHEMA = {
    "uid": pl.String,
    "text": pl.String,
    "width": pl.Int64,
    "height": pl.Int64,
    "sha256": pl.String,
    "source": pl.String,
    "shard": pl.String,
    "key": pl.String,
    "image_ext": pl.String,
}
EMBEDDING_CHUNK_ROWS = 65_536
UID_PATTERN = r"^[0-9a-f]{32}$"


@dataclass(frozen=True)
class SourceSample:
    """One sample as a source yields it, before validation."""

    source: str  # the source's name, e.g. "cifar10" or the input folder's name
    where: str  # file and row, for error messages: "train.parquet row 17"
    text: str | bytes | None
    image: bytes | None = None
    uid: str | None = None  # when the source already has one (DataComp, img2dataset re-ingest)
    extras: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Skip:
    """Input a source could not turn into a sample (unreadable file, failed download, ...)."""

    where: str
    reason: str


class RowChunks(Protocol):
    """A 2-d array read in row order, one block at a time (an ``.npz`` member, a memmap...)."""

    @property
    def rows(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def chunks(self, rows_per_chunk: int) -> Iterator[np.ndarray]: ...


@dataclass(frozen=True)
class PartEmbeddings:
    """Precomputed embeddings of one table part, row-aligned with it (before validation)."""

    image: RowChunks
    text: RowChunks | None
    meta: Mapping[str, Any]  # model identity for meta.json: arch, pretrained, ...


class IngestError(UserInputError):
    """Input that cannot be ingested at all (not one bad row: a bad file or layout)."""


# Captions longer than this are skipped, not stored: real alt-text is far shorter (CLIP reads
# 77 tokens, a few hundred characters), and one runaway cell must not bloat samples.parquet.
MAX_CAPTION_CHARS = 10_000
TOO_LONG_CAPTION = f"caption longer than {MAX_CAPTION_CHARS:,} characters"


def _clean_caption(text: str | bytes | None) -> str:
    if text is None:
        raise ValueError("missing caption")
    if not isinstance(text, (str, bytes)):
        raise ValueError(f"caption is {type(text).__name__}, expected text")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(
                f"caption is not valid UTF-8 ({error.reason} at byte {error.start})"
            ) from None
    text = text.strip()
    if not text:
        raise ValueError("empty caption")
    if len(text) > MAX_CAPTION_CHARS:
        raise ValueError(f"{TOO_LONG_CAPTION}: {len(text):,}")
    return text


@dataclass(frozen=True)
class ValidSample:
    """A sample that passed validation, before it has a place (shard, key) in a pool."""

    uid: str
    text: str  # cleaned caption
    info: ImageInfo
    source: str
    image: bytes
    extras: Mapping[str, Any]


def validate_sample(item: SourceSample) -> ValidSample:
    """Check one sample (caption, image, uid); a ValueError's message is the skip reason.
    Duplicate uids are the writer's concern: this sees one sample."""
    text = _clean_caption(item.text)
    if item.image is None:
        raise BadImageError("no image bytes")
    info = inspect_image(item.image)
    uid = item.uid or make_uid(item.source, item.where)
    if not is_valid_uid(uid):
        raise ValueError(f"invalid uid {uid!r}")
    return ValidSample(uid, text, info, item.source, item.image, item.extras)


def shard_entry(
    sample: ValidSample, shard_index: int, position: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The samples.parquet row and the webdataset tar member of a sample at its place."""
    key = sample_key(shard_index, position)
    info = sample.info
    row = {
        "uid": sample.uid,
        "text": sample.text,
        "width": info.width,
        "height": info.height,
        "sha256": info.sha256,
        "source": sample.source,
        "shard": f"shards/{shard_index:05d}.tar",
        "key": key,
        "image_ext": info.extension,
        **{k: v for k, v in sample.extras.items() if k not in CORE_COLUMNS},
    }
    member_json = {k: v for k, v in row.items() if k not in ("shard", "image_ext")}
    member_json["caption"] = sample.text
    member = {
        "__key__": key,
        info.extension: sample.image,
        "txt": sample.text.encode("utf-8"),
        "json": json.dumps(member_json, sort_keys=True, default=str).encode("utf-8"),
    }
    return row, member


def shard_rows_path(staging: Path, shard_index: int) -> Path:
    """Where a finished shard's samples.parquet rows wait until the pool is published."""
    return staging / "rows" / f"{shard_index:05d}.parquet"


def write_shard(staging: Path, shard_index: int, samples: Iterable[ValidSample]) -> int:
    """Write one whole shard of the pool being built in ``staging`` (a :class:`PoolWriter`'s
    staging directory): the same tar and rows that :meth:`PoolWriter.add` writes one sample
    at a time, so that workers can write shards in parallel. Returns the sample count."""
    layout = PoolLayout(staging)
    shard = layout.shard(shard_index)
    partial = shard.with_name(f"{shard.name}.partial-{os.getpid()}")
    rows = []
    with open(partial, "wb") as handle:
        from webdataset import TarWriter

        tar = TarWriter(handle, encoder=False, mtime=SHARD_MTIME)
        for position, sample in enumerate(samples):
            row, member = shard_entry(sample, shard_index, position)
            tar.write(member)
            rows.append(row)
        tar.close()
    os.replace(partial, shard)
    write_parquet(
        shard_rows_path(staging, shard_index), pl.DataFrame(rows, infer_schema_length=None)
    )
    return len(rows)


class PoolWriter:
    """Context manager that builds one pool directory.

    >>> with PoolWriter(out, name="demo", source={"type": "parquet"}, command="ingest") as w:
    ...     for item in source: w.add(item)
    """

    def __init__(
        self,
        out: Path,
        *,
        name: str,
        source: dict[str, Any],
        command: str,
        params: dict[str, Any] | None = None,
        samples_per_shard: int = 10_000,
        overwrite: bool = False,
        extra: dict[str, Any] | None = None,
        has_images: bool = True,
    ) -> None:
        self.out = Path(out)
        self.name = name
        self.source = source
        self.command = command
        self.params = params or {}
        self.samples_per_shard = samples_per_shard
        self.overwrite = overwrite
        # More manifest ``extra`` entries (e.g. a demo pool's holdout); may be set before exit.
        self.extra: dict[str, Any] = dict(extra or {})
        self.has_images = has_images
        self.source_stats: dict[str, Any] = {}  # what the source reports (img2dataset's stats)
        self.staging = staging_dir_for(self.out)
        self.layout = PoolLayout(self.staging)
        self.skips: Counter[str] = Counter()
        self.skip_examples: list[dict[str, str]] = []
        self.accepted = 0
        self._resume_from = 0
        self._rows: list[dict[str, Any]] = []
        self._tar: TarWriter | None = None
        self._tar_handle: Any = None
        self._shard_index = 0
        self._seen_uids: set[str] = set()
        self._lock = exclusive_lock(self.out)
        # metadata-only pools: table parts and the embedding files they append to
        self._parts_added = 0
        self._parts_resumed = 0
        self._rows_written = 0
        self._embedding_names: list[str] | None = None
        self._embedding_meta: dict[str, dict[str, Any]] = {}
        self._sinks: dict[tuple[str, str], NpyAppender] = {}

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> PoolWriter:
        self._lock.__enter__()
        try:
            if self.out.exists() and not self.overwrite:
                raise OutputExistsError(
                    f"{self.out} already exists; pass --overwrite to replace it"
                )
            self._prepare_staging()
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._finish()
            else:
                self._close_tar(complete=False)
                for sink in self._sinks.values():
                    sink.close()
        finally:
            self._lock.__exit__(exc_type, exc, tb)

    def _progress_path(self) -> Path:
        return self.staging / "progress.json"

    def _prepare_staging(self) -> None:
        progress = self._read_progress()
        if progress is None:
            if self.staging.exists():
                import shutil

                shutil.rmtree(self.staging)
            (self.staging / "rows").mkdir(parents=True)
            self.layout.shards_dir.mkdir()
            write_json(self._progress_path(), self._progress_record(0, 0))
            return
        self._shard_index = progress["shards_done"]
        self._resume_from = progress["samples_done"]
        self._parts_resumed = progress.get("parts_done", 0)
        self._rows_written = progress.get("rows_done", 0)
        self._embedding_names = progress.get("embeddings")
        for stale in self.layout.shards_dir.glob("*.tar*"):
            if int(stale.name[:5]) >= self._shard_index:
                stale.unlink()
        for stale in (self.staging / "rows").glob("part-*.parquet"):
            if int(stale.stem[5:]) >= self._parts_resumed:
                stale.unlink()

    def _read_progress(self) -> dict[str, Any] | None:
        path = self._progress_path()
        if not path.is_file():
            return None
        progress = json.loads(path.read_text("utf-8"))
        # compared as JSON, the form it was stored in (tuples come back as lists)
        fingerprint = json.loads(json.dumps(self._fingerprint(), sort_keys=True, default=str))
        if progress.get("fingerprint") != fingerprint:
            return None  # staging from a different command or input: start over
        return progress

    def _fingerprint(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "params": self.params,
            "samples_per_shard": self.samples_per_shard,
            "has_images": self.has_images,
        }

    def _progress_record(self, shards_done: int, samples_done: int) -> dict[str, Any]:
        return {
            "fingerprint": self._fingerprint(),
            "shards_done": shards_done,
            "samples_done": samples_done,
            "parts_done": self._parts_added,
            "rows_done": self._rows_written,
            "embeddings": self._embedding_names,
        }

    # -- adding samples ----------------------------------------------------------------
    def extend(self, items: Iterable[SourceSample | Skip]) -> None:
        for item in items:
            self.add(item)

    def skip(self, where: str, reason: str) -> None:
        self.skips[reason.split(":")[0]] += 1
        if len(self.skip_examples) < MAX_SKIP_EXAMPLES:
            self.skip_examples.append({"where": where, "reason": reason})

    def add(self, item: SourceSample | Skip) -> bool:
        """Validate and store one sample; returns False when it was skipped."""
        if not self.has_images:
            raise TypeError("a metadata-only pool (has_images=False) takes tables: use add_table")
        if isinstance(item, Skip):
            self.skip(item.where, item.reason)
            return False
        try:
            sample = validate_sample(item)
        except ValueError as error:  # BadImageError is a ValueError
            self.skip(item.where, str(error))
            return False
        if sample.uid in self._seen_uids:
            self.skip(item.where, f"duplicate uid {sample.uid}")
            return False
        self._seen_uids.add(sample.uid)
        index = self.accepted
        self.accepted += 1
        if index < self._resume_from:
            return True  # already stored in a finished shard by an earlier run
        shard_index, position = divmod(index, self.samples_per_shard)
        row, member = shard_entry(sample, shard_index, position)
        self._open_tar(shard_index).write(member)
        self._rows.append(row)
        if position == self.samples_per_shard - 1:
            self._close_tar(complete=True)
        return True

    @property
    def shards_done(self) -> int:
        """Complete shards in the staging directory (from an earlier run when resuming)."""
        return self._shard_index

    def shards_written(self, shards_done: int, samples_done: int) -> None:
        """Record shards that :func:`write_shard` wrote into ``staging`` outside :meth:`add`
        (by parallel workers): the first ``shards_done`` are complete, holding
        ``samples_done`` samples. A resumed run keeps them."""
        self._shard_index = shards_done
        self.accepted = samples_done
        write_json(self._progress_path(), self._progress_record(shards_done, samples_done))

    # -- metadata-only pools -------------------------------------------------------------
    def add_table(
        self,
        table: pl.DataFrame,
        *,
        where: str,
        embeddings: Mapping[str, PartEmbeddings] | None = None,
    ) -> int:
        """Validate and store one part of a metadata-only pool; returns the rows kept.

        ``table`` has ``uid`` and ``text`` and any other columns (url, width, height, sha256,
        source, scores...); ``where`` names the input it came from, for messages. Rows with
        an invalid uid or a missing/empty caption are counted skips; duplicate uids are
        removed (first one kept) when the pool is finished. ``embeddings`` (by set name) are
        row-aligned with ``table`` and go to ``embeddings/<name>/`` L2-normalised float16.
        """
        if self.has_images:
            raise TypeError("add_table is for metadata-only pools (PoolWriter(has_images=False))")
        missing = [c for c in ("uid", "text") if c not in table.columns]
        if missing:
            raise IngestError(f"{where}: missing column(s) {', '.join(missing)}")
        embeddings = dict(embeddings or {})
        self._check_embedding_names(where, embeddings, table.height)
        keep = self._validate_table(table, where)
        part_index = self._parts_added
        self._parts_added += 1
        kept = int(keep.sum())
        for name, part in embeddings.items():
            self._embedding_meta[name] = dict(part.meta)
        if part_index < self._parts_resumed:
            return kept  # stored by an earlier run; validated again only to count skips
        rows = _core_typed(
            table.filter(pl.Series(keep))
            .with_columns(pl.col("text").str.strip_chars())
            .drop("shard", "key", "image_ext", strict=False)  # no images: nothing to point at
        )
        write_parquet(self.staging / "rows" / f"part-{part_index:05d}.parquet", rows)
        for name, part in embeddings.items():
            for modality, source in (("image", part.image), ("text", part.text)):
                if source is not None:
                    self._append_embeddings(name, modality, source, keep)
        for sink in self._sinks.values():
            sink.flush()
        self._rows_written += kept
        write_json(self._progress_path(), self._progress_record(0, 0))
        return kept

    def _check_embedding_names(
        self, where: str, embeddings: Mapping[str, PartEmbeddings], rows: int
    ) -> None:
        names = sorted(embeddings)
        if self._embedding_names is None:
            self._embedding_names = names
        elif names != self._embedding_names:
            raise IngestError(
                f"{where}: has embeddings {names or 'none'} but the parts before it had "
                f"{self._embedding_names or 'none'}; every part needs the same embedding sets "
                "so that rows stay aligned"
            )
        for name, part in embeddings.items():
            for modality, source in (("image", part.image), ("text", part.text)):
                if source is not None and source.rows != rows:
                    raise IngestError(
                        f"{where}: {name} {modality} embeddings have {source.rows} rows but the "
                        f"table has {rows}; they must be row-aligned"
                    )

    def _validate_table(self, table: pl.DataFrame, where: str) -> np.ndarray:
        """Keep-mask of the valid rows; the others are counted as skips (vectorised)."""
        if table.schema["text"] != pl.String:
            raise IngestError(
                f"{where}: column 'text' is {table.schema['text']}, expected strings (UTF-8)"
            )
        uid = pl.col("uid").cast(pl.String)
        reason = (
            pl.when(uid.is_null() | ~uid.str.contains(UID_PATTERN))
            .then(pl.format("invalid uid: {} (expected 32 lowercase hex characters)", uid))
            .when(pl.col("text").is_null())
            .then(pl.lit("missing caption"))
            .when(pl.col("text").str.strip_chars() == "")
            .then(pl.lit("empty caption"))
            .when(pl.col("text").str.strip_chars().str.len_chars() > MAX_CAPTION_CHARS)
            .then(pl.lit(TOO_LONG_CAPTION))
            .otherwise(None)
            .alias("reason")
        )
        reasons = table.select(reason).with_row_index("row")
        bad = reasons.filter(pl.col("reason").is_not_null())
        for row, text in bad.head(MAX_SKIP_EXAMPLES).iter_rows():
            self.skip(f"{where} row {row}", text or "invalid uid: null")
        if bad.height > MAX_SKIP_EXAMPLES:
            rest = bad.slice(MAX_SKIP_EXAMPLES).select(
                pl.col("reason").fill_null("invalid uid").str.split(":").list.first()
            )
            for (key,), count in rest.group_by("reason").len().iter_rows():
                self.skips[key] += count
        return reasons["reason"].is_null().to_numpy()

    def _append_embeddings(
        self, name: str, modality: str, source: RowChunks, keep: np.ndarray
    ) -> None:
        sink = self._sinks.get((name, modality))
        if sink is None:
            path = self.layout.embeddings(name).root / f"{modality}.npy"
            sink = NpyAppender(path, source.dim, rows=self._rows_written)
            self._sinks[(name, modality)] = sink
        start = 0
        for block in source.chunks(EMBEDDING_CHUNK_ROWS):
            block_keep = keep[start : start + len(block)]
            start += len(block)
            sink.append(unit_rows(np.asarray(block)[block_keep]))

    def _finish_embeddings(
        self, samples: Path, keep: np.ndarray | None, manifest: Manifest
    ) -> None:
        for sink in self._sinks.values():
            sink.close()
        for name in self._embedding_names or []:
            layout = self.layout.embeddings(name)
            for path in (layout.image, layout.text):
                if path.is_file() and keep is not None:
                    compact_rows(path, keep)
            if not layout.image.is_file():  # no rows at all
                continue
            rows = np.load(layout.image, mmap_mode="r").shape[0]
            if layout.text.is_file():
                write_clip_score(layout, samples)
            write_json(
                layout.meta,
                {
                    **self._embedding_meta.get(name, {}),
                    "name": name,
                    "rows": rows,
                    "dtype": "float16",
                    "normalized": True,
                    "pool": {
                        "name": self.name,
                        "root": str(self.out.resolve()),
                        "created": manifest.created,
                    },
                    "produced_by": produced_by(self.command, **self.params),
                },
            )

    def _duplicate_rows(self, rows: pl.LazyFrame) -> np.ndarray | None:
        """Keep-mask without the second and later rows of each uid; None when all are unique."""
        flagged = (
            rows.select("uid")
            .with_row_index("row")
            .filter(~pl.col("uid").is_first_distinct())
            .collect()
        )
        if flagged.height == 0:
            return None
        for row, uid in flagged.iter_rows():
            self.skip(f"samples row {row}", f"duplicate uid: {uid}")
        total = rows.select(pl.len()).collect().item()
        keep = np.ones(total, dtype=bool)
        keep[flagged["row"].to_numpy()] = False
        return keep

    # -- shards ------------------------------------------------------------------------
    def _open_tar(self, shard_index: int) -> TarWriter:
        from webdataset import TarWriter

        if self._tar is None:
            self._shard_index = shard_index
            partial = self.layout.shard(shard_index).with_suffix(".tar.partial")
            self._tar_handle = open(partial, "wb")
            self._tar = TarWriter(self._tar_handle, encoder=False, mtime=SHARD_MTIME)
        return self._tar

    def _close_tar(self, complete: bool) -> None:
        if self._tar is None:
            return
        self._tar.close()  # closes the handle too
        self._tar = None
        if not complete:
            return
        shard = self.layout.shard(self._shard_index)
        os.replace(shard.with_suffix(".tar.partial"), shard)
        write_parquet(
            shard_rows_path(self.staging, self._shard_index),
            pl.DataFrame(self._rows, infer_schema_length=None),
        )
        self._rows = []
        self._shard_index += 1
        write_json(self._progress_path(), self._progress_record(self._shard_index, self.accepted))

    # -- publishing --------------------------------------------------------------------
    def _finish(self) -> None:
        self._close_tar(complete=True)
        parts = sorted((self.staging / "rows").glob("*.parquet"))
        if parts:
            rows = pl.concat([pl.scan_parquet(p) for p in parts], how="diagonal_relaxed")
        else:
            rows = pl.LazyFrame(schema=CORE_SCHEMA)
        keep = None if self.has_images else self._duplicate_rows(rows)
        if keep is not None:
            rows = rows.filter(pl.Series(keep))
        with atomic_path(self.layout.samples) as tmp:
            rows.sink_parquet(tmp, compression="zstd")
        sample_count = pl.scan_parquet(self.layout.samples).select(pl.len()).collect().item()
        report = {
            "accepted": sample_count,
            "skipped": sum(self.skips.values()),
            "skipped_by_reason": dict(self.skips.most_common()),
            "skip_examples": self.skip_examples,
        }
        if self.source_stats:
            report["source_stats"] = self.source_stats
        manifest = Manifest(
            name=self.name,
            kind="pool",
            source=self.source,
            sample_count=sample_count,
            has_images=self.has_images,
            produced_by=produced_by(self.command, **self.params),
            extra={"ingest": {k: report[k] for k in ("accepted", "skipped")}, **self.extra},
        )
        if not self.has_images:
            self._finish_embeddings(self.layout.samples, keep, manifest)
            self.layout.shards_dir.rmdir()
        write_json(self.layout.ingest_report, report)
        import shutil

        shutil.rmtree(self.staging / "rows")
        self._progress_path().unlink()
        manifest.write(self.staging)
        publish_directory(self.staging, self.out, overwrite=self.overwrite)
        self.report = report


def _core_typed(rows: pl.DataFrame) -> pl.DataFrame:
    """Core columns with their fixed types (missing ones as nulls), extra columns after."""
    core = [
        (pl.col(name).cast(dtype) if name in rows.columns else pl.lit(None, dtype)).alias(name)
        for name, dtype in CORE_SCHEMA.items()
    ]
    extras = [c for c in rows.columns if c not in CORE_SCHEMA]
    return rows.select(*core, *extras)
