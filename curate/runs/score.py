"""`curate score`: train a CLIP from scratch on a pool or candidate pool at a fixed scale, then
evaluate it on the registry's tasks. Everything lands in ``<pool>/results/<run_id>/``::

    run.json          the full configuration, pool identity, code version, training summary
    checkpoint/       the final weights (a curate checkpoint; `curate evaluate` / `embed` load it)
    train_curve.json  the loss of every step
    results.jsonl     one record per task (eval/records.py)
    train_state.pt    only while training: the resumable state

The run id is a function of the scale's settings and the seed, so rerunning the same command
after a kill resumes the training from its last checkpoint, and rerunning it after it
finished only evaluates the tasks not yet in results.jsonl.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from curate.core.atomic import exclusive_lock, remove_stale_temporaries, write_json
from curate.core.manifest import code_version
from curate.eval.records import run_block
from curate.training.checkpoint import is_complete_checkpoint
from curate.training.data import TrainingSet, open_training_set
from curate.training.scales import Scale, get_scale

RUN_FILE = "run.json"
CHECKPOINT_DIR = "checkpoint"
TRAIN_STATE = "train_state.pt"
TRAIN_CURVE = "train_curve.json"


@dataclass(frozen=True)
class ScoreResult:
    run_dir: Path
    run: dict[str, Any]
    trained: bool  # False when the checkpoint already existed
    tasks: list[Any]  # curate.eval.evaluate.TaskOutcome


def canonical_sha256(value: Any) -> str:
    return hashlib.sha256(
        json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")
    ).hexdigest()


def comparability_key(scale: Scale, task_ids: Sequence[str]) -> str:
    """Two results are comparable only when this matches: same model, budget, batch, schedule,
    precision and eval tasks (the fixed budget that makes pools comparable)."""
    return canonical_sha256(
        {
            "arch": scale.arch,
            "image_size": scale.image_size,
            "samples_seen": scale.samples_seen,
            "batch_size": scale.batch_size,
            "lr": scale.lr,
            "warmup": scale.warmup,
            "schedule": scale.schedule,
            "precision": scale.precision,
            "tasks": sorted(task_ids),
            # augmentation off is another recipe; on (the default) leaves older keys as they were
            **({} if scale.augment else {"augment": False}),
        }
    )


def make_run_id(scale_name: str, scale: Scale, seed: int) -> str:
    digest = canonical_sha256({"scale": scale.identity(), "seed": seed})[:8]
    return f"{scale_name}-{scale.samples_seen}-seed{seed}-{digest}"


def results_dir(target: Path) -> Path:
    return Path(target) / "results"


def describe_run(
    training_set: TrainingSet,
    scale_name: str,
    scale: Scale,
    seed: int,
    task_ids: Sequence[str],
    baseline_family: str | None,
) -> dict[str, Any]:
    """``baseline_family``: None for a candidate's run; for a baseline point, its family
    ("id": trained on ID data only, the single-ID line; e.g. "pool": the multi-ID plane only)."""
    identity = training_set.identity
    return {
        "run_id": make_run_id(scale_name, scale, seed),
        "pool": identity["path"],
        "pool_id": identity["pool_id"],
        "pool_identity": identity,
        "recipe": identity.get("recipe"),
        "scale": scale_name,
        "seed": seed,
        "samples_seen": scale.steps * scale.batch_size,
        "baseline": baseline_family is not None,
        "baseline_family": baseline_family,
        "comparability_key": comparability_key(scale, task_ids),
        "config": scale.model_dump(),
        "tasks": list(task_ids),
        "code_version": code_version(),
        "created": _now(),
    }


def score(
    target: Path | str,
    *,
    scale_name: str = "tiny",
    seed: int = 0,
    tasks: Sequence[str] | None = None,
    scales_file: Path | str | None = None,
    tasks_file: Path | str | None = None,
    scale: Scale | None = None,
    baseline_family: str | None = None,
    show_progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    on_task: Callable[[Any], None] | None = None,
) -> ScoreResult:
    """Train (or resume) and evaluate one run; ``scale`` overrides the named scale's settings.

    ``baseline_family`` marks the run as a baseline point of that family (see
    :func:`describe_run`) instead of a candidate's result."""
    from curate.eval.evaluate import check_task_data
    from curate.eval.tasks import load_registry

    target = Path(target).resolve()
    training_set = open_training_set(target)
    scale = scale or get_scale(scale_name, scales_file)
    registry = load_registry(tasks_file)
    task_ids = registry.task_ids(list(tasks) if tasks else None)
    raw_pool = training_set.identity.get("raw_pool")
    check_task_data(registry, task_ids, raw_pool)  # a missing task fails before any training
    run = describe_run(training_set, scale_name, scale, seed, task_ids, baseline_family)
    run_dir = results_dir(target) / run["run_id"]
    is_main = int(os.environ.get("RANK", "0")) == 0
    if not is_main:  # the other torchrun processes only train
        run["train"] = _train(training_set, scale, seed, run_dir, show_progress, on_step).summary()
        return ScoreResult(run_dir, run, True, [])
    with exclusive_lock(run_dir):
        remove_stale_temporaries(run_dir)  # of atomic writes that a killed earlier run left
        checkpoint = run_dir / CHECKPOINT_DIR
        run_file = run_dir / RUN_FILE
        previous = json.loads(run_file.read_text("utf-8")) if run_file.is_file() else {}
        # the summary is recorded after the final checkpoint: a run killed in between lost its
        # loss curve with the training state, so it trains again (same seed, same weights)
        trained = not (is_complete_checkpoint(checkpoint) and previous.get("train"))
        if trained:
            write_json(run_dir / RUN_FILE, {**run, "status": "training"})
            outcome = _train(training_set, scale, seed, run_dir, show_progress, on_step)
            write_json(run_dir / TRAIN_CURVE, {"loss": outcome.losses})
            run["train"] = outcome.summary()
        else:
            run["train"], run["created"] = previous["train"], previous.get("created")
        write_json(run_dir / RUN_FILE, {**run, "status": "trained", "updated": _now()})
        outcomes = evaluate_run(run_dir, run, task_ids, registry, raw_pool, show_progress, on_task)
        write_json(run_dir / RUN_FILE, {**run, "status": "evaluated", "updated": _now()})
    return ScoreResult(run_dir, run, trained, outcomes)


def _train(
    training_set: TrainingSet,
    scale: Scale,
    seed: int,
    run_dir: Path,
    show_progress: bool,
    on_step: Callable[[int, float], None] | None,
) -> Any:
    from curate.training.loop import train_clip

    return train_clip(
        training_set,
        scale,
        seed,
        state_path=run_dir / TRAIN_STATE,
        checkpoint_dir=run_dir / CHECKPOINT_DIR,
        show_progress=show_progress,
        on_step=on_step,
    )


def evaluate_run(
    run_dir: Path,
    run: dict[str, Any],
    task_ids: Sequence[str],
    registry: Any,
    raw_pool: str | None,
    show_progress: bool,
    on_task: Callable[[Any], None] | None,
) -> list[Any]:
    import torch

    from curate.eval.evaluate import evaluate_tasks
    from curate.eval.records import RESULTS_FILE
    from curate.models.loading import load_clip

    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_clip(None, checkpoint=run_dir / CHECKPOINT_DIR, device=device)
    return evaluate_tasks(
        loaded,
        task_ids,
        registry,
        run_dir / RESULTS_FILE,
        run_block(run),
        pool=raw_pool,
        device=device,
        show_progress=show_progress,
        on_task=on_task,
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()
