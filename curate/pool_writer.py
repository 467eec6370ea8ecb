"""Writing a pool: validate each incoming sample, pack images into webdataset shards,
collect the rows of ``samples.parquet``, and publish the directory atomically.

Sources (``curate.ingest.*``) yield :class:`SourceSample` or :class:`Skip`; the writer is
the only place that decides what a valid sample is, so every source treats bad input alike.

Crash safety: the pool is built in ``.<name>.partial`` beside the output and renamed into
place only when complete (manifest last). Each finished shard is recorded there, so a rerun
of the same command resumes after the last finished shard instead of starting over.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from webdataset import TarWriter

from curate.atomic import (
    exclusive_lock,
    publish_directory,
    staging_dir_for,
    write_json,
    write_parquet,
)
from curate.errors import UserInputError
from curate.images import BadImageError, inspect_image
from curate.layout import PoolLayout, sample_key
from curate.manifest import Manifest, produced_by
from curate.uid import is_valid_uid, make_uid

# Fixed tar member mtime so that the same input gives byte-identical shards.
SHARD_MTIME = 1_700_000_000
MAX_SKIP_EXAMPLES = 50
CORE_COLUMNS = ("uid", "text", "width", "height", "sha256", "source", "shard", "key", "image_ext")


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


class IngestError(UserInputError):
    """Input that cannot be ingested at all (not one bad row: a bad file or layout)."""


def _clean_caption(text: str | bytes | None) -> str:
    if text is None:
        raise ValueError("missing caption")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"caption is not valid UTF-8 ({error.reason} at byte {error.start})")
    text = text.strip()
    if not text:
        raise ValueError("empty caption")
    return text


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

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> PoolWriter:
        self._lock.__enter__()
        try:
            if self.out.exists() and not self.overwrite:
                raise FileExistsError(f"{self.out} already exists; pass --overwrite to replace it")
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
        for stale in self.layout.shards_dir.glob("*.tar*"):
            if int(stale.name[:5]) >= self._shard_index:
                stale.unlink()

    def _read_progress(self) -> dict[str, Any] | None:
        path = self._progress_path()
        if not path.is_file():
            return None
        progress = json.loads(path.read_text("utf-8"))
        if progress.get("fingerprint") != self._fingerprint():
            return None  # staging from a different command or input: start over
        return progress

    def _fingerprint(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "params": self.params,
            "samples_per_shard": self.samples_per_shard,
        }

    def _progress_record(self, shards_done: int, samples_done: int) -> dict[str, Any]:
        return {
            "fingerprint": self._fingerprint(),
            "shards_done": shards_done,
            "samples_done": samples_done,
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
        if isinstance(item, Skip):
            self.skip(item.where, item.reason)
            return False
        try:
            text = _clean_caption(item.text)
            if item.image is None:
                raise BadImageError("no image bytes")
            info = inspect_image(item.image)
        except ValueError as error:  # BadImageError is a ValueError
            self.skip(item.where, str(error))
            return False
        uid = item.uid or make_uid(item.source, item.where)
        if not is_valid_uid(uid):
            self.skip(item.where, f"invalid uid {uid!r}")
            return False
        if uid in self._seen_uids:
            self.skip(item.where, f"duplicate uid {uid}")
            return False
        self._seen_uids.add(uid)
        index = self.accepted
        self.accepted += 1
        if index < self._resume_from:
            return True  # already stored in a finished shard by an earlier run
        shard_index, position = divmod(index, self.samples_per_shard)
        key = sample_key(shard_index, position)
        row = {
            "uid": uid,
            "text": text,
            "width": info.width,
            "height": info.height,
            "sha256": info.sha256,
            "source": item.source,
            "shard": f"shards/{shard_index:05d}.tar",
            "key": key,
            "image_ext": info.extension,
            **{k: v for k, v in item.extras.items() if k not in CORE_COLUMNS},
        }
        member_json = {k: v for k, v in row.items() if k not in ("shard", "image_ext")}
        member_json["caption"] = text
        tar = self._open_tar(shard_index)
        tar.write(
            {
                "__key__": key,
                info.extension: item.image,
                "txt": text.encode("utf-8"),
                "json": json.dumps(member_json, sort_keys=True, default=str).encode("utf-8"),
            }
        )
        self._rows.append(row)
        if position == self.samples_per_shard - 1:
            self._close_tar(complete=True)
        return True

    # -- shards ------------------------------------------------------------------------
    def _open_tar(self, shard_index: int) -> TarWriter:
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
            self.staging / "rows" / f"{self._shard_index:05d}.parquet",
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
            samples = pl.concat([pl.read_parquet(p) for p in parts], how="diagonal_relaxed")
        else:
            samples = pl.DataFrame(schema={c: pl.String for c in CORE_COLUMNS})
        write_parquet(self.layout.samples, samples)
        report = {
            "accepted": self.accepted,
            "skipped": sum(self.skips.values()),
            "skipped_by_reason": dict(self.skips.most_common()),
            "skip_examples": self.skip_examples,
        }
        write_json(self.layout.ingest_report, report)
        import shutil

        shutil.rmtree(self.staging / "rows")
        self._progress_path().unlink()
        Manifest(
            name=self.name,
            kind="pool",
            source=self.source,
            sample_count=samples.height,
            has_images=True,
            produced_by=produced_by(self.command, **self.params),
            extra={"ingest": {k: report[k] for k in ("accepted", "skipped")}, **self.extra},
        ).write(self.staging)
        publish_directory(self.staging, self.out, overwrite=self.overwrite)
        self.report = report
