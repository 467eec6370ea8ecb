"""`curate demo-pool`: a noisy web-style pool with ground truth, from the shipped demo data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curate.cli.app import app

_RATE_HELP = "Fraction of the pool with {what} (ground truth noise = {kind})."


def _rate(kind: str, what: str):
    return typer.Option(
        f"--{kind.replace('_', '-')}-rate",
        min=0.0,
        max=1.0,
        help=_RATE_HELP.format(what=what, kind=kind),
        rich_help_panel="Noise rates",
    )


@app.command("demo-pool")
def demo_pool(
    out: Annotated[Path, typer.Option("--out", help="Pool directory to create.")],
    seed: Annotated[int, typer.Option(help="Random seed: same seed, byte-identical pool.")] = 0,
    size: Annotated[int, typer.Option(min=1, help="Number of samples in the pool.")] = 10_500,
    holdout_size: Annotated[
        int,
        typer.Option(
            min=0,
            help="Clean images held out of the pool (POOL/holdout.parquet, task pool-holdout).",
        ),
    ] = 1_000,
    diverse_source: Annotated[
        bool,
        typer.Option(
            "--diverse-source/--no-diverse-source",
            help="Also draw from CINIC-10's ImageNet-origin 'pool' images (a more diverse source).",
        ),
    ] = True,
    diverse_views: Annotated[
        int,
        typer.Option(
            min=1,
            help="Views in all of every clean diverse-source image: the original plus random "
            "crops (50-85 % of the area, half mirrored) with fresh captions, added on top of "
            "--size; a larger diverse share without more source images.",
        ),
    ] = 1,
    mismatched_caption_rate: Annotated[
        float, _rate("mismatched_caption", "a caption of another class")
    ] = 0.30,
    spam_caption_rate: Annotated[
        float, _rate("spam_caption", "boilerplate captions ('IMG_2034.JPG', ...)")
    ] = 0.05,
    exact_duplicate_rate: Annotated[
        float, _rate("exact_duplicate", "byte-identical copies of clean samples")
    ] = 0.04,
    near_duplicate_rate: Annotated[
        float, _rate("near_duplicate", "re-encoded, cropped or flipped copies")
    ] = 0.04,
    off_topic_rate: Annotated[
        float, _rate("off_topic", "MNIST digits with web-ish captions")
    ] = 0.08,
    tiny_rate: Annotated[float, _rate("tiny", "images of 8-16 px a side")] = 0.02,
    extreme_aspect_rate: Annotated[
        float, _rate("extreme_aspect", "images stretched or padded to ~1:3.5")
    ] = 0.02,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Make a realistic noisy image-text pool to try curation on, with ground truth.

    Clean CIFAR-10 (and CINIC-10 ImageNet-origin) images get web-style captions from varied
    templates and class synonyms; a controlled share of samples gets one defect each
    (mismatched or spam caption, exact or near duplicate, off-topic digit, tiny or extreme
    aspect image). samples.parquet records the truth in columns noise, duplicate_of, label,
    class_name and origin, so you can measure what a filter removes. Example:

        curate demo-pool --out demo/pool
        curate sql demo/pool "SELECT noise, count(*) FROM samples GROUP BY noise"
    """
    from rich.console import Console
    from rich.table import Table

    from curate.demo.pool import NoiseRates, build_demo_pool

    rates = NoiseRates(
        mismatched_caption=mismatched_caption_rate,
        spam_caption=spam_caption_rate,
        exact_duplicate=exact_duplicate_rate,
        near_duplicate=near_duplicate_rate,
        off_topic=off_topic_rate,
        tiny=tiny_rate,
        extreme_aspect=extreme_aspect_rate,
    )
    summary = build_demo_pool(
        out,
        seed=seed,
        size=size,
        rates=rates,
        diverse_source=diverse_source,
        diverse_views=diverse_views,
        holdout_size=holdout_size,
        overwrite=overwrite,
        show_progress=True,
    )
    table = Table(title=f"{summary.path}: {summary.sample_count:,} samples")
    table.add_column("noise (ground truth)")
    table.add_column("samples", justify="right")
    for kind, count in summary.noise_counts.items():
        table.add_row(kind, f"{count:,}")
    console = Console()
    console.print(table)
    origins = ", ".join(f"{name} {count:,}" for name, count in summary.origin_counts.items())
    console.print(f"origins: {origins}; held out: {summary.holdout_rows:,} (holdout.parquet)")
