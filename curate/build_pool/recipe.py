"""Recipes: a candidate pool's definition as data (YAML), validated before any work.

A recipe names a seed, optionally the embedding set to use, and an ordered list of stages,
each a registered stage name (see :mod:`curate.filters.registry`) with its parameters::

    name: clip_score_top30
    description: keep the 30% of samples with the highest CLIP score
    seed: 0
    embeddings: curate-tiny-vit-p4      # optional: the pool's only set when omitted
    stages:
      - stage: clip_score
        params: {fraction: 0.3}

Every problem (bad YAML, unknown stage, unknown or mistyped parameter, missing field) is
reported with the field's path and its line in the file, all at once, before anything runs.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from curate.core.errors import InputNotFoundError, UserInputError
from curate.filters.registry import StageParams

# DataComp's baselines (the repository's recipes/, installed as curate.recipes) and the demo's
# candidates (curate/demo/recipes/), read as package data.
RECIPE_DIRS = (
    Path(str(resources.files("curate.recipes"))),
    Path(str(resources.files("curate"))) / "demo" / "recipes",
)

Location = tuple[str | int, ...]
POOL_PLACEHOLDER = "{pool}"  # in string and path parameters: the pool directory


class RecipeError(UserInputError):
    """A recipe that cannot run; the message lists every problem with its line."""


class _StageEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: str
    params: dict[str, Any] = Field(default_factory=dict)


class _RecipeFile(BaseModel):
    """The YAML file's shape; stage parameters are checked afterwards by each stage's model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    seed: int = 0
    embeddings: str | None = None
    stages: list[_StageEntry]


