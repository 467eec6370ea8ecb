"""Which source format a path holds, from its layout (``--format`` overrides this)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curate.core.errors import InputNotFoundError, UserInputError

DATASETS_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
DATACOMP_COLUMNS = {"uid", "url", "text"}


def _holds_image_bytes(schema: pa.Schema) -> bool:
    for field in schema:
        if pa.types.is_struct(field.type) and field.type.get_field_index("bytes") >= 0:
            return True
        if pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
            return True
    return False


def _parquet_format(file: Path) -> str:
    try:
        schema = pq.read_schema(file)
    except Exception as error:  # pyarrow raises several types for a damaged footer
        raise UserInputError(f"{file}: not a readable parquet file ({error})") from None
    if _holds_image_bytes(schema):
        return "hf-parquet"
    if DATACOMP_COLUMNS <= set(schema.names):
        return "datacomp"
    raise UserInputError(
        f"{file}: neither image bytes (a `datasets` image column) nor DataComp metadata "
        f"(uid, url, text); columns are: {', '.join(schema.names)}. Pass --format to choose."
    )


def detect_format(path: Path) -> str:
    """``img2dataset``, ``hf-parquet``, ``hf-disk``, ``image-folder`` or ``datacomp``."""
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"{path} does not exist")
    if path.is_file():
        if path.suffix == ".parquet":
            return _parquet_format(path)
        if path.suffix in (".csv", ".jsonl"):
            return "image-folder"
        raise UserInputError(
            f"{path}: cannot tell the format of a {path.suffix or 'suffix-less'} file; point at "
            "a .parquet, a captions .csv/.jsonl, or a folder (img2dataset output, a saved "
            "dataset, an image folder), or pass --format"
        )
    names = {p.name for p in path.iterdir()}
    if any(marker in names for marker in DATASETS_MARKERS):
        return "hf-disk"
    if any(name.endswith(".tar") for name in names):
        return "img2dataset"
    parquets = sorted(path.glob("*.parquet"))
    if parquets:
        return _parquet_format(parquets[0])
    if any(name.endswith((".csv", ".jsonl")) for name in names):
        return "image-folder"
    raise UserInputError(
        f"{path}: no .tar, .parquet, captions .csv/.jsonl or saved `datasets` files found; "
        "pass --format to say what it is"
    )
