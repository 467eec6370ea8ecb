"""Submission bundles: a candidate pool's uids, recipe and scored results, checkable by anyone.

``curate submit`` writes a directory (or ``.tar.gz``)::

    BUNDLE/
      bundle.json                 what this is: subset, sample count, runs, producer
      config.json                 the setup: comparability key, scale, samples seen, run config
      uids.npy                    the kept uids, DataComp's subset format (sorted u8,u8 pairs)
      recipe.yaml                 the recipe that built the candidate pool
      results/<run_id>/           results.jsonl + run.json of each scored run (seeds)
      baselines/<run_id>/         the baseline runs the ER is measured against
      baseline_fit.json           the logit-linear (and multi-ID) baseline fits
      effective_robustness.json   the claimed ER per run and shift, and the seed means
      checksums.sha256            sha256 of every other file (``sha256sum -c`` reads it)

``curate verify`` recomputes everything it can: checksums, completeness, the uids file,
per-task accuracy against the recorded per-image correctness, comparability of the runs with
the bundle's config, and the baseline fits and ER from the bundled records. The sha256 of
``checksums.sha256`` is the bundle's digest: publish it with the bundle.

A CLIP trained on the candidate pool elsewhere (open_clip) and evaluated with DataComp's eval
or CLIP_benchmark is bundled from its imported results (``curate import-results``) instead
(``curate submit SUBSET --external DIR --model ARCH/TAG``; ``bundle.json`` says ``kind``)::

    BUNDLE/
      bundle.json                 kind "external-model", subset, sample count, model
      config.json                 setup external:imagenet-testbed, the model's identity, its
                                  tasks and test sizes, the testbed table's sha256, ER settings
      uids.npy, recipe.yaml       as above
      external_results.parquet    the model's imported rows (EXTERNAL_SCHEMA), no other model
      effective_robustness.json   the claimed ER per shift and averaged, with intervals
      checksums.sha256

Its baseline is not a set of runs but the ImageNet testbed's table shipped with curate;
``curate verify`` checks that table's sha256 and recomputes the ER (same bootstrap seed, so the
same intervals). One bundle holds one setup: curate's own runs and an imported model are never
bundled, or compared, together.
"""

from __future__ import annotations

import json
import math
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.core.atomic import (
    atomic_path,
    publish_directory,
    staging_dir_for,
    write_json,
    write_parquet,
)
from curate.core.errors import InputNotFoundError, OutputExistsError, UserInputError
from curate.core.hashing import file_sha256
from curate.core.kept_uids import kept_uids
from curate.core.layout import MANIFEST, SubsetLayout
from curate.core.manifest import Manifest, produced_by, read_manifest
from curate.eval.baselines import tiny_baseline_fit, tiny_baseline_plane
from curate.eval.collect import KIND_POOL_ID, RUN_FILE, RunResult, collect_runs, load_run
from curate.eval.effective_robustness import effective_robustness, multi_id_effective_robustness
from curate.eval.external_er import (
    AVERAGE,
    DEFAULT_BOOTSTRAP,
    DEFAULT_CONFIDENCE,
    ID_TASK,
    SHIFT_TO_TESTBED,
    external_effective_robustness,
)
from curate.eval.external_results import (
    EXTERNAL_RESULTS_FILE,
    EXTERNAL_RESULTS_KIND,
    EXTERNAL_SCHEMA,
    check_unique_model_tasks,
)
from curate.eval.records import RESULTS_FILE
from curate.eval.testbed import TESTBED_CSV
from curate.leaderboard.external import EXTERNAL_SETUP, load_external_results

BUNDLE_FORMAT = "curate-submission"
BUNDLE_VERSION = 1
MANIFEST_FILE = "bundle.json"
CONFIG_FILE = "config.json"
UIDS_FILE = "uids.npy"
RECIPE_FILE = "recipe.yaml"
FIT_FILE = "baseline_fit.json"
ER_FILE = "effective_robustness.json"
CHECKSUMS_FILE = "checksums.sha256"
RESULTS_DIR = "results"
BASELINES_DIR = "baselines"
REQUIRED_FILES = (MANIFEST_FILE, CONFIG_FILE, UIDS_FILE, RECIPE_FILE, FIT_FILE, ER_FILE)
EXTERNAL_REQUIRED_FILES = (
    MANIFEST_FILE, CONFIG_FILE, UIDS_FILE, RECIPE_FILE, EXTERNAL_RESULTS_FILE, ER_FILE,
)  # fmt: skip
KIND_RUNS = "curate-runs"
"""bundle.json ``kind`` of curate's own scored runs (also a bundle.json without ``kind``)."""
KIND_EXTERNAL = "external-model"
"""bundle.json ``kind`` of one imported model (``curate submit --external``)."""
TOLERANCE = 1e-9
_MODEL_IDENTITY = (
    "model", "arch", "pretrained", "training_data", "training_data_scale", "training_filter",
    "samples_seen",
)  # fmt: skip
_ER_ROW_FIELDS = (
    "testbed_column", "x_axis", "baseline_piece", "id_accuracy", "ood_accuracy",
    "predicted_ood_accuracy", "effective_robustness", "er_low", "er_high", "extrapolated",
    "n_id", "n_ood", "interval_covers",
)  # fmt: skip


