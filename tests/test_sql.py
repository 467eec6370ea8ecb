"""`curate sql` and `curate info`: views over real pool files, checked against polars reads of
the same files; every kind of write is refused and nothing on disk changes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from curate.cli.main import app
from curate.core.atomic import write_json, write_parquet
from curate.core.errors import NotAPoolError, UserInputError
from curate.core.layout import PoolLayout, SubsetLayout
from curate.core.manifest import Manifest
from curate.demo.pool import build_demo_pool
from curate.sql.info import collect_info
from curate.sql.query import PoolCatalog, ReadOnlyError, find_pools, output_format, write_result

SIZE = 80


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A demo pool with an embedding set and a results file, and a candidate pool of it."""
    root = tmp_path_factory.mktemp("sql")
    pool = root / "pool"
    build_demo_pool(pool, seed=3, size=SIZE, holdout_size=10)
    samples = pl.read_parquet(PoolLayout(pool).samples)
    embedding = PoolLayout(pool).embeddings("tiny")
    embedding.root.mkdir(parents=True)
    np.save(embedding.image, np.zeros((SIZE, 16), dtype=np.float16))
    write_json(embedding.meta, {"model": "curate-tiny-vit-p4", "pretrained": "ckpt"})
    scores = np.linspace(-0.2, 0.6, SIZE)
    write_parquet(embedding.clip_score, pl.DataFrame({"uid": samples["uid"], "clip_score": scores}))

    subset = SubsetLayout(root / "candidates" / "top_half")
    subset.root.mkdir(parents=True)
    kept = samples.with_columns(score=scores).filter(pl.col("score") > 0.2).select("uid")
    write_parquet(subset.uids_parquet, kept.sort("uid"))
    write_parquet(
        subset.stages,
        pl.DataFrame(
            {"stage": ["clip_score"], "in": [SIZE], "out": [kept.height], "seconds": [0.5]}
        ),
    )
    write_parquet(
        subset.decisions,
        samples.select("uid").with_columns(
            stage=pl.lit("clip_score"), kept=pl.Series(scores > 0.2), reason=pl.lit("clip_score")
        ),
    )
    Manifest(
        name="top_half",
        kind="subset",
        source={"pool": str(pool), "pool_name": "pool", "recipe": "clip_top_half"},
        sample_count=kept.height,
        has_images=True,
        produced_by={"command": "test"},
    ).write(subset.root)
    run = subset.results_dir / "run-1"
    run.mkdir(parents=True)
    records = [
        {"dataset": "cifar10-test", "metrics": {"acc1": 0.41, "n": 3000}},
        {"dataset": "usps-test", "metrics": {"acc1": 0.12}, "task_info": {"kind": "shift"}},
    ]
    torn = '{"dataset": "pool-hold'  # a killed run's last line
    (run / "results.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n" + torn)
    return root


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        + str(p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_views_match_the_files_they_come_from(workspace):
    pool, subset = workspace / "pool", workspace / "candidates" / "top_half"
    samples = pl.read_parquet(pool / "samples.parquet")
    with PoolCatalog.open([workspace]) as catalog:
        assert [p.label for p in catalog.pools] == ["candidates/top_half", "pool"]
        assert catalog.views == [
            "pools", "samples", "embeddings", "clip_scores", "decisions", "stages", "kept",
            "results", "ingest_report",
        ]  # fmt: skip
        (noise,) = catalog.query(
            "SELECT noise, count(*)::BIGINT AS n FROM samples WHERE pool = 'pool' GROUP BY noise"
        )
        expected = samples.group_by("noise").agg(n=pl.len().cast(pl.Int64))
        assert dict(noise.frame.iter_rows()) == dict(expected.iter_rows())

        kept = set(pl.read_parquet(subset / "uids.parquet")["uid"])
        (rows,) = catalog.query("SELECT uid, noise FROM samples WHERE pool = 'candidates/top_half'")
        assert set(rows.frame["uid"]) == kept
        reference = samples.filter(pl.col("uid").is_in(kept)).select("uid", "noise").sort("uid")
        assert rows.frame.sort("uid").equals(reference)

        (joined,) = catalog.query(
            "SELECT embedding, count(*) AS n, max(clip_score) AS top FROM clip_scores "
            "JOIN samples USING (pool, uid) GROUP BY embedding"
        )
        assert joined.frame.rows() == [("tiny", SIZE, pytest.approx(0.6))]
        (embeddings,) = catalog.query("SELECT name, model, dim, rows, has_text FROM embeddings")
        assert embeddings.frame.rows() == [("tiny", "curate-tiny-vit-p4", 16, SIZE, False)]

        (results,) = catalog.query(
            "SELECT pool, run_id, dataset, metrics.acc1 FROM results ORDER BY dataset"
        )
        assert results.frame.rows() == [
            ("candidates/top_half", "run-1", "cifar10-test", 0.41),
            ("candidates/top_half", "run-1", "usps-test", 0.12),
        ]  # the torn last line is not a record
        (report,) = catalog.query("SELECT pool, accepted, skipped FROM ingest_report")
        assert report.frame.rows() == [("pool", SIZE, 0)]
        (pools,) = catalog.query("SELECT pool, kind, sample_count, parent FROM pools ORDER BY 1")
        assert pools.frame.rows() == [
            ("candidates/top_half", "subset", len(kept), str(pool.resolve())),
            ("pool", "pool", SIZE, None),
        ]


def test_several_pools_by_option_or_parent_folder_give_the_same_union(workspace, tmp_path):
    by_parent = find_pools([workspace])
    by_option = find_pools([workspace / "pool", workspace / "candidates" / "top_half"])
    assert [p.root for p in by_parent] == sorted(p.root for p in by_option)
    assert {p.label for p in by_option} == {"pool", "top_half"}
    with PoolCatalog(by_option) as catalog:
        assert catalog.views[-1] == "ingest_report" and "kept" in catalog.views
    orphan = tmp_path / "orphan"
    shutil.copytree(workspace / "candidates" / "top_half", orphan)
    manifest = json.loads((orphan / "manifest.json").read_text())
    manifest["source"]["pool"] = str(tmp_path / "gone")
    (orphan / "manifest.json").write_text(json.dumps(manifest))
    with PoolCatalog.open([orphan]) as catalog:
        assert "parent pool" in catalog.notes[0] and "samples" not in catalog.views
        assert (
            catalog.query("SELECT count(*) FROM kept")[0].frame.item() == manifest["sample_count"]
        )
    with pytest.raises(NotAPoolError, match="no pool or candidate pool"):
        find_pools([workspace / "pool" / "shards"])


WRITES = [
    "CREATE TABLE t AS SELECT 1",
    "INSERT INTO samples SELECT * FROM samples",
    "DELETE FROM samples",
    "UPDATE samples SET text = 'x'",
    "DROP VIEW samples",
    "ATTACH 'copy.duckdb' AS c",
    "COPY samples TO 'out.csv'",
    "COPY (SELECT 1) TO '{pool}/samples.parquet' (FORMAT parquet)",
    "EXPORT DATABASE 'dump'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "PRAGMA enable_profiling",
    "SET threads = 1",
    "SET enable_external_access = true",
    "RESET lock_configuration",
    "CALL pragma_version()",
    "EXPLAIN ANALYZE COPY (SELECT 1) TO 'out.csv'",
    "SELECT 1; CREATE TABLE t AS SELECT 1",
    "/* a comment */ CREATE VIEW v AS SELECT 1",
    "SELECT * FROM read_csv('{outside}')",
    "SELECT * FROM read_parquet('{pool}/samples.parquet')",
    "SELECT * FROM glob('{pool}/*')",
]


def test_writes_and_outside_reads_are_refused_and_nothing_changes(workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where relative COPY/ATTACH/EXPORT targets would land
    outside = tmp_path / "secret.csv"
    outside.write_text("a\n1\n")
    before = _snapshot(workspace)
    with PoolCatalog.open([workspace]) as catalog:
        for statement in WRITES:
            sql = statement.format(pool=workspace / "pool", outside=outside)
            with pytest.raises(ReadOnlyError, match="refused"):
                catalog.query(sql)
        # the second guard: DuckDB itself refuses, even for a statement given to it directly
        for sql in (
            "COPY (SELECT 1) TO 'direct.csv'",
            f"ATTACH '{tmp_path / 'direct.duckdb'}'",
            "INSTALL httpfs",
            "SET enable_external_access = true",
        ):
            with pytest.raises((duckdb.PermissionException, duckdb.InvalidInputException)):
                catalog.connection.execute(sql)
        (count,) = catalog.query("SELECT count(*) FROM samples")  # still usable afterwards
        assert count.frame.item() > 0
    assert _snapshot(workspace) == before
    assert sorted(os.listdir(tmp_path)) == ["secret.csv"]


def test_results_written_as_csv_json_parquet_read_back_equal(workspace, tmp_path):
    with PoolCatalog.open([workspace / "pool"]) as catalog:
        (result,) = catalog.query("SELECT uid, width, noise, label FROM samples ORDER BY uid")
        (preview,) = catalog.query("SELECT uid FROM samples", max_rows=5)
    assert preview.frame.height == 5 and preview.truncated
    frame = result.frame
    for fmt, read in (("csv", pl.read_csv), ("json", pl.read_json), ("parquet", pl.read_parquet)):
        path = tmp_path / f"out.{fmt}"
        write_result(frame, path, output_format(path, None))
        assert read(path).equals(frame), fmt
    with pytest.raises(UserInputError, match="suffix"):
        output_format(tmp_path / "out.txt", None)


def test_cli_query_shell_and_info(workspace):
    runner = CliRunner()
    pool = str(workspace / "pool")
    shown = runner.invoke(app, ["sql", pool, "SELECT origin, count(*) FROM samples GROUP BY 1"])
    assert shown.exit_code == 0, shown.output
    assert "cifar10" in shown.output and "mnist" in shown.output

    refused = runner.invoke(app, ["sql", pool, "DROP VIEW samples"])
    assert refused.exit_code != 0 and "read-only" in str(refused.exception)

    shell = runner.invoke(
        app,
        ["sql", str(workspace)],
        input="SELECT count(*) * 1000 + 7 AS n\nFROM kept;\n.tables\nSELECT nope;\nSELECT 41 + 1",
    )
    assert shell.exit_code == 0, shell.output
    kept = pl.read_parquet(workspace / "candidates" / "top_half" / "uids.parquet").height
    assert str(kept * 1000 + 7) in shell.output  # a statement over two lines
    assert "ingest_report" in shell.output  # .tables
    assert "error" in shell.output and "nope" in shell.output
    assert "42" in shell.output  # the shell went on after the error; no ';' at EOF is fine

    (info,) = [i for i in collect_info([workspace]) if i.kind == "pool"]
    samples = pl.read_parquet(workspace / "pool" / "samples.parquet")
    assert info.noise_counts == dict(samples.group_by("noise").len().iter_rows())
    assert info.source_counts == dict(samples.group_by("source").len().iter_rows())
    assert info.bytes_on_disk["samples"] == (workspace / "pool" / "samples.parquet").stat().st_size
    assert [e["name"] for e in info.embeddings] == ["tiny"]
    printed = runner.invoke(app, ["info", str(workspace)])
    assert printed.exit_code == 0, printed.output
    assert "ground-truth noise" in printed.output and "clip_top_half" in printed.output
