"""`curate info`: what a pool or candidate pool holds, at a glance (counts, sources, sizes,
schema, ground-truth noise, embedding sets, stages), read through the SQL views."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table

from curate.layout import PoolLayout, SubsetLayout
from curate.sql import PoolCatalog, PoolDir, find_pools


@dataclass(frozen=True)
class PoolInfo:
    label: str
    root: Path
    kind: str  # "pool" or "subset"
    name: str
    created: str
    sample_count: int
    parent: str | None
    recipe: str | None
    bytes_on_disk: dict[str, int]  # part -> bytes; "total" is the whole directory
    source_counts: dict[str, int]
    schema: list[tuple[str, str]]  # (column, DuckDB type) of samples
    noise_counts: dict[str, int] | None  # ground truth, when the pool has a noise column
    embeddings: list[dict[str, Any]]
    stages: pl.DataFrame | None
    result_runs: int


def _bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return 0


def _disk_usage(pool: PoolDir) -> dict[str, int]:
    if pool.is_subset:
        layout = SubsetLayout(pool.root)
        parts = {
            "kept uids": _bytes(layout.uids_parquet) + _bytes(layout.uids_npy),
            "decisions": _bytes(layout.decisions),
            "shards": _bytes(layout.shards_dir),
            "samples": _bytes(pool.root / "samples.parquet"),
        }
    else:
        layout = PoolLayout(pool.root)
        parts = {
            "shards": _bytes(layout.shards_dir),
            "samples": _bytes(layout.samples),
            "embeddings": _bytes(layout.embeddings_dir),
            "holdout": _bytes(layout.holdout),
        }
    return {**{k: v for k, v in parts.items() if v}, "total": _bytes(pool.root)}


def _frame(catalog: PoolCatalog, view: str, sql: str) -> pl.DataFrame | None:
    if view not in catalog.views:
        return None
    return catalog.query(sql)[0].frame


def _counts(frame: pl.DataFrame | None) -> dict[str, int]:
    return {} if frame is None else {str(k): int(v) for k, v in frame.iter_rows()}


def _count_by(catalog: PoolCatalog, column: str, where: str) -> pl.DataFrame:
    sql = f"SELECT {column}, count(*) FROM samples {where} AND {column} IS NOT NULL"
    return catalog.query(f"{sql} GROUP BY 1 ORDER BY 2 DESC, 1")[0].frame


def pool_info(catalog: PoolCatalog, pool: PoolDir) -> PoolInfo:
    where = "WHERE pool = '{}'".format(pool.label.replace("'", "''"))
    columns = _frame(catalog, "samples", "DESCRIBE samples")
    schema = [] if columns is None else columns.select("column_name", "column_type").rows()
    schema = [(name, kind) for name, kind in schema if name != "pool"]
    has = {name for name, _ in schema}
    sources = _count_by(catalog, "source", where) if "source" in has else None
    noise = _count_by(catalog, "noise", where) if "noise" in has else None
    embeddings = _frame(catalog, "embeddings", f"FROM embeddings {where}")
    embeddings = None if embeddings is None else embeddings.drop("pool", "meta")
    stages = _frame(catalog, "stages", f"SELECT * EXCLUDE (pool) FROM stages {where}")
    runs = _frame(catalog, "results", f"SELECT count(DISTINCT run_id) FROM results {where}")
    source = pool.manifest.source
    return PoolInfo(
        label=pool.label,
        root=pool.root,
        kind=pool.manifest.kind,
        name=pool.manifest.name,
        created=pool.manifest.created,
        sample_count=pool.manifest.sample_count,
        parent=source.get("pool") if pool.is_subset else None,
        recipe=source.get("recipe") if pool.is_subset else None,
        bytes_on_disk=_disk_usage(pool),
        source_counts=_counts(sources),
        schema=schema,
        noise_counts=_counts(noise) if noise is not None else None,
        embeddings=[] if embeddings is None else embeddings.to_dicts(),
        stages=None if stages is None or stages.is_empty() else stages,
        result_runs=0 if runs is None else int(runs.item()),
    )


def collect_info(paths: Sequence[Path | str]) -> list[PoolInfo]:
    pools = find_pools(paths)
    with PoolCatalog(pools) as catalog:
        return [pool_info(catalog, pool) for pool in pools]


# -- rendering ------------------------------------------------------------------------------
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
