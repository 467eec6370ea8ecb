"""Compact decisions (curate.build_pool.decisions writes them, curate.core.decisions_view
expands them) against the full table built by hand in memory, through polars and DuckDB; the
stages run shard by shard (sequential, on threads, on Ray) giving the same bytes; and
build-pool's ground-truth report against a brute-force count."""

from __future__ import annotations

import io
import itertools
import sys
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from curate.build_pool.build import POSITIONS, build_pool
from curate.build_pool.decisions import assemble, write_part
from curate.build_pool.recipe import parse_recipe
from curate.core.decisions_view import (
    CompactInfo,
    StageEntry,
    decisions_relation,
    scan_decisions,
    subset_decisions,
)
from curate.core.executor import LocalExecutor
from curate.core.pool import Pool
from curate.core.pool_writer import PoolWriter, SourceSample
from curate.core.stage_parts import read_part
from curate.core.uid import make_uid
from curate.filters.catalog import STAGES, get_stage
from curate.filters.registry import (
    SparseResult,
    StageContext,
    StageParams,
    StageResult,
    dense_result,
    register_stage,
)
from tests.conftest import make_image_bytes

VIEW = ["uid", "row", "stage_index", "stage", "kept", "reason", "score"]


def reference_decisions(
    stages: list[tuple[int, str, pl.DataFrame]], uids: pl.Series
) -> pl.DataFrame:
    """The whole table in memory, one row per sample and stage, as build-pool once wrote it."""
    schema = {"row": pl.UInt32, "kept": pl.Boolean, "reason": pl.String, "score": pl.Float32}
    parts = [
        d.with_columns(pl.lit(i, pl.UInt16).alias("stage_index"), pl.lit(name).alias("stage"))
        for i, name, d in stages
    ]
    empty = pl.DataFrame(schema=schema).with_columns(
        pl.lit(0, pl.UInt16).alias("stage_index"), pl.lit("").alias("stage")
    )
    table = pl.concat(parts) if parts else empty
    return table.with_columns(uids.gather(table["row"]).alias("uid")).select(VIEW)


