"""The main job's loop, end to end, at the smoke profile's size (real models, real data)."""

from __future__ import annotations

import json

import polars as pl

from curate.demo import run_demo
from curate.subset import open_subset


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
