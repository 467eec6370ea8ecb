"""Reading a task's test images, labels and captions from its declared format.

- parquet: the Hugging Face image layout (image{bytes,path}, label, ...), optionally filtered;
- folder: torchvision's ImageFolder layout (one sub-folder per class, sorted names = labels);
- wds: CLIP_benchmark's webdataset layout (``DIR/test/*.tar`` with ``cls`` and an image per
  key, ``DIR/classnames.txt``, ``DIR/zeroshot_classification_templates.txt``).

Images are handed out as raw bytes or paths and decoded by the model's own preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from curate.core.errors import InputNotFoundError, UserInputError
from curate.core.image_tables import read_image_parquet
from curate.core.images import IMAGE_EXTENSIONS
from curate.eval.tasks import Registry, TaskSpec, resolve_classnames, resolve_templates


@dataclass(frozen=True)
class TaskData:
    """A task's inputs. ``images`` is a list of bytes/paths, or the wds tar files to stream
    (then ``labels`` come with the images)."""

    images: list[bytes] | list[Path] | None
    tars: list[Path] | None
    labels: np.ndarray | None
    classnames: list[str] | None
    templates: list | None
    texts: list[str] | None
    source: str  # the resolved path, for the record

    def __len__(self) -> int:
        if self.images is not None:
            return len(self.images)
        return len(self.labels) if self.labels is not None else 0


def load_task_data(registry: Registry, task_id: str, pool: Path | str | None) -> TaskData | None:
    """The task's data, or None when it is optional and its data is absent."""
    spec = registry.tasks[task_id]
    tasks_dir = Path(registry.base_dirs.get(task_id, "."))
    path = registry.task_path(task_id, pool)
    if path is None or not path.exists():
        if spec.optional:
            return None
        where = spec.images.path if path is None else str(path)
        raise InputNotFoundError(
            f"task {task_id}: its images {where} do not exist"
            + ("" if path else " (the path needs {pool}: evaluate a pool's run)")
            + "; fix the path in the tasks file or drop the task"
        )
    classnames = None
    templates = None
    if spec.task == "zeroshot_classification":
        base = path if spec.images.format == "wds" and spec.classnames is None else tasks_dir
        classnames = resolve_classnames(spec, base)
        base = path if spec.images.format == "wds" and spec.templates is None else tasks_dir
        templates = resolve_templates(registry, spec, base)
    reader = {"parquet": _parquet, "folder": _folder, "wds": _wds}[spec.images.format]
    return reader(spec, path, classnames, templates)


def _parquet(
    spec: TaskSpec, path: Path, classnames: list[str] | None, templates: list | None
) -> TaskData:
    source = spec.images
    columns = [source.text_column] if spec.task == "zeroshot_retrieval" else [source.label_column]
    if spec.task == "zeroshot_classification" and classnames is None:
        columns.append("class_name")
    table = read_image_parquet(path, columns, source.filter)
    if table.height == 0:
        raise UserInputError(
            f"{path}: no rows{' match ' + repr(source.filter) if source.filter else ''}"
        )
    if spec.task == "zeroshot_retrieval":
        texts = table[source.text_column].cast(pl.String).to_list()
        return TaskData(table["image_bytes"].to_list(), None, None, None, None, texts, str(path))
    labels = table[source.label_column].to_numpy().astype(np.int64)
    if classnames is None:
        labels, classnames = _classes_from_data(path, labels, table["class_name"])
    _check_labels(path, labels, classnames)
    return TaskData(
        table["image_bytes"].to_list(), None, labels, classnames, templates, None, str(path)
    )


def _classes_from_data(
    path: Path, labels: np.ndarray, names: pl.Series
) -> tuple[np.ndarray, list[str]]:
    """Classes = the distinct labels present (sorted), named by the class_name column."""
    pairs = pl.DataFrame({"label": labels, "class_name": names}).unique().sort("label")
    if pairs["label"].n_unique() != pairs.height:
        clash = pairs.filter(pl.col("label").is_duplicated())
        raise UserInputError(
            f"{path}: label {clash['label'][0]} has several class names "
            f"({', '.join(clash['class_name'].to_list())}); give classnames explicitly"
        )
    order = pairs["label"].to_numpy()
    return np.searchsorted(order, labels), pairs["class_name"].to_list()


def _check_labels(path: Path, labels: np.ndarray, classnames: list[str]) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= len(classnames)):
        raise UserInputError(
            f"{path}: labels run from {labels.min()} to {labels.max()} but there are "
            f"{len(classnames)} class names; check the task's classnames"
        )


def _folder(
    spec: TaskSpec, path: Path, classnames: list[str] | None, templates: list | None
) -> TaskData:
    if classnames is None:
        raise UserInputError(f"task images {path}: a folder task needs explicit classnames")
    class_dirs = sorted(p for p in path.iterdir() if p.is_dir())
    if len(class_dirs) != len(classnames):
        raise UserInputError(
            f"{path}: {len(class_dirs)} class folders but {len(classnames)} class names "
            "(ImageFolder layout: one sub-folder per class, in the class names' order)"
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, directory in enumerate(class_dirs):
        found = sorted(
            p for p in directory.rglob("*") if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS
        )
        files += found
        labels += [label] * len(found)
    if not files:
        raise UserInputError(f"{path}: no images found in its class folders")
    return TaskData(files, None, np.array(labels), classnames, templates, None, str(path))


def _wds(
    spec: TaskSpec, path: Path, classnames: list[str] | None, templates: list | None
) -> TaskData:
    tars = sorted((path / "test").glob("*.tar")) or sorted(path.glob("*.tar"))
    if not tars:
        raise UserInputError(f"{path}: no .tar shards (expected {path}/test/*.tar)")
    return TaskData(None, tars, None, classnames, templates, None, str(path))
