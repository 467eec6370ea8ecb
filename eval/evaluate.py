"""Evaluate one CLIP model on registry tasks and append one record per task (eval/records.py)
to a results file; tasks already in the file are skipped, so a rerun finishes the rest."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.datasets import TaskData, iter_wds, load_task_data
from eval.records import append_record, finished_tasks, pack_correct
from eval.retrieval import retrieval_metrics
from eval.tasks import Registry
from eval.zeroshot import class_embeddings, classify


@dataclass(frozen=True)
class TaskOutcome:
    task_id: str
    status: str  # "done", "skipped (finished)", "skipped (no data)"
    record: dict[str, Any] | None = None
    images_per_second: float | None = None

    def summary(self) -> str:
        """One line for the terminal."""
        if self.record is None:
            return f"{self.task_id}: {self.status}"
        metrics = self.record["metrics"]
        if "acc1" in metrics:
            shown = (
                f"acc1 {metrics['acc1']:.3f}  mean per-class recall "
                f"{metrics['mean_per_class_recall']:.3f}  ({metrics['n']:,} images)"
            )
        else:
            shown = "  ".join(
                f"{name.replace('_retrieval_recall', ' R')} {value:.3f}"
                for name, value in metrics.items()
                if "@" in name
            )
        return f"{self.task_id}: {shown}  [{self.images_per_second:,.0f} images/s]"


def check_task_data(registry: Registry, task_ids: Sequence[str], pool: Path | str | None) -> None:
    """Raise for a task whose data is missing (optional tasks may be absent): before training."""
    for task_id in task_ids:
        spec = registry.tasks[task_id]
        path = registry.task_path(task_id, pool)
        if (path is None or not path.exists()) and not spec.optional:
            raise FileNotFoundError(
                f"task {task_id}: its images {path or spec.images.path} do not exist; fix the "
                "path in the tasks file (or set its environment variable) or drop the task"
            )


def evaluate_tasks(
    loaded: Any,  # curate.model_loading.LoadedClip
    task_ids: Sequence[str],
    registry: Registry,
    results_path: Path,
    run: dict[str, Any],
    *,
    pool: Path | str | None = None,
    device: str = "cpu",
    batch_size: int = 256,
    workers: int = 0,
    show_progress: bool = False,
    on_task: Callable[[TaskOutcome], None] | None = None,
) -> list[TaskOutcome]:
    finished = finished_tasks(results_path)
    outcomes = []
    for task_id in task_ids:
        data = None if task_id in finished else load_task_data(registry, task_id, pool)
        if task_id in finished:
            outcome = TaskOutcome(task_id, "skipped (finished)")
        elif data is None:
            outcome = TaskOutcome(task_id, "skipped (no data)")
        else:
            started = time.perf_counter()
            record = run_task(
                loaded, task_id, registry, data, device, batch_size, workers, show_progress
            )
            record["run"] = run
            append_record(results_path, record)
            rate = record["metrics"].get("n", len(data)) / max(time.perf_counter() - started, 1e-9)
            outcome = TaskOutcome(task_id, "done", record, rate)
        outcomes.append(outcome)
        if on_task is not None:
            on_task(outcome)
    return outcomes


def run_task(
    loaded: Any,
    task_id: str,
    registry: Registry,
    data: TaskData,
    device: str,
    batch_size: int = 256,
    workers: int = 0,
    show_progress: bool = False,
) -> dict[str, Any]:
    """One task's result record (without the run block)."""
    spec = registry.tasks[task_id]
    features, labels = encode_images(
        loaded, data, device, batch_size, workers, show_progress, task_id
    )
    record: dict[str, Any] = {
        "dataset": task_id,
        "model": loaded.identity["arch"],
        "pretrained": loaded.identity.get("checkpoint") or loaded.identity.get("pretrained"),
        "task": spec.task,
        "task_info": spec.task_info,
        "data": {"path": data.source, "filter": spec.images.filter},
        "model_identity": loaded.identity,
        "created": datetime.now(timezone.utc).isoformat(),
    }
    if spec.task == "zeroshot_classification":
        weights = class_embeddings(
            loaded.model, loaded.tokenizer, data.classnames, data.templates, device
        )
        result = classify(features, weights, labels)
        record["metrics"] = result.metrics
        record["correct_bits"] = pack_correct(result.correct)
    else:
        texts = encode_texts(loaded, data.texts, device, batch_size)
        record["metrics"] = retrieval_metrics(features, texts, np.arange(len(texts)))
    return record


