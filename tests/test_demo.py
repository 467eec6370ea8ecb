"""The main job's loop, end to end, at the smoke profile's size (real models, real data)."""

from __future__ import annotations

import json

import polars as pl

from curate.core.candidate_pool import open_subset
from curate.demo.run import run_demo


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
    assert len(list((out / "baseline" / "results").glob("[!.]*"))) == 2
    ranked = {summary.group.recipe for summary in result.leaderboard.summaries}
    assert {"demo_no_filter", "demo_clip_top50"} <= ranked
    assert (out / "report" / "index.html").stat().st_size > 10_000

    # a rerun finds every output in place and redoes nothing expensive
    again = run_demo(out, profile="smoke", show_progress=False)
    trained = sum(v for k, v in again.seconds.items() if k.startswith(("score", "baseline")))
    assert trained < sum(
        v for k, v in result.seconds.items() if k.startswith(("score", "baseline"))
    )


def test_full_profile_shape_second_family_views_and_digits_world(tmp_path):
    """The full profile's parts at smoke size: diverse views, the pool-distribution baseline
    family (multi-ID plane only), the digits world as its own setup, pairwise ER differences."""
    from dataclasses import replace

    import duckdb

    from curate.demo.run import PROFILES, DigitsWorld

    profile = replace(
        PROFILES["smoke"],
        name="smoke-full",
        recipes=("demo_neardup_clip", "demo_diverse_source"),
        diverse_views=3,
        pool_baseline_budgets=(128, 192),
        digits=DigitsWorld(usps=200, scale="tiny-test", baseline_budgets=(128, 192)),
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
