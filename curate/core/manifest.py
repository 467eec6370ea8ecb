"""The manifest: a small JSON file that names a pool or candidate pool and says how it was made.

It is written last, so a directory without a readable, complete manifest is never
mistaken for a finished pool.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import curate
from curate.core.atomic import write_json
from curate.core.errors import NotAPoolError
from curate.core.layout import MANIFEST, SCHEMA_VERSION


@dataclass(frozen=True)
class Manifest:
    name: str
    kind: str  # "pool" (samples + optional images) or "subset" (a candidate pool)
    source: dict[str, Any]
    sample_count: int
    has_images: bool
    produced_by: dict[str, Any]
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self, directory: Path) -> None:
        write_json(Path(directory) / MANIFEST, asdict(self))


def read_manifest(directory: Path) -> Manifest:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise NotAPoolError(
            f"{directory} is not a complete curate pool: {MANIFEST} is missing "
            "(an interrupted run leaves no manifest; rerun the command that makes it)"
        )
    try:
        data = json.loads(path.read_text("utf-8"))
        manifest = Manifest(**data)
    except (json.JSONDecodeError, TypeError) as error:
        raise NotAPoolError(f"{path}: unreadable manifest ({error})") from None
    if manifest.schema_version > SCHEMA_VERSION:
        raise NotAPoolError(
            f"{path}: schema version {manifest.schema_version} is newer than this curate "
            f"understands ({SCHEMA_VERSION}); upgrade curate"
        )
    return manifest


def code_version() -> dict[str, Any]:
    """What produced an output: curate's version, the git commit when run from a checkout."""
    info: dict[str, Any] = {
        "curate": curate.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        info["git_commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def produced_by(command: str, **params: Any) -> dict[str, Any]:
    return {"command": command, "params": params, **code_version()}
