"""Read-only SQL over pools and candidate pools (DuckDB).

Every table a pool directory holds becomes one view, unioned over all the pools given, with
a first column ``pool`` naming the pool each row comes from (its directory name, or its path
relative to the parent folder that was searched)::

    pools          one row per pool: kind, name, path, sample_count, parent, recipe, manifest
    samples        samples.parquet (a candidate pool: its own, else the parent pool's kept rows)
    embeddings     one row per embedding set: name, model, dim, rows, has_text, meta (JSON)
    clip_scores    embeddings/*/clip_score.parquet, with the set's name in ``embedding``
    decisions      decisions.parquet of candidate pools (one row per sample and stage)
    stages         stages.parquet of candidate pools (per stage: in, out, seconds)
    kept           the kept uids of candidate pools (from uids.npy, as strings)
    results        every results/<run_id>/results.jsonl record, with ``run_id``
    ingest_report  ingest_report.json: accepted, skipped, skipped_by_reason, skip_examples

A view exists only when at least one pool has its file.

Read-only, enforced twice: only SELECT-like statements pass (DuckDB's own parser classifies
each one: SELECT, WITH, FROM, VALUES, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN of those), and the
connection itself cannot touch the file system: the files are handed to DuckDB as Arrow
datasets, then ``enable_external_access`` is switched off, Python replacement scans are
switched off and the configuration is locked, so COPY ... TO, ATTACH, INSTALL/LOAD,
read_csv('/any/file') and SET fail inside DuckDB even if a statement got past the first check.

Bounded: DuckDB may use ``memory_limit`` (default: half the machine's memory) and spills
nothing to disk, so a query that needs more fails with a :class:`QueryLimitError`; a statement
runs in a thread of its own while the calling thread watches for Ctrl-C and ``timeout_s`` and
stops DuckDB with ``interrupt()`` (a signal reaches Python only between bytecodes, never inside
a running query), raising :class:`QueryInterrupted` or :class:`QueryLimitError` within moments.
How each DuckDB type reaches a frame or a file: :mod:`curate.sql.formats`.
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, TypeVar

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from duckdb.sqltypes import DuckDBPyType

from curate.core.embedding_store import list_embeddings, load_embeddings
from curate.core.errors import InputNotFoundError, NotAPoolError, UserInputError
from curate.core.kept_uids import has_kept_uids, kept_uids_relation
from curate.core.layout import MANIFEST, PoolLayout, SubsetLayout
from curate.core.manifest import Manifest, read_manifest
from curate.eval.external_results import EXTERNAL_RESULTS_FILE, EXTERNAL_RESULTS_KIND
from curate.sql.formats import VALUE_ERROR, WRITERS, portable, quote_identifier, sql_string

SEARCH_DEPTH = 4
_NOT_POOL_DIRS = {"shards", "embeddings", "results"}
ALLOWED_STATEMENTS = {duckdb.StatementType.SELECT}
_EXPLAIN = re.compile(r"^\s*EXPLAIN(?:\s+ANALY[SZ]E)?\s+(.*)$", re.IGNORECASE | re.DOTALL)
DEFAULT_TIMEOUT_S = 600.0
BATCH_ROWS = 65_536
T = TypeVar("T")

VIEW_DESCRIPTIONS = {
    "pools": "one row per pool or candidate pool (kind, name, path, sample_count, parent)",
    "samples": "one row per sample (a candidate pool: its kept samples)",
    "embeddings": "one row per embedding set (name, model, dim, rows)",
    "clip_scores": "uid, clip_score per embedding set (column embedding)",
    "decisions": "candidate pools: one row per sample and stage (kept/removed, reason)",
    "stages": "candidate pools: per stage in/out counts and seconds",
    "kept": "candidate pools: the kept uids",
    "results": "scoring results, one record per run and task (column run_id)",
    "ingest_report": "what ingestion accepted and skipped, and why",
    # curate import-results output (manifest kind "external_results"):
    "external_results": "imported results of external CLIPs, one row per model and task",
}


class ReadOnlyError(UserInputError):
    """A statement that would change something: curate sql only reads."""


class QueryLimitError(UserInputError):
    """A statement ran past the timeout or needed more memory than the limit."""


class QueryInterrupted(KeyboardInterrupt):
    """Ctrl-C while a statement ran: DuckDB stopped it, and the connection can run the next."""


@dataclass(frozen=True)
class PoolDir:
    label: str  # the value of the ``pool`` column
    root: Path
    manifest: Manifest

    @property
    def is_subset(self) -> bool:
        return self.manifest.kind == "subset"


@dataclass(frozen=True)
class QueryResult:
    statement: str
    frame: pl.DataFrame
    truncated: bool  # more rows exist than ``frame`` holds
    types: tuple[DuckDBPyType, ...] = ()  # the DuckDB type of each column


# -- finding pools ------------------------------------------------------------------------
def _manifest_dirs(parent: Path, depth: int) -> Iterable[Path]:
    if (parent / MANIFEST).is_file():
        yield parent
        return
    if depth == 0:
        return
    for child in sorted(p for p in parent.iterdir() if p.is_dir()):
        if not child.name.startswith(".") and child.name not in _NOT_POOL_DIRS:
            yield from _manifest_dirs(child, depth - 1)


def find_pools(paths: Sequence[Path | str]) -> list[PoolDir]:
    """The pools and candidate pools at ``paths``: each path is one, or a folder holding some
    (searched up to ``SEARCH_DEPTH`` levels deep, not inside a pool)."""
    found: list[tuple[str, Path]] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise InputNotFoundError(f"{path} does not exist or is not a directory")
        roots = list(_manifest_dirs(path, SEARCH_DEPTH))
        if not roots:
            raise NotAPoolError(
                f"{path} holds no pool or candidate pool ({MANIFEST} neither there nor in its "
                f"subfolders up to {SEARCH_DEPTH} levels); make one with `curate demo-pool`, "
                "`curate ingest` or `curate build-pool`"
            )
        for root in roots:
            label = path.resolve().name if root == path else root.relative_to(path).as_posix()
            found.append((label, root.resolve()))
    unique = {root: label for label, root in reversed(found)}  # same dir given twice: once
    labels = [label for label in unique.values()]
    pools = []
    for root, label in reversed(list(unique.items())):
        name = label if labels.count(label) == 1 else str(root)
        pools.append(PoolDir(name, root, read_manifest(root)))
    return pools


# -- the catalog ----------------------------------------------------------------------------
@dataclass
class _Sources:
    """Per view name, the (pool label, Arrow data) parts to union."""

    parts: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)

    def add(self, view: str, label: str, data: Any) -> None:
        self.parts.setdefault(view, []).append((label, data))


def _dataset(path: Path) -> ds.Dataset | None:
    return ds.dataset(path, format="parquet") if path.is_file() else None


def _samples_dataset(root: Path) -> ds.Dataset | None:
    """A pool's samples: samples.parquet, or the parquet files it uses in place."""
    from curate.core.errors import CurateError
    from curate.core.pool import sample_files

    try:
        files = [file.path for file in sample_files(root) if file.path.is_file()]
    except CurateError:
        return None
    return ds.dataset(files, format="parquet") if files else None


