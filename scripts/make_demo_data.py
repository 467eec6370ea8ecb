"""Build the demo data shipped in ``curate/demo/data/`` from the shared data folder.

Deterministic: a fixed seed and a per-class (stratified) draw, so rerunning gives the same
rows in the same order. Image bytes are copied unchanged (the original JPEG/PNG files).

    python scripts/make_demo_data.py [--data /work/shared/data] [--out curate/demo/data]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl

from curate.core.atomic import write_parquet

SEED = 20240601
HF_COLUMNS = ["image", "label", "class_name", "source"]


def stratified_take(table: pl.DataFrame, total: int, seed: int) -> pl.DataFrame:
    """``total`` rows drawn per class in proportion to the class sizes (largest remainder),
    kept in the source's order (label, then original row)."""
    table = table.with_row_index("_row")
    counts = table.group_by("label").len().sort("label")
    exact = counts["len"].to_numpy() * total / table.height
    quota = np.floor(exact).astype(int)
    remainder_order = np.argsort(-(exact - quota), kind="stable")
    quota[remainder_order[: total - quota.sum()]] += 1
    rng = np.random.default_rng(seed)
    chosen = []
    for label, want in zip(counts["label"].to_list(), quota, strict=True):
        rows = table.filter(pl.col("label") == label)["_row"].to_numpy()
        chosen.append(np.sort(rng.permutation(rows)[:want]))
    picked = np.concatenate(chosen)
    return table.filter(pl.col("_row").is_in(picked)).sort("label", "_row").drop("_row")


def with_split(
    table: pl.DataFrame, first: str, second: str, first_fraction: float, seed: int
) -> pl.DataFrame:
    """Add a ``split`` column: per class, a seeded ``first_fraction`` of rows get ``first``."""
    table = table.with_row_index("_row")
    rng = np.random.default_rng(seed)
    first_rows = []
    for label in sorted(table["label"].unique().to_list()):
        rows = table.filter(pl.col("label") == label)["_row"].to_numpy()
        first_rows.append(rng.permutation(rows)[: round(len(rows) * first_fraction)])
    picked = np.concatenate(first_rows)
    split = pl.when(pl.col("_row").is_in(picked)).then(pl.lit(first)).otherwise(pl.lit(second))
    return table.with_columns(split.alias("split")).drop("_row")


def build(data: Path, out: Path) -> dict[str, pl.DataFrame]:
    read = lambda name: pl.read_parquet(data / name).select(HF_COLUMNS)  # noqa: E731
    tables = {
        "cifar10_train": stratified_take(read("cifar10/train.parquet"), 10_000, SEED),
        "cifar10_test": stratified_take(read("cifar10/test.parquet"), 3_000, SEED + 1),
        "cinic10_imagenet": with_split(
            read("cinic10_imagenet.parquet"), "pool", "test", 0.5, SEED + 2
        ),
        "mnist": with_split(read("mnist5k.parquet"), "pool", "test", 0.8, SEED + 3),
        "usps_test": read("usps_test.parquet"),
        "usps_train": stratified_take(read("usps_train.parquet"), 3_000, SEED + 4),
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        write_parquet(out / f"{name}.parquet", table)
    return tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "curate" / "demo" / "data"
    )
    args = parser.parse_args()
    tables = build(args.data, args.out)
    for name, table in tables.items():
        size = (args.out / f"{name}.parquet").stat().st_size
        splits = (
            dict(table.group_by("split").len().sort("split").iter_rows())
            if "split" in table.columns
            else {}
        )
        print(f"{name:18s} {table.height:6d} rows {size / 1e6:6.2f} MB {splits}")


if __name__ == "__main__":
    main()