class BundleError(UserInputError):
    """A bundle failed verification; the message names each file at fault."""


@dataclass(frozen=True)
class BundleSummary:
    path: Path
    digest: str
    files: int
    runs: tuple[str, ...]
    baselines: tuple[str, ...]
    effective_robustness: dict[str, Any]
    kind: str = KIND_RUNS
    model: str | None = None
    """The imported model of a ``KIND_EXTERNAL`` bundle."""


def _is_tarball(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz"))


def _bundle_files(root: Path) -> list[str]:
    return sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and path.name != CHECKSUMS_FILE
    )


def er_claims(runs: Sequence[RunResult], baselines: Sequence[RunResult]) -> dict[str, Any]:
    """Baseline fits and per-run ER for every ID -> shift pair of the runs (point estimates).

    Deterministic, so that :func:`verify_bundle` can recompute it from the bundled records.
    """
    pairs = sorted({pair for run in runs for pair in run.shift_pairs()})
    pool_ids = sorted({task for run in runs for task in run.tasks_of_kind(KIND_POOL_ID)})
    claims: dict[str, Any] = {}
    for id_task, shift_task in pairs:
        entry: dict[str, Any] = {"id_task": id_task, "shift_task": shift_task}
        try:
            fit = tiny_baseline_fit(baselines, id_task, shift_task)
        except UserInputError as error:
            entry.update(fit=None, problem=str(error), runs={})
            claims[f"{id_task} -> {shift_task}"] = entry
            continue
        plane = None
        if pool_ids:
            try:
                plane = tiny_baseline_plane(baselines, (id_task, pool_ids[0]), shift_task)
            except UserInputError as error:
                entry["multi_id_problem"] = str(error)
        per_run = {}
        for run in runs:
            er = effective_robustness(run.accuracy(id_task), run.accuracy(shift_task), fit)
            row = {
                "id_accuracy": er.id_accuracy,
                "ood_accuracy": er.ood_accuracy,
                "predicted_ood_accuracy": er.predicted_ood_accuracy,
                "effective_robustness": er.value,
            }
            if plane is not None:
                accuracies = [run.accuracy(task) for task in plane.id_tasks]
                row["multi_id_effective_robustness"] = multi_id_effective_robustness(
                    accuracies, run.accuracy(shift_task), plane
                ).value
            per_run[run.run_id] = row
        values = [row["effective_robustness"] for row in per_run.values()]
        entry.update(
            fit=fit.to_dict(),
            multi_id_fit=None if plane is None else plane.to_dict(),
            runs=per_run,
            mean_effective_robustness=float(np.mean(values)),
            std_effective_robustness=float(np.std(values, ddof=1)) if len(values) > 1 else None,
        )
        claims[f"{id_task} -> {shift_task}"] = entry
    return claims


def _setup(runs: Sequence[RunResult]) -> dict[str, Any]:
    """The one setup all runs share, or a UserInputError naming the mismatch."""
    for field in ("comparability_key", "scale", "samples_seen", "pool", "recipe"):
        values = {getattr(run, field) for run in runs}
        if len(values) > 1:
            listing = ", ".join(f"{run.run_id}={getattr(run, field)!r}" for run in runs)
            raise UserInputError(
                f"the results are not comparable: they differ in {field} ({listing}); a bundle "
                "holds the seeds of one candidate pool under one setup"
            )
    first = runs[0]
    return {
        "comparability_key": first.comparability_key,
        "scale": first.scale,
        "samples_seen": first.samples_seen,
        "pool": first.pool,
        "recipe": first.recipe,
        "seeds": sorted(run.seed for run in runs if run.seed is not None),
        "eval_tasks": sorted(first.tasks),
        "run_config": dict(first.config),
    }


def _copy_run(run: RunResult, destination: Path) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run.results_path, destination / RESULTS_FILE)
    run_file = run.run_dir / RUN_FILE
    if run_file.is_file():
        shutil.copyfile(run_file, destination / RUN_FILE)


