"""open_clip model configs that ship with curate (small CLIPs that train on a CPU).

open_clip looks architectures up by name in its config registry; registering this
package's ``model_configs/`` folder makes ``curate-tiny-vit-p4`` a name like ``ViT-B-32``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

MODEL_CONFIG_DIR = Path(__file__).with_name("model_configs")


@cache
def register_curate_models() -> None:
    import open_clip

    open_clip.add_model_config(MODEL_CONFIG_DIR)
