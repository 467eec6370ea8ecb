import numpy as np
import polars as pl
import pytest

from curate.core.errors import UserInputError
from curate.filters.catalog import get_stage
from curate.filters.registry import StageContext


def _run(rows: pl.DataFrame, keep: str, tmp_path):
    stage = get_stage("where")
    ctx = StageContext(rows=rows, pool_root=tmp_path, seed=0, work_dir=tmp_path)
    return stage.run(ctx, stage.params_model(keep=keep))


def test_where_matches_hand_checked_mask(tmp_path):
    rows = pl.DataFrame(
        {"origin": ["cifar10", "cinic10_imagenet", None, "mnist"], "width": [32, 40, 64, 28]}
    )
    result = _run(rows, "origin != 'cinic10_imagenet' AND width >= 30", tmp_path)
    assert result.keep.tolist() == [True, False, False, False]  # null origin -> not kept
    assert result.reason == "not (origin != 'cinic10_imagenet' AND width >= 30)"


def test_where_names_bad_expression(tmp_path):
    rows = pl.DataFrame({"width": np.arange(3)})
    with pytest.raises(UserInputError, match="no_such_column|width"):
        _run(rows, "no_such_column > 3", tmp_path)
    with pytest.raises(UserInputError, match="not a boolean"):
        _run(rows, "width + 1", tmp_path)