def _unique_ids(runs: Sequence[RunResult], what: str) -> None:
    seen: dict[str, Path] = {}
    for run in runs:
        if run.run_id in seen:
            raise UserInputError(
                f"two {what} runs share run_id {run.run_id!r} ({seen[run.run_id]} and "
                f"{run.results_path}); pass only one of them"
            )
        seen[run.run_id] = run.results_path


def _write_checksums(root: Path) -> str:
    lines = [f"{file_sha256(root / name)}  {name}\n" for name in _bundle_files(root)]
    (root / CHECKSUMS_FILE).write_text("".join(lines), "utf-8")
    return file_sha256(root / CHECKSUMS_FILE)


def create_bundle(
    subset: Path,
    out: Path,
    *,
    results: Sequence[Path] = (),
    baselines: Sequence[Path] = (),
    external: Path | None = None,
    model: str | None = None,
    n_boot: int = DEFAULT_BOOTSTRAP,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    overwrite: bool = False,
) -> BundleSummary:
    """Bundle a candidate pool with its scored runs (default: ``SUBSET/results``), or with one
    CLIP trained on it elsewhere: ``external`` (the --out of `curate import-results`) and
    ``model`` (its id there; optional when the folder holds one model).

    ``n_boot``, ``confidence`` and ``seed`` set the bootstrap of an imported model's ER
    interval (:func:`curate.eval.external_er.external_effective_robustness`).
    """
    if external is not None and (results or baselines):
        raise UserInputError(
            "pass either --external (a model trained and evaluated elsewhere) or "
            "--results/--baselines (curate's own runs), not both: a bundle holds one setup, and "
            "different setups are never compared"
        )
    if external is None and model is not None:
        raise UserInputError(
            f"--model {model!r} names an imported model: pass it with --external DIR (the --out "
            "of `curate import-results`)"
        )
    subset, out = Path(subset), Path(out)
    manifest, layout = _candidate_pool(subset, out, overwrite)
    if external is not None:
        return _create_external_bundle(
            subset, out, manifest, layout, Path(external), model,
            n_boot=n_boot, confidence=confidence, seed=seed, overwrite=overwrite,
        )  # fmt: skip

    result_runs = [run for run in collect_runs(results or [subset]) if not run.baseline]
    if not result_runs:
        raise UserInputError(
            f"no scored runs found in {', '.join(map(str, results or [subset]))}; score the "
            "candidate pool first (`curate score`) or pass --results"
        )
    _unique_ids(result_runs, "result")
    setup = _setup(result_runs)
    baseline_roots = list(baselines) or [subset, *_parent_pool(manifest.source)]
    baseline_runs = [run for run in collect_runs(baseline_roots) if run.baseline]
    if not baseline_runs:
        raise UserInputError(
            f"no baseline runs found in {', '.join(map(str, baseline_roots))}; pass --baselines "
            "DIR (the --out of `curate baseline`): effective robustness is measured against them"
        )
    _unique_ids(baseline_runs, "baseline")
    claims = er_claims(result_runs, baseline_runs)

    staging = _new_staging(out)
    sample_count = _stage_candidate_pool(layout, staging)
    for run in result_runs:
        _copy_run(run, staging / RESULTS_DIR / run.run_id)
    for run in baseline_runs:
        _copy_run(run, staging / BASELINES_DIR / run.run_id)
    write_json(staging / CONFIG_FILE, setup)
    write_json(
        staging / FIT_FILE,
        {
            key: {"fit": entry["fit"], "multi_id_fit": entry.get("multi_id_fit")}
            for key, entry in claims.items()
        },
    )
    write_json(staging / ER_FILE, claims)
    write_json(
        staging / MANIFEST_FILE,
        {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_VERSION,
            "kind": KIND_RUNS,
            "subset": _subset_entry(subset, manifest, sample_count),
            "results": sorted(run.run_id for run in result_runs),
            "baselines": sorted(run.run_id for run in baseline_runs),
            "comparability_key": setup["comparability_key"],
            "produced_by": produced_by("submit", subset=str(subset)),
        },
    )
    digest, files = _publish(staging, out, overwrite)
    return BundleSummary(
        path=out,
        digest=digest,
        files=files,
        runs=tuple(sorted(run.run_id for run in result_runs)),
        baselines=tuple(sorted(run.run_id for run in baseline_runs)),
        effective_robustness=claims,
    )


