"""Embed a pool's images and captions with a CLIP model: the ``curate embed`` step.

Output, beside the pool (see :mod:`curate.core.embedding_store`)::

    POOL/embeddings/<name>/
      image.npy            float16 (rows, dim), L2-normalised, row i = samples.parquet row i
      text.npy             float16 (rows, dim), same rows, from the captions
      clip_score.parquet   uid, clip_score (float32 cosine of the stored image and text vectors)
      meta.json            model identity (arch, pretrained tag or checkpoint + sha256, dim,
                           preprocessing), rows, precision, pool, curate version

Filters get the CLIP score by set name: ``embeddings/<name>/clip_score.parquet`` joined on
``uid`` (``StageContext.embeddings_name`` picks the set; with one set it is implicit).

Streaming: shards are read one at a time (tar members in file order), decoded and
preprocessed in DataLoader workers, and written into ``.npy`` files preallocated to the
pool's row count and memory-mapped, so memory does not grow with the pool. Batches never
span two shards, so a shard's vectors do not depend on which other shards ran.

Scale-out: given an :mod:`~curate.core.executor` (``curate embed --executor ray``), each shard is
one task instead: a worker loads the model once, embeds the shard in the same batches and
hands its vectors back; this process writes them in. The vectors are the same bytes.

Resume: the set is built in ``embeddings/.<name>.partial/``; after each shard the arrays are
flushed and the shard is recorded in ``progress.json``. A rerun with the same model and pool
skips finished shards; the set directory appears (atomically) only when complete.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from curate.core.atomic import (
    exclusive_lock,
    publish_directory,
    staging_dir_for,
    write_json,
)
from curate.core.embedding_store import write_clip_score
from curate.core.errors import OutputExistsError, UserInputError
from curate.core.executor import Executor
from curate.core.images import IMAGE_EXTENSIONS
from curate.core.layout import EmbeddingLayout
from curate.core.manifest import produced_by
from curate.core.pool import Pool
from curate.core.progress import progress_bar
from curate.models.loading import CHECKPOINT_WEIGHTS, LoadedClip, load_clip

PROGRESS = "progress.json"
_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class EmbedReport:
    name: str
    path: Path
    rows: int
    dim: int
    shards_total: int
    shards_computed: tuple[str, ...]  # by this run; the others were finished by an earlier run
    rows_computed: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.rows_computed / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class _ShardJob:
    """One shard to embed: its path in the pool, and which row each of its keys fills."""

    ordinal: int
    shard: str  # relative to the pool root, as in samples.parquet
    keys: np.ndarray  # str
    rows: np.ndarray  # int64 row in samples.parquet of keys[i]


class _Batch(NamedTuple):  # a NamedTuple so that the DataLoader can pin its tensors
    ordinal: int
    rows: torch.Tensor  # int64 (n,)
    images: torch.Tensor  # float (n, 3, h, w), preprocessed
    tokens: torch.Tensor  # int (n, context_length)


class _WorkerError(NamedTuple):
    """A user error met in a DataLoader worker, handed to the main process to raise."""

    message: str


class _ModelSpec(NamedTuple):
    """What :func:`load_clip` needs: how an executor's worker loads the same model."""

    arch: str | None
    pretrained: str | None
    checkpoint: str | None
    device: str


@dataclass(frozen=True)
class _ShardTask:
    """One shard for an executor's worker to embed."""

    pool_root: Path
    job: _ShardJob
    model: _ModelSpec
    identity: str  # the model's identity as the parent loaded it (JSON): the weights' sha256
    batch_size: int


# per process, the last model loaded (a worker loads it once for all the shards it embeds)
_MODELS: dict[str, LoadedClip] = {}


