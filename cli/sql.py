"""`curate sql` (read-only SQL over pools) and `curate info` (what a pool holds)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curate.cli.app import app

_PATH_HELP = "A pool, a candidate pool, or a folder holding several (searched a few levels deep)."


@app.command("sql")
def sql(
    path: Annotated[Path, typer.Argument(metavar="POOL", help=_PATH_HELP)],
    query: Annotated[
        str | None,
        typer.Argument(
            help="SQL to run (several statements: separate with ';'). "
            "Leave out for an interactive shell reading statements from stdin."
        ),
    ] = None,
    pool: Annotated[
        list[Path] | None,
        typer.Option("--pool", "-p", help="Another pool or folder to include (repeatable)."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the result to this file.")
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            help="csv, json or parquet (default with --output: from its suffix; "
            "without --output, csv/json print to stdout; no --format: a table).",
        ),
    ] = None,
    max_rows: Annotated[
        int, typer.Option(min=1, help="Rows shown in a table (files get all rows).")
    ] = 50,
) -> None:
    """Query pools with DuckDB SQL, read-only.

    Views (only those whose files exist): pools, samples, embeddings, clip_scores,
    decisions, stages, kept, results, ingest_report. Every view starts with a column
    `pool` naming the pool a row comes from; with several pools (a parent folder or
    --pool) the views are the union of all pools' rows, so compare them with GROUP BY pool.
    A candidate pool's `samples` are its kept samples.

    Only queries run (SELECT, WITH, FROM, VALUES, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN):
    writes, ATTACH, COPY, INSTALL/LOAD, PRAGMA, SET and reading other files are refused.

    Examples:

        curate sql demo/pool "SELECT noise, count(*) FROM samples GROUP BY noise"

        curate sql demo "SELECT pool, noise, count(*) FROM samples GROUP BY ALL ORDER BY ALL"

        curate sql demo/pool "FROM clip_scores JOIN samples USING (uid)" -o scores.parquet
    """
    import sys

    from rich.console import Console

    from curate.cli.sql_shell import print_results, run_shell
    from curate.core.errors import UserInputError
    from curate.sql.query import PoolCatalog, output_format, result_bytes, write_result

    console = Console()
    fmt = output_format(output, fmt)
    with PoolCatalog.open([path, *(pool or [])]) as catalog:
        for note in catalog.notes:
            console.print(f"[yellow]note:[/] {note}", highlight=False)
        if query is None:
            if output is not None or fmt is not None:
                raise UserInputError("--output and --format need a QUERY")
            run_shell(catalog, sys.stdin, console, max_rows)
            return
        if fmt is None:
            print_results(catalog, query, console, max_rows)
            return
        results = catalog.query(query)
        if output is None:
            if fmt == "parquet":
                raise UserInputError("--format parquet needs --output FILE")
            for result in results:
                sys.stdout.write(result_bytes(result.frame, fmt).decode("utf-8"))
            return
        if len(results) != 1:
            raise UserInputError(f"--output takes one statement's result; got {len(results)}")
        write_result(results[0].frame, output, fmt)
        console.print(f"wrote {results[0].frame.height:,} rows to {output}")


@app.command("info")
def info(
    paths: Annotated[list[Path], typer.Argument(metavar="POOL...", help=_PATH_HELP)],
) -> None:
    """What a pool or candidate pool holds: samples, sources, sizes on disk, columns,
    ground-truth noise (demo pools), embedding sets, filter stages, scoring runs."""
    from rich.console import Console

    from curate.cli.pool_info_view import render_info
    from curate.sql.info import collect_info

    console = Console()
    for pool_info in collect_info(paths):
        render_info(pool_info, console)
