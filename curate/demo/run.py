"""`curate demo`: the whole loop on the built-in demo data, answering "which data gives
reliable models?" for a noisy web-style pool.

ingest (demo-pool) -> train a filter network on a trusted slice -> embed the pool ->
build candidate pools from shipped recipes -> score each at one fixed budget ->
baseline line from standard models on ID-only data -> leaderboard -> report.

Every step is a library call whose output is a directory under ``OUT`` (the same files the
individual commands write), and every step is skipped when its output already exists, so a
killed demo resumes where it stopped. Profiles set the sizes: ``default`` fits ~10 minutes
on 2 CPU cores, ``full`` gives the diversity effect a fairer test (three seeds, four times the
budget), ``smoke`` is the test suite's tiny version.

The baseline line runs through several kinds of standard models (ViTs at patch 4 and 8, a
small ResNet; augmentation on and off; several budgets and seeds), as a testbed's line does,
so that its residual spread says how far a standard model may fall from it. Baseline runs
are kept in a cache next to ``OUT`` (``run_demo(baseline_cache=...)``) and reused by later
outputs and other profiles. A pairwise verdict needs two or more seeds per pool
(``--seeds 0,1``); with one seed it is "untested (1 seed)".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.core.atomic import exclusive_lock, write_json
from curate.core.errors import UserInputError
from curate.runs.baseline import BaselineModel

DEMO_RECIPES = (
    "demo_no_filter",
    "demo_clip_top50",
    "demo_neardup_clip",
    "demo_image_based",
    "demo_diverse_source",
)
TASKS = ("cifar10-test", "cinic10-imagenet", "pool-holdout")
FILTER_CAPTIONS = ("a photo of a {}.", "a picture of a {}.", "an image of the {}.")
ORACLE_RECIPE = "demo_oracle_clean"  # the second baseline family's training set
POOL_FAMILY = "pool"


@dataclass(frozen=True)
class DigitsWorld:
    """The second shift world (curate/demo_digits.py): MNIST -> USPS, clean pool."""

    usps: int
    scale: str
    baseline_budgets: tuple[int, ...]
    baseline_models: tuple[BaselineModel, ...] = ()
    recipes: tuple[str, ...] = ("demo_digits_mnist_only", "demo_digits_add_usps")
    task_set: str = "digits"
    tasks: tuple[str, ...] = ("mnist-test", "usps-test")


@dataclass(frozen=True)
class DemoProfile:
    """The sizes of one demo run. ``scale`` is the fixed budget every candidate pool gets."""

    name: str
    pool_size: int
    holdout_size: int
    scale: str
    filter_scale: str
    baseline_budgets: tuple[int, ...]
    baseline_seeds: tuple[int, ...]
    seeds: tuple[int, ...]
    recipes: tuple[str, ...] = DEMO_RECIPES
    tasks: tuple[str, ...] = TASKS
    report_bootstrap: int = 1000
    # SQL row filter on the CIFAR-10 train file for the trusted slice and the image_based
    # targets (None: all 10,000 images); the smoke profile takes a few hundred
    train_slice: str | None = None
    # views in all of each clean diverse-source image (curate/demo_pool.py make_view)
    diverse_views: int = 1
    # budgets of the second baseline family (models on the pool's clean distribution, for
    # the multi-ID plane); none: the multi-ID ER is not computed
    pool_baseline_budgets: tuple[int, ...] = ()
    digits: DigitsWorld | None = None
    # the baseline line's other kinds of standard models (architectures, augmentation off),
    # next to ``baseline_budgets`` of the scale's own model
    baseline_models: tuple[BaselineModel, ...] = ()
    # the scale the baseline runs start from (None: ``scale``); profiles that share it share
    # the cached baseline runs
    baseline_scale: str | None = None


P8, RESNET = "curate-tiny-vit-p8", "curate-tiny-rn"

PROFILES: dict[str, DemoProfile] = {
    # ≤ 10 minutes on 2 cores: three candidate pools (no filter; near-dup + CLIP score; the same
    # plus the diverse source) at one seed, and a baseline line of 6 standard models: the ViT
    # at patch 4 (7,680 samples, 2 seeds; 15,360 without augmentation), at patch 8 (15,360 and
    # 30,720) and a small ResNet (15,360); p8 and the ResNet are at chance at 7,680
    "default": DemoProfile(
        name="default",
        pool_size=10_500,
        holdout_size=1_000,
        scale="demo",
        filter_scale="demo",
        baseline_budgets=(7_680,),
        baseline_seeds=(0, 1),
        seeds=(0,),
        recipes=("demo_no_filter", "demo_neardup_clip", "demo_diverse_source"),
        baseline_models=(
            BaselineModel((15_360,), augment=False, seeds=(0,)),
            BaselineModel((15_360, 30_720), arch=P8, seeds=(0,)),
            BaselineModel((15_360,), arch=RESNET, seeds=(0,)),
        ),
    ),
    # the diversity effect's fair test: 4x the budget, 3 seeds, five views of every clean
    # ImageNet-origin image (a diverse share of ~18 % instead of ~6 %), a second baseline
    # family for the multi-ID plane, and a second world (MNIST -> USPS, 2,007 shift images)
    "full": DemoProfile(
        name="full",
        pool_size=10_500,
        holdout_size=1_000,
        scale="demo-full",
        filter_scale="demo",
        baseline_budgets=(15_360, 30_720, 61_440, 122_880),
        baseline_seeds=(0,),
        baseline_scale="demo",  # shares the default profile's cached baseline runs
        baseline_models=(
            BaselineModel((15_360, 61_440), augment=False),
            BaselineModel((15_360, 30_720, 61_440), arch=P8),
            BaselineModel((15_360, 61_440), arch=RESNET),
        ),
        seeds=(0, 1, 2),
        recipes=("demo_neardup_clip", "demo_diverse_source"),
        diverse_views=5,
        pool_baseline_budgets=(30_720, 61_440, 122_880),
        digits=DigitsWorld(
            usps=3_000, scale="demo", baseline_budgets=(7_680, 15_360, 30_720, 61_440)
        ),
    ),
    "smoke": DemoProfile(
        name="smoke",
        pool_size=600,
        holdout_size=100,
        scale="tiny-test",
        filter_scale="tiny-test",
        baseline_budgets=(128, 192),
        baseline_seeds=(0,),
        seeds=(0,),
        recipes=("demo_no_filter", "demo_clip_top50"),
        baseline_models=(
            BaselineModel((128,), arch="curate-tiny-vit-p8"),
            BaselineModel((128,), arch="curate-tiny-rn", augment=False),
        ),
        report_bootstrap=50,
        train_slice=r"regexp_like(image.path, '/00[0-9][0-9]\.jpg$')",
    ),
}


@dataclass
class DemoResult:
    out: Path
    profile: DemoProfile
    seconds: dict[str, float] = field(default_factory=dict)
    leaderboard: Any = None
    report: Path | None = None


class _Timer:
    """Times named steps into ``seconds`` and tells the caller as each starts."""

    def __init__(self, seconds: dict[str, float], on_step: Callable[[str], None]) -> None:
        self.seconds, self.on_step = seconds, on_step

    def __call__(self, name: str, work: Callable[[], Any]) -> Any:
        self.on_step(name)
        started = time.perf_counter()
        try:
            return work()
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


BASELINE_CACHE = "baseline-cache"


def run_demo(
    out: Path | str,
    *,
    profile: str | DemoProfile = "default",
    seeds: tuple[int, ...] | None = None,
    baseline_cache: Path | str | None = None,
    show_progress: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run (or resume) the whole demo under ``out``; returns timings and the leaderboard.

    The baseline runs train in ``baseline_cache`` (default: ``baseline-cache`` next to
    ``out``) and ``out/baseline`` links them, so that another output or profile reuses every
    baseline run with the same settings instead of training it again.
    """
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise UserInputError(f"unknown demo profile {profile!r}; choose {', '.join(PROFILES)}")
        profile = PROFILES[profile]
    if seeds:
        profile = DemoProfile(**{**profile.__dict__, "seeds": tuple(seeds)})
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(baseline_cache).resolve() if baseline_cache else out.parent / BASELINE_CACHE
    if cache == out or out in cache.parents:
        # the report reads every run under OUT: other profiles' cached runs would join the line
        raise UserInputError(
            f"--baseline-cache {cache} is inside --out {out}; choose a folder outside it"
        )
    result = DemoResult(out, profile)
    step = _Timer(result.seconds, on_step or (lambda name: None))
    with exclusive_lock(out / "demo"):
        paths = _DemoPaths(out, cache)
        step("demo pool", lambda: _demo_pool(paths, profile, show_progress))
        step("filter network", lambda: _filter_network(paths, profile, show_progress))
        step("embed pool", lambda: _embed(paths, show_progress))
        if _needs_targets(profile.recipes):
            step("target embeddings", lambda: _targets(paths, profile))
        for recipe in profile.recipes:
            step(f"build {recipe}", lambda r=recipe: _build(paths, r))
        step("baseline line", lambda: _baselines(paths, profile, show_progress))
        if profile.pool_baseline_budgets:
            step("pool baselines", lambda: _pool_baselines(paths, profile))
        for seed in profile.seeds:  # every pool at one seed before the next seed
            for recipe in profile.recipes:
                step(f"score {recipe}", lambda r=recipe, s=seed: _score(paths, r, profile, s))
        if profile.digits is not None:
            _digits_world(paths, profile, profile.digits, step, show_progress)
        result.leaderboard = step("leaderboard", lambda: _leaderboard(paths, profile))
        result.report = step("report", lambda: _report(paths, profile))
        write_json(out / "demo_timings.json", {"profile": profile.name, **result.seconds})
    return result