@dataclass(frozen=True)
class _KeptUids:
    """A candidate pool's kept uids (curate.core.kept_uids makes them a relation)."""

    layout: SubsetLayout


@dataclass(frozen=True)
class _CompactDecisions:
    """A compact decisions.parquet and its parent pool's samples (curate.core.decisions_view)."""

    decisions: ds.Dataset
    samples: ds.Dataset
    info: Any


def _compact_decisions(pool: PoolDir, path: Path) -> _CompactDecisions | None:
    from curate.core.decisions_view import compact_info

    info = compact_info(path) if path.is_file() else None
    parent = pool.manifest.source.get("pool")
    samples = _samples_dataset(Path(parent)) if info is not None and parent else None
    if info is None or samples is None:
        return None
    return _CompactDecisions(ds.dataset(path, format="parquet"), samples, info)


def _read_json_files(files: list[Path], **options: str) -> pa.Table:
    """Several JSON files as one Arrow table, columns unioned by name, ``_file`` per row.

    Rows DuckDB could not parse (``ignore_errors``: the torn last line a killed run leaves in
    a results file) come back all-null and are dropped.
    """
    connection = duckdb.connect()
    try:
        paths = ", ".join(sql_string(str(f)) for f in files)
        extra = "".join(f", {key}={value}" for key, value in options.items())
        query = f"FROM read_json([{paths}], union_by_name=true, filename='_file'{extra})"
        table = connection.sql(query).to_arrow_table()
    finally:
        connection.close()
    data_columns = [table[name] for name in table.column_names if name != "_file"]
    if not data_columns:
        return table
    parsed = pc.is_valid(data_columns[0])
    for column in data_columns[1:]:
        parsed = pc.or_(parsed, pc.is_valid(column))
    return table.filter(parsed)


