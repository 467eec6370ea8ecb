"""`--executor local|ray`: ingest and embed of the same input on each executor, timed in this
run against one local worker (ratios > 1 are faster than one worker).

Generates img2dataset-style output (``bench_ingest.generate``: 32x32 JPEGs, ~1% failed
downloads) in 8 tars, then times:

- ingest: the sequential writer (no executor), ``local`` with 1 worker (the parallel path's
  two passes, in this process: its overhead), ``local`` with 2 workers, and ``ray`` (a local
  Ray instance with every core; its start-up is timed apart and not in the ratio);
- embed (a randomly initialised ``curate-tiny-vit-p4``, batch 256): ``local`` with 1 and 2
  decoding workers (the model in this process), one task per shard in 2 local processes,
  and one task per shard on Ray.

Every run's output is checked to be the same bytes as the first one's.

    python bench/bench_executor.py [--samples 4000] [--dir PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# light imports only: the local workers are spawned and import this module again
from bench_ingest import generate  # noqa: E402  (beside this file)

from curate.core.executor import LocalExecutor, RayExecutor  # noqa: E402
from curate.ingest import ingest  # noqa: E402

ARCH = "curate-tiny-vit-p4"
TARS = 8


def digest(root: Path) -> str:
    """Hash of every file but the manifest/meta (they hold creation times and paths)."""
    hasher = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name not in ("manifest.json", "meta.json"):
            hasher.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return hasher.hexdigest()


def timed(label: str, run: Callable[[], Path], results: list[tuple[str, float, str]]) -> None:
    started = time.perf_counter()
    out = run()
    results.append((label, time.perf_counter() - started, digest(out)))


def report(title: str, results: list[tuple[str, float, str]], count: int, baseline: str) -> None:
    base = dict((label, seconds) for label, seconds, _ in results)[baseline]
    print(f"\n{title} ({count:,} samples; ratio = {baseline} time / this time)")
    for label, seconds, _ in results:
        print(
            f"  {label:34s} {seconds:6.1f}s {count / seconds:8,.0f}/s  ratio {base / seconds:.2f}"
        )
    same = len({output for _, _, output in results}) == 1
    print(f"  identical outputs: {same}")
    if not same:
        sys.exit(f"{title}: the executors wrote different bytes")


def checkpoint(root: Path) -> Path:
    import open_clip
    import torch
    from safetensors.torch import save_file

    from curate.models.configs import register_curate_models

    register_curate_models()
    torch.manual_seed(0)
    path = root / "checkpoint"
    path.mkdir()
    save_file(open_clip.create_model(ARCH).state_dict(), str(path / "model.safetensors"))
    (path / "model_config.json").write_text(json.dumps({"arch": ARCH}))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--dir", type=Path, help="where to work (default: a temp dir)")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="bench_executor_"))
    source = root / "img2dataset"
    try:
        generate(source, args.samples, per_shard=-(-args.samples // TARS))
        print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
        started = time.perf_counter()
        ray_executor = RayExecutor()
        print(f"ray start-up (local instance): {time.perf_counter() - started:.1f}s")

        def ingest_with(name: str, executor) -> Callable[[], Path]:
            out = root / name / "pool"
            return lambda: ingest(source, out, samples_per_shard=500, executor=executor).pool

        ingests: list[tuple[str, float, str]] = []
        with LocalExecutor(1) as one, LocalExecutor(2) as two:
            timed("sequential writer (no executor)", ingest_with("sequential", None), ingests)
            timed("local, 1 worker", ingest_with("local1", one), ingests)
            timed("local, 2 workers", ingest_with("local2", two), ingests)
            timed("ray", ingest_with("ray", ray_executor), ingests)
        accepted = json.loads((root / "sequential/pool/ingest_report.json").read_text())
        report("ingest", ingests, accepted["accepted"], "local, 1 worker")

        from curate.embed.pool_embeddings import embed_pool

        pool = root / "sequential" / "pool"
        weights = checkpoint(root)

        def embed_with(**options) -> Callable[[], Path]:
            def run() -> Path:
                embed_pool(pool, arch=None, checkpoint=weights, name="bench", overwrite=True,
                           progress=False, **options)  # fmt: skip
                return pool / "embeddings" / "bench"

            return run

        embeds: list[tuple[str, float, str]] = []
        with LocalExecutor(2) as two:
            timed("local, 1 decoding worker", embed_with(workers=1), embeds)
            timed("local, 2 decoding workers", embed_with(workers=2), embeds)
            timed("task per shard, 2 local processes", embed_with(executor=two), embeds)
            timed("task per shard, ray", embed_with(executor=ray_executor), embeds)
        report("embed", embeds, accepted["accepted"], "local, 1 decoding worker")
        ray_executor.close()
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
