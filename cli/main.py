"""Entry point of the `curate` console script.

Each ``curate.cli.<topic>`` module registers its commands on the shared typer app when imported.
Errors meant for the user (every CurateError: bad input, missing pool, output in use) are
printed as one clear line and exit with status 2; Ctrl-C exits 130 with one line. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys

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


if __name__ == "__main__":
    main()