def _embedding_rows(pool: PoolDir) -> list[dict[str, Any]]:
    rows = []
    layout = PoolLayout(pool.root)
    for name in list_embeddings(pool.root):  # stored sets, and .npz used in place
        embedding = layout.embeddings(name)
        if embedding.meta.is_file():
            meta = json.loads(embedding.meta.read_text("utf-8"))
            image = np.load(embedding.image, mmap_mode="r") if embedding.image.is_file() else None
            has_text = embedding.text.is_file()
        else:
            try:
                loaded = load_embeddings(pool.root, name)
                meta, image, has_text = loaded.meta, loaded.image, loaded.text is not None
            except UserInputError as error:  # e.g. a compressed .npz: listed, not readable
                meta, image, has_text = {"unreadable": str(error)}, None, False
        rows.append(
            {
                "name": name,
                "model": str(meta.get("model") or meta.get("arch") or ""),
                "dim": None if image is None else int(image.shape[1]),
                "rows": None if image is None else int(image.shape[0]),
                "has_text": has_text,
                "has_clip_score": embedding.clip_score.is_file(),
                "meta": json.dumps(meta, sort_keys=True),
            }
        )
    return rows


def _pool_row(pool: PoolDir) -> dict[str, Any]:
    source = pool.manifest.source
    return {
        "kind": pool.manifest.kind,
        "name": pool.manifest.name,
        "path": str(pool.root),
        "sample_count": pool.manifest.sample_count,
        "has_images": pool.manifest.has_images,
        "created": pool.manifest.created,
        "parent": source.get("pool") if pool.is_subset else None,
        "recipe": source.get("recipe") if pool.is_subset else None,
        "manifest": json.dumps(pool.manifest.__dict__, sort_keys=True, default=str),
    }


def _add_subset_sources(sources: _Sources, pool: PoolDir) -> str | None:
    """Views of a candidate pool; returns a note when its samples cannot be shown."""
    layout = SubsetLayout(pool.root)
    if has_kept_uids(layout):
        sources.add("kept", pool.label, _KeptUids(layout))
    for view, path in (("decisions", layout.decisions), ("stages", layout.stages)):
        if view == "decisions" and (compact := _compact_decisions(pool, path)) is not None:
            sources.add(view, pool.label, compact)
        elif (data := _dataset(path)) is not None:
            sources.add(view, pool.label, data)
    if (own := _dataset(PoolLayout(pool.root).samples)) is not None:  # resharded
        sources.add("samples", pool.label, own)
        return None
    parent = pool.manifest.source.get("pool")
    parent_samples = _samples_dataset(Path(parent)) if parent else None
    if parent_samples is None:
        return f"{pool.label}: its parent pool {parent} is missing, so `samples` has no rows for it"
    if not has_kept_uids(layout):
        return f"{pool.label}: {layout.uids_npy.name} is missing, so `samples` has no rows for it"
    sources.add("samples", pool.label, (parent_samples, _KeptUids(layout)))
    return None


