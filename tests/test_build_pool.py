"""build-pool on a small real pool, with test-only stages registered here (the real stages
are tested in their own modules): decisions against a hand-checked case, DataComp subset
round trip, determinism, resume after a crash and after SIGKILL, the lock, resharding."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from typer.testing import CliRunner

import curate.cli.build_pool  # noqa: F401  (registers the commands)
from curate.build_pool.build import build_pool
from curate.build_pool.ground_truth import ground_truth_report
from curate.build_pool.recipe import RecipeError, parse_recipe
from curate.cli.app import app
from curate.core.atomic import exclusive_lock, staging_dir_for
from curate.core.candidate_pool import open_subset
from curate.core.decisions_view import subset_decisions
from curate.core.errors import InUseError
from curate.core.kept_uids import kept_uids
from curate.core.layout import SubsetLayout
from curate.core.pool import Pool
from curate.core.pool_writer import PoolWriter, SourceSample
from curate.filters.catalog import STAGES
from curate.filters.registry import StageParams, StageResult, register_stage
from tests.conftest import make_image_bytes

REPO = Path(__file__).resolve().parents[1]
SLOW_SECONDS = "CURATE_TEST_SLOW_SECONDS"
CALLS: Counter[str] = Counter()


class MinWidthParams(StageParams):
    min_width: int


class CaptionWordParams(StageParams):
    word: str


class NoParams(StageParams):
    pass


class FileParams(StageParams):
    path: Path


if "bp_min_width" not in STAGES:  # this module may be imported twice (pytest, subprocess)

    @register_stage("bp_min_width", MinWidthParams)
    def _min_width(context, params):
        CALLS["bp_min_width"] += 1
        width = context.rows["width"].to_numpy()
        return StageResult(
            keep=width >= params.min_width,
            reason=f"narrower than {params.min_width} px",
            score=width.astype(np.float32),
            report={"min_width": params.min_width},
        )

    @register_stage("bp_caption_word", CaptionWordParams)
    def _caption_word(context, params):
        CALLS["bp_caption_word"] += 1
        found = context.rows["text"].str.contains(params.word, literal=True).to_numpy()
        reason = np.where(found, f"caption contains {params.word!r}", "")
        return StageResult(keep=~found, reason=reason)

    @register_stage("bp_crash", NoParams)
    def _crash(context, params):
        raise RuntimeError("injected crash")

    @register_stage("bp_file", FileParams)
    def _file(context, params):
        keep = np.full(context.rows.height, params.path.is_file())
        return StageResult(keep=keep, reason="", report={"path": str(params.path)})

    @register_stage("bp_slow", NoParams)
    def _slow(context, params):
        time.sleep(float(os.environ.get(SLOW_SECONDS, "0")))
        return StageResult(keep=np.ones(context.rows.height, dtype=bool), reason="")


# width, height, caption, injected noise (the ground truth)
SPEC = [
    (32, 32, "a photo of a cat", "clean"),  # 0 kept
    (8, 32, "a photo of a dog", "tiny"),  # 1 removed by stage 0
    (32, 32, "buy now spam spam", "spam_caption"),  # 2 removed by stage 1
    (32, 32, "a red truck", "clean"),  # 3 kept
    (12, 12, "spam offer", "tiny"),  # 4 removed by stage 0 (stage 1 never sees it)
    (32, 16, "a ship at sea", "clean"),  # 5 kept
    (32, 32, "cheap spam deals", "clean"),  # 6 removed by stage 1 (a clean sample)
    (32, 32, "a frog on a leaf", "mismatched_caption"),  # 7 kept (missed noise)
    (40, 32, "two horses", "clean"),  # 8 kept
    (10, 40, "an airplane", "clean"),  # 9 removed by stage 0 (a clean sample)
]
KEPT_ROWS = [0, 3, 5, 7, 8]

RECIPE = """\
name: two_stages
seed: 7
stages:
  - stage: bp_min_width
    params: {min_width: 16}
  - stage: bp_caption_word
    params: {word: spam}
