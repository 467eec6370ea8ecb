"""`curate score`, `evaluate`, `baseline` and `train-filter`: training CLIP models at a fixed
budget and evaluating them (library: curate/training/, eval/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curate.cli.app import app

TASKS_HELP = (
    "Task ids or task set names from eval/tasks.yaml (repeat the option); default: the "
    "'default' set (cifar10-test, cinic10-imagenet, pool-holdout, mnist-test, usps-test, ...)."
)
TASKS_FILE_HELP = "Your own tasks YAML (same shape as eval/tasks.yaml); extends the built-in tasks."
SCALES_FILE_HELP = (
    "Your own scales YAML (same shape as curate/training/scales.yaml) instead of the shipped one."
)


def _print_task(outcome) -> None:
    typer.echo(f"  {outcome.summary()}")


@app.command("score")
def score_command(
    target: Annotated[Path, typer.Argument(help="A pool or candidate pool (build-pool output).")],
    scale: Annotated[
        str,
        typer.Option(
            help="Training scale from training/scales.yaml: tiny, tiny-test, small, medium."
        ),
    ] = "tiny",
    seed: Annotated[
        int, typer.Option(help="Seed of the initialisation, data order and augmentation.")
    ] = 0,
    tasks: Annotated[list[str] | None, typer.Option("--tasks", help=TASKS_HELP)] = None,
    tasks_file: Annotated[Path | None, typer.Option(help=TASKS_FILE_HELP)] = None,
    scales_file: Annotated[Path | None, typer.Option(help=SCALES_FILE_HELP)] = None,
    baseline_family: Annotated[
        str | None,
        typer.Option(
            help="Record this run as a baseline point of this family instead of a candidate "
            "result: 'id' (a standard model on ID-only data: the single-ID baseline line) or "
            "e.g. 'pool' (a model on the pool's clean distribution: used only by the "
            "multi-ID plane, whose ID axes must vary independently)."
        ),
    ] = None,
) -> None:
    """Train a CLIP from scratch on TARGET's kept samples at a fixed budget, then evaluate it.

    The budget (samples seen, batch, schedule) is fixed by the scale whatever the pool's size:
    a small pool is repeated, a large one is seen in part, so candidate pools are compared by
    their data alone. Writes TARGET/results/<run_id>/ (run.json, checkpoint/, results.jsonl).
    Rerunning the same command resumes a killed training and evaluates only missing tasks.

    Multi-GPU (small / medium scales): launch this same command under torchrun, one process
    per GPU; the scale's batch is the global batch, split over the processes (nccl on GPUs,
    gloo on CPU); rank 0 writes run.json and the checkpoint and evaluates:
    torchrun --standalone --nproc_per_node 8 -m curate.cli.main score POOL --scale small
    (torchrun = python -m torch.distributed.run; several nodes: --nnodes N --node_rank R
    --rdzv_backend c10d --rdzv_endpoint HOST:PORT instead of --standalone)

    Example: curate score demo/candidates/clip-score --scale tiny --seed 0
    """
    from curate.runs.score import score

    typer.echo(f"scoring {target} at scale {scale}, seed {seed}")
    result = score(
        target,
        scale_name=scale,
        seed=seed,
        tasks=tasks,
        tasks_file=tasks_file,
        scales_file=scales_file,
        baseline_family=baseline_family,
        on_task=_print_task,
    )
    train = result.run.get("train") or {}
    if result.trained:
        typer.echo(
            f"trained {train.get('steps')} steps ({train.get('samples_seen'):,} samples) in "
            f"{train.get('seconds')}s, {train.get('samples_per_second')} samples/s"
        )
    typer.echo(f"results: {result.run_dir}")


@app.command("evaluate")
def evaluate_command(
    checkpoint: Annotated[
        Path | None,
        typer.Argument(
            help="A curate checkpoint directory (e.g. POOL/results/<run_id>/checkpoint or a "
            "train-filter output) or a weights file (.pt/.safetensors, with --model)."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="open_clip architecture (not needed for a curate checkpoint)."),
    ] = None,
    pretrained: Annotated[
        str | None,
        typer.Option(help="An open_clip pretrained tag or weights file, instead of CHECKPOINT."),
    ] = None,
    tasks: Annotated[list[str] | None, typer.Option("--tasks", help=TASKS_HELP)] = None,
    tasks_file: Annotated[Path | None, typer.Option(help=TASKS_FILE_HELP)] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="results.jsonl to append to (default: the run's, or CHECKPOINT/results.jsonl)."
        ),
    ] = None,
    pool: Annotated[
        Path | None, typer.Option(help="The pool whose holdout.parquet is the pool-holdout task.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 256,
    workers: Annotated[int, typer.Option(min=0, help="Image decoding processes.")] = 0,
) -> None:
    """Zero-shot evaluation of any CLIP checkpoint on registry tasks.

    Appends one JSON record per task (eval/records.py) and skips tasks already in the file.

    Example: curate evaluate demo/pool/results/tiny-61440-seed0-1a2b3c4d/checkpoint --tasks cifar10
    """
    from curate.runs.evaluate import evaluate_checkpoint

    path, _ = evaluate_checkpoint(
        checkpoint,
        model=model,
        pretrained=pretrained,
        tasks=tasks,
        tasks_file=tasks_file,
        out=out,
        pool=pool,
        batch_size=batch_size,
        workers=workers,
        show_progress=True,
        on_task=_print_task,
    )
    typer.echo(f"results: {path}")


def _int_list(text: str, option: str) -> list[int]:
    from curate.core.errors import UserInputError

    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserInputError(f"{option}: expected comma-separated integers, got {text!r}") from None


MODEL_HELP = (
    "A kind of standard model on the line: ARCH:BUDGETS[:augment|:no-augment], e.g. "
    "curate-tiny-rn:15000,30000 or curate-tiny-vit-p8:15000:no-augment (ARCH '-' keeps the "
    "scale's); repeat the option. Varied architectures and recipes make the line the "
    "testbed's kind of baseline: models that differ in everything but their data."
)


def _baseline_model(text: str):
    """``ARCH:BUDGETS[:augment|:no-augment]`` -> a BaselineModel (one-line error otherwise)."""
    from curate.core.errors import UserInputError
    from curate.runs.baseline import BaselineModel

    parts = text.split(":")
    flags = {"augment": True, "no-augment": False}
    if len(parts) not in (2, 3) or not parts[0] or (len(parts) == 3 and parts[2] not in flags):
        raise UserInputError(
            f"--model {text!r}: expected ARCH:BUDGETS[:augment|:no-augment], "
            "e.g. curate-tiny-rn:15000,30000"
        )
    budgets = tuple(_int_list(parts[1], f"--model {text!r}"))
    if not budgets:
        raise UserInputError(f"--model {text!r}: no budgets")
    return BaselineModel(
        budgets,
        arch=None if parts[0] == "-" else parts[0],
        augment=flags[parts[2]] if len(parts) == 3 else None,
    )


@app.command("baseline")
def baseline_command(
    task_set: Annotated[
        str,
        typer.Option(
            help="Task set of eval/tasks.yaml with baseline_train data (cifar10, digits)."
        ),
    ] = "cifar10",
    budgets: Annotated[
        str | None,
        typer.Option(
            help="Samples seen per model of the scale's own kind, comma-separated; default "
            "15000,30000,60000 when no --model is given."
        ),
    ] = None,
    model: Annotated[list[str] | None, typer.Option("--model", help=MODEL_HELP)] = None,
    seeds: Annotated[str, typer.Option(help="Seeds, comma-separated.")] = "0,1",
    out: Annotated[
        Path, typer.Option(help="The clean ID pool (built here once); its results/ holds the runs.")
    ] = Path("baselines/cifar10"),
    scale: Annotated[str, typer.Option(help="Scale whose recipe the baselines use.")] = "tiny",
    cache: Annotated[
        Path | None,
        typer.Option(
            help="Train the runs here once and link them into OUT: runs with the same task "
            "set, scale settings and seed are reused by every OUT that names this cache."
        ),
    ] = None,
    tasks_file: Annotated[Path | None, typer.Option(help=TASKS_FILE_HELP)] = None,
    scales_file: Annotated[Path | None, typer.Option(help=SCALES_FILE_HELP)] = None,
) -> None:
    """Train the tiny-scale baseline line: standard models on ID-only data at several budgets.

    Builds a clean pool from the task set's labelled ID data (e.g. the demo's CIFAR-10 train,
    captioned by class-name templates), trains one model per kind, budget and seed with the
    same loop as `curate score`, and evaluates it on the set's tasks; runs are marked
    baseline = true. Effective robustness is measured against the line through them.

    Example: curate baseline --task-set cifar10 --budgets 15000,30000 --model
    curate-tiny-rn:15000 --model curate-tiny-vit-p8:30000:no-augment --seeds 0,1
    """
    from curate.runs.baseline import run_baselines

    models = [_baseline_model(text) for text in model or ()]
    if budgets is None:
        budgets = "" if models else "15000,30000,60000"

    def report(result) -> None:
        train = result.run.get("train") or {}
        typer.echo(
            f"baseline {result.run['run_id']}: {result.run['samples_seen']:,} samples seen, "
            f"{train.get('seconds')}s -> {result.run_dir}"
        )

    run_baselines(
        out,
        task_set=task_set,
        budgets=_int_list(budgets, "--budgets"),
        seeds=_int_list(seeds, "--seeds"),
        scale_name=scale,
        scales_file=scales_file,
        tasks_file=tasks_file,
        models=models,
        cache=cache,
        on_run=report,
        on_task=_print_task,
    )


@app.command("train-filter")
def train_filter_command(
    trusted: Annotated[
        str,
        typer.Argument(
            help="Trusted data: a labelled parquet (HF image layout with class_name; "
            "demo:cifar10_train for the shipped one) or a pool / candidate pool directory."
        ),
    ],
    out: Annotated[Path, typer.Option(help="The checkpoint directory to write.")],
    scale: Annotated[str, typer.Option(help="Training scale (training/scales.yaml).")] = "tiny",
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    caption_template: Annotated[
        list[str] | None,
        typer.Option(
            help="For a parquet: caption template(s) with {} for the class name (repeat)."
        ),
    ] = None,
    where: Annotated[
        str | None, typer.Option(help="For a parquet: SQL row filter, e.g. \"split = 'pool'\".")
    ] = None,
    scales_file: Annotated[Path | None, typer.Option(help=SCALES_FILE_HELP)] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUT.")] = False,
) -> None:
    """Train a small CLIP on trusted data to use as a data-filtering network (DFN-style).

    Writes a curate checkpoint directory; embed a pool with it and filter on its CLIP score:
    curate embed POOL --checkpoint OUT, then a clip_score stage in a recipe.

    Example: curate train-filter demo:cifar10_train --out models/filter --scale tiny
    """
    from curate.training.train_filter import train_filter

    info = train_filter(
        trusted,
        out,
        scale_name=scale,
        seed=seed,
        caption_templates=caption_template,
        row_filter=where,
        scales_file=scales_file,
        overwrite=overwrite,
    )
    train = info.get("train") or {}
    typer.echo(
        f"filter network trained on {info['trained_on']['sample_count']:,} samples "
        f"({train.get('steps')} steps, {train.get('seconds')}s) -> {out}"
    )
