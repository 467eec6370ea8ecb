"""Showing query results as rich tables, and the interactive ``curate sql`` shell."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import TextIO

import polars as pl
from rich.console import Console
from rich.table import Table

from curate.core.errors import UserInputError
from curate.sql.formats import is_numeric
from curate.sql.query import VIEW_DESCRIPTIONS, PoolCatalog, QueryInterrupted

MAX_CELL_CHARS = 200
SHELL_HELP = """Statements end with ';' and may span lines. Only queries run (read-only).
  .tables        the views and what they hold
  .schema VIEW   the columns of a view
  .quit          leave (or Ctrl-D)
Example: SELECT pool, noise, count(*) FROM samples GROUP BY ALL ORDER BY ALL;"""


def _cell(value: object) -> str:
    if value is None:
        return "[dim]null[/]"
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, dict | list):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    if len(text) > MAX_CELL_CHARS:
        text = text[: MAX_CELL_CHARS - 1] + "…"
    return text.replace("[", r"\[")


def result_table(
    frame: pl.DataFrame,
    title: str | None = None,
    truncated: bool = False,
    numeric: Sequence[bool] | None = None,
) -> Table:
    """``frame`` as a table; ``numeric`` (per column) right-aligns, by default numeric dtypes."""
    table = Table(title=title, show_lines=False, highlight=False)
    if numeric is None:
        numeric = [dtype.is_numeric() for dtype in frame.dtypes]
    for name, right in zip(frame.columns, numeric, strict=True):
        table.add_column(name, justify="right" if right else "left", overflow="fold")
    for row in frame.iter_rows():
        table.add_row(*(_cell(value) for value in row))
    rows = f"{frame.height:,} row{'s' if frame.height != 1 else ''}"
    table.caption = (
        f"first {rows}; more not shown (raise --max-rows or use --output)" if truncated else rows
    )
    return table


def print_results(catalog: PoolCatalog, sql: str, console: Console, max_rows: int) -> None:
    """Each statement's first rows, every value as DuckDB prints it (floats to 6 digits)."""
    for result in catalog.query(sql, max_rows=max_rows, as_text=True):
        numeric = [is_numeric(column_type) for column_type in result.types]
        console.print(result_table(result.frame, truncated=result.truncated, numeric=numeric))


def views_table(catalog: PoolCatalog) -> Table:
    table = Table(title=f"views over {len(catalog.pools)} pool(s)", highlight=False)
    table.add_column("view")
    table.add_column("holds")
    for view in catalog.views:
        table.add_row(view, VIEW_DESCRIPTIONS[view])
    return table


def _statements(lines: Iterator[str]) -> Iterator[str]:
    """Complete statements (or dot-commands) from input lines; a statement ends with ';'."""
    buffer: list[str] = []
    for line in lines:
        stripped = line.strip()
        if not buffer and stripped.startswith("."):
            yield stripped
            continue
        buffer.append(line.rstrip("\n"))
        if stripped.endswith(";"):
            yield "\n".join(buffer)
            buffer = []
    if any(part.strip() for part in buffer):
        yield "\n".join(buffer)


def _prompted_lines(stream: TextIO, console: Console) -> Iterator[str]:
    while True:
        try:
            yield console.input("[bold]curate>[/] ") if stream.isatty() else next(stream)
        except (EOFError, StopIteration):
            return


def run_shell(catalog: PoolCatalog, stream: TextIO, console: Console, max_rows: int) -> None:
    """Read statements from ``stream`` (a prompt when it is a terminal) until EOF or .quit;
    an error, or a statement stopped by Ctrl-C, is printed and the shell goes on."""
    if stream.isatty():
        console.print(views_table(catalog))
        console.print(SHELL_HELP, highlight=False)
    for statement in _statements(_prompted_lines(stream, console)):
        command, _, argument = statement.partition(" ")
        try:
            if command in (".quit", ".exit"):
                return
            if command == ".help":
                console.print(SHELL_HELP, highlight=False)
            elif command == ".tables":
                console.print(views_table(catalog))
            elif command == ".schema":
                view = argument.strip().rstrip(";").strip() or "samples"
                print_results(catalog, f"DESCRIBE {view}", console, 500)
            elif command.startswith("."):
                console.print(f"[red]unknown command {command}[/]; try .help")
            else:
                print_results(catalog, statement, console, max_rows)
        except UserInputError as error:
            console.print(f"[bold red]error:[/] {error}", highlight=False)
        except QueryInterrupted:
            console.print("interrupted", highlight=False)
