"""`curate info`'s panels: a pool's counts, sources, noise, embeddings, stages and runs."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table

from curate.sql.info import PoolInfo


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError


def _pairs(title: str, counts: dict[str, int], total: int | None = None) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    table.add_column()
    table.add_column(justify="right")
    table.add_column(justify="right", style="dim")
    for key, value in counts.items():
        share = f"{100 * value / total:.1f} %" if total else ""
        table.add_row(key, f"{value:,}", share)
    return table


def render_info(info: PoolInfo, console: Console) -> None:
    what = "candidate pool" if info.kind == "subset" else "pool"
    lines = [f"[bold]{info.label}[/] ({what} {info.name!r}) at {info.root}"]
    lines.append(f"{info.sample_count:,} samples · created {info.created[:19]}")
    if info.parent:
        lines.append(f"from pool {info.parent} by recipe {info.recipe}")
    if info.result_runs:
        lines.append(f"{info.result_runs} scoring run(s) in results/")
    parts: list[Any] = ["\n".join(lines)]
    sizes = {k: v for k, v in info.bytes_on_disk.items()}
    size_table = Table(title="on disk", title_justify="left", show_header=False, box=None)
    size_table.add_column()
    size_table.add_column(justify="right")
    for key, value in sizes.items():
        size_table.add_row(key, _size(value))
    parts.append(size_table)
    if info.source_counts:
        parts.append(_pairs("samples per source", info.source_counts, info.sample_count))
    if info.noise_counts is not None:
        parts.append(_pairs("ground-truth noise", info.noise_counts, info.sample_count))
    if info.embeddings:
        table = Table(title="embedding sets", title_justify="left", box=None)
        for column in info.embeddings[0]:
            table.add_column(column)
        for row in info.embeddings:
            table.add_row(*(str(v) for v in row.values()))
        parts.append(table)
    if info.stages is not None:
        table = Table(title="stages", title_justify="left", box=None)
        for column in info.stages.columns:
            table.add_column(column)
        for row in info.stages.iter_rows():
            table.add_row(*(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row))
        parts.append(table)
    if info.schema:
        schema = ", ".join(f"{name} [dim]{kind.lower()}[/]" for name, kind in info.schema)
        parts.append(f"[bold]samples columns[/]: {schema}")
    console.print(Panel(Group(*parts), expand=False))
