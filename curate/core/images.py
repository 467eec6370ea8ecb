"""Checking image bytes before they enter a pool."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

# The webdataset member suffixes curate reads as images (img2dataset's, open_clip's).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp")
# Larger images are refused as likely decompression bombs (PIL's own default is ~179M).
MAX_IMAGE_PIXELS = 64_000_000
_FORMAT_TO_EXTENSION = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}


class BadImageError(ValueError):
    """Image bytes that cannot be decoded, or that are not a usable image."""


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    extension: str  # "jpg", "png", ... (the webdataset member suffix)
    sha256: str


def inspect_image(data: bytes) -> ImageInfo:
    """Decode fully (a truncated file fails here, not at training time) and describe it."""
    if not data:
        raise BadImageError("zero-byte image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise BadImageError(
                        f"{width}x{height} exceeds {MAX_IMAGE_PIXELS} pixels "
                        "(possible decompression bomb)"
                    )
                image_format = image.format or ""
                image.load()
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadImageError(f"possible decompression bomb: {error}") from None
    except Exception as error:  # PIL raises many types for corrupt data
        # PIL names an unidentified in-memory file by its address, which differs between runs
        unidentified = isinstance(error, UnidentifiedImageError)
        detail = "cannot identify image file" if unidentified else error
        raise BadImageError(f"cannot decode image: {type(error).__name__}: {detail}") from None
    extension = _FORMAT_TO_EXTENSION.get(image_format)
    if extension is None:
        raise BadImageError(f"unsupported image format {image_format or 'unknown'!r}")
    if width <= 0 or height <= 0:
        raise BadImageError(f"empty image {width}x{height}")
    return ImageInfo(width, height, extension, hashlib.sha256(data).hexdigest())
