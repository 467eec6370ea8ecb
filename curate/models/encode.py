"""Encoding images and texts with a loaded CLIP (:func:`curate.models.loading.load_clip`), in
batches, L2-normalised: shared by evaluation and by embedding image sets."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from curate.core.image_tables import iter_wds
from curate.core.progress import progress_bar


def encode_images(
    loaded: Any,
    images: Sequence[bytes | Path] | None,
    tars: Sequence[Path] | None,
    device: str,
    batch_size: int,
    workers: int,
    show_progress: bool = False,
    description: str = "",
) -> tuple[np.ndarray, np.ndarray | None]:
    """L2-normalised image features (float32, input order) of image bytes or paths, or of
    CLIP_benchmark-style shards (``tars``, whose labels come back too)."""
    if tars is not None:
        dataset: Any = _WdsImages(list(tars), loaded.preprocess)
        workers = 0  # one stream keeps the file order
        total = None
    else:
        dataset = _Images(list(images or []), loaded.preprocess)
        total = len(dataset)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    features, labels = [], []
    with progress_bar(total, f"encoding {description}", show_progress, unit="images") as advance:
        with torch.inference_mode():
            for batch in loader:
                pixels = batch[0] if tars is not None else batch
                encoded = loaded.model.encode_image(pixels.to(device), normalize=True)
                features.append(encoded.float().cpu().numpy())
                if tars is not None:
                    labels.append(batch[1].numpy())
                advance(len(pixels))
    stacked = np.concatenate(features) if features else np.zeros((0, 0), np.float32)
    return stacked, (np.concatenate(labels) if labels else None)


def encode_texts(loaded: Any, texts: list[str], device: str, batch_size: int) -> np.ndarray:
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            tokens = loaded.tokenizer(texts[start : start + batch_size]).to(device)
            chunks.append(loaded.model.encode_text(tokens, normalize=True).float().cpu().numpy())
    return np.concatenate(chunks)


def _open_rgb(item: bytes | Path) -> Any:
    from PIL import Image

    with Image.open(io.BytesIO(item) if isinstance(item, bytes) else item) as image:
        return image.convert("RGB")


class _Images(torch.utils.data.Dataset):
    """Map-style dataset over image bytes or paths (picklable for loader workers)."""

    def __init__(self, items: list, preprocess: Callable) -> None:
        self.items, self.preprocess = items, preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.preprocess(_open_rgb(self.items[index]))


class _WdsImages(torch.utils.data.IterableDataset):
    def __init__(self, tars: list[Path], preprocess: Callable) -> None:
        self.tars, self.preprocess = tars, preprocess

    def __iter__(self):
        for data, label in iter_wds(self.tars):
            yield self.preprocess(_open_rgb(data)), label
