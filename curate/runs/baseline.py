"""`curate baseline`: the points of the tiny-scale baseline line.

Standard models trained on ID data only (a clean pool made from a labelled parquet, e.g. the
demo's CIFAR-10 train, captioned by class-name templates) at several budgets and seeds, and
evaluated on the same tasks as the candidates; their runs are marked ``baseline = true``.
Their (ID, shift) accuracies trace the trend that effective robustness is measured against.
What to train on and evaluate is data: the task set's ``baseline_train`` in eval/tasks.yaml.

A line through one architecture at several budgets is a budget curve: every point shares the
architecture and recipe, so its fit says nothing about how far other standard models fall from
it. Testbeds fit the line through many kinds of standard models; :class:`BaselineModel` names
one kind (architecture, augmentation on or off) and its budgets, and a line mixes several.

Baseline runs do not depend on the candidate pools, so a cache directory
(``run_baselines(cache=DIR)``) keeps them across outputs: the runs train and are evaluated in
``DIR/<task set>-<data key>/results/<run_id>/`` (the data key hashes the training parquet's
sha256, its row filter and caption templates; the run id the scale's settings, the
architecture, the augmentation, the budget and the seed), and each output gets a copy of the
run's records with its checkpoint linked, so that a second output, or another demo profile,
reuses every finished run and evaluates only the tasks it lacks.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.core.atomic import write_text
from curate.core.errors import InputNotFoundError, NotAPoolError, UserInputError
from curate.core.hashing import file_sha256
from curate.core.image_tables import read_image_parquet
from curate.core.manifest import read_manifest
from curate.eval.collect import ID_FAMILY
from curate.eval.records import RESULTS_FILE, read_records
from curate.eval.tasks import load_registry
from curate.training.scales import Scale, get_scale

if TYPE_CHECKING:
    from curate.runs.score import ScoreResult

# torch loads with curate.runs.score: imported where a run trains, so that the demo's profiles
# (which name BaselineModels) stay cheap to import


@dataclass(frozen=True)
class BaselineModel:
    """One kind of standard model on the baseline line: an architecture and a training recipe
    (augmentation on or off) on the task set's ID data, trained at each of ``budgets``.

    ``arch`` and ``augment`` None keep the scale's; ``seeds`` None takes
    :func:`run_baselines`' seeds."""

    budgets: tuple[int, ...]
    arch: str | None = None
    augment: bool | None = None
    seeds: tuple[int, ...] | None = None

    def scale(self, base: Scale, budget: int) -> Scale:
        """The base scale at ``budget`` with this kind's architecture and augmentation."""
        settings = base.with_samples_seen(budget).model_dump()
        if self.arch is not None:
            settings["arch"] = self.arch
        if self.augment is not None:
            settings["augment"] = self.augment
        return Scale(**settings)


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


def _baseline_train(task_set: str, tasks_file: Path | str | None) -> tuple[Any, Path, list[str]]:
    """The task set's baseline_train spec, its data's path and the set's task ids."""
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
    return spec.baseline_train, path, spec.tasks


def ensure_baseline_pool(out: Path, task_set: str, tasks_file: Path | str | None) -> list[str]:
    """Build (once) the clean ID pool of a task set; return the set's task ids."""
    train, path, task_ids = _baseline_train(task_set, tasks_file)
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
        build_labelled_pool(
            out, path, train.images.filter, train.caption_templates, f"{task_set}-baseline"
        )
    return task_ids


def cached_pool_dir(cache: Path | str, task_set: str, tasks_file: Path | str | None) -> Path:
    """Where a cache keeps a task set's baseline pool and runs: one folder per training data
    (the parquet's sha256, row filter and caption templates), whatever its path."""
    from curate.runs.score import canonical_sha256

    train, path, _ = _baseline_train(task_set, tasks_file)
    data_key = canonical_sha256(
        {
            "sha256": file_sha256(path),
            "filter": train.images.filter,
            "caption_templates": list(train.caption_templates),
        }
    )
    return Path(cache).resolve() / f"{task_set}-{data_key[:12]}"


