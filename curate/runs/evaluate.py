"""`curate evaluate`: evaluate any checkpoint (a run's own, a weights file, an open_clip tag)
on registry tasks and append its result records."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from curate.core.errors import InputNotFoundError, UserInputError
from curate.eval.evaluate import TaskOutcome, check_task_data, evaluate_tasks
from curate.eval.records import RESULTS_FILE, run_block
from curate.eval.tasks import load_registry
from curate.models.loading import load_clip
from curate.runs.score import RUN_FILE


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
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if checkpoint is not None and not checkpoint.exists():
        raise InputNotFoundError(f"checkpoint {checkpoint} does not exist")
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
    if run is None:  # not one of curate's runs: no pool, scale or comparability key
        weights = loaded.identity.get("checkpoint_sha256") or loaded.identity.get("pretrained")
        run = {"run_id": f"evaluate-{str(weights)[:16]}", "baseline": False}
    block = run_block(run)
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
