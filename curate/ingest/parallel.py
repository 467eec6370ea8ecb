"""Parallel ingest of an image source that lists its parts (``ImageItems.parts``).

Two passes, both run on an :mod:`~curate.core.executor`, both writing files that depend only on
the input:

1. **validate**, one task per source part (an input tar, a block of parquet rows): every
   item is checked as :meth:`PoolWriter.add` checks it (caption, image decode, uid, repeated
   uids within the part); the valid samples go to ``parts/NNNNN.parquet`` in the pool's
   staging directory and the skips to ``parts/NNNNN.json`` (written last: a rerun skips the
   parts that have one).
2. **write**, one task per output shard: the parent drops the uids an earlier part already
   had (the first one is kept, as the sequential writer keeps it), numbers the samples in
   input order, and each task reads samples ``i*S .. (i+1)*S - 1`` from the part files and
   writes shard ``i`` with :func:`~curate.core.pool_writer.write_shard`.

So the pool is byte for byte the one the sequential writer makes (shards, keys,
samples.parquet, ingest_report.json), whichever executor ran and however the input was
split. The price is one extra write and read of every image (the part files), deleted
before the pool is published. The parent holds every sample's uid once (for the repeated
uid check, as the sequential writer does): about 100 bytes a sample.
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curate.core.atomic import atomic_path, write_json
from curate.core.executor import Executor
from curate.core.images import ImageInfo
from curate.core.pool_writer import (
    MAX_SKIP_EXAMPLES,
    PoolWriter,
    Skip,
    ValidSample,
    validate_sample,
    write_shard,
)
from curate.core.progress import progress_bar
from curate.ingest.base import ImageItems, ItemsPart

PARTS_DIR = "parts"
ROW_GROUP = 256  # samples per row group of a part file: a shard task reads only its groups
PART_SCHEMA = pa.schema(
    [
        ("position", pa.int64()),  # the item's index within its source part
        ("where", pa.string()),
        ("uid", pa.string()),
        ("text", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("sha256", pa.string()),
        ("source", pa.string()),
        ("image_ext", pa.string()),
        ("image", pa.binary()),
        # the source's extra columns exactly as Python values (dates, nested dicts, ints vs
        # floats), so that samples.parquet and the tar's JSON come out as the sequential
        # writer's; a private file of this run, never read by anything else
        ("extras", pa.binary()),
    ]
)


@dataclass(frozen=True)
class _PartTask:
    part: ItemsPart
    samples_file: Path  # parts/NNNNN.parquet
    summary_file: Path  # parts/NNNNN.json


@dataclass(frozen=True)
class _ShardTask:
    staging: Path
    shard_index: int
    sources: tuple[tuple[Path, np.ndarray], ...]  # (part file, its rows), in sample order


def write_parts(
    reader: ImageItems,
    writer: PoolWriter,
    executor: Executor,
    *,
    description: str,
    show_progress: bool,
) -> None:
    """Fill ``writer``'s staging directory with every shard of ``reader``'s parts."""
    writer.source_stats = reader.source_stats
    parts_dir = writer.staging / PARTS_DIR
    parts_dir.mkdir(exist_ok=True)
    tasks = [
        _PartTask(part, parts_dir / f"{i:05d}.parquet", parts_dir / f"{i:05d}.json")
        for i, part in enumerate(reader.parts)
    ]
    summaries = _validated_parts(tasks, executor, reader.total, description, show_progress)
    samples = _numbered_samples(tasks)
    writer.skips, writer.skip_examples = _merged_skips(summaries, samples)
    samples = samples.filter(pl.col("first"))
    per_shard = writer.samples_per_shard
    shard_count = -(-samples.height // per_shard)
    shard_tasks = [
        _shard_task(writer.staging, i, samples.slice(i * per_shard, per_shard), tasks)
        for i in range(writer.shards_done, shard_count)
    ]
    shards_bar = progress_bar(
        shard_count, f"{description} shards", show_progress, completed=writer.shards_done
    )
    with shards_bar as advance:
        for task, _ in zip(shard_tasks, executor.map(_write_shard, shard_tasks), strict=True):
            done = task.shard_index + 1
            writer.shards_written(done, min(done * per_shard, samples.height))
            advance(1)
    discard_parts(writer.staging)


def discard_parts(staging: Path) -> None:
    """Remove the part files (before publishing, or when a sequential run takes over)."""
    shutil.rmtree(staging / PARTS_DIR, ignore_errors=True)


def _validated_parts(
    tasks: list[_PartTask],
    executor: Executor,
    total: int | None,
    description: str,
    show_progress: bool,
) -> list[dict[str, Any]]:
    """Every part's skip summary, validating the parts an earlier run did not finish."""
    summaries: dict[int, dict[str, Any]] = {}
    pending = []
    for index, task in enumerate(tasks):
        if task.summary_file.is_file() and task.samples_file.is_file():
            summaries[index] = json.loads(task.summary_file.read_text("utf-8"))
        else:
            pending.append(index)
    done = sum(s["items"] for s in summaries.values())
    with progress_bar(total, description, show_progress, completed=done) as advance:
        results = executor.map(_validate_part, [tasks[i] for i in pending])
        for index, summary in zip(pending, results, strict=True):
            summaries[index] = summary
            advance(summary["items"])
    return [summaries[i] for i in range(len(tasks))]