def default_workers() -> int:
    """Decoding workers: all cores but one (the model runs in the main process), at most 8."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def default_set_name(identity: dict[str, Any]) -> str:
    """``<arch>-<tag>`` or ``<arch>-<checkpoint name>-<sha256[:8]>``, as a directory name."""
    if identity.get("pretrained"):
        raw = f"{identity['arch']}-{identity['pretrained']}"
    elif identity.get("checkpoint"):
        path = Path(identity["checkpoint"])
        stem = path.parent.name if path.name == CHECKPOINT_WEIGHTS else path.stem
        raw = f"{identity['arch']}-{stem}-{identity['checkpoint_sha256'][:8]}"
    else:
        raw = identity["arch"]
    return re.sub(r"[^a-z0-9._-]+", "-", raw.lower()).strip("-.")


def embed_pool(
    pool_path: Path | str,
    *,
    arch: str | None,
    pretrained: str | None = None,
    checkpoint: str | Path | None = None,
    name: str | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    executor: Executor | None = None,
) -> EmbedReport:
    """Embed every sample of a pool into ``embeddings/<name>/`` (see the module docstring).

    Without an ``executor`` this process runs the model and ``workers`` processes decode the
    images (the better layout on one machine, and for one GPU); with one, every shard is a
    task on it (``workers`` is then unused)."""
    pool = Pool.open(pool_path)
    if not pool.manifest.has_images:
        raise UserInputError(
            f"{pool.root} is a metadata-only pool (no images): download images first with "
            "`curate download`, or import precomputed embeddings"
        )
    if batch_size < 1:
        raise UserInputError(f"--batch-size must be at least 1 (got {batch_size})")
    if pretrained is None and checkpoint is None and ":" not in (arch or ""):
        raise UserInputError(  # (an hf-hub:/local-dir: architecture brings its own weights)
            "embedding needs trained weights: pass --pretrained TAG_OR_FILE or --checkpoint DIR"
        )
    if name is not None and not _SET_NAME.fullmatch(name):
        raise UserInputError(
            f"--name {name!r}: use letters, digits, '.', '_' and '-' (it names a directory)"
        )
    if name is not None:
        _refuse_existing(pool.layout.embeddings(name), overwrite)  # before loading the model
    spec = _ModelSpec(arch, pretrained, None if checkpoint is None else str(checkpoint), device)
    loaded = load_clip(arch, pretrained=pretrained, checkpoint=checkpoint, device=device)
    _MODELS.clear()
    _MODELS[_identity_key(loaded)] = loaded  # a task run in this process uses it
    name = name or default_set_name(loaded.identity)
    layout = pool.layout.embeddings(name)
    with exclusive_lock(layout.root):
        _refuse_existing(layout, overwrite)
        run = _EmbedRun(pool, loaded, spec, name, layout, batch_size, device)
        workers = default_workers() if workers is None else workers
        return run.execute(workers, overwrite, progress, executor)


def _refuse_existing(layout: EmbeddingLayout, overwrite: bool) -> None:
    if layout.root.exists() and not overwrite:
        raise OutputExistsError(
            f"{layout.root} already exists; pass --overwrite to recompute it or --name to keep both"
        )


@dataclass
class _EmbedRun:
    pool: Pool
    loaded: LoadedClip
    spec: _ModelSpec
    name: str
    layout: EmbeddingLayout
    batch_size: int
    device: str

    @property
    def precision(self) -> str:
        return "amp" if self.device.startswith("cuda") else "fp32"

    def execute(
        self, workers: int, overwrite: bool, progress: bool, executor: Executor | None
    ) -> EmbedReport:
        started = time.perf_counter()
        jobs, rows = _plan(self.pool)
        fingerprint = {
            "model": self.loaded.identity,
            "pool": {
                "root": str(self.pool.root.resolve()),
                "created": self.pool.manifest.created,
                "rows": rows,
            },
            "precision": self.precision,
        }
        staging = EmbeddingLayout(staging_dir_for(self.layout.root))
        finished = _open_staging(staging, fingerprint, rows, self.loaded.identity["dim"])
        pending = [job for job in jobs if job.shard not in finished]
        remaining = {job.ordinal: len(job.rows) for job in pending}
        image_array = np.load(staging.image, mmap_mode="r+")
        text_array = np.load(staging.text, mmap_mode="r+")
        computed: list[str] = []
        rows_done_before = rows - sum(remaining.values())
        with progress_bar(
            rows, f"embed {self.name}", progress, completed=rows_done_before, unit="images"
        ) as advance:
            if executor is None:
                results = self._batches(pending, workers)
            else:
                results = self._shard_results(pending, executor)
            for ordinal, batch_rows, image, text in results:
                image_array[batch_rows] = image
                text_array[batch_rows] = text
                advance(len(batch_rows))
                remaining[ordinal] -= len(batch_rows)
                if remaining[ordinal] == 0:
                    image_array.flush()
                    text_array.flush()
                    shard = jobs[ordinal].shard
                    finished.add(shard)
                    computed.append(shard)
                    progress_record = {"fingerprint": fingerprint, "finished": sorted(finished)}
                    write_json(staging.root / PROGRESS, progress_record)
        del image_array, text_array
        write_clip_score(staging, self.pool.layout.samples)
        write_json(staging.meta, self._meta(rows))
        (staging.root / PROGRESS).unlink()
        publish_directory(staging.root, self.layout.root, overwrite=overwrite)
        return EmbedReport(
            name=self.name,
            path=self.layout.root,
            rows=rows,
            dim=self.loaded.identity["dim"],
            shards_total=len(jobs),
            shards_computed=tuple(computed),
            rows_computed=rows - rows_done_before,
            seconds=time.perf_counter() - started,
        )

    def _batches(
        self, jobs: list[_ShardJob], workers: int
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """(shard ordinal, rows, image vectors, text vectors) per batch, float16 unit vectors."""
        if not jobs:
            return
        loaded, device = self.loaded, self.device
        dataset = _ShardBatches(
            self.pool.root, jobs, loaded.preprocess, loaded.tokenizer, self.batch_size
        )
        loader = DataLoader(
            dataset,
            batch_size=None,
            num_workers=min(workers, len(jobs)),
            pin_memory=device.startswith("cuda"),
        )
        for batch in loader:
            yield _encode(loaded, batch, device)

    def _shard_results(
        self, jobs: list[_ShardJob], executor: Executor
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """As :meth:`_batches`, one whole shard at a time, each shard a task on ``executor``."""
        identity = _identity_key(self.loaded)
        tasks = [
            _ShardTask(self.pool.root, job, self.spec, identity, self.batch_size) for job in jobs
        ]
        gpus = 1 if self.device.startswith("cuda") else 0
        return executor.map(_embed_shard, tasks, gpus=gpus)

    def _meta(self, rows: int) -> dict[str, Any]:
        return {
            **self.loaded.identity,
            "name": self.name,
            "rows": rows,
            "dtype": "float16",
            "normalized": True,
            "precision": self.precision,
            "pool": {
                "name": self.pool.name,
                "root": str(self.pool.root.resolve()),
                "created": self.pool.manifest.created,
            },
            "produced_by": produced_by(
                "embed", name=self.name, device=self.device, batch_size=self.batch_size
            ),
        }


def _encode(
    loaded: LoadedClip, batch: _Batch | _WorkerError, device: str
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(shard ordinal, rows, image vectors, text vectors) of a batch, float16 unit vectors."""
    if isinstance(batch, _WorkerError):
        raise UserInputError(batch.message)
    autocast = torch.autocast("cuda") if device.startswith("cuda") else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        image = loaded.model.encode_image(batch.images.to(device, non_blocking=True))
        text = loaded.model.encode_text(batch.tokens.to(device, non_blocking=True))
    return (
        batch.ordinal,
        batch.rows.numpy(),
        F.normalize(image.float(), dim=-1).half().cpu().numpy(),
        F.normalize(text.float(), dim=-1).half().cpu().numpy(),
    )


