"""Moving rows between tasks by a key, through files (a shuffle).

Each sending task writes one Arrow IPC file of its rows sorted by destination, the
destinations' row offsets in the file's schema metadata; each receiving task reads its slice
of every sender's file through a memory map, so only that slice is paged in. The driver holds
the file list: no process holds more rows than one task's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.core.atomic import atomic_path

OFFSETS_KEY = b"curate.destination_offsets"


def write_spill(path: Path, rows: pa.Table, destination: np.ndarray, destinations: int) -> None:
    """``rows`` sorted by ``destination`` (each in ``[0, destinations)``; the rows' order kept
    within one), published atomically as ``path`` (its presence means the task is done)."""
    order = np.argsort(destination, kind="stable")
    offsets = np.searchsorted(destination[order], np.arange(destinations + 1), side="left")
    metadata = {OFFSETS_KEY: json.dumps(offsets.tolist()).encode()}
    ordered = rows.take(pa.array(order)).replace_schema_metadata(metadata)
    with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink:
        with pa.ipc.new_file(sink, ordered.schema) as writer:
            writer.write_table(ordered)


def read_spills(paths: Sequence[Path], first: int, last: int | None = None) -> pa.Table:
    """The rows every file in ``paths`` sent to destinations ``first`` to ``last`` (default:
    ``first`` alone), file after file, in each file's order."""
    last = first if last is None else last
    pieces = []
    for path in paths:
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        offsets = json.loads(table.schema.metadata[OFFSETS_KEY])
        pieces.append(table.slice(offsets[first], offsets[last + 1] - offsets[first]))
    return pa.concat_tables(pieces).replace_schema_metadata(None)
