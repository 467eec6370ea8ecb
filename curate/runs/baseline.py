"""`curate baseline`: the points of the tiny-scale baseline line.

Standard models trained on ID data only (a clean pool made from a labelled parquet, e.g. the
demo's CIFAR-10 train, captioned by class-name templates) at several budgets and seeds, and
evaluated on the same tasks as the candidates; their runs are marked ``baseline = true``.
Their (ID, shift) accuracies trace the trend that effective robustness is measured against.
What to train on and evaluate is data: the task set's ``baseline_train`` in eval/tasks.yaml.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from curate.core.errors import InputNotFoundError, NotAPoolError, UserInputError
from curate.core.hashing import file_sha256
from curate.core.image_tables import read_image_parquet
from curate.core.manifest import read_manifest
from curate.eval.collect import ID_FAMILY
from curate.eval.tasks import load_registry
from curate.runs.score import ScoreResult, score
from curate.training.scales import get_scale


def build_labelled_pool(
    out: Path,
    images: Path,
    row_filter: str | None,
    caption_templates: Sequence[str],
    name: str,
) -> None:
    """A pool of a labelled parquet's images, row i captioned by template i mod len."""
    from curate.core.pool_writer import PoolWriter, SourceSample

    table = read_image_parquet(images, ["label", "class_name"], row_filter)
    source = {
        "type": "labelled_parquet",
        "path": str(images),
        "sha256": file_sha256(images),  # the same data after the checkout moved
        "filter": row_filter,
        "caption_templates": list(caption_templates),
    }
    with PoolWriter(out, name=name, source=source, command="baseline") as writer:
        for row, (data, label, class_name) in enumerate(table.iter_rows()):
            writer.add(
                SourceSample(
                    source=name,
                    where=f"{images.name} row {row}",
                    text=caption_templates[row % len(caption_templates)].format(class_name),
                    image=data,
                    extras={"label": label, "class_name": class_name},
                )
            )


def ensure_baseline_pool(out: Path, task_set: str, tasks_file: Path | str | None) -> list[str]:
    """Build (once) the clean ID pool of a task set; return the set's task ids."""
    registry = load_registry(tasks_file)
    if task_set not in registry.task_sets:
        raise UserInputError(
            f"unknown task set {task_set!r}; task sets: {', '.join(registry.task_sets)}"
        )
    spec = registry.task_sets[task_set]
    path = registry.baseline_train_path(task_set)
    if spec.baseline_train is None or path is None:
        raise UserInputError(
            f"task set {task_set!r} has no baseline_train (the ID data to train baselines on); "
            "add one in your --tasks-file"
        )
    if not path.is_file():
        raise InputNotFoundError(f"baseline training data {path} does not exist")
    if out.exists():
        try:
            manifest = read_manifest(out)
        except NotAPoolError:
            raise UserInputError(
                f"{out} exists but is not a baseline pool; choose another --out"
            ) from None
        same_data = manifest.source.get("path") == str(path) or (
            manifest.source.get("sha256") == file_sha256(path)
        )
        if not same_data:
            raise UserInputError(
                f"{out} is a pool of {manifest.source.get('path')}, not of {path}; "
                "choose another --out for this task set"
            )
    else:
        train = spec.baseline_train
        build_labelled_pool(
            out, path, train.images.filter, train.caption_templates, f"{task_set}-baseline"
        )
    return spec.tasks


def run_baselines(
    out: Path | str,
    *,
    task_set: str,
    budgets: Sequence[int],
    seeds: Sequence[int],
    scale_name: str = "tiny",
    scales_file: Path | str | None = None,
    tasks_file: Path | str | None = None,
    family: str = ID_FAMILY,
    show_progress: bool = True,
    on_run: Callable[[ScoreResult], None] | None = None,
    on_task: Callable[[Any], None] | None = None,
) -> list[ScoreResult]:
    out = Path(out).resolve()
    base = get_scale(scale_name, scales_file)
    too_small = [budget for budget in budgets if budget < 2 * base.batch_size]
    if too_small or not budgets or not seeds:
        raise UserInputError(
            f"give at least one seed and budgets of two batches ({2 * base.batch_size} samples) "
            f"or more at scale {scale_name} (got budgets {list(budgets)}, seeds {list(seeds)})"
        )
    task_ids = ensure_baseline_pool(out, task_set, tasks_file)
    results = []
    for budget in budgets:
        for seed in seeds:
            result = score(
                out,
                scale_name=scale_name,
                seed=seed,
                tasks=task_ids,
                tasks_file=tasks_file,
                scale=base.with_samples_seen(budget),
                baseline_family=family,
                show_progress=show_progress,
                on_task=on_task,
            )
            results.append(result)
            if on_run is not None:
                on_run(result)
    return results
