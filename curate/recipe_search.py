"""`curate search-recipe`: sweep one stage parameter of a recipe at a fixed training budget.

For each value the recipe gets a variant with that one parameter replaced (validated by the
stage's parameter model, for every value, before any work), built into a candidate pool
``OUT/<variant name>``, scored at the scale for each seed, and ranked with the leaderboard
machinery against the baseline runs of the given folders. The answer is the point with the
best effective robustness and the point with the best mean accuracy (they may differ), and
whether the best ER beats the runner-up by more than the noise: a paired bootstrap over the
test images plus the seed spread (:func:`curate.eval.er_uncertainty.er_difference`). That
verdict needs two or more seeds per point; with one seed the interval covers test images only,
and the answer says "untested (1 seed)" however far apart the two points are.

Everything resumes: a finished candidate pool is reused when it was built from the same
variant of the same pool, and ``score`` skips finished training and evaluated tasks. The
sweep's summary is ``OUT/search.json``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from curate.build_pool.recipe import Recipe, RecipeError, RecipeStage, bind_to_pool, parse_recipe
from curate.core.errors import UserInputError
from curate.eval.collect import RunResult, collect_runs, load_run
from curate.eval.er_uncertainty import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_CONFIDENCE,
    MIN_SEEDS_FOR_VERDICT,
    ErDifference,
    difference_verdict,
    er_difference,
)
from curate.leaderboard.groups import GroupSummary, group_runs, require_comparable
from curate.leaderboard.model import Leaderboard, summarize

SEARCH_FILE = "search.json"
MAX_SLUG_CHARS = 40


@dataclass(frozen=True)
class SweepRow:
    """One point of the sweep: the value, its candidate pool and its scores over the seeds."""

    value: Any
    label: str  # "fraction=0.5"
    recipe: str  # the variant's name (the candidate pool's folder)
    candidate: Path
    kept: int
    run_dirs: tuple[Path, ...]
    trained: bool  # some seed was trained in this call (False: everything was resumed)
    summary: GroupSummary

    @property
    def rank(self) -> int | None:
        return self.summary.rank

    @property
    def id_accuracy(self) -> float | None:
        return self.summary.id_accuracy

    @property
    def average_er(self) -> float | None:
        return self.summary.average_er

    @property
    def mean_accuracy(self) -> float | None:
        return self.summary.average_accuracy


@dataclass(frozen=True)
class SearchResult:
    stage_index: int
    stage: str
    param: str
    scale: str
    seeds: tuple[int, ...]
    rows: tuple[SweepRow, ...]  # ranked by average ER over the shifts, best first
    best_er: SweepRow | None
    best_accuracy: SweepRow | None
    runner_up: SweepRow | None  # the second best ER
    differences: tuple[ErDifference, ...]  # best ER minus runner-up's, one per shift
    leaderboard: Leaderboard

    @property
    def min_seeds(self) -> int | None:
        """The fewest seeds of the two compared points (None: nothing was compared)."""
        counts = [min(d.n_seeds_a, d.n_seeds_b) for d in self.differences]
        return min(counts) if counts else None

    @property
    def verdict(self) -> str | None:
        """Does the best ER point beat the runner-up beyond the noise, on every shift?

        "significant" needs :data:`MIN_SEEDS_FOR_VERDICT` seeds of both points and every
        shift's difference positive with an interval that excludes 0; with fewer seeds the
        intervals hold test-image noise only and the verdict is "untested (1 seed)". None when
        there is no runner-up or no shift both points have an ER on.
        """
        if self.min_seeds is None:
            return None
        beats = all(d.interval.excludes_zero and d.difference > 0 for d in self.differences)
        return difference_verdict(beats, self.min_seeds)

    @property
    def significant(self) -> bool | None:
        """The verdict as a boolean: None when untested or nothing was compared."""
        if self.min_seeds is None or self.min_seeds < MIN_SEEDS_FOR_VERDICT:
            return None
        return self.verdict == "significant"

    @property
    def covers(self) -> str | None:
        """What the differences' intervals account for ("test images only", "test images +
        seeds"); one text per distinct answer when the shifts differ."""
        texts = dict.fromkeys(d.covers for d in self.differences)
        return "; ".join(texts) if texts else None


# -- variants --------------------------------------------------------------------------------


