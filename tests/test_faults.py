"""Faults of `curate embed` and `curate score` run as real processes: a second writer of the
same output is refused with an "in use" error while the first holds it, and a first writer
SIGKILLed mid-run, then rerun (in-process, to spare a torch import), ends with exactly what
an uninterrupted run writes.

(ingest and build-pool have the same checks in test_ingest_resume.py and test_build_pool.py;
bench/fault_trials.py runs 20 random-kill trials over all four stages. The last two tests
here pin down the faults those trials found: a kill in the middle of an atomic write, and a
kill of `score` between its final checkpoint and its training summary.)

The first process is frozen (SIGSTOP) once it has finished part of its work, so the second
writer always meets a held lock and the kill always lands mid-run, whatever the load.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import yaml

from curate.core.atomic import staging_dir_for, write_json
from curate.training.scales import SCALES_FILE
from tests.conftest import make_image_bytes

REPO = Path(__file__).resolve().parents[1]
SET_NAME = "fault"
SCALE = "fault-test"
# when a file was made, how long it took, the checkout's commit (may change mid-test), and
# where a resumed training restarted
VOLATILE = frozenset(
    {"created", "updated", "seconds", "samples_per_second", "git_commit", "resumed_from_step"}
)
T = TypeVar("T")


def _run_dir_free(value: object, run_root: str) -> object:
    """A JSON value without wall-clock fields, with the run's own directory replaced."""
    if isinstance(value, dict):
        return {k: _run_dir_free(v, run_root) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_run_dir_free(v, run_root) for v in value]
    return value.replace(run_root, "<RUN>") if isinstance(value, str) else value


def _contents(out: Path, run_root: Path) -> dict[str, object]:
    """Every file of an output: bytes, or for JSON(L) the value minus time fields."""
    found: dict[str, object] = {}
    for path in sorted(out.rglob("*")):
        if not path.is_file() or path.name.endswith(".lock"):
            continue
        name = str(path.relative_to(out))
        if path.suffix == ".json":
            found[name] = _run_dir_free(json.loads(path.read_text("utf-8")), str(run_root))
        elif path.suffix == ".jsonl":
            lines = path.read_text("utf-8").splitlines()
            found[name] = [_run_dir_free(json.loads(line), str(run_root)) for line in lines]
        else:
            found[name] = path.read_bytes()
    return found


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """An 80-sample demo pool in 8 shards, random-init CLIP weights and a 4-step scale."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from curate.demo.pool import build_demo_pool
    from curate.models.configs import register_curate_models

    root = tmp_path_factory.mktemp("faults")
    build_demo_pool(root / "pool", size=80, holdout_size=10, samples_per_shard=10)
    register_curate_models()
    torch.manual_seed(0)
    model, _, _ = open_clip.create_model_and_transforms("curate-tiny-vit-p4")
    save_file(model.state_dict(), root / "weights.safetensors")
    scale = {
        **yaml.safe_load(SCALES_FILE.read_text())["tiny-test"],
        "samples_seen": 128,
        "batch_size": 32,
        "checkpoint_every": 1,
    }
    (root / "scales.yaml").write_text(yaml.safe_dump({SCALE: scale}))
    return root


@pytest.fixture
def one_torch_thread(monkeypatch):
    """One thread, as curate/training/loop.py advises on a shared machine (several times faster)."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _fresh_pool(work: Path, name: str) -> Path:
    run_root = work / name
    shutil.copytree(work / "pool", run_root / "pool")
    return run_root


def _embed_args(work: Path, pool: Path) -> list[str]:
    return ["embed", str(pool), "--model", "curate-tiny-vit-p4", "--pretrained",
            str(work / "weights.safetensors"), "--name", SET_NAME, "--batch-size", "10",
            "--workers", "0"]  # fmt: skip


def _score_args(work: Path, pool: Path) -> list[str]:
    return ["score", str(pool), "--scale", SCALE, "--scales-file", str(work / "scales.yaml"),
            "--tasks", "pool-holdout"]  # fmt: skip


def _curate(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "curate.cli.main", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _run(args: list[str]) -> subprocess.CompletedProcess:
    process = _curate(args)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def _interrupt(
    args: list[str], started_work: Callable[[], bool], second_writer: Callable[[], T]
) -> T:
    """Start ``args``; once it has done some work, freeze it, run ``second_writer``, kill it."""
    first = _curate(args)
    try:
        deadline = time.monotonic() + 120
        while not started_work():
            assert first.poll() is None, f"the first run ended early: {first.communicate()}"
            assert time.monotonic() < deadline, "the first run made no progress"
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)
        second = second_writer()
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    return second


def _assert_refused(second: subprocess.CompletedProcess, target: Path) -> None:
    assert second.returncode == 2, second.stderr
    message = " ".join(second.stderr.split())  # rich wraps long lines
    assert "in use by another curate process" in message and str(target) in message
    assert "Traceback" not in second.stderr