def _validate_part(task: _PartTask) -> dict[str, Any]:
    """Validate one part's items; write its valid samples and its skip summary."""
    reasons: dict[str, list[Any]] = {}  # key -> [key, count, first position]
    examples: list[list[Any]] = []  # [position, where, reason], the first ones
    seen: set[str] = set()
    batch: list[dict[str, Any]] = []
    items = 0
    with atomic_path(task.samples_file) as tmp, pq.ParquetWriter(tmp, PART_SCHEMA) as out:
        for position, item in enumerate(task.part.items()):
            items += 1
            reason = _check(item, seen, batch, position)
            if reason is not None:
                key = reason.split(":")[0]  # as PoolWriter.skip counts it
                reasons.setdefault(key, [key, 0, position])[1] += 1
                if len(examples) < MAX_SKIP_EXAMPLES:
                    examples.append([position, item.where, reason])
            if len(batch) == ROW_GROUP:  # one row group per write
                out.write_table(pa.Table.from_pylist(batch, PART_SCHEMA))
                batch = []
        if batch:
            out.write_table(pa.Table.from_pylist(batch, PART_SCHEMA))
    summary = {
        "items": items,
        "accepted": len(seen),
        "reasons": list(reasons.values()),
        "examples": examples,
    }
    write_json(task.summary_file, summary)
    return summary


def _check(item: Any, seen: set[str], batch: list[dict[str, Any]], position: int) -> str | None:
    """The skip reason of one item, or None after adding it to ``batch``."""
    if isinstance(item, Skip):
        return item.reason
    try:
        sample = validate_sample(item)
    except ValueError as error:  # BadImageError is a ValueError
        return str(error)
    if sample.uid in seen:
        return f"duplicate uid {sample.uid}"
    seen.add(sample.uid)
    batch.append(
        {
            "position": position,
            "where": item.where,
            "uid": sample.uid,
            "text": sample.text,
            "width": sample.info.width,
            "height": sample.info.height,
            "sha256": sample.info.sha256,
            "source": sample.source,
            "image_ext": sample.info.extension,
            "image": sample.image,
            "extras": pickle.dumps(dict(sample.extras), protocol=pickle.HIGHEST_PROTOCOL),
        }
    )
    return None


def _numbered_samples(tasks: list[_PartTask]) -> pl.DataFrame:
    """(part, row, position, where, uid, first) of every valid sample, in input order;
    ``first`` is False for a uid an earlier part already had."""
    frames = [
        pl.scan_parquet(task.samples_file)
        .select("position", "where", "uid")
        .with_row_index("row")
        .with_columns(pl.lit(index, pl.Int64).alias("part"))
        for index, task in enumerate(tasks)
    ]
    if not frames:
        schema = {"row": pl.UInt32, "position": pl.Int64, "where": pl.String, "uid": pl.String}
        return pl.DataFrame(schema={**schema, "part": pl.Int64, "first": pl.Boolean})
    return (
        pl.concat(frames).with_columns(pl.col("uid").is_first_distinct().alias("first")).collect()
    )


def _merged_skips(
    summaries: list[dict[str, Any]], samples: pl.DataFrame
) -> tuple[Counter[str], list[dict[str, str]]]:
    """The skip counts (keys in order of first occurrence) and first examples, as the
    sequential writer would have counted them over the whole input."""
    repeated = samples.filter(~pl.col("first"))
    events: list[tuple[int, int, str, str]] = [
        (part, position, where, f"duplicate uid {uid}")
        for part, position, where, uid in repeated.select("part", "position", "where", "uid")
        .iter_rows()
    ]  # fmt: skip
    firsts: dict[str, tuple[int, int]] = {}
    counts: Counter[str] = Counter()
    for part, summary in enumerate(summaries):
        for key, count, position in summary["reasons"]:
            firsts[key] = min(firsts.get(key, (part, position)), (part, position))
            counts[key] += count
    for part, position, _, reason in events:
        firsts[reason] = min(firsts.get(reason, (part, position)), (part, position))
        counts[reason] += 1
    ordered = Counter({key: counts[key] for key in sorted(firsts, key=firsts.__getitem__)})
    examples = sorted(
        [(part, p, w, r) for part, s in enumerate(summaries) for p, w, r in s["examples"]] + events
    )[:MAX_SKIP_EXAMPLES]
    return ordered, [{"where": where, "reason": reason} for _, _, where, reason in examples]


def _shard_task(
    staging: Path, shard_index: int, samples: pl.DataFrame, tasks: list[_PartTask]
) -> _ShardTask:
    sources = tuple(
        (tasks[part].samples_file, rows["row"].to_numpy())
        for (part,), rows in samples.group_by("part", maintain_order=True)
    )
    return _ShardTask(staging, shard_index, sources)


def _write_shard(task: _ShardTask) -> int:
    return write_shard(task.staging, task.shard_index, _read_samples(task.sources))


def _read_samples(sources: tuple[tuple[Path, np.ndarray], ...]) -> Iterator[ValidSample]:
    for file, rows in sources:
        parquet = pq.ParquetFile(file)
        first_group = int(rows.min()) // ROW_GROUP
        groups = range(first_group, int(rows.max()) // ROW_GROUP + 1)
        table = parquet.read_row_groups(list(groups)).take(rows - first_group * ROW_GROUP)
        for record in table.to_pylist():
            yield _valid_sample(record)


def _valid_sample(record: dict[str, Any]) -> ValidSample:
    info = ImageInfo(record["width"], record["height"], record["image_ext"], record["sha256"])
    extras = pickle.loads(record["extras"])
    return ValidSample(
        record["uid"], record["text"], info, record["source"], record["image"], extras
    )
