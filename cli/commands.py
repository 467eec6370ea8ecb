"""Imports every command module so that its commands register on the app (one line each)."""

# fmt: off
# isort: off
# (helpers: add one `import cli.<module>  # noqa: F401` line per command module below)
