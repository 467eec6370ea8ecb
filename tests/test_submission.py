"""Submission bundles: a good bundle verifies (directory and .tar.gz); a changed, missing or
added file, a record edited behind a recomputed checksum, and incomparable results are
rejected with the file named."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import polars as pl
import pytest
from result_records import ID_TASK, POOL_ID_TASK, SHIFT_TASK, on_line, write_baselines, write_run
from typer.testing import CliRunner

import curate.cli.results  # noqa: F401  (registers the commands tested here)
from curate.cli.app import app
from curate.core.errors import UserInputError
from curate.core.manifest import Manifest, produced_by
from curate.core.uid import load_subset, make_uid, save_subset
from curate.eval.records import pack_correct, read_records, unpack_correct
from curate.submission import CHECKSUMS_FILE, BundleError, create_bundle, verify_bundle

SLOPE, INTERCEPT = 0.8, -0.6


@pytest.fixture
def subset(tmp_path):
    """A candidate pool with two scored seeds; the baselines live in a separate folder."""
    pool = tmp_path / "pool"
    write_baselines(tmp_path / "baselines", SLOPE, INTERCEPT)
    subset = tmp_path / "subset"
    uids = [make_uid("demo", str(i)) for i in range(50)]
    save_subset(uids, subset / "uids.npy")
    pl.DataFrame({"uid": sorted(uids)}).write_parquet(subset / "uids.parquet")
    (subset / "recipe.yaml").write_text(
        "name: clip-score\nstages:\n  - clip_score: {threshold: 0.2}\n"
    )
    Manifest(
        name="candidate",
        kind="subset",
        source={"pool": str(pool), "pool_name": "pool", "recipe": "clip-score"},
        sample_count=len(uids),
        has_images=False,
        produced_by=produced_by("build-pool"),
    ).write(subset)
    for seed in (0, 1):
        write_run(
            subset,
            f"tiny-seed{seed}",
            {
                ID_TASK: 0.5 + 0.01 * seed,
                SHIFT_TASK: on_line(0.5, SLOPE, INTERCEPT, 0.05),
                POOL_ID_TASK: 0.4,
            },
            pool=str(subset),
            seed=seed,
        )
    return subset


def _bundle(subset, tmp_path, name="bundle"):
    return create_bundle(subset, tmp_path / name, baselines=[tmp_path / "baselines"])


def _rewrite_checksum(bundle, name):
    listing = bundle / CHECKSUMS_FILE
    digest = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    lines = [
        f"{digest}  {name}" if line.endswith(f"  {name}") else line
        for line in listing.read_text().splitlines()
    ]
    listing.write_text("\n".join(lines) + "\n")


def test_bundle_round_trip_and_claimed_er(subset, tmp_path):
    summary = _bundle(subset, tmp_path)
    bundle = summary.path
    assert summary.runs == ("tiny-seed0", "tiny-seed1") and len(summary.baselines) == 5
    for name in ("bundle.json", "config.json", "uids.npy", "recipe.yaml", "baseline_fit.json",
                 "effective_robustness.json", "results/tiny-seed0/results.jsonl",
                 "results/tiny-seed0/run.json", "baselines/baseline-0/results.jsonl"):  # fmt: skip
        assert (bundle / name).is_file(), name
    # checksums.sha256 is sha256sum's format and covers every other file
    lines = (bundle / CHECKSUMS_FILE).read_text().splitlines()
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert sorted(line.split("  ")[1] for line in lines) == [
        f for f in files if f != CHECKSUMS_FILE
    ]
    for line in lines:
        digest, name = line.split("  ")
        assert hashlib.sha256((bundle / name).read_bytes()).hexdigest() == digest
    assert load_subset(bundle / "uids.npy") == sorted(
        pl.read_parquet(subset / "uids.parquet")["uid"]
    )

    # the claimed ER equals an independent OLS on the baseline records
    points = []
    for path in sorted((bundle / "baselines").glob("*/results.jsonl")):
        accuracy = {r["dataset"]: r["metrics"]["acc1"] for r in read_records(path)}
        points.append((accuracy[ID_TASK], accuracy[SHIFT_TASK]))
    x, y = (np.log(np.array(v) / (1 - np.array(v))) for v in zip(*points, strict=True))
    slope, intercept = np.polyfit(x, y, 1)
    claims = json.loads((bundle / "effective_robustness.json").read_text())
    claim = claims[f"{ID_TASK} -> {SHIFT_TASK}"]
    assert claim["fit"]["slope"] == pytest.approx(slope, abs=1e-10)
    run = claim["runs"]["tiny-seed1"]
    expected = run["ood_accuracy"] - 1 / (
        1 + np.exp(-(slope * np.log(run["id_accuracy"] / (1 - run["id_accuracy"])) + intercept))
    )
    assert run["effective_robustness"] == pytest.approx(expected, abs=1e-10)
    assert claim["mean_effective_robustness"] == pytest.approx(0.05, abs=0.01)

    verified = verify_bundle(bundle)
    assert (
        verified.digest
        == summary.digest
        == hashlib.sha256((bundle / CHECKSUMS_FILE).read_bytes()).hexdigest()
    )


def test_tarball_bundle_verifies(subset, tmp_path):
    summary = create_bundle(subset, tmp_path / "bundle.tar.gz", baselines=[tmp_path / "baselines"])
    assert summary.path.is_file()
    assert verify_bundle(summary.path).digest == summary.digest
    result = CliRunner().invoke(app, ["verify", str(summary.path)])
    assert result.exit_code == 0 and "OK" in result.output


def test_verify_rejects_a_changed_file(subset, tmp_path):
    bundle = _bundle(subset, tmp_path).path
    with open(bundle / "recipe.yaml", "a") as handle:
        handle.write("  - dedup: {}\n")
    with pytest.raises(BundleError, match=r"recipe\.yaml: checksum mismatch"):
        verify_bundle(bundle)
    result = CliRunner().invoke(app, ["verify", str(bundle)])
    assert isinstance(result.exception, UserInputError)  # the entry point prints it, exit 2


def test_verify_rejects_a_missing_file(subset, tmp_path):
    bundle = _bundle(subset, tmp_path).path
    (bundle / "uids.npy").unlink()
    with pytest.raises(BundleError, match=r"uids\.npy: listed in checksums\.sha256 but missing"):
        verify_bundle(bundle)


def test_verify_rejects_an_added_file(subset, tmp_path):
    bundle = _bundle(subset, tmp_path).path
    shutil.copy(
        bundle / "results/tiny-seed0/results.jsonl", bundle / "results/tiny-seed0/extra.jsonl"
    )
    with pytest.raises(BundleError, match=r"extra\.jsonl: not listed"):
        verify_bundle(bundle)


def test_verify_rejects_an_edited_record_behind_a_recomputed_checksum(subset, tmp_path):
    """Raise the OOD accuracy of one run consistently (bits and acc1) and fix its checksum:
    the files agree with the checksums, but the claimed ER no longer follows from them."""
    bundle = _bundle(subset, tmp_path).path
    name = "results/tiny-seed0/results.jsonl"
    records = read_records(bundle / name)
    for record in records:
        if record["dataset"] == SHIFT_TASK:
            n = record["metrics"]["n"]
            correct = unpack_correct(record["correct_bits"], n)
            correct[np.flatnonzero(~correct)[:40]] = True
            record["correct_bits"] = pack_correct(correct)
            record["metrics"]["acc1"] = float(correct.mean())
    (bundle / name).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    _rewrite_checksum(bundle, name)
    with pytest.raises(BundleError, match=r"effective_robustness\.json.*tiny-seed0.*claimed"):
        verify_bundle(bundle)


def test_verify_rejects_acc1_that_disagrees_with_the_correct_bits(subset, tmp_path):
    bundle = _bundle(subset, tmp_path).path
    name = "results/tiny-seed1/results.jsonl"
    text = (bundle / name).read_text()
    records = [json.loads(line) for line in text.splitlines()]
    records[0]["metrics"]["acc1"] += 0.1
    (bundle / name).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    _rewrite_checksum(bundle, name)
    with pytest.raises(
        BundleError, match=r"tiny-seed1/results\.jsonl: .* disagrees with its correct_bits"
    ):
        verify_bundle(bundle)


def test_incomparable_results_are_refused_and_rejected(subset, tmp_path):
    write_run(
        subset, "other-setup", {ID_TASK: 0.5, SHIFT_TASK: 0.3, POOL_ID_TASK: 0.4},
        pool=str(subset), key="key-2",
    )  # fmt: skip
    with pytest.raises(UserInputError, match="not comparable: they differ in comparability_key"):
        _bundle(subset, tmp_path)

    shutil.rmtree(subset / "results" / "other-setup")
    bundle = _bundle(subset, tmp_path).path
    name = "results/tiny-seed1/results.jsonl"
    text = (
        (bundle / name)
        .read_text()
        .replace('"comparability_key": "key-1"', '"comparability_key": "key-2"')
    )
    (bundle / name).write_text(text)
    _rewrite_checksum(bundle, name)
    with pytest.raises(
        BundleError, match=r"tiny-seed1/results\.jsonl: not comparable: comparability_key"
    ):
        verify_bundle(bundle)


def test_submit_needs_baselines(subset, tmp_path):
    with pytest.raises(UserInputError, match="no baseline runs found"):
        create_bundle(subset, tmp_path / "bundle")
