"""Imports every command module so that its commands register on the app (one line each)."""

import curate.cli.build_pool  # noqa: F401
import curate.cli.demo  # noqa: F401
import curate.cli.demo_pool  # noqa: F401
import curate.cli.embed  # noqa: F401
import curate.cli.imports  # noqa: F401
import curate.cli.ingest  # noqa: F401
import curate.cli.report  # noqa: F401
import curate.cli.results  # noqa: F401
import curate.cli.robustness  # noqa: F401
import curate.cli.score  # noqa: F401
import curate.cli.search  # noqa: F401
import curate.cli.sql  # noqa: F401