def _add_pool_sources(sources: _Sources, pool: PoolDir) -> None:
    layout = PoolLayout(pool.root)
    if (data := _samples_dataset(pool.root)) is not None:
        sources.add("samples", pool.label, data)
    embeddings = _embedding_rows(pool)
    if embeddings:
        sources.add("embeddings", pool.label, pa.Table.from_pylist(embeddings))
    for row in embeddings:
        if (scores := _dataset(layout.embeddings(row["name"]).clip_score)) is not None:
            sources.add("clip_scores", pool.label, (row["name"], scores))


def _collect_sources(pools: list[PoolDir]) -> tuple[_Sources, list[str]]:
    sources = _Sources()
    notes: list[str] = []
    results_files: list[tuple[str, Path]] = []
    reports: list[tuple[str, Path]] = []
    for pool in pools:
        sources.add("pools", pool.label, pa.Table.from_pylist([_pool_row(pool)]))
        if pool.manifest.kind == EXTERNAL_RESULTS_KIND:  # curate import-results output
            if (imported := _dataset(pool.root / EXTERNAL_RESULTS_FILE)) is not None:
                sources.add("external_results", pool.label, imported)
            continue
        if pool.is_subset:
            if (note := _add_subset_sources(sources, pool)) is not None:
                notes.append(note)
        else:
            _add_pool_sources(sources, pool)
            if PoolLayout(pool.root).ingest_report.is_file():
                reports.append((pool.label, PoolLayout(pool.root).ingest_report))
        results_dir = PoolLayout(pool.root).results_dir  # the same folder in a candidate pool
        results_files += [(pool.label, f) for f in sorted(results_dir.glob("*/results.jsonl"))]
    if results_files:
        table = _read_json_files(
            [f for _, f in results_files], format="'newline_delimited'", ignore_errors="true"
        )
        sources.add("results", "", (results_files, table))
    if reports:
        sources.add("ingest_report", "", (reports, _read_json_files([f for _, f in reports])))
    return sources, notes


