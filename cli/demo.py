"""`curate demo`: the main job, the whole loop on the built-in demo data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curate.cli.app import app


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option(help="Folder for everything the demo writes.")] = Path(
        "runs/demo"
    ),
    full: Annotated[
        bool,
        typer.Option(
            "--full",
            help="The long profile (about an hour on 2 cores): the diversity effect's fair "
            "test with 3 seeds, 4x the budget, 5 views of each ImageNet-origin image, a second "
            "baseline family for the multi-ID ER, and a second world (MNIST -> USPS).",
        ),
    ] = False,
    profile: Annotated[
        str | None, typer.Option(help="A named profile instead: default, full or smoke.")
    ] = None,
    seeds: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated training seeds, e.g. 0,1. A pairwise verdict (significant "
            "or not) needs 2+ seeds of both pools; with one it is 'untested (1 seed)'."
        ),
    ] = None,
    baseline_cache: Annotated[
        Path | None,
        typer.Option(
            help="Folder that keeps the baseline runs across outputs and profiles (default: "
            "baseline-cache next to OUT); a run with the same model, settings, budget, seed, "
            "training data and tasks is reused instead of trained again."
        ),
    ] = None,
) -> None:
    """Answer "which data gives reliable models?" on the built-in demo data, end to end.

    Builds a noisy web-style pool from the shipped CIFAR-10 / CINIC-10 / MNIST subset, trains a
    filter network on a trusted slice, embeds the pool, builds candidate pools from the demo
    recipes (no filter; near-dup + CLIP score; the same plus the more diverse
    ImageNet-origin source), trains a CLIP on each at one fixed budget, fits the
    baseline line from varied standard models trained on CIFAR-10 only (ViTs at patch 4 and 8
    and a small ResNet, with and without augmentation, at several budgets; kept in
    --baseline-cache), and prints the leaderboard with each pairwise ER difference, what its
    interval covers and its verdict (which needs 2+ seeds: --seeds 0,1). The report is
    OUT/report/index.html. Rerunning resumes after the last finished step.

    Example: curate demo --out runs/demo   (or --profile smoke for a one-minute check)
    """
    from rich.console import Console

    from curate.cli.leaderboard_view import rich_tables
    from curate.demo.run import run_demo

    console = Console(width=None if Console().is_terminal else 150)
    chosen = profile or ("full" if full else "default")
    seed_list = tuple(int(s) for s in seeds.split(",")) if seeds else None
    result = run_demo(
        out,
        profile=chosen,
        seeds=seed_list,
        baseline_cache=baseline_cache,
        on_step=lambda name: console.print(f"[bold cyan]>[/] {name}"),
    )
    for table in rich_tables(result.leaderboard):
        console.print(table)
    console.print("\nseconds per step:")
    for name, seconds in result.seconds.items():
        console.print(f"  {name:<32} {seconds:7.1f}")
    console.print(f"  {'total':<32} {sum(result.seconds.values()):7.1f}")
    console.print(f"\nreport: {result.report}")
