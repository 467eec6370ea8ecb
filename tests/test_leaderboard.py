"""The leaderboard on hand-built result records: ranking, seed aggregation, the DuckDB and
parquet outputs, the comparability rule, and the plots."""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pytest
from PIL import Image
from result_records import ID_TASK, POOL_ID_TASK, SHIFT_TASK, on_line, write_baselines, write_run
from typer.testing import CliRunner

import curate.cli.results  # noqa: F401  (registers the commands tested here)
from curate.cli.app import app
from curate.cli.leaderboard_view import rich_tables
from curate.core.errors import UserInputError
from curate.leaderboard.build import build_leaderboard
from curate.leaderboard.tables import DATABASE_FILE
from curate.report.plots import percent_ticks, plot_results

SLOPE, INTERCEPT = 0.8, -0.6


def _pool(root, name, id_accuracy, gap, seeds=(0,), key="key-1", pool_id=0.4):
    for seed in seeds:
        write_run(
            root / name,
            f"{name}-s{seed}",
            {
                ID_TASK: id_accuracy + 0.01 * seed,
                SHIFT_TASK: on_line(id_accuracy, SLOPE, INTERCEPT, gap),
                POOL_ID_TASK: pool_id,
            },
            pool=name,
            seed=seed,
            key=key,
        )


@pytest.fixture
def scored(tmp_path):
    write_baselines(tmp_path / "baselines", SLOPE, INTERCEPT)
    _pool(tmp_path, "robust", 0.50, 0.06, seeds=(0, 1, 2))
    _pool(tmp_path, "plain", 0.60, 0.00, seeds=(0, 1))
    _pool(tmp_path, "middle", 0.55, 0.03)
    return tmp_path


def _independent_er(run_dir_accuracies, baselines_root):
    """ER by np.polyfit on the baseline records' own acc1 values (a separate computation)."""
    from curate.eval.records import read_records

    points = {}
    for path in sorted(baselines_root.glob("results/*/results.jsonl")):
        accuracies = {r["dataset"]: r["metrics"]["acc1"] for r in read_records(path)}
        points[path] = (accuracies[ID_TASK], accuracies[SHIFT_TASK])
    x, y = (np.log(np.array(v) / (1 - np.array(v))) for v in zip(*points.values(), strict=True))
    slope, intercept = np.polyfit(x, y, 1)
    id_acc, ood_acc = run_dir_accuracies
    return ood_acc - 1 / (1 + np.exp(-(slope * np.log(id_acc / (1 - id_acc)) + intercept)))


def test_leaderboard_ranks_by_er_and_writes_duckdb_and_parquet(scored, tmp_path):
    board, written = build_leaderboard([scored], tmp_path / "out", n_boot=200)
    database = tmp_path / "out" / DATABASE_FILE
    assert written["database"] == database and database.is_file()
    assert (tmp_path / "out" / "leaderboard.parquet").is_file()
    connection = duckdb.connect(str(database), read_only=True)
    tables = {row[0] for row in connection.execute("SHOW TABLES").fetchall()}
    assert {"results", "runs", "leaderboard", "shift_er", "baseline_fits"} <= tables
    ranking = connection.execute(
        "SELECT pool, rank, n_seeds, seeds, cinic10_imagenet_er FROM leaderboard ORDER BY rank"
    ).fetchall()
    assert [row[0] for row in ranking] == ["robust", "middle", "plain"]
    assert [row[2] for row in ranking] == [3, 1, 2] and ranking[0][3] == [0, 1, 2]
    # 6 result runs + 5 baselines, 3 tasks each
    assert connection.execute("SELECT count(*) FROM results").fetchall() == [(33,)]
    assert connection.execute("SELECT count(*) FROM runs WHERE baseline").fetchall() == [(5,)]
    connection.close()

    # ER of the one-seed pool equals an independent computation from the records
    records = pl.read_parquet(tmp_path / "out" / "results.parquet").filter(
        pl.col("pool") == "middle"
    )
    accuracy = dict(zip(records["task"], records["acc1"], strict=True))
    expected = _independent_er((accuracy[ID_TASK], accuracy[SHIFT_TASK]), scored / "baselines")
    middle = pl.read_parquet(tmp_path / "out" / "leaderboard.parquet").filter(
        pl.col("pool") == "middle"
    )
    assert middle["cinic10_imagenet_er"][0] == pytest.approx(expected, abs=1e-12)
    assert middle["cinic10_imagenet_er"][0] == pytest.approx(0.03, abs=0.005)

    # seeds: mean and std of the ID accuracy over the three seeds
    robust = next(s for s in board.summaries if s.group.pool == "robust")
    per_seed = [run.accuracy(ID_TASK) for run in robust.group.runs]
    assert robust.accuracy[ID_TASK] == pytest.approx((np.mean(per_seed), np.std(per_seed, ddof=1)))
    shift = robust.shifts[0]
    assert shift.er.interval.low < shift.er.mean < shift.er.interval.high
    assert shift.multi_id_er is not None and shift.multi_id_er.fit.id_tasks == (
        ID_TASK,
        POOL_ID_TASK,
    )
    assert shift.er.fit.n_points == 5 and shift.er.fit.slope == pytest.approx(SLOPE, abs=0.01)

    # pairwise differences: every pair once, better-ranked first, point value = ER(A) - ER(B)
    differences = pl.read_parquet(tmp_path / "out" / "er_differences.parquet")
    pairs = [
        (a.split("/")[0], b.split("/")[0])  # labels are pool/recipe/scale
        for a, b in zip(differences["pool_a"], differences["pool_b"], strict=True)
    ]
    assert pairs == [("robust", "middle"), ("robust", "plain"), ("middle", "plain")]
    er = {s.group.pool: s.shifts[0].er.mean for s in board.summaries}
    expected_differences = [er[a] - er[b] for a, b in pairs]
    assert differences["er_difference"].to_list() == pytest.approx(expected_differences, abs=1e-12)
    robust_vs_plain = differences.row(1, named=True)
    # a 6-point gap on 760 test images: the interval excludes 0
    assert robust_vs_plain["significant"] and robust_vs_plain["ci_low"] > 0
    # only pairs of multi-seed pools have training-seed noise in their interval, and only
    # they get a verdict; "middle" ran one seed
    assert differences["covers"].to_list() == [
        "test images + one pool's seeds",
        "test images + seeds",
        "test images + one pool's seeds",
    ]
    assert differences["verdict"].to_list() == [
        "untested (1 seed)",
        "significant",
        "untested (1 seed)",
    ]
    assert differences["significant"].to_list() == [None, True, None]


