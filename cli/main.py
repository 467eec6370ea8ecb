"""Entry point of the `curate` console script.

Each ``curate.cli.<topic>`` module registers its commands on the shared typer app when imported.
Errors meant for the user (every CurateError: bad input, missing pool, output in use) are
printed as one clear line and exit with status 2; Ctrl-C exits 130 with one line. Anything
else is a bug and keeps its traceback. The console script skips the interpreter's teardown
once the command is done (:func:`console`).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn

from rich.console import Console

import curate.cli.commands  # noqa: F401  (registers every command)
from curate.cli.app import app
from curate.core.errors import USER_ERRORS
from curate.core.malloc import keep_freed_blocks


def main() -> None:
    keep_freed_blocks()
    try:
        app()
    except USER_ERRORS as error:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {error}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C outside a command's own handling (e.g. at start-up)
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # output piped into a reader that stopped (`| head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)


def console() -> NoReturn:
    """The console script: :func:`main`, then :func:`_exit` (``main`` itself raises
    SystemExit, so that a program may call it more than once)."""
    try:
        main()
    except SystemExit as done:
        _exit(done.code)
    _exit(0)


def _exit(code: int | str | None) -> NoReturn:
    """Exit without the interpreter's teardown (freeing every module and object one by one:
    60-80 ms after a build-pool run) when nothing else is running: the atexit handlers run
    and the streams are flushed as at a normal exit. With another thread alive, a normal
    exit (it waits for the thread)."""
    if threading.active_count() > 1:
        sys.exit(code)
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # output piped into a reader that stopped (`| head`)
        code = code or 141
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    console()
