"""Turning a training set into the batch of every step, deterministically.

The order is a pure function of (seed, step): step ``s`` covers global sample positions
``s*B .. s*B+B-1``; position ``p`` is row ``perm_e[p mod n]`` of epoch ``e = p div n``, where
``perm_e`` is a fresh seeded permutation of the ``n`` rows. So the samples seen are fixed by
the scale whatever the pool's size (a small pool repeats, a large one is seen in part), a
resumed run continues exactly where it stopped, and under torchrun each process takes its own
slice of every global batch.

Augmentation is open_clip's training transform (RandomResizedCrop with the model's scale and
ratio, bicubic, then the model's mean/std). Small pools are decoded once into a uint8 tensor
and augmented a whole batch at a time on tensors; pools too large for memory are decoded per
sample in DataLoader workers with open_clip's own transform. Both draw their randomness
from generators seeded by (seed, step, rank), never from global state.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from curate.core.progress import progress_bar
from curate.training.data import ImageBytes, TrainingSet

Batch = tuple[torch.Tensor, torch.Tensor]  # images (B, 3, S, S) float, tokens (B, context)


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers, well mixed (numpy's SeedSequence)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0]
    return int(state) & ((1 << 63) - 1)


@dataclass
class SampleOrder:
    """Rows of each step's batch for one process (see the module docstring)."""

    rows: int
    seed: int
    batch_size: int  # global
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.batch_size % self.world_size:
            raise ValueError(
                f"batch size {self.batch_size} does not split evenly over "
                f"{self.world_size} processes"
            )
        self._permutations: dict[int, np.ndarray] = {}

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.world_size

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            if len(self._permutations) >= 2:
                self._permutations.pop(min(self._permutations))
            rng = np.random.default_rng(derived_seed(self.seed, epoch))
            self._permutations[epoch] = rng.permutation(self.rows)
        return self._permutations[epoch]

    def rows_for_step(self, step: int) -> np.ndarray:
        start = step * self.batch_size + self.rank * self.local_batch_size
        positions = np.arange(start, start + self.local_batch_size, dtype=np.int64)
        epochs, within = np.divmod(positions, self.rows)
        rows = np.empty_like(positions)
        for epoch in np.unique(epochs):
            chosen = epochs == epoch
            rows[chosen] = self.permutation(int(epoch))[within[chosen]]
        return rows


@dataclass(frozen=True)
class Augmentation:
    """open_clip's training transform, read from the model's own transform objects."""

    image_size: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_open_clip(cls, preprocess_train: Any, image_size: int) -> Augmentation:
        from torchvision.transforms import Normalize, RandomResizedCrop

        steps = preprocess_train.transforms
        crop = next(t for t in steps if isinstance(t, RandomResizedCrop))
        normalize = next(t for t in steps if isinstance(t, Normalize))
        return cls(
            image_size,
            tuple(crop.scale),
            tuple(crop.ratio),
            tuple(normalize.mean),
            tuple(normalize.std),
        )

    def __call__(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Random resized crops of a uint8 batch (B, 3, H, W), normalised float32.

        The crop parameters are drawn with numpy (small arrays: no thread-pool overhead) and
        applied as one bicubic ``grid_sample`` over the whole batch.
        """
        count = images.shape[0]
        width, height = crop_boxes(count, self.scale, self.ratio, rng)
        centre_x = rng.uniform(-1, 1, count) * (1 - width)
        centre_y = rng.uniform(-1, 1, count) * (1 - height)
        # output pixel centres in [-1, 1] (align_corners=False), mapped into each crop
        axis = (torch.arange(self.image_size, dtype=torch.float32) * 2 + 1) / self.image_size - 1
        grid = torch.empty(count, self.image_size, self.image_size, 2)
        grid[..., 0] = axis.view(1, 1, -1) * _column(width) + _column(centre_x)
        grid[..., 1] = axis.view(1, -1, 1) * _column(height) + _column(centre_y)
        crops = torch.nn.functional.grid_sample(
            images.float(), grid, mode="bicubic", padding_mode="border", align_corners=False
        )
        mean = torch.tensor(self.mean).view(1, -1, 1, 1) * 255
        std = torch.tensor(self.std).view(1, -1, 1, 1) * 255
        return crops.clamp_(0, 255).sub_(mean).div_(std)


def _column(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(values.astype(np.float32)).view(-1, 1, 1)


def crop_boxes(
    count: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Crop width and height as fractions of the side, as torchvision's RandomResizedCrop
    draws them: area ~ U(scale), log aspect ~ U(log ratio), up to 10 tries, else the whole."""
    tries = 10
    area = rng.uniform(scale[0], scale[1], (count, tries))
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]), (count, tries)))
    width, height = np.sqrt(area * aspect), np.sqrt(area / aspect)
    fits = (width <= 1) & (height <= 1)
    first = fits.argmax(axis=1)
    rows = np.arange(count)
    found = fits[rows, first]
    return np.where(found, width[rows, first], 1.0), np.where(found, height[rows, first], 1.0)


def decode_to_array(data: bytes, image_size: int) -> np.ndarray:
    """RGB uint8 (S, S, 3): resized on the short side and centre-cropped when not S x S."""
    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB")
    if rgb.size != (image_size, image_size):
        rgb = ImageOps.fit(rgb, (image_size, image_size), method=Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)


