"""Imports every command module so that its commands register on the app (one line each)."""

import cli.build_pool  # noqa: F401
import cli.demo  # noqa: F401
import cli.demo_pool  # noqa: F401
import cli.embed  # noqa: F401
import cli.ingest  # noqa: F401
import cli.report  # noqa: F401
import cli.results  # noqa: F401
import cli.score  # noqa: F401
import cli.search  # noqa: F401
import cli.sql  # noqa: F401
