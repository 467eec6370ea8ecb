"""`curate ingest` and `curate download`: make a pool from an image-text source."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from curate.cli import scale_options
from curate.cli.app import app
from curate.core.errors import UserInputError
from curate.ingest import FORMATS

_FORMAT_HELP = "\n\n".join(
    f"[bold]{f.name}[/]: {f.summary}.\n\n  [dim]$[/] {f.example}" for f in FORMATS.values()
)


@app.command(
    "ingest",
    epilog=f"[bold]Source formats[/] (detected from SOURCE; --format overrides):\n\n{_FORMAT_HELP}",
)
def ingest_command(
    source: Annotated[
        Path,
        typer.Argument(
            help="What to ingest: img2dataset output folder, parquet file/folder, saved "
            "`datasets` folder, image folder or captions table, DataComp metadata folder."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The pool directory to create.")],
    format: Annotated[
        str | None,
        typer.Option("--format", "-f", help=f"Source format: {', '.join(FORMATS)}."),
    ] = None,
    caption_column: Annotated[
        str | None,
        typer.Option(help="Column holding the caption (default: caption, text or txt)."),
    ] = None,
    caption_template: Annotated[
        str | None,
        typer.Option(
            help="Build captions from other columns, e.g. 'a photo of a {class_name}' "
            "(for labelled data without captions)."
        ),
    ] = None,
    image_column: Annotated[
        str | None,
        typer.Option(help="Column holding the image (default: the one with image bytes)."),
    ] = None,
    captions: Annotated[
        Path | None,
        typer.Option(help="image-folder: the captions .csv/.jsonl (default: the one in SOURCE)."),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="hf-disk: the split of a saved DatasetDict.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Pool name (default: OUT's name).")] = None,
    samples_per_shard: Annotated[
        int, typer.Option(min=1, help="Samples per webdataset tar in the pool.")
    ] = 10_000,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    copy: Annotated[
        bool,
        typer.Option(
            help="datacomp: copy the metadata into the pool (and the .npz embeddings into "
            "embeddings/), skipping bad rows, instead of checking the files and using them "
            "in place."
        ),
    ] = False,
    executor: scale_options.Executor = "local",
    workers: scale_options.Workers = None,
    ray_address: scale_options.RayAddress = None,
) -> None:
    """Make a pool from an image-text source.

    Every image is decoded and checked; captions must be non-empty UTF-8.
    Bad rows (unreadable image, empty or non-UTF-8 caption, failed download, damaged tar)
    are skipped and counted, with file and row, in OUT/ingest_report.json and the summary.
    OUT appears only when complete; rerun the same command to resume an interrupted run.
    img2dataset tars and parquet row blocks are checked in parallel (--executor, --workers);
    the other formats are read in this process.
    DataComp metadata is used in place: one streaming pass checks the schema, the .npz
    row counts and that every uid is valid and unique, then OUT lists the files (nothing
    is copied; --copy copies them and skips bad rows instead). The embedding stages read
    the .npz members where they are (stored uncompressed, as DataComp ships them).

    Example: curate ingest downloads/ --out pools/web --executor ray
    """
    from curate.core.executor import make_executor
    from curate.ingest.base import IngestOptions
    from curate.ingest.detect import detect_format
    from curate.ingest.run import ingest

    options = IngestOptions(
        caption_column=caption_column,
        caption_template=caption_template,
        image_column=image_column,
        captions_file=captions,
        split=split,
    )
    in_place = not copy and (format or detect_format(source)) == "datacomp"
    if in_place and (caption_column or caption_template):
        raise UserInputError(
            "--caption-column/--caption-template rename columns, which a pool used in place "
            "cannot do; add --copy"
        )
    with make_executor(executor, workers, ray_address) as runner:
        if in_place:
            from curate.ingest.datacomp import reference_in_place

            result = reference_in_place(
                source, out, name=name, overwrite=overwrite, executor=runner
            )
            print_summary(result)
            return
        result = ingest(
            source,
            out,
            format=format,
            options=options,
            name=name,
            samples_per_shard=samples_per_shard,
            overwrite=overwrite,
            show_progress=not quiet,
            executor=runner,
        )
    print_summary(result)


@app.command("download")
def download_command(
    pool: Annotated[
        Path,
        typer.Argument(
            help="A metadata-only pool (e.g. from `curate ingest --format datacomp`) or a "
            "candidate pool made from one by `curate build-pool`."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The image pool to create.")],
    processes: Annotated[int, typer.Option(min=1, help="img2dataset processes.")] = 1,
    threads: Annotated[int, typer.Option(min=1, help="Download threads per process.")] = 32,
    timeout: Annotated[int, typer.Option(min=1, help="Seconds per request.")] = 10,
    retries: Annotated[int, typer.Option(min=0, help="Retries per failed url.")] = 0,
    image_size: Annotated[
        int, typer.Option(min=1, help="Largest side after resizing (see --resize-mode).")
    ] = 512,
    resize_mode: Annotated[
        str,
        typer.Option(
            help="img2dataset resize mode: keep_ratio_largest (DataComp's), keep_ratio, "
            "center_crop, border, or no (keep the downloaded bytes)."
        ),
    ] = "keep_ratio_largest",
    samples_per_shard: Annotated[int, typer.Option(min=1, help="Samples per tar.")] = 10_000,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Download the images of a metadata-only pool into a new image pool (same uids).

    Runs img2dataset on the rows' urls; failed downloads are counted as skips.
    An interrupted download resumes where it stopped when rerun the same way.

    Example: curate download pools/dc-meta --out pools/dc-images --processes 4
    """
    from curate.ingest.download import DownloadSettings, download

    settings = DownloadSettings(
        processes=processes,
        threads=threads,
        timeout=timeout,
        retries=retries,
        image_size=image_size,
        resize_mode=resize_mode,
        samples_per_shard=samples_per_shard,
    )
    result = download(pool, out, settings=settings, overwrite=overwrite, show_progress=not quiet)
    print_summary(result)


def print_summary(result: Any) -> None:
    """The ingest report as a short rich summary: counts, skips by reason, a few examples."""
    from rich.console import Console
    from rich.table import Table

    from curate.core.layout import PoolLayout

    report = result.report
    console = Console()
    kind = "pool" if result.has_images else "metadata-only pool (no images)"
    if not result.has_images and PoolLayout(result.pool).sample_files.is_file():
        kind = "metadata-only pool (no images; parquet files used in place)"
    console.print(
        f"[bold green]{report['accepted']:,}[/] samples ingested into {kind} {result.pool} "
        f"in {result.seconds:.1f}s; [bold]{report['skipped']:,}[/] skipped"
    )
    for note in report.get("notes", []):
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    stats = report.get("source_stats", {}).get("img2dataset")
    if stats:
        console.print(
            f"img2dataset: {stats['count']:,} urls, {stats['successes']:,} downloaded, "
            f"{stats['failed_to_download']:,} failed to download, "
            f"{stats['failed_to_resize']:,} failed to resize"
        )
    if report["skipped"]:
        table = Table("skip reason", "count", title="Skipped")
        for reason, count in report["skipped_by_reason"].items():
            table.add_row(reason, f"{count:,}")
        console.print(table)
        console.print("first examples:")
        for example in report["skip_examples"][:5]:
            console.print(f"  {example['where']}: {example['reason']}", highlight=False)
        console.print(f"all counts and up to 50 examples: {result.pool / 'ingest_report.json'}")