@dataclass(frozen=True)
class _DemoPaths:
    out: Path
    baseline_cache: Path

    @property
    def pool(self) -> Path:
        return self.out / "pool"

    @property
    def filter_network(self) -> Path:
        return self.out / "filter-network"

    @property
    def targets(self) -> Path:
        return self.pool / "targets" / "cifar10_train.npy"

    def candidate(self, recipe: str) -> Path:
        return self.out / "candidates" / recipe

    @property
    def baseline(self) -> Path:
        return self.out / "baseline"

    @property
    def pool_baseline(self) -> Path:
        """The oracle-clean candidate pool the second baseline family trains on."""
        return self.out / "baseline-pool"

    @property
    def digits(self) -> _DemoPaths:
        return _DemoPaths(self.out / "digits", self.baseline_cache)

    @property
    def result_roots(self) -> list[Path]:
        roots = [self.out / "candidates", self.baseline, self.pool_baseline]
        roots += [self.digits.out / "candidates", self.digits.baseline]
        return [root for root in roots if root.exists()]

    @property
    def leaderboard(self) -> Path:
        return self.out / "leaderboard"

    @property
    def report(self) -> Path:
        return self.out / "report"


EMBEDDINGS = "filter-network"


def _demo_pool(paths: _DemoPaths, profile: DemoProfile, show_progress: bool) -> None:
    from curate.demo.pool import build_demo_pool

    if not paths.pool.exists():
        build_demo_pool(
            paths.pool,
            size=profile.pool_size,
            holdout_size=profile.holdout_size,
            diverse_views=profile.diverse_views,
            show_progress=show_progress,
        )


