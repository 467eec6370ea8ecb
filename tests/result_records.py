"""Result records built by hand for the ER, leaderboard and submission tests.

They follow eval/records.py's format exactly (as `curate score` / `curate baseline` write it):
``<root>/results/<run_id>/results.jsonl`` with one record per task, plus ``run.json``.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from curate.core.atomic import write_json
from curate.eval.collect import RunResult, TaskResult
from curate.eval.effective_robustness import inverse_logit, logit
from curate.eval.records import append_record, pack_correct

ID_TASK = "cifar10-test"
SHIFT_TASK = "cinic10-imagenet"
POOL_ID_TASK = "pool-holdout"
TASK_INFO = {
    ID_TASK: {"kind": "id", "shift_of": None},
    SHIFT_TASK: {"kind": "shift", "shift_of": ID_TASK},
    POOL_ID_TASK: {"kind": "pool_id", "shift_of": None},
}
SIZES = {ID_TASK: 3000, SHIFT_TASK: 760, POOL_ID_TASK: 500}


def correctness(accuracy: float, n: int, seed: int) -> np.ndarray:
    """A per-image correctness vector with exactly round(accuracy * n) correct images."""
    correct = np.zeros(n, dtype=bool)
    correct[: int(round(accuracy * n))] = True
    return np.random.default_rng(seed).permutation(correct)


def write_run(
    root: Path,
    run_id: str,
    accuracies: dict[str, float],
    *,
    pool: str = "pool-a",
    recipe: str = "clip-score",
    scale: str = "tiny",
    seed: int = 0,
    samples_seen: int = 20_000,
    baseline: bool = False,
    family: str | None = None,
    key: str = "key-1",
    with_bits: bool = True,
    sizes: dict[str, int] | None = None,
) -> Path:
    """Write one run's results.jsonl (one record per task) and run.json; return the run dir."""
    sizes = {**SIZES, **(sizes or {})}
    run_dir = Path(root) / "results" / run_id
    run = {
        "run_id": run_id,
        "pool": pool,
        "recipe": recipe,
        "scale": scale,
        "seed": seed,
        "samples_seen": samples_seen,
        "baseline": baseline,
        "comparability_key": key,
        **({"baseline_family": family} if family else {}),
        "config": {"arch": "curate-tiny-vit-p4", "samples_seen": samples_seen, "batch_size": 256},
        "code_version": {"curate": "0.1.0"},
    }
    write_json(run_dir / "run.json", run)
    for number, (task, accuracy) in enumerate(accuracies.items()):
        n = sizes[task]
        correct = correctness(accuracy, n, seed=zlib.crc32(f"{run_id}/{task}".encode()) + number)
        record = {
            "dataset": task,
            "model": "curate-tiny-vit-p4",
            "pretrained": str(run_dir / "checkpoint"),
            "task": "zeroshot_classification",
            "metrics": {"acc1": float(correct.mean()), "mean_per_class_recall": 0.0, "n": n},
            "task_info": TASK_INFO[task],
            "run": run,
        }
        if with_bits:
            record["correct_bits"] = pack_correct(correct)
        append_record(run_dir / "results.jsonl", record)
    return run_dir


def on_line(id_accuracy: float, slope: float, intercept: float, offset: float = 0.0) -> float:
    """OOD accuracy on the logit line (plus ``offset`` accuracy points)."""
    return float(inverse_logit(slope * logit(id_accuracy) + intercept)) + offset


def write_baselines(
    root: Path,
    slope: float = 0.8,
    intercept: float = -0.6,
    id_accuracies: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7),
    with_bits: bool = True,
    key: str = "baseline-key",
) -> list[Path]:
    """Baseline runs whose ID/OOD accuracies lie on a known logit line (pool-holdout too)."""
    return [
        write_run(
            root,
            f"baseline-{index}",
            {
                ID_TASK: id_accuracy,
                SHIFT_TASK: on_line(id_accuracy, slope, intercept),
                POOL_ID_TASK: on_line(id_accuracy, 0.5, -0.8 + 0.1 * (index % 2)),
            },
            pool="cifar10-train",
            recipe="",
            seed=index,
            samples_seen=5_000 * (index + 1),
            baseline=True,
            key=f"{key}-{index}",
            with_bits=with_bits,
        )
        for index, id_accuracy in enumerate(id_accuracies)
    ]


def run_result(
    run_id: str,
    correct: dict[str, np.ndarray],
    *,
    baseline: bool = False,
    family: str = "id",
    seed: int = 0,
    with_bits: bool = True,
    pool: str = "pool-a",
) -> RunResult:
    """A run held in memory (as curate.eval.collect.load_run returns it) from correctness bits."""
    tasks = {
        task: TaskResult(
            task=task,
            task_type="zeroshot_classification",
            kind=TASK_INFO[task]["kind"],
            shift_of=TASK_INFO[task]["shift_of"],
            accuracy=float(vector.mean()),
            n=vector.size,
            correct=vector if with_bits else None,
        )
        for task, vector in correct.items()
    }
    return RunResult(
        run_id=run_id,
        pool="cifar10-train" if baseline else pool,
        recipe="" if baseline else "recipe",
        scale="tiny",
        seed=seed,
        samples_seen=20_000,
        baseline=baseline,
        comparability_key="key-1",
        results_path=Path(f"/nonexistent/{run_id}/results.jsonl"),
        tasks=tasks,
        baseline_family=family if baseline else None,
    )