def _identity_key(loaded: LoadedClip) -> str:
    return json.dumps(loaded.identity, sort_keys=True, default=str)


def _embed_shard(task: _ShardTask) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """One shard's vectors, computed in the same batches as the in-process pipeline."""
    loaded = _MODELS.get(task.identity)
    if loaded is None:
        _MODELS.clear()
        loaded = load_clip(*task.model)
        if _identity_key(loaded) != task.identity:
            weights = task.model.checkpoint or task.model.pretrained
            raise UserInputError(
                f"the model's weights ({weights}) changed while `curate embed` ran: a worker "
                "loaded other weights than this process; rerun the command"
            )
        _MODELS[task.identity] = loaded
    dataset = _ShardBatches(
        task.pool_root, [task.job], loaded.preprocess, loaded.tokenizer, task.batch_size
    )
    batches = [_encode(loaded, batch, task.model.device) for batch in dataset]
    if not batches:
        dim = loaded.identity["dim"]
        empty = np.zeros((0, dim), dtype=np.float16)
        return task.job.ordinal, np.zeros(0, dtype=np.int64), empty, empty
    return (
        task.job.ordinal,
        np.concatenate([b[1] for b in batches]),
        np.concatenate([b[2] for b in batches]),
        np.concatenate([b[3] for b in batches]),
    )