def _filter_network(paths: _DemoPaths, profile: DemoProfile, show_progress: bool) -> None:
    """DFN-style: a small CLIP trained on the trusted, clean labelled CIFAR-10 slice."""
    from curate.training.train_filter import train_filter

    if not paths.filter_network.exists():
        train_filter(
            "demo:cifar10_train",
            paths.filter_network,
            scale_name=profile.filter_scale,
            caption_templates=FILTER_CAPTIONS,
            row_filter=profile.train_slice,
            show_progress=show_progress,
        )


def _embed(paths: _DemoPaths, show_progress: bool) -> None:
    from curate.embed.pool_embeddings import embed_pool

    if not paths.pool.joinpath("embeddings", EMBEDDINGS).exists():
        embed_pool(
            paths.pool,
            arch=None,
            checkpoint=paths.filter_network,
            name=EMBEDDINGS,
            progress=show_progress,
        )


def _needs_targets(recipes: tuple[str, ...]) -> bool:
    """Some recipe reads the pool's target embeddings (the image_based stage)."""
    from curate.build_pool.recipe import load_recipe

    return any(
        "{pool}/targets/" in str(stage.params.model_dump())
        for recipe in recipes
        for stage in load_recipe(recipe).stages
    )


def _targets(paths: _DemoPaths, profile: DemoProfile) -> None:
    """The downstream training images, embedded by the pool's model (for image_based)."""
    from curate.core import shipped_data as demo_data
    from curate.embed.image_sets import embed_image_parquet

    if not paths.targets.exists():
        embed_image_parquet(
            demo_data.path("cifar10_train"),
            paths.targets,
            pool=paths.pool,
            embeddings=EMBEDDINGS,
            row_filter=profile.train_slice,
        )


