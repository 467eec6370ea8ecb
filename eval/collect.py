"""Read scoring results: ``<pool_or_subset>/results/<run_id>/results.jsonl`` and ``run.json``.

Each results file holds one record per task of one run (format: :mod:`curate.eval.records`). This
module turns a file into a :class:`RunResult` (the run's identity and one :class:`TaskResult`
per task) and checks the fields the leaderboard, plots and submissions rely on, naming the
file, line and field when one is missing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curate.core.errors import InputNotFoundError, UserInputError
from curate.eval.records import RESULTS_FILE, read_records, unpack_correct

RUN_FILE = "run.json"
RESULTS_GLOB = f"**/results/*/{RESULTS_FILE}"
KIND_ID = "id"
KIND_SHIFT = "shift"
KIND_POOL_ID = "pool_id"
UNKEYED = "unkeyed:"
ID_FAMILY = "id"  # baselines trained on ID data only: the points of the single-ID line


@dataclass(frozen=True)
class TaskResult:
    """One task of one run: accuracy (fraction) on ``n`` test images and, when recorded,
    the per-image correctness vector the bootstraps resample."""

    task: str
    task_type: str
    kind: str | None
    shift_of: str | None
    accuracy: float | None
    n: int | None
    correct: np.ndarray | None = field(default=None, repr=False, compare=False)
    metrics: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class RunResult:
    run_id: str
    pool: str
    recipe: str
    scale: str
    seed: int | None
    samples_seen: int | None
    baseline: bool
    comparability_key: str
    results_path: Path
    tasks: Mapping[str, TaskResult] = field(repr=False)
    config: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # which baseline line a baseline run belongs to: "id" (trained on ID data only: the
    # single-ID fit) or another family, e.g. "pool" (trained on the pool's clean
    # distribution: only the multi-ID plane uses it); None for a run that is not a baseline
    baseline_family: str | None = None

    @property
    def run_dir(self) -> Path:
        return self.results_path.parent

    def accuracy(self, task: str) -> float | None:
        result = self.tasks.get(task)
        return None if result is None else result.accuracy

    def shift_pairs(self) -> list[tuple[str, str]]:
        """(ID task, shift task) for every shift task whose ID task this run also has."""
        return [
            (result.shift_of, result.task)
            for result in self.tasks.values()
            if result.kind == KIND_SHIFT and result.shift_of in self.tasks
        ]

    def tasks_of_kind(self, kind: str) -> list[str]:
        return [result.task for result in self.tasks.values() if result.kind == kind]


def find_results_files(roots: Iterable[Path]) -> list[Path]:
    """Every ``results/<run_id>/results.jsonl`` under the roots (a root may itself be a run dir)."""
    found: set[Path] = set()
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise InputNotFoundError(
                f"{root} does not exist; pass a pool, subset or results folder"
            )
        if root.is_file() and root.name == RESULTS_FILE:
            found.add(root.resolve())
            continue
        if (root / RESULTS_FILE).is_file():
            found.add((root / RESULTS_FILE).resolve())
        found.update(path.resolve() for path in root.glob(RESULTS_GLOB))
    return sorted(found)


def _required(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in mapping or mapping[key] is None:
        raise UserInputError(f"{where}: field {key!r} is missing; rerun the scoring that wrote it")
    return mapping[key]


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _task_result(record: dict[str, Any], where: str) -> TaskResult:
    metrics = record.get("metrics") or {}
    info = record.get("task_info") or {}
    accuracy = metrics.get("acc1")
    n = metrics.get("n")
    correct = None
    bits = record.get("correct_bits")
    if bits and n:
        try:
            correct = unpack_correct(bits, int(n))
        except ValueError:
            raise UserInputError(f"{where}: correct_bits is not hex") from None
        if correct.size != int(n):
            raise UserInputError(
                f"{where}: correct_bits holds {correct.size} images, metrics.n is {n}"
            )
    return TaskResult(
        task=str(_required(record, "dataset", where)),
        task_type=str(record.get("task", "")),
        kind=info.get("kind"),
        shift_of=info.get("shift_of"),
        accuracy=None if accuracy is None else float(accuracy),
        n=None if n is None else int(n),
        correct=correct,
        metrics=metrics,
    )


def load_run(results_path: Path) -> RunResult:
    """One run from its results file (and ``run.json`` next to it, when present)."""
    results_path = Path(results_path)
    records = read_records(results_path)
    if not records:
        raise UserInputError(f"{results_path}: no result records; the run has not finished a task")
    first_run = _required(records[0], "run", f"{results_path} line 1")
    run_id = str(_required(first_run, "run_id", f"{results_path} line 1: run"))
    tasks: dict[str, TaskResult] = {}
    for line, record in enumerate(records, start=1):
        where = f"{results_path} line {line}"
        run = _required(record, "run", where)
        for key in ("run_id", "comparability_key"):
            if run.get(key) != first_run.get(key):
                raise UserInputError(
                    f"{where}: run.{key} is {run.get(key)!r} but line 1 says "
                    f"{first_run.get(key)!r}; one results file must hold one run"
                )
        task = _task_result(record, where)
        tasks[task.task] = task  # a rerun's later record of a task replaces the earlier one
    run_file = results_path.parent / RUN_FILE
    config: dict[str, Any] = dict(first_run.get("config") or {})
    if run_file.is_file():
        try:
            config = json.loads(run_file.read_text("utf-8"))
        except json.JSONDecodeError as error:
            raise UserInputError(f"{run_file}: not valid JSON ({error})") from None
    return RunResult(
        run_id=run_id,
        pool=str(first_run.get("pool") or ""),
        recipe=str(first_run.get("recipe") or ""),
        scale=str(first_run.get("scale") or ""),
        seed=_optional_int(first_run.get("seed")),
        samples_seen=_optional_int(first_run.get("samples_seen")),
        baseline=bool(first_run.get("baseline", False)),
        baseline_family=(
            str(first_run.get("baseline_family") or ID_FAMILY)
            if first_run.get("baseline")
            else None
        ),
        # a checkpoint evaluated outside `curate score` has no key: comparable with nothing
        comparability_key=str(first_run.get("comparability_key") or f"{UNKEYED}{run_id}"),
        results_path=results_path,
        tasks=tasks,
        config=config,
    )


def collect_runs(roots: Iterable[Path]) -> list[RunResult]:
    """Every run under the roots, ordered by results path, each run once.

    The same run can be reached twice (a copy inside a submission bundle, overlapping roots):
    runs with the same id, key, pool and seed count once, the copy with the most tasks kept.
    """
    runs: dict[tuple[Any, ...], RunResult] = {}
    for path in find_results_files(roots):
        run = load_run(path)
        identity = (run.run_id, run.comparability_key, run.pool, run.seed)
        if identity not in runs or len(run.tasks) > len(runs[identity].tasks):
            runs[identity] = run
    return sorted(runs.values(), key=lambda run: str(run.results_path))
