"""The options every scale-out command shares: where its per-part work runs."""

from __future__ import annotations

from typing import Annotated

import typer

Executor = Annotated[
    str,
    typer.Option(
        "--executor",
        help="Where the per-part work runs: local (processes on this machine) or ray "
        "(a Ray instance: a local one, or the cluster at --ray-address). "
        "The output is the same bytes either way.",
    ),
]
Workers = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="local: worker processes (default: one per core; 1 runs in this process). "
        "ray: the most parts in flight at once.",
    ),
]
RayAddress = Annotated[
    str | None,
    typer.Option(
        help="With --executor ray: the cluster to join ('auto' for the one `ray start` made "
        "here, or ray://HOST:10001). Default: start a local Ray instance."
    ),
]
