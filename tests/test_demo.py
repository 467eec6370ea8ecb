"""The main job's loop, end to end, at the smoke profile's size (real models, real data)."""

from __future__ import annotations

import json

import duckdb
import polars as pl

from curate.core.candidate_pool import open_subset
from curate.demo.run import run_demo
from curate.eval.collect import collect_runs
from curate.runs.baseline import BaselineModel, run_baselines
from tests.colours import labelled_parquet, write_colours_tasks


def test_demo_smoke_runs_the_whole_loop_and_resumes(tmp_path):
    out = tmp_path / "demo"
    steps: list[str] = []
    result = run_demo(out, profile="smoke", show_progress=False, on_step=steps.append)

    assert steps[0] == "demo pool" and steps[-1] == "report"
    pool_rows = pl.read_parquet(out / "pool" / "samples.parquet").height
    assert pool_rows == 600
    noisy = open_subset(out / "candidates" / "demo_no_filter")
    filtered = open_subset(out / "candidates" / "demo_clip_top50")
    # the CLIP-score stage keeps about half of what the where stage let through
    assert 0 < filtered.manifest.sample_count < noisy.manifest.sample_count < pool_rows
    # every candidate and baseline run was scored on the ID, shift and pool-holdout tasks
    for recipe in ("demo_no_filter", "demo_clip_top50"):
        (run_dir,) = (out / "candidates" / recipe / "results").glob("[!.]*")
        datasets = {
            json.loads(line)["dataset"]
            for line in (run_dir / "results.jsonl").read_text().splitlines()
        }
        assert datasets == {"cifar10-test", "cinic10-imagenet", "pool-holdout"}
    # the baseline line: the ViT at patch 4 (2 budgets) and 8, and a ResNet without augmentation
    baselines = result.leaderboard.baselines
    assert len(list((out / "baseline" / "results").glob("[!.]*"))) == len(baselines) == 4
    kinds = sorted(
        (run.config["config"]["arch"], run.config["config"]["augment"]) for run in baselines
    )
    assert kinds == [
        ("curate-tiny-rn", False),
        ("curate-tiny-vit-p4", True),
        ("curate-tiny-vit-p4", True),
        ("curate-tiny-vit-p8", True),
    ]
    assert all(
        set(run.tasks) == {"cifar10-test", "cinic10-imagenet", "pool-holdout"} for run in baselines
    )
    fit = result.leaderboard.fits[("cifar10-test", "cinic10-imagenet")]
    spread = result.leaderboard.spreads[("cifar10-test", "cinic10-imagenet")]
    assert fit.n_points == spread.n_points == 4 and spread.residual_std_logit is not None
    ranked = {summary.group.recipe for summary in result.leaderboard.summaries}
    assert {"demo_no_filter", "demo_clip_top50"} <= ranked
    assert (out / "report" / "index.html").stat().st_size > 10_000

    # a rerun finds every output in place and redoes nothing expensive
    again = run_demo(out, profile="smoke", show_progress=False)
    trained = sum(v for k, v in again.seconds.items() if k.startswith(("score", "baseline")))
    assert trained < sum(
        v for k, v in result.seconds.items() if k.startswith(("score", "baseline"))
    )
    with duckdb.connect(str(out / "leaderboard" / "leaderboard.duckdb"), read_only=True) as db:
        (verdict,) = db.execute("SELECT DISTINCT verdict FROM er_differences").fetchone()
        extrapolated = db.execute("SELECT extrapolated FROM leaderboard").fetchall()
    assert verdict == "untested (1 seed)" and all(flag is not None for (flag,) in extrapolated)


def test_baseline_runs_are_cached_across_outputs(tmp_path):
    """A second output reuses every finished baseline run of the cache; a changed setting
    (augmentation off) or changed training data trains again (the colours world: tiny evals)."""
    labelled_parquet(tmp_path / "test.parquet", 30, seed=7)
    labelled_parquet(tmp_path / "train.parquet", 60, seed=1)
    tasks_file = write_colours_tasks(tmp_path / "tasks.yaml", "test.parquet", "train.parquet")
    cache = tmp_path / "cache"
    kinds = (BaselineModel((128,), arch="curate-tiny-vit-p8"),)
    settings = dict(
        task_set="colours", seeds=(0,), scale_name="tiny-test", tasks_file=tasks_file,
        budgets=(128,), cache=cache, show_progress=False,
    )  # fmt: skip
    first = run_baselines(tmp_path / "one", models=kinds, **settings)
    assert [run.trained for run in first] == [True, True]
    (pool,) = cache.iterdir()
    assert pool.name.startswith("colours-")  # one folder per training data, keyed by sha256

    second = run_baselines(tmp_path / "two", models=kinds, **settings)
    assert [run.trained for run in second] == [False, False]
    for a, b in zip(first, second, strict=True):
        cached = pool / "results" / b.run_dir.name
        assert a.run_dir.name == b.run_dir.name and b.run_dir.parent.parent == tmp_path / "two"
        assert (b.run_dir / "results.jsonl").read_text() == (cached / "results.jsonl").read_text()
        assert (b.run_dir / "checkpoint").resolve() == cached / "checkpoint"
    assert {run.run_id for run in collect_runs([tmp_path / "two"])} == {
        run.run["run_id"] for run in first
    }

    changed = (BaselineModel((128,), arch="curate-tiny-vit-p8", augment=False),)
    third = run_baselines(tmp_path / "three", models=changed, **settings)
    assert [run.trained for run in third] == [False, True]
    assert third[1].run_dir.name not in {run.run_dir.name for run in first}
    assert third[1].run["config"]["augment"] is False

    labelled_parquet(tmp_path / "train.parquet", 60, seed=2)  # other images, same path
    fourth = run_baselines(tmp_path / "four", models=kinds, **settings)
    assert [run.trained for run in fourth] == [True, True] and len(list(cache.iterdir())) == 2