class PoolCatalog:
    """A read-only DuckDB connection with one view per pool table (see the module doc)."""

    def __init__(
        self,
        pools: list[PoolDir],
        memory_limit: str | None = None,
        timeout_s: float | None = None,
    ) -> None:
        """``memory_limit``: a DuckDB size such as 4GB or 500MB (None: half the machine's
        memory); ``timeout_s``: how long one statement may run (None or 0: no limit)."""
        self.pools = pools
        self.memory_limit = memory_limit or default_memory_limit()
        self.timeout_s = timeout_s or None
        self.connection = duckdb.connect(config={"python_enable_replacements": False})
        try:
            self.connection.execute(f"SET memory_limit = {sql_string(self.memory_limit)}")
        except duckdb.Error as error:
            self.connection.close()
            raise UserInputError(
                f"--memory-limit {self.memory_limit!r}: {_first_line(error)}; "
                "give a size such as 4GB or 500MB"
            ) from None
        sources, self.notes = _collect_sources(pools)
        self.views: list[str] = []
        for view in VIEW_DESCRIPTIONS:
            parts = sources.parts.get(view)
            if parts:
                self._create_view(view, parts)
                self.views.append(view)
        for setting in (
            "SET temp_directory = ''",  # no spill files: a query over the limit fails instead
            "SET enable_external_access = false",
            "SET lock_configuration = true",
        ):
            self.connection.execute(setting)

    @classmethod
    def open(
        cls,
        paths: Sequence[Path | str],
        memory_limit: str | None = None,
        timeout_s: float | None = None,
    ) -> PoolCatalog:
        return cls(find_pools(paths), memory_limit, timeout_s)

    def __enter__(self) -> PoolCatalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.connection.close()

    def _relation(self, view: str, label: str, data: Any) -> duckdb.DuckDBPyRelation:
        con = self.connection
        pool = sql_string(label)
        if isinstance(data, _CompactDecisions):
            from curate.core.decisions_view import decisions_relation

            relation = decisions_relation(con, data.decisions, data.samples, data.info)
            return relation.project(f"{pool} AS pool, *")
        if isinstance(data, _KeptUids):
            return kept_uids_relation(con, data.layout).project(f"{pool} AS pool, *")
        if view == "samples" and isinstance(data, tuple):  # a candidate pool without shards
            parent, kept = con.from_arrow(data[0]), kept_uids_relation(con, data[1].layout)
            return parent.join(kept, "uid", how="semi").project(f"{pool} AS pool, *")
        if view == "clip_scores":
            name, scores = data
            return con.from_arrow(scores).project(
                f"{pool} AS pool, {sql_string(name)} AS embedding, *"
            )
        if view in ("results", "ingest_report"):
            files, table = data
            labels = pa.table(
                {"pool": [lbl for lbl, _ in files], "_file": [str(f) for _, f in files]}
            )
            run_id = (
                "regexp_extract(_file, '([^/]+)/results\\.jsonl$', 1) AS run_id, "
                if view == "results"
                else ""
            )
            joined = con.from_arrow(table).join(con.from_arrow(labels), "_file")
            return joined.project(f"pool, {run_id}* EXCLUDE (_file, pool)")
        return con.from_arrow(data).project(f"{pool} AS pool, *")

    def _create_view(self, view: str, parts: list[tuple[str, Any]]) -> None:
        relations = [self._relation(view, label, data) for label, data in parts]
        _union_by_name(relations).create_view(view)

    # -- querying -----------------------------------------------------------------------
    def query(
        self, sql: str, max_rows: int | None = None, as_text: bool = False
    ) -> list[QueryResult]:
        """Run every statement of ``sql`` (all are checked before any runs). Frames hold
        polars types (see :mod:`curate.sql.formats`), or with ``as_text`` each value as text
        for a terminal table."""
        statements = read_only_statements(sql)
        return [self._frame(statement, max_rows, as_text) for statement in statements]

    def write(self, sql: str, fmt: str, out: IO[Any]) -> list[int]:
        """Run every statement of ``sql``, writing each whole result to ``out`` (a binary
        file, or a text stream such as stdout) as csv, json or parquet, batch by batch;
        returns each statement's row count."""
        target, writer = WRITERS[fmt]
        sink = _binary(out)

        def write(relation: duckdb.DuckDBPyRelation, stopping: threading.Event) -> int:
            return writer(*_batches(portable(relation, target), stopping), sink)

        return [self._supervised(s, write) for s in read_only_statements(sql)]

    def write_file(self, sql: str, path: Path, fmt: str) -> int:
        """One statement's whole result as the file ``path``, written atomically."""
        from curate.core.atomic import atomic_path

        statements = read_only_statements(sql)
        if len(statements) != 1:
            raise UserInputError(
                f"an output file takes one statement's result; got {len(statements)}"
            )
        with atomic_path(Path(path)) as tmp, open(tmp, "wb") as out:
            (rows,) = self.write(statements[0], fmt, out)
        return rows

    def _frame(self, statement: str, max_rows: int | None, as_text: bool) -> QueryResult:
        def read(relation: duckdb.DuckDBPyRelation, stopping: threading.Event) -> QueryResult:
            limited = relation if max_rows is None else relation.limit(max_rows + 1)
            schema, batches = _batches(
                portable(limited, "display" if as_text else "arrow"), stopping
            )
            frame = pl.from_arrow(pa.Table.from_batches(list(batches), schema))
            assert isinstance(frame, pl.DataFrame)
            types = tuple(relation.types)
            if max_rows is None:
                return QueryResult(statement, frame, False, types)
            return QueryResult(statement, frame.head(max_rows), frame.height > max_rows, types)

        return self._supervised(statement, read)

    def _supervised(
        self,
        statement: str,
        work: Callable[[duckdb.DuckDBPyRelation, threading.Event], T],
    ) -> T:
        """``work(relation of statement, stopping)`` in a thread of its own, while this thread
        waits, free to see Ctrl-C and the timeout and to stop DuckDB with ``interrupt()``."""
        stopping, done = threading.Event(), threading.Event()
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                relation = self.connection.sql(statement)
                assert relation is not None, statement  # the read-only check passed a query
                outcome["value"] = work(relation, stopping)
            except BaseException as error:  # handed to the waiting thread
                outcome["error"] = error
            finally:
                done.set()

        threading.Thread(target=run, name="curate-sql", daemon=True).start()
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        reason = None
        while not done.is_set():
            try:
                if reason is None and deadline is not None and time.monotonic() >= deadline:
                    reason = "timeout"
                    self._stop(stopping)
                left = 0.25 if deadline is None or reason else deadline - time.monotonic()
                done.wait(min(0.25, max(left, 0.0)))
            except KeyboardInterrupt:
                reason = "interrupted"
                self._stop(stopping)
        if reason == "interrupted":
            raise QueryInterrupted("interrupted")
        if "value" in outcome:
            return outcome["value"]
        if reason == "timeout":
            raise QueryLimitError(
                f"query exceeded --timeout {self.timeout_s:g} s; raise --timeout "
                "(0: no limit) or narrow the query"
            )
        raise self._user_error(outcome["error"], statement)

    def _stop(self, stopping: threading.Event) -> None:
        stopping.set()
        self.connection.interrupt()

    def _user_error(self, error: BaseException, statement: str) -> BaseException:
        """A DuckDB error as the error curate shows; any other error unchanged (a bug)."""
        if isinstance(error, duckdb.OutOfMemoryException):
            return QueryLimitError(
                f"query exceeded the memory limit of {self.memory_limit}; raise --memory-limit "
                "or narrow the query (fewer rows or columns, a LIMIT)"
            )
        if isinstance(error, duckdb.PermissionException):
            message = f"refused: {_first_line(error)} (curate sql cannot touch files)"
            return ReadOnlyError(message)
        if isinstance(error, duckdb.InvalidInputException) and VALUE_ERROR in str(error):
            return UserInputError(_first_line(error).partition("Error: ")[2])
        if isinstance(error, duckdb.InvalidInputException) and "configuration" in str(error):
            return ReadOnlyError(f"refused: {_first_line(error)}")
        if isinstance(error, duckdb.Error):
            return UserInputError(f"{_first_line(error)}\n  in: {statement.strip()}")
        return error


