"""Labelled image sets on disk that curate reads whole: Hugging Face image-layout parquet
(training sets, eval sets, target sets) and CLIP_benchmark-style webdataset shards."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import polars as pl

from curate.core.errors import InputNotFoundError, UserInputError
from curate.core.images import IMAGE_EXTENSIONS


def read_image_parquet(
    path: Path, columns: Sequence[str], row_filter: str | None = None
) -> pl.DataFrame:
    """An HF-image-layout parquet: ``image_bytes`` plus the named columns, optionally filtered
    by a SQL condition such as ``split = 'test'``."""
    if not Path(path).is_file():
        raise InputNotFoundError(f"image parquet {path} does not exist")
    frame = pl.scan_parquet(path)
    schema = frame.collect_schema()
    needed = ["image", *columns]
    missing = [c for c in needed if c not in schema]
    if missing:
        raise UserInputError(
            f"{path}: missing column(s) {', '.join(missing)} (expected the Hugging Face image "
            f"layout: image {{bytes, path}}, plus {', '.join(columns) or 'nothing else'})"
        )
    if row_filter:
        try:
            frame = frame.filter(pl.sql_expr(row_filter))
        except Exception as error:  # polars raises several types for a bad SQL expression
            raise UserInputError(f"{path}: bad row filter {row_filter!r} ({error})") from None
    image = pl.col("image")
    if schema["image"] != pl.Binary:
        image = image.struct.field("bytes")
    table = frame.select(image.alias("image_bytes"), *columns).collect()
    if table["image_bytes"].null_count():
        row = table["image_bytes"].is_null().arg_true()[0]
        raise UserInputError(f"{path}: row {row} (after the filter) has no image bytes")
    return table


def iter_wds(tars: list[Path]) -> Iterator[tuple[bytes, int]]:
    """(image bytes, class) of every sample of CLIP_benchmark-style shards, in file order."""
    for tar in tars:
        pending: dict[str, dict[str, bytes]] = {}
        with tarfile.open(tar) as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, _, extension = member.name.partition(".")
                handle = archive.extractfile(member)
                assert handle is not None
                sample = pending.setdefault(key, {})
                sample[extension.lower()] = handle.read()
                image = next((sample[e] for e in IMAGE_EXTENSIONS if e in sample), None)
                if image is not None and "cls" in sample:
                    del pending[key]
                    yield image, int(sample["cls"].decode().strip())