def encode_images(
    loaded: Any,
    data: TaskData,
    device: str,
    batch_size: int,
    workers: int,
    show_progress: bool = False,
    description: str = "",
) -> tuple[np.ndarray, np.ndarray | None]:
    """L2-normalised image features (float32, dataset order) and, for wds, the labels."""
    from rich.progress import track

    if data.tars is not None:
        dataset: Any = _WdsImages(data.tars, loaded.preprocess)
        workers = 0  # one stream keeps the file order
    else:
        dataset = _Images(data.images, loaded.preprocess)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    features, labels = [], []
    with torch.inference_mode():
        for batch in track(
            loader,
            description=f"evaluating {description}",
            disable=not show_progress,
            transient=True,
        ):
            pixels = batch[0] if data.tars is not None else batch
            encoded = loaded.model.encode_image(pixels.to(device), normalize=True)
            features.append(encoded.float().cpu().numpy())
            if data.tars is not None:
                labels.append(batch[1].numpy())
    stacked = np.concatenate(features) if features else np.zeros((0, 0), np.float32)
    return stacked, (np.concatenate(labels) if labels else data.labels)


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


def evaluate_checkpoint(
    checkpoint: Path | str | None,
    *,
    model: str | None = None,
    pretrained: str | None = None,
    tasks: Sequence[str] | None = None,
    tasks_file: Path | str | None = None,
    out: Path | str | None = None,
    pool: Path | str | None = None,
    batch_size: int = 256,
    workers: int = 0,
    show_progress: bool = False,
    on_task: Callable[[TaskOutcome], None] | None = None,
) -> tuple[Path, list[TaskOutcome]]:
    """Evaluate any checkpoint (a curate checkpoint dir, a weights file, an open_clip tag).

    A run's own checkpoint (``results/<run_id>/checkpoint``) appends to that run's
    results.jsonl with its run identity; anything else needs ``out`` (default: the
    checkpoint directory's results.jsonl) and gets a run block without a comparability key.
    """
    import json

    from curate.errors import UserInputError
    from curate.model_loading import load_clip
    from curate.training.score import RUN_FILE, record_run_block
    from eval.records import RESULTS_FILE
    from eval.tasks import load_registry

    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if checkpoint is not None and not checkpoint.exists():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    run = None
    if checkpoint is not None and checkpoint.is_dir() and (checkpoint.parent / RUN_FILE).is_file():
        run = json.loads((checkpoint.parent / RUN_FILE).read_text("utf-8"))
        pool = pool or (run.get("pool_identity") or {}).get("raw_pool")
    if out is not None:
        results_path = Path(out)
    elif run is not None:
        results_path = checkpoint.parent / RESULTS_FILE
    elif checkpoint is not None and checkpoint.is_dir():
        results_path = checkpoint / RESULTS_FILE
    else:
        raise UserInputError("pass --out RESULTS.jsonl: where to write this model's results")
    registry = load_registry(tasks_file)
    task_ids = registry.task_ids(list(tasks) if tasks else None)
    check_task_data(registry, task_ids, pool)  # a missing task fails before loading the model
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_clip(model, pretrained=pretrained, checkpoint=checkpoint, device=device)
    if run is not None:
        block = record_run_block(run)
    else:
        block = {
            "run_id": "evaluate-"
            + str(loaded.identity.get("checkpoint_sha256") or loaded.identity.get("pretrained"))[
                :16
            ],
            "pool": None,
            "recipe": None,
            "scale": None,
            "seed": None,
            "samples_seen": None,
            "baseline": False,
            "comparability_key": None,
            "config": None,
        }
    outcomes = evaluate_tasks(
        loaded,
        task_ids,
        registry,
        results_path,
        block,
        pool=pool,
        device=device,
        batch_size=batch_size,
        workers=workers,
        show_progress=show_progress,
        on_task=on_task,
    )
    return results_path, outcomes