def test_rank_by_id_accuracy(scored, tmp_path):
    board, _ = build_leaderboard([scored], tmp_path / "out", rank_by="id", n_boot=0)
    assert [s.group.pool for s in board.summaries] == ["plain", "middle", "robust"]


def test_incomparable_runs_are_never_ranked_together(scored, tmp_path):
    _pool(scored, "other-setup", 0.45, -0.02, key="key-2")
    with pytest.raises(UserInputError, match="cannot be ranked side by side"):
        build_leaderboard([scored], tmp_path / "refused", n_boot=0)
    assert not (tmp_path / "refused" / DATABASE_FILE).exists()

    board, written = build_leaderboard([scored], tmp_path / "out", group_by_key=True, n_boot=0)
    assert board.keys == ["key-1", "key-2"]
    titles = [table.title for table in rich_tables(board)]
    # key-1: its ranking and its pairwise ER differences; key-2 (one pool): its ranking only;
    # then the baseline lines with their residual spread
    assert len(titles) == 4 and "differences" in titles[1] and titles[2].startswith("setup key-2")
    assert titles[3].startswith("baseline lines")
    connection = duckdb.connect(str(written["database"]), read_only=True)
    ranks = connection.execute(
        "SELECT comparability_key, pool, rank FROM leaderboard ORDER BY comparability_key, rank"
    ).fetchall()
    connection.close()
    # the key-2 pool has the lowest ER of all, yet it is rank 1 of its own setup
    assert ranks[-1] == ("key-2", "other-setup", 1)
    assert [r[2] for r in ranks if r[0] == "key-1"] == [1, 2, 3]

    result = CliRunner().invoke(app, ["leaderboard", str(scored), "--out", str(tmp_path / "cli")])
    assert isinstance(result.exception, UserInputError)


def test_without_baselines_er_is_missing_with_a_reason(tmp_path):
    _pool(tmp_path, "lonely", 0.5, 0.0)
    board, _ = build_leaderboard([tmp_path], tmp_path / "out", n_boot=0)
    shift = board.summaries[0].shifts[0]
    assert shift.er is None and "curate baseline" in shift.problem
    row = pl.read_parquet(tmp_path / "out" / "leaderboard.parquet").row(0, named=True)
    assert row["cinic10_imagenet_er"] is None and row["average_er"] is None


def test_no_results_is_a_clear_error(tmp_path):
    with pytest.raises(UserInputError, match="no results found"):
        build_leaderboard([tmp_path], tmp_path / "out")


def test_percent_ticks_are_nice_values_inside_the_range():
    ticks = percent_ticks(0.25, 0.75)
    assert 50 in ticks and all(25 <= t <= 75 for t in ticks) and len(ticks) >= 3
    assert 99 in percent_ticks(0.9, 0.995)


def test_plots_are_written_as_png_and_svg(scored, tmp_path):
    written = plot_results([scored], tmp_path / "plots")
    names = sorted(path.name for path in written)
    assert names == ["cifar10_test__cinic10_imagenet.png", "cifar10_test__cinic10_imagenet.svg"]
    with Image.open(tmp_path / "plots" / names[0]) as image:
        assert image.size[0] > 500
    svg = (tmp_path / "plots" / names[1]).read_text()
    assert "<svg" in svg and "robust/clip-score/tiny" in svg


