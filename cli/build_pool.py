"""`curate build-pool`, `curate recipes`, `curate validate-recipe`: recipes into candidate pools."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from curate.cli import scale_options
from curate.cli.app import app

if TYPE_CHECKING:
    from curate.build_pool.build import BuildResult

RECIPE_HELP = "A recipe YAML file, or the name of a shipped recipe (see `curate recipes`)."


@app.command("build-pool")
def build_pool_command(
    recipe: Annotated[str, typer.Argument(help=RECIPE_HELP)],
    pool: Annotated[Path, typer.Option(help="The pool to filter (made by ingest or demo-pool).")],
    out: Annotated[Path, typer.Option(help="Where to write the candidate pool.")],
    reshard: Annotated[
        bool, typer.Option(help="Also copy the kept samples into OUT's own webdataset shards.")
    ] = False,
    samples_per_shard: Annotated[
        int, typer.Option(min=1, help="Samples per tar when resharding.")
    ] = 10_000,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    executor: scale_options.Executor = "local",
    workers: scale_options.Workers = None,
    ray_address: scale_options.RayAddress = None,
    device: Annotated[
        str,
        typer.Option(
            help="Where the embedding stages run FAISS (k-means, IVF, flat search): cpu, or "
            "cuda (needs faiss-gpu; without it they run on the CPU, with a message)."
        ),
    ] = "cpu",
    shard_rows: Annotated[
        int,
        typer.Option(
            min=1,
            help="Rows of the samples table one task reads at most (memory per task; the "
            "output is the same bytes whatever it is).",
        ),
    ] = 1 << 20,
) -> None:
    """Run RECIPE's stages over POOL and write the candidate pool OUT.

    OUT gets the kept uids (uids.npy, DataComp's subset format; `curate sql` shows them as
    the `kept` view), every
    stage's removals, compactly (decisions.parquet; `curate sql` shows a row per sample and
    stage), per-stage counts (stages.parquet) and, on the demo pool, each stage's
    precision/recall against the injected noise (ground_truth.parquet). An interrupted run
    resumes after its last finished stage.
    Every step runs as tasks on --executor: the table stages per shard of the samples table
    (reading only the columns they use; a whole-pool rule such as clip_score's fraction as
    map -> reduce), the kept uids, the resharded tars (--reshard) and the embedding stages'
    tasks (near_dedup, semdedup, image_based, decontaminate); see docs/scaling.md.

    Example: curate build-pool demo_clip_top50 --pool demo/pool --out demo/clip50
    """
    from curate.build_pool.build import build_pool
    from curate.build_pool.recipe import load_recipe
    from curate.core.executor import make_executor

    console = Console()
    loaded = load_recipe(recipe)
    with (
        make_executor(executor, workers, ray_address) as runner,
        _StageProgress(console) as observer,
    ):
        result = build_pool(
            loaded,
            pool,
            out,
            overwrite=overwrite,
            reshard=reshard,
            samples_per_shard=samples_per_shard,
            observer=observer,
            executor=runner,
            device=device,
            shard_rows=shard_rows,
        )
    console.print(_summary_table(result, loaded.name))
    if result.ground_truth is not None:
        console.print(_noise_table(result.ground_truth))
    console.print(f"kept {result.kept:,} of {result.pool_count:,} samples -> {result.out}")


@app.command("recipes")
def recipes_command() -> None:
    """List the recipes that ship with curate, with what each one does.

    Example: curate recipes
    """
    import yaml

    from curate.build_pool.recipe import shipped_recipes

    table = Table("recipe", "stages", "description")
    for name, path in shipped_recipes().items():
        data = yaml.safe_load(path.read_text("utf-8")) or {}
        stages = " > ".join(str(s.get("stage")) for s in data.get("stages") or []) or "-"
        table.add_row(name, stages, str(data.get("description", "")))
    Console().print(table)


@app.command("validate-recipe")
def validate_recipe_command(
    recipe: Annotated[str, typer.Argument(help=RECIPE_HELP)],
    pool: Annotated[
        Path | None,
        typer.Option(
            help="Also check that the recipe's input files exist for this pool and that its "
            "samples table has every column the stages read."
        ),
    ] = None,
) -> None:
    """Check RECIPE (stage names, parameter names and types) without running it.

    Example: curate validate-recipe clip_score_top30 --pool pools/web
    """
    from curate.build_pool.recipe import bind_to_pool, check_columns, load_recipe

    loaded = load_recipe(recipe)
    if pool is not None:
        from curate.core.pool import Pool

        opened = Pool.open(pool)
        check_columns(loaded, bind_to_pool(loaded, opened.root.resolve()), opened.columns())
    stages = ", ".join(stage.name for stage in loaded.stages) or "no stages"
    print(f"ok: {loaded.name} ({stages}); hash {loaded.content_hash()[:12]}")


class _StageProgress:
    """Rich progress: one line per stage (running, then in -> out), a bar for resharding."""

    def __init__(self, console: Console) -> None:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            SpinnerColumn(finished_text="[green]✓[/]"),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task = None

    def __enter__(self) -> _StageProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def stage_started(self, stage, rows_in: int) -> None:
        description = f"{stage.index}: {stage.name}"
        self.task = self.progress.add_task(description, total=None, counts=f"{rows_in:,} in")

    def stage_finished(self, stats) -> None:
        counts = f"{stats.rows_in:,} -> {stats.rows_out:,}"
        if stats.resumed:
            counts += " (resumed)"
        self.progress.update(self.task, total=1, completed=1, counts=counts)

    def reshard_started(self, total: int) -> None:
        self.total, self.done = total, 0
        self.task = self.progress.add_task("resharding", total=total, counts=f"0/{total:,}")

    def reshard_advanced(self, count: int) -> None:
        self.done += count
        self.progress.update(self.task, completed=self.done, counts=f"{self.done:,}/{self.total:,}")


def _summary_table(result: BuildResult, recipe_name: str) -> Table:
    from curate.build_pool.ground_truth import noisy_summary

    quality = noisy_summary(result.ground_truth) if result.ground_truth is not None else None
    table = Table(title=f"{recipe_name}: {result.kept:,} of {result.pool_count:,} kept")
    for column in ("#", "stage", "in", "out", "removed", "seconds"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    if quality is not None:
        table.add_column("precision", justify="right")
        table.add_column("recall", justify="right")

    def cells(index: int) -> list[str]:
        if quality is None:
            return []
        precision, recall = quality.get(index, (None, None))
        return [_percent(precision), _percent(recall)]

    for s in result.stages:
        seconds = "resumed" if s.resumed else f"{s.seconds:.2f}"
        row = [str(s.index), s.stage, f"{s.rows_in:,}", f"{s.rows_out:,}", f"{s.removed:,}"]
        table.add_row(*row, seconds, *cells(s.index))
    removed = result.pool_count - result.kept
    total = ["", "all stages", f"{result.pool_count:,}", f"{result.kept:,}", f"{removed:,}", ""]
    table.add_row(*total, *cells(len(result.stages)), style="bold")
    return table


def _noise_table(report) -> Table:
    """Per injected noise type (rows) and stage (columns): removed / seen. The clean row is
    the collateral damage; the others are each stage's recall of that defect."""
    from curate.build_pool.ground_truth import NOISY

    stages = report.select("stage_index", "stage").unique(maintain_order=True).rows()
    table = Table(title="removed / seen, by injected noise type (ground truth)")
    table.add_column("noise")
    for index, stage in stages:
        table.add_column(stage if stage == "all stages" else f"{index}: {stage}", justify="right")
    cells = {
        (noise, index): f"{removed}/{seen}"
        for index, noise, removed, seen in report.select(
            "stage_index", "noise", "removed", "seen"
        ).rows()
    }
    for noise in dict.fromkeys(report["noise"].to_list()):
        style = "bold" if noise == NOISY else None
        row = [cells.get((noise, index), "-") for index, _ in stages]
        table.add_row(noise, *row, style=style)
    return table


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
