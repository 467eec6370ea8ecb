"""Samples from Arrow record batches in the Hugging Face ``datasets`` image layout.

Shared by the parquet source and the ``datasets`` sources: an image column is a struct of
``bytes`` and ``path`` (``path`` alone when ``datasets`` loaded an image folder lazily), the
caption comes from a text column or a template over other columns, and every other column
is kept as an extra column of the pool.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from curate.core.pool_writer import IngestError, Skip, SourceSample
from curate.ingest.base import IngestOptions, caption_column, check_template, read_image_file

IMAGE_COLUMN_NAMES = ("image", "img", "jpg", "png", "webp")


def class_label_names(features: Mapping[str, Any] | None) -> dict[str, list[str]]:
    """``{column: names}`` of the ClassLabel columns in a ``datasets`` features dict."""
    return {
        column: list(feature["names"])
        for column, feature in (features or {}).items()
        if isinstance(feature, Mapping) and feature.get("_type") == "ClassLabel"
    }


def parquet_features(schema: pa.Schema) -> dict[str, Any] | None:
    """The ``datasets`` features stored in a parquet file's metadata, when it has them."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw is None:
        return None
    try:
        return json.loads(raw)["info"]["features"]
    except (ValueError, KeyError, TypeError):
        return None


def _holds_images(field: pa.Field, features: Mapping[str, Any] | None) -> bool:
    feature = (features or {}).get(field.name)
    if isinstance(feature, Mapping) and feature.get("_type") == "Image":
        return True
    if pa.types.is_struct(field.type):
        return field.type.get_field_index("bytes") >= 0
    return pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type)


def _holds_text(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return any(
        check(kind)
        for check in (
            pa.types.is_string,
            pa.types.is_large_string,
            pa.types.is_string_view,
            pa.types.is_binary,
            pa.types.is_large_binary,
            pa.types.is_null,
        )
    )


def find_image_column(
    schema: pa.Schema, features: Mapping[str, Any] | None, options: IngestOptions, where: str
) -> str:
    if options.image_column is not None:
        if options.image_column not in schema.names:
            raise IngestError(
                f"{where}: no column {options.image_column!r} (from --image-column); "
                f"columns are: {', '.join(schema.names)}"
            )
        kind = schema.field(options.image_column).type
        if not (
            pa.types.is_struct(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
        ):
            raise IngestError(
                f"{where}: column {options.image_column!r} (from --image-column) is {kind}, not "
                "images (a struct of bytes+path as `datasets` writes it, or binary)"
            )
        return options.image_column
    candidates = [f.name for f in schema if _holds_images(f, features)]
    named = [c for c in IMAGE_COLUMN_NAMES if c in candidates]
    if named or candidates:
        return (named or candidates)[0]
    raise IngestError(
        f"{where}: missing image column (a struct of bytes+path as `datasets` writes it, or "
        f"binary); columns are: {', '.join(schema.names)}. Name it with --image-column NAME."
    )


@dataclass(frozen=True)
class ArrowLayout:
    """Which column holds what, checked once per input before any row is read."""

    image: str
    caption: str | None
    template: str | None
    class_names: dict[str, list[str]]
    allow_outside_paths: bool = False

    @classmethod
    def resolve(
        cls,
        schema: pa.Schema,
        features: Mapping[str, Any] | None,
        options: IngestOptions,
        where: str,
    ) -> ArrowLayout:
        image = find_image_column(schema, features, options, where)
        class_names = class_label_names(features)
        columns = [c for c in schema.names if c != image]
        derived = ["class_name"] if "class_name" not in columns and "label" in class_names else []
        caption = caption_column(columns + derived, options, where)
        if caption in schema.names and not _holds_text(schema.field(caption).type):
            raise IngestError(
                f"{where}: caption column {caption!r} is {schema.field(caption).type}, expected "
                "strings; name the text column with --caption-column NAME"
            )
        if options.caption_template is not None and caption is None:
            check_template(options.caption_template, columns + derived, where)
        return cls(
            image,
            caption,
            options.caption_template if caption is None else None,
            class_names,
            options.allow_outside_paths,
        )

    def samples(
        self,
        batches: Iterable[pa.RecordBatch | pa.Table],
        *,
        source: str,
        where: str,
        image_root: Path | None = None,
        first_row: int = 0,
    ) -> Iterator[SourceSample | Skip]:
        """One item per row, in order; ``where`` names the input ("train.parquet") and
        ``first_row`` the input row of the batches' first row."""
        index = first_row
        for batch in batches:
            for row in batch.to_pylist():
                yield self._sample(row, source, f"{where} row {index}", image_root)
                index += 1

    def _sample(
        self, row: dict[str, Any], source: str, where: str, image_root: Path | None
    ) -> SourceSample | Skip:
        if "class_name" not in row and "label" in self.class_names and row.get("label") is not None:
            row["class_name"] = self.class_names["label"][row["label"]]
        cell = row.pop(self.image)
        image: bytes | None
        if isinstance(cell, Mapping):
            image = cell.get("bytes")
            if image is None and cell.get("path"):
                read = read_image_file(image_root, cell["path"], where, self.allow_outside_paths)
                if isinstance(read, Skip):
                    return read
                image = read
        else:
            image = cell
        if self.caption is not None:
            text = row.pop(self.caption)
        else:
            assert self.template is not None
            try:
                text = self.template.format_map(row)
            except (KeyError, ValueError, IndexError) as error:
                return Skip(where, f"caption template failed: {error!r}")
        row_source = row.pop("source", None)
        return SourceSample(
            source=row_source if isinstance(row_source, str) and row_source else source,
            where=where,
            text=text,
            image=image,
            extras=row,
        )
