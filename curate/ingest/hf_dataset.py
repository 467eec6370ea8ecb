"""Hugging Face ``datasets`` objects: a ``Dataset`` in memory (loaded from local parquet or an
image folder) or a directory written by ``Dataset.save_to_disk``.

Rows are read as Arrow batches (no image decoding by ``datasets``), so the image column's raw
bytes/path struct reaches the pool writer unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curate.core.pool_writer import IngestError
from curate.ingest.arrow_rows import ArrowLayout
from curate.ingest.base import ImageItems, IngestOptions

BATCH_ROWS = 256


def dataset_items(
    dataset: Any,
    options: IngestOptions,
    *,
    source: str,
    where: str,
    image_root: Path | None = None,
) -> ImageItems:
    """Items of a ``datasets.Dataset``; ``where`` names it in messages; image paths resolve
    only inside ``image_root`` (see :func:`curate.ingest.base.read_image_file`)."""
    features = dataset.features.to_dict()
    layout = ArrowLayout.resolve(dataset.data.schema, features, options, where)
    batches = dataset.with_format("arrow").iter(batch_size=BATCH_ROWS)
    items = layout.samples(batches, source=source, where=where, image_root=image_root)
    return ImageItems(items=items, total=len(dataset))


def read(path: Path, options: IngestOptions) -> ImageItems:
    """A ``save_to_disk`` directory (a Dataset, or a DatasetDict with ``--split``)."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as error:
        raise IngestError(f"{path}: not a saved `datasets` directory ({error})") from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if options.split is None:
            if len(splits) != 1:
                raise IngestError(
                    f"{path}: holds splits {', '.join(splits)}; choose one with --split NAME"
                )
            split = splits[0]
        elif options.split not in loaded:
            raise IngestError(f"{path}: no split {options.split!r}; it has {', '.join(splits)}")
        else:
            split = options.split
        return dataset_items(
            loaded[split],
            options,
            source=f"{path.name}/{split}",
            where=f"{path.name}[{split}]",
            image_root=path,
        )
    if options.split is not None:
        raise IngestError(f"{path}: is a single Dataset without splits; drop --split")
    return dataset_items(loaded, options, source=path.name, where=path.name, image_root=path)
