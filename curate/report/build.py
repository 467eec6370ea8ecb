"""`curate report DIR`: gather what is under DIR and write ``OUT/index.html`` plus the plots.

DIR holds pools, candidate pools and scored results (the demo's folder, or a user's); they are
found by their manifests and by ``results/<run_id>/results.jsonl``. The page is built in a
staging folder beside OUT and renamed into place when complete.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from curate.build_pool.ground_truth import NOISE_COLUMN
from curate.core.atomic import staged_output, write_text
from curate.core.candidate_pool import Subset
from curate.core.errors import UserInputError
from curate.core.manifest import code_version
from curate.core.pool import Pool
from curate.eval.collect import collect_runs
from curate.report.candidates import (
    ROW,
    CandidateView,
    candidate_view,
    pick_samples,
    pool_rows,
    read_decisions,
)
from curate.report.discover import discover
from curate.report.external_plot import ExternalView, external_view
from curate.report.html import render_page
from curate.report.images import read_thumbnails
from curate.report.results import ResultsView, describe_code_version, results_view

INDEX = "index.html"
DEFAULT_OUT = "report"
SAMPLES_PER_GROUP = 6


@dataclass(frozen=True)
class PoolView:
    name: str
    anchor: str
    path: str
    samples: int
    has_images: bool
    has_holdout: bool
    sources: tuple[tuple[str, int], ...]
    noise: tuple[tuple[str, int], ...]  # the demo pool's ground truth, empty elsewhere


@dataclass(frozen=True)
class ReportPage:
    title: str
    runs_dir: str
    generated: str
    code_version: str
    pools: tuple[PoolView, ...]
    candidates: tuple[CandidateView, ...]
    results: ResultsView | None
    run_count: int
    problems: tuple[str, ...]
    external: ExternalView | None = None  # published CLIPs' ER by training data (--external)


@dataclass(frozen=True)
class ReportResult:
    out: Path
    index: Path
    files: tuple[Path, ...]
    pools: int
    candidates: int
    runs: int
    seconds: float


def _anchor(prefix: str, index: int, name: str) -> str:
    return f"{prefix}-{index}-{re.sub(r'[^0-9a-zA-Z_-]+', '-', name).strip('-').lower()}"


def _display_path(path: Path, runs_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(runs_dir)) or "."
    except ValueError:
        return str(path)


def _counts(pool: Pool, column: str) -> tuple[tuple[str, int], ...]:
    if column not in pool.scan_samples().collect_schema().names():
        return ()
    counts = (
        pool.scan_samples()
        .group_by(pl.col(column).cast(pl.String).fill_null("(none)"))
        .agg(pl.len().alias("count"))
        .sort(["count", column], descending=[True, False])
        .collect()
    )
    return tuple((str(value), int(n)) for value, n in counts.iter_rows())


def pool_view(pool: Pool, index: int, runs_dir: Path) -> PoolView:
    return PoolView(
        name=pool.name,
        anchor=_anchor("pool", index, pool.name),
        path=_display_path(pool.root, runs_dir),
        samples=pool.manifest.sample_count,
        has_images=pool.manifest.has_images,
        has_holdout=pool.layout.holdout.is_file(),
        sources=_counts(pool, "source"),
        noise=_counts(pool, NOISE_COLUMN),
    )


def build_report(
    runs_dir: Path | str,
    out: Path | str | None = None,
    *,
    overwrite: bool = False,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    samples_per_group: int = SAMPLES_PER_GROUP,
    on_step: Callable[[str], None] | None = None,
    external: Path | str | None = None,
) -> ReportResult:
    """Write the report of everything under ``runs_dir`` to ``out`` (default DIR/report).

    ``external``: an `import-results` folder or results file (or ``"openclip"``, the shipped
    table) whose published CLIPs get a section of ER by training data.
    """
    started = time.perf_counter()
    step = on_step or (lambda message: None)
    runs_dir = Path(runs_dir).resolve()
    out = Path(out) if out is not None else runs_dir / DEFAULT_OUT
    if samples_per_group < 0:
        raise UserInputError(f"--samples must be 0 or more, not {samples_per_group}")
    with staged_output(out, overwrite=overwrite) as staging:
        step(f"looking for pools, candidate pools and results under {runs_dir}")
        found = discover(runs_dir)
        runs = collect_runs([runs_dir])
        if not (found.pools or found.subsets or runs):
            skipped = "".join(f"; {problem}" for problem in found.problems)
            raise UserInputError(
                f"nothing to report under {runs_dir}: no pool or candidate pool (a folder with "
                "manifest.json) and no scored run (results/<run_id>/results.jsonl); pass the "
                f"folder that holds the outputs of demo-pool/ingest, build-pool and score{skipped}"
            )
        anchors = {
            subset.root.resolve(): _anchor("candidate", index, subset.name)
            for index, subset in enumerate(found.subsets)
        }
        results = None
        if runs:
            step(f"ranking {len(runs)} scored runs and drawing the plots")
            subsets = {}
            for subset in found.subsets:
                root = subset.root.resolve()
                subsets[str(root)] = (subset.name, anchors[root], subset.manifest.sample_count)
            results = results_view(
                runs, staging, subsets, n_boot=n_boot, confidence=confidence, seed=seed
            )
        external_section = None
        if external is not None:
            step("effective robustness of the published CLIPs by training data")
            source = None if str(external) == "openclip" else Path(external)
            external_section = external_view(
                source, staging, n_boot=n_boot, confidence=confidence, seed=seed
            )
        step(f"reading {len(found.subsets)} candidate pools and their sample images")
        candidates = _candidate_views(found.subsets, anchors, samples_per_group, seed)
        page = ReportPage(
            title=f"curate report: {runs_dir.name}",
            runs_dir=str(runs_dir),
            generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            code_version=describe_code_version(code_version()),
            pools=tuple(pool_view(pool, i, runs_dir) for i, pool in enumerate(found.pools)),
            candidates=candidates,
            results=results,
            run_count=len(runs),
            problems=found.problems,
            external=external_section,
        )
        write_text(staging / INDEX, render_page(page))
        files = sorted(p.relative_to(staging) for p in staging.rglob("*") if p.is_file())
    return ReportResult(
        out=out,
        index=out / INDEX,
        files=tuple(out / path for path in files),
        pools=len(found.pools),
        candidates=len(candidates),
        runs=len(runs),
        seconds=time.perf_counter() - started,
    )


def _candidate_views(
    subsets: Sequence[Subset], anchors: dict[Path, str], per_group: int, seed: int
) -> tuple[CandidateView, ...]:
    """Each candidate pool's stages, ground truth and samples; the images of all candidate
    pools of one parent pool are read in one pass over its shards."""
    parents: dict[Path, Pool] = {}
    tables: dict[Path, pl.DataFrame] = {}
    wanted: dict[Path, list[pl.DataFrame]] = {}
    prepared = []
    for subset in subsets:
        decisions = read_decisions(subset)
        table = picks = None
        if subset.parent is not None:
            parent_root = subset.parent.root.resolve()
            if parent_root not in tables:
                parents[parent_root] = subset.parent
                tables[parent_root] = pool_rows(subset.parent)
            table = tables[parent_root]
            picks = pick_samples(subset, decisions, table, per_group, seed)
            wanted.setdefault(parent_root, []).append(picks.select(ROW))
        prepared.append((subset, decisions, table, picks))

    thumbnails: dict[Path, dict[int, str]] = {}
    for parent_root, table in tables.items():
        rows = table.with_columns(pl.col(ROW).cast(pl.UInt32)).join(
            pl.concat(wanted[parent_root]), on=ROW, how="semi"
        )
        thumbnails[parent_root] = read_thumbnails(parents[parent_root], rows)

    return tuple(
        candidate_view(
            subset,
            anchors[subset.root.resolve()],
            decisions,
            picks,
            table,
            thumbnails.get(subset.parent.root.resolve(), {}) if subset.parent else {},
        )
        for subset, decisions, table, picks in prepared
    )