@dataclass(frozen=True)
class RecipeStage:
    index: int
    name: str  # the registered stage name
    params: StageParams
    needs_embeddings: bool
    line: int  # where the stage starts in the recipe file (1-based)
    param_lines: dict[str, int] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    seed: int
    embeddings: str | None
    stages: tuple[RecipeStage, ...]
    text: str  # the YAML as written, copied beside the output
    path: Path | None = None

    @property
    def needs_embeddings(self) -> bool:
        return any(stage.needs_embeddings for stage in self.stages)

    def canonical(self, stage_count: int | None = None) -> dict[str, Any]:
        """What determines the output of the first ``stage_count`` stages (all by default).

        Parameters are taken after validation (defaults filled in, ``0.30`` == ``0.3``), and
        the recipe's name and description are left out: renaming a recipe changes nothing.
        """
        stages = self.stages if stage_count is None else self.stages[:stage_count]
        return {
            "seed": self.seed,
            "embeddings": self.embeddings,
            "stages": [
                {"stage": s.name, "params": s.params.model_dump(mode="json")} for s in stages
            ],
        }

    def content_hash(self, stage_count: int | None = None) -> str:
        """sha256 of :meth:`canonical`: equal hashes mean equal results on the same pool."""
        text = json.dumps(self.canonical(stage_count), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def shipped_recipes() -> dict[str, Path]:
    """The recipes that ship with curate (DataComp's baselines and the demo's), by name."""
    paths = sorted(path for folder in RECIPE_DIRS for path in folder.glob("*.yaml"))
    return {path.stem: path for path in paths}


def resolve_recipe(name_or_path: str | Path) -> Path:
    """A recipe file path, or the name of a shipped recipe, as a path."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_recipes()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    hint = difflib.get_close_matches(str(name_or_path), list(shipped), n=1)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
    raise InputNotFoundError(
        f"no recipe file {str(name_or_path)!r} and no shipped recipe of that name{suggestion} "
        "(`curate recipes` lists the shipped ones)"
    )


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Read and validate a recipe file (or a shipped recipe by name)."""
    path = resolve_recipe(name_or_path)
    try:
        text = path.read_text("utf-8")
    except UnicodeDecodeError as error:
        raise RecipeError(
            f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8"
        ) from None
    return parse_recipe(text, source=str(path), path=path)


def parse_recipe(text: str, source: str = "<recipe>", path: Path | None = None) -> Recipe:
    """Validate recipe YAML; raise :class:`RecipeError` listing every problem with its line."""
    from curate.filters.catalog import get_stage

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise RecipeError(f"{source}{where}: not valid YAML ({problem})") from None
    if not isinstance(data, dict) or root is None:
        raise RecipeError(
            f"{source} line 1: a recipe is a YAML mapping with name, seed and stages "
            "(see `curate recipes` for examples)"
        )
    problems = _duplicate_keys(root, source)
    try:
        recipe_file = _RecipeFile.model_validate(data)
    except ValidationError as error:
        problems += [_describe(root, tuple(e["loc"]), e, source) for e in error.errors()]
        raise RecipeError(_summary(source, problems)) from None

    stages: list[RecipeStage] = []
    for index, entry in enumerate(recipe_file.stages):
        at: Location = ("stages", index)
        try:
            stage = get_stage(entry.stage)
        except KeyError:
            problems.append(_unknown_stage(root, at, entry.stage, source))
            continue
        try:
            params = stage.params_model.model_validate(entry.params)
        except ValidationError as error:
            problems += [
                _describe(root, (*at, "params", *e["loc"]), e, source, stage.params_model)
                for e in error.errors()
            ]
            continue
        line = _line_of(root, at)
        param_lines = {name: _line_of(root, (*at, "params", name)) for name in entry.params}
        stages.append(
            RecipeStage(index, stage.name, params, stage.needs_embeddings, line, param_lines)
        )
    if problems:
        raise RecipeError(_summary(source, problems))
    return Recipe(
        name=recipe_file.name,
        description=recipe_file.description,
        seed=recipe_file.seed,
        embeddings=recipe_file.embeddings,
        stages=tuple(stages),
        text=text,
        path=path,
    )


# -- running against a pool ------------------------------------------------------------------


def bind_to_pool(recipe: Recipe, pool_root: Path) -> tuple[RecipeStage, ...]:
    """The recipe's stages with ``{pool}`` in string and path parameters replaced by the pool
    directory, checked before any work: every path parameter must name an existing file.

    ``{pool}`` lets a shipped recipe point at inputs that belong to the pool, such as a target
    set's embeddings made with the pool's model (``{pool}/targets/cifar10_train.npy``).
    """
    bound: list[RecipeStage] = []
    problems: list[str] = []
    source = str(recipe.path) if recipe.path else recipe.name
    for stage in recipe.stages:
        update: dict[str, Any] = {}
        for name in type(stage.params).model_fields:
            value = getattr(stage.params, name)
            expanded = _expand(value, str(pool_root))
            if expanded != value:
                update[name] = expanded
            for path in _paths(expanded):
                if not path.exists():
                    line = stage.param_lines.get(name, stage.line)
                    problems.append(
                        f"{source} line {line}: stages[{stage.index}].params.{name}: {path} "
                        "does not exist"
                    )
        params = stage.params.model_copy(update=update) if update else stage.params
        bound.append(replace(stage, params=params))
    if problems:
        raise RecipeError(_summary(source, problems))
    return tuple(bound)


def check_columns(
    recipe: Recipe, stages: tuple[RecipeStage, ...], available: list[str]
) -> dict[int, list[str]]:
    """The samples-table columns each stage reads (by stage index), checked before any work:
    a stage that reads a column the pool lacks is a :class:`RecipeError` naming the column
    and the stage's line (every such problem at once)."""
    from curate.filters.catalog import get_stage
    from curate.filters.registry import MissingColumnError

    columns: dict[int, list[str]] = {}
    problems: list[str] = []
    source = str(recipe.path) if recipe.path else recipe.name
    for stage in stages:
        try:
            columns[stage.index] = get_stage(stage.name).columns_for(stage.params, available)
        except MissingColumnError as error:
            problems.append(f"{source} line {stage.line}: stages[{stage.index}]: {error}")
    if problems:
        raise RecipeError(_summary(source, problems))
    return columns


def _expand(value: Any, pool_root: str) -> Any:
    if isinstance(value, str):
        return value.replace(POOL_PLACEHOLDER, pool_root)
    if isinstance(value, Path):
        return Path(str(value).replace(POOL_PLACEHOLDER, pool_root))
    if isinstance(value, (list, tuple)):
        return type(value)(_expand(item, pool_root) for item in value)
    return value


def _paths(value: Any) -> list[Path]:
    if isinstance(value, Path):
        return [value.expanduser()]
    if isinstance(value, (list, tuple)):
        return [p for item in value for p in _paths(item)]
    return []


# -- error locations ------------------------------------------------------------------------


def _line_of(root: yaml.Node, loc: Location) -> int:
    """1-based line of the deepest YAML node on ``loc`` (a mapping entry's key line)."""
    node, mark_node = root, root
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                break
            mark_node, node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                break
            node = mark_node = node.value[part]
        else:
            break
    return mark_node.start_mark.line + 1


def _field_path(loc: Location) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path


def _describe(
    root: yaml.Node,
    loc: Location,
    error: Any,
    source: str,
    params_model: type[BaseModel] | None = None,
) -> str:
    loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))
    kind = error["type"]
    if kind == "extra_forbidden":
        if params_model is not None:
            known = sorted(params_model.model_fields)
        else:
            known = sorted((_RecipeFile if len(loc) == 1 else _StageEntry).model_fields)
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        message = (
            "unknown field"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; allowed: {', '.join(known) or 'none'}"
        )
    elif kind == "missing":
        message = "required field is missing"
    else:
        message = f"{error['msg']} (got {error.get('input')!r})"
    return f"{source} line {_line_of(root, loc)}: {_field_path(loc)}: {message}"


def _unknown_stage(root: yaml.Node, at: Location, name: str, source: str) -> str:
    from curate.filters.catalog import STAGES

    hint = difflib.get_close_matches(name, list(STAGES), n=1)
    suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
    loc = (*at, "stage")
    return (
        f"{source} line {_line_of(root, loc)}: {_field_path(loc)}: unknown stage {name!r}"
        f"{suggestion}; known stages: {', '.join(sorted(STAGES)) or 'none'}"
    )


def _duplicate_keys(node: yaml.Node, source: str, loc: Location = ()) -> list[str]:
    """YAML loaders keep the last of two equal keys silently; a recipe must not."""
    problems: list[str] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.value in seen:
                line = key.start_mark.line + 1
                field = _field_path((*loc, key.value))
                problems.append(f"{source} line {line}: {field}: key given twice")
            seen.add(key.value)
            problems += _duplicate_keys(value, source, (*loc, key.value))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            problems += _duplicate_keys(item, source, (*loc, index))
    return problems


def _summary(source: str, problems: list[str]) -> str:
    if len(problems) == 1:
        return f"invalid recipe: {problems[0]}"
    return f"invalid recipe {source} ({len(problems)} problems):\n  " + "\n  ".join(problems)
