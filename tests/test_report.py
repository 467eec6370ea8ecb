"""`curate report` on a small real folder: a pool written by PoolWriter, candidate pools made
by build-pool, hand-built result records (baselines included); the page is checked as HTML,
against reference computations, and opened in a real headless Chromium."""

from __future__ import annotations

import base64
import html as html_module
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image
from typer.testing import CliRunner

import curate.cli.commands  # noqa: F401  (registers every command, report included)
from curate.build_pool.build import build_pool
from curate.build_pool.recipe import parse_recipe
from curate.cli.app import app
from curate.core.decisions_view import subset_decisions
from curate.core.errors import UserInputError
from curate.core.kept_uids import kept_uids
from curate.core.layout import SubsetLayout
from curate.core.pool_writer import PoolWriter, SourceSample
from curate.eval.collect import collect_runs
from curate.eval.effective_robustness import fit_logit_line
from curate.report.build import build_report
from curate.report.results import ErCell
from tests.conftest import make_image_bytes
from tests.result_records import (
    ID_TASK,
    POOL_ID_TASK,
    SHIFT_TASK,
    on_line,
    write_baselines,
    write_run,
)

CHROMIUM_INSTALL = (
    "Chromium is needed to check the report page in a real browser; install it with "
    "`apt-get update && apt-get install -y --no-install-recommends chromium` (Debian/Ubuntu)"
)
HOSTILE_CAPTION = '<script>alert("x")</script> a cat & "friends"'
CLASSES = ("cat", "dog", "ship", "truck")
RECIPE = """\
name: vocab_then_animals
seed: 0
stages:
  - stage: text_based
    params: {vocab: cifar10}
  - stage: text_based
    params: {vocab: "{pool}/animals.txt"}
"""
SLOPE, INTERCEPT = 0.8, -0.6


def _write_pool(path: Path) -> None:
    """40 samples over 3 shards: captions naming a class, spam, animals and vehicles, and
    one caption that would be markup if not escaped; ``noise`` marks the spam."""
    with PoolWriter(path, name="tiny-pool", source={"type": "test"}, command="test",
                    samples_per_shard=16) as writer:  # fmt: skip
        for index in range(40):
            spam = index % 5 == 4
            size = (8, 8) if index % 7 == 3 else (32, 32)
            text = (
                "click here for free shipping"
                if spam
                else f"a photo of a {CLASSES[index % len(CLASSES)]} number {index}"
            )
            if index == 0:
                text = HOSTILE_CAPTION
            if index == 9:
                text = "free shipping on cat toys"  # spam the vocabulary stage misses
            writer.add(
                SourceSample(
                    source="test",
                    where=f"row {index}",
                    text=text,
                    image=make_image_bytes(index, size, "PNG" if index % 2 else "JPEG"),
                    extras={"noise": "spam_caption" if spam else "clean"},
                )
            )
    (path / "animals.txt").write_text("cat\ndog\n", encoding="utf-8")


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    _write_pool(root / "pool")
    candidates = root / "candidates"
    build_pool(parse_recipe(RECIPE), root / "pool", candidates / "animals")
    build_pool(parse_recipe("name: keep_all\nstages: []\n"), root / "pool", candidates / "all")
    write_baselines(root / "baselines", slope=SLOPE, intercept=INTERCEPT)
    # "animals": 2 seeds well above the baseline line; "all": 1 seed on the line
    for seed in (0, 1):
        write_run(
            candidates / "animals",
            f"animals-s{seed}",
            {
                ID_TASK: 0.5 + 0.01 * seed,
                SHIFT_TASK: on_line(0.5, SLOPE, INTERCEPT, 0.10),
                POOL_ID_TASK: 0.45,
            },
            pool=str(candidates / "animals"),
            recipe="vocab_then_animals",
            seed=seed,
        )
    write_run(
        candidates / "all",
        "all-s0",
        {ID_TASK: 0.4, SHIFT_TASK: on_line(0.4, SLOPE, INTERCEPT), POOL_ID_TASK: 0.35},
        pool=str(candidates / "all"),
        recipe="keep_all",
    )
    return root


@pytest.fixture(scope="module")
def report(runs_dir):
    result = build_report(runs_dir, runs_dir / "report", n_boot=300)
    return result, result.index.read_text("utf-8")


