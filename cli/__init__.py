"""The `curate` command: typer callbacks that parse arguments and call library functions."""
