"""A tiny labelled world for training tests: 32 px noise images tinted by one of three
colours, captioned and labelled by it, and the task registry entries that evaluate on it."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml
from PIL import Image

from curate.core.atomic import write_parquet

COLOURS = ("red", "green", "blue")
CAPTION = "a photo of a {} thing"


def coloured_image(label: int, seed: int, *, noise: int = 90, strength: int = 160) -> bytes:
    """Noise in [0, noise) with the label's colour channel raised by ``strength`` (PNG).
    A weak tint keeps a few training steps below 100 % accuracy."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, noise, size=(32, 32, 3), dtype=np.uint8)
    pixels[..., label] += strength
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def labelled_parquet(path: Path, rows: int, seed: int, **tint: int) -> Path:
    """An HF-image-layout parquet (image, label, class_name, text) of ``rows`` images."""
    labels = [i % len(COLOURS) for i in range(rows)]
    write_parquet(
        path,
        pl.DataFrame(
            {
                "image": [
                    {"bytes": coloured_image(label, seed * 10_000 + i, **tint), "path": f"{i}.png"}
                    for i, label in enumerate(labels)
                ],
                "label": labels,
                "class_name": [COLOURS[label] for label in labels],
                "text": [f"a {COLOURS[label]} picture" for label in labels],
            }
        ),
    )
    return path


def write_colours_tasks(
    path: Path, test_file: str, train_file: str, extra_tasks: dict[str, Any] | None = None
) -> Path:
    """A tasks file: ``colours`` (ID), ``colours-shift`` (its shift: two classes only) and the
    ``colours`` task set whose baselines train on ``train_file``."""
    tasks = {
        "colours": {
            "kind": "id",
            "images": {"format": "parquet", "path": test_file},
            "classnames": "from_data",
            "templates": [CAPTION],
        },
        "colours-shift": {
            "kind": "shift",
            "shift_of": "colours",
            "images": {"format": "parquet", "path": test_file, "filter": "label < 2"},
            "classnames": list(COLOURS),
            "templates": ["{}"],
        },
        **(extra_tasks or {}),
    }
    task_sets = {
        "colours": {
            "tasks": ["colours", "colours-shift"],
            "baseline_train": {
                "images": {"format": "parquet", "path": train_file},
                "caption_templates": [CAPTION],
            },
        }
    }
    path.write_text(yaml.safe_dump({"tasks": tasks, "task_sets": task_sets}))
    return path
