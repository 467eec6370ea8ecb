"""DataComp-style metadata (parquet + .npz embeddings) -> a metadata-only pool."""

from __future__ import annotations

import json
import re

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

import curate.cli.ingest  # noqa: F401  (registers the command)
from curate.build_pool.build import build_pool
from curate.build_pool.recipe import parse_recipe
from curate.cli.app import app
from curate.core.decisions_view import subset_decisions
from curate.core.embedding_store import list_embeddings, load_embeddings
from curate.core.errors import UserInputError
from curate.core.executor import LocalExecutor
from curate.core.pool import Pool
from curate.core.pool_writer import IngestError
from curate.core.uid import make_uid
from curate.ingest import detect_format, ingest
from curate.ingest.datacomp import reference_in_place
from curate.sql.query import PoolCatalog


def _unit(rng, rows, dim):
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16)


def _metadata_folder(root, sizes=(7, 5), compressed=(False, True), seed=0):
    """DataComp's schema, one .npz per parquet; returns the concatenated input tables/arrays."""
    rng = np.random.default_rng(seed)
    root.mkdir()
    tables, arrays = [], {k: [] for k in ("b32_img", "b32_txt", "l14_img", "l14_txt")}
    start = 0
    for part, (rows, packed) in enumerate(zip(sizes, compressed, strict=True)):
        index = range(start, start + rows)
        table = pl.DataFrame(
            {
                "uid": [make_uid("dc", str(i)) for i in index],
                "url": [f"http://example.com/{i}.jpg" for i in index],
                "text": [f"caption {i}" for i in index],
                "original_width": [100 + i for i in index],
                "original_height": [50 + i for i in index],
                "clip_b32_similarity_score": rng.random(rows).astype(np.float32),
                "clip_l14_similarity_score": rng.random(rows).astype(np.float32),
                "sha256": [f"{i:064x}" for i in index],
            }
        )
        part_arrays = {
            "b32_img": _unit(rng, rows, 16),
            "b32_txt": _unit(rng, rows, 16),
            "l14_img": _unit(rng, rows, 24),
            "l14_txt": _unit(rng, rows, 24),
        }
        table.write_parquet(root / f"{part:08d}.parquet")
        (np.savez_compressed if packed else np.savez)(root / f"{part:08d}.npz", **part_arrays)
        tables.append(table)
        for key, value in part_arrays.items():
            arrays[key].append(value)
        start += rows
    return pl.concat(tables), {k: np.concatenate(v) for k, v in arrays.items()}


def test_metadata_pool_with_embeddings_row_aligned(tmp_path):
    table, arrays = _metadata_folder(tmp_path / "meta", sizes=(7, 5))
    # bad rows: invalid uid, empty caption; a uid repeated in the second file
    table = table.with_columns(
        uid=pl.when(pl.int_range(pl.len()) == 2).then(pl.lit("NOT-A-UID")).otherwise("uid"),
        text=pl.when(pl.int_range(pl.len()) == 4).then(pl.lit("  ")).otherwise("text"),
    )
    table = table.with_columns(
        uid=pl.when(pl.int_range(pl.len()) == 9).then(pl.lit(table["uid"][0])).otherwise("uid")
    )
    table.slice(0, 7).write_parquet(tmp_path / "meta" / "00000000.parquet")
    table.slice(7).write_parquet(tmp_path / "meta" / "00000001.parquet")
    assert detect_format(tmp_path / "meta") == "datacomp"

    result = ingest(tmp_path / "meta", tmp_path / "pool")

    pool = Pool.open(tmp_path / "pool")
    assert not pool.manifest.has_images and not result.has_images
    kept = [i for i in range(12) if i not in (2, 4, 9)]
    samples = pool.samples()
    assert samples.height == len(kept) == pool.manifest.sample_count
    expected = table[kept]
    assert samples["uid"].to_list() == expected["uid"].to_list()
    assert samples["width"].to_list() == expected["original_width"].to_list()
    assert samples["height"].to_list() == expected["original_height"].to_list()
    for column in ("url", "text", "sha256", "clip_b32_similarity_score"):
        assert samples[column].to_list() == expected[column].to_list()
    assert samples["shard"].null_count() == samples.height == samples["key"].null_count()
    assert set(samples["source"].to_list()) == {"meta"}
    assert result.report["skipped_by_reason"] == {
        "invalid uid": 1,
        "empty caption": 1,
        "duplicate uid": 1,
    }

    assert list_embeddings(pool.root) == ["datacomp-b32", "datacomp-l14"]
    for name, prefix in (("datacomp-b32", "b32"), ("datacomp-l14", "l14")):
        stored = load_embeddings(pool.root, name)
        assert stored.image.dtype == np.float16
        # row i of the arrays is row i of samples.parquet: the input rows that were kept
        np.testing.assert_allclose(stored.image, arrays[f"{prefix}_img"][kept], atol=2e-3)
        np.testing.assert_allclose(stored.text, arrays[f"{prefix}_txt"][kept], atol=2e-3)
        assert stored.meta["rows"] == len(kept) and stored.meta["pretrained"] == "openai"
        scores = pl.read_parquet(pool.layout.embeddings(name).clip_score)
        assert scores["uid"].to_list() == samples["uid"].to_list()
        reference = np.einsum(
            "ij,ij->i", stored.image.astype(np.float32), stored.text.astype(np.float32)
        )
        np.testing.assert_allclose(scores["clip_score"].to_numpy(), reference, rtol=1e-6)
    report = json.loads(pool.layout.ingest_report.read_text())
    assert {e["where"] for e in report["skip_examples"]} >= {
        "00000000.parquet row 2",
        "00000000.parquet row 4",
    }