def _normal(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(VIEW).with_columns(
        pl.col("row").cast(pl.UInt32), pl.col("stage_index").cast(pl.UInt16)
    )


@pytest.mark.parametrize("bitmap_rows", [1 << 23, 64, 7])
def test_compact_file_expands_to_the_full_table(tmp_path, bitmap_rows):
    """Random stages (per-row reasons, one reason, scores of their own or from a column, a
    stage that saw no rows) written as parts of two shards: polars and DuckDB views equal the
    table built by hand, with the one-reason stages' bitmaps in one block or across blocks
    that do not meet the shards' edges."""
    rng = np.random.default_rng(5)
    pool_rows, cut = 300, 170
    uids = [make_uid("c", str(i)) for i in range(pool_rows)]
    column = rng.random(pool_rows).astype(np.float32)
    samples = tmp_path / "samples.parquet"
    pl.DataFrame({"uid": uids, "value": column}).write_parquet(samples)
    alive = np.arange(pool_rows)
    frames, parts, entries = [], [], []
    kinds = ["own_scores", "per_row", "column_scores", "one_reason", "remove_all", "one_reason"]
    for index, kind in enumerate(kinds):
        keep = rng.random(len(alive)) < (0.0 if kind == "remove_all" else 0.7)
        reasons = np.array([f"reason {k}" for k in rng.integers(0, 9, len(alive))], dtype=object)
        reason = reasons if kind == "per_row" else "one reason"
        score = rng.random(len(alive)).astype(np.float32) if kind == "own_scores" else None
        score_column = "value" if kind == "column_scores" else None
        if score_column:
            score = column[alive]
        stage_parts = []
        for shard, (low, high) in enumerate(((0, cut), (cut, pool_rows))):
            inside = (alive >= low) & (alive < high)
            piece = StageResult(
                keep=keep[inside],
                reason=reason if isinstance(reason, str) else reason[inside],
                score=None if score is None else score[inside],
                score_column=score_column,
            )
            path = tmp_path / f"{index}-{shard}.parquet"
            write_part(path, kind, index, pl.Series(alive[inside], dtype=pl.UInt64), piece)
            stage_parts.append(path)
        parts.append((index, stage_parts))
        entries.append(StageEntry(index, kind, score_column))
        shown = np.broadcast_to(np.asarray(reason, dtype=object), (len(alive),))
        frames.append(
            (
                index,
                kind,
                pl.DataFrame(
                    {
                        "row": pl.Series(alive, dtype=pl.UInt32),
                        "kept": keep,
                        "reason": pl.Series(
                            [None if k else r for k, r in zip(keep, shown, strict=True)],
                            dtype=pl.String,
                        ),
                        "score": pl.Series(score, dtype=pl.Float32)
                        if score is not None
                        else pl.Series([None] * len(alive), dtype=pl.Float32),
                    }
                ),
            )
        )
        alive = alive[keep]
    info = CompactInfo(pool_rows, tuple(entries), bitmap_rows)
    out = tmp_path / "decisions.parquet"
    assemble(out, parts, info)
    bitmaps = pl.read_parquet(out).filter(pl.col("removed").is_not_null())
    # column scores, one reason, remove all (the last one-reason stage saw no rows)
    assert bitmaps["stage_index"].unique().sort().to_list() == [2, 3, 4]
    assert bitmaps.height == 3 if bitmap_rows > pool_rows else bitmaps.height > 3 * 4
    reference = reference_decisions(frames, pl.Series(uids))
    assert _normal(scan_decisions(out, [samples]).collect()).equals(reference)
    connection = duckdb.connect()
    relation = decisions_relation(connection, ds.dataset(out), ds.dataset(samples), info).order(
        "stage_index, row"
    )
    assert _normal(relation.pl()).equals(reference)


def test_bitmap_records_do_not_depend_on_the_shards(tmp_path):
    """One stage removing rows for one reason, its parts cut three ways (edges inside and on
    block edges, a shard of one row): the same file bytes; a stage whose parts give two
    reasons is written as rows."""
    rng = np.random.default_rng(11)
    pool_rows = 1000
    rows = np.arange(pool_rows)
    seen = rows[(rows % 3 != 0) & ((rows < 100) | (rows >= 300))]  # earlier stages' removals
    keep = rng.random(len(seen)) < 0.4
    info = CompactInfo(pool_rows, (StageEntry(1, "one", None),), bitmap_rows=64)
    files = []
    for cuts in ((0, 1000), (0, 170, 600, 1000), (0, 64, 65, 128, 999, 1000)):
        parts = []
        for shard, (low, high) in enumerate(itertools.pairwise(cuts)):
            inside = (seen >= low) & (seen < high)
            part = tmp_path / f"{len(cuts)}-{shard}.parquet"
            result = StageResult(keep=keep[inside], reason="too small")
            write_part(part, "one", 1, pl.Series(seen[inside], dtype=pl.UInt64), result)
            parts.append(part)
        files.append(tmp_path / f"decisions-{len(cuts)}.parquet")
        assemble(files[-1], [(1, parts)], info)
    assert files[0].read_bytes() == files[1].read_bytes() == files[2].read_bytes()
    stored = pl.read_parquet(files[0])
    assert stored["removed"].null_count() == 0
    # ceil(1000 / 64) blocks, less the three in rows 128..255 that the stage did not see
    assert stored["row"].to_list() == [64 * b for b in range(16) if b not in (2, 3)]
    view = scan_decisions(files[0], [_uid_file(tmp_path, pool_rows)]).collect()
    assert view.filter(~pl.col("kept"))["row"].to_list() == seen[~keep].tolist()

    halves = []
    for low, high, reason in ((0, 500, "too small"), (500, 1000, "too large")):
        inside = (seen >= low) & (seen < high)
        halves.append(tmp_path / f"{reason}.parquet")
        result = StageResult(keep=keep[inside], reason=reason)
        write_part(halves[-1], "one", 1, pl.Series(seen[inside], dtype=pl.UInt64), result)
    mixed = tmp_path / "mixed.parquet"
    assemble(mixed, [(1, halves)], info)
    assert pl.read_parquet(mixed)["removed"].null_count() == (~keep).sum()  # rows, no bitmaps
    removed = (
        scan_decisions(mixed, [_uid_file(tmp_path, pool_rows)]).collect().filter(~pl.col("kept"))
    )
    assert removed["row"].to_list() == seen[~keep].tolist()
    assert removed["reason"].to_list() == [
        "too small" if r < 500 else "too large" for r in seen[~keep]
    ]


def _uid_file(tmp_path: Path, rows: int) -> Path:
    path = tmp_path / "samples.parquet"
    pl.DataFrame({"uid": [make_uid("b", str(i)) for i in range(rows)]}).write_parquet(path)
    return path


def test_one_stage_removing_most_rows_stores_little(tmp_path):
    """70 % of a million rows removed with one reason, scores from a column: the full table
    would take tens of MB (a uid per row and stage); the compact part about a bit per row."""
    rng = np.random.default_rng(0)
    rows = 1_000_000
    keep = rng.random(rows) < 0.3
    path = tmp_path / "part.parquet"
    result = StageResult(keep=keep, reason="clip score < 0.25", score=rng.random(rows),
                         score_column="clip_l14_similarity_score")  # fmt: skip
    write_part(path, "clip_score", 0, pl.Series(np.arange(rows), dtype=pl.UInt64), result)
    assert read_part(path)["row"].to_numpy().tolist() == np.flatnonzero(~keep).tolist()
    assert path.stat().st_size < rows // 8 * 2  # under two bits a pool row (a bitmap: one)
    full = io.BytesIO()
    uids = pl.Series([make_uid(str(i)) for i in range(rows)])
    pl.DataFrame({"uid": uids, "kept": keep}).write_parquet(full)
    assert full.tell() > 20 * path.stat().st_size


class RowsParams(StageParams):
    modulus: int


if "ds_modulus" not in STAGES:

    @register_stage("ds_modulus", RowsParams, columns=(), per_row=True)
    def _modulus(context, params):
        """Removes every row whose number is a multiple of ``modulus``; a score, one reason."""
        rows = context.rows["row"].to_numpy()
        return StageResult(keep=rows % params.modulus != 0, reason="multiple",
                           score=(rows % params.modulus).astype(np.float32))  # fmt: skip

    @register_stage("ds_caption", RowsParams, columns=("text",), per_row=True)
    def _caption(context, params):
        """A reason per row (many distinct values)."""
        text = context.rows["text"].to_numpy()
        keep = np.array([len(t) % params.modulus != 0 for t in text])
        return StageResult(keep=keep, reason=np.array([f"caption {t!r}" for t in text]))

    @register_stage("ds_dedup", RowsParams, columns=("uid", "duplicate_of"))
    def _dedup(context, params):
        """Keeps the lowest row of each group of copies (a copy names its original's uid)."""
        rows = context.rows
        group = pl.coalesce("duplicate_of", "uid")
        first = rows.select(pl.col("row") == pl.col("row").min().over(group)).to_series()
        return StageResult(keep=first.to_numpy(), reason="duplicate")

    @register_stage("ds_sparse", RowsParams, columns=("uid",), columns_on_demand=True)
    def _sparse(context, params):
        """A sparse answer: removes the rows whose number is 1 modulo ``modulus``, the
        i-th naming the uid at position 7·i of the stage's rows (wrapped: not in row order,
        from any shard); scores every third row. Inside build-pool (its positions file in its
        stage folder) it records whether its rows are a map of that file, where /proc says."""
        positions, maps = context.work_dir.parent / POSITIONS, Path("/proc/self/maps")
        if positions.exists() and maps.exists():
            SPARSE_ROWS_MAPPED.append(str(positions) in maps.read_text())
        rows = context.rows["row"].to_numpy()
        removed = np.flatnonzero(rows % params.modulus == 1)
        scored = np.arange(0, len(rows), 3)
        return SparseResult(
            rows=len(rows),
            removed=removed,
            reason="names uid " + context.column_at("uid", (7 * removed) % len(rows)),
            scored=scored,
            score=rows[scored].astype(np.float32) / 2,
        )


SPARSE_ROWS_MAPPED: list[bool] = []  # per ds_sparse run in build-pool: were its rows mapped
NOISE = ["clean", "tiny", "spam_caption", "clean", "mismatched_caption", "clean", "off_topic"]


@pytest.fixture(scope="module")
def noisy_pool(tmp_path_factory) -> Path:
    """48 samples; rows 0, 9, 18, ... are exact duplicates of the sample 5 rows later (so
    dedup keeps the copy and removes the original), row 45 a copy of row 40."""
    out = tmp_path_factory.mktemp("pool") / "pool"
    uids = [make_uid("ds", str(i)) for i in range(48)]
    copies = {i: i + 5 for i in range(0, 40, 9)} | {45: 40}
    with PoolWriter(out, name="noisy", source={"type": "test"}, command="test",
                    samples_per_shard=16) as writer:  # fmt: skip
        for i in range(48):
            original = copies.get(i)
            writer.add(
                SourceSample(
                    source="test",
                    where=f"row {i}",
                    text="a caption " + "word " * (i % 5),
                    image=make_image_bytes(i, (16, 16)),
                    uid=uids[i],
                    extras={
                        "noise": "exact_duplicate" if original is not None else NOISE[i % 7],
                        "duplicate_of": None if original is None else uids[original],
                    },
                )
            )
    return out


STAGE_TEXT = {
    "modulus": "  - stage: ds_modulus\n    params: {modulus: 4}\n",
    "caption": "  - stage: ds_caption\n    params: {modulus: 3}\n",
    "dedup": "  - stage: ds_dedup\n    params: {modulus: 1}\n",
    "sparse": "  - stage: ds_sparse\n    params: {modulus: 3}\n",
    "remove_all": "  - stage: ds_modulus\n    params: {modulus: 1}\n",
}
ORDERS = [("modulus", "caption", "dedup"), ("dedup", "sparse", "caption", "modulus"),
          ("remove_all", "dedup", "caption")]  # fmt: skip


def _run_stages_by_hand(pool: Pool, order: tuple[str, ...]) -> list[tuple[int, str, pl.DataFrame]]:
    recipe = parse_recipe("name: r\nstages:\n" + "".join(STAGE_TEXT[s] for s in order), "r.yaml")
    rows = pool.samples().with_row_index("row")
    frames = []
    for stage in recipe.stages:
        context = StageContext(rows=rows, pool_root=pool.root, seed=0, work_dir=pool.root)
        result = (
            dense_result(get_stage(stage.name).run(context, stage.params))
            if rows.height
            else StageResult(keep=np.zeros(0, bool), reason="")
        )
        reason = np.broadcast_to(np.asarray(result.reason, dtype=object), (rows.height,))
        frame = pl.DataFrame(
            {
                "row": rows["row"],
                "kept": pl.Series(result.keep, dtype=pl.Boolean),
                "reason": pl.Series(reason.tolist(), dtype=pl.String),
                "score": pl.Series(result.score, dtype=pl.Float32)
                if result.score is not None
                else pl.Series([None] * rows.height, dtype=pl.Float32),
            }
        ).with_columns(reason=pl.when(pl.col("kept")).then(None).otherwise(pl.col("reason")))
        frames.append((stage.index, stage.name, frame))
        rows = rows.filter(pl.Series(result.keep))
    return frames


def brute_force_ground_truth(samples: pl.DataFrame, decisions: pl.DataFrame) -> dict:
    """(stage_index, noise) -> (seen, removed, precision, recall), counting by hand."""
    noise = samples["noise"].to_list()
    duplicate_of = samples["duplicate_of"].to_list()
    row_of_uid = {uid: row for row, uid in enumerate(samples["uid"].to_list())}
    seen_by_stage: dict[int, dict[int, bool]] = {}
    for index, row, kept in decisions.select("stage_index", "row", "kept").iter_rows():
        seen_by_stage.setdefault(index, {})[row] = kept
    last = max(seen_by_stage, default=-1) + 1
    removed_anywhere = {r for rows in seen_by_stage.values() for r, k in rows.items() if not k}
    seen_by_stage[last] = {r: r not in removed_anywhere for r in range(samples.height)}
    counts = {}
    for index, kept_by_row in seen_by_stage.items():
        labels = {row: noise[row] for row in kept_by_row}
        swapped: set[int] = set()
        for copy in sorted(kept_by_row):  # the lowest copy of each removed original swaps
            original = row_of_uid.get(duplicate_of[copy]) if duplicate_of[copy] else None
            if (kept_by_row[copy] and original is not None and original in kept_by_row
                    and not kept_by_row[original] and original not in swapped):  # fmt: skip
                swapped.add(original)
                labels[copy], labels[original] = noise[original], noise[copy]
        seen, removed = Counter(), Counter()
        for row, kept in kept_by_row.items():
            for label in (labels[row], "noisy") if labels[row] != "clean" else (labels[row],):
                seen[label] += 1
                removed[label] += not kept
        total_removed = sum(removed[label] for label in seen if label != "noisy")
        for label in seen:
            precision = removed[label] / total_removed if total_removed else None
            counts[(index, label)] = (seen[label], removed[label], precision,
                                      removed[label] / seen[label])  # fmt: skip
    return counts


OUTPUTS = ("uids.npy", "decisions.parquet", "ground_truth.parquet")


@pytest.mark.parametrize("order", ORDERS, ids="-".join)
def test_build_pool_decisions_and_ground_truth_match_the_references(noisy_pool, tmp_path, order):
    recipe = parse_recipe("name: r\nstages:\n" + "".join(STAGE_TEXT[s] for s in order), "r.yaml")
    SPARSE_ROWS_MAPPED.clear()
    result = build_pool(recipe, noisy_pool, tmp_path / "subset")
    if "sparse" in order and Path("/proc/self/maps").exists():
        assert SPARSE_ROWS_MAPPED == [True]  # its rows in the driver: a map, not a copy
    pool = Pool.open(noisy_pool)
    frames = _run_stages_by_hand(pool, order)
    reference = reference_decisions(frames, pool.samples()["uid"])
    decisions = subset_decisions(tmp_path / "subset").collect()
    assert _normal(decisions).equals(reference)

    # the same stages in shards of 5 rows (the per-row ones sharing a task per shard), the
    # tasks on two threads: the same bytes
    sharded = build_pool(recipe, noisy_pool, tmp_path / "sharded", shard_rows=5,
                         executor=LocalExecutor(workers=2))  # fmt: skip
    assert sharded.kept == result.kept
    for name in OUTPUTS:
        assert (tmp_path / "sharded" / name).read_bytes() == (
            tmp_path / "subset" / name
        ).read_bytes(), name

    report = result.ground_truth
    assert report is not None
    assert report.equals(pl.read_parquet(tmp_path / "subset" / "ground_truth.parquet"))
    expected = brute_force_ground_truth(pool.samples(), decisions)
    got = {
        (index, noise): (seen, removed, precision, recall)
        for index, noise, seen, removed, precision, recall in report.select(
            "stage_index", "noise", "seen", "removed", "precision", "recall"
        ).iter_rows()
    }
    assert got.keys() == expected.keys()
    for key, (seen, removed, precision, recall) in expected.items():
        assert got[key][:2] == (seen, removed), key
        assert got[key][2] == pytest.approx(precision) and got[key][3] == pytest.approx(recall)
    if order[0] == "dedup":  # the copies it kept swapped labels with their originals
        first = report.filter((pl.col("stage_index") == 0) & (pl.col("noise") == "clean"))
        assert first["removed"].item() == 0


def test_metadata_recipe_on_ray_and_threads_gives_the_same_bytes(tmp_path):
    """exact_dedup and clip_score's fraction as map -> reduce, basic and text_based per shard,
    over a DataComp pool used in place in shards of 300 rows: the same files in this process,
    on two threads and as tasks of a local Ray instance."""
    ray = pytest.importorskip("ray")
    from curate.core.executor import RayExecutor
    from curate.ingest.datacomp import reference_in_place

    bench = str(Path(__file__).resolve().parents[1] / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    from bench_clip_score import generate_pool

    source = tmp_path / "meta"
    generate_pool(source, 3000, 3, seed=4)
    first = pq.read_table(source / "00000000.parquet")
    sha = first.column("sha256").to_pylist()
    sha[500:540] = sha[:40]  # exact duplicates inside a file and across shards
    pq.write_table(first.set_column(7, "sha256", pa.array(sha)), source / "00000000.parquet")
    reference_in_place(source, tmp_path / "pool")
    recipe = parse_recipe(
        "name: m\nstages:\n"
        "  - stage: exact_dedup\n"
        "  - stage: clip_score\n    params: {fraction: 0.4, over: remaining,\n"
        "                                   column: clip_l14_similarity_score}\n"
        "  - stage: basic\n    params: {min_side: 300}\n"
        "  - stage: text_based\n    params: {vocab: cifar10}\n",
        "m.yaml",
    )
    runs = {"sequential": None, "threads": LocalExecutor(workers=2)}
    results = {}
    for name, executor in runs.items():
        results[name] = build_pool(recipe, tmp_path / "pool", tmp_path / name, shard_rows=300,
                                   executor=executor)  # fmt: skip
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        with RayExecutor() as executor:
            results["ray"] = build_pool(recipe, tmp_path / "pool", tmp_path / "ray",
                                        shard_rows=300, executor=executor)  # fmt: skip
    finally:
        ray.shutdown()
    assert results["sequential"].stages[0].report["removed_duplicates"] == 40
    for name in ("threads", "ray"):
        assert results[name].kept == results["sequential"].kept
        for output in ("uids.npy", "decisions.parquet"):
            assert (tmp_path / name / output).read_bytes() == (
                tmp_path / "sequential" / output
            ).read_bytes(), (name, output)
