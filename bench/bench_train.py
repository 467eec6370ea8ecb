"""Benchmark: training samples/s of curate's loop at the tiny scale vs a bare loop, and
evaluation images/s.

Both loops train the same open_clip model (curate-tiny-vit-p4, batch 256, the same AdamW) on
the demo's CIFAR-10 train images with template captions, in the same process, in
rounds of one bare and one curate measurement (alternating which goes first), so that a busy
machine slows both alike; the ratio reported is the median over rounds:

  bare    images decoded and normalised beforehand into one float tensor, captions tokenised
          beforehand; each step slices a batch, forward, ClipLoss, backward, optimizer step.
  curate  curate.training.loop.train_clip: seeded per-epoch order, batch RandomResizedCrop
          on the uint8 cache, scheduler, logit-scale clamp, loss bookkeeping, the resumable
          checkpoint every 40 steps (one in the default 41 steps), progress bookkeeping.

Prints samples/s of each and the ratio curate / bare (target >= 0.9), then zero-shot
evaluation images/s of the trained model on cifar10-test.

    python bench/bench_train.py --steps 41 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def bare_loop(images: torch.Tensor, tokens: torch.Tensor, steps: int, scale) -> float:
    """samples/s of the plainest training loop over the same model, optimizer and data."""
    import open_clip

    from curate.training.loop import adamw, create_model

    torch.manual_seed(0)
    model, _, _ = create_model(scale, torch.device("cpu"))
    optimizer = adamw(model, scale)
    loss_fn = open_clip.ClipLoss()
    model.train()
    batch = scale.batch_size
    started = time.perf_counter()
    for step in range(steps):
        start = (step * batch) % (len(images) - batch)
        out = model(images[start : start + batch], tokens[start : start + batch])
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=41, help="training steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="bare/curate measurement pairs")
    args = parser.parse_args()

    from curate.core import shipped_data as demo_data
    from curate.eval.evaluate import evaluate_tasks
    from curate.eval.tasks import load_registry
    from curate.models.loading import load_clip
    from curate.training.batches import Augmentation, decode_image_cache
    from curate.training.data import labelled_parquet_training_set
    from curate.training.loop import create_model, train_clip
    from curate.training.scales import get_scale

    if "OMP_NUM_THREADS" not in os.environ:  # as train_clip does
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    tiny = get_scale("tiny")
    scale = tiny.model_copy(update={"samples_seen": args.steps * tiny.batch_size, "warmup": 2})
    training_set = labelled_parquet_training_set(
        demo_data.path("cifar10_train"), ["a photo of a {}.", "a picture of a {}."]
    )
    _, preprocess_train, tokenizer = create_model(scale, torch.device("cpu"))
    augmentation = Augmentation.from_open_clip(preprocess_train, scale.image_size)
    cache = decode_image_cache(training_set.images, scale.image_size)
    mean = torch.tensor(augmentation.mean).view(1, -1, 1, 1)
    std = torch.tensor(augmentation.std).view(1, -1, 1, 1)
    images = (cache.float() / 255 - mean) / std
    tokens = tokenizer(training_set.texts)

    with tempfile.TemporaryDirectory() as tmp:
        ratios, bare_rates, curate_rates = [], [], []
        for round_ in range(args.rounds):
            # alternate the order so that a load change hits both loops alike
            first_bare = round_ % 2 == 0
            if first_bare:
                bare = bare_loop(images, tokens, args.steps, scale)
            outcome = train_clip(
                training_set,
                scale,
                seed=round_,
                state_path=Path(tmp) / f"state{round_}.pt",
                checkpoint_dir=Path(tmp) / "checkpoint",
                show_progress=False,
            )
            if not first_bare:
                bare = bare_loop(images, tokens, args.steps, scale)
            bare_rates.append(bare)
            curate_rates.append(outcome.samples_per_second)
            ratios.append(outcome.samples_per_second / bare)
            print(
                f"round {round_}: bare {bare:7.1f}  curate {outcome.samples_per_second:7.1f} "
                f"samples/s  ratio {ratios[-1]:.3f}"
            )
        ratio = float(np.median(ratios))
        print(f"bare loop      {np.median(bare_rates):8.1f} samples/s (median)")
        print(
            f"curate loop    {np.median(curate_rates):8.1f} samples/s (median, {outcome.data_mode})"
        )
        verdict = "PASS" if ratio >= 0.9 else "FAIL"
        print(f"ratio          {ratio:8.3f}  (median; target >= 0.9: {verdict})")

        loaded = load_clip(None, checkpoint=Path(tmp) / "checkpoint")
        (task,) = evaluate_tasks(
            loaded,
            ["cifar10-test"],
            load_registry(),
            Path(tmp) / "results.jsonl",
            {"run_id": "bench"},
        )
        print(
            f"evaluation     {task.images_per_second:8.1f} images/s  (cifar10-test, 3,000 images)"
        )


if __name__ == "__main__":
    main()