_STREAM_ERRORS = {
    "Out of Memory": duckdb.OutOfMemoryException,
    "Permission": duckdb.PermissionException,
    "Invalid Input": duckdb.InvalidInputException,
    "INTERRUPT": duckdb.InterruptException,
}


def _batches(
    relation: duckdb.DuckDBPyRelation, stopping: threading.Event
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The schema and the record batches of ``relation``, streamed; they stop when
    ``stopping`` is set, and DuckDB's errors keep their class."""
    reader = relation.to_arrow_reader(BATCH_ROWS)

    def batches() -> Iterator[pa.RecordBatch]:
        while True:
            if stopping.is_set():
                raise duckdb.InterruptException("INTERRUPT Error: Interrupted!")
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except OSError as error:  # DuckDB's errors reach an Arrow stream as OSError
                kind = str(error).partition(" Error: ")[0]
                raise _STREAM_ERRORS.get(kind, duckdb.Error)(str(error)) from None
            yield batch

    return reader.schema, batches()


class _TextSink:
    """Bytes to a text stream that has no binary buffer (stdout replaced by a StringIO)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, data: bytes) -> int:
        self.stream.write(data.decode("utf-8"))  # the writers hand over whole rows
        return len(data)


def _binary(out: IO[Any]) -> BinaryIO:
    if isinstance(out, io.TextIOBase):
        out.flush()
        return getattr(out, "buffer", None) or _TextSink(out)  # type: ignore[return-value]
    return out  # type: ignore[return-value]


def default_memory_limit() -> str:
    """Half this machine's memory, or of its container's limit where that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        total = min(total, int(Path("/sys/fs/cgroup/memory.max").read_text().strip()))
    except (OSError, ValueError):  # no cgroup v2 limit ("max" or no file)
        pass
    return f"{total // 2 // 2**20}MiB"


def _union_by_name(relations: list[duckdb.DuckDBPyRelation]) -> duckdb.DuckDBPyRelation:
    """UNION ALL BY NAME: columns a part lacks are NULL of the type another part has."""
    types: dict[str, str] = {}
    for relation in relations:
        for column, column_type in zip(relation.columns, relation.types, strict=True):
            if types.get(column, '"NULL"') == '"NULL"':  # an all-null column says nothing
                types[column] = str(column_type)
    union = None
    for relation in relations:
        present = set(relation.columns)
        projected = relation.project(
            ", ".join(
                quote_identifier(c) if c in present else f"NULL::{t} AS {quote_identifier(c)}"
                for c, t in types.items()
            )
        )
        union = projected if union is None else union.union(projected)
    assert union is not None
    return union


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0]


