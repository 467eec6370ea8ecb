"""``curate download``: fetch the images of a metadata-only pool (or of a candidate pool made
from one) with img2dataset, then ingest them as an image pool that keeps the original uids.

Steps, all resumable: the rows to fetch (uid, url, text and scalar metadata such as CLIP
scores) are written to ``.<out>.download/urls.parquet``; img2dataset downloads them into
``.<out>.download/images/`` (webdataset; its incremental mode skips finished shards on a
rerun) with ``uid`` saved beside each image; the img2dataset source ingests that folder,
counting failed downloads as skips. The work folder is removed once the pool is complete.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import polars as pl

from curate.core.atomic import exclusive_lock, write_json, write_parquet
from curate.core.errors import OutputExistsError, UserInputError
from curate.core.manifest import read_manifest
from curate.core.pool import Pool
from curate.ingest import load_source
from curate.ingest.base import IngestOptions
from curate.ingest.run import IngestResult, write_pool

# Columns img2dataset writes itself, or that describe the source pool's own storage.
RESERVED = {
    "uid", "url", "text", "caption", "key", "status", "error_message", "width", "height",
    "original_width", "original_height", "exif", "sha256", "shard", "image_ext",
}  # fmt: skip


@dataclass(frozen=True)
class DownloadSettings:
    """img2dataset's knobs; the defaults are DataComp's (images at most 512 px a side)."""

    processes: int = 1
    threads: int = 32
    timeout: int = 10
    retries: int = 0
    image_size: int = 512
    resize_mode: str = "keep_ratio_largest"  # "no" keeps the downloaded bytes as they are
    samples_per_shard: int = 10_000


def rows_to_download(path: Path) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The rows of a metadata-only pool or candidate pool, and where they came from."""
    path = Path(path)
    manifest = read_manifest(path)
    if manifest.kind == "subset":
        from curate.core.candidate_pool import open_subset

        subset = open_subset(path)
        if subset.parent is None or subset.parent.manifest.has_images:
            raise UserInputError(
                f"{path}: its samples already have images (in its pool or its own shards); "
                "nothing to download"
            )
        rows = subset.samples()
        samples_file = subset.parent.layout.samples
    else:
        pool = Pool.open(path)
        if pool.manifest.has_images:
            raise UserInputError(f"{path}: this pool already has images; nothing to download")
        rows = pool.samples()
        samples_file = pool.layout.samples
    if "url" not in rows.columns:
        raise UserInputError(
            f"{samples_file}: missing column 'url'; a pool can be downloaded only when each "
            "sample has the url of its image"
        )
    if rows.height == 0:
        raise UserInputError(f"{path}: has no samples; nothing to download")
    origin = {
        "path": str(path.resolve()),
        "kind": manifest.kind,
        "name": manifest.name,
        "created": manifest.created,
        "rows": rows.height,
    }
    return rows, origin


def _url_table(rows: pl.DataFrame) -> pl.DataFrame:
    scalar = [
        c
        for c, dtype in rows.schema.items()
        if c not in RESERVED and (dtype.is_numeric() or dtype in (pl.String, pl.Boolean))
    ]
    return rows.select("uid", "url", "text", *scalar)


def download(
    path: Path | str,
    out: Path | str,
    *,
    settings: DownloadSettings | None = None,
    overwrite: bool = False,
    show_progress: bool = False,
) -> IngestResult:
    """Download the images of ``path`` (metadata-only pool or candidate pool) into pool ``out``."""
    path, out = Path(path), Path(out)
    settings = settings or DownloadSettings()
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists; pass --overwrite to replace it")
    rows, origin = rows_to_download(path)
    work = out.with_name(f".{out.name}.download")
    with exclusive_lock(work):
        fingerprint = {"origin": origin, "settings": asdict(settings)}
        _prepare_work_dir(work, fingerprint)
        url_table = _url_table(rows)
        url_list = work / "urls.parquet"
        if not url_list.is_file():
            write_parquet(url_list, url_table)
        images = work / "images"
        _run_img2dataset(url_list, images, extra_columns=url_table.columns[3:], settings=settings)
        reader = load_source("img2dataset").read(images, IngestOptions())
        result = write_pool(
            reader,
            out,
            fmt="img2dataset",
            name=out.name,
            source_record={"type": "download", "from": origin},
            params={"settings": asdict(settings)},
            samples_per_shard=settings.samples_per_shard,
            overwrite=overwrite,
            show_progress=show_progress,
            command="download",
        )
        shutil.rmtree(work)
    return result


def _prepare_work_dir(work: Path, fingerprint: dict[str, Any]) -> None:
    """Keep an interrupted download of the same rows with the same settings; else start over."""
    record = work / "fingerprint.json"
    if record.is_file() and json.loads(record.read_text("utf-8")) == json.loads(
        json.dumps(fingerprint, default=str)
    ):
        return
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    write_json(record, fingerprint)


def _run_img2dataset(
    url_list: Path, images: Path, *, extra_columns: list[str], settings: DownloadSettings
) -> None:
    from img2dataset import download as img2dataset_download

    img2dataset_download(
        url_list=str(url_list),
        input_format="parquet",
        url_col="url",
        caption_col="text",
        save_additional_columns=["uid", *extra_columns],
        output_folder=str(images),
        output_format="webdataset",
        processes_count=settings.processes,
        thread_count=settings.threads,
        timeout=settings.timeout,
        retries=settings.retries,
        image_size=settings.image_size,
        resize_mode=settings.resize_mode,
        resize_only_if_bigger=True,
        skip_reencode=True,  # images that need no resizing keep their downloaded bytes
        number_sample_per_shard=settings.samples_per_shard,
        enable_wandb=False,
        distributor="multiprocessing",
        incremental_mode="incremental",  # a rerun skips the shards already downloaded
    )
