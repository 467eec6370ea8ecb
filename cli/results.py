"""Commands on scored results: leaderboard, plot, submit, verify, er-testbed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curate.cli.app import app

Roots = Annotated[
    list[Path],
    typer.Argument(
        help="Pools, candidate pools or results folders; every results/<run_id>/results.jsonl "
        "below them is read (baseline runs included: they make the baseline fit)."
    ),
]
GroupByKey = Annotated[
    bool,
    typer.Option(
        "--group-by-key",
        help="Results of different setups (comparability keys) are never ranked together; "
        "without this flag such a mix is refused, with it each setup gets its own table/plots.",
    ),
]


@app.command("leaderboard")
def leaderboard(
    roots: Roots,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for leaderboard.duckdb and parquet exports.")
    ] = Path("leaderboard"),
    rank_by: Annotated[
        str,
        typer.Option(
            help="er: mean effective robustness over shifts; id: ID accuracy; "
            "average: mean accuracy over all tasks."
        ),
    ] = "er",
    group_by_key: GroupByKey = False,
    bootstrap: Annotated[
        int, typer.Option(help="Bootstrap resamples of the test images for ER intervals (0: none).")
    ] = 1000,
    confidence: Annotated[float, typer.Option(help="Confidence level of the intervals.")] = 0.95,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
) -> None:
    """Rank candidate pools by effective robustness and write a DuckDB database.

    Runs of one pool/recipe/scale with different seeds are averaged; ER intervals combine the
    seed spread with a bootstrap over test images. Query the tables (results, runs,
    leaderboard, shift_er, baseline_fits) with `curate sql` or any DuckDB client.

    Example: curate leaderboard demo/candidates demo/baselines --out demo/leaderboard
    """
    from rich.console import Console

    from curate.cli.leaderboard_view import rich_tables
    from curate.leaderboard.build import build_leaderboard

    board, written = build_leaderboard(
        roots, out, rank_by=rank_by, group_by_key=group_by_key,
        n_boot=bootstrap, confidence=confidence, seed=seed,
    )  # fmt: skip
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # a file or pipe: do not squeeze the table to 80 columns
    if len(board.keys) > 1:
        console.print(
            f"[bold yellow]{len(board.keys)} different setups (comparability keys): each is "
            "ranked in its own table; do not compare rows across tables.[/]"
        )
    for table in rich_tables(board):
        console.print(table)
    for fit_pair, fit in sorted(board.fits.items()):
        if fit is None:
            console.print(
                f"no baseline fit for {fit_pair[0]} -> {fit_pair[1]}: run `curate baseline`"
            )
    console.print(f"wrote {written['database']} (and parquet exports in {out})")


@app.command("plot")
def plot(
    roots: Roots,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the PNG and SVG files.")
    ] = Path("plots"),
    group_by_key: GroupByKey = False,
) -> None:
    """Plot ID vs OOD accuracy (logit axes) per ID -> shift pair: baselines, fit, pools.

    Pools are their seed mean with error bars (seed std, or a 95% bootstrap interval for one
    seed); the baseline runs, their logit-linear fit and y = x are drawn too. PNG and SVG.

    Example: curate plot demo/candidates demo/baselines --out demo/plots
    """
    from curate.report.plots import plot_results

    for path in plot_results(roots, out, group_by_key=group_by_key):
        typer.echo(f"wrote {path}")


@app.command("submit")
def submit(
    subset: Annotated[Path, typer.Argument(help="The candidate pool (output of build-pool).")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Bundle folder, or a path ending .tar.gz.")
    ],
    results: Annotated[
        list[Path] | None,
        typer.Option(help="Results to include (run folders or roots); default: SUBSET/results."),
    ] = None,
    baselines: Annotated[
        list[Path] | None,
        typer.Option(
            help="Where the baseline runs are (the --out of `curate baseline`); default: SUBSET "
            "and its parent pool."
        ),
    ] = None,
    external: Annotated[
        Path | None,
        typer.Option(
            help="Instead of curate's runs: a CLIP trained on SUBSET elsewhere, as imported by "
            "`curate import-results` (its --out folder). Its ER is measured against the "
            "ImageNet testbed's line; not combinable with --results/--baselines."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="The imported model to bundle (ARCH/TAG as in the --external folder); "
            "optional when the folder holds one model."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing bundle.")] = False,
) -> None:
    """Bundle a candidate pool's uids, recipe, results and baseline fit with checksums.

    The bundle holds uids.npy (DataComp's format), recipe.yaml, every run's results.jsonl and
    run.json, the baseline runs, the baseline fit, the claimed ER, and checksums.sha256.
    Publish the printed digest with it; anyone can then run `curate verify`.

    With --external, the bundle holds one model trained elsewhere instead: its imported rows
    (external_results.parquet), its identity and the testbed table's sha256 (config.json) and
    its claimed ER per ImageNet shift and averaged, with intervals (effective_robustness.json).

    Example: curate submit demo/candidates/clip-score --baselines demo/baselines --out sub.tar.gz

    Example: curate submit cands/top30 --external ext --model ViT-B-32/top30 --out sub.tar.gz
    """
    from curate.submission import KIND_EXTERNAL, create_bundle

    summary = create_bundle(
        subset, out, results=results or [], baselines=baselines or [], external=external,
        model=model, overwrite=overwrite,
    )  # fmt: skip
    if summary.kind == KIND_EXTERNAL:
        typer.echo(
            f"wrote {summary.path}: {summary.files} files, imported model {summary.model} "
            f"(setup {summary.effective_robustness['comparability_key']})"
        )
        _echo_external_er(summary.effective_robustness)
    else:
        typer.echo(
            f"wrote {summary.path}: {summary.files} files, runs {', '.join(summary.runs)}, "
            f"{len(summary.baselines)} baseline runs"
        )
    typer.echo(f"bundle digest (sha256 of checksums.sha256): {summary.digest}")


def _echo_external_er(claims: dict) -> None:
    """One line per shift and the average: ER in points, its interval, the labels."""
    rows = [*claims["shifts"].items()]
    if claims.get("average") is not None:
        rows.append(("average", claims["average"]))
    for shift, row in rows:
        interval = (
            f" [{100 * row['er_low']:+.2f}, {100 * row['er_high']:+.2f}]"
            if row["er_low"] is not None and row["er_high"] is not None
            else ""
        )
        flag = " (extrapolated)" if row["extrapolated"] else ""
        typer.echo(f"  {shift}: ER {100 * row['effective_robustness']:+.2f} points{interval}{flag}")


@app.command("verify")
def verify(bundle: Annotated[Path, typer.Argument(help="A bundle folder or .tar.gz.")]) -> None:
    """Re-check a submission bundle: checksums, completeness, comparability, recomputed ER.

    A bundle of an imported model (`curate submit --external`) is checked against the testbed
    table this curate ships (its sha256 is in the bundle's config.json).

    Exits with status 2 and names the file at fault when anything does not check out.

    Example: curate verify sub.tar.gz
    """
    from curate.submission import KIND_EXTERNAL, verify_bundle

    summary = verify_bundle(bundle)
    if summary.kind == KIND_EXTERNAL:
        typer.echo(
            f"OK: {bundle} ({summary.files} files, imported model {summary.model}, setup "
            f"{summary.effective_robustness['comparability_key']})"
        )
        _echo_external_er(summary.effective_robustness)
        typer.echo(f"bundle digest: {summary.digest}")
        return
    typer.echo(f"OK: {bundle} ({summary.files} files, runs {', '.join(summary.runs)})")
    for pair, claim in summary.effective_robustness.items():
        mean = claim.get("mean_effective_robustness")
        if mean is not None:
            typer.echo(f"  {pair}: mean ER {100 * mean:+.2f} points")
    typer.echo(f"bundle digest: {summary.digest}")


@app.command("er-testbed")
def er_testbed(
    shift: Annotated[
        str | None,
        typer.Option(help="One testbed shift (e.g. imagenet-r); default: all five."),
    ] = None,
    plot_dir: Annotated[
        Path | None,
        typer.Option("--plot", help="Also draw each fit (PNG + SVG) into this folder."),
    ] = None,
) -> None:
    """Print the ImageNet testbed's baseline fits (Taori et al. 2020), its own fit sets.

    A sanity check of the ER machinery against the published plots: slope and intercept of
    logit(shift accuracy) on logit(ImageNet accuracy), R² and the number of models, for the
    testbed's fit set (STANDARD models, its plotting scripts' cutoffs and exclusions;
    ImageNet-A as its two pieces).

    Example: curate er-testbed --shift imagenet-a
    """
    from curate.eval.testbed import TESTBED_SHIFTS, testbed_fit, testbed_shift

    shifts = [testbed_shift(shift).shift] if shift else list(TESTBED_SHIFTS)
    typer.echo("imagenet-testbed baseline fits: logit(shift) = slope * logit(ID) + intercept")
    typer.echo(
        f"{'shift':<42} {'ID column':<27} {'ID piece':<13} {'slope':>12} {'intercept':>13} "
        f"{'R2':>6} {'n':>3}"
    )
    for name in shifts:
        fit = testbed_fit(name)
        for where, piece in zip(fit.piece_labels, fit.pieces, strict=True):
            typer.echo(
                f"{name:<42} {fit.x_column:<27} {where:<13} {piece.slope:>12.9f} "
                f"{piece.intercept:>13.9f} {piece.r_squared:>6.4f} {piece.n_points:>3}"
            )
    for name in shifts:
        if TESTBED_SHIFTS[name].note:
            typer.echo(f"note, {name}: {TESTBED_SHIFTS[name].note}")
    if plot_dir is not None:
        from curate.report.plots import testbed_plot, write_plots

        for path in write_plots([testbed_plot(name) for name in shifts], plot_dir):
            typer.echo(f"wrote {path}")
