"""The ingest driver: read a source, feed the pool writer, show progress, return the report."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.core.errors import InputNotFoundError
from curate.core.executor import Executor
from curate.core.pool_writer import PoolWriter
from curate.core.progress import progress_bar
from curate.ingest import load_source
from curate.ingest.base import ImageItems, IngestOptions, MetadataParts
from curate.ingest.detect import detect_format
from curate.ingest.hf_dataset import dataset_items


@dataclass(frozen=True)
class IngestResult:
    pool: Path
    format: str
    has_images: bool
    report: dict[str, Any]  # as in the pool's ingest_report.json
    seconds: float


def _input_signature(path: Path) -> list[tuple[str, int, int]]:
    """Names, sizes and mtimes of the input's top-level files: a rerun resumes only when the
    input is unchanged."""
    entries = [path] if path.is_file() else sorted(path.iterdir())
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in entries if p.is_file()]


def ingest(
    source: Path | str,
    out: Path | str,
    *,
    format: str | None = None,
    options: IngestOptions | None = None,
    name: str | None = None,
    samples_per_shard: int = 10_000,
    overwrite: bool = False,
    show_progress: bool = False,
    executor: Executor | None = None,
) -> IngestResult:
    """Make the pool ``out`` from ``source`` (format detected unless given).

    With an ``executor``, a source that splits into parts (img2dataset tars, parquet row
    blocks) is validated and written in parallel (:mod:`curate.ingest.parallel`); the pool is
    the same bytes as without one.
    """
    source, out = Path(source), Path(out)
    options = options or IngestOptions()
    if not source.exists():
        raise InputNotFoundError(f"{source} does not exist")
    fmt = format or detect_format(source)
    reader = load_source(fmt).read(source, options)
    record = {"type": fmt, "path": str(source.resolve()), **options.record()}
    return write_pool(
        reader,
        out,
        fmt=fmt,
        name=name or out.name,
        source_record=record,
        params={"input": _input_signature(source)},
        samples_per_shard=samples_per_shard,
        overwrite=overwrite,
        show_progress=show_progress,
        executor=executor,
    )


def ingest_hf_dataset(
    dataset: Any,
    out: Path | str,
    *,
    options: IngestOptions | None = None,
    name: str | None = None,
    samples_per_shard: int = 10_000,
    overwrite: bool = False,
    show_progress: bool = False,
    image_root: Path | str | None = None,
) -> IngestResult:
    """Make a pool from a ``datasets.Dataset`` object (e.g. loaded from local parquet files
    or an image folder with ``HF_DATASETS_OFFLINE=1``).

    Images the dataset holds only as file paths (an image folder loaded lazily) are read
    only inside ``image_root`` (the folder the dataset was loaded from), unless
    ``options.allow_outside_paths``."""
    out = Path(out)
    options = options or IngestOptions()
    label = name or out.name
    root = Path(image_root) if image_root is not None else None
    reader = dataset_items(
        dataset, options, source=label, where=f"dataset {label}", image_root=root
    )
    record = {
        "type": "hf-dataset",
        "fingerprint": getattr(dataset, "_fingerprint", None),
        "rows": len(dataset),
        **options.record(),
    }
    return write_pool(
        reader,
        out,
        fmt="hf-dataset",
        name=label,
        source_record=record,
        params={},
        samples_per_shard=samples_per_shard,
        overwrite=overwrite,
        show_progress=show_progress,
    )


def write_pool(
    reader: ImageItems | MetadataParts,
    out: Path,
    *,
    fmt: str,
    name: str,
    source_record: dict[str, Any],
    params: dict[str, Any],
    samples_per_shard: int,
    overwrite: bool,
    show_progress: bool,
    command: str = "ingest",
    executor: Executor | None = None,
) -> IngestResult:
    started = time.perf_counter()
    has_images = isinstance(reader, ImageItems)
    with PoolWriter(
        out,
        name=name,
        source=source_record,
        command=command,
        params=params,
        samples_per_shard=samples_per_shard,
        overwrite=overwrite,
        has_images=has_images,
    ) as writer:
        if executor is not None and isinstance(reader, ImageItems) and reader.parts:
            from curate.ingest.parallel import write_parts

            write_parts(
                reader,
                writer,
                executor,
                description=f"{command} {name}",
                show_progress=show_progress,
            )
        else:
            from curate.ingest.parallel import discard_parts

            discard_parts(writer.staging)  # left by an interrupted parallel run
            _write_in_order(reader, writer, f"{command} {name}", show_progress)
    return IngestResult(
        pool=out,
        format=fmt,
        has_images=has_images,
        report=writer.report,
        seconds=time.perf_counter() - started,
    )


def _write_in_order(
    reader: ImageItems | MetadataParts, writer: PoolWriter, description: str, show_progress: bool
) -> None:
    """The sequential path: every item through :meth:`PoolWriter.add`, in this process."""
    with progress_bar(reader.total, description, show_progress) as advance:
        if isinstance(reader, ImageItems):
            writer.source_stats = reader.source_stats
            for item in reader.items:
                writer.add(item)
                advance(1)
        else:
            for part in reader.parts:
                writer.add_table(part.table, where=part.where, embeddings=part.embeddings)
                advance(part.table.height)
