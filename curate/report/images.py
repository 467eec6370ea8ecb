"""Sample images as data URIs, so the page carries its images inside itself.

Small images (the demo's 32 px ones) are embedded as their original bytes and upscaled by the
browser (CSS ``image-rendering: pixelated``); larger ones are shrunk to a thumbnail first so
that a page of a few hundred samples stays a few megabytes at most.
"""

from __future__ import annotations

import base64
import io

import polars as pl

from curate.core.pool import Pool

THUMBNAIL_SIDE = 160  # pixels; larger images are shrunk to fit this box
MIME_TYPES = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
}


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def thumbnail_uri(data: bytes, extension: str, width: int, height: int) -> str:
    """The image as a data URI: as stored when it fits the thumbnail box, else shrunk (JPEG)."""
    mime = MIME_TYPES.get(extension.lower())
    if mime is not None and max(width, height) <= THUMBNAIL_SIDE:
        return data_uri(data, mime)
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=85)
    return data_uri(buffer.getvalue(), "image/jpeg")


def read_thumbnails(pool: Pool, rows: pl.DataFrame) -> dict[int, str]:
    """Data URIs by pool row for ``rows`` (columns row, shard, key, image_ext, width, height),
    reading each shard of the pool once."""
    rows = rows.unique("row", maintain_order=True)
    if rows.height == 0:
        return {}
    images = pool.read_images(rows)
    return {
        row: thumbnail_uri(data, extension, width, height)
        for (row, extension, width, height), data in zip(
            rows.select("row", "image_ext", "width", "height").iter_rows(), images, strict=True
        )
    }