def test_metadata_pool_without_npz_and_bad_layouts(tmp_path):
    table, _ = _metadata_folder(tmp_path / "meta", sizes=(4, 3))
    (tmp_path / "meta" / "00000001.npz").unlink()
    with pytest.raises(IngestError, match=r"00000001\.npz is missing while 1 other"):
        ingest(tmp_path / "meta", tmp_path / "pool")
    (tmp_path / "meta" / "00000000.npz").unlink()
    ingest(tmp_path / "meta", tmp_path / "pool")
    pool = Pool.open(tmp_path / "pool")
    assert pool.samples()["uid"].to_list() == table["uid"].to_list()
    assert list_embeddings(pool.root) == []

    np.savez(tmp_path / "meta" / "00000000.npz", b32_img=np.zeros((3, 4), np.float16))
    np.savez(tmp_path / "meta" / "00000001.npz", b32_img=np.zeros((3, 4), np.float16))
    with pytest.raises(IngestError, match=r"00000000\.npz: b32_img has 3 rows but 00000000"):
        ingest(tmp_path / "meta", tmp_path / "p2")

    table.drop("url").write_parquet(tmp_path / "meta" / "00000001.parquet")
    with pytest.raises(IngestError, match=r"00000001\.parquet: missing column\(s\) url"):
        ingest(tmp_path / "meta", tmp_path / "p2", format="datacomp")


# -- used in place -----------------------------------------------------------------------------


def _only_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message
    return message


def test_in_place_pool_references_the_files(tmp_path):
    table, _ = _metadata_folder(tmp_path / "meta", sizes=(7, 5))
    result = reference_in_place(tmp_path / "meta", tmp_path / "pool")
    pool = Pool.open(tmp_path / "pool")
    assert pool.in_place and not pool.layout.samples.exists()
    assert pool.sample_paths() == sorted((tmp_path / "meta").resolve().glob("*.parquet"))
    assert pool.samples().equals(table)  # every column as it is in the files, in order
    assert pool.manifest.sample_count == 12 == result.report["accepted"]
    assert [(s.first_row, s.rows) for s in pool.table_shards(4)] == [
        (0, 3), (3, 4), (7, 2), (9, 3)]  # fmt: skip
    assert pool.table_shards(4)[1].read(["uid"])["uid"].to_list() == table["uid"][3:7].to_list()
    stored = sum(f.stat().st_size for f in (tmp_path / "pool").rglob("*") if f.is_file())
    assert stored < 4096  # the manifest and the list of files, nothing copied

    (tmp_path / "meta" / "00000001.parquet").touch()
    with pytest.raises(UserInputError, match=r"00000001\.parquet changed since"):
        pool.samples()


