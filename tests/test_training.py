"""Fixed-budget training: scales, data order, determinism, resume after a kill, and
`curate score` / `evaluate` / `train-filter` / `baseline` end to end on small generated data
with real open_clip models (the tiny-test scale: 3 steps of 64)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

import curate.cli.main  # noqa: F401  (registers the commands)
from curate.cli.app import app
from curate.core.atomic import write_parquet
from curate.core.errors import UserInputError
from curate.core.manifest import Manifest
from curate.core.pool_writer import PoolWriter, SourceSample
from curate.eval.records import read_records, unpack_correct
from curate.models.loading import load_clip
from curate.runs.baseline import ensure_baseline_pool, run_baselines
from curate.runs.score import comparability_key, score
from curate.training.batches import Augmentation, SampleOrder
from curate.training.data import open_training_set
from curate.training.loop import train_clip
from curate.training.scales import get_scale, load_scales
from curate.training.train_filter import train_filter
from tests.colours import COLOURS, coloured_image, labelled_parquet, write_colours_tasks

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_pool(path: Path, rows: int) -> Path:
    with PoolWriter(
        path, name=path.name, source={"type": "test"}, command="test", samples_per_shard=80
    ) as writer:
        for i in range(rows):
            label = i % len(COLOURS)
            writer.add(
                SourceSample(
                    source="test",
                    where=f"row {i}",
                    text=f"a photo of a {COLOURS[label]} thing",
                    image=coloured_image(label, i),
                )
            )
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    pool = make_pool(root / "pool", 200)
    test_parquet = labelled_parquet(root / "colours_test.parquet", 30, seed=7)
    retrieval = {
        "colours-retrieval": {
            "task": "zeroshot_retrieval",
            "kind": "id",
            "images": {"format": "parquet", "path": "colours_test.parquet", "text_column": "text"},
        }
    }
    tasks_file = write_colours_tasks(
        root / "tasks.yaml", "colours_test.parquet", "colours_test.parquet", retrieval
    )
    return {"root": root, "pool": pool, "tasks_file": tasks_file, "test_parquet": test_parquet}


# -- scales ---------------------------------------------------------------------------------
def test_shipped_scales_are_valid_and_tiny_fits_the_budget():
    scales = load_scales()
    assert {"tiny", "tiny-test", "small", "medium"} <= set(scales)
    tiny = scales["tiny"]
    assert 50_000 <= tiny.samples_seen <= 70_000 and tiny.batch_size == 256
    assert tiny.warmup == round(0.1 * tiny.steps)
    assert (
        scales["small"].samples_seen == 12_800_000 and scales["medium"].samples_seen == 128_000_000
    )
    assert scales["small"].batch_size == 4096 and scales["small"].lr == 5e-4


def test_scale_typo_fails_naming_scale_and_field(tmp_path):
    settings = load_scales()["tiny"].model_dump()
    settings["learning_rate"] = settings.pop("lr")
    path = tmp_path / "scales.yaml"
    path.write_text(yaml.safe_dump({"mine": settings}))
    with pytest.raises(UserInputError, match=r"scale 'mine'.*learning_rate"):
        load_scales(path)
    with pytest.raises(UserInputError, match="unknown scale 'nope'"):
        get_scale("nope")


# -- data order -----------------------------------------------------------------------------
@pytest.mark.parametrize("rows", [50, 1000])
def test_samples_seen_is_fixed_whatever_the_pool_size(rows):
    batch, steps = 64, 10
    order = SampleOrder(rows, seed=3, batch_size=batch)
    seen = np.concatenate([order.rows_for_step(step) for step in range(steps)])
    assert seen.size == batch * steps  # the budget, not the pool, sets what is seen
    counts = np.bincount(seen, minlength=rows)
    if rows < batch * steps:  # small pool: repeated, each epoch a full permutation
        full_epochs = batch * steps // rows
        assert counts.min() >= full_epochs and counts.max() <= full_epochs + 1
        first_epoch = seen[:rows]
        assert sorted(first_epoch) == list(range(rows))
        assert not np.array_equal(first_epoch, seen[rows : 2 * rows])  # reshuffled
    else:  # large pool: seen in part, no repeats
        assert counts.max() == 1
    # two processes under torchrun split each global batch exactly
    halves = [SampleOrder(rows, 3, batch, rank, 2).rows_for_step(4) for rank in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves), order.rows_for_step(4))
    assert not np.array_equal(SampleOrder(rows, 4, batch).rows_for_step(0), order.rows_for_step(0))


def test_batch_augmentation_is_a_random_resized_crop():
    """Identity crops reproduce the normalised image; crops keep the scale bounds."""
    aug = Augmentation(32, (1.0, 1.0), (1.0, 1.0), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    out = aug(images, np.random.default_rng(0))
    expected = (images.float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    # a horizontal ramp: the crop's first column shows where it starts (>= 0, <= 10 % in)
    ramp = torch.arange(32, dtype=torch.float32).mul(8).expand(8, 3, 32, 32).to(torch.uint8)
    cropped = Augmentation(32, (0.9, 1.0), (3 / 4, 4 / 3), (0, 0, 0), (1, 1, 1))(
        ramp, np.random.default_rng(1)
    )
    assert cropped.shape == (8, 3, 32, 32)
    assert (cropped[:, 0, 16, 0] * 255 <= 8 * 32 * 0.2).all()
    assert cropped.std(dim=0).sum() > 0  # different crops per image


def test_streaming_batches_follow_the_same_order(data):
    """Pools too large to cache are decoded per sample with open_clip's own train transform,
    in the same (seed, step) order, reproducibly, also when started mid-run (a resume)."""
    from curate.training.batches import make_batches
    from curate.training.loop import create_model

    training_set = open_training_set(data["pool"])
    scale = get_scale("tiny-test")
    _, preprocess_train, tokenizer = create_model(scale, torch.device("cpu"))
    made = {
        limit: make_batches(
            training_set,
            order=SampleOrder(len(training_set), 9, 64),
            image_size=32,
            cache_limit_bytes=limit,
            preprocess_train=preprocess_train,
            tokenizer=tokenizer,
            workers=0,
            pin_memory=False,
            show_progress=False,
        )
        for limit in (0, 2**30)
    }
    streaming, cached = made[0], made[2**30]
    assert (
        type(streaming).__name__ == "StreamingBatches" and type(cached).__name__ == "CachedBatches"
    )
    run = list(streaming.iterate(0, 3))
    resumed = list(streaming.iterate(1, 3))
    for step, (images, tokens) in enumerate(run):
        assert images.shape == (64, 3, 32, 32) and images.dtype == torch.float32
        torch.testing.assert_close(tokens, cached.batch(step)[1])  # the same rows
    for (a_images, a_tokens), (b_images, b_tokens) in zip(run[1:], resumed, strict=True):
        assert torch.equal(a_images, b_images) and torch.equal(a_tokens, b_tokens)
    # cached batches made ahead in a loader process are the in-process ones
    cached.workers = 1
    ahead = list(cached.iterate(1, 3))
    for step, (images, tokens) in enumerate(ahead, start=1):
        reference = cached.batch(step)
        assert torch.equal(images, reference[0]) and torch.equal(tokens, reference[1])
    # both normalise with the model's statistics: the same images, on average
    assert abs(run[0][0].mean() - cached.batch(0)[0].mean()) < 0.05


# -- the loop -------------------------------------------------------------------------------
def test_training_is_deterministic_and_resumes_after_a_kill(data, tmp_path):
    training_set = open_training_set(data["pool"])
    scale = get_scale("tiny-test")  # 3 steps, a checkpoint after every step

    first = train_clip(
        training_set,
        scale,
        seed=5,
        state_path=tmp_path / "a" / "state.pt",
        checkpoint_dir=tmp_path / "a" / "ckpt",
        show_progress=False,
    )
    assert first.steps == 3 and first.samples_seen == 192 and len(first.losses) == 3
    assert not (tmp_path / "a" / "state.pt").exists()  # removed once the weights are saved

    class Killed(Exception):
        pass

    def kill_after_two(step: int, loss: float) -> None:
        if step == 2:
            raise Killed

    with pytest.raises(Killed):
        train_clip(
            training_set,
            scale,
            seed=5,
            state_path=tmp_path / "b" / "state.pt",
            checkpoint_dir=tmp_path / "b" / "ckpt",
            show_progress=False,
            on_step=kill_after_two,
        )
    assert (tmp_path / "b" / "state.pt").is_file() and not (tmp_path / "b" / "ckpt").exists()
    resumed = train_clip(
        training_set,
        scale,
        seed=5,
        state_path=tmp_path / "b" / "state.pt",
        checkpoint_dir=tmp_path / "b" / "ckpt",
        show_progress=False,
    )
    assert resumed.resumed_from_step == 2
    # two independent processes of the same seed: the same loss curve, bit for bit ...
    assert resumed.losses == first.losses
    # ... and the same final weights
    a = load_file(tmp_path / "a" / "ckpt" / "model.safetensors")
    b = load_file(tmp_path / "b" / "ckpt" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a)
    # the checkpoint loads through curate's loader, and into open_clip directly
    loaded = load_clip(None, checkpoint=tmp_path / "a" / "ckpt")
    assert loaded.identity["arch"] == "curate-tiny-vit-p4"
    import open_clip

    native, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'a' / 'ckpt'}")
    assert torch.equal(native.state_dict()["logit_scale"], a["logit_scale"])


# -- score / evaluate end to end -------------------------------------------------------------
def test_score_end_to_end_records_rerun_and_evaluate(data):
    pool, tasks_file = data["pool"], data["tasks_file"]
    result = score(
        pool,
        scale_name="tiny-test",
        seed=0,
        tasks=["colours", "colours-shift"],
        tasks_file=tasks_file,
        show_progress=False,
    )
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["status"] == "evaluated" and run["samples_seen"] == 192
    assert run["config"] == get_scale("tiny-test").model_dump() and run["seed"] == 0
    uids = sorted(pl.read_parquet(pool / "samples.parquet")["uid"].to_list())
    assert run["pool_id"] == hashlib.sha256("\n".join(uids).encode()).hexdigest()
    assert run["pool_identity"]["sample_count"] == 200 and run["pool"] == str(pool.resolve())
    assert run["comparability_key"] == comparability_key(
        get_scale("tiny-test"), ["colours-shift", "colours"]
    )
    assert "git_commit" in run["code_version"] or "curate" in run["code_version"]
    assert len(json.loads((result.run_dir / "train_curve.json").read_text())["loss"]) == 3

    records = read_records(result.run_dir / "results.jsonl")
    assert [r["dataset"] for r in records] == ["colours", "colours-shift"]
    for record in records:
        n = record["metrics"]["n"]
        correct = unpack_correct(record["correct_bits"], n)
        assert record["metrics"]["acc1"] == pytest.approx(correct.mean())
        assert record["run"]["run_id"] == run["run_id"] and record["run"]["baseline"] is False
    assert records[0]["metrics"]["n"] == 30 and records[1]["metrics"]["n"] == 20
    assert records[1]["task_info"] == {"kind": "shift", "shift_of": "colours"}

    again = score(
        pool,
        scale_name="tiny-test",
        seed=0,
        tasks=["colours", "colours-shift"],
        tasks_file=tasks_file,
        show_progress=False,
    )
    assert not again.trained and again.run_dir == result.run_dir
    assert [o.status for o in again.tasks] == ["skipped (finished)"] * 2
    assert len(read_records(result.run_dir / "results.jsonl")) == 2

    evaluated = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(result.run_dir / "checkpoint"),
            "--tasks",
            "colours-retrieval",
            "--tasks",
            "colours",
            "--tasks-file",
            str(tasks_file),
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    records = read_records(result.run_dir / "results.jsonl")
    assert [r["dataset"] for r in records] == ["colours", "colours-shift", "colours-retrieval"]
    assert (
        records[2]["metrics"]["image_retrieval_recall@10"]
        >= records[2]["metrics"]["image_retrieval_recall@1"]
    )


def test_subset_trains_on_kept_samples_only(data, tmp_path):
    pool = data["pool"]
    kept = sorted(pl.read_parquet(pool / "samples.parquet")["uid"].to_list()[::3])
    subset = tmp_path / "subset"
    subset.mkdir()
    write_parquet(subset / "uids.parquet", pl.DataFrame({"uid": kept}))
    Manifest(
        name="every-third",
        kind="subset",
        source={"pool": str(pool.resolve()), "pool_name": "pool", "recipe": "every-third"},
        sample_count=len(kept),
        has_images=True,
        produced_by={},
    ).write(subset)
    training_set = open_training_set(subset)
    assert len(training_set) == len(kept)
    assert training_set.identity["recipe"] == "every-third"
    assert training_set.identity["raw_pool"] == str(pool.resolve())
    assert training_set.identity["pool_id"] == hashlib.sha256("\n".join(kept).encode()).hexdigest()
    rows = pl.read_parquet(pool / "samples.parquet").filter(pl.col("uid").is_in(kept))
    images = dict(training_set.images.iter_bytes())
    from curate.core.pool import Pool

    assert [images[i] for i in range(3)] == Pool.open(pool).read_images(rows[:3])
    assert [training_set.images.read(i) for i in range(3)] == Pool.open(pool).read_images(rows[:3])


def test_train_filter_and_baseline(data, tmp_path):
    out = tmp_path / "filter"
    info = train_filter(
        data["test_parquet"],
        out,
        scale_name="tiny-test",
        caption_templates=["a {} photo"],
        show_progress=False,
    )
    assert info["trained_on"]["sample_count"] == 30 and info["train"]["steps"] == 3
    loaded = load_clip(None, checkpoint=out)  # what `curate embed --checkpoint` uses
    assert loaded.identity["checkpoint"] == str((out / "model.safetensors").resolve())
    with pytest.raises(FileExistsError):
        train_filter(data["test_parquet"], out, scale_name="tiny-test", show_progress=False)

    results = run_baselines(
        tmp_path / "baseline-pool",
        task_set="colours",
        budgets=[128],
        seeds=[1],
        scale_name="tiny-test",
        tasks_file=data["tasks_file"],
        show_progress=False,
    )
    (result,) = results
    assert result.run["baseline"] is True and result.run["samples_seen"] == 128
    records = read_records(result.run_dir / "results.jsonl")
    assert {r["dataset"] for r in records} == {"colours", "colours-shift"}
    assert all(r["run"]["baseline"] is True for r in records)
    pool_rows = pl.read_parquet(tmp_path / "baseline-pool" / "samples.parquet")
    assert pool_rows["text"][0] == f"a photo of a {pool_rows['class_name'][0]} thing"

    # the checkout moved: the same data at another path is the same baseline pool; other
    # data under the same --out is refused
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(data["test_parquet"], moved / "colours_test.parquet")
    moved_tasks = write_colours_tasks(
        moved / "tasks.yaml", "colours_test.parquet", "colours_test.parquet"
    )
    assert ensure_baseline_pool(tmp_path / "baseline-pool", "colours", moved_tasks)
    labelled_parquet(moved / "colours_test.parquet", 30, seed=8)
    with pytest.raises(UserInputError, match="not of"):
        ensure_baseline_pool(tmp_path / "baseline-pool", "colours", moved_tasks)
