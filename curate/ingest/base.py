"""What every ingest source hands to the driver (:mod:`curate.ingest.run`).

An image source yields :class:`~curate.core.pool_writer.SourceSample` / ``Skip`` items one by one
(each image must be decoded anyway); a metadata source (no images) yields whole tables so
that millions of rows are validated and written by column.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.core.pool_writer import IngestError, PartEmbeddings, Skip, SourceSample

CAPTION_COLUMNS = ("caption", "text", "txt")


@dataclass(frozen=True)
class IngestOptions:
    """How to read a source; every field is optional and most sources need none."""

    caption_column: str | None = None  # default: the first of CAPTION_COLUMNS present
    caption_template: str | None = None  # e.g. "a photo of a {class_name}", from other columns
    image_column: str | None = None  # default: the column holding image bytes
    captions_file: Path | None = None  # image folder: the CSV/JSONL with file + caption
    split: str | None = None  # a saved DatasetDict: which split
    # image paths named by an input may leave its folder (absolute, "..", symlinks out)
    allow_outside_paths: bool = False

    def record(self) -> dict[str, Any]:
        """The options that were set, JSON-ready (recorded in the manifest)."""
        return {k: str(v) for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class ItemsPart:
    """A piece of an image source that another process can read on its own: a module-level
    function and its picklable arguments. The parts' items, in order, are the source's items.
    """

    read: Callable[..., Iterable[SourceSample | Skip]]
    args: tuple[Any, ...]
    rows: int | None = None  # input rows, for progress

    def items(self) -> Iterable[SourceSample | Skip]:
        return self.read(*self.args)


@dataclass
class ImageItems:
    """An image source: items in input order, and how many rows it has (for progress).

    A source that can be split also lists its ``parts`` (one per input tar, per block of
    parquet rows): ``curate ingest --executor`` validates them in parallel.
    """

    items: Iterable[SourceSample | Skip]
    total: int | None
    source_stats: dict[str, Any] = field(default_factory=dict)
    parts: tuple[ItemsPart, ...] = ()


@dataclass(frozen=True)
class MetadataPart:
    """One table of a metadata-only source, with its row-aligned embeddings by set name."""

    table: Any  # polars DataFrame
    where: str
    embeddings: Mapping[str, PartEmbeddings] = field(default_factory=dict)


@dataclass
class MetadataParts:
    parts: Iterable[MetadataPart]
    total: int


def caption_column(columns: list[str], options: IngestOptions, where: str) -> str | None:
    """The caption column to use, or None when a template builds captions.

    Raises a message that names the file, the missing column and the way out.
    """
    if options.caption_column is not None:
        if options.caption_column not in columns:
            raise IngestError(
                f"{where}: no column {options.caption_column!r} (from --caption-column); "
                f"columns are: {', '.join(columns)}"
            )
        return options.caption_column
    if options.caption_template is not None:
        return None
    found = next((c for c in CAPTION_COLUMNS if c in columns), None)
    if found is not None:
        return found
    hint = ""
    if "class_name" in columns:
        hint = (
            " It has a 'class_name' column: to caption by class, pass "
            "--caption-template 'a photo of a {class_name}'."
        )
    raise IngestError(
        f"{where}: missing caption column (looked for {', '.join(CAPTION_COLUMNS)}); "
        f"columns are: {', '.join(columns)}.{hint} Or name the column with --caption-column NAME."
    )


def template_fields(template: str) -> list[str]:
    import string

    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def check_template(template: str, columns: list[str], where: str) -> None:
    missing = [name for name in template_fields(template) if name not in columns]
    if missing:
        raise IngestError(
            f"{where}: --caption-template uses column(s) {', '.join(missing)} that the input "
            f"does not have; columns are: {', '.join(columns)}"
        )


OUTSIDE_SOURCE = "image path outside the source folder"


def read_image_file(
    root: Path | None, name: str, where: str, allow_outside: bool = False
) -> bytes | Skip:
    """The bytes of an image file an input names (relative to the input's folder ``root``).

    A pool is often shared or published, so an input must not pull in files from elsewhere
    on the machine: a path that resolves outside ``root`` (absolute, a ``..`` escape, a
    symlink out) is refused as a counted skip unless ``allow_outside``
    (``--allow-outside-paths``).
    """
    path = Path(name)
    if root is not None and not path.is_absolute():
        path = root / path
    if not allow_outside:
        resolved = path.resolve()  # follows symlinks: a link out of the folder is outside too
        if root is None or not resolved.is_relative_to(root.resolve()):
            return Skip(where, f"{OUTSIDE_SOURCE}: {name} (pass --allow-outside-paths to read it)")
        path = resolved
    try:
        return path.read_bytes()
    except OSError as error:
        return Skip(where, f"unreadable image file: {path} ({error.strerror})")