def test_in_place_pool_builds_like_a_copied_one(tmp_path):
    _metadata_folder(tmp_path / "meta", sizes=(40, 25, 35), compressed=(False, True, False))
    reference_in_place(tmp_path / "meta", tmp_path / "in_place")
    ingest(tmp_path / "meta", tmp_path / "copied")
    recipe = parse_recipe(
        "name: r\nstages:\n  - stage: clip_score\n"
        "    params: {fraction: 0.3, column: clip_l14_similarity_score}\n"
        "  - stage: basic\n    params: {min_side: 120, language: en}\n",
        "r.yaml",
    )
    a = build_pool(recipe, tmp_path / "in_place", tmp_path / "a", shard_rows=16)
    b = build_pool(recipe, tmp_path / "copied", tmp_path / "b")
    assert a.kept == b.kept and [s.rows_out for s in a.stages] == [s.rows_out for s in b.stages]
    for name in ("uids.npy",):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    # curate sql sees the pool's files and the candidate pool's decisions, expanded
    with PoolCatalog.open([tmp_path / "in_place", tmp_path / "a"]) as catalog:
        (count,) = catalog.query("SELECT count(*) AS n FROM samples WHERE pool = 'in_place'")
        assert count.frame["n"].item() == 100
        (rows,) = catalog.query("SELECT * EXCLUDE (pool) FROM decisions ORDER BY stage_index, row")
    expected = subset_decisions(tmp_path / "a").collect()
    assert rows.frame.height == expected.height == 100 + a.stages[0].rows_out
    assert rows.frame.select("uid", "kept", "reason", "score").equals(
        expected.select("uid", "kept", "reason", "score")
    )


@pytest.mark.parametrize(
    "damage, message",
    [
        ("schema", r"00000001\.parquet: its schema differs from 00000000\.parquet"),
        ("missing_npz", r"00000001\.npz is missing while 1 other"),
        ("npz_rows", r"00000001\.npz: b32_img has 3 rows but 00000001\.parquet has 5"),
        ("repeated_uid", r"00000001\.parquet row 2: uid \w{32} repeats .*00000000\.parquet row 6"),
        ("invalid_uid", r"00000000\.parquet row 1: invalid uid 'NOT-A-UID'"),
    ],
)
def test_in_place_bad_input_is_one_line_naming_the_file(tmp_path, damage, message):
    table, _ = _metadata_folder(tmp_path / "meta", sizes=(7, 5))
    meta = tmp_path / "meta"
    second = table.slice(7)
    if damage == "schema":
        second.with_columns(pl.col("original_width").cast(pl.Float64)).write_parquet(
            meta / "00000001.parquet"
        )
    elif damage == "missing_npz":
        (meta / "00000001.npz").unlink()
    elif damage == "npz_rows":
        np.savez(meta / "00000001.npz", b32_img=np.zeros((3, 4), np.float16))
    elif damage == "repeated_uid":
        second.with_columns(
            uid=pl.when(pl.int_range(pl.len()) == 2).then(pl.lit(table["uid"][6])).otherwise("uid")
        ).write_parquet(meta / "00000001.parquet")
    elif damage == "invalid_uid":
        table.slice(0, 7).with_columns(
            uid=pl.when(pl.int_range(pl.len()) == 1).then(pl.lit("NOT-A-UID")).otherwise("uid")
        ).write_parquet(meta / "00000000.parquet")
    with pytest.raises(IngestError) as caught:
        reference_in_place(meta, tmp_path / "pool", executor=LocalExecutor(workers=2))
    assert re.search(message, _only_line(caught.value)), caught.value
    assert not (tmp_path / "pool").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["meta"]  # no staging left either


def test_cli_ingest_datacomp_is_in_place_unless_copy(tmp_path):
    _metadata_folder(tmp_path / "meta", sizes=(4, 3))
    runner = CliRunner()
    for extra, in_place in (([], True), (["--copy"], False)):
        out = tmp_path / f"pool-{in_place}"
        args = ["ingest", str(tmp_path / "meta"), "--format", "datacomp", "--out", str(out)]
        result = runner.invoke(app, args + extra, terminal_width=200)
        assert result.exit_code == 0, result.output
        assert Pool.open(out).in_place is in_place
        assert ("used in place" in " ".join(result.output.split())) is in_place