def read_only_statements(sql: str) -> list[str]:
    """Split ``sql`` into statements, refusing any that is not a read (DuckDB's parser
    decides each statement's type, so comments and odd spacing cannot disguise one)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as error:
        raise UserInputError(f"cannot parse the query: {_first_line(error)}") from None
    if not statements:
        raise UserInputError("no SQL statement given")
    for statement in statements:
        _check_read_only(statement)
    return [statement.query.strip().rstrip(";") for statement in statements]


def _check_read_only(statement: duckdb.Statement) -> None:
    text = statement.query.strip()
    if statement.type == duckdb.StatementType.EXPLAIN:
        explained = _EXPLAIN.match(text)
        inner = duckdb.extract_statements(explained.group(1)) if explained else []
        if len(inner) == 1 and inner[0].type in ALLOWED_STATEMENTS:
            return
    elif statement.type in ALLOWED_STATEMENTS:
        return
    kind = statement.type.name
    hint = ""
    if statement.type == duckdb.StatementType.MULTI and "pivot" in text.lower():
        hint = " (a PIVOT needs an explicit list here: PIVOT samples ON noise IN ('clean', ...))"
    raise ReadOnlyError(
        f"refused {kind} statement: curate sql is read-only and runs only queries "
        f"(SELECT, WITH, FROM, VALUES, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN): {_short(text)}{hint}"
    )


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- writing results ------------------------------------------------------------------------
OUTPUT_FORMATS = ("csv", "json", "parquet")


def output_format(path: Path | None, requested: str | None) -> str | None:
    """The file format to write: the requested one, else the output file's suffix."""
    if requested is not None:
        if requested not in OUTPUT_FORMATS:
            raise UserInputError(
                f"--format {requested!r}: choose one of {', '.join(OUTPUT_FORMATS)} "
                "(or leave it out for a table)"
            )
        return requested
    if path is None:
        return None
    suffix = path.suffix.lstrip(".").lower()
    if suffix not in OUTPUT_FORMATS:
        raise UserInputError(
            f"--output {path}: cannot tell the format from the suffix {path.suffix!r}; "
            f"pass --format ({', '.join(OUTPUT_FORMATS)})"
        )
    return suffix
