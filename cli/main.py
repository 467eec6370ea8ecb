"""Entry point of the `curate` console script.

Each ``curate.cli.<topic>`` module registers its commands on the shared typer app when imported.
Errors meant for the user (bad input, missing pool, output in use) are printed as one clear
line and exit with status 2, never as a traceback.
"""

from __future__ import annotations

import sys

from rich.console import Console

import curate.cli.commands  # noqa: F401  (registers every command)
from curate.cli.app import app
from curate.core.errors import USER_ERRORS


def main() -> None:
    try:
        app()
    except USER_ERRORS as error:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {error}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
