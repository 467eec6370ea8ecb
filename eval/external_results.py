"""Results of CLIP models evaluated outside curate, as one canonical long table.

Four formats are read, detected from each file's name and content:

- ``openclip_table``: open_clip's ``docs/openclip_results.csv`` (one row per model, one column
  per DataComp task, values = DataComp's main metric). A copy ships with curate
  (:func:`load_openclip_table`).
- ``clip_benchmark_json``: one file per model x dataset from ``clip_benchmark eval``
  (keys ``dataset, model, pretrained, task, metrics``, optional ``language``; a bare ``NaN`` for
  acc5 on datasets with under 5 classes).
- ``clip_benchmark_csv``: ``clip_benchmark build``'s long CSV (columns in any order: read by name).
- ``datacomp_jsonl``: DataComp's ``eval_results.jsonl`` / ``results.jsonl``, one line per task
  (``key, dataset, metrics``). The model is not named inside: it is the ``model`` argument
  ("ARCH/TAG") or, without one, the file's parent folder name (arch and pretrained then null).

``accuracy`` is the task's DataComp main metric, so every format agrees with the open_clip table:
top-1 accuracy (``acc1``) for the ImageNet family and 26 other tasks, mean per-class recall for
Caltech-101, FGVC Aircraft, Flowers and Pets, ``mean_recall@1`` = (image R@1 + text R@1) / 2 for
Flickr and MSCOCO (computed from CLIP_benchmark's ``*_retrieval_recall@1`` when it only gives
those; a retrieval file without recall@1 - CLIP_benchmark's default is ``--recall_k 5`` - is a
counted skip), and DataComp's own metric for WinoGAViL, iWildCam, FMoW, Dollar Street, GeoDE.
``ci_low``/``ci_high`` are a 95% Wilson score interval over ``n_test``, only where the metric is a
binomial proportion (main metric acc1) and ``n_test`` is known; null otherwise.

Bad input raises a one-line :class:`UserInputError` naming the file and line; what is
deliberately left out (an unscored or non-zero-shot task, an unknown task with
``skip_unknown_tasks``) is counted by reason in :attr:`ImportedResults.skipped`.
"""

from __future__ import annotations

import csv
import importlib.resources
import json
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from curate.core.atomic import staged_output, write_parquet
from curate.core.errors import InputNotFoundError, UserInputError
from curate.core.manifest import Manifest, produced_by
from curate.eval.external_tags import with_training_data
from curate.eval.external_tasks import (
    TASK_BY_KEY,
    UNSCORED_TASKS,
    canonical_task,
    close_task_names,
)

EXTERNAL_SCHEMA: dict[str, pl.DataType] = {
    "model": pl.String(),
    "arch": pl.String(),
    "pretrained": pl.String(),
    "training_data": pl.String(),
    "training_data_scale": pl.String(),
    "training_filter": pl.String(),
    "samples_seen": pl.Int64(),
    "task": pl.String(),
    "accuracy": pl.Float64(),
    "n_test": pl.Int64(),
    "ci_low": pl.Float64(),
    "ci_high": pl.Float64(),
    "source": pl.String(),
    "source_line": pl.Int64(),
    "format": pl.String(),
}
"""Columns of the imported long table, one row per model x task."""

EXTERNAL_RESULTS_KIND = "external_results"
"""Manifest kind of a folder written by :func:`write_external_results`."""
EXTERNAL_RESULTS_FILE = "external_results.parquet"
"""The long table inside such a folder (``curate sql`` shows it as the view external_results)."""
INTERVAL_METHOD = "wilson-95"

FORMATS = ("openclip_table", "clip_benchmark_json", "clip_benchmark_csv", "datacomp_jsonl")

OPENCLIP_TABLE_FILE = "openclip_results.csv"
_OPENCLIP_ID_COLUMNS = ("name", "pretrained")
_OPENCLIP_OTHER_COLUMNS = ("params (M)", "FLOPs (B)", "Average perf. on 38 datasets")
_CB_ID_KEYS = ("dataset", "model", "pretrained", "task", "language")
_CB_NON_METRIC_COLUMNS = (*_CB_ID_KEYS, "classnames", "templates", "model_fullname")
_CB_ZERO_SHOT = ("zeroshot_classification", "zeroshot_retrieval")

WILSON_Z = 1.959963984540054
"""Normal quantile for a two-sided 95% interval."""


