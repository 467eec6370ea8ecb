"""decisions.parquet streamed from the per-stage files (curate.build_pool.decisions) against the
table the old code built in memory and wrote with ``pyarrow.parquet.write_table`` (the reference,
byte for byte), and build-pool's ground-truth report against a brute-force count."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import curate.build_pool.decisions
from curate.build_pool.build import build_pool
from curate.build_pool.decisions import StageDecisions, write_decisions
from curate.build_pool.recipe import parse_recipe
from curate.core.pool import Pool
from curate.core.pool_writer import PoolWriter, SourceSample
from curate.core.uid import make_uid
from curate.filters.catalog import STAGES, get_stage
from curate.filters.registry import StageContext, StageParams, StageResult, register_stage
from tests.conftest import make_image_bytes


def reference_decisions(stages: list[tuple[int, str, pl.DataFrame]], uids: pl.Series) -> pa.Table:
    """The whole table in memory, as build-pool made it before streaming."""
    schema = {"row": pl.UInt32, "kept": pl.Boolean, "reason": pl.String, "score": pl.Float32}
    parts = [
        d.with_columns(pl.lit(i, pl.UInt16).alias("stage_index"), pl.lit(name).alias("stage"))
        for i, name, d in stages
    ]
    empty = pl.DataFrame(schema=schema).with_columns(
        pl.lit(0, pl.UInt16).alias("stage_index"), pl.lit("").alias("stage")
    )
    table = pl.concat(parts) if parts else empty
    table = table.with_columns(uids.gather(table["row"]).alias("uid")).select(
        "uid", "row", "stage_index", "stage", "kept", "reason", "score"
    )
    arrow = table.to_arrow()
    for name in ("stage", "reason"):
        column = pc.dictionary_encode(arrow[name].cast(pa.string()))
        arrow = arrow.set_column(arrow.schema.get_field_index(name), name, column)
    return arrow


def _stage_frame(rng: np.random.Generator, rows: np.ndarray, scored: bool) -> pl.DataFrame:
    kept = rng.random(len(rows)) < 0.6
    reasons = np.array([f"reason {k}" for k in rng.integers(0, 40, len(rows))], dtype=object)
    reasons[rng.random(len(rows)) < 0.1] = ""  # an empty reason is a value, not a null
    scores = rng.random(len(rows)).astype(np.float32) if scored else [None] * len(rows)
    return pl.DataFrame(
        {
            "row": pl.Series(rows, dtype=pl.UInt32),
            "kept": kept,
            "reason": pl.Series(reasons.tolist(), dtype=pl.String),
            "score": pl.Series(scores, dtype=pl.Float32),
        }
    ).with_columns(reason=pl.when(pl.col("kept")).then(None).otherwise(pl.col("reason")))


@pytest.mark.parametrize("sizes", [(2500, 1300, 0, 700), (0, 0)])
def test_streamed_row_groups_equal_the_in_memory_table(tmp_path, monkeypatch, sizes):
    """Several row groups, read batches that straddle them, a stage that saw no rows, a stage
    name used twice; and a table with no rows at all."""
    monkeypatch.setattr(curate.build_pool.decisions, "READ_BATCH_ROWS", 700)
    rng = np.random.default_rng(5)
    pool_rows = max(sizes)
    uids = pl.Series("uid", [make_uid(str(i)) for i in range(pool_rows)], dtype=pl.String)
    names = ["width", "caption", "dedup", "width"]
    frames, files = [], []
    for index, size in enumerate(sizes):
        rows = np.sort(rng.choice(pool_rows, size, replace=False)) if size else np.zeros(0)
        frame = _stage_frame(rng, rows.astype(np.uint32), scored=index % 2 == 0)
        path = tmp_path / f"{index}.parquet"
        frame.write_parquet(path)
        frames.append((index, names[index], frame))
        files.append(StageDecisions(index, names[index], path))

    out = tmp_path / "decisions.parquet"
    assert write_decisions(out, uids, files, row_group_rows=1000) == sum(sizes)
    reference = tmp_path / "reference.parquet"
    pq.write_table(reference_decisions(frames, uids), reference, compression="zstd",
                   row_group_size=1000 if sum(sizes) else None)  # fmt: skip
    assert out.read_bytes() == reference.read_bytes()
    assert pq.read_metadata(out).num_row_groups == max(1, -(-sum(sizes) // 1000))


class RowsParams(StageParams):
    modulus: int


if "ds_modulus" not in STAGES:

    @register_stage("ds_modulus", RowsParams)
    def _modulus(context, params):
        """Removes every row whose number is a multiple of ``modulus``; a score, one reason."""
        rows = context.rows["row"].to_numpy()
        return StageResult(keep=rows % params.modulus != 0, reason="multiple",
                           score=(rows % params.modulus).astype(np.float32))  # fmt: skip

    @register_stage("ds_caption", RowsParams)
    def _caption(context, params):
        """A reason per row (many distinct values)."""
        text = context.rows["text"].to_numpy()
        keep = np.array([len(t) % params.modulus != 0 for t in text])
        return StageResult(keep=keep, reason=np.array([f"caption {t!r}" for t in text]))

    @register_stage("ds_dedup", RowsParams)
    def _dedup(context, params):
        """Keeps the lowest row of each group of copies (a copy names its original's uid)."""
        rows = context.rows
        group = pl.coalesce("duplicate_of", "uid")
        first = rows.select(pl.col("row") == pl.col("row").min().over(group)).to_series()
        return StageResult(keep=first.to_numpy(), reason="duplicate")


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
    "remove_all": "  - stage: ds_modulus\n    params: {modulus: 1}\n",
}
ORDERS = [("modulus", "caption", "dedup"), ("dedup", "caption", "modulus"),
          ("remove_all", "dedup", "caption")]  # fmt: skip


def _run_stages_by_hand(pool: Pool, order: tuple[str, ...]) -> list[tuple[int, str, pl.DataFrame]]:
    recipe = parse_recipe("name: r\nstages:\n" + "".join(STAGE_TEXT[s] for s in order), "r.yaml")
    rows = pool.samples().with_row_index("row")
    frames = []
    for stage in recipe.stages:
        context = StageContext(rows=rows, pool_root=pool.root, seed=0, work_dir=pool.root)
        result = (
            get_stage(stage.name).run(context, stage.params)
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


@pytest.mark.parametrize("order", ORDERS, ids="-".join)
def test_build_pool_decisions_and_ground_truth_match_the_references(noisy_pool, tmp_path, order):
    recipe = parse_recipe("name: r\nstages:\n" + "".join(STAGE_TEXT[s] for s in order), "r.yaml")
    result = build_pool(recipe, noisy_pool, tmp_path / "subset")
    pool = Pool.open(noisy_pool)
    frames = _run_stages_by_hand(pool, order)
    reference = tmp_path / "reference.parquet"
    pq.write_table(reference_decisions(frames, pool.samples()["uid"]), reference,
                   compression="zstd")  # fmt: skip
    decisions_path = tmp_path / "subset" / "decisions.parquet"
    assert decisions_path.read_bytes() == reference.read_bytes()

    decisions = pl.read_parquet(decisions_path)
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
