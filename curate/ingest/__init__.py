"""Ingestion: turn an image-text source into a pool (``curate ingest SOURCE --out POOL``).

Each source type is one module of this package with a ``read(path, options)`` function; the
registry below names them (a new source is one module and one entry). Implementations are
imported only when used, so listing the formats (``curate ingest --help``) stays fast.

Python API::

    from curate.ingest import IngestOptions, ingest, ingest_hf_dataset
    ingest("downloads/", "pools/mypool")                 # the format is detected
    ingest_hf_dataset(dataset, "pools/cifar", options=IngestOptions(
        caption_template="a photo of a {class_name}"))
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class SourceFormat:
    name: str
    module: str  # the module with ``read(path, options)``
    summary: str
    example: str


FORMATS: dict[str, SourceFormat] = {
    f.name: f
    for f in (
        SourceFormat(
            "img2dataset",
            "curate.ingest.img2dataset",
            "img2dataset's webdataset output: a folder of NNNNN.tar (+ .parquet, _stats.json); "
            "failed downloads are counted as skips",
            "curate ingest downloads/ --out pools/web",
        ),
        SourceFormat(
            "hf-parquet",
            "curate.ingest.hf_parquet",
            "parquet file(s) in the Hugging Face `datasets` image layout (image struct of "
            "bytes+path, caption/text or label/class_name columns)",
            "curate ingest train.parquet --out pools/cifar "
            "--caption-template 'a photo of a {class_name}'",
        ),
        SourceFormat(
            "hf-disk",
            "curate.ingest.hf_dataset",
            "a directory written by `datasets`' Dataset.save_to_disk (use --split for a "
            "DatasetDict)",
            "curate ingest saved_dataset/ --out pools/hf --split train",
        ),
        SourceFormat(
            "image-folder",
            "curate.ingest.image_folder",
            "a folder of image files with a captions .csv or .jsonl (file + caption columns)",
            "curate ingest photos/ --out pools/photos --captions photos/captions.csv",
        ),
        SourceFormat(
            "datacomp",
            "curate.ingest.datacomp",
            "DataComp metadata without images: parquet (uid, url, text, original_width, ...) "
            "with optional .npz CLIP embeddings beside each file; makes a metadata-only pool "
            "(fetch the images later with `curate download`)",
            "curate ingest datacomp_small/metadata/ --out pools/dc-meta",
        ),
    )
}


def load_source(name: str) -> ModuleType:
    """The module implementing a format; an unknown name is an error listing the known ones."""
    from curate.core.pool_writer import IngestError

    if name not in FORMATS:
        raise IngestError(f"unknown format {name!r}; choose one of: {', '.join(FORMATS)}")
    return importlib.import_module(FORMATS[name].module)


_LAZY = {
    "ingest": "curate.ingest.run",
    "ingest_hf_dataset": "curate.ingest.run",
    "IngestResult": "curate.ingest.run",
    "detect_format": "curate.ingest.detect",
    "IngestOptions": "curate.ingest.base",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FORMATS", "SourceFormat", "load_source", *_LAZY]
