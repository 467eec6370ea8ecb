"""`curate search-recipe` on a small generated pool: a text_based stage's min_term_chars swept
over two values at the tiny-test scale, ranked against real baseline runs, then resumed."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

import curate.cli.main  # noqa: F401  (registers the commands)
from curate.build_pool.recipe import RecipeError, load_recipe, parse_recipe
from curate.cli.app import app
from curate.core.errors import UserInputError
from curate.core.kept_uids import kept_uids
from curate.core.layout import SubsetLayout
from curate.core.pool_writer import PoolWriter, SourceSample
from curate.eval.er_uncertainty import Interval
from curate.eval.records import read_records
from curate.recipe_search import (
    answer,
    parse_values,
    recipe_variant,
    search_recipe,
    variant_name,
)
from curate.runs.baseline import run_baselines
from tests.colours import COLOURS, coloured_image, labelled_parquet, write_colours_tasks

POOL_ROWS = 90
# a weak tint, so that a few training steps stay below 100 % (the baseline line needs spread)
TINT = {"noise": 216, "strength": 40}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    with PoolWriter(root / "pool", name="pool", source={"type": "test"}, command="test") as writer:
        for i in range(POOL_ROWS):
            writer.add(
                SourceSample(
                    source="test",
                    where=f"row {i}",
                    text=f"a photo of a {COLOURS[i % 3]} thing",
                    image=coloured_image(i % 3, i, **TINT),
                )
            )
    labelled_parquet(root / "test.parquet", 30, seed=7, **TINT)
    labelled_parquet(root / "train.parquet", 60, seed=8, **TINT)
    tasks_file = write_colours_tasks(root / "tasks.yaml", "test.parquet", "train.parquet")
    run_baselines(
        root / "baseline",
        task_set="colours",
        budgets=[128, 640],
        seeds=[0],
        scale_name="tiny-test",
        tasks_file=tasks_file,
        show_progress=False,
    )
    (root / "vocab.txt").write_text("red\ngreen\nblue\npurple\n")  # no caption says purple
    recipe_path = root / "colour_words.yaml"
    recipe_path.write_text(
        "name: colour_words\n"
        "description: captions that name a colour\n"
        "seed: 0\n"
        "stages:\n"
        "  - stage: text_based\n"
        f"    params: {{vocab: {root / 'vocab.txt'}, min_term_chars: 3}}  # a comment\n"
    )
    return {
        "root": root,
        "pool": root / "pool",
        "tasks_file": tasks_file,
        "baseline": root / "baseline",
        "recipe": load_recipe(recipe_path),
    }


def _search(setup, out, values, **options):
    settings = {
        "stage": "text_based",
        "param": "min_term_chars",
        "scale_name": "tiny-test",
        "seeds": [0],
        "baselines": [setup["baseline"]],
        "tasks": ["colours"],
        "tasks_file": setup["tasks_file"],
        "n_boot": 200,
        "show_progress": False,
    }
    return search_recipe(
        setup["recipe"], setup["pool"], out, values=values, **{**settings, **options}
    )


@pytest.fixture(scope="module")
def sweep(setup, tmp_path_factory):
    """The two-value sweep, one seed per value: (its folder, the steps it announced, result)."""
    out = tmp_path_factory.mktemp("sweep") / "sweep"
    steps: list[str] = []
    result = _search(setup, out, [3, 4], on_step=steps.append)
    return out, steps, result


def test_sweep_builds_scores_ranks_and_resumes(setup, sweep):
    out, steps, result = sweep

    assert steps[:2] == ["build min_term_chars=3", "build min_term_chars=4"]
    # hand-checked: every caption names a colour; "red" has 3 letters, so 4 drops a third
    captions = pl.read_parquet(setup["pool"] / "samples.parquet")["text"].to_list()
    for minimum, expected in ((3, POOL_ROWS), (4, 2 * POOL_ROWS // 3)):
        by_hand = sum(
            any(len(word) >= minimum for word in re.findall(r"\w+", text) if word in COLOURS)
            for text in captions
        )
        assert by_hand == expected
    rows = {row.value: row for row in result.rows}
    assert {value: row.kept for value, row in rows.items()} == {3: POOL_ROWS, 4: 60}
    for value, row in rows.items():
        assert row.candidate == out / f"colour_words-min_term_chars-{value}"
        assert len(kept_uids(SubsetLayout(row.candidate))) == row.kept
        written = load_recipe(row.candidate / "recipe.yaml")  # the variant's own YAML
        assert written.name == row.candidate.name
        assert written.stages[0].params.min_term_chars == value
        assert written.stages[0].params.vocab == str(setup["root"] / "vocab.txt")
        assert row.trained

    # ranked by ER, best first; the picks agree with the rows and with the raw records
    assert [row.rank for row in result.rows] == [1, 2]
    ers = [row.average_er for row in result.rows]
    assert None not in ers and ers[0] >= ers[1]
    assert result.best_er is result.rows[0] and result.runner_up is result.rows[1]
    mean_accuracy = {}
    for value, row in rows.items():
        (run_dir,) = row.run_dirs
        records = read_records(run_dir / "results.jsonl")
        assert {r["dataset"] for r in records} == {"colours", "colours-shift"}
        mean_accuracy[value] = np.mean([r["metrics"]["acc1"] for r in records])
        assert row.mean_accuracy == pytest.approx(mean_accuracy[value])
    best_accuracy = max(mean_accuracy, key=mean_accuracy.get)
    assert result.best_accuracy.mean_accuracy == pytest.approx(mean_accuracy[best_accuracy])
    (difference,) = result.differences  # one shift: colours -> colours-shift
    assert difference.difference == pytest.approx(ers[0] - ers[1])
    low, high = difference.interval.low, difference.interval.high
    assert low <= difference.difference <= high
    assert difference.significant == (low > 0 or high < 0)  # the interval's, whatever it covers
    summary = json.loads((out / "search.json").read_text())
    assert [r["value"] for r in summary["rows"]] == [row.value for row in result.rows]
    assert summary["best_er"] == result.best_er.value
    assert summary["answer"].startswith(f"best ER: {result.best_er.label} (")

    # a rerun reuses the candidate pools and the trained models
    checkpoints = {
        value: (row.run_dirs[0] / "checkpoint" / "model.safetensors").stat().st_mtime_ns
        for value, row in rows.items()
    }
    manifests = {v: (r.candidate / "manifest.json").stat().st_mtime_ns for v, r in rows.items()}
    again = _search(setup, out, [3, 4])
    assert not any(row.trained for row in again.rows)
    assert [row.average_er for row in again.rows] == ers
    for value, row in rows.items():
        assert (row.run_dirs[0] / "checkpoint" / "model.safetensors").stat().st_mtime_ns == (
            checkpoints[value]
        )
        assert (row.candidate / "manifest.json").stat().st_mtime_ns == manifests[value]

    # the command line: values parsed as the parameter's type, stage given by index
    cli_result = CliRunner().invoke(
        app,
        [
            "search-recipe", str(setup["recipe"].path), "--pool", str(setup["pool"]),
            "--out", str(out), "--stage", "0", "--param", "min_term_chars", "--values", "3,4",
            "--scale", "tiny-test", "--tasks", "colours", "--tasks-file",
            str(setup["tasks_file"]), "--baselines", str(setup["baseline"]), "--bootstrap", "200",
        ],
    )  # fmt: skip
    assert cli_result.exit_code == 0, cli_result.output
    assert "colours-shift ER" in cli_result.output
    assert f"best ER: {result.best_er.label}" in cli_result.output
    assert f"best mean accuracy: {result.best_accuracy.label}" in cli_result.output
    printed = " ".join(cli_result.output.split())  # rich wraps long lines
    assert "95% interval, covering test images only]" in printed
    assert "untested (1 seed)" in printed and "significant" not in printed
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "colour_words-min_term_chars-3",
        "colour_words-min_term_chars-4",
        "search.json",
    ]


def test_a_verdict_needs_two_seeds_per_point(sweep):
    """One seed per value: "untested (1 seed)", never "significant", in the result, its answer
    and search.json, however narrow the interval; two seeds with a clear gap: "significant"."""
    out, _, result = sweep
    (difference,) = result.differences
    assert (difference.n_seeds_a, difference.n_seeds_b) == (1, 1)
    assert (result.verdict, result.significant) == ("untested (1 seed)", None)
    assert result.covers.startswith("test images")
    assert "untested (1 seed)" in answer(result) and "significant" not in answer(result)
    summary = json.loads((out / "search.json").read_text())
    assert (summary["verdict"], summary["significant"]) == ("untested (1 seed)", None)
    assert summary["covers"] == result.covers
    assert "untested (1 seed)" in summary["answer"] and "significant" not in summary["answer"]

    def with_differences(*changes: dict) -> object:
        made = tuple(dataclasses.replace(difference, **change) for change in changes)
        return dataclasses.replace(result, differences=made)

    one_seed = {"difference": 0.10, "interval": Interval(0.09, 0.11, "bootstrap-percentile", 0.95)}
    narrow = with_differences(one_seed)  # the old code called this significant
    assert (narrow.verdict, narrow.significant) == ("untested (1 seed)", None)
    assert "significant" not in answer(narrow)
    line = answer(narrow)
    assert "(interval covers test images only), untested (1 seed): train 2+ seeds" in line

    seeded = {"n_seeds_a": 2, "n_seeds_b": 3, "difference": 0.10}
    clear = {**seeded, "interval": Interval(0.05, 0.15, "t-seeds+bootstrap", 0.95)}
    wide = {**seeded, "interval": Interval(-0.02, 0.22, "t-seeds+bootstrap", 0.95)}
    below = {**seeded, "difference": -0.10, "interval": Interval(-0.15, -0.05, "t-seeds", 0.95)}
    two_seeds = with_differences(clear)
    assert (two_seeds.verdict, two_seeds.significant) == ("significant", True)
    assert two_seeds.covers == "test images + seeds"
    best, _ = answer(two_seeds).split("; best mean accuracy")
    assert best.endswith("+10.0 [+5.0, +15.0] (interval covers test images + seeds), significant)")
    assert "untested" not in best
    for changes in ((wide,), (clear, below)):  # every shift must beat the runner-up
        not_beaten = with_differences(*changes)
        assert (not_beaten.verdict, not_beaten.significant) == ("not significant", False)
    mixed = with_differences(clear, {**clear, "n_seeds_b": 1})  # one shift's runner-up: 1 seed
    assert (mixed.verdict, mixed.significant) == ("untested (1 seed)", None)
    assert "significant" not in answer(mixed)


def test_bad_values_fail_before_any_output(setup, tmp_path):
    out = tmp_path / "sweep"
    with pytest.raises(RecipeError) as error:
        _search(setup, out, [3, 0, "many"])
    message = str(error.value)
    assert "stages[0].params.min_term_chars = 0" in message
    assert "greater than or equal to 1" in message
    assert "min_term_chars = 'many'" in message and "= 3" not in message
    with pytest.raises(RecipeError, match="the value 3 is given twice"):
        _search(setup, out, [3, "3"])
    with pytest.raises(UserInputError, match="no parameter 'min_term_char' .*'min_term_chars'"):
        _search(setup, out, [3], param="min_term_char")
    with pytest.raises(UserInputError, match="no stage 'clip_score'.*0: text_based"):
        _search(setup, out, [0.5], stage="clip_score", param="fraction")
    with pytest.raises(UserInputError, match="no baseline runs"):
        _search(setup, out, [3], stage=0, baselines=[setup["pool"]])
    assert not out.exists()
    # only 'purple' has 6 letters, and no caption says it: nothing to train on, said early
    with pytest.raises(UserInputError, match="min_term_chars=6 keep no samples"):
        _search(setup, out, [6])
    assert not (out / "colour_words-min_term_chars-6" / "results").exists()


def test_values_are_parsed_with_the_parameter_type_and_named_safely(setup):
    recipe = setup["recipe"]
    assert parse_values(recipe, "text_based", "min_term_chars", ["3", "4"]) == [3, 4]
    assert parse_values(recipe, 0, "plurals", ["false", "true"]) == [False, True]
    assert parse_values(recipe, 0, "min_term_chars", ["x"]) == ["x"]  # reported by validation
    assert variant_name("r", "fraction", 0.5) == "r-fraction-0.5"
    sql = variant_name("r", "keep", "origin != 'cinic10_imagenet' AND width >= 32")
    assert re.fullmatch(r"r-keep-origin_cinic10_imagenet-[0-9a-f]{8}", sql)
    assert sql != variant_name("r", "keep", "origin != 'cinic10_imagenet' AND width >= 64")
    where = parse_recipe("name: w\nstages:\n  - stage: where\n    params: {keep: 'width > 1'}\n")
    variant = recipe_variant(where, "where", "keep", "width >= 32 AND text IS NOT NULL")
    assert parse_recipe(variant.text).stages[0].params.keep == "width >= 32 AND text IS NOT NULL"
    assert variant.name.startswith("w-keep-width_32_AND_text_IS_NOT-")