def test_embed_second_writer_is_refused_and_a_killed_run_resumes_to_the_same_set(
    work, one_torch_thread
):
    from curate.embed.pool_embeddings import embed_pool

    embed_params = dict(arch="curate-tiny-vit-p4", name=SET_NAME, batch_size=10,
                        pretrained=str(work / "weights.safetensors"), workers=0,
                        progress=False)  # fmt: skip
    reference = _fresh_pool(work, "embed-reference")
    embed_pool(reference / "pool", **embed_params)

    trial = _fresh_pool(work, "embed-trial")
    out = trial / "pool" / "embeddings" / SET_NAME
    progress = staging_dir_for(out) / "progress.json"

    def a_shard_is_done() -> bool:
        return progress.is_file() and len(json.loads(progress.read_text())["finished"]) >= 1

    args = _embed_args(work, trial / "pool")
    second = _interrupt(args, a_shard_is_done, lambda: _run(args))
    _assert_refused(second, out)
    assert not out.exists()  # killed before publishing
    finished_before = json.loads(progress.read_text())["finished"]
    assert 1 <= len(finished_before) < 8

    rerun = embed_pool(trial / "pool", **embed_params)  # in-process: one torch import less
    assert rerun.shards_total - len(rerun.shards_computed) == len(finished_before)  # resumed
    expected = _contents(reference / "pool" / "embeddings" / SET_NAME, reference)
    assert {"image.npy", "text.npy", "clip_score.parquet", "meta.json"} <= set(expected)
    assert _contents(out, trial) == expected


def test_score_second_writer_is_refused_and_a_killed_run_resumes_to_the_same_model(
    work, one_torch_thread
):
    from curate.core.errors import InUseError
    from curate.runs.score import TRAIN_STATE, score

    reference = _fresh_pool(work, "score-reference")
    score(reference / "pool", scale_name=SCALE, scales_file=work / "scales.yaml",
          tasks=["pool-holdout"], show_progress=False)  # fmt: skip
    results = reference / "pool" / "results"
    (run_id,) = [p.name for p in results.iterdir() if p.is_dir()]

    trial = _fresh_pool(work, "score-trial")
    run_dir = trial / "pool" / "results" / run_id

    def second_writer() -> str:  # in-process: the CLI's exit 2 on "in use" is checked for embed
        with pytest.raises(InUseError) as refused:
            score(trial / "pool", scale_name=SCALE, scales_file=work / "scales.yaml",
                  tasks=["pool-holdout"], show_progress=False)  # fmt: skip
        return str(refused.value)

    message = _interrupt(
        _score_args(work, trial / "pool"), (run_dir / TRAIN_STATE).is_file, second_writer
    )
    assert f"{run_dir} is in use by another curate process" in message
    assert not (run_dir / "checkpoint").exists()  # killed mid-training

    rerun = score(trial / "pool", scale_name=SCALE, scales_file=work / "scales.yaml",
                  tasks=["pool-holdout"], show_progress=False)  # fmt: skip
    assert rerun.run["train"]["resumed_from_step"] >= 1
    expected = _contents(results, reference)
    assert f"{run_id}/checkpoint/model.safetensors" in expected
    assert f"{run_id}/results.jsonl" in expected
    assert _contents(trial / "pool" / "results", trial) == expected


def test_a_resumed_pool_is_published_without_the_temporaries_of_the_killed_run(tmp_path):
    """A kill during an atomic write (here progress.json's) leaves ``.NAME.tmp-PID`` in the
    staging pool: the run that resumes it must not publish that file."""
    from curate.core.pool_writer import PoolWriter, SourceSample

    samples = [SourceSample(source="test", where=f"row {i}", text=f"caption {i}",
                            image=make_image_bytes(i)) for i in range(6)]  # fmt: skip

    def writer(out: Path) -> PoolWriter:
        return PoolWriter(out, name="p", source={"type": "test"}, command="test",
                          samples_per_shard=2)  # fmt: skip

    with writer(tmp_path / "reference") as reference:
        reference.extend(samples)
    out = tmp_path / "pool"
    with pytest.raises(KeyboardInterrupt), writer(out) as killed:  # stands in for the kill
        killed.extend(samples[:3])
        raise KeyboardInterrupt
    staging = staging_dir_for(out)
    first_shard = (staging / "shards" / "00000.tar").stat().st_ino
    (staging / ".progress.json.tmp-4242").write_text('{"shards_do')
    with writer(out) as resumed:
        resumed.extend(samples)
    assert (out / "shards" / "00000.tar").stat().st_ino == first_shard  # resumed, not redone
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert names == sorted(str(p.relative_to(tmp_path / "reference"))
                           for p in (tmp_path / "reference").rglob("*"))  # fmt: skip
    for shard in ("00000.tar", "00001.tar", "00002.tar"):
        expected = (tmp_path / "reference" / "shards" / shard).read_bytes()
        assert (out / "shards" / shard).read_bytes() == expected


def test_score_killed_between_its_final_checkpoint_and_summary_trains_again(work, one_torch_thread):
    """``train_state.pt`` is removed once the final checkpoint is written, before score records
    the loss curve and the training summary: the rerun of a run killed in between trains again
    instead of recording a run without them (and drops the killed run's write temporaries)."""
    from curate.eval.records import RESULTS_FILE
    from curate.runs.score import RUN_FILE, TRAIN_CURVE, score

    run_root = _fresh_pool(work, "score-summary")
    pool = run_root / "pool"
    options = dict(scale_name=SCALE, scales_file=work / "scales.yaml", tasks=["pool-holdout"],
                   show_progress=False)  # fmt: skip
    first = score(pool, **options)
    expected = _contents(pool / "results", run_root)
    # what a kill right after the final checkpoint leaves on disk
    (first.run_dir / TRAIN_CURVE).unlink()
    (first.run_dir / RESULTS_FILE).unlink()
    run = json.loads((first.run_dir / RUN_FILE).read_text("utf-8"))
    del run["train"], run["updated"]
    write_json(first.run_dir / RUN_FILE, {**run, "status": "training"})
    (first.run_dir / ".train_state.pt.tmp-4242").write_bytes(b"PK\x03\x04")

    again = score(pool, **options)
    assert again.trained
    assert _contents(pool / "results", run_root) == expected
