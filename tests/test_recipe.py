"""Recipes: validation errors name the field and its line; hashes follow what changes results."""

from __future__ import annotations

import numpy as np
import pytest

from curate.build_pool.recipe import (
    RecipeError,
    load_recipe,
    parse_recipe,
    resolve_recipe,
    shipped_recipes,
)
from curate.filters.catalog import STAGES
from curate.filters.registry import StageParams, StageResult, register_stage


class _ThresholdParams(StageParams):
    threshold: float
    column: str = "width"


class _RequiredParams(StageParams):
    k: int


if "recipe_test_threshold" not in STAGES:

    @register_stage("recipe_test_threshold", _ThresholdParams)
    def _threshold(context, params):
        return StageResult(keep=np.ones(context.rows.height, dtype=bool), reason="")

    @register_stage("recipe_test_required", _RequiredParams)
    def _required(context, params):
        return StageResult(keep=np.ones(context.rows.height, dtype=bool), reason="")


GOOD = """\
name: good
description: two test stages
seed: 3
stages:
  - stage: recipe_test_threshold
    params:
      threshold: 0.3
  - stage: recipe_test_required
    params: {k: 5}
"""


def _error(text: str) -> str:
    with pytest.raises(RecipeError) as caught:
        parse_recipe(text, source="r.yaml")
    return str(caught.value)


def test_good_recipe_parses_with_defaults():
    recipe = parse_recipe(GOOD)
    assert (recipe.name, recipe.seed, recipe.embeddings) == ("good", 3, None)
    assert [s.name for s in recipe.stages] == ["recipe_test_threshold", "recipe_test_required"]
    assert recipe.stages[0].params.column == "width"
    assert [s.line for s in recipe.stages] == [5, 8]


def test_unknown_stage_names_field_line_and_suggests():
    message = _error(GOOD.replace("stage: recipe_test_required", "stage: recipe_test_requierd"))
    assert "r.yaml line 8: stages[1].stage: unknown stage 'recipe_test_requierd'" in message
    assert "did you mean 'recipe_test_required'" in message


def test_unknown_parameter_names_field_and_line():
    message = _error(GOOD.replace("threshold: 0.3", "treshold: 0.3"))
    assert "line 7: stages[0].params.treshold: unknown field" in message
    assert "did you mean 'threshold'" in message
    # the required field it replaced is missing too: reported at the params line
    assert "line 6: stages[0].params.threshold: required field is missing" in message


def test_wrong_type_names_field_and_line():
    message = _error(GOOD.replace("{k: 5}", "{k: many}"))
    assert "r.yaml line 9: stages[1].params.k:" in message
    assert "'many'" in message


def test_missing_stages_and_unknown_top_level_field():
    message = _error("name: x\nseed: 1\nstagse: []\n")
    assert "line 1: stages: required field is missing" in message
    assert "line 3: stagse: unknown field (did you mean 'stages'?)" in message


def test_missing_required_param_points_at_the_stage():
    message = _error(GOOD.replace("    params: {k: 5}\n", ""))
    assert "line 8: stages[1].params.k: required field is missing" in message


def test_bad_yaml_and_duplicate_keys_give_lines():
    assert "r.yaml line 2: not valid YAML" in _error("name: x\nseed: 1: 2\nstages: []\n")
    message = _error(GOOD.replace("seed: 3", "seed: 3\nseed: 4"))
    assert "line 4: seed: key given twice" in message
    assert "a recipe is a YAML mapping" in _error("- just\n- a list\n")


def test_hash_ignores_name_and_spelling_but_follows_params_and_prefix():
    base = parse_recipe(GOOD)
    renamed = parse_recipe(GOOD.replace("name: good", "name: other").replace("0.3", "0.30"))
    assert renamed.content_hash() == base.content_hash()
    changed_last = parse_recipe(GOOD.replace("{k: 5}", "{k: 6}"))
    assert changed_last.content_hash() != base.content_hash()
    assert changed_last.content_hash(1) == base.content_hash(1)
    assert parse_recipe(GOOD.replace("seed: 3", "seed: 4")).content_hash(1) != base.content_hash(1)


def test_resolve_by_file_or_shipped_name(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(GOOD)
    assert load_recipe(path).name == "good"
    with pytest.raises(FileNotFoundError, match="curate recipes"):
        resolve_recipe("no_such_recipe_anywhere")
    assert resolve_recipe("no_filter") == shipped_recipes()["no_filter"]


def test_every_shipped_recipe_validates_against_the_registry():
    """Needs the real stages (filters/stages.py); fails until they are all registered."""
    shipped = shipped_recipes()
    expected = {
        "no_filter", "basic", "clip_score_top30", "laion2b", "text_based", "image_based",
        "image_based_x_clip_score", "basic_x_clip_score", "near_dedup_clip_score", "semdedup",
    }  # fmt: skip
    assert expected <= set(shipped)
    assert any(name.startswith("demo_") for name in shipped)
    for name, path in shipped.items():
        recipe = load_recipe(path)
        assert recipe.name == name, f"{path}: name {recipe.name!r} differs from the file name"
        assert recipe.description, f"{path}: describe what the recipe does"
