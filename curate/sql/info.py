"""`curate info`: what a pool or candidate pool holds, at a glance (counts, sources, sizes,
schema, ground-truth noise, embedding sets, stages), read through the SQL views."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from curate.core.layout import PoolLayout, SubsetLayout
from curate.sql.query import PoolCatalog, PoolDir, find_pools


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
            "uid index": _bytes(layout.uid_index),
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
