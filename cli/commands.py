"""Imports every command module so that its commands register on the app (one line each)."""

# fmt: off
# isort: off
# (helpers: add one `import cli.<module>  # noqa: F401` line per command module below)
import cli.demo_pool  # noqa: F401
import cli.build_pool  # noqa: F401
import cli.embed  # noqa: F401
import cli.results  # noqa: F401
import cli.sql  # noqa: F401
import cli.score  # noqa: F401
import cli.report  # noqa: F401
import cli.ingest  # noqa: F401
import cli.demo  # noqa: F401