def _verdicts(root, out, seeds):
    """Two pools 6 points of ER apart on the shift (760 images), ``seeds`` each."""
    write_baselines(root / "baselines", SLOPE, INTERCEPT)
    _pool(root, "robust", 0.50, 0.06, seeds=seeds)
    _pool(root, "plain", 0.50, 0.00, seeds=seeds)
    board, written = build_leaderboard([root], out, n_boot=300)
    with duckdb.connect(str(written["database"]), read_only=True) as connection:
        row = connection.execute(
            "SELECT pool_a, ci_low, ci_high, excludes_zero, covers, verdict, significant, "
            "n_seeds_a, n_seeds_b FROM er_differences"
        ).fetchone()
    return board, row


def test_one_seed_gets_no_verdict_however_narrow_the_interval(tmp_path):
    board, row = _verdicts(tmp_path / "runs", tmp_path / "out", seeds=(0,))
    pool_a, low, high, excludes_zero, covers, verdict, significant, n_a, n_b = row
    assert pool_a.startswith("robust/")
    # the test-image interval alone excludes 0, yet one training run per pool is no test
    assert low > 0 and excludes_zero
    assert (covers, verdict, significant, n_a, n_b) == (
        "test images only",
        "untested (1 seed)",
        None,
        1,
        1,
    )
    (difference,) = board.differences
    assert difference.significant is None and "untested (1 seed)" in difference.describe()
    (table,) = [t for t in rich_tables(board) if "differences" in str(t.title)]
    cells = [list(column.cells) for column in table.columns]
    assert cells[4] == ["test images only"] and cells[5] == ["untested (1 seed)"]


def test_two_seeds_give_a_verdict_from_images_and_seeds(tmp_path):
    _, row = _verdicts(tmp_path / "runs", tmp_path / "out", seeds=(0, 1))
    _, low, high, excludes_zero, covers, verdict, significant, n_a, n_b = row
    assert low > 0 and excludes_zero
    assert (covers, verdict, significant, n_a, n_b) == (
        "test images + seeds",
        "significant",
        True,
        2,
        2,
    )


def test_line_spread_and_extrapolation_flags(tmp_path):
    """Baselines off the line by known amounts: the residual spread matches np.polyfit's, and
    a candidate below the baselines' ID range is flagged as extrapolated."""
    offsets = (0.02, -0.03, 0.01, 0.03, -0.02)
    ids = (0.3, 0.4, 0.5, 0.6, 0.7)
    for index, (id_accuracy, offset) in enumerate(zip(ids, offsets, strict=True)):
        write_run(
            tmp_path / "baselines",
            f"baseline-{index}",
            {ID_TASK: id_accuracy, SHIFT_TASK: on_line(id_accuracy, SLOPE, INTERCEPT, offset)},
            pool="cifar10-train",
            recipe="",
            seed=0,
            samples_seen=5_000 * (index + 1),
            baseline=True,
            key=f"baseline-key-{index}",
        )
    _pool(tmp_path, "inside", 0.45, 0.0)
    _pool(tmp_path, "below", 0.25, 0.0)
    board, _ = build_leaderboard([tmp_path], tmp_path / "out", n_boot=0)

    records = pl.read_parquet(tmp_path / "out" / "results.parquet").filter(pl.col("baseline"))
    wide = records.pivot(on="task", index="run_id", values="acc1")
    x, y = (np.log(wide[t] / (1 - wide[t])).to_numpy() for t in (ID_TASK, SHIFT_TASK))
    slope, intercept = np.polyfit(x, y, 1)
    residual_logit = y - (slope * x + intercept)
    predicted = 1 / (1 + np.exp(-(slope * x + intercept)))
    residual_acc = wide[SHIFT_TASK].to_numpy() - predicted
    fits = pl.read_parquet(tmp_path / "out" / "baseline_fits.parquet").row(0, named=True)
    assert fits["n_points"] == 5
    assert fits["residual_std_logit"] == pytest.approx(np.sqrt(np.sum(residual_logit**2) / 3))
    assert fits["residual_std_acc"] == pytest.approx(np.sqrt(np.sum(residual_acc**2) / 3))
    assert fits["residual_std_acc"] > 0.01  # the offsets are 1-3 points
    assert (fits["id_min"], fits["id_max"]) == pytest.approx((wide[ID_TASK].min(), 0.7), abs=1e-3)

    flags = dict(
        pl.read_parquet(tmp_path / "out" / "leaderboard.parquet")
        .select("pool", "extrapolated")
        .iter_rows()
    )
    assert flags == {"inside": False, "below": True}
    shift_flags = dict(
        pl.read_parquet(tmp_path / "out" / "shift_er.parquet")
        .select("pool", "extrapolated")
        .iter_rows()
    )
    assert shift_flags == flags
    summary = next(s for s in board.summaries if s.group.pool == "below")
    assert summary.extrapolated and summary.shifts[0].extrapolated
