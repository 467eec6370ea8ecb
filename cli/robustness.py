"""`curate robustness-by-data`: which training data gives robust CLIPs, from published results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curate.cli.app import app


@app.command("robustness-by-data")
def robustness_by_data_command(
    results: Annotated[
        Path | None,
        typer.Option(
            "--results",
            help="An `curate import-results` folder or one results file; default: open_clip's "
            "published table of 121 models, shipped with curate.",
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the tables, markdown and figure.")
    ] = Path("robustness_by_data"),
    bootstrap: Annotated[
        int,
        typer.Option(help="Replicates for the ER intervals (test-set sampling + baseline fit)."),
    ] = 1000,
    confidence: Annotated[float, typer.Option(help="Confidence level of the intervals.")] = 0.95,
    seed: Annotated[int, typer.Option(help="Seed of the replicates.")] = 0,
    include_extrapolated: Annotated[
        bool,
        typer.Option(
            "--include-extrapolated",
            help="Count models whose ImageNet accuracy is outside the testbed's range in the "
            "group numbers too (default: listed, not counted).",
        ),
    ] = False,
    plot: Annotated[bool, typer.Option(help="Draw the figure (real_clips_er.png).")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Effective robustness of published CLIPs, grouped by their training data.

    Each model's ER against the ImageNet testbed's baseline line (Taori et al. 2020) on
    ImageNetV2, Sketch, ObjectNet, ImageNet-R and ImageNet-A and on their average; per
    training-data group n, mean, std, min and max over its models, with the architecture held
    fixed too, DataComp's filtering baselines, and which groups separate and which do not.
    Writes parquet + CSV tables, robustness_by_data.md and real_clips_er.png to --out.

    Example: curate robustness-by-data --out docs/real_clips

    Example: curate robustness-by-data --results external --out ext_robustness
    """
    from curate.eval.robustness_by_data import load_results, markdown_report, robustness_by_data
    from curate.report.external_plot import publish_robustness_by_data

    result = robustness_by_data(
        load_results(results), n_boot=bootstrap, confidence=confidence, seed=seed,
        include_extrapolated=include_extrapolated,
    )  # fmt: skip
    written = publish_robustness_by_data(result, out, overwrite=overwrite, figure=plot)
    typer.echo(markdown_report(result))
    typer.echo(f"wrote {len(written)} files to {out}")