def find_stage(recipe: Recipe, stage: str | int) -> RecipeStage:
    """The recipe's stage by index or by (unique) registered name."""
    listing = ", ".join(f"{s.index}: {s.name}" for s in recipe.stages) or "none"
    if isinstance(stage, int) or str(stage).isdigit():
        index = int(stage)
        if not 0 <= index < len(recipe.stages):
            raise UserInputError(f"recipe {recipe.name} has no stage {index} (stages: {listing})")
        return recipe.stages[index]
    matches = [s for s in recipe.stages if s.name == stage]
    if not matches:
        hint = difflib.get_close_matches(str(stage), [s.name for s in recipe.stages], n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise UserInputError(
            f"recipe {recipe.name} has no stage {stage!r}{suggestion}; stages: {listing}"
        )
    if len(matches) > 1:
        raise UserInputError(
            f"recipe {recipe.name} has {len(matches)} {stage!r} stages ({listing}); "
            "give the stage's index instead"
        )
    return matches[0]


def _param_field(recipe: Recipe, stage: RecipeStage, param: str) -> FieldInfo:
    fields = type(stage.params).model_fields
    if param not in fields:
        hint = difflib.get_close_matches(param, list(fields), n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise UserInputError(
            f"recipe {recipe.name}: stage {stage.index} ({stage.name}) has no parameter "
            f"{param!r}{suggestion}; parameters: {', '.join(sorted(fields)) or 'none'}"
        )
    return fields[param]


def parse_values(recipe: Recipe, stage: str | int, param: str, texts: Sequence[str]) -> list[Any]:
    """Command-line strings as values of the parameter's type (``"0.5"`` -> 0.5 for a float).

    A string that does not parse is kept as it is: :func:`recipe_variant` then reports it with
    the parameter model's own message.
    """
    field = _param_field(recipe, find_stage(recipe, stage), param)
    adapter = TypeAdapter(field.annotation)
    values = []
    for text in texts:
        try:
            values.append(adapter.validate_strings(text))
        except ValidationError:
            values.append(text)
    return values


def value_label(value: Any) -> str:
    """A value as the user would write it: ``0.5``, ``true``, ``origin != 'x'``."""
    return value if isinstance(value, str) else json.dumps(value)


def variant_name(recipe_name: str, param: str, value: Any) -> str:
    """``<recipe>-<param>-<value>``; a value with characters a recipe name (and folder) cannot
    hold, or a long one, is shortened to a readable prefix and a hash of the value."""
    label = value_label(value)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_.-")
    if slug != label or len(label) > MAX_SLUG_CHARS:
        digest = hashlib.sha256(label.encode("utf-8")).hexdigest()[:8]
        slug = f"{slug[:24].rstrip('_.-')}-{digest}" if slug else digest
    return f"{recipe_name}-{param}-{slug}"


def recipe_variant(recipe: Recipe, stage: str | int, param: str, value: Any) -> Recipe:
    """``recipe`` with one stage parameter replaced; its YAML text is the variant's own."""
    return recipe_variants(recipe, stage, param, [value])[0]


def recipe_variants(
    recipe: Recipe, stage: str | int, param: str, values: Sequence[Any]
) -> list[Recipe]:
    """One variant per value; every bad or repeated value is reported at once, before any work."""
    target = find_stage(recipe, stage)
    _param_field(recipe, target, param)
    if not values:
        raise UserInputError(f"no values to sweep {param} over; give at least one")
    source = str(recipe.path) if recipe.path else recipe.name
    where = f"stages[{target.index}].params.{param}"
    data = yaml.safe_load(recipe.text)
    written = dict(data["stages"][target.index].get("params") or {})
    problems: list[str] = []
    chosen: dict[str, Any] = {}  # label -> the value as written into the variant's YAML
    for value in values:
        try:
            params = type(target.params).model_validate({**written, param: value})
        except ValidationError as error:
            messages = "; ".join(e["msg"] for e in error.errors())
            problems.append(f"{source}: {where} = {value!r}: {messages}")
            continue
        canonical = params.model_dump(mode="json")[param]
        label = value_label(canonical)
        if label in chosen:
            problems.append(f"{source}: {where} = {value!r}: the value {label} is given twice")
        chosen[label] = canonical
    if problems:
        raise RecipeError(
            f"cannot sweep {param} of stage {target.index} ({target.name}):\n  "
            + "\n  ".join(problems)
        )
    variants = []
    for label, canonical in chosen.items():
        data = yaml.safe_load(recipe.text)
        stage_entry = data["stages"][target.index]
        stage_entry["params"] = {**(stage_entry.get("params") or {}), param: canonical}
        data["name"] = variant_name(recipe.name, param, canonical)
        note = f"sweep point {param}={label} (stage {target.index}: {target.name})"
        data["description"] = f"{(data.get('description') or recipe.name).strip()} ({note})"
        text = (
            f"# {source} with {where} = {label}, written by `curate search-recipe`\n"
            + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
        )
        variants.append(parse_recipe(text, source=f"{source} ({param}={label})"))
    return variants


# -- the sweep -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """The sweep, checked: everything known before any work."""

    target: RecipeStage
    param: str
    variants: tuple[Recipe, ...]
    labels: tuple[str, ...]
    candidates: tuple[Path, ...]
    pool_root: Path
    out: Path
    seeds: tuple[int, ...]
    task_ids: tuple[str, ...]
    baselines: tuple[RunResult, ...]


def search_recipe(
    recipe: Recipe,
    pool: Path | str,
    out: Path | str,
    *,
    stage: str | int,
    param: str,
    values: Sequence[Any],
    scale_name: str = "tiny",
    seeds: Sequence[int] = (0,),
    baselines: Sequence[Path | str],
    tasks: Sequence[str] | None = None,
    tasks_file: Path | str | None = None,
    scales_file: Path | str | None = None,
    n_boot: int = DEFAULT_BOOTSTRAP,
    confidence: float = DEFAULT_CONFIDENCE,
    bootstrap_seed: int = 0,
    show_progress: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> SearchResult:
    """Build, score and rank one candidate pool per value of ``stage``'s ``param``."""
    from curate.core.atomic import exclusive_lock, write_json
    from curate.runs.score import score

    on_step = on_step or (lambda name: None)
    plan = _plan(
        recipe, pool, out, stage, param, values, scale_name, seeds, baselines, tasks, tasks_file,
        scales_file,
    )  # fmt: skip
    with exclusive_lock(plan.out / "search"):
        kept = []
        for variant, candidate, label in zip(
            plan.variants, plan.candidates, plan.labels, strict=True
        ):
            on_step(f"build {label}" + (" (already built)" if candidate.exists() else ""))
            kept.append(_build(variant, plan.pool_root, candidate))
        empty = [label for label, count in zip(plan.labels, kept, strict=True) if count == 0]
        if empty:
            raise UserInputError(
                f"{', '.join(empty)} keep no samples of {plan.pool_root}, so there is nothing "
                f"to train on; choose values that keep some (candidate pools are in {plan.out})"
            )
        scored = []
        for candidate, label in zip(plan.candidates, plan.labels, strict=True):
            results = []
            for seed in plan.seeds:
                on_step(f"score {label} (seed {seed})")
                results.append(
                    score(
                        candidate, scale_name=scale_name, seed=seed, tasks=plan.task_ids,
                        tasks_file=tasks_file, scales_file=scales_file,
                        show_progress=show_progress,
                    )
                )  # fmt: skip
            scored.append(results)
        on_step("rank")
        result = _rank(plan, scale_name, kept, scored, n_boot, confidence, bootstrap_seed)
        write_json(plan.out / SEARCH_FILE, search_summary(result, recipe, plan.pool_root))
    return result


def _plan(
    recipe: Recipe,
    pool: Path | str,
    out: Path | str,
    stage: str | int,
    param: str,
    values: Sequence[Any],
    scale_name: str,
    seeds: Sequence[int],
    baselines: Sequence[Path | str],
    tasks: Sequence[str] | None,
    tasks_file: Path | str | None,
    scales_file: Path | str | None,
) -> _Plan:
    """Every check that needs no work (values, pool, input files, scale, tasks, baselines, an
    earlier sweep's candidate pools), so that a mistake fails before anything is written."""
    from curate.core.pool import Pool
    from curate.eval.evaluate import check_task_data
    from curate.eval.tasks import load_registry
    from curate.training.scales import get_scale

    target = find_stage(recipe, stage)
    variants = recipe_variants(recipe, stage, param, values)
    pool_root = Pool.open(pool).root.resolve()
    for variant in variants:
        bind_to_pool(variant, pool_root)
    if recipe.needs_embeddings:
        from curate.core.embedding_store import load_embeddings

        load_embeddings(pool_root, recipe.embeddings)
    unique_seeds = tuple(dict.fromkeys(int(seed) for seed in seeds))
    if not unique_seeds:
        raise UserInputError("give at least one training seed")
    get_scale(scale_name, scales_file)
    registry = load_registry(tasks_file)
    task_ids = registry.task_ids(list(tasks) if tasks else None)
    check_task_data(registry, task_ids, pool_root)
    baseline_runs = _baseline_runs(baselines)
    out = Path(out).resolve()
    candidates = tuple(out / variant.name for variant in variants)
    for variant, candidate in zip(variants, candidates, strict=True):
        _check_existing(candidate, variant, pool_root)
    return _Plan(
        target=target,
        param=param,
        variants=tuple(variants),
        labels=tuple(
            f"{param}={value_label(_swept_value(v, target.index, param))}" for v in variants
        ),
        candidates=candidates,
        pool_root=pool_root,
        out=out,
        seeds=unique_seeds,
        task_ids=tuple(task_ids),
        baselines=tuple(baseline_runs),
    )


def _swept_value(variant: Recipe, stage_index: int, param: str) -> Any:
    return variant.stages[stage_index].params.model_dump(mode="json")[param]


def _baseline_runs(roots: Sequence[Path | str]) -> list[RunResult]:
    if not roots:
        raise UserInputError(
            "give the folders of the baseline runs (--baselines), e.g. the demo's OUT/baseline "
            "or a `curate baseline --out` folder: ER is measured against their line"
        )
    runs = [run for run in collect_runs([Path(root) for root in roots]) if run.baseline]
    if not runs:
        raise UserInputError(
            f"no baseline runs under {', '.join(map(str, roots))} (runs written by "
            "`curate baseline`); train them first, e.g. curate baseline --task-set cifar10"
        )
    return runs


def _check_existing(candidate: Path, variant: Recipe, pool_root: Path) -> None:
    """A candidate folder already there must be this variant of this pool (then it is reused)."""
    from curate.core.errors import NotAPoolError
    from curate.core.manifest import read_manifest
    from curate.core.pool import Pool

    if not candidate.exists():
        return
    try:
        manifest = read_manifest(candidate)
    except NotAPoolError:
        raise UserInputError(
            f"{candidate} exists but is not a candidate pool; remove it or choose another --out"
        ) from None
    same = (
        manifest.kind == "subset"
        and manifest.extra.get("recipe_hash") == variant.content_hash()
        and manifest.source.get("pool") == str(pool_root)
        and manifest.source.get("pool_manifest_created") == Pool.open(pool_root).manifest.created
    )
    if not same:
        raise UserInputError(
            f"{candidate} was built from another recipe or pool than {variant.name} of "
            f"{pool_root}; remove it or choose another --out"
        )


def _build(variant: Recipe, pool_root: Path, candidate: Path) -> int:
    """Build the variant's candidate pool unless it is there; return its kept count."""
    from curate.build_pool.build import build_pool
    from curate.core.manifest import read_manifest

    if candidate.exists():
        return read_manifest(candidate).sample_count
    return build_pool(variant, pool_root, candidate).kept


def _rank(
    plan: _Plan,
    scale_name: str,
    kept: list[int],
    scored: list[list[Any]],
    n_boot: int,
    confidence: float,
    bootstrap_seed: int,
) -> SearchResult:
    """Rank the points by ER (the leaderboard's summaries, within one comparability key) and
    pick the best ER, its runner-up and the best mean accuracy."""
    from curate.eval.records import RESULTS_FILE

    runs = [load_run(r.run_dir / RESULTS_FILE) for results in scored for r in results]
    require_comparable(group_runs(runs), group_by_key=False)
    leaderboard = summarize(
        [*runs, *plan.baselines], rank_by="er", n_boot=n_boot, confidence=confidence,
        seed=bootstrap_seed,
    )  # fmt: skip
    by_run_dir = {
        run.run_dir.resolve(): summary
        for summary in leaderboard.summaries
        for run in summary.group.runs
    }
    rows = sorted(
        (
            SweepRow(
                value=_swept_value(variant, plan.target.index, plan.param),
                label=label,
                recipe=variant.name,
                candidate=candidate,
                kept=count,
                run_dirs=tuple(r.run_dir for r in results),
                trained=any(r.trained for r in results),
                summary=by_run_dir[results[0].run_dir.resolve()],
            )
            for variant, candidate, label, count, results in zip(
                plan.variants, plan.candidates, plan.labels, kept, scored, strict=True
            )
        ),
        key=lambda row: (row.rank is None, row.rank or 0),
    )
    with_er = [row for row in rows if row.average_er is not None]
    with_accuracy = [row for row in rows if row.mean_accuracy is not None]
    best_er = with_er[0] if with_er else None
    runner_up = with_er[1] if len(with_er) > 1 else None
    best_accuracy = max(with_accuracy, key=lambda row: row.mean_accuracy) if with_accuracy else None
    differences: list[ErDifference] = []
    if best_er is not None and runner_up is not None:
        runner_shifts = {(s.id_task, s.shift_task) for s in runner_up.summary.shifts if s.er}
        for shift in best_er.summary.shifts:
            if shift.er is not None and (shift.id_task, shift.shift_task) in runner_shifts:
                differences.append(
                    er_difference(
                        best_er.summary.group.runs, runner_up.summary.group.runs, plan.baselines,
                        shift.id_task, shift.shift_task,
                        n_boot=n_boot, confidence=confidence, seed=bootstrap_seed,
                    )
                )  # fmt: skip
    return SearchResult(
        stage_index=plan.target.index,
        stage=plan.target.name,
        param=plan.param,
        scale=scale_name,
        seeds=plan.seeds,
        rows=tuple(rows),
        best_er=best_er,
        best_accuracy=best_accuracy,
        runner_up=runner_up,
        differences=tuple(differences),
        leaderboard=leaderboard,
    )


# -- reporting -------------------------------------------------------------------------------


def points_label(value: float | None, signed: bool = True) -> str:
    if value is None:
        return "-"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def _er_text(row: SweepRow) -> str:
    """Average ER in points; with one shift, its interval too."""
    ers = [shift.er for shift in row.summary.shifts if shift.er is not None]
    if len(ers) == 1 and ers[0].interval.low is not None:
        er = ers[0]
        low, high = points_label(er.interval.low), points_label(er.interval.high)
        return f"{points_label(er.mean)} [{low}, {high}]"
    return points_label(row.average_er)


def answer(result: SearchResult) -> str:
    """The sweep's answer in one line: best ER, its difference from the runner-up with what the
    interval covers and the verdict (untested with one seed), and the best mean accuracy."""
    if result.best_er is None:
        best = "best ER: none (no point has an ER: see the table's shift columns)"
    elif result.runner_up is None:
        best = f"best ER: {result.best_er.label} ({_er_text(result.best_er)}, no other point "
        best += "to compare with)"
    elif not result.differences:
        best = f"best ER: {result.best_er.label} ({_er_text(result.best_er)}, no shift where "
        best += f"{result.runner_up.label} has an ER too)"
    else:
        gaps = ", ".join(
            f"{points_label(d.difference)} "
            f"[{points_label(d.interval.low)}, {points_label(d.interval.high)}]"
            + (f" on {d.shift_task}" if len(result.differences) > 1 else "")
            for d in result.differences
        )
        best = (
            f"best ER: {result.best_er.label} ({_er_text(result.best_er)}; vs "
            f"{result.runner_up.label}: difference {gaps} (interval covers {result.covers}), "
            f"{result.verdict}"
        )
        if result.significant is None:
            best += f": train {MIN_SEEDS_FOR_VERDICT}+ seeds per value for a verdict"
        best += ")"
    accuracy = "none"
    if result.best_accuracy is not None:
        row = result.best_accuracy
        accuracy = f"{row.label} ({points_label(row.mean_accuracy, signed=False)}%)"
    return f"{best}; best mean accuracy: {accuracy}"


def search_summary(result: SearchResult, recipe: Recipe, pool_root: Path) -> dict[str, Any]:
    """What ``OUT/search.json`` holds: the sweep's settings, its rows and its answer."""

    def shift_entry(shift: Any) -> dict[str, Any]:
        er = shift.er
        return {
            "id_task": shift.id_task,
            "shift_task": shift.shift_task,
            "er": er and er.mean,
            "er_ci": None if er is None else [er.interval.low, er.interval.high],
            "problem": shift.problem,
        }

    return {
        "recipe": recipe.name,
        "recipe_path": str(recipe.path) if recipe.path else None,
        "pool": str(pool_root),
        "stage_index": result.stage_index,
        "stage": result.stage,
        "param": result.param,
        "scale": result.scale,
        "seeds": list(result.seeds),
        "rows": [
            {
                "rank": row.rank,
                "value": row.value,
                "recipe": row.recipe,
                "candidate": str(row.candidate),
                "kept": row.kept,
                "run_dirs": [str(path) for path in row.run_dirs],
                "accuracy": {task: mean for task, (mean, _) in row.summary.accuracy.items()},
                "id_accuracy": row.id_accuracy,
                "shifts": [shift_entry(shift) for shift in row.summary.shifts],
                "average_er": row.average_er,
                "mean_accuracy": row.mean_accuracy,
            }
            for row in result.rows
        ],
        "best_er": None if result.best_er is None else result.best_er.value,
        "best_mean_accuracy": None if result.best_accuracy is None else result.best_accuracy.value,
        "runner_up": None if result.runner_up is None else result.runner_up.value,
        "differences": [d.to_dict() for d in result.differences],
        "verdict": result.verdict,  # "significant", "not significant" or "untested (1 seed)"
        "significant": result.significant,  # null when untested
        "covers": result.covers,
        "answer": answer(result),
    }
