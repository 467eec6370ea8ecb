"""`curate sql` and `curate info`: views over real pool files, checked against polars reads of
the same files; every kind of write is refused and nothing on disk changes; every DuckDB type
reaches every output; Ctrl-C, --timeout and --memory-limit stop runaway queries."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import typer.main
import typer.testing
from typer.testing import CliRunner

from curate.cli.main import app
from curate.core.atomic import write_json, write_parquet
from curate.core.errors import NotAPoolError, UserInputError
from curate.core.kept_uids import kept_uids
from curate.core.layout import PoolLayout, SubsetLayout
from curate.core.manifest import Manifest
from curate.demo.pool import build_demo_pool
from curate.sql.info import collect_info
from curate.sql.query import (
    PoolCatalog,
    QueryLimitError,
    ReadOnlyError,
    default_memory_limit,
    find_pools,
    output_format,
)

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

        kept = set(kept_uids(SubsetLayout(subset)))
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
    sql = "SELECT uid, width, noise, label FROM samples ORDER BY uid"
    with PoolCatalog.open([workspace / "pool"]) as catalog:
        (result,) = catalog.query(sql)
        (preview,) = catalog.query("SELECT uid FROM samples", max_rows=5)
        frame = result.frame
        for fmt, read in (
            ("csv", pl.read_csv),
            ("json", pl.read_json),
            ("parquet", pl.read_parquet),
        ):
            path = tmp_path / f"out.{fmt}"
            assert catalog.write_file(sql, path, output_format(path, None)) == frame.height
            assert read(path).equals(frame), fmt
    assert preview.frame.height == 5 and preview.truncated
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
    kept = len(kept_uids(SubsetLayout(workspace / "candidates" / "top_half")))
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


# -- every DuckDB type in every output ------------------------------------------------------------
TYPE_VALUES = [  # (DuckDB type, an SQL value of it)
    ("BOOLEAN", "true"),
    ("TINYINT", "(-128)::TINYINT"),
    ("SMALLINT", "(-32768)::SMALLINT"),
    ("INTEGER", "2147483647"),
    ("BIGINT", "(-9223372036854775808)::BIGINT"),
    ("HUGEINT", "sum(9223372036854775807) OVER ()"),  # a sum of BIGINT is a HUGEINT
    ("HUGEINT-39-digits", "170141183460469231731687303715884105727::HUGEINT"),
    ("UTINYINT", "255::UTINYINT"),
    ("USMALLINT", "65535::USMALLINT"),
    ("UINTEGER", "4294967295::UINTEGER"),
    ("UBIGINT", "18446744073709551615::UBIGINT"),
    ("UHUGEINT", "12345678901234567890123::UHUGEINT"),
    ("UHUGEINT-39-digits", "340282366920938463463374607431768211455::UHUGEINT"),
    ("FLOAT", "'nan'::FLOAT"),
    ("DOUBLE", "'-inf'::DOUBLE"),
    ("DECIMAL", "123.456::DECIMAL(18,3)"),
    ("DECIMAL-38", "1234567890123456789012345678.0123456789::DECIMAL(38,10)"),
    ("VARCHAR", "'a \"quoted\", comma' || chr(10) || 'and a newline'"),
    ("BLOB", "'\\xAA\\x00bytes'::BLOB"),
    ("BIT", "'010110'::BIT"),
    ("BIGNUM", "('1' || repeat('0', 50))::BIGNUM"),
    ("DATE", "DATE '2024-02-29'"),
    ("DATE-infinity", "'-infinity'::DATE"),
    ("TIME", "TIME '12:34:56.789'"),
    ("TIME_NS", "'12:34:56.123456789'::TIME_NS"),
    ("TIMETZ", "TIMETZ '12:34:56+02'"),
    ("TIMESTAMP", "TIMESTAMP '2024-02-29 12:34:56.789'"),
    ("TIMESTAMP-infinity", "'infinity'::TIMESTAMP"),
    ("TIMESTAMP_S", "TIMESTAMP_S '2024-02-29 12:34:56'"),
    ("TIMESTAMP_MS", "TIMESTAMP_MS '2024-02-29 12:34:56.789'"),
    ("TIMESTAMP_NS", "TIMESTAMP_NS '2024-02-29 12:34:56.123456789'"),
    ("TIMESTAMPTZ", "TIMESTAMPTZ '2024-02-29 12:34:56+05'"),
    ("INTERVAL", "INTERVAL '1 month 2 days 3 seconds'"),
    ("UUID", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::UUID"),
    ("ENUM", "'b'::ENUM('a', 'b')"),
    ("LIST", "[1, NULL, 3]"),
    ("LIST-of-INTERVAL", "[INTERVAL 1 DAY, NULL]"),
    ("ARRAY", "[1.5, 'nan'::DOUBLE]::DOUBLE[2]"),
    ("STRUCT", "{'a': 1, 'b': 'x'}"),
    ("STRUCT-of-odd-types", "{'b': 'x'::BLOB, 'u': 2::UNION(n INTEGER, s VARCHAR), 'f': [0.5]}"),
    ("TUPLE", "(1, 'x')"),
    ("TUPLE-of-NaN", "('nan'::DOUBLE, [('inf'::DOUBLE, 2)])"),  # JSON has neither, nested too
    ("MAP", "MAP {'k': [1, 2]}"),
    ("MAP-of-INTERVAL", "MAP {'k': INTERVAL 1 HOUR}"),
    ("UNION", "'x'::UNION(n INTEGER, s VARCHAR)"),
    ("VARIANT", "{'a': [1, 2]}::VARIANT"),
    ("JSON", "'{\"a\": [1, 2]}'::JSON"),
    ("NULL", "NULL"),
    ("GEOMETRY", "'POINT (1 2)'::GEOMETRY"),
]
OUTPUTS = ["table", "csv", "json", "parquet"]
UNWRITABLE = {  # (type, output): a one-line error naming the column and its type
    ("HUGEINT-39-digits", "parquet"),
    ("UHUGEINT-39-digits", "parquet"),
}


@pytest.fixture(scope="module")
def bare_pool(tmp_path_factory) -> Path:
    """A pool with only its manifest: the cheapest catalog for queries that read no view."""
    root = tmp_path_factory.mktemp("bare") / "bare"
    root.mkdir()
    Manifest(
        name="bare",
        kind="pool",
        source={},
        sample_count=0,
        has_images=False,
        produced_by={"command": "test"},
    ).write(root)
    return root


@pytest.fixture(scope="module")
def cli():
    """``curate ...`` in this process; typer builds its click command once, not per call."""
    runner, command = CliRunner(), typer.main.get_command(app)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(typer.testing, "_get_command", lambda _: command, raising=False)
        yield lambda *args: runner.invoke(app, [str(arg) for arg in args])


def _no_json_constant(name: str) -> None:
    raise AssertionError(f"{name} is not JSON")


def _read_output(result, fmt: str, path: Path) -> list[dict]:
    """The rows an output holds, after checking that its format parses strictly."""
    if fmt == "csv":
        header, *rows = csv.reader(io.StringIO(result.stdout))
        return [dict(zip(header, row, strict=True)) for row in rows]
    if fmt == "json":
        return json.loads(result.stdout, parse_constant=_no_json_constant)
    if fmt == "parquet":
        assert pl.read_parquet(path).height == pq.read_metadata(path).num_rows
        return [{"c": None, "n": n} for n in pq.read_table(path, columns=["n"])["n"].to_pylist()]
    assert "1 row" in result.stdout and " 7 " in result.stdout
    return [{"c": None, "n": 7}]


@pytest.mark.parametrize("fmt", OUTPUTS)
@pytest.mark.parametrize(("column_type", "value"), TYPE_VALUES, ids=[t for t, _ in TYPE_VALUES])
def test_every_duckdb_type_reaches_every_output(column_type, value, fmt, bare_pool, cli, tmp_path):
    path = tmp_path / "out.parquet"
    options = {"table": [], "parquet": ["--output", path]}.get(fmt, ["--format", fmt])
    result = cli("sql", bare_pool, f"SELECT {value} AS c, 7 AS n", *options)
    if (column_type, fmt) in UNWRITABLE:
        error = result.exception
        assert isinstance(error, UserInputError) and "\n" not in str(error), result.output
        assert "column c" in str(error) and column_type.split("-")[0] in str(error)
        assert not path.exists() and os.listdir(tmp_path) == []  # no partial file either
        return
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    rows = _read_output(result, fmt, path)
    assert len(rows) == 1 and str(rows[0]["n"]) == "7" and set(rows[0]) == {"c", "n"}


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_values_keep_their_meaning_in_each_output(fmt, bare_pool, cli, tmp_path):
    """Each output holds what DuckDB holds, as DuckDB prints it where the format has no such
    type; repeated column names get DuckDB's suffixes."""
    sql = (
        "SELECT 'a\\x00'::BLOB AS b, INTERVAL 3 DAY AS i, 'nan'::DOUBLE AS f, [1, 2] AS l, "
        "{'k': 'v'} AS s, NULL AS z, 0.1::DOUBLE + 0.2 AS d, 1 AS d"
    )
    path = tmp_path / f"out.{fmt}"
    result = cli(
        "sql", bare_pool, sql, "--format", fmt, *(["-o", path] if fmt == "parquet" else [])
    )
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    if fmt == "parquet":
        (row,) = pq.read_table(path).to_pylist()
        assert math.isnan(row.pop("f"))
        assert row == {
            "b": b"a\x00", "i": "3 days", "l": [1, 2], "s": {"k": "v"}, "z": None,
            "d": 0.30000000000000004, "d_1": 1,
        }  # fmt: skip
        return
    (row,) = _read_output(result, fmt, path)
    if fmt == "csv":
        assert row == {
            "b": "a\\x00", "i": "3 days", "f": "nan", "l": "[1,2]", "s": '{"k":"v"}', "z": "",
            "d": "0.30000000000000004", "d_1": "1",
        }  # fmt: skip
    else:
        assert row == {
            "b": "a\\x00", "i": "3 days", "f": "nan", "l": [1, 2], "s": {"k": "v"}, "z": None,
            "d": 0.30000000000000004, "d_1": 1,
        }  # fmt: skip
    settings = cli("sql", bare_pool, "FROM duckdb_settings()", "--format", fmt)
    assert settings.exit_code == 0, f"{settings.output}\n{settings.exception!r}"
    assert len(_read_output(settings, fmt, path)) > 50


