"""How every DuckDB type reaches every output of ``curate sql``, DuckDB itself converting it.

Arrow, polars and parquet cannot hold some DuckDB types (INTERVAL, UNION, BIT, BIGNUM, VARIANT,
TIME WITH TIME ZONE, integers beyond 38 digits), and polars' own CSV and JSON writers panic on
others (BLOB, infinite dates). So before a row leaves DuckDB, the result is projected, in SQL,
to types the output carries:

    arrow    polars frames and parquet files: types Arrow holds keep their type, inside lists,
             structs and maps too; the others become DuckDB's text of them (VARIANT: its JSON)
    csv      one CSV line a row (RFC 4180 quoting; null is an empty field), every value as
             DuckDB prints it (a BLOB: printable bytes as themselves, the others as \\xNN);
             lists, structs, maps and variants as JSON text
    display  the terminal table: each value's text as in csv, floats to 6 significant digits
    json     one JSON object per row (DuckDB's to_json); NaN and infinities, which JSON lacks,
             become the strings "nan", "inf", "-inf"

The csv, json and parquet writers take Arrow record batches of those projections and stream
them to a binary file, so a result never has to fit in memory whole. (DuckDB's own COPY ... TO
cannot write them: curate sql's connection has no file access.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import BinaryIO

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from duckdb.sqltypes import DuckDBPyType

Leaf = Callable[[str, DuckDBPyType], str | None]

NUMERIC = {
    "tinyint", "smallint", "integer", "bigint", "hugeint",
    "utinyint", "usmallint", "uinteger", "ubigint", "uhugeint",
    "float", "double", "decimal",
}  # fmt: skip
_ARROW_AS_IS = NUMERIC - {"hugeint", "uhugeint"} | {
    "boolean", "varchar", "blob", "date", "time", "time_ns", "timestamp", "timestamp_s",
    "timestamp_ms", "timestamp_ns", "timestamp with time zone", "uuid", "enum", "null",
}  # fmt: skip
_NESTED = {"list", "array", "struct", "map"}
_AS_JSON = {"variant", "tuple"}  # a tuple: a struct with unnamed fields, (1, 'x')
VALUE_ERROR = "cannot write column "  # how the errors raised inside DuckDB below begin


def is_numeric(duckdb_type: DuckDBPyType) -> bool:
    """Whether a table shows the type's values right-aligned."""
    return duckdb_type.id in NUMERIC


def unique_names(names: Iterable[str]) -> list[str]:
    """Column names made unique the way DuckDB does it in a subquery: a, a_1, a_2."""
    taken: set[str] = set()
    unique = []
    for name in names:
        candidate, suffix = name, 0
        while candidate in taken:
            suffix += 1
            candidate = f"{name}_{suffix}"
        taken.add(candidate)
        unique.append(candidate)
    return unique


def portable(relation: duckdb.DuckDBPyRelation, target: str) -> duckdb.DuckDBPyRelation:
    """``relation`` projected to the types ``target`` (arrow, csv, display, json) carries."""
    names = unique_names(relation.columns)
    columns = []  # (name, its expression in the projection)
    changed = names != relation.columns
    for position, (name, column_type) in enumerate(zip(names, relation.types, strict=True), 1):
        column = f"#{position}"  # by position: names may repeat
        if target == "arrow":
            converted = _convert(column, column_type, _arrow_leaf(name))
        elif target == "json":
            converted = _convert(column, column_type, _json_leaf)
        else:
            converted = _text(column, column_type, floats_to_6_digits=target == "display")
        changed = changed or converted is not None
        columns.append((quote_identifier(name), converted or column))
    if target == "json":
        fields = ", ".join(f"{name} := {expr}" for name, expr in columns)
        return relation.project(f"CAST(to_json(struct_pack({fields})) AS VARCHAR) AS json")
    if not changed and target != "csv":
        return relation
    texts = relation.project(", ".join(f"{expr} AS {name}" for name, expr in columns))
    if target != "csv":
        return texts
    # one VARCHAR a row, its CSV line; the column's name is the header line
    header = ",".join(_csv_field(name) for name in names)
    line = " || ',' || ".join(_csv_field_sql(f"#{i}") for i in range(1, len(names) + 1))
    return texts.project(f"{line} AS {quote_identifier(header)}")


