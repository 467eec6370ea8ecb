"""DataComp-style metadata without images: parquet files with uid, url, text,
original_width, original_height, clip_b32/l14 similarity scores and sha256, each with an
optional ``.npz`` beside it holding the precomputed OpenAI CLIP embeddings of its rows
(``b32_img``, ``b32_txt``, ``l14_img``, ``l14_txt``, row-aligned with the parquet).

The result is a metadata-only pool (no images; ``curate download`` fetches them): one polars
table per file, and embeddings streamed from the ``.npz`` into ``embeddings/datacomp-b32/``
and ``embeddings/datacomp-l14/`` without loading a whole array.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
from numpy.lib import format as npy_format

from curate.core.pool_writer import IngestError, PartEmbeddings
from curate.ingest.base import IngestOptions, MetadataPart, MetadataParts

REQUIRED_COLUMNS = ("uid", "url", "text")
RENAMED = {"original_width": "width", "original_height": "height"}
# set name -> (npz key of image vectors, npz key of text vectors, model identity)
EMBEDDING_SETS = {
    "datacomp-b32": ("b32_img", "b32_txt", {"arch": "ViT-B-32", "pretrained": "openai"}),
    "datacomp-l14": ("l14_img", "l14_txt", {"arch": "ViT-L-14", "pretrained": "openai"}),
}


@dataclass(frozen=True)
class NpzMember:
    """One 2-d array inside an ``.npz``, read in row order a block at a time."""

    path: Path
    key: str
    rows: int
    dim: int
    dtype: np.dtype

    @classmethod
    def open(cls, path: Path, key: str) -> NpzMember:
        with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as handle:
            shape, dtype = _npy_header(handle, f"{path}:{key}")
        return cls(path, key, shape[0], shape[1], dtype)

    def chunks(self, rows_per_chunk: int) -> Iterator[np.ndarray]:
        row_bytes = self.dim * self.dtype.itemsize
        with zipfile.ZipFile(self.path) as archive, archive.open(f"{self.key}.npy") as handle:
            _npy_header(handle, f"{self.path}:{self.key}")
            for start in range(0, self.rows, rows_per_chunk):
                count = min(rows_per_chunk, self.rows - start)
                data = handle.read(count * row_bytes)
                if len(data) != count * row_bytes:
                    raise IngestError(f"{self.path}: {self.key} ends early at row {start}")
                yield np.frombuffer(data, dtype=self.dtype).reshape(count, self.dim)


def _npy_header(handle, where: str) -> tuple[tuple[int, ...], np.dtype]:
    version = npy_format.read_magic(handle)
    read_header = (
        npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    )
    shape, fortran_order, dtype = read_header(handle)
    if fortran_order or len(shape) != 2 or dtype.kind != "f":
        raise IngestError(f"{where}: expected a 2-d float array in C order, got {dtype} {shape}")
    return shape, dtype


def parquet_files(path: Path) -> list[Path]:
    files = [path] if path.is_file() else sorted(path.glob("*.parquet"))
    if not files:
        raise IngestError(f"{path}: no .parquet files found")
    return files


def _part_embeddings(parquet: Path, rows: int) -> dict[str, PartEmbeddings]:
    npz = parquet.with_suffix(".npz")
    try:
        with zipfile.ZipFile(npz) as archive:
            keys = {name.removesuffix(".npy") for name in archive.namelist()}
    except zipfile.BadZipFile as error:
        raise IngestError(f"{npz}: not a readable .npz ({error})") from None
    embeddings = {}
    for name, (image_key, text_key, identity) in EMBEDDING_SETS.items():
        if image_key not in keys:
            continue
        image = NpzMember.open(npz, image_key)
        text = NpzMember.open(npz, text_key) if text_key in keys else None
        for member in (image, text):
            if member is not None and member.rows != rows:
                raise IngestError(
                    f"{npz}: {member.key} has {member.rows} rows but {parquet.name} has {rows}; "
                    "the embeddings must be row-aligned with the parquet"
                )
        meta = {**identity, "dim": image.dim, "source": f"DataComp metadata .npz ({image_key})"}
        embeddings[name] = PartEmbeddings(image=image, text=text, meta=meta)
    if not embeddings:
        raise IngestError(
            f"{npz}: has none of {', '.join(k for s in EMBEDDING_SETS.values() for k in s[:2])}"
        )
    return embeddings


def read(path: Path, options: IngestOptions) -> MetadataParts:
    files = parquet_files(path)
    text_column = options.caption_column or "text"
    total = 0
    for file in files:  # check every file before writing anything
        schema = pq.read_schema(file)
        wanted = [text_column if c == "text" else c for c in REQUIRED_COLUMNS]
        missing = [c for c in wanted if c not in schema.names]
        if missing:
            raise IngestError(
                f"{file}: missing column(s) {', '.join(missing)} of DataComp's metadata schema; "
                f"columns are: {', '.join(schema.names)}"
            )
        total += pq.read_metadata(file).num_rows
    with_npz = [f for f in files if f.with_suffix(".npz").is_file()]
    if with_npz and len(with_npz) != len(files):
        lacking = next(f for f in files if f not in with_npz)
        raise IngestError(
            f"{lacking.with_suffix('.npz')} is missing while {len(with_npz)} other parquet files "
            "have their .npz: embeddings must cover every row (add the missing .npz files, or "
            "ingest from a folder without any)"
        )
    source = path.name if path.is_dir() else path.parent.name
    return MetadataParts(parts=_parts(files, text_column, source, bool(with_npz)), total=total)


def _parts(
    files: list[Path], text_column: str, source: str, with_embeddings: bool
) -> Iterator[MetadataPart]:
    for file in files:
        table = pl.read_parquet(file)
        if text_column != "text":
            table = table.drop("text", strict=False).rename({text_column: "text"})
        renamed = {k: v for k, v in RENAMED.items() if k in table.columns}
        table = table.drop(list(renamed.values()), strict=False).rename(renamed)
        if "source" not in table.columns:
            table = table.with_columns(source=pl.lit(source))
        embeddings = _part_embeddings(file, table.height) if with_embeddings else {}
        yield MetadataPart(table=table, where=file.name, embeddings=embeddings)