@dataclass
class ImportedResults:
    """The imported long table and what was left out, by reason."""

    table: pl.DataFrame
    skipped: Counter[str] = field(default_factory=Counter)
    """Records left out, by reason (e.g. "unscored task: fairness/fairface")."""
    unknown_training_data: Counter[str] = field(default_factory=Counter)
    """Models kept with null training data, by pretrained tag ("" when no tag)."""


@dataclass(frozen=True)
class _Record:
    """One model x task result as read, before the table is assembled."""

    arch: str | None
    pretrained: str | None
    model: str
    task: str
    accuracy: float
    source: str
    source_line: int | None
    format: str


# --- entry points -----------------------------------------------------------------------------


def openclip_table_path() -> Path:
    """The open_clip results table shipped with curate (``curate.eval`` data/)."""
    resource = importlib.resources.files("curate.eval") / "data" / OPENCLIP_TABLE_FILE
    return Path(str(resource))


def load_openclip_table(path: Path | None = None) -> pl.DataFrame:
    """open_clip's results table (default: the shipped copy) as the canonical long table."""
    return import_results([path or openclip_table_path()]).table


def read_results(
    paths: Sequence[Path], *, model: str | None = None, skip_unknown_tasks: bool = False
) -> pl.DataFrame:
    """Read result files of any supported format into the canonical long table."""
    return import_results(paths, model=model, skip_unknown_tasks=skip_unknown_tasks).table


def import_results(
    paths: Sequence[Path], *, model: str | None = None, skip_unknown_tasks: bool = False
) -> ImportedResults:
    """Read result files into the long table, counting what was skipped.

    ``model`` ("ARCH/TAG") names the model of DataComp jsonl files, which do not name it
    themselves; without it the file's parent folder name is the model id.
    """
    if not paths:
        raise UserInputError("no result files given")
    if model is not None and "/" not in model:
        raise UserInputError(f"--model {model!r}: expected ARCH/TAG, e.g. ViT-B-32/openai")
    reader = _Reader(model=model, skip_unknown_tasks=skip_unknown_tasks)
    frames = [reader.read(Path(p)) for p in paths]
    records = pl.concat(frames, how="vertical") if frames else _empty_records()
    check_unique_model_tasks(records)
    table = _finish(records)
    unknown = table.filter(pl.col("training_data").is_null()).unique("model")
    reader.unknown_training_data.update(unknown["pretrained"].fill_null("").to_list())
    return ImportedResults(table, reader.skipped, reader.unknown_training_data)


def write_external_results(
    imported: ImportedResults, out: Path, *, sources: Sequence[Path], overwrite: bool = False
) -> Manifest:
    """Publish ``out`` atomically: external_results.parquet, then manifest.json (written last)."""
    out = Path(out).resolve()
    table = imported.table
    with staged_output(out, overwrite=overwrite) as staging:
        write_parquet(staging / EXTERNAL_RESULTS_FILE, table)
        manifest = Manifest(
            name=out.name,
            kind=EXTERNAL_RESULTS_KIND,
            source={"files": [str(Path(p).resolve()) for p in sources]},
            sample_count=table.height,
            has_images=False,
            produced_by=produced_by("import-results", files=[str(p) for p in sources]),
            extra={
                "models": table["model"].n_unique(),
                "tasks": table["task"].n_unique(),
                "formats": dict(Counter(table["format"].to_list())),
                "skipped": dict(imported.skipped),
                "unknown_training_data": dict(imported.unknown_training_data),
                "interval": INTERVAL_METHOD,
            },
        )
        manifest.write(staging)
    return manifest


def detect_format(path: Path) -> str:
    """Which of :data:`FORMATS` a file is, from its name and first line."""
    first = _first_line(path)
    if path.suffix == ".jsonl" or (path.suffix != ".csv" and first.lstrip().startswith("{")):
        if path.suffix == ".jsonl":
            return "datacomp_jsonl"
        try:
            head = json.loads(first)
        except json.JSONDecodeError:
            head = None
        if isinstance(head, dict) and "key" in head and "model" not in head:
            return "datacomp_jsonl"
        return "clip_benchmark_json"
    if path.suffix == ".csv" or "," in first:
        header = next(csv.reader([first]))
        if all(c in header for c in _OPENCLIP_ID_COLUMNS) and "dataset" not in header:
            return "openclip_table"
        if all(c in header for c in ("dataset", "model", "pretrained")):
            return "clip_benchmark_csv"
        raise UserInputError(
            f"{path}:1: a CSV that is neither open_clip's results table (columns name, "
            "pretrained, one per task) nor a clip_benchmark build CSV (columns dataset, model, "
            "pretrained, task, metrics)"
        )
    raise UserInputError(
        f"{path}: not a results file curate reads (open_clip results CSV, CLIP_benchmark JSON "
        "or CSV, DataComp eval_results.jsonl)"
    )