def _csv_field(text: str) -> str:
    """RFC 4180: quoted where it holds a quote, comma or line break, or is empty (not null)."""
    if text == "" or any(char in text for char in '",\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _csv_field_sql(expr: str) -> str:
    """:func:`_csv_field` in SQL; null becomes an empty field."""
    quoted = f"""'"' || replace({expr}, '"', '""') || '"'"""
    needs_quotes = f"""{expr} = '' OR regexp_matches({expr}, '[",\\r\\n]')"""
    return f"CASE WHEN {expr} IS NULL THEN '' WHEN {needs_quotes} THEN {quoted} ELSE {expr} END"


def _convert(expr: str, column_type: DuckDBPyType, leaf: Leaf, depth: int = 0) -> str | None:
    """``expr`` with ``leaf`` applied to every value inside lists, arrays, structs and maps, or
    None where nothing changes (the usual case: no projection at all)."""
    kind = column_type.id
    children = column_type.children if kind in _NESTED else []
    if kind in ("list", "array"):
        item = f"item{depth}"
        inner = _convert(item, children[0][1], leaf, depth + 1)
        return None if inner is None else f"list_transform({expr}, lambda {item}: {inner})"
    if kind == "map":
        entry = f"entry{depth}"
        key = _convert(f"{entry}.key", children[0][1], leaf, depth + 1)
        value = _convert(f"{entry}.value", children[1][1], leaf, depth + 1)
        if key is None and value is None:
            return None
        pair = f"{{'key': {key or f'{entry}.key'}, 'value': {value or f'{entry}.value'}}}"
        return f"map_from_entries(list_transform(map_entries({expr}), lambda {entry}: {pair}))"
    if kind == "struct":
        fields = [f"struct_extract({expr}, {sql_string(name)})" for name, _ in children]
        converted = [
            _convert(field, child, leaf, depth + 1)
            for field, (_, child) in zip(fields, children, strict=True)
        ]
        if all(value is None for value in converted):
            return None
        packed = ", ".join(
            f"{quote_identifier(name)} := {value or field}"
            for (name, _), field, value in zip(children, fields, converted, strict=True)
        )
        return f"CASE WHEN {expr} IS NULL THEN NULL ELSE struct_pack({packed}) END"
    if kind == "tuple" and leaf is _json_leaf:  # an unnamed struct, row(...), becomes JSON
        children = column_type.children  # (its fields by position) wherever it is written
        fields = [f"struct_extract({expr}, {position})" for position in range(1, len(children) + 1)]
        converted = [
            _convert(field, child, leaf, depth + 1)
            for field, (_, child) in zip(fields, children, strict=True)
        ]
        if all(value is None for value in converted):
            return None
        packed = ", ".join(value or field for field, value in zip(fields, converted, strict=True))
        return f"CASE WHEN {expr} IS NULL THEN NULL ELSE row({packed}) END"
    return leaf(expr, column_type)


def _arrow_leaf(column: str) -> Leaf:
    def leaf(expr: str, value_type: DuckDBPyType) -> str | None:
        kind = value_type.id
        if kind in _ARROW_AS_IS:
            return None
        if kind in ("hugeint", "uhugeint"):  # Arrow's decimal128 holds 38 digits
            message = sql_string(
                f"{VALUE_ERROR}{column}: a {value_type} value has more than 38 digits, more than "
                f"Arrow, polars and parquet hold; cast it in the query ({column}::DOUBLE or "
                f"{column}::VARCHAR) or write csv or json"
            )
            checked = f"coalesce(TRY_CAST({expr} AS DECIMAL(38,0)), error({message}))"
            return f"CASE WHEN {expr} IS NULL THEN NULL ELSE {checked} END"
        if kind in _AS_JSON:
            return f"CAST(to_json({_convert(expr, value_type, _json_leaf) or expr}) AS VARCHAR)"
        return f"CAST({expr} AS VARCHAR)"

    return leaf


def _json_leaf(expr: str, value_type: DuckDBPyType) -> str | None:
    if value_type.id not in ("float", "double"):
        return None
    text = f"to_json(CAST({expr} AS VARCHAR))"
    return f"CASE WHEN isfinite({expr}) THEN to_json({expr}) ELSE {text} END"


def _text(expr: str, column_type: DuckDBPyType, floats_to_6_digits: bool) -> str:
    kind = column_type.id
    if kind in _NESTED or kind in _AS_JSON:
        return f"CAST(to_json({_convert(expr, column_type, _json_leaf) or expr}) AS VARCHAR)"
    if floats_to_6_digits and kind in ("float", "double"):
        return f"format('{{:.6g}}', {expr})"
    return f"CAST({expr} AS VARCHAR)"


def quote_identifier(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# -- writers: Arrow record batches of a projection above, to a binary file ---------------------
def write_csv(schema: pa.Schema, batches: Iterable[pa.RecordBatch], out: BinaryIO) -> int:
    """The ``csv`` projection as a CSV file: its column's name, then its values, as lines."""
    out.write(schema.names[0].encode("utf-8") + b"\n")
    rows = 0
    for batch in batches:
        if batch.num_rows:
            out.write("\n".join(batch.column(0).to_pylist()).encode("utf-8") + b"\n")
            rows += batch.num_rows
    return rows


def write_json(schema: pa.Schema, batches: Iterable[pa.RecordBatch], out: BinaryIO) -> int:
    """The ``json`` projection as one JSON array of row objects, one row a line."""
    separator, rows = b"[\n", 0
    for batch in batches:
        if batch.num_rows:
            lines = batch.column(0).to_pylist()
            out.write(separator + ",\n".join(lines).encode("utf-8"))
            separator, rows = b",\n", rows + batch.num_rows
    out.write(b"]\n" if rows == 0 else b"\n]\n")
    return rows


def write_parquet(schema: pa.Schema, batches: Iterable[pa.RecordBatch], out: BinaryIO) -> int:
    """The ``arrow`` projection as a zstd parquet file."""
    rows = 0
    with pq.ParquetWriter(out, schema, compression="zstd") as writer:
        for batch in batches:
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


Writer = Callable[[pa.Schema, Iterable[pa.RecordBatch], BinaryIO], int]
WRITERS: dict[str, tuple[str, Writer]] = {  # format -> (projection, writer)
    "csv": ("csv", write_csv),
    "json": ("json", write_json),
    "parquet": ("arrow", write_parquet),
}
