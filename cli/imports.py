"""`curate import-results`: results of CLIPs evaluated elsewhere, as one long table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curate.cli.app import app


@app.command("import-results")
def import_results_command(
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="FILES...",
            help="Result files: CLIP_benchmark *.json or build CSV, DataComp "
            "eval_results.jsonl/results.jsonl, open_clip's results CSV (format detected per file).",
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder to write (manifest.json + parquet).")
    ] = Path("external_results"),
    openclip_table: Annotated[
        bool,
        typer.Option(
            "--openclip-table",
            help="Also import open_clip's published table of 121 models (shipped with curate).",
        ),
    ] = False,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="ARCH/TAG of the model in DataComp jsonl files, which do not name it "
            "(e.g. ViT-B-32/openai). Without it the file's parent folder name is the model id "
            "and its architecture and training data are unknown.",
        ),
    ] = None,
    skip_unknown_tasks: Annotated[
        bool,
        typer.Option(
            "--skip-unknown-tasks",
            help="Skip (and count) results of tasks curate does not know instead of stopping.",
        ),
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Import zero-shot results of CLIP models evaluated outside curate.

    Reads CLIP_benchmark, DataComp and open_clip result files into one table, one row per
    model x task (`external_results.parquet`: model ARCH/TAG, training data from the tag,
    task as DataComp's key, accuracy = DataComp's main metric, test-set size and a 95% Wilson
    interval). Query it with `curate sql OUT "SELECT ... FROM external_results"`; `curate
    leaderboard` ranks the imported models among themselves by effective robustness.

    A bad file stops the import with its name and line; unscored, non-zero-shot or (with
    --skip-unknown-tasks) unknown tasks are skipped and counted in the summary.

    Example: curate import-results --openclip-table --out external

    Example: curate import-results results/*.json --out external

    Example: curate import-results runs/my_clip/eval_results.jsonl --model ViT-B-32/mine --out ext
    """
    from curate.core.errors import UserInputError
    from curate.eval.external_results import (
        import_results,
        openclip_table_path,
        write_external_results,
    )

    paths = list(files or [])
    if openclip_table:
        paths.append(openclip_table_path())
    if not paths:
        raise UserInputError("no result files: give FILES... or --openclip-table")
    imported = import_results(paths, model=model, skip_unknown_tasks=skip_unknown_tasks)
    write_external_results(imported, out, sources=paths, overwrite=overwrite)
    table = imported.table
    typer.echo(
        f"imported {table.height} results: {table['model'].n_unique()} models x "
        f"{table['task'].n_unique()} tasks from {len(paths)} files -> {out}"
    )
    for reason, count in sorted(imported.skipped.items()):
        typer.echo(f"  skipped {count}: {reason}")
    for tag, count in sorted(imported.unknown_training_data.items()):
        typer.echo(f"  unknown training data: {tag or '(no tag)'} ({count} models)")