def decode_image_cache(
    images: ImageBytes, image_size: int, show_progress: bool = False
) -> torch.Tensor:
    """Every image decoded once: uint8 (N, 3, S, S) (12k images at 32 px: 37 MB)."""
    cache = np.empty((len(images), image_size, image_size, 3), dtype=np.uint8)
    with progress_bar(len(images), "decoding images", show_progress, unit="images") as advance:
        for row, data in images.iter_bytes():
            cache[row] = decode_to_array(data, image_size)
            advance(1)
    return torch.from_numpy(cache).permute(0, 3, 1, 2).contiguous()


def cache_bytes(rows: int, image_size: int) -> int:
    return rows * 3 * image_size * image_size


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Small tensor ops (a 256 x 3 x 32 x 32 batch) run faster on one thread: measured 24 ms
    vs 166 ms per batch on two busy cores, where starting the OpenMP team dominates."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class CachedBatches:
    """Batches from decoded images in memory, augmented a batch at a time."""

    def __init__(
        self,
        images: torch.Tensor,
        tokens: torch.Tensor,
        order: SampleOrder,
        augmentation: Augmentation,
        workers: int = 0,
    ) -> None:
        self.images, self.tokens, self.order = images, tokens, order
        self.augmentation, self.workers = augmentation, workers

    def batch(self, step: int) -> Batch:
        rows = torch.from_numpy(self.order.rows_for_step(step))
        rng = np.random.default_rng(derived_seed(self.order.seed, step, self.order.rank))
        with _one_thread():
            return self.augmentation(self.images[rows], rng), self.tokens[rows]

    def iterate(self, start_step: int, steps: int) -> Iterator[Batch]:
        """The batches of steps start_step .. steps-1; with ``workers`` > 0 they are made
        ahead in loader processes (the cache is shared with them), overlapping the model."""
        workers = self.workers
        if workers == 0:
            return (self.batch(step) for step in range(start_step, steps))
        loader = torch.utils.data.DataLoader(
            _StepBatches(self),
            batch_size=None,
            sampler=range(start_step, steps),
            num_workers=workers,
            prefetch_factor=2,
        )
        return iter(loader)


class _StepBatches(torch.utils.data.Dataset):
    """Item ``step`` is that step's batch (for a DataLoader that makes them ahead)."""

    def __init__(self, batches: CachedBatches) -> None:
        self.batches = batches

    def __getitem__(self, step: int) -> Batch:
        return self.batches.batch(step)


class _StepSampler(torch.utils.data.Sampler):
    """Yields, per step, this process's (row, augmentation seed) pairs."""

    def __init__(self, order: SampleOrder, start_step: int, steps: int) -> None:
        self.order, self.start_step, self.steps = order, start_step, steps

    def __len__(self) -> int:
        return self.steps - self.start_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.steps):
            rows = self.order.rows_for_step(step)
            base = derived_seed(self.order.seed, step, self.order.rank)
            yield [(int(row), base + j) for j, row in enumerate(rows)]


class _DecodingDataset(torch.utils.data.Dataset):
    def __init__(self, training_set: TrainingSet, transform: Callable, tokenizer: Callable):
        self.training_set, self.transform, self.tokenizer = training_set, transform, tokenizer

    def __len__(self) -> int:
        return len(self.training_set)

    def __getitem__(self, item: tuple[int, int]) -> Batch:
        row, seed = item
        with Image.open(io.BytesIO(self.training_set.images.read(row))) as image:
            rgb = image.convert("RGB")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            pixels = self.transform(rgb)
        return pixels, self.tokenizer([self.training_set.texts[row]])[0]


class StreamingBatches:
    """Batches decoded on the fly in DataLoader workers, with open_clip's train transform."""

    def __init__(
        self,
        training_set: TrainingSet,
        order: SampleOrder,
        transform: Callable,
        tokenizer: Callable,
        workers: int,
        pin_memory: bool,
    ) -> None:
        self.dataset = _DecodingDataset(training_set, transform, tokenizer)
        self.order, self.workers, self.pin_memory = order, workers, pin_memory

    def iterate(self, start_step: int, steps: int) -> Iterator[Batch]:
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=_StepSampler(self.order, start_step, steps),
            num_workers=self.workers,
            pin_memory=self.pin_memory,
            persistent_workers=False,
        )
        return iter(loader)


def make_batches(
    training_set: TrainingSet,
    *,
    order: SampleOrder,
    image_size: int,
    cache_limit_bytes: float,
    preprocess_train: Any,
    tokenizer: Callable,
    workers: int,
    pin_memory: bool,
    show_progress: bool,
) -> CachedBatches | StreamingBatches:
    """In-memory batches when the decoded pool fits in ``cache_limit_bytes``, else streaming."""
    if cache_bytes(len(training_set), image_size) <= cache_limit_bytes:
        images = decode_image_cache(training_set.images, image_size, show_progress)
        tokens = tokenizer(training_set.texts)
        augmentation = Augmentation.from_open_clip(preprocess_train, image_size)
        return CachedBatches(images, tokens, order, augmentation, workers)
    if hasattr(training_set.images, "build_offsets"):
        training_set.images.build_offsets(workers)
    return StreamingBatches(training_set, order, preprocess_train, tokenizer, workers, pin_memory)