def test_full_profile_shape_second_family_views_and_digits_world(tmp_path):
    """The full profile's parts at smoke size: diverse views, the pool-distribution baseline
    family (multi-ID plane only), the digits world as its own setup, pairwise ER differences."""
    from dataclasses import replace

    from curate.demo.run import PROFILES, DigitsWorld

    profile = replace(
        PROFILES["smoke"],
        name="smoke-full",
        recipes=("demo_neardup_clip", "demo_diverse_source"),
        diverse_views=3,
        pool_baseline_budgets=(128, 192),
        digits=DigitsWorld(usps=200, scale="tiny-test", baseline_budgets=(128, 192)),
        baseline_models=(),  # one kind of baseline model: the smoke test covers the others
    )
    out = tmp_path / "demo"
    result = run_demo(out, profile=profile, show_progress=False)

    samples = pl.read_parquet(out / "pool" / "samples.parquet")
    views = samples.filter(pl.col("noise_detail").str.starts_with("view "))
    assert views.height > 0 and set(views["origin"]) == {"cinic10_imagenet"}
    oracle = open_subset(out / "baseline-pool")
    assert oracle.manifest.sample_count == samples.filter(pl.col("noise") == "clean").height

    families = sorted(run.baseline_family for run in result.leaderboard.baselines)
    # CIFAR world: 2 ID-only + 2 pool-family; digits world: 2 ID-only
    assert families == ["id"] * 4 + ["pool"] * 2
    by_key = result.leaderboard.by_key()
    assert len(by_key) == 2  # the CIFAR world and the digits world never share a table
    cifar = next(s for s in result.leaderboard.summaries if s.group.recipe == "demo_neardup_clip")
    (shift,) = cifar.shifts
    # the single-ID line has the 2 ID-only points; the plane all 4 (with the pool holdout)
    assert shift.er.fit.n_points == 2
    assert shift.multi_id_er is not None or "no multi-ID ER" in (shift.problem or "")
    digits = next(
        s for s in result.leaderboard.summaries if s.group.recipe.startswith("demo_digits")
    )
    assert [(x.id_task, x.shift_task) for x in digits.shifts] == [("mnist-test", "usps-test")]
    kept = open_subset(out / "digits" / "candidates" / "demo_digits_add_usps").manifest.sample_count
    assert kept == 4_000 + 200

    with duckdb.connect(str(out / "leaderboard" / "leaderboard.duckdb"), read_only=True) as db:
        pairs = db.execute(
            "SELECT shift_task, pool_a, pool_b FROM er_differences "
            "WHERE shift_task = 'cinic10-imagenet'"
        ).fetchall()
    assert len(pairs) == 1 and {pairs[0][1].split("/")[0], pairs[0][2].split("/")[0]} == {
        "demo_neardup_clip",
        "demo_diverse_source",
    }


def test_augmentation_off_trains_on_every_image_whole():
    """``augment: false`` (a baseline kind): open_clip's crop covers the whole image, so a
    batch comes out as the images themselves, normalised; on, the crops differ."""
    import numpy as np
    import torch

    from curate.training.batches import Augmentation
    from curate.training.loop import create_model
    from curate.training.scales import get_scale

    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    scale = get_scale("tiny-test")
    outputs = {}
    for augment in (False, True):
        _, preprocess, _ = create_model(scale.model_copy(update={"augment": augment}), "cpu")
        augmentation = Augmentation.from_open_clip(preprocess, 32)
        outputs[augment] = augmentation(images, np.random.default_rng(0))
    mean = torch.tensor(augmentation.mean).view(1, -1, 1, 1) * 255
    std = torch.tensor(augmentation.std).view(1, -1, 1, 1) * 255
    whole = (images.float() - mean) / std
    assert torch.allclose(outputs[False], whole, atol=1e-3)
    assert not torch.allclose(outputs[True], whole, atol=1e-1)