def _candidate_pool(subset: Path, out: Path, overwrite: bool) -> tuple[Manifest, SubsetLayout]:
    manifest = read_manifest(subset)
    if manifest.kind != "subset":
        raise UserInputError(
            f"{subset} is a {manifest.kind}, not a candidate pool; pass the output of "
            "`curate build-pool`"
        )
    layout = SubsetLayout(subset)
    if not layout.recipe.is_file():
        raise InputNotFoundError(f"{layout.recipe} is missing; rebuild the candidate pool")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists; pass --overwrite to replace it")
    return manifest, layout


def _bundle_name(out: Path) -> str:
    return out.name.removesuffix(".tar.gz").removesuffix(".tgz")


def _new_staging(out: Path) -> Path:
    staging = staging_dir_for(out.with_name(_bundle_name(out)))
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def _stage_candidate_pool(layout: SubsetLayout, staging: Path) -> int:
    """Copy the uids (DataComp's .npy) and the recipe into the bundle; the uid count."""
    from curate.core.uid import load_subset, save_subset

    if layout.uids_npy.is_file():
        shutil.copyfile(layout.uids_npy, staging / UIDS_FILE)
    else:
        save_subset(kept_uids(layout), staging / UIDS_FILE)
    shutil.copyfile(layout.recipe, staging / RECIPE_FILE)
    return len(load_subset(staging / UIDS_FILE))


def _subset_entry(subset: Path, manifest: Manifest, sample_count: int) -> dict[str, Any]:
    return {
        "name": manifest.name,
        "path": str(subset.resolve()),
        "sample_count": sample_count,
        "source": manifest.source,
    }


def _publish(staging: Path, out: Path, overwrite: bool) -> tuple[str, int]:
    """Write the checksums, then move the bundle to ``out`` (or pack it); digest, file count."""
    digest = _write_checksums(staging)
    files = len(_bundle_files(staging)) + 1
    if _is_tarball(out):
        with atomic_path(out) as tmp:
            with tarfile.open(tmp, "w:gz") as archive:
                archive.add(staging, arcname=_bundle_name(out))
        shutil.rmtree(staging)
    else:
        publish_directory(staging, out, overwrite=overwrite)
    return digest, files


# --- an imported model (curate import-results) --------------------------------------------------


