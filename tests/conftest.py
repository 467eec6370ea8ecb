"""Shared fixtures: small real images and pools made on the fly."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_image_bytes(seed: int, size: tuple[int, int] = (32, 32), fmt: str = "JPEG") -> bytes:
    """A real, decodable image with seed-dependent content."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def image_bytes():
    return make_image_bytes


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared CI machine: one thread is several times faster than two
    (OpenMP teams stall on busy cores); train_clip keeps OMP_NUM_THREADS when it is set."""
    import torch

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(threads)
