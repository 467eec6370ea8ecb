"""Throughput of `curate embed` against a bare loop over the same images, model and batch.

The bare loop is what one would write by hand: read each shard's tar, decode and preprocess
every image, tokenise the captions and run the model, in one process, keeping the vectors in
memory. `curate embed` adds DataLoader workers, row mapping, memory-mapped float16 output,
progress records, clip_score.parquet and an atomic publish. Both are timed in this run on
this machine, alternately, best of --repeats each (the machine may be shared); the ratio
(embed / bare, images/s) is the number to watch.

    python bench/bench_embed.py [--images 2000] [--batch-size 256] [--workers N] [--repeats 3]

Images come from CIFAR-10 test in /work/shared/data when present, else generated.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from curate.core.pool import Pool  # noqa: E402
from curate.core.pool_writer import PoolWriter, SourceSample  # noqa: E402
from curate.embed.pool_embeddings import default_workers, embed_pool  # noqa: E402
from curate.models.configs import register_curate_models  # noqa: E402
from curate.models.loading import load_clip  # noqa: E402

ARCH = "curate-tiny-vit-p4"
CIFAR_TEST = Path("/work/shared/data/cifar10/test.parquet")


def source_samples(count: int):
    if CIFAR_TEST.is_file():
        table = pl.read_parquet(CIFAR_TEST).head(count)
        for i, (image, name) in enumerate(table.select("image", "class_name").iter_rows()):
            yield SourceSample("cifar10", f"row {i}", f"a photo of a {name}", image["bytes"])
        return
    rng = np.random.default_rng(0)
    for i in range(count):
        buffer = io.BytesIO()
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, format="JPEG")
        yield SourceSample("generated", f"row {i}", f"generated image {i}", buffer.getvalue())


def bare_loop(pool: Pool, loaded, batch_size: int) -> int:
    model, preprocess, tokenizer = loaded.model, loaded.preprocess, loaded.tokenizer
    texts = dict(pool.samples(columns=["key", "text"]).iter_rows())
    image_vectors, text_vectors = [], []

    def run(images, captions):
        with torch.inference_mode():
            image = model.encode_image(torch.stack(images))
            text = model.encode_text(tokenizer(captions))
        image_vectors.append(F.normalize(image, dim=-1).half().numpy())
        text_vectors.append(F.normalize(text, dim=-1).half().numpy())

    for shard in sorted({s for s in pool.samples(columns=["shard"])["shard"]}):
        images, captions = [], []
        for key, _, data in pool.iter_images(shard):
            images.append(preprocess(Image.open(io.BytesIO(data))))
            captions.append(texts[key])
            if len(images) == batch_size:
                run(images, captions)
                images, captions = [], []
        if images:
            run(images, captions)
    return sum(len(v) for v in image_vectors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    register_curate_models()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with PoolWriter(
            root / "pool",
            name="bench",
            source={"type": "bench"},
            command="bench",
            samples_per_shard=1000,
        ) as writer:
            writer.extend(source_samples(args.images))
        checkpoint = root / "checkpoint"
        checkpoint.mkdir()
        save_file(open_clip.create_model(ARCH).state_dict(), str(checkpoint / "model.safetensors"))
        (checkpoint / "model_config.json").write_text(json.dumps({"arch": ARCH}))

        loaded = load_clip(None, checkpoint=checkpoint)
        pool = Pool.open(root / "pool")
        bare_loop(pool, loaded, args.batch_size)  # warm-up: page cache, allocator, threads
        bare_rates, embed_rates = [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            count = bare_loop(pool, loaded, args.batch_size)
            bare_rates.append(count / (time.perf_counter() - started))
            report = embed_pool(
                root / "pool",
                arch=None,
                checkpoint=checkpoint,
                batch_size=args.batch_size,
                workers=args.workers,
                progress=False,
                overwrite=True,
            )
            embed_rates.append(report.images_per_second)
    print(
        f"images: {count} ({'CIFAR-10 test' if CIFAR_TEST.is_file() else 'generated'}), "
        f"batch {args.batch_size}, torch threads {torch.get_num_threads()}, "
        f"embed workers {args.workers}"
    )
    print(f"bare loop:    {max(bare_rates):8.0f} images/s (runs: {_rates(bare_rates)})")
    print(f"curate embed: {max(embed_rates):8.0f} images/s (runs: {_rates(embed_rates)})")
    print(f"ratio embed / bare (best of {args.repeats}): {max(embed_rates) / max(bare_rates):.2f}")


def _rates(rates: list[float]) -> str:
    return ", ".join(f"{rate:.0f}" for rate in rates)


if __name__ == "__main__":
    main()