def _imported_model(folder: Path, model: str | None) -> pl.DataFrame:
    """The rows of one model of an import folder; a one-line error naming the folder otherwise."""
    if not (folder / MANIFEST).is_file():
        raise InputNotFoundError(
            f"{folder}: not a `curate import-results` folder ({MANIFEST} is missing); import the "
            f"model's results first: curate import-results FILES --out {folder}"
        )
    kind = read_manifest(folder).kind
    if kind != EXTERNAL_RESULTS_KIND:
        raise UserInputError(
            f"{folder} is a {kind}, not imported results; pass the --out of "
            "`curate import-results` as --external"
        )
    table = load_external_results([folder])
    where = folder / EXTERNAL_RESULTS_FILE
    models = sorted(table["model"].unique().to_list())
    if model is None:
        if len(models) != 1:
            listing = ", ".join(models[:5]) + (", ..." if len(models) > 5 else "")
            raise UserInputError(
                f"{where} holds {len(models)} models; pass --model ARCH/TAG to choose one "
                f"({listing})"
            )
        model = models[0]
    elif model not in models:
        from difflib import get_close_matches

        close = get_close_matches(model, models, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserInputError(f"{where}: no model {model!r}{hint}")
    return table.filter(pl.col("model") == model)


def _model_identity(rows: pl.DataFrame) -> dict[str, Any]:
    """Who the model is (arch, pretrained tag, training data, samples seen; null if unknown)."""
    return rows.select(_MODEL_IDENTITY).row(0, named=True)


def _task_sizes(rows: pl.DataFrame) -> dict[str, int | None]:
    """Each imported task and its test-set size (null where unknown)."""
    return dict(rows.sort("task").select("task", "n_test").iter_rows())


def external_er_claims(
    rows: pl.DataFrame, *, n_boot: int, confidence: float, seed: int
) -> dict[str, Any]:
    """The claimed ER of one imported model on each testbed shift and on average, with the
    interval and labels of :func:`~curate.eval.external_er.external_effective_robustness`.

    Measured on the model's rows alone, against the shipped testbed table: deterministic for a
    given seed, so that :func:`verify_bundle` can recompute it from the bundled rows.
    """
    er = external_effective_robustness(
        rows, testbed_path=TESTBED_CSV, n_boot=n_boot, confidence=confidence, seed=seed
    )
    by_shift = {
        row["shift"]: {field: row[field] for field in _ER_ROW_FIELDS}
        for row in er.table.iter_rows(named=True)
    }
    if not by_shift:
        raise UserInputError(
            f"model {rows['model'][0]!r} has no {ID_TASK} accuracy or no ImageNet shift "
            f"({', '.join(SHIFT_TO_TESTBED)}): its effective robustness against the testbed's "
            "line needs both"
        )
    low, high = er.id_range
    return {
        "comparability_key": EXTERNAL_SETUP,
        "model": rows["model"][0],
        "id_task": ID_TASK,
        "n_boot": n_boot,
        "confidence": confidence,
        "seed": seed,
        "not_extrapolated_id_range": [low, high],
        "shifts": {shift: by_shift[shift] for shift in SHIFT_TO_TESTBED if shift in by_shift},
        "average": by_shift.get(AVERAGE),
        "skipped": dict(sorted(er.skipped.items())),
    }


def _external_config(
    rows: pl.DataFrame, testbed_sha256: str, n_boot: int, confidence: float, seed: int
) -> dict[str, Any]:
    return {
        "comparability_key": EXTERNAL_SETUP,
        "model": _model_identity(rows),
        "tasks": _task_sizes(rows),
        "baseline": {"testbed_table": TESTBED_CSV.name, "testbed_sha256": testbed_sha256},
        "effective_robustness": {"n_boot": n_boot, "confidence": confidence, "seed": seed},
    }


def _create_external_bundle(
    subset: Path,
    out: Path,
    manifest: Manifest,
    layout: SubsetLayout,
    folder: Path,
    model: str | None,
    *,
    n_boot: int,
    confidence: float,
    seed: int,
    overwrite: bool,
) -> BundleSummary:
    rows = _imported_model(folder, model)
    model = rows["model"][0]
    try:
        claims = external_er_claims(rows, n_boot=n_boot, confidence=confidence, seed=seed)
    except UserInputError as error:
        raise UserInputError(f"{folder / EXTERNAL_RESULTS_FILE}: {error}") from None
    staging = _new_staging(out)
    sample_count = _stage_candidate_pool(layout, staging)
    write_parquet(staging / EXTERNAL_RESULTS_FILE, rows)
    config = _external_config(rows, file_sha256(TESTBED_CSV), n_boot, confidence, seed)
    write_json(staging / CONFIG_FILE, config)
    write_json(staging / ER_FILE, claims)
    write_json(
        staging / MANIFEST_FILE,
        {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_VERSION,
            "kind": KIND_EXTERNAL,
            "subset": _subset_entry(subset, manifest, sample_count),
            "model": model,
            "external_results": str(folder.resolve()),
            "comparability_key": EXTERNAL_SETUP,
            "produced_by": produced_by("submit", subset=str(subset), external=str(folder)),
        },
    )
    digest, files = _publish(staging, out, overwrite)
    return BundleSummary(
        path=out,
        digest=digest,
        files=files,
        runs=(model,),
        baselines=(),
        effective_robustness=claims,
        kind=KIND_EXTERNAL,
        model=model,
    )


def _parent_pool(source: dict[str, Any]) -> list[Path]:
    pool = source.get("pool")
    return [Path(pool)] if pool and Path(pool).is_dir() else []


@contextmanager
def _opened(bundle: Path) -> Iterator[Path]:
    """The bundle's root directory (a ``.tar.gz`` is extracted to a temporary folder)."""
    if not bundle.exists():
        raise InputNotFoundError(f"{bundle} does not exist")
    if bundle.is_dir():
        yield bundle
        return
    if not _is_tarball(bundle):
        raise BundleError(f"{bundle}: not a bundle directory or .tar.gz")
    with tempfile.TemporaryDirectory(prefix="curate-verify-") as tmp:
        try:
            with tarfile.open(bundle, "r:gz") as archive:
                archive.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError) as error:
            raise BundleError(f"{bundle}: unreadable archive ({error})") from None
        entries = list(Path(tmp).iterdir())
        yield entries[0] if len(entries) == 1 and entries[0].is_dir() else Path(tmp)


def _check_checksums(root: Path) -> list[str]:
    listing = root / CHECKSUMS_FILE
    if not listing.is_file():
        return [f"{CHECKSUMS_FILE} is missing: the bundle is incomplete"]
    problems, listed = [], set()
    for number, line in enumerate(listing.read_text("utf-8").splitlines(), start=1):
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            problems.append(f"{CHECKSUMS_FILE} line {number}: not '<sha256>  <file>'")
            continue
        listed.add(name)
        path = root / name
        if ".." in Path(name).parts or not path.is_file():
            problems.append(f"{name}: listed in {CHECKSUMS_FILE} but missing from the bundle")
        elif file_sha256(path) != digest:
            problems.append(
                f"{name}: checksum mismatch (the file changed after the bundle was made)"
            )
    for name in _bundle_files(root):
        if name not in listed:
            problems.append(
                f"{name}: not listed in {CHECKSUMS_FILE} (added after the bundle was made)"
            )
    return problems


