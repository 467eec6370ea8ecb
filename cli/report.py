"""`curate report`: one self-contained HTML page about a folder of pools, candidate pools and
results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curate.cli.app import app


@app.command("report")
def report_command(
    runs: Annotated[
        Path,
        typer.Option(
            "--runs",
            help="The folder that holds your pools, candidate pools and scored results (found "
            "by their manifest.json and results/<run_id>/results.jsonl; baseline runs too).",
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Report folder to write [default: RUNS/report]."),
    ] = None,
    samples: Annotated[
        int,
        typer.Option(
            min=0, help="Sample images shown per stage for what it removed and what it kept."
        ),
    ] = 6,
    bootstrap: Annotated[
        int, typer.Option(min=0, help="Bootstrap resamples of the test images for ER intervals.")
    ] = 1000,
    confidence: Annotated[
        float, typer.Option(min=0.5, max=0.999, help="Confidence level of the intervals.")
    ] = 0.95,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap and of the sample choice.")] = 0,
    overwrite: Annotated[
        bool, typer.Option(help="Replace the report folder if it exists.")
    ] = False,
    external: Annotated[
        str | None,
        typer.Option(
            "--external",
            help="Add published CLIPs' ER by training data: an `import-results` folder or "
            "results file, or `openclip` for open_clip's shipped table.",
        ),
    ] = None,
) -> None:
    """Write OUT/index.html: leaderboard, ID-vs-OOD plots, what each stage removed, samples.

    The page ranks the candidate pools by effective robustness (each ER with its interval
    and whether it is significant, seeds and their spread), draws ID vs OOD accuracy on
    logit axes with the baseline line (also saved as PNG and SVG in OUT/plots), shows per
    candidate pool what each stage removed (counts, precision/recall against the demo pool's
    ground truth, sample images with their captions) and the exact configuration (scale,
    seeds, recipes, code version). It is one self-contained file: send it alone.

    Example: curate report --runs demo --out demo/report
    """
    from rich.console import Console

    from curate.report.build import build_report

    console = Console(stderr=True)
    with console.status("building the report") as status:
        result = build_report(
            runs, out, overwrite=overwrite, n_boot=bootstrap, confidence=confidence, seed=seed,
            samples_per_group=samples, on_step=lambda message: status.update(message),
            external=external,
        )  # fmt: skip
    typer.echo(
        f"wrote {result.index} ({result.pools} pools, {result.candidates} candidate pools, "
        f"{result.runs} runs; {len(result.files)} files) in {result.seconds:.1f} s"
    )
