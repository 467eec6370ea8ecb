"""`curate.core.atomic.staged_output`: lock OUT, refuse it unless --overwrite, stage, publish."""

from __future__ import annotations

from pathlib import Path

import pytest

from curate.core.atomic import exclusive_lock, staged_output, staging_dir_for
from curate.core.errors import InUseError, OutputExistsError


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with a file's bytes (None for a folder)."""
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
        for p in sorted(root.rglob("*"))
    }


def _old_output(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    return out


def test_an_existing_output_is_refused_without_overwrite_and_nothing_changes(tmp_path):
    out = _old_output(tmp_path)
    stale = staging_dir_for(out)
    stale.mkdir()
    (stale / "stale.txt").write_text("left by a killed run")
    before = _snapshot(tmp_path)
    with pytest.raises(OutputExistsError, match=r"out already exists; pass --overwrite to rep"):
        with staged_output(out, overwrite=False):
            pytest.fail("the block ran although OUT exists")
    assert _snapshot(tmp_path) == before  # lock file removed, staging untouched


def test_overwrite_replaces_the_output_with_the_staged_folder(tmp_path):
    out = _old_output(tmp_path)
    stale = staging_dir_for(out)
    stale.mkdir()
    (stale / "stale.txt").write_text("left by a killed run")
    with staged_output(out, overwrite=True) as staging:
        assert staging == stale and staging.is_dir()
        assert list(staging.iterdir()) == []  # fresh: the killed run's files are gone
        assert (out / "old.txt").read_text() == "old"  # OUT is only replaced at the end
        (staging / "new.txt").write_text("new")
    assert _snapshot(tmp_path) == {"out": None, "out/new.txt": b"new"}


def test_a_new_output_is_published(tmp_path):
    out = tmp_path / "deeper" / "out"
    with staged_output(out, overwrite=False) as staging:
        (staging / "new.txt").write_text("new")
    assert _snapshot(tmp_path) == {"deeper": None, "deeper/out": None, "deeper/out/new.txt": b"new"}


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_error_in_the_block_leaves_the_output_untouched_and_no_staging(tmp_path, overwrite):
    out = tmp_path / "out"
    if overwrite:
        _old_output(tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(RuntimeError, match="half way"):
        with staged_output(out, overwrite=overwrite) as staging:
            (staging / "half.txt").write_text("half")
            raise RuntimeError("half way")
    assert _snapshot(tmp_path) == before


def test_resume_keeps_the_staged_files_of_an_interrupted_run(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with staged_output(out, overwrite=False, resume=True) as staging:
            staging.mkdir()
            (staging / "step1.txt").write_text("done")
            raise KeyboardInterrupt  # killed before step 2
    assert not out.exists()
    assert (staging_dir_for(out) / "step1.txt").read_text() == "done"
    with staged_output(out, overwrite=False, resume=True) as staging:
        assert (staging / "step1.txt").read_text() == "done"
        (staging / "step2.txt").write_text("done")
    assert _snapshot(tmp_path) == {
        "out": None,
        "out/step1.txt": b"done",
        "out/step2.txt": b"done",
    }


def test_a_second_holder_is_refused_and_leaves_the_first_ones_staging_alone(tmp_path):
    out = tmp_path / "out"
    with staged_output(out, overwrite=True) as staging:
        (staging / "first.txt").write_text("first")
        for resume in (False, True):
            with pytest.raises(InUseError, match="in use by another curate process"):
                with staged_output(out, overwrite=True, resume=resume):
                    pytest.fail("two holders of one output")
        with pytest.raises(InUseError):
            with exclusive_lock(out):
                pass
        assert (staging / "first.txt").read_text() == "first"
        assert not out.exists()
    assert _snapshot(tmp_path) == {"out": None, "out/first.txt": b"first"}