def _read_json(root: Path, name: str, problems: list[str]) -> Any:
    try:
        return json.loads((root / name).read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        problems.append(f"{name}: unreadable ({error})")
        return None


def _load_runs(root: Path, folder: str, problems: list[str]) -> list[RunResult]:
    runs = []
    for path in sorted((root / folder).glob(f"*/{RESULTS_FILE}")):
        try:
            runs.append(load_run(path))
        except UserInputError as error:
            problems.append(str(error).replace(str(root) + "/", ""))
    return runs


def _check_records(root: Path, runs: Sequence[RunResult], problems: list[str]) -> None:
    for run in runs:
        where = run.results_path.relative_to(root).as_posix()
        if run.run_id != run.run_dir.name:
            problems.append(f"{where}: run_id {run.run_id!r} does not match its folder")
        for task in run.tasks.values():
            if task.correct is not None and task.accuracy is not None:
                if abs(float(task.correct.mean()) - task.accuracy) > TOLERANCE:
                    problems.append(
                        f"{where}: {task.task} acc1 {task.accuracy} disagrees with its "
                        f"correct_bits ({task.correct.mean()})"
                    )


def _differences(claimed: Any, actual: Any, path: str) -> list[str]:
    if isinstance(claimed, dict) and isinstance(actual, dict):
        out = []
        for key in sorted(set(claimed) | set(actual)):
            if key not in claimed or key not in actual:
                out.append(f"{path}.{key}: {'missing' if key not in claimed else 'unexpected'}")
            else:
                out += _differences(claimed[key], actual[key], f"{path}.{key}")
        return out
    if isinstance(claimed, list) and isinstance(actual, list) and len(claimed) == len(actual):
        return [
            d
            for i, (c, a) in enumerate(zip(claimed, actual, strict=True))
            for d in _differences(c, a, f"{path}[{i}]")
        ]
    numbers = (int, float)
    if (
        isinstance(claimed, numbers)
        and isinstance(actual, numbers)
        and not isinstance(claimed, bool)
    ):
        if math.isclose(claimed, actual, rel_tol=0, abs_tol=TOLERANCE):
            return []
        return [f"{path}: claimed {claimed!r}, the bundled records give {actual!r}"]
    return (
        []
        if claimed == actual
        else [f"{path}: claimed {claimed!r}, the bundled records give {actual!r}"]
    )


def _check_uids(root: Path, manifest: dict[str, Any]) -> list[str]:
    from curate.core.uid import SUBSET_DTYPE

    subset = manifest.get("subset")
    sample_count = subset.get("sample_count") if isinstance(subset, dict) else None
    try:
        pairs = np.load(root / UIDS_FILE, allow_pickle=False)
    except (OSError, ValueError) as error:
        return [f"{UIDS_FILE}: unreadable ({error})"]
    if pairs.dtype != SUBSET_DTYPE:
        return [f"{UIDS_FILE}: dtype {pairs.dtype}, expected DataComp's u8,u8"]
    if not np.array_equal(pairs, np.sort(pairs)):
        return [f"{UIDS_FILE}: uids are not sorted"]
    if len(pairs) != sample_count:
        return [f"{UIDS_FILE}: {len(pairs)} uids but {MANIFEST_FILE} says {sample_count}"]
    return []


def _mixed_setups(root: Path, kind: str) -> list[str]:
    """Files of the other kind of bundle: curate's own runs and an imported model never mix."""
    never = "different setups are never compared"
    if kind == KIND_EXTERNAL:
        return [
            f"{name}: curate's own runs in a bundle of an imported model ({MANIFEST_FILE} kind "
            f"{KIND_EXTERNAL!r}): {never}"
            for name in (RESULTS_DIR, BASELINES_DIR, FIT_FILE)
            if (root / name).exists()
        ]
    if (root / EXTERNAL_RESULTS_FILE).exists():
        return [
            f"{EXTERNAL_RESULTS_FILE}: an imported model's results in a bundle of curate's own "
            f"runs ({MANIFEST_FILE} kind {KIND_RUNS!r}): {never}"
        ]
    return []


def verify_bundle(bundle: Path) -> BundleSummary:
    """Re-check a bundle; raise :class:`BundleError` listing every problem (file first).

    ``bundle.json``'s ``kind`` says what the bundle holds: curate's own runs (``KIND_RUNS``;
    also a bundle without ``kind``) or one imported model (``KIND_EXTERNAL``).
    """
    bundle = Path(bundle)
    with _opened(bundle) as root:
        problems = _check_checksums(root)
        manifest: Any = None
        if (root / MANIFEST_FILE).is_file():
            manifest = _read_json(root, MANIFEST_FILE, problems)
            if manifest is not None and not isinstance(manifest, dict):
                problems.append(f"{MANIFEST_FILE}: not a JSON object")
                manifest = None
        kind = manifest.get("kind", KIND_RUNS) if manifest is not None else KIND_RUNS
        if kind not in (KIND_RUNS, KIND_EXTERNAL):
            problems.append(
                f"{MANIFEST_FILE}: unknown kind {kind!r} (this curate verifies {KIND_RUNS!r} and "
                f"{KIND_EXTERNAL!r} bundles)"
            )
        for name in EXTERNAL_REQUIRED_FILES if kind == KIND_EXTERNAL else REQUIRED_FILES:
            if not (root / name).is_file():
                problems.append(f"{name}: missing: the bundle is incomplete")
        problems += _mixed_setups(root, kind)
        if problems:
            raise BundleError(_report(bundle, problems))
        if kind == KIND_EXTERNAL:
            return _verify_external(bundle, root, manifest)
        config = _read_json(root, CONFIG_FILE, problems)
        claims = _read_json(root, ER_FILE, problems)
        fits = _read_json(root, FIT_FILE, problems)
        if problems:
            raise BundleError(_report(bundle, problems))

        problems += _check_uids(root, manifest)
        runs = _load_runs(root, RESULTS_DIR, problems)
        baselines = _load_runs(root, BASELINES_DIR, problems)
        for folder, names, found in (
            (RESULTS_DIR, manifest.get("results", []), runs),
            (BASELINES_DIR, manifest.get("baselines", []), baselines),
        ):
            present = {run.run_id for run in found}
            problems += [
                f"{folder}/{name}/{RESULTS_FILE}: listed in {MANIFEST_FILE} but missing"
                for name in names
                if name not in present
            ]
        if not runs:
            problems.append(f"{RESULTS_DIR}/: no scored runs: the bundle is incomplete")
        _check_records(root, runs + baselines, problems)
        problems += [
            f"{RESULTS_DIR}/{run.run_id}/{RESULTS_FILE}: a baseline run among the results"
            for run in runs
            if run.baseline
        ]
        problems += [
            f"{BASELINES_DIR}/{run.run_id}/{RESULTS_FILE}: not a baseline run (run.baseline false)"
            for run in baselines
            if not run.baseline
        ]
        for run in runs:
            for field in ("comparability_key", "scale", "samples_seen"):
                if getattr(run, field) != config.get(field):
                    problems.append(
                        f"{RESULTS_DIR}/{run.run_id}/{RESULTS_FILE}: not comparable: {field} is "
                        f"{getattr(run, field)!r} but {CONFIG_FILE} says {config.get(field)!r}"
                    )
        if manifest.get("comparability_key") != config.get("comparability_key"):
            problems.append(f"{MANIFEST_FILE}: comparability_key differs from {CONFIG_FILE}")
        if problems:
            raise BundleError(_report(bundle, problems))

        try:
            recomputed = json.loads(json.dumps(er_claims(runs, baselines), default=str))
        except UserInputError as error:
            raise BundleError(
                _report(bundle, [f"{ER_FILE}: cannot recompute ER ({error})"])
            ) from None
        problems += _differences(claims, recomputed, ER_FILE)
        recomputed_fits = {
            key: {"fit": entry["fit"], "multi_id_fit": entry.get("multi_id_fit")}
            for key, entry in recomputed.items()
        }
        problems += _differences(fits, recomputed_fits, FIT_FILE)
        if problems:
            raise BundleError(_report(bundle, problems))
        return BundleSummary(
            path=bundle,
            digest=file_sha256(root / CHECKSUMS_FILE),
            files=len(_bundle_files(root)) + 1,
            runs=tuple(sorted(run.run_id for run in runs)),
            baselines=tuple(sorted(run.run_id for run in baselines)),
            effective_robustness=recomputed,
        )


def _verify_external(bundle: Path, root: Path, manifest: dict[str, Any]) -> BundleSummary:
    """Re-check a bundle of one imported model: its rows, config, the testbed table, its ER."""
    problems: list[str] = []
    config = _read_json(root, CONFIG_FILE, problems)
    claims = _read_json(root, ER_FILE, problems)
    if problems:
        raise BundleError(_report(bundle, problems))
    if not isinstance(config, dict):
        raise BundleError(_report(bundle, [f"{CONFIG_FILE}: not a JSON object"]))
    problems += _check_uids(root, manifest)
    rows = _bundled_rows(root, problems)
    if rows is not None:
        identity = _model_identity(rows)
        problems += _differences(config.get("model"), identity, f"{CONFIG_FILE}.model")
        problems += _differences(config.get("tasks"), _task_sizes(rows), f"{CONFIG_FILE}.tasks")
        if manifest.get("model") != identity["model"]:
            problems.append(
                f"{MANIFEST_FILE}: model {manifest.get('model')!r}, but "
                f"{EXTERNAL_RESULTS_FILE} holds {identity['model']!r}"
            )
    for name, key in ((CONFIG_FILE, config.get("comparability_key")),
                      (MANIFEST_FILE, manifest.get("comparability_key"))):  # fmt: skip
        if key != EXTERNAL_SETUP:
            problems.append(
                f"{name}: comparability_key {key!r}, expected {EXTERNAL_SETUP!r} for an "
                "imported model"
            )
    baseline = config.get("baseline")
    claimed_sha = baseline.get("testbed_sha256") if isinstance(baseline, dict) else None
    shipped_sha = file_sha256(TESTBED_CSV)
    if claimed_sha != shipped_sha:
        problems.append(
            f"{CONFIG_FILE}: baseline.testbed_sha256 {claimed_sha!r} is not the sha256 of the "
            f"testbed table this curate ships ({TESTBED_CSV.name}: {shipped_sha}); the ER was "
            "measured against another baseline line: verify with the curate version in "
            f"{MANIFEST_FILE} produced_by"
        )
    settings = config.get("effective_robustness")
    n_boot = settings.get("n_boot") if isinstance(settings, dict) else None
    confidence = settings.get("confidence") if isinstance(settings, dict) else None
    seed = settings.get("seed") if isinstance(settings, dict) else None
    if not (
        isinstance(n_boot, int)
        and isinstance(seed, int)
        and isinstance(confidence, int | float)
        and not any(isinstance(v, bool) for v in (n_boot, seed, confidence))
    ):
        problems.append(
            f"{CONFIG_FILE}: effective_robustness must give n_boot and seed (integers) and "
            f"confidence (a number); found {settings!r}"
        )
    if problems or rows is None:
        raise BundleError(_report(bundle, problems))

    try:
        recomputed = json.loads(
            json.dumps(
                external_er_claims(rows, n_boot=n_boot, confidence=confidence, seed=seed),
                default=str,
            )
        )
    except UserInputError as error:
        raise BundleError(_report(bundle, [f"{ER_FILE}: cannot recompute ER ({error})"])) from None
    problems += _differences(claims, recomputed, ER_FILE)
    if problems:
        raise BundleError(_report(bundle, problems))
    return BundleSummary(
        path=bundle,
        digest=file_sha256(root / CHECKSUMS_FILE),
        files=len(_bundle_files(root)) + 1,
        runs=(identity["model"],),
        baselines=(),
        effective_robustness=recomputed,
        kind=KIND_EXTERNAL,
        model=identity["model"],
    )


def _bundled_rows(root: Path, problems: list[str]) -> pl.DataFrame | None:
    """The bundle's imported rows in EXTERNAL_SCHEMA: one model, each task once."""
    try:
        rows = pl.read_parquet(root / EXTERNAL_RESULTS_FILE)
    except (OSError, pl.exceptions.PolarsError) as error:
        problems.append(f"{EXTERNAL_RESULTS_FILE}: unreadable ({error})")
        return None
    missing = [column for column in EXTERNAL_SCHEMA if column not in rows.columns]
    if missing:
        problems.append(f"{EXTERNAL_RESULTS_FILE}: missing columns {missing}")
        return None
    try:
        rows = rows.select(list(EXTERNAL_SCHEMA)).cast(EXTERNAL_SCHEMA)
    except pl.exceptions.PolarsError as error:
        problems.append(f"{EXTERNAL_RESULTS_FILE}: columns of the wrong type ({error})")
        return None
    models = rows["model"].unique().to_list()
    if len(models) != 1:
        problems.append(
            f"{EXTERNAL_RESULTS_FILE}: {len(models)} models ({', '.join(map(str, models))}); a "
            "bundle holds one imported model"
        )
        return None
    try:
        check_unique_model_tasks(rows)
    except UserInputError as error:
        problems.append(f"{EXTERNAL_RESULTS_FILE}: {error}")
        return None
    return rows


def _report(bundle: Path, problems: Sequence[str]) -> str:
    return f"bundle {bundle} failed verification:\n  - " + "\n  - ".join(problems)