def wilson_interval(accuracy: pl.Expr, n: pl.Expr, z: float = WILSON_Z) -> tuple[pl.Expr, pl.Expr]:
    """95% Wilson score interval of a binomial proportion ``accuracy`` over ``n`` trials."""
    centre = (accuracy + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * (accuracy * (1 - accuracy) / n + z**2 / (4 * n**2)).sqrt()
    return (centre - half).clip(0.0, 1.0), (centre + half).clip(0.0, 1.0)


# --- reading ----------------------------------------------------------------------------------


def _first_line(path: Path) -> str:
    if not path.exists():
        raise InputNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise UserInputError(f"{path}: a folder; name the result files inside it")
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.strip():
                return line
    raise UserInputError(f"{path}: empty file")


class _Reader:
    def __init__(self, model: str | None, skip_unknown_tasks: bool) -> None:
        self.model = model
        self.skip_unknown_tasks = skip_unknown_tasks
        self.skipped: Counter[str] = Counter()
        self.unknown_training_data: Counter[str] = Counter()

    def read(self, path: Path) -> pl.DataFrame:
        fmt = detect_format(path)
        if fmt == "openclip_table":
            return self._openclip_table(path)
        if fmt == "clip_benchmark_json":
            records = self._clip_benchmark_json(path)
        elif fmt == "clip_benchmark_csv":
            records = self._clip_benchmark_csv(path)
        else:
            records = self._datacomp_jsonl(path)
        return _records_frame(list(records))

    # A task name -> canonical id, or None after counting a skip.
    def _task(self, spelling: str, where: str) -> str | None:
        key = canonical_task(spelling)
        if key in UNSCORED_TASKS:
            self.skipped[f"unscored task (DataComp gives it no main metric): {key}"] += 1
            return None
        if key is not None:
            return key
        if self.skip_unknown_tasks:
            self.skipped[f"unknown task: {spelling}"] += 1
            return None
        close = close_task_names(spelling)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserInputError(
            f"{where}: unknown task {spelling!r}{hint} (pass --skip-unknown-tasks to skip it)"
        )

    def _openclip_table(self, path: Path) -> pl.DataFrame:
        try:
            wide = pl.read_csv(path, infer_schema=False)
        except pl.exceptions.PolarsError as error:
            raise UserInputError(f"{path}: unreadable CSV ({error})") from None
        if wide.height == 0:
            raise UserInputError(f"{path}: no rows below the header")
        task_columns: dict[str, str] = {}
        for column in wide.columns:
            if column in _OPENCLIP_ID_COLUMNS or column in _OPENCLIP_OTHER_COLUMNS:
                continue
            key = self._task(column, f"{path}:1: column {column!r}")
            if key is None:
                self.skipped[f"unknown task: {column}"] += wide.height - 1  # one already counted
                continue
            task_columns[column] = key
        if not task_columns:
            raise UserInputError(f"{path}:1: no task columns")
        long = (
            wide.with_row_index("source_line", offset=2)
            .select(
                pl.col("name").alias("arch"),
                "pretrained",
                pl.col("source_line").cast(pl.Int64),
                *task_columns,
            )
            .unpivot(index=["arch", "pretrained", "source_line"], variable_name="column")
            .with_columns(
                accuracy=pl.col("value").str.strip_chars().cast(pl.Float64, strict=False),
                task=pl.col("column").replace_strict(task_columns),
                model=pl.col("arch") + "/" + pl.col("pretrained"),
                source=pl.lit(str(path)),
                format=pl.lit("openclip_table"),
            )
        )
        for column in ("arch", "pretrained"):
            bad = long.filter(pl.col(column).is_null() | (pl.col(column).str.strip_chars() == ""))
            if bad.height:
                line = bad["source_line"][0]
                raise UserInputError(f"{path}:{line}: empty {_openclip_name(column)!r} cell")
        unparsed = long.filter(pl.col("accuracy").is_null())
        if unparsed.height:
            row = unparsed.row(0, named=True)
            raise UserInputError(
                f"{path}:{row['source_line']}: column {row['column']!r}: "
                f"{row['value']!r} is not a number"
            )
        _check_accuracy_range(long, path)
        return long.select(list(_RECORD_SCHEMA)).cast(_RECORD_SCHEMA)

    def _clip_benchmark_json(self, path: Path) -> Iterator[_Record]:
        text = path.read_text("utf-8")
        try:
            dump = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserInputError(f"{path}:{error.lineno}: malformed JSON ({error.msg})") from None
        record = self._clip_benchmark_record(dump, path, 1, "clip_benchmark_json")
        if record is not None:
            yield record

    def _clip_benchmark_csv(self, path: Path) -> Iterator[_Record]:
        with open(path, encoding="utf-8", newline="") as handle:
            rows = csv.DictReader(handle)
            header = rows.fieldnames or []
            metric_columns = [c for c in header if c not in _CB_NON_METRIC_COLUMNS]
            any_row = False
            for row in rows:
                any_row, line = True, rows.line_num
                if None in row:
                    raise UserInputError(f"{path}:{line}: more cells than header columns")
                dump: dict[str, Any] = {k: row[k] for k in _CB_ID_KEYS if k in row}
                metrics = {}
                for column in metric_columns:
                    cell = (row.get(column) or "").strip()
                    if cell:
                        metrics[column] = _parse_number(cell, f"{path}:{line}: {column}")
                dump["metrics"] = metrics
                record = self._clip_benchmark_record(dump, path, line, "clip_benchmark_csv")
                if record is not None:
                    yield record
            if not any_row:
                raise UserInputError(f"{path}: no rows below the header")

    def _clip_benchmark_record(self, dump: Any, path: Path, line: int, fmt: str) -> _Record | None:
        where = f"{path}:{line}"
        if not isinstance(dump, dict):
            raise UserInputError(f"{where}: expected a JSON object as clip_benchmark writes it")
        for key in ("dataset", "model", "pretrained", "task", "metrics"):
            if key not in dump:
                raise UserInputError(f"{where}: missing required key {key!r}")
        if not isinstance(dump["metrics"], dict):
            raise UserInputError(f"{where}: 'metrics' is not an object")
        if dump["task"] not in _CB_ZERO_SHOT:
            self.skipped[f"not zero-shot (task={dump['task']})"] += 1
            return None
        task = self._task(str(dump["dataset"]), f"{where}: dataset")
        if task is None:
            return None
        metrics = dict(dump["metrics"])
        main = TASK_BY_KEY[task].main_metric
        if main == "mean_recall@1" and main not in metrics:
            parts = ("image_retrieval_recall@1", "text_retrieval_recall@1")
            if all(p in metrics for p in parts):
                metrics[main] = (metrics[parts[0]] + metrics[parts[1]]) / 2
        accuracy = self._main_metric(metrics, task, where)
        if accuracy is None:
            return None
        arch, pretrained = str(dump["model"]), str(dump["pretrained"] or "") or None
        model = f"{arch}/{pretrained}" if pretrained else arch  # hf-hub models: no tag
        return _Record(arch, pretrained, model, task, accuracy, str(path), line, fmt)

    def _datacomp_jsonl(self, path: Path) -> Iterator[_Record]:
        if self.model is not None:
            arch, pretrained = self.model.split("/", 1)
            model = self.model
        else:
            arch, pretrained, model = None, None, path.resolve().parent.name
        with open(path, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{line_number}"
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as error:
                    raise UserInputError(f"{where}: malformed JSON line ({error.msg})") from None
                if not isinstance(entry, dict):
                    raise UserInputError(f"{where}: expected a JSON object per line")
                for key in ("key", "metrics"):
                    if key not in entry:
                        raise UserInputError(f"{where}: missing required key {key!r}")
                if not isinstance(entry["metrics"], dict):
                    raise UserInputError(f"{where}: 'metrics' is not an object")
                task = self._task(str(entry["key"]), f"{where}: key")
                if task is None:
                    continue
                metrics = dict(entry["metrics"])
                main = TASK_BY_KEY[task].main_metric
                if metrics.get(main) is None and metrics.get("main_metric") is not None:
                    metrics[main] = metrics["main_metric"]
                accuracy = self._main_metric(metrics, task, where)
                if accuracy is not None:
                    yield _Record(
                        arch,
                        pretrained,
                        model,
                        task,
                        accuracy,
                        str(path),
                        line_number,
                        "datacomp_jsonl",
                    )

    def _main_metric(self, metrics: dict[str, Any], task: str, where: str) -> float | None:
        """The task's main metric from a metrics dict: checked, or None after a counted skip."""
        main = TASK_BY_KEY[task].main_metric
        value = metrics.get(main)
        if value is None:
            if main == "acc1":
                raise UserInputError(f"{where}: metrics has no 'acc1' for {task}")
            self.skipped[f"no {main} in metrics: {task}"] += 1
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserInputError(f"{where}: {main} {value!r} is not a number")
        value = float(value)
        if math.isnan(value) or not 0.0 <= value <= 1.0:
            raise UserInputError(
                f"{where}: {main} = {value} for {task} is not a fraction in [0, 1]"
                + (" (a percentage? curate wants fractions)" if 1 < value <= 100 else "")
            )
        return value


# --- assembling -------------------------------------------------------------------------------


def _openclip_name(column: str) -> str:
    return "name" if column == "arch" else column


def _parse_number(cell: str, where: str) -> float:
    try:
        return float(cell)
    except ValueError:
        raise UserInputError(f"{where}: {cell!r} is not a number") from None


def _check_accuracy_range(long: pl.DataFrame, path: Path) -> None:
    bad = long.filter(pl.col("accuracy").is_nan() | ~pl.col("accuracy").is_between(0.0, 1.0))
    if bad.height:
        row = bad.row(0, named=True)
        value = row["accuracy"]
        raise UserInputError(
            f"{path}:{row['source_line']}: column {row['column']!r} = {value} is not a "
            "fraction in [0, 1]"
            + (" (a percentage? curate wants fractions)" if 1 < value <= 100 else "")
        )


_RECORD_SCHEMA = {
    "arch": pl.String,
    "pretrained": pl.String,
    "model": pl.String,
    "task": pl.String,
    "accuracy": pl.Float64,
    "source": pl.String,
    "source_line": pl.Int64,
    "format": pl.String,
}


def _empty_records() -> pl.DataFrame:
    return pl.DataFrame(schema=_RECORD_SCHEMA)


def _records_frame(records: list[_Record]) -> pl.DataFrame:
    return pl.DataFrame(
        {name: [getattr(r, name) for r in records] for name in _RECORD_SCHEMA},
        schema=_RECORD_SCHEMA,
    )


def check_unique_model_tasks(records: pl.DataFrame) -> None:
    """Refuse a model x task given twice, naming both places (``source:source_line``)."""
    duplicated = records.filter(pl.struct("model", "task").is_duplicated())
    if duplicated.height == 0:
        return
    first = duplicated.row(0, named=True)
    pair = duplicated.filter(
        (pl.col("model") == first["model"]) & (pl.col("task") == first["task"])
    ).head(2)
    places = [f"{r['source']}:{r['source_line']}" for r in pair.iter_rows(named=True)]
    raise UserInputError(
        f"model {first['model']!r} task {first['task']!r} appears twice: "
        f"{places[0]} and {places[1]}; import each result once"
    )


def _finish(records: pl.DataFrame) -> pl.DataFrame:
    """Records -> the canonical table: training data, n_test, intervals, schema order."""
    tasks = pl.DataFrame(
        {
            "task": list(TASK_BY_KEY),
            "n_test": [t.n_test for t in TASK_BY_KEY.values()],
            "binomial": [t.main_metric == "acc1" for t in TASK_BY_KEY.values()],
        },
        schema={"task": pl.String, "n_test": pl.Int64, "binomial": pl.Boolean},
    )
    table = with_training_data(records.join(tasks, on="task", how="left"))
    low, high = wilson_interval(pl.col("accuracy"), pl.col("n_test").cast(pl.Float64))
    has_interval = pl.col("binomial") & pl.col("n_test").is_not_null()
    table = table.with_columns(
        ci_low=pl.when(has_interval).then(low),
        ci_high=pl.when(has_interval).then(high),
    )
    task_order = {key: i for i, key in enumerate(TASK_BY_KEY)}
    return (
        table.sort("model", pl.col("task").replace_strict(task_order, return_dtype=pl.Int64))
        .select(list(EXTERNAL_SCHEMA))
        .cast(EXTERNAL_SCHEMA)
    )
