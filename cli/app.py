"""The typer application every command module registers on."""

from __future__ import annotations

import os

import typer

# img2dataset pulls albumentations, which otherwise checks for updates over the network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

app = typer.Typer(
    name="curate",
    help=(
        "Which training data gives reliable CLIP models? Ingest an image-text pool, embed it, "
        "filter and deduplicate it into candidate pools, and score each candidate by the "
        "effective robustness of a CLIP trained on it at a fixed budget."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