def _build(paths: _DemoPaths, recipe_name: str, out: Path | None = None) -> None:
    from curate.build_pool.build import build_pool
    from curate.build_pool.recipe import load_recipe

    out = out or paths.candidate(recipe_name)
    if not out.exists():
        build_pool(load_recipe(recipe_name), paths.pool, out)


def _baselines(paths: _DemoPaths, profile: DemoProfile, show_progress: bool) -> None:
    """Standard models on ID-only data: several architectures, augmentation on and off, at
    several budgets (cached across outputs); each also evaluated on this pool's holdout so that
    the multi-ID fit has both ID axes for every baseline point."""
    from curate.eval.records import RESULTS_FILE, finished_tasks
    from curate.runs.baseline import run_baselines
    from curate.runs.evaluate import evaluate_checkpoint

    runs = run_baselines(
        paths.baseline,
        task_set="cifar10",
        budgets=profile.baseline_budgets,
        seeds=profile.baseline_seeds,
        models=profile.baseline_models,
        scale_name=profile.baseline_scale or profile.scale,
        cache=paths.baseline_cache,
        show_progress=show_progress,
    )
    for run in runs:
        if "pool-holdout" not in finished_tasks(run.run_dir / RESULTS_FILE):
            evaluate_checkpoint(run.run_dir / "checkpoint", tasks=["pool-holdout"], pool=paths.pool)


def _pool_baselines(paths: _DemoPaths, profile: DemoProfile) -> None:
    """The second baseline family: standard models on the pool's clean distribution (by its
    ground truth), at several budgets; only the multi-ID plane uses them."""
    from curate.runs.score import score
    from curate.training.scales import get_scale

    _build(paths, ORACLE_RECIPE, paths.pool_baseline)
    base = get_scale(profile.scale)
    for budget in profile.pool_baseline_budgets:
        for seed in profile.baseline_seeds:
            score(
                paths.pool_baseline,
                scale_name=profile.scale,
                seed=seed,
                tasks=list(profile.tasks),
                scale=base.with_samples_seen(budget),
                baseline_family=POOL_FAMILY,
                show_progress=False,
            )


def _score(paths: _DemoPaths, recipe_name: str, profile: DemoProfile, seed: int) -> None:
    from curate.runs.score import score

    score(
        paths.candidate(recipe_name),
        scale_name=profile.scale,
        seed=seed,
        tasks=list(profile.tasks),
        show_progress=False,
    )


def _digits_world(
    paths: _DemoPaths,
    profile: DemoProfile,
    world: DigitsWorld,
    step: _Timer,
    show_progress: bool,
) -> None:
    """MNIST -> USPS: its own pool, recipes, baseline line and scores (same seeds)."""
    from curate.demo.digits import build_digits_pool
    from curate.runs.baseline import run_baselines
    from curate.runs.score import score

    digits = paths.digits
    if not digits.pool.exists():
        step("digits pool", lambda: build_digits_pool(digits.pool, usps=world.usps))
    for recipe in world.recipes:
        step(f"build {recipe}", lambda r=recipe: _build(digits, r))
    step(
        "digits baseline line",
        lambda: run_baselines(
            digits.baseline,
            task_set=world.task_set,
            budgets=world.baseline_budgets,
            seeds=profile.baseline_seeds,
            models=world.baseline_models,
            scale_name=world.scale,
            cache=digits.baseline_cache,
            show_progress=show_progress,
        ),
    )
    for seed in profile.seeds:
        for recipe in world.recipes:
            step(
                f"score {recipe}",
                lambda r=recipe, s=seed: score(
                    digits.candidate(r),
                    scale_name=world.scale,
                    seed=s,
                    tasks=list(world.tasks),
                    show_progress=False,
                ),
            )


def _leaderboard(paths: _DemoPaths, profile: DemoProfile) -> Any:
    from curate.leaderboard.build import build_leaderboard

    leaderboard, _ = build_leaderboard(
        paths.result_roots,
        paths.leaderboard,
        n_boot=profile.report_bootstrap,
        group_by_key=profile.digits is not None,  # the digits world is its own setup
    )
    return leaderboard


def _report(paths: _DemoPaths, profile: DemoProfile) -> Path:
    from curate.report.build import build_report

    result = build_report(paths.out, paths.report, overwrite=True, n_boot=profile.report_bootstrap)
    return Path(getattr(result, "index", paths.report / "index.html"))