def link_cached_run(cached: Path, local: Path) -> None:
    """Make ``local`` (an output's ``results/<run_id>``) a view of a cached run: run.json and
    the cached records copied, the checkpoint linked. Records ``local`` already holds for
    tasks the cache lacks (e.g. the holdout of one demo's own pool) are kept."""
    from curate.runs.score import CHECKPOINT_DIR, RUN_FILE

    cached_records = read_records(cached / RESULTS_FILE)
    local_file = local / RESULTS_FILE
    cached_tasks = {record["dataset"] for record in cached_records}
    own = [
        record
        for record in (read_records(local_file) if local_file.is_file() else [])
        if record["dataset"] not in cached_tasks
    ]
    local.mkdir(parents=True, exist_ok=True)
    checkpoint = local / CHECKPOINT_DIR
    if not checkpoint.exists():
        if checkpoint.is_symlink():  # a link to a cache that moved
            checkpoint.unlink()
        try:
            os.symlink(cached / CHECKPOINT_DIR, checkpoint, target_is_directory=True)
        except OSError:  # no symlinks here: a copy (21 MB at the demo's size)
            shutil.copytree(cached / CHECKPOINT_DIR, checkpoint)
    write_text(local / RUN_FILE, (cached / RUN_FILE).read_text("utf-8"))
    lines = [json.dumps(record, sort_keys=True) for record in (*cached_records, *own)]
    write_text(local_file, "".join(f"{line}\n" for line in lines))


def run_baselines(
    out: Path | str,
    *,
    task_set: str,
    budgets: Sequence[int] = (),
    seeds: Sequence[int],
    scale_name: str = "tiny",
    scales_file: Path | str | None = None,
    tasks_file: Path | str | None = None,
    family: str = ID_FAMILY,
    models: Sequence[BaselineModel] = (),
    cache: Path | str | None = None,
    show_progress: bool = True,
    on_run: Callable[[ScoreResult], None] | None = None,
    on_task: Callable[[Any], None] | None = None,
) -> list[ScoreResult]:
    """Train and evaluate the baseline runs: ``budgets`` x ``seeds`` of the scale's own model,
    and every ``models`` entry's budgets x seeds (its own architecture and augmentation).

    With ``cache``, runs train in the cache (:func:`cached_pool_dir`) and ``out/results`` gets
    a view of each (:func:`link_cached_run`); a run the cache already holds is not retrained.
    The returned results' ``run_dir`` are under ``out`` either way.
    """
    from curate.runs.score import ScoreResult, score

    out = Path(out).resolve()
    base = get_scale(scale_name, scales_file)
    kinds = ([BaselineModel(tuple(budgets))] if budgets else []) + list(models)
    all_budgets = [budget for kind in kinds for budget in kind.budgets]
    too_small = [budget for budget in all_budgets if budget < 2 * base.batch_size]
    if too_small or not all_budgets or not seeds:
        raise UserInputError(
            f"give at least one seed and budgets of two batches ({2 * base.batch_size} samples) "
            f"or more at scale {scale_name} (got budgets {all_budgets}, seeds {list(seeds)})"
        )
    pool = out if cache is None else cached_pool_dir(cache, task_set, tasks_file)
    task_ids = ensure_baseline_pool(pool, task_set, tasks_file)  # the pool writer locks it
    results = []
    for kind in kinds:
        for budget in kind.budgets:
            for seed in kind.seeds or seeds:
                result = score(
                    pool,
                    scale_name=scale_name,
                    seed=seed,
                    tasks=task_ids,
                    tasks_file=tasks_file,
                    scale=kind.scale(base, budget),
                    baseline_family=family,
                    show_progress=show_progress,
                    on_task=on_task,
                )
                if cache is not None:
                    local = out / "results" / result.run_dir.name
                    link_cached_run(result.run_dir, local)
                    result = ScoreResult(local, result.run, result.trained, result.tasks)
                results.append(result)
                if on_run is not None:
                    on_run(result)
    return results