def test_table_shows_rows_as_duckdb_prints_them(bare_pool, cli):
    shown = cli("sql", bare_pool, "SELECT 0.1::DOUBLE + 0.2 AS d, 'x'::BLOB AS b, 1::VARIANT AS v")
    assert shown.exit_code == 0, f"{shown.output}\n{shown.exception!r}"
    assert "│ 0.3 │ x │ 1 │" in shown.stdout


# -- runaway queries: Ctrl-C, --timeout, --memory-limit -------------------------------------------
RUNAWAY = (  # a filtered cross join: days of work, no row ever, little memory
    "SELECT count(*) FROM range(1000000000000) a, range(100000) b WHERE a.range + b.range < -1"
)
DRIVER = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, whatever we inherit
import curate.cli.main, curate.cli.sql_shell  # what `curate sql` imports before it queries
print("ready", flush=True)
sys.argv = ["curate", *sys.argv[1:]]
curate.cli.main.main()
"""


@pytest.mark.parametrize("mode", ["query", "shell"])
def test_ctrl_c_stops_a_runaway_query_within_a_second(mode, bare_pool, tmp_path):
    """The query stops and "interrupted" shows within a second; the process then exits 130
    (tearing down its ~900 modules takes 0.2-0.3 s more, longer on a loaded machine)."""
    args = [RUNAWAY] if mode == "query" else []
    statements = tmp_path / "stdin.sql"  # the shell reports the stopped statement and goes on
    statements.write_text(f"{RUNAWAY};\nSELECT 41 + 1 AS answer;\n")
    with statements.open() as stdin:
        process = subprocess.Popen(
            [sys.executable, "-c", DRIVER, "sql", str(bare_pool), *args],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stdout.readline() == "ready\n"
        time.sleep(1.0)  # the query runs
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        message = (process.stdout if mode == "shell" else process.stderr).readline()
        shown = time.monotonic() - sent
        stdout, stderr = process.communicate(timeout=30)
    assert message == "interrupted\n" and shown < 1.0, (message, shown, stdout, stderr)
    assert time.monotonic() - sent < 2.0
    assert "Traceback" not in stdout + stderr
    if mode == "shell":
        assert process.returncode == 0 and "42" in stdout, (stdout, stderr)
    else:
        assert process.returncode == 130 and stderr == "", stderr


def test_timeout_stops_a_runaway_query(bare_pool, cli):
    started = time.monotonic()
    result = cli("sql", bare_pool, RUNAWAY, "--timeout", "1")
    assert 1.0 <= time.monotonic() - started < 3.0
    assert isinstance(result.exception, QueryLimitError), result.output
    assert str(result.exception).startswith("query exceeded --timeout 1 s;")


PEAK_RSS = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, code)  # Linux: KiB
"""  # a small parent: a child's peak counts the pages it shared with its parent before exec


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT list(range) FROM range(50000000)",
        "SELECT range FROM range(50000000) ORDER BY range DESC",  # all rows, sorted
    ],
)
def test_memory_limit_fails_a_query_that_needs_more(sql, bare_pool, tmp_path):
    command = [sys.executable, "-m", "curate.cli.main", "sql", str(bare_pool), sql, "-f", "csv"]
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *command, "--memory-limit", "100MB"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    peak_rss, returncode = (int(n) for n in done.stdout.split()[-2:])
    assert returncode == 2, done.stderr
    assert done.stderr.startswith("error: query exceeded the memory limit of 100MB;")
    assert done.stderr.count("\n") == 1
    assert peak_rss < 1.5e9
    assert os.listdir(tmp_path) == []  # nothing spilled to disk


def test_memory_limit_is_a_duckdb_size(bare_pool):
    assert default_memory_limit().endswith("MiB") and int(default_memory_limit()[:-3]) > 0
    with pytest.raises(UserInputError, match="--memory-limit 'lots'"):
        PoolCatalog.open([bare_pool], memory_limit="lots")
    with PoolCatalog.open([bare_pool], memory_limit="300MB") as catalog:
        (limit,) = catalog.query("SELECT current_setting('memory_limit') AS limit")
        assert limit.frame.item() == "286.1 MiB"  # DuckDB's way of writing 300MB