"""


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pool") / "pool"
    with PoolWriter(out, name="tiny", source={"type": "test"}, command="test",
                    samples_per_shard=4) as writer:  # fmt: skip
        for i, (width, height, text, noise) in enumerate(SPEC):
            writer.add(SourceSample(source="test", where=f"row {i}", text=text,
                                    image=make_image_bytes(i, (width, height)),
                                    extras={"noise": noise}))  # fmt: skip
    return out


def _recipe(text: str = RECIPE):
    return parse_recipe(text, source="test.yaml")


def test_decisions_match_the_hand_checked_case(pool_dir, tmp_path):
    out = tmp_path / "subset"
    result = build_pool(_recipe(), pool_dir, out)
    uids = Pool.open(pool_dir).samples()["uid"].to_list()

    decisions = subset_decisions(out).collect()
    assert decisions.height == 10 + 7 <= len(SPEC) * 2
    stage0 = decisions.filter(pl.col("stage_index") == 0)
    assert stage0["uid"].to_list() == uids and stage0["row"].to_list() == list(range(10))
    assert stage0["kept"].to_list() == [i not in (1, 4, 9) for i in range(10)]
    assert stage0["score"].to_list() == [32, 8, 32, 32, 12, 32, 32, 32, 40, 10]
    assert stage0["reason"].to_list() == [None, "narrower than 16 px", None, None,
                                          "narrower than 16 px", None, None, None, None,
                                          "narrower than 16 px"]  # fmt: skip
    stage1 = decisions.filter(pl.col("stage_index") == 1)
    assert stage1["row"].to_list() == [0, 2, 3, 5, 6, 7, 8]
    assert set(stage1["stage"].cast(pl.String)) == {"bp_caption_word"}
    assert stage1["kept"].to_list() == [True, False, True, True, False, True, True]
    assert stage1.filter(~pl.col("kept"))["reason"].to_list() == ["caption contains 'spam'"] * 2
    assert stage1["score"].null_count() == 7
    # stored: stage 0's scores for the 10 rows it saw, stage 1's 2 removals; no uids
    stored = pq.read_table(out / "decisions.parquet")
    assert stored.num_rows == 10 + 2 and "uid" not in stored.column_names
    assert str(stored.schema.field("reason").type).startswith("dictionary")

    stages = pl.read_parquet(out / "stages.parquet")
    assert stages.select("stage", "rows_in", "rows_out", "removed").rows() == [
        ("bp_min_width", 10, 7, 3), ("bp_caption_word", 7, 5, 2)]  # fmt: skip
    assert json.loads(stages["report"][0]) == {"min_width": 16}

    assert kept_uids(SubsetLayout(out)).to_list() == sorted(uids[i] for i in KEPT_ROWS)
    assert (out / "recipe.yaml").read_text() == RECIPE
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "subset" and manifest["sample_count"] == 5
    assert manifest["source"]["pool"] == str(pool_dir.resolve())
    assert manifest["source"]["recipe"] == "two_stages"
    assert manifest["produced_by"]["params"]["recipe_hash"] == _recipe().content_hash()
    assert manifest["produced_by"]["params"]["seed"] == 7
    assert result.kept == 5 and not staging_dir_for(out).exists()


def test_ground_truth_precision_and_recall(pool_dir, tmp_path):
    result = build_pool(_recipe(), pool_dir, tmp_path / "subset")
    report = pl.read_parquet(tmp_path / "subset" / "ground_truth.parquet")
    assert report.equals(result.ground_truth)

    def pr(stage_index: int, noise: str) -> tuple[int, int, float | None, float | None]:
        row = report.filter((pl.col("stage_index") == stage_index) & (pl.col("noise") == noise))
        return row.select("seen", "removed", "precision", "recall").row(0)

    # stage 0 removes rows 1 (tiny), 4 (tiny), 9 (clean); noisy seen: 1, 2, 4, 7
    assert pr(0, "noisy") == (4, 2, pytest.approx(2 / 3), 0.5)
    assert pr(0, "tiny") == (2, 2, pytest.approx(2 / 3), 1.0)
    assert pr(0, "clean") == (6, 1, pytest.approx(1 / 3), pytest.approx(1 / 6))
    # stage 1 removes rows 2 (spam) and 6 (clean); noisy seen: 2, 7
    assert pr(1, "noisy") == (2, 1, 0.5, 0.5)
    assert pr(1, "spam_caption") == (1, 1, 0.5, 1.0)
    assert pr(1, "mismatched_caption") == (1, 0, 0.0, 0.0)
    # the whole recipe removes 1, 2, 4, 6, 9 of the pool; noisy: 1, 2, 4, 7
    assert pr(2, "noisy") == (4, 3, 0.6, 0.75)
    assert report.filter(pl.col("stage_index") == 2)["stage"].unique().to_list() == ["all stages"]


def test_ground_truth_judges_duplicates_as_pairs():
    """Dedup keeps the lowest row: here the copy (row 0) stays and its original (row 1) goes,
    which removes the redundancy as well as removing the copy would."""
    samples = pl.DataFrame(
        {
            "uid": ["c", "o", "x"],
            "noise": ["exact_duplicate", "clean", "clean"],
            "duplicate_of": ["o", None, None],
        }
    ).with_row_index("row")
    decisions = pl.DataFrame(
        {
            "row": [0, 1, 2],
            "stage_index": [0, 0, 0],
            "stage": ["dedup"] * 3,
            "kept": [True, False, True],
        }  # fmt: skip
    ).with_columns(pl.col("row").cast(pl.UInt32))
    report = ground_truth_report(samples, decisions).filter(pl.col("stage_index") == 0)
    by_noise = {n: (r, s) for n, r, s in report.select("noise", "removed", "seen").rows()}
    assert by_noise == {"noisy": (1, 1), "clean": (0, 2), "exact_duplicate": (1, 1)}


def test_uids_npy_is_a_datacomp_subset(pool_dir, tmp_path):
    build_pool(_recipe(), pool_dir, tmp_path / "subset")
    array = np.load(tmp_path / "subset" / "uids.npy")
    kept = Pool.open(pool_dir).samples()["uid"].gather(KEPT_ROWS)
    uids = sorted(kept.to_list())
    # DataComp's own conversion (baselines/apply_filter.py), as the reference
    reference = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids], np.dtype("u8,u8"))
    assert array.dtype == np.dtype("u8,u8")
    assert np.array_equal(array, np.sort(reference)) and np.array_equal(array, reference)


def test_same_recipe_pool_and_seed_give_identical_bytes(pool_dir, tmp_path):
    for name in ("a", "b"):
        build_pool(_recipe(), pool_dir, tmp_path / name)
    for file in ("uids.npy", "decisions.parquet"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


@pytest.mark.parametrize("kernel_copy", ["missing", "refused"])
def test_uids_npy_is_the_same_without_the_kernel_copy(pool_dir, tmp_path, monkeypatch, kernel_copy):
    """uids.npy is appended by copy_file_range where the OS has it; without it (macOS) or
    when the file system refuses it, through a buffer: the same bytes."""
    build_pool(_recipe(), pool_dir, tmp_path / "kernel")
    if kernel_copy == "missing":
        monkeypatch.delattr(os, "copy_file_range")
    else:

        def refuse(*args: object) -> int:
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(os, "copy_file_range", refuse)
    build_pool(_recipe(), pool_dir, tmp_path / "buffer")
    kept = (tmp_path / "kernel" / "uids.npy").read_bytes()
    assert len(kept) > 128 and (tmp_path / "buffer" / "uids.npy").read_bytes() == kept


def _same_outputs(a: Path, b: Path) -> None:
    for file in ("uids.npy", "decisions.parquet"):
        assert (a / file).read_bytes() == (b / file).read_bytes(), file


def test_resume_after_a_crash_reuses_finished_stages(pool_dir, tmp_path):
    out = tmp_path / "subset"
    crashing = _recipe(RECIPE.replace("bp_caption_word\n    params: {word: spam}", "bp_crash"))
    with pytest.raises(RuntimeError, match="injected crash"):
        build_pool(crashing, pool_dir, out)
    assert not out.exists() and staging_dir_for(out).is_dir()

    calls = CALLS["bp_min_width"]
    result = build_pool(_recipe(), pool_dir, out)  # stage 1 fixed: stage 0's prefix unchanged
    assert CALLS["bp_min_width"] == calls
    assert [s.resumed for s in result.stages] == [True, False]
    build_pool(_recipe(), pool_dir, tmp_path / "reference")
    _same_outputs(out, tmp_path / "reference")

    # a changed first stage changes every prefix: nothing is reused
    with pytest.raises(RuntimeError):
        build_pool(crashing, pool_dir, tmp_path / "other")
    changed = _recipe(RECIPE.replace("min_width: 16", "min_width: 17"))
    result = build_pool(changed, pool_dir, tmp_path / "other")
    assert [s.resumed for s in result.stages] == [False, False]


def test_resume_after_sigkill_of_the_cli_and_lock(pool_dir, tmp_path):
    recipe_path = tmp_path / "slow.yaml"
    recipe_path.write_text(RECIPE.replace("bp_caption_word\n    params: {word: spam}", "bp_slow"))
    out = tmp_path / "subset"
    code = (
        "import sys, tests.test_build_pool; from curate.cli.main import main; "
        "sys.argv = ['curate', *sys.argv[1:]]; main()"
    )
    command = [sys.executable, "-c", code, "build-pool", str(recipe_path),
               "--pool", str(pool_dir), "--out", str(out)]  # fmt: skip
    env = {**os.environ, SLOW_SECONDS: "120"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)  # fmt: skip
    resume = staging_dir_for(out) / "_resume"
    deadline = time.monotonic() + 60
    try:
        while not list(resume.glob("001-bp_slow-*/work")):  # the slow stage has started
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the CLI never reached the slow stage"
            time.sleep(0.1)
        with pytest.raises(InUseError, match="in use"):
            build_pool(_recipe(recipe_path.read_text()), pool_dir, out)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()
    assert not out.exists()

    calls = CALLS["bp_min_width"]
    result = build_pool(_recipe(recipe_path.read_text()), pool_dir, out)
    assert CALLS["bp_min_width"] == calls and result.stages[0].resumed
    build_pool(_recipe(recipe_path.read_text()), pool_dir, tmp_path / "reference")
    _same_outputs(out, tmp_path / "reference")


def test_pool_placeholder_and_missing_paths_fail_before_work(pool_dir, tmp_path):
    text = RECIPE.replace("bp_caption_word\n    params: {word: spam}", "bp_file")
    missing = text.replace("bp_file", "bp_file\n    params:\n      path: '{pool}/nothing.npy'")
    calls = CALLS["bp_min_width"]
    with pytest.raises(RecipeError) as caught:
        build_pool(_recipe(missing), pool_dir, tmp_path / "subset")
    assert f"line 8: stages[1].params.path: {pool_dir.resolve()}/nothing.npy does not exist" in str(
        caught.value
    )
    assert CALLS["bp_min_width"] == calls and not staging_dir_for(tmp_path / "subset").exists()

    present = missing.replace("nothing.npy", "samples.parquet")
    result = build_pool(_recipe(present), pool_dir, tmp_path / "subset")
    assert result.stages[1].report == {"path": str(pool_dir.resolve() / "samples.parquet")}
    assert result.kept == 7


def test_second_writer_gets_in_use_and_existing_output_is_kept(pool_dir, tmp_path):
    out = tmp_path / "subset"
    with exclusive_lock(out), pytest.raises(InUseError):
        build_pool(_recipe(), pool_dir, out)
    build_pool(_recipe(), pool_dir, out)
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_pool(_recipe(), pool_dir, out)
    build_pool(_recipe(RECIPE.replace("16", "9")), pool_dir, out, overwrite=True)
    assert open_subset(out).manifest.sample_count == 6


def test_open_subset_reads_parent_shards_or_its_own(pool_dir, tmp_path):
    pool = Pool.open(pool_dir)
    expected = pool.samples()[KEPT_ROWS]
    expected_images = pool.read_images(expected)

    plain = open_subset(build_pool(_recipe(), pool_dir, tmp_path / "plain").out)
    assert not plain.resharded and plain.images_root == pool_dir
    assert plain.samples().equals(expected)
    assert plain.read_images(plain.samples()) == expected_images
    assert plain.shard_paths() == pool.shard_paths()  # kept rows lie in all three shards

    build_pool(_recipe(), pool_dir, tmp_path / "own", reshard=True, samples_per_shard=2)
    own = open_subset(tmp_path / "own")
    samples = own.samples()
    assert own.resharded and own.images_root == tmp_path / "own"
    assert samples["uid"].to_list() == expected["uid"].to_list()
    assert samples["noise"].to_list() == expected["noise"].to_list()
    assert samples["shard"].unique().sort().to_list() == [
        "shards/00000.tar", "shards/00001.tar", "shards/00002.tar"]  # fmt: skip
    assert own.read_images(samples) == expected_images
    dataset = wds.WebDataset([str(p) for p in own.shard_paths()], shardshuffle=False)
    assert [json.loads(s["json"])["uid"] for s in dataset] == samples["uid"].to_list()
    assert not list((tmp_path / "own").glob(".*")) and not (tmp_path / "own" / "_resume").exists()


def test_cli_build_pool_prints_stages_and_ground_truth(pool_dir, tmp_path):
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(RECIPE)
    runner = CliRunner()
    out = tmp_path / "subset"
    result = runner.invoke(app, ["build-pool", str(recipe_path), "--pool", str(pool_dir),
                                 "--out", str(out)], terminal_width=200)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "bp_caption_word" in result.output and "precision" in result.output
    assert "kept 5 of 10 samples" in result.output
    recipe_path.write_text(RECIPE.replace("word: spam", "words: spam"))
    result = runner.invoke(app, ["validate-recipe", str(recipe_path)])
    assert isinstance(result.exception, RecipeError)
    assert "line 7: stages[1].params.words" in str(result.exception)


def test_a_missing_column_fails_validation_naming_it(pool_dir, tmp_path):
    text = RECIPE + (
        "  - stage: clip_score\n    params: {fraction: 0.3, column: clip_l14_similarity_score}\n"
        "  - stage: where\n    params: {keep: 'width > 3 AND colour = 1'}\n"
    )
    calls = CALLS["bp_min_width"]
    with pytest.raises(RecipeError) as caught:
        build_pool(_recipe(text), pool_dir, tmp_path / "subset")
    message = str(caught.value)
    assert (
        "line 8: stages[2]: stage clip_score reads column(s) clip_l14_similarity_score" in message
    )
    assert "line 10: stages[3]: stage where reads column(s) colour" in message
    assert CALLS["bp_min_width"] == calls and not staging_dir_for(tmp_path / "subset").exists()
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(text)
    result = CliRunner().invoke(app, ["validate-recipe", str(recipe_path), "--pool", str(pool_dir)])
    assert isinstance(result.exception, RecipeError) and "colour" in str(result.exception)
