"""Evaluate one CLIP model on registry tasks and append one record per task (eval/records.py)
to a results file; tasks already in the file are skipped, so a rerun finishes the rest."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from curate.core.errors import InputNotFoundError
from curate.eval.datasets import TaskData, load_task_data
from curate.eval.records import append_record, finished_tasks, pack_correct
from curate.eval.retrieval import retrieval_metrics
from curate.eval.tasks import Registry
from curate.eval.zeroshot import class_embeddings, classify
from curate.models.encode import encode_images, encode_texts


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
            raise InputNotFoundError(
                f"task {task_id}: its images {path or spec.images.path} do not exist; fix the "
                "path in the tasks file (or set its environment variable) or drop the task"
            )


def evaluate_tasks(
    loaded: Any,  # curate.models.loading.LoadedClip
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
    features, wds_labels = encode_images(
        loaded, data.images, data.tars, device, batch_size, workers, show_progress, task_id
    )
    labels = wds_labels if data.tars is not None else data.labels
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
