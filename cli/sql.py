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
    memory_limit: Annotated[
        str | None,
        typer.Option(
            "--memory-limit",
            help="Most memory DuckDB may use, e.g. 4GB or 500MB (default: half this machine's "
            "memory). Nothing spills to disk: a query that needs more fails.",
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            min=0, help="Stop a statement after this many seconds (default 600; 0: no limit)."
        ),
    ] = None,
) -> None:
    """Query pools with DuckDB SQL, read-only.

    Views (only those whose files exist): pools, samples, embeddings, clip_scores,
    decisions, stages, kept, results, ingest_report. Every view starts with a column
    `pool` naming the pool a row comes from; with several pools (a parent folder or
    --pool) the views are the union of all pools' rows, so compare them with GROUP BY pool.
    A candidate pool's `samples` are its kept samples.

    Only queries run (SELECT, WITH, FROM, VALUES, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN):
    writes, ATTACH, COPY, INSTALL/LOAD, PRAGMA, SET and reading other files are refused.
    Ctrl-C stops a running statement (exit status 130).

    Every DuckDB type can be shown and written: csv holds values as DuckDB prints them
    (lists, structs and maps as JSON), json one object per row, parquet the types parquet
    holds (INTERVAL, UNION, BIT and the like as text).

    Examples:

        curate sql demo/pool "SELECT noise, count(*) FROM samples GROUP BY noise"

        curate sql demo "SELECT pool, noise, count(*) FROM samples GROUP BY ALL ORDER BY ALL"

        curate sql demo/pool "FROM clip_scores JOIN samples USING (uid)" -o scores.parquet

        curate sql demo "FROM samples ORDER BY text" -o sorted.csv --memory-limit 2GB --timeout 60
    """
    from rich.console import Console

    try:
        _sql([path, *(pool or [])], query, output, fmt, max_rows, memory_limit, timeout)
    except KeyboardInterrupt:  # Ctrl-C; a running statement was stopped (QueryInterrupted)
        Console(stderr=True).print("interrupted", highlight=False)
        raise typer.Exit(130) from None


def _sql(
    paths: list[Path],
    query: str | None,
    output: Path | None,
    fmt: str | None,
    max_rows: int,
    memory_limit: str | None,
    timeout: float | None,
) -> None:
    import sys

    from rich.console import Console

    from curate.cli.sql_shell import print_results, run_shell
    from curate.core.errors import UserInputError
    from curate.sql.query import DEFAULT_TIMEOUT_S, PoolCatalog, output_format

    console = Console()
    fmt = output_format(output, fmt)
    if query is None and (output is not None or fmt is not None):
        raise UserInputError("--output and --format need a QUERY")
    if output is None and fmt == "parquet":
        raise UserInputError("--format parquet needs --output FILE")
    timeout_s = DEFAULT_TIMEOUT_S if timeout is None else timeout
    with PoolCatalog.open(paths, memory_limit, timeout_s) as catalog:
        for note in catalog.notes:
            console.print(f"[yellow]note:[/] {note}", highlight=False)
        if query is None:
            run_shell(catalog, sys.stdin, console, max_rows)
        elif fmt is None:
            print_results(catalog, query, console, max_rows)
        elif output is None:
            catalog.write(query, fmt, sys.stdout)
        else:
            rows = catalog.write_file(query, output, fmt)
            console.print(f"wrote {rows:,} rows to {output}")


@app.command("info")
def info(
    paths: Annotated[list[Path], typer.Argument(metavar="POOL...", help=_PATH_HELP)],
) -> None:
    """What a pool or candidate pool holds: samples, sources, sizes on disk, columns,
    ground-truth noise (demo pools), embedding sets, filter stages, scoring runs.

    Example: curate info runs/demo/pool
    """
    from rich.console import Console

    from curate.cli.pool_info_view import render_info
    from curate.sql.info import collect_info

    console = Console()
    for pool_info in collect_info(paths):
        render_info(pool_info, console)