class _StrictHtml(HTMLParser):
    """Every element closed in order (no implied end tags), ids unique."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
            "track", "wbr"}  # fmt: skip

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.ids: list[str] = []
        self.problems: list[str] = []
        self.attributes: list[tuple[str, str, str]] = []  # (tag, name, value)

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            self.attributes.append((tag, name, value or ""))
            if name == "id":
                self.ids.append(value or "")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()


def _table(html: str, css_class: str, after: str = "") -> list[list[str]]:
    """The body rows of the first ``<table class=css_class>`` after ``after``, as cell texts."""
    html = html[html.index(after) :] if after else html
    table = html[html.index(f'<table class="{css_class}"') :]
    body = table[table.index("<tbody>") : table.index("</tbody>")]
    rows = []
    for row in body.split("<tr")[1:]:
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        rows.append([" ".join(re.sub(r"<[^>]+>", " ", cell).split()) for cell in cells])
    return rows


def test_page_is_valid_self_contained_html(report):
    result, html = report
    assert html.startswith("<!DOCTYPE html>")
    parser = _StrictHtml()
    parser.feed(html)
    parser.close()
    assert parser.problems == []
    assert parser.stack == []
    assert len(parser.ids) == len(set(parser.ids))
    for tag, name, value in parser.attributes:
        if name == "src":
            assert value.startswith("data:image/"), f"<{tag} src> must be embedded"
        if name == "href":
            assert value.startswith("#") or (result.out / value).is_file(), value
            if value.startswith("#"):
                assert value[1:] in parser.ids, f"link to a missing anchor {value}"
    assert not re.search(r"<(script|link|iframe)\b", html)
    assert "http://" not in html and "https://" not in html
    # captions are escaped, never markup
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; a cat &amp; &#34;friends&#34;" in html


def test_plots_written_and_embedded(report):
    result, html = report
    stems = {path.stem for path in (result.out / "plots").iterdir()}
    assert stems == {"cifar10_test__cinic10_imagenet"}
    for extension in ("png", "svg"):
        assert (result.out / "plots" / f"cifar10_test__cinic10_imagenet.{extension}").stat().st_size
    embedded = re.search(r'<img src="data:image/png;base64,([^"]+)" alt="cifar10-test', html)
    assert embedded
    image = Image.open(io.BytesIO(base64.b64decode(embedded.group(1))))
    assert image.size[0] > 500 and np.asarray(image).std() > 0


def test_leaderboard_numbers_match_a_reference(report, runs_dir):
    _, html = report
    runs = collect_runs([runs_dir])
    baselines = [run for run in runs if run.baseline]
    fit = fit_logit_line(
        [run.accuracy(ID_TASK) for run in baselines],
        [run.accuracy(SHIFT_TASK) for run in baselines],
    )
    rows = {row[1]: row for row in _table(html, "leaderboard")}
    assert [row[1] for row in _table(html, "leaderboard")] == ["animals", "all"]  # ranked by ER
    # "animals": 2 seeds well above the line, a verdict; "all": one seed, none however it looks
    for name, verdict, covers in (
        ("animals", "significant", "test images + baseline fit + seeds"),
        ("all", "untested (1 seed)", "test images + baseline fit only"),
    ):
        members = sorted(
            (run for run in runs if not run.baseline and Path(run.pool).name == name),
            key=lambda run: run.seed,
        )
        reference = np.mean(
            [run.accuracy(SHIFT_TASK) - fit.predict(run.accuracy(ID_TASK)) for run in members]
        )
        rank, _, recipe, scale, kept, seeds, id_acc, ood_acc, er, multi_id, mean_er = rows[name]
        assert er.startswith(f"{100 * reference:+.1f} [")
        assert re.search(rf"\] {re.escape(verdict)} interval covers {re.escape(covers)}\b", er), er
        assert ("significant" in er) == (len(members) > 1), er  # one seed: never "significant"
        assert mean_er == f"{100 * reference:+.1f}"
        assert seeds == ", ".join(str(run.seed) for run in members)
        id_mean = 100 * np.mean([run.accuracy(ID_TASK) for run in members])
        assert id_acc.startswith(f"{id_mean:.1f}")
        assert (" ± " in id_acc) == (len(members) > 1)  # the spread over seeds
        assert int(kept.replace(",", "")) == len(
            kept_uids(SubsetLayout(runs_dir / "candidates" / name))
        )
    # the pair's ER difference: the difference of the two reference ERs, with a verdict
    ((shift, pool_a, pool_b, difference, covers, verdict),) = _table(html, "er-differences")
    references = {
        row[1]: float(row[8].split(" ")[0]) for row in _table(html, "leaderboard")
    }  # ER cells, rounded to 0.1 point
    assert (shift, pool_a.split("/")[0], pool_b.split("/")[0]) == (SHIFT_TASK, "animals", "all")
    assert float(difference.split(" [")[0]) == pytest.approx(
        references["animals"] - references["all"], abs=0.11
    )
    # "all" ran one seed: no verdict, and the interval holds "animals"' seed spread only
    assert html_module.unescape(covers) == "test images + one pool's seeds"
    assert verdict.startswith("untested (1 seed)")


def test_er_cell_gives_a_verdict_only_with_two_seeds():
    """An ER interval far from 0 from one training run is still "untested (1 seed)": it holds
    test-image noise (and the baseline fit), not training noise."""

    def cell(n_seeds: int, low: float | None, high: float | None, method: str) -> ErCell:
        per_seed = (0.10,) * n_seeds
        return ErCell(0.10, None, low, high, method, per_seed, baseline_refit=True, n_seeds=n_seeds)

    one_seed = cell(1, 0.09, 0.11, "bootstrap-percentile")
    assert one_seed.excludes_zero is True
    assert (one_seed.verdict, one_seed.significant) == ("untested (1 seed)", None)
    assert one_seed.covers == "test images + baseline fit only"
    two_seeds = cell(2, 0.05, 0.15, "t-seeds+bootstrap")
    assert (two_seeds.verdict, two_seeds.significant) == ("significant", True)
    assert two_seeds.covers == "test images + baseline fit + seeds"
    spread = cell(3, -0.05, 0.25, "t-seeds+bootstrap")
    assert (spread.verdict, spread.significant) == ("not significant", False)
    assert cell(3, None, None, "none").verdict is None  # no interval: no verdict at all


def test_stage_counts_and_ground_truth_match_decisions(report, runs_dir):
    _, html = report
    candidate = runs_dir / "candidates" / "animals"
    decisions = subset_decisions(candidate).collect()  # the compact file, expanded
    after = "<h3>animals</h3>"
    stage_rows = _table(html, "stages", after)
    assert len(stage_rows) == 2
    for index, row in enumerate(stage_rows):
        seen = decisions.filter(pl.col("stage_index") == index)
        removed = int((~seen["kept"]).sum())
        assert row[:6] == [
            str(index), "text_based", str(seen.height), str(removed),
            f"{100 * removed / seen.height:.1f} %", str(seen.height - removed),
        ]  # fmt: skip
    samples = pl.read_parquet(runs_dir / "pool" / "samples.parquet").with_row_index("row")
    first = decisions.filter(pl.col("stage_index") == 0).join(samples, on="row")
    spam = first["noise"] == "spam_caption"
    precision = (spam & ~first["kept"]).sum() / (~first["kept"]).sum()
    recall = (spam & ~first["kept"]).sum() / spam.sum()
    truth = _table(html, "ground-truth", after)
    assert truth[0][:4] == [
        "text_based", str(int((~first["kept"]).sum())),
        f"{100 * precision:.1f} %", f"{100 * recall:.1f} %",
    ]  # fmt: skip
    assert truth[-1][0] == "all stages"
    kept = len(kept_uids(SubsetLayout(candidate)))
    section = html[html.index(after) : html.index("</article>", html.index(after))]
    assert f"kept\n      <strong>{kept}</strong> of 40 samples" in section
    assert section.count('<figure class="card removed">') > 0
    assert section.count('<figure class="card">') > 0
    assert "image-rendering: pixelated" in html


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(CHROMIUM_INSTALL)


def _run_chromium(index: Path, profile: Path, *arguments: str) -> subprocess.CompletedProcess:
    command = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
        "--window-size=1200,2000", *arguments, index.resolve().as_uri(),
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr[-2000:]
    console = [line for line in completed.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], f"the page logged to the console: {console}"
    assert "Uncaught" not in completed.stderr
    return completed


def test_page_renders_in_headless_chromium(report, tmp_path):
    result, _ = report
    dom = _run_chromium(result.index, tmp_path / "profile-dom", "--dump-dom").stdout
    assert re.search(r'<img src="data:image/png;base64,[^"]+" alt="cifar10-test', dom)
    table = dom[dom.index('<table class="leaderboard"') :]
    table = table[: table.index("</table>")]
    assert ">animals</a>" in table and ">all</a>" in table
    assert "<script" not in dom

    screenshot = tmp_path / "page.png"
    _run_chromium(result.index, tmp_path / "profile-shot", f"--screenshot={screenshot}")
    assert screenshot.stat().st_size > 0
    pixels = np.asarray(Image.open(screenshot).convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels.std() > 10  # text, tables and the plot: not one colour


def test_cli_and_errors(runs_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "report"
    done = runner.invoke(app, ["report", "--runs", str(runs_dir), "--out", str(out),
                               "--bootstrap", "0", "--samples", "2"])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert (out / "index.html").is_file()
    again = runner.invoke(app, ["report", "--runs", str(runs_dir), "--out", str(out)])
    assert isinstance(again.exception, FileExistsError)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserInputError, match="nothing to report"):
        build_report(empty, tmp_path / "empty-report")
