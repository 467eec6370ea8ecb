"""A folder of image files with a captions table: CSV or JSONL with a file column
(``file``/``path``/``file_name``/``image``) and a caption column (``caption``/``text``).

Captions are read with undecodable bytes preserved (``surrogateescape``), so a non-UTF-8
caption reaches the pool writer as bytes and becomes a counted skip naming its row instead of
failing the whole file.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from curate.core.errors import InputNotFoundError
from curate.core.pool_writer import IngestError, Skip, SourceSample
from curate.ingest.base import (
    ImageItems,
    IngestOptions,
    caption_column,
    check_template,
    read_image_file,
)

FILE_COLUMNS = ("file", "path", "file_name", "filename", "image")
TABLE_SUFFIXES = (".csv", ".jsonl")
PREFERRED_STEMS = ("captions", "metadata")


def find_captions(path: Path, options: IngestOptions) -> Path:
    if options.captions_file is not None:
        return Path(options.captions_file)
    if path.is_file():
        return path
    tables = sorted(p for p in path.iterdir() if p.suffix in TABLE_SUFFIXES)
    preferred = [p for p in tables if p.stem in PREFERRED_STEMS]
    if len(preferred) == 1 or len(tables) == 1:
        return (preferred or tables)[0]
    found = ", ".join(p.name for p in tables) or "none"
    raise IngestError(
        f"{path}: need exactly one captions table (.csv or .jsonl with file and caption "
        f"columns), found {found}; name it with --captions FILE"
    )


def _decoded(value: Any) -> Any:
    """Strings with undecodable bytes go back to the raw bytes, for the writer to reject."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape")
    return value


def _printable(value: Any) -> Any:
    """Extra columns keep undecodable bytes as U+FFFD (they are not the caption)."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value


def _csv_rows(path: Path) -> tuple[list[str], Iterator[dict[str, Any] | str]]:
    handle = open(path, encoding="utf-8", errors="surrogateescape", newline="")
    reader = csv.DictReader(handle)
    columns = list(reader.fieldnames or [])

    def rows() -> Iterator[dict[str, Any] | str]:
        with handle:
            yield from reader

    return columns, rows()


def _jsonl_rows(path: Path) -> tuple[list[str], Iterator[dict[str, Any] | str]]:
    def rows() -> Iterator[dict[str, Any] | str]:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    yield f"unreadable JSON line: {error}"
                    continue
                yield record if isinstance(record, dict) else "JSON line is not an object"

    columns: list[str] = []
    for record in rows():
        if isinstance(record, dict):
            columns = list(record)
            break
    return columns, rows()


def _count_rows(path: Path) -> int:
    with open(path, "rb") as handle:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    return max(lines - 1, 0) if path.suffix == ".csv" else lines


def read(path: Path, options: IngestOptions) -> ImageItems:
    captions = find_captions(path, options)
    if not captions.is_file():
        raise InputNotFoundError(f"captions table {captions} not found")
    if captions.suffix not in TABLE_SUFFIXES:
        raise IngestError(f"{captions}: expected a .csv or .jsonl captions table")
    columns, rows = (_csv_rows if captions.suffix == ".csv" else _jsonl_rows)(captions)
    if not columns:
        raise IngestError(f"{captions}: empty captions table (no header or no JSON object)")
    file_column = next((c for c in FILE_COLUMNS if c in columns), None)
    if file_column is None:
        raise IngestError(
            f"{captions}: missing file column (looked for {', '.join(FILE_COLUMNS)}); "
            f"columns are: {', '.join(columns)}"
        )
    text_column = caption_column(columns, options, str(captions))
    if options.caption_template is not None and text_column is None:
        check_template(options.caption_template, columns, str(captions))
    source = path.name if path.is_dir() else captions.parent.name
    root = path if path.is_dir() else captions.parent  # image files resolve inside this folder
    items = _items(
        rows,
        captions,
        root,
        file_column,
        text_column,
        options.caption_template,
        source,
        options.allow_outside_paths,
    )
    return ImageItems(items=items, total=_count_rows(captions))


def _items(
    rows: Iterator[dict[str, Any] | str],
    captions: Path,
    root: Path,
    file_column: str,
    text_column: str | None,
    template: str | None,
    source: str,
    allow_outside: bool,
) -> Iterator[SourceSample | Skip]:
    for index, row in enumerate(rows):
        where = f"{captions.name} row {index}"
        if isinstance(row, str):
            yield Skip(where, row)
            continue
        name = row.get(file_column)
        if not name:
            yield Skip(where, f"missing image file name (column {file_column!r})")
            continue
        where = f"{where} ({name})"
        image = read_image_file(root, name, where, allow_outside)
        if isinstance(image, Skip):
            yield image
            continue
        if text_column is not None:
            text = _decoded(row.get(text_column))
        else:
            assert template is not None
            try:
                text = template.format_map(row)
            except (KeyError, ValueError, IndexError) as error:
                yield Skip(where, f"caption template failed: {error!r}")
                continue
        extras = {
            k: _printable(v) for k, v in row.items() if k not in (text_column, "source", None)
        }
        yield SourceSample(source=source, where=where, text=text, image=image, extras=extras)
