"""`--executor local|ray`: ingest, embed and build-pool --reshard write the same bytes in this
process, in a local process pool and on a real local Ray instance (started once for the
module), and the same bytes as the sequential pool writer (the reference computation).
A run killed part-way resumes from its finished parts."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import open_clip
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import curate.cli.main
import curate.ingest.hf_parquet
from curate.build_pool.build import build_pool
from curate.build_pool.recipe import parse_recipe
from curate.cli.app import app
from curate.core.atomic import staging_dir_for
from curate.core.errors import UserInputError
from curate.core.executor import Executor, LocalExecutor, RayExecutor, make_executor
from curate.core.pool import Pool
from curate.core.uid import make_uid
from curate.embed.pool_embeddings import embed_pool
from curate.ingest import ingest
from curate.models.configs import register_curate_models
from tests.conftest import make_image_bytes

# when a file was made or how long a step took: the only fields allowed to differ
VOLATILE = frozenset({"created", "updated", "seconds", "git_commit"})
ARCH = "curate-tiny-vit-p4"
RECIPE = "name: wide\nseed: 0\nstages:\n  - stage: where\n    params: {keep: 'width > 25'}\n"


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


class Recording(Executor):
    """Another executor, recording how many parts each of its map calls was given (so a
    test knows the parts really ran on it); closing it leaves the other one open."""

    def __init__(self, inner: Executor) -> None:
        self.inner, self.calls = inner, []

    def map(self, fn, parts, *, gpus=0, threads_ok=False):
        if not threads_ok:  # build-pool's table tasks (threads_ok) are counted elsewhere
            self.calls.append(len(parts))
        return self.inner.map(fn, parts, gpus=gpus, threads_ok=threads_ok)


@pytest.fixture(scope="module")
def shared_executors(ray_instance) -> Iterator[dict[str, Executor]]:
    """One of each, for the whole module (a local pool's processes start once)."""
    executors = {"local1": LocalExecutor(1), "local2": LocalExecutor(2), "ray": RayExecutor()}
    yield executors
    for executor in executors.values():
        executor.close()


@pytest.fixture
def executors(shared_executors) -> dict[str, Recording]:
    return {name: Recording(executor) for name, executor in shared_executors.items()}


def _normalised(value: object) -> object:
    if isinstance(value, dict):
        return {k: _normalised(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_normalised(v) for v in value]
    return value


def _contents(root: Path) -> dict[str, object]:
    """Every file's bytes; JSON without its wall-clock fields, parquet with such columns
    compared by value without them."""
    found: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.endswith(".lock"):
            continue
        name = str(path.relative_to(root))
        if path.suffix == ".json":
            found[name] = _normalised(json.loads(path.read_text("utf-8")))
        elif path.suffix == ".parquet" and VOLATILE & set(pq.read_schema(path).names):
            found[name] = pl.read_parquet(path).drop(VOLATILE, strict=False).to_dicts()
        else:
            found[name] = path.read_bytes()
    return found


def _img2dataset(root: Path, tars: int = 3, per_tar: int = 7) -> Path:
    """img2dataset's layout with what ingest must skip or keep exactly: failed downloads,
    a bad image, an empty caption, one uid in five valid samples of three tars, nested
    extras, and a tar whose metadata is only in its json members."""
    root.mkdir(parents=True)
    repeated = make_uid("web", "repeated")
    for t in range(tars):
        rows = []
        with tarfile.open(root / f"{t:05d}.tar", "w") as archive:
            for i in range(per_tar):
                key, n = f"{t:05d}{i:04d}", t * per_tar + i
                image = b"not an image" if n == 4 else make_image_bytes(n, (24 + n % 9, 20 + n % 5))
                caption = "" if n == 9 else f"caption {n} " + "x" * (n % 4)
                uid = repeated if i in (2, 5) else make_uid("web", str(n))
                meta = {"key": key, "url": f"http://x/{n}.jpg", "uid": uid, "score": n / 7,
                        "tag": None if n % 3 else "a",
                        "nested": {"a": n} if n % 2 else {"b": [n, n + 1]}}  # fmt: skip
                members = {"jpg": image, "txt": caption.encode(), "json": json.dumps(meta).encode()}
                for extension, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{extension}")
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
                rows.append({"key": key, "status": "success", "error_message": None,
                             "url": meta["url"], "uid": uid, "score": n / 7})  # fmt: skip
        rows.append({"key": f"{t:05d}9999", "status": "failed_to_download", "error_message": "404",
                     "url": f"http://x/gone{t}", "uid": None, "score": None})  # fmt: skip
        if t != 1:
            pl.DataFrame(rows).write_parquet(root / f"{t:05d}.parquet")
    return root


def _hf_parquet(path: Path) -> Path:
    """600 images in the `datasets` layout in row groups of 250, 250 and 100; a few rows with
    broken image bytes or empty captions."""
    images = [make_image_bytes(i, (16 + i % 7, 16)) for i in range(600)]
    for i in (3, 301, 599):
        images[i] = images[i][:40]  # truncated: fails to decode
    table = pa.table(
        {
            "image": [{"bytes": b, "path": None} for b in images],
            "text": ["" if i % 97 == 5 else f"photo {i}" for i in range(600)],
            "label": [i % 10 for i in range(600)],
        }
    )
    pq.write_table(table, path, row_group_size=250)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("executor")
    _img2dataset(root / "i2d")
    _hf_parquet(root / "photos.parquet")
    return root


@pytest.fixture(scope="module")
def sequential(inputs) -> dict[str, Path]:
    """The reference: the sequential pool writer, no executor."""
    ingest(inputs / "i2d", inputs / "sequential/i2d/pool", samples_per_shard=4)
    ingest(inputs / "photos.parquet", inputs / "sequential/hf/pool", samples_per_shard=64)
    return {"i2d": inputs / "sequential/i2d/pool", "hf": inputs / "sequential/hf/pool"}


def test_reference_pools_hold_what_the_inputs_say(sequential):
    report = json.loads((sequential["i2d"] / "ingest_report.json").read_text())
    repeated = f"duplicate uid {make_uid('web', 'repeated')}"
    assert report["skipped_by_reason"] == {
        "download failed": 2,  # tar 1 has no parquet, so no failed rows listed
        "cannot decode image": 1,
        repeated: 4,  # the first of five is kept
        "empty caption": 1,
    }
    assert report["accepted"] == 21 - 6 == Pool.open(sequential["i2d"]).manifest.sample_count
    hf = json.loads((sequential["hf"] / "ingest_report.json").read_text())
    assert hf["skipped_by_reason"] == {"cannot decode image": 3, "empty caption": 7}
    assert len(Pool.open(sequential["hf"]).shard_paths()) == -(-590 // 64)


def test_ingest_writes_the_same_bytes_on_every_executor(inputs, sequential, executors, monkeypatch):
    # 100-row parts: the 250-row groups are split, the 100-row group is one part
    monkeypatch.setattr(curate.ingest.hf_parquet, "PART_ROWS", 100)
    expected = {name: _contents(pool) for name, pool in sequential.items()}
    for run, executor in executors.items():
        for name, source, per_shard in (
            ("i2d", inputs / "i2d", 4),
            ("hf", inputs / "photos.parquet", 64),
        ):
            out = inputs / run / name / "pool"
            ingest(source, out, samples_per_shard=per_shard, executor=executor)
            assert _contents(out) == expected[name], (run, name)
        # (parts validated, shards written) of each source: 3 tars; 3 + 3 + 1 row blocks
        assert executor.calls == [3, 4, 7, 10], run


class Crash(Exception):
    pass


class CrashingExecutor(LocalExecutor):
    """In-process; raises after ``after`` results of its ``crash_in``-th map call, and
    records how many parts each map call was given."""

    def __init__(self, crash_in: int | None = None, after: int = 0) -> None:
        super().__init__(workers=1)
        self.crash_in, self.after, self.calls = crash_in, after, []

    def map(self, fn, parts, *, gpus=0, threads_ok=False):
        if threads_ok:  # build-pool's table tasks: not the calls these tests count
            return super().map(fn, parts, threads_ok=True)
        self.calls.append(len(parts))
        results = super().map(fn, parts)
        if len(self.calls) - 1 != self.crash_in:
            return results
        return self._crash_after(results)

    def _crash_after(self, results):
        results = iter(results)
        for _ in range(self.after):
            yield next(results)
        raise Crash


def test_parallel_ingest_resumes_from_finished_parts_and_shards(inputs, sequential, monkeypatch):
    monkeypatch.setattr(curate.ingest.hf_parquet, "PART_ROWS", 250)  # a part per row group
    out = inputs / "resumed" / "hf" / "pool"
    source = inputs / "photos.parquet"
    with pytest.raises(Crash):  # validation: crash after 1 of 3 parts
        ingest(source, out, samples_per_shard=64, executor=CrashingExecutor(0, after=1))
    with pytest.raises(Crash):  # shards: crash after 4 of 10 shards
        ingest(source, out, samples_per_shard=64, executor=CrashingExecutor(1, after=4))
    staging = staging_dir_for(out)
    finished = {p.name: p.stat().st_mtime_ns for p in (staging / "shards").glob("*.tar")}
    assert sorted(finished) == [f"{i:05d}.tar" for i in range(4)]

    executor = CrashingExecutor()
    ingest(source, out, samples_per_shard=64, executor=executor)
    assert executor.calls == [0, 6]  # no part validated again; 6 shards left to write
    assert {n: (out / "shards" / n).stat().st_mtime_ns for n in finished} == finished
    assert _contents(out) == _contents(sequential["hf"])


@pytest.fixture(scope="module")
def checkpoint(inputs) -> Path:
    register_curate_models()
    torch.manual_seed(0)
    model = open_clip.create_model(ARCH).eval()
    path = inputs / "checkpoint"
    path.mkdir()
    save_file(model.state_dict(), str(path / "model.safetensors"))
    (path / "model_config.json").write_text(json.dumps({"arch": ARCH}))
    return path


def test_embed_writes_the_same_bytes_on_every_executor(
    sequential, checkpoint, shared_executors, tmp_path
):
    pool = tmp_path / "pool"
    shutil.copytree(sequential["i2d"], pool)  # 15 samples in 4 shards
    run = dict(arch=None, checkpoint=checkpoint, name="e", batch_size=3, progress=False)
    embed_pool(pool, workers=0, **run)  # the model in this process, no decoding workers
    expected = _contents(pool / "embeddings" / "e")
    vectors = np.load(pool / "embeddings/e/image.npy")
    assert vectors.shape == (15, 96) and vectors.dtype == np.float16
    assert np.all(np.abs(np.linalg.norm(vectors.astype(np.float32), axis=1) - 1) < 2e-3)
    variants = {
        "local, 2 decoding workers": {"workers": 2},
        "local tasks, in process": {"executor": Recording(LocalExecutor(1))},
        "ray tasks": {"executor": Recording(shared_executors["ray"])},
    }
    for label, options in variants.items():
        report = embed_pool(pool, overwrite=True, **run, **options)
        assert len(report.shards_computed) == 4, label
        assert _contents(pool / "embeddings" / "e") == expected, label
        if "executor" in options:
            assert options["executor"].calls == [4], label  # a task per shard


def _check_resharded(out: Path, pool: Path) -> None:
    """The candidate's own shards hold the kept samples' images, in pool order."""
    parent = Pool.open(pool)
    kept = parent.samples().filter(pl.col("width") > 25)
    samples = pl.read_parquet(out / "samples.parquet")
    assert samples["uid"].to_list() == kept["uid"].to_list() and kept.height == 11
    assert samples["key"].to_list() == [f"{i // 3:05d}{i % 3:04d}" for i in range(kept.height)]
    with_images = Pool(out, parent.manifest)  # reads shards/ under the candidate
    assert with_images.read_images(samples) == parent.read_images(kept)


def test_reshard_writes_the_same_bytes_on_every_executor(sequential, executors, tmp_path):
    recipe = parse_recipe(RECIPE, source="wide.yaml")
    pool = sequential["i2d"]
    reference = tmp_path / "in-process" / "candidate"
    build_pool(recipe, pool, reference, reshard=True, samples_per_shard=3)
    _check_resharded(reference, pool)
    expected = _contents(reference)
    for run, executor in executors.items():
        out = tmp_path / run / "candidate"
        build_pool(recipe, pool, out, reshard=True, samples_per_shard=3, executor=executor)
        assert _contents(out) == expected, run
        assert executor.calls == [4], run  # 11 kept samples, 3 a shard


def test_reshard_resumes_after_a_crash(sequential, tmp_path):
    recipe = parse_recipe(RECIPE, source="wide.yaml")
    out = tmp_path / "candidate"
    with pytest.raises(Crash):
        build_pool(recipe, sequential["i2d"], out, reshard=True, samples_per_shard=3,
                   executor=CrashingExecutor(0, after=2))  # fmt: skip
    executor = CrashingExecutor()
    build_pool(recipe, sequential["i2d"], out, reshard=True, samples_per_shard=3,
               executor=executor)  # fmt: skip
    assert executor.calls == [2]  # 4 shards, 2 finished before the crash
    _check_resharded(out, sequential["i2d"])


def test_cli_ingest_with_ray(inputs, sequential, ray_instance):
    out = inputs / "cli-ray" / "i2d" / "pool"
    command = ["ingest", str(inputs / "i2d"), "--out", str(out), "--samples-per-shard", "4",
               "--quiet", "--executor", "ray"]  # fmt: skip
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "15 samples ingested" in result.output
    assert _contents(out) == _contents(sequential["i2d"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--executor", "spark"], "unknown executor 'spark' (--executor): choose local or ray"),
        (["--ray-address", "auto"], "--ray-address is for --executor ray"),
        (["--workers", "0"], "Invalid value for '--workers'"),
    ],
)
def test_cli_rejects_a_bad_executor_in_one_line(inputs, monkeypatch, capsys, options, message):
    out = inputs / "never"
    monkeypatch.setattr("sys.argv", ["curate", "ingest", str(inputs / "i2d"), "--out", str(out),
                                     *options])  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        curate.cli.main.main()
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
    assert not out.exists()


def test_ray_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # import ray fails
    with pytest.raises(UserInputError, match=r"pip install 'curate\[ray\]'"):
        make_executor("ray")


def test_local_pool_gives_results_in_input_order():
    with LocalExecutor(2) as executor:
        assert list(executor.map(os.path.basename, [f"/x/{i}" for i in range(9)])) == [
            str(i) for i in range(9)
        ]
