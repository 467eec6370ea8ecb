"""Throughput of `curate ingest` on img2dataset output against plain webdataset iteration.

Generates an img2dataset-style folder (NNNNN.tar with key.jpg/.txt/.json, NNNNN.parquet with
one row per url including ~1% failed downloads, NNNNN_stats.json) of small real JPEGs, then
times, in this run on this machine:

- ``webdataset``: iterating the same tars with ``webdataset.WebDataset`` (no decoding), the
  floor any reader pays;
- ``webdataset + decode``: the same, decoding every image with PIL (what validating costs);
- ``curate ingest``: decode-check, sha256, caption checks, uid, new shards, samples.parquet,
  report and atomic publish.

The ratio ingest / webdataset (samples/s) is the number to watch.

    python bench/bench_ingest.py [--samples 100000] [--dir PATH] [--keep]

Image bytes are reused (a few hundred distinct 32x32 JPEGs): the bench measures throughput,
not deduplication. Generation is not timed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import webdataset as wds  # noqa: E402
from PIL import Image  # noqa: E402

from curate.ingest import ingest  # noqa: E402

DISTINCT_IMAGES = 512
FAILED_EVERY = 97  # about 1% of urls "failed to download", as in real img2dataset output


def _images(count: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        # smooth gradients plus noise: JPEG sizes like real thumbnails (~1 KB), not pure noise
        base = np.linspace(0, 255, 32, dtype=np.float32)
        pixels = base[None, :, None] * rng.random(3) + base[:, None, None] * rng.random(3)
        pixels += rng.normal(0, 12, (32, 32, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG")
        images.append(buffer.getvalue())
    return images


def generate(folder: Path, samples: int, per_shard: int = 10_000) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    images = _images(DISTINCT_IMAGES)
    words = ["red", "small", "old", "bright", "dog", "house", "tree", "car", "river", "city"]
    for shard in range(-(-samples // per_shard)):
        rows = []
        stop = min(per_shard, samples - shard * per_shard)
        with wds.TarWriter(str(folder / f"{shard:05d}.tar")) as sink:
            for i in range(stop):
                index = shard * per_shard + i
                key = f"{shard:05d}{i:04d}"
                caption = f"a {words[index % 10]} {words[(index // 10) % 10]} photo number {index}"
                failed = index % FAILED_EVERY == FAILED_EVERY - 1
                meta = {
                    "url": f"http://example.com/{index}.jpg",
                    "caption": caption,
                    "key": key,
                    "status": "failed_to_download" if failed else "success",
                    "error_message": "HTTP Error 404: Not Found" if failed else None,
                    "width": None if failed else 32,
                    "height": None if failed else 32,
                    "original_width": None if failed else 32,
                    "original_height": None if failed else 32,
                    "exif": None if failed else "{}",
                    "sha256": None,
                }
                rows.append(meta)
                if not failed:
                    image = images[index % DISTINCT_IMAGES]
                    sink.write(
                        {
                            "__key__": key,
                            "jpg": image,
                            "txt": caption.encode(),
                            "json": json.dumps(meta).encode(),
                        }
                    )
        pl.DataFrame(rows, infer_schema_length=None).write_parquet(folder / f"{shard:05d}.parquet")
        successes = sum(r["status"] == "success" for r in rows)
        stats = {
            "count": len(rows),
            "successes": successes,
            "failed_to_download": len(rows) - successes,
            "failed_to_resize": 0,
        }
        (folder / f"{shard:05d}_stats.json").write_text(json.dumps(stats))


def time_webdataset(folder: Path, decode: bool) -> tuple[int, float]:
    started = time.perf_counter()
    tars = [str(p) for p in sorted(folder.glob("*.tar"))]
    count = 0
    for sample in wds.WebDataset(tars, shardshuffle=False):
        if decode:
            with Image.open(io.BytesIO(sample["jpg"])) as image:
                image.load()
        count += 1
    return count, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, help="where to generate (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    args = parser.parse_args()

    root = args.dir or Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    folder = root / "img2dataset"
    try:
        started = time.perf_counter()
        if not any(folder.glob("*.tar")):
            generate(folder, args.samples)
        print(f"data: {folder} ({time.perf_counter() - started:.0f}s to prepare)")

        count, plain_seconds = time_webdataset(folder, decode=False)
        _, decode_seconds = time_webdataset(folder, decode=True)
        out = root / "pool"
        shutil.rmtree(out, ignore_errors=True)
        result = ingest(folder, out, overwrite=True)
        ingested = result.report["accepted"]
        assert ingested == count, (ingested, count)
        skipped = result.report["skipped_by_reason"]

        plain = count / plain_seconds
        decoded = count / decode_seconds
        rate = ingested / result.seconds
        print(f"samples in tars: {count:,}; failed downloads counted as skips: {skipped}")
        print(f"webdataset iterate      : {plain:9,.0f} samples/s ({plain_seconds:6.1f}s)")
        print(f"webdataset iterate+decode: {decoded:8,.0f} samples/s ({decode_seconds:6.1f}s)")
        print(f"curate ingest           : {rate:9,.0f} samples/s ({result.seconds:6.1f}s)")
        print(f"ratio ingest / webdataset iterate       : {rate / plain:.2f}")
        print(f"ratio ingest / webdataset iterate+decode: {rate / decoded:.2f}")
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
