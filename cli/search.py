"""`curate search-recipe`: sweep one stage parameter of a recipe at a fixed budget
(library: curate/recipe_search.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curate.cli.app import app


@app.command("search-recipe")
def search_recipe_command(
    recipe: Annotated[
        str, typer.Argument(help="A recipe YAML file, or the name of a shipped recipe.")
    ],
    pool: Annotated[Path, typer.Option(help="The pool to build every candidate from.")],
    out: Annotated[
        Path, typer.Option(help="Folder for the candidate pools (one per value) and search.json.")
    ],
    stage: Annotated[
        str, typer.Option(help="The stage to vary: its name in the recipe, or its index (0, 1...).")
    ],
    param: Annotated[str, typer.Option(help="The stage parameter to vary, e.g. fraction or eps.")],
    baselines: Annotated[
        list[Path],
        typer.Option(
            "--baselines",
            help="Folder(s) with baseline runs, e.g. the demo's OUT/baseline or a `curate "
            "baseline --out` folder (repeat the option for several): ER is measured against them.",
        ),
    ],
    values: Annotated[
        str | None,
        typer.Option(help="Comma-separated values, parsed with the parameter's type: 0.3,0.5,0.7"),
    ] = None,
    value: Annotated[
        list[str] | None,
        typer.Option(
            "--value", help="One value taken whole (repeat), for values with commas (SQL)."
        ),
    ] = None,
    scale: Annotated[
        str, typer.Option(help="Training scale from training/scales.yaml (the fixed budget).")
    ] = "tiny",
    seeds: Annotated[
        str,
        typer.Option(
            help="Training seeds, comma-separated, e.g. 0,1,2. Whether the best ER beats the "
            "runner-up needs 2+ seeds; with one the answer says 'untested (1 seed)'."
        ),
    ] = "0",
    tasks: Annotated[
        list[str] | None,
        typer.Option("--tasks", help="Task ids or task sets (repeat); default: the 'default' set."),
    ] = None,
    tasks_file: Annotated[
        Path | None, typer.Option(help="Your own tasks YAML (extends eval/tasks.yaml).")
    ] = None,
    scales_file: Annotated[
        Path | None, typer.Option(help="Your own scales YAML instead of training/scales.yaml.")
    ] = None,
    bootstrap: Annotated[
        int, typer.Option(help="Bootstrap resamples of the test images for ER intervals (0: none).")
    ] = 1000,
) -> None:
    """Which value of one recipe parameter gives the most robust models?

    For each value, builds the recipe with that stage parameter replaced into OUT/<recipe>-
    <param>-<value>, trains and evaluates a CLIP on it at the scale's fixed budget for each
    seed, and ranks the values by effective robustness against the baseline line. Prints the
    sweep and its answer: the value with the best ER (and, with 2+ seeds, whether it beats the
    runner-up beyond the noise), and the value with the best mean accuracy, which may differ. Every
    value is checked before any work; rerunning resumes (built pools and trained models are
    reused).

    Example: curate search-recipe demo_clip_top50 --pool runs/demo/pool --out runs/sweep
    --stage clip_score --param fraction --values 0.3,0.5,0.7 --scale demo
    --baselines runs/demo/baseline
    """
    from rich.console import Console

    from curate.build_pool.recipe import load_recipe
    from curate.cli.search_view import sweep_table
    from curate.core.errors import UserInputError
    from curate.recipe_search import answer, parse_values, search_recipe

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    texts = [part.strip() for part in (values or "").split(",") if part.strip()] + (value or [])
    if not texts:
        raise UserInputError("give the values to sweep: --values 0.3,0.5 or --value ... (repeat)")
    loaded = load_recipe(recipe)
    result = search_recipe(
        loaded,
        pool,
        out,
        stage=stage,
        param=param,
        values=parse_values(loaded, stage, param, texts),
        scale_name=scale,
        seeds=_seeds(seeds),
        baselines=baselines,
        tasks=tasks,
        tasks_file=tasks_file,
        scales_file=scales_file,
        n_boot=bootstrap,
        on_step=lambda name: console.print(f"[bold cyan]>[/] {name}"),
    )
    console.print(sweep_table(result))
    console.print(answer(result))


def _seeds(text: str) -> list[int]:
    from curate.core.errors import UserInputError

    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserInputError(f"--seeds: expected comma-separated integers, got {text!r}") from None
