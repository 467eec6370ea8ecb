"""Result records: one JSON object per (run, task), in CLIP_benchmark's shape plus curate's
run identity, appended to ``results.jsonl`` so that a rerun skips finished tasks.

    {"dataset": "cifar10-test", "model": "curate-tiny-vit-p4", "pretrained": "<checkpoint>",
     "task": "zeroshot_classification",
     "metrics": {"acc1": 0.41, "mean_per_class_recall": 0.40, "n": 3000},
     "correct_bits": "<hex of np.packbits(per-image correctness)>",   # for bootstraps
     "task_info": {"kind": "id" | "shift" | "pool_id", "shift_of": "cifar10-test" | null},
     "run": {"run_id", "pool", "recipe", "scale", "seed", "samples_seen", "baseline",
             "comparability_key", "config", "code_version"}}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_FILE = "results.jsonl"
# the fields of run.json that every result record repeats
RECORD_RUN_FIELDS = (
    "run_id",
    "pool",
    "pool_id",
    "recipe",
    "scale",
    "seed",
    "samples_seen",
    "baseline",
    "baseline_family",
    "comparability_key",
    "config",
    "code_version",
)


def run_block(run: dict[str, Any]) -> dict[str, Any]:
    """The run identity every result record repeats: :data:`RECORD_RUN_FIELDS` of ``run``
    (a run.json, or the few fields known of a model curate did not train), None where absent."""
    return {key: run.get(key) for key in RECORD_RUN_FIELDS}


def pack_correct(correct: np.ndarray) -> str:
    return np.packbits(np.asarray(correct, dtype=bool)).tobytes().hex()


def unpack_correct(bits: str, count: int) -> np.ndarray:
    unpacked = np.unpackbits(np.frombuffer(bytes.fromhex(bits), dtype=np.uint8))
    return unpacked[:count].astype(bool)


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one record as a line and fsync: a kill leaves at most a torn last line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True, default=str) + "\n"
    _drop_torn_last_line(path)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def _drop_torn_last_line(path: Path) -> None:
    """Cut an incomplete last line (a kill mid-write), so the next record starts a line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
        handle.seek(0)
        data = handle.read()
        handle.truncate(data.rfind(b"\n") + 1)


def read_records(path: Path) -> list[dict[str, Any]]:
    """All complete records of a results file (a torn last line from a kill is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text("utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ValueError(f"{path} line {number}: not a JSON record") from None
    return records


def finished_tasks(path: Path) -> set[str]:
    return {record["dataset"] for record in read_records(path)}
