"""The evaluation task registry: ``eval/tasks.yaml`` (plus an optional user file), validated
on load so that a typo fails before any training, naming the file, task and field.

Resolution of a task's paths, class names and templates happens here too, so that the
evaluation code receives plain values (a file path, a list of names, a list of prompts).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from curate.core.errors import InputNotFoundError, UserInputError

TASKS_FILE = Path(__file__).resolve().with_name("tasks.yaml")
DEFAULT_TASK_SET = "default"
OPEN_CLIP_TEMPLATES = ("open_clip:openai_imagenet", "open_clip:simple_imagenet")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageSource(_Strict):
    format: Literal["parquet", "folder", "wds"] = "parquet"
    path: str
    filter: str | None = None
    label_column: str = "label"
    text_column: str | None = None

    @model_validator(mode="after")
    def _filter_needs_parquet(self) -> ImageSource:
        if self.filter and self.format != "parquet":
            raise ValueError("filter is only supported for format: parquet")
        return self


class TaskSpec(_Strict):
    task: Literal["zeroshot_classification", "zeroshot_retrieval"] = "zeroshot_classification"
    kind: Literal["id", "shift", "pool_id"]
    shift_of: str | None = None
    images: ImageSource
    classnames: list[str] | str | None = None
    templates: list[str] | str | None = None
    optional: bool = False
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        if (self.kind == "shift") != (self.shift_of is not None):
            raise ValueError("a shift task names its ID task in shift_of (and only a shift task)")
        if self.task == "zeroshot_classification":
            if self.classnames is None and self.images.format != "wds":
                raise ValueError(
                    "classnames is required (a list, from_data, open_clip:imagenet, file:PATH)"
                )
        elif self.images.text_column is None:
            raise ValueError("a zeroshot_retrieval task needs images.text_column (its captions)")
        return self

    @property
    def task_info(self) -> dict[str, str | None]:
        return {"kind": self.kind, "shift_of": self.shift_of}


class BaselineTrain(_Strict):
    images: ImageSource
    caption_templates: list[str] = Field(min_length=1)


class TaskSet(_Strict):
    tasks: list[str] = Field(min_length=1)
    baseline_train: BaselineTrain | None = None


class Registry(_Strict):
    templates: dict[str, list[str]] = {}
    tasks: dict[str, TaskSpec] = {}
    task_sets: dict[str, TaskSet] = {}
    base_dirs: dict[str, str] = {}  # task id -> folder its relative paths are relative to
    set_dirs: dict[str, str] = {}  # task set -> the same, for its baseline_train images

    @model_validator(mode="after")
    def _references_resolve(self) -> Registry:
        for name, spec in self.tasks.items():
            if spec.shift_of is not None and spec.shift_of not in self.tasks:
                raise ValueError(f"task {name}: shift_of {spec.shift_of!r} is not a task")
            if isinstance(spec.templates, str) and not (
                spec.templates in self.templates
                or spec.templates in OPEN_CLIP_TEMPLATES
                or spec.templates.startswith("file:")
            ):
                raise ValueError(
                    f"task {name}: templates {spec.templates!r} is neither a list, a name under "
                    f"templates ({', '.join(self.templates)}), {' / '.join(OPEN_CLIP_TEMPLATES)} "
                    "nor file:PATH"
                )
        for name, task_set in self.task_sets.items():
            unknown = [t for t in task_set.tasks if t not in self.tasks]
            if unknown:
                raise ValueError(f"task set {name}: unknown task(s) {', '.join(unknown)}")
        return self

    def task_path(self, task_id: str, pool: Path | str | None) -> Path | None:
        """Where a task's images are; None when the path needs ``{pool}`` and there is none."""
        base_dir = self.base_dirs.get(task_id, ".")
        return resolve_path(self.tasks[task_id].images.path, base_dir, pool)

    def baseline_train_path(self, task_set: str) -> Path | None:
        """The labelled images a task set's baselines train on (None if it has none)."""
        spec = self.task_sets[task_set].baseline_train
        if spec is None:
            return None
        return resolve_path(spec.images.path, self.set_dirs.get(task_set, "."), None)

    def task_ids(self, names: list[str] | None) -> list[str]:
        """Task ids from a mix of task ids and task set names (the default set when empty)."""
        chosen: list[str] = []
        for name in names or [DEFAULT_TASK_SET]:
            if name in self.task_sets:
                expanded = self.task_sets[name].tasks
            elif name in self.tasks:
                expanded = [name]
            else:
                raise UserInputError(
                    f"unknown task or task set {name!r}; tasks: {', '.join(self.tasks)}; "
                    f"task sets: {', '.join(self.task_sets)}"
                )
            chosen += [task for task in expanded if task not in chosen]
        return chosen


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise InputNotFoundError(f"tasks file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text("utf-8")) or {}
    except yaml.YAMLError as error:
        raise UserInputError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(raw, dict):
        raise UserInputError(f"{path}: expected a mapping with tasks / task_sets / templates")
    return raw


def load_registry(tasks_file: Path | str | None = None) -> Registry:
    """The built-in tasks, extended (or overridden, entry by entry) by ``tasks_file``."""
    merged: dict[str, dict] = {
        "templates": {},
        "tasks": {},
        "task_sets": {},
        "base_dirs": {},
        "set_dirs": {},
    }
    files = [TASKS_FILE] + ([Path(tasks_file)] if tasks_file else [])
    for path in files:
        raw = _read_yaml(path)
        unknown = set(raw) - {"templates", "tasks", "task_sets"}
        if unknown:
            raise UserInputError(
                f"{path}: unknown section(s) {', '.join(sorted(unknown))} "
                "(expected templates, tasks, task_sets)"
            )
        for section in ("templates", "tasks", "task_sets"):
            merged[section].update(raw.get(section) or {})
        for task in raw.get("tasks") or {}:
            merged["base_dirs"][task] = str(path.resolve().parent)
        for task_set in raw.get("task_sets") or {}:
            merged["set_dirs"][task_set] = str(path.resolve().parent)
    try:
        return Registry.model_validate(merged)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        where = " + ".join(str(p) for p in files)
        raise UserInputError(f"{where}: {problems}") from None


# -- resolution -----------------------------------------------------------------------------
def resolve_path(path: str, base_dir: str | Path, pool: Path | str | None) -> Path | None:
    """A task's path as a file system path; None when it needs ``{pool}`` and there is none."""
    if path.startswith("demo:"):
        from curate.core import shipped_data as demo_data

        return demo_data.path(path.removeprefix("demo:"))
    if "{pool}" in path:
        if pool is None:
            return None
        path = path.replace("{pool}", str(pool))
    expanded = os.path.expandvars(path)
    unset = re.findall(r"\$\{?(\w+)", expanded)
    if unset:
        raise UserInputError(
            f"task path {path!r} uses the environment variable {unset[0]}, which is not set; "
            f"export {unset[0]}=/path/to/your/data"
        )
    resolved = Path(expanded).expanduser()
    return resolved if resolved.is_absolute() else Path(base_dir) / resolved


def resolve_templates(registry: Registry, spec: TaskSpec, base_dir: Path) -> list:
    """Prompts: format strings with ``{}`` / ``{c}``, or open_clip's template callables."""
    templates = spec.templates
    if templates is None:
        templates = "file:zeroshot_classification_templates.txt"  # CLIP_benchmark's wds layout
    if isinstance(templates, list):
        return templates
    if templates in registry.templates:
        return registry.templates[templates]
    if templates in OPEN_CLIP_TEMPLATES:
        from open_clip import zero_shot_metadata

        name = templates.removeprefix("open_clip:").upper() + "_TEMPLATES"
        return list(getattr(zero_shot_metadata, name))
    lines = _read_lines(Path(base_dir) / templates.removeprefix("file:"), "templates")
    return [line.replace("{c}", "{}") for line in lines]


def resolve_classnames(spec: TaskSpec, base_dir: Path) -> list[str] | None:
    """Class names in label order, or None for ``from_data`` (read with the images)."""
    names = spec.classnames
    if names is None:
        names = "file:classnames.txt"  # CLIP_benchmark's wds layout
    if isinstance(names, list):
        return names
    if names == "from_data":
        return None
    if names == "open_clip:imagenet":
        from open_clip import zero_shot_metadata

        return list(zero_shot_metadata.IMAGENET_CLASSNAMES)
    if names.startswith("file:"):
        return _read_lines(Path(base_dir) / names.removeprefix("file:"), "class names")
    raise UserInputError(
        f"classnames {names!r}: expected a list, from_data, open_clip:imagenet or file:PATH"
    )


def _read_lines(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise InputNotFoundError(f"{what} file {path} does not exist")
    return [line.strip() for line in path.read_text("utf-8").splitlines() if line.strip()]