def _plan(pool: Pool) -> tuple[list[_ShardJob], int]:
    """Group samples.parquet's rows by shard: which key of which shard fills which row."""
    samples = pool.samples(columns=["shard", "key"]).with_row_index("row")
    grouped = samples.group_by("shard").agg("key", "row").sort("shard")
    jobs = [
        _ShardJob(i, shard, np.asarray(keys, dtype=str), np.asarray(rows, dtype=np.int64))
        for i, (shard, keys, rows) in enumerate(grouped.iter_rows())
    ]
    return jobs, samples.height


def _open_staging(
    staging: EmbeddingLayout, fingerprint: dict[str, Any], rows: int, dim: int
) -> set[str]:
    """Finished shards of an interrupted run of the same job; else a fresh staging dir."""
    progress_path = staging.root / PROGRESS
    if progress_path.is_file() and staging.image.is_file() and staging.text.is_file():
        progress = json.loads(progress_path.read_text("utf-8"))
        if progress.get("fingerprint") == json.loads(json.dumps(fingerprint)):
            return set(progress["finished"])
    if staging.root.exists():
        shutil.rmtree(staging.root)
    staging.root.mkdir(parents=True)
    for path in (staging.image, staging.text):
        np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(rows, dim)).flush()
    write_json(progress_path, {"fingerprint": fingerprint, "finished": []})
    return set()


class _ShardBatches(IterableDataset):
    """Decoded, preprocessed, tokenised batches; worker i of n takes shards i, i+n, ...

    A batch never spans two shards, so a shard's vectors are the same however the work was
    split between runs.
    """

    def __init__(
        self,
        pool_root: Path,
        jobs: list[_ShardJob],
        preprocess: Callable[[Any], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        batch_size: int,
    ) -> None:
        self.pool_root = pool_root
        self.jobs = jobs
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[_Batch | _WorkerError]:
        info = get_worker_info()
        mine = self.jobs if info is None else self.jobs[info.id :: info.num_workers]
        try:
            for job in mine:
                yield from self._shard_batches(job)
        except UserInputError as error:
            yield _WorkerError(str(error))

    def _shard_batches(self, job: _ShardJob) -> Iterator[_Batch]:
        row_of = dict(zip(job.keys.tolist(), job.rows.tolist(), strict=True))
        path = self.pool_root / job.shard
        rows: list[int] = []
        images: list[torch.Tensor] = []
        texts: list[str] = []
        for key, image_bytes, text in _iter_shard(path):
            row = row_of.pop(key, None)
            if row is None:
                continue  # not in samples.parquet: not part of the pool's table
            try:
                images.append(self.preprocess(Image.open(io.BytesIO(image_bytes))))
            except Exception as error:  # PIL raises many types for a bad image
                raise UserInputError(
                    f"{path}: cannot decode image {key} ({type(error).__name__}: {error})"
                ) from None
            rows.append(row)
            texts.append(text)
            if len(rows) == self.batch_size:
                yield self._batch(job, rows, images, texts)
                rows, images, texts = [], [], []
        if row_of:
            raise UserInputError(
                f"{path}: sample {next(iter(row_of))} of samples.parquet is not in the shard "
                f"({len(row_of)} missing); the pool is damaged, re-create it"
            )
        if rows:
            yield self._batch(job, rows, images, texts)

    def _batch(
        self, job: _ShardJob, rows: list[int], images: list[torch.Tensor], texts: list[str]
    ) -> _Batch:
        return _Batch(job.ordinal, torch.tensor(rows), torch.stack(images), self.tokenizer(texts))


def _iter_shard(path: Path) -> Iterator[tuple[str, bytes, str]]:
    """(key, image bytes, caption) per sample of a webdataset tar, streaming in file order."""
    if not path.is_file():
        raise UserInputError(f"{path}: shard listed in samples.parquet does not exist")
    current: str | None = None
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r|*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, _, extension = member.name.partition(".")
                if key != current:
                    if current is not None:
                        yield _sample(path, current, members)
                    current, members = key, {}
                handle = archive.extractfile(member)
                assert handle is not None
                members[extension.lower()] = handle.read()
    except tarfile.TarError as error:
        raise UserInputError(f"{path}: unreadable shard ({error}); re-create the pool") from None
    if current is not None:
        yield _sample(path, current, members)


def _sample(path: Path, key: str, members: dict[str, bytes]) -> tuple[str, bytes, str]:
    image = next((members[ext] for ext in IMAGE_EXTENSIONS if ext in members), None)
    if image is None or "txt" not in members:
        raise UserInputError(
            f"{path}: sample {key} lacks an image or a .txt caption (has {sorted(members)})"
        )
    return key, image, members["txt"].decode("utf-8")
