"""`curate score` under torchrun: a real 2-process gloo run of the tiny-test scale on CPU.

The command is the documented one (cli/score.py, curate/training/loop.py) with
``python -m torch.distributed.run`` standing for ``torchrun`` so that it works in any venv::

    torchrun --standalone --nproc_per_node 2 -m curate.cli.main score POOL --scale tiny-test

Reference computation: the loop splits each global batch over the processes (rank r takes
the r-th slice, augmented with a generator seeded by (seed, step, r)), gathers the features
for open_clip's ClipLoss and averages gradients with DDP. So the 2-process run must equal a
single process that trains on the two ranks' batches concatenated, with the plain
single-process ClipLoss, once the reference's gradients are scaled as DDP's average scales
them: each rank's gradient of the gathered loss flows through its own samples' features only,
so the average over 2 ranks is half the full-batch gradient, except for the logit scale,
which every rank sees whole. AdamW is invariant to that scale but for its eps (unscaled, the
weights differ by 4e-4 after 3 steps; scaled, by ~5e-6: float summation order).

It does not equal a 1-process `curate score` run bit for bit, by design: that run augments
the whole batch with the rank-0 generator, so rank 1's half gets other random crops (the
samples and their order are the same; test_training checks the split of the order).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from curate.core.atomic import write_parquet
from curate.core.pool_writer import PoolWriter, SourceSample
from curate.training.batches import SampleOrder, make_batches
from curate.training.data import open_training_set
from curate.training.loop import adamw, create_model
from curate.training.scales import get_scale
from tests.conftest import make_image_bytes

WORDS = ("red", "green", "blue", "small", "large", "round", "square", "bright", "dark")
SEED = 3


def _labelled_parquet(path: Path, rows: int) -> Path:
    """A tiny zero-shot task: images with one dominant colour channel."""
    images = []
    for i in range(rows):
        pixels = np.random.default_rng(i).integers(0, 90, (32, 32, 3), dtype=np.uint8)
        pixels[..., i % 3] += 160
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        images.append({"bytes": buffer.getvalue(), "path": f"{i}.png"})
    labels = [i % 3 for i in range(rows)]
    write_parquet(
        path,
        pl.DataFrame({"image": images, "label": labels, "class_name": [WORDS[k] for k in labels]}),
    )
    return path


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchrun")
    pool = root / "pool"
    rng = np.random.default_rng(0)
    with PoolWriter(pool, name="pool", source={"type": "test"}, command="test") as writer:
        for i in range(130):
            caption = " ".join(rng.choice(WORDS, 4))
            writer.add(
                SourceSample(
                    source="test",
                    where=f"row {i}",
                    text=f"a {caption} thing",
                    image=make_image_bytes(i),
                )
            )
    _labelled_parquet(root / "colours.parquet", 12)
    tasks_file = root / "tasks.yaml"
    tasks_file.write_text(
        yaml.safe_dump(
            {
                "tasks": {
                    "colours": {
                        "kind": "id",
                        "images": {"format": "parquet", "path": "colours.parquet"},
                        "classnames": "from_data",
                        "templates": ["a {} thing"],
                    }
                }
            }
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "curate.cli.main", "score", str(pool), "--scale", "tiny-test", "--seed", str(SEED),
        "--tasks", "colours", "--tasks-file", str(tasks_file),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    runs = sorted((pool / "results").glob("*/run.json")) if done.returncode == 0 else []
    return {"pool": pool, "done": done, "run_dir": runs[0].parent if runs else None}


def test_two_process_score_writes_one_run_and_one_result(launched):
    done = launched["done"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = launched["run_dir"]
    assert [p.parent for p in (launched["pool"] / "results").glob("*/run.json")] == [run_dir]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "evaluated"
    assert run["train"]["world_size"] == 2
    assert run["train"]["steps"] == 3 and run["samples_seen"] == 192  # global batch 64
    records = (run_dir / "results.jsonl").read_text().splitlines()
    assert len(records) == 1  # rank 0 alone evaluates
    assert json.loads(records[0])["dataset"] == "colours"
    assert not (run_dir / "train_state.pt").exists()
    assert done.stdout.count("results: ") == 2  # both processes finished the command


def test_two_process_training_equals_one_process_on_the_concatenated_batches(launched):
    import open_clip
    from open_clip_train.scheduler import cosine_lr

    assert launched["done"].returncode == 0
    run_dir = launched["run_dir"]
    scale = get_scale("tiny-test")
    training_set = open_training_set(launched["pool"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(SEED)
        model, preprocess_train, tokenizer = create_model(scale, torch.device("cpu"))
        rank_batches = [
            make_batches(
                training_set,
                order=SampleOrder(len(training_set), SEED, scale.batch_size, rank, 2),
                image_size=scale.image_size,
                cache_limit_bytes=2**30,
                preprocess_train=preprocess_train,
                tokenizer=tokenizer,
                workers=0,
                pin_memory=False,
                show_progress=False,
            )
            for rank in (0, 1)
        ]
        optimizer = adamw(model, scale)
        scheduler = cosine_lr(optimizer, scale.lr, scale.warmup, scale.steps)
        loss_fn = open_clip.ClipLoss()
        losses = []
        model.train()
        for step in range(scale.steps):
            halves = [b.batch(step) for b in rank_batches]
            images = torch.cat([h[0] for h in halves])
            texts = torch.cat([h[1] for h in halves])
            scheduler(step)
            out = model(images, texts)
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for name, param in model.named_parameters():  # what DDP's average amounts to
                if name != "logit_scale":
                    param.grad.div_(2)
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, np.log(100))
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)

    curve = json.loads((run_dir / "train_curve.json").read_text())["loss"]
    np.testing.assert_allclose(curve, losses, rtol=1e-5)
    trained = load_file(run_dir / "checkpoint" / "model.safetensors")
    reference = model.state_dict()
    assert trained.keys() == reference.keys()
    worst = max((trained[k] - reference[k]).abs().max().item() for k in reference)
    assert worst < 3e-5, worst  # without the halving above: 4e-4 (AdamW eps)
