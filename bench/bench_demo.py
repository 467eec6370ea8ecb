"""Benchmark: wall time of the main job (`curate demo`) with its stage breakdown.

The machine's speed is measured in the same run, as the samples/s of a bare open_clip training
loop over the same model and data (bench_train.bare_loop), so that a slow or busy machine shows
as such: the report gives the demo's training steps in "bare-loop seconds" next to wall time.

    python bench/bench_demo.py                    # default profile, target < 600 s on 2 cores
    python bench/bench_demo.py --profile smoke
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import bare_loop  # noqa: E402

TARGET_SECONDS = 600


def bare_samples_per_second(steps: int = 20) -> float:
    from curate.core import shipped_data as demo_data
    from curate.training.batches import decode_image_cache
    from curate.training.data import labelled_parquet_training_set
    from curate.training.loop import create_model
    from curate.training.scales import get_scale

    scale = get_scale("demo")
    scale = scale.model_copy(update={"samples_seen": steps * scale.batch_size, "warmup": 1})
    training_set = labelled_parquet_training_set(demo_data.path("cifar10_train"), ["a {}."])
    _, _, tokenizer = create_model(scale, torch.device("cpu"))
    images = decode_image_cache(training_set.images, scale.image_size).float() / 255
    return bare_loop(images, tokenizer(training_set.texts), steps, scale)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default", help="default, full or smoke")
    parser.add_argument("--out", type=Path, help="keep the demo's output here (default: temp)")
    args = parser.parse_args()

    from curate.demo.run import PROFILES, run_demo
    from curate.training.scales import get_scale

    profile = PROFILES[args.profile]
    bare = bare_samples_per_second()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "demo"
        started = time.perf_counter()
        result = run_demo(out, profile=profile, show_progress=False)
        total = time.perf_counter() - started
    trained = (
        get_scale(profile.filter_scale).samples_seen
        + sum(profile.baseline_budgets) * len(profile.baseline_seeds)
        + get_scale(profile.scale).samples_seen * len(profile.recipes) * len(profile.seeds)
    )
    print(f"{'step':<34} {'seconds':>8} {'share':>6}")
    for name, seconds in result.seconds.items():
        print(f"{name:<34} {seconds:8.1f} {seconds / total:6.1%}")
    print(
        f"{'total':<34} {total:8.1f}   (target < {TARGET_SECONDS} s: "
        f"{'PASS' if total < TARGET_SECONDS else 'FAIL'})"
    )
    print(
        f"bare open_clip loop: {bare:.0f} samples/s; the demo trains {trained:,} samples = "
        f"{trained / bare:.0f} bare-loop seconds; ratio total / bare-loop training "
        f"{total / (trained / bare):.2f}"
    )


if __name__ == "__main__":
    main()
