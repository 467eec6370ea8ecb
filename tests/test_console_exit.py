"""The console script's exit (curate.cli.main.console): the exit status, everything printed
and the atexit handlers as at a normal exit, without the interpreter's teardown; a thread
still running gets the normal exit, which waits for it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _console(argv: list[str], before: str = "", tmp_path: Path | None = None):
    script = (
        "import atexit, sys, threading, time\n"
        "from curate.cli.main import console\n"
        "atexit.register(lambda: print('atexit handler ran', flush=True))\n"
        f"{before}\n"
        f"sys.argv = ['curate', *{argv!r}]\n"
        "console()\n"
    )
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
        timeout=120,
    )  # fmt: skip


def test_a_finished_command_exits_with_its_output_and_atexit_handlers(tmp_path):
    run = _console(["build-pool", "--help"], tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "Usage: curate build-pool" in run.stdout
    assert run.stdout.rstrip().endswith("atexit handler ran")  # after the help, flushed


def test_a_user_error_exits_2_with_its_line(tmp_path):
    run = _console(["build-pool", "missing.yaml", "--pool", "nowhere", "--out", "out"],
                   tmp_path=tmp_path)  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "error:" in run.stderr and "missing.yaml" in run.stderr
    assert "atexit handler ran" in run.stdout


def test_a_thread_still_running_is_waited_for(tmp_path):
    marker = tmp_path / "written by the thread"
    before = (
        "def late():\n"
        "    time.sleep(0.5)\n"
        f"    open({str(marker)!r}, 'w').write('done')\n"
        "threading.Thread(target=late).start()\n"
    )
    run = _console(["build-pool", "--help"], before, tmp_path)
    assert run.returncode == 0, run.stderr
    assert marker.read_text() == "done"  # os._exit would have killed the thread
