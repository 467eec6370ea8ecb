"""What training leaves on disk: the curate checkpoint (final weights) and the resumable
training state, both written atomically.

A curate checkpoint directory::

    model.safetensors       the open_clip model's state_dict
    model_config.json       {"arch", "image_size", "context_length", "training": {...}}
    open_clip_config.json   {"model_cfg", "preprocess_cfg"}: open_clip itself loads the
                            directory as ``create_model_and_transforms("local-dir:DIR")``

``model_config.json`` is written last, so a directory with it is complete.
The training state (``train_state.pt``: weights, optimizer, grad scaler, step, loss curve,
RNG state) is one ``torch.save`` file replaced atomically every ``checkpoint_every`` steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from curate.core.atomic import atomic_path, write_json
from curate.models.loading import CHECKPOINT_CONFIG, CHECKPOINT_WEIGHTS

OPEN_CLIP_CONFIG = "open_clip_config.json"


def save_model_checkpoint(
    model: torch.nn.Module, directory: Path, arch: str, training: dict[str, Any]
) -> None:
    import open_clip
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / CHECKPOINT_WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"arch": arch})
    preprocess_cfg = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in getattr(model.visual, "preprocess_cfg", {}).items()
    }
    write_json(
        directory / OPEN_CLIP_CONFIG,
        {"model_cfg": open_clip.get_model_config(arch), "preprocess_cfg": preprocess_cfg},
    )
    size = preprocess_cfg.get("size")  # a pair for a ViT tower, one int for a ModifiedResNet
    image_size = size[0] if isinstance(size, list) else size
    write_json(
        directory / CHECKPOINT_CONFIG,
        {
            "arch": arch,
            "image_size": image_size,
            "context_length": int(model.context_length),
            "training": training,
        },
    )


def is_complete_checkpoint(directory: Path) -> bool:
    directory = Path(directory)
    return (directory / CHECKPOINT_CONFIG).is_file() and (directory / CHECKPOINT_WEIGHTS).is_file()


def save_train_state(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(Path(path)) as tmp:
        torch.save(state, tmp)


def load_train_state(path: Path) -> dict[str, Any] | None:
    path = Path(path)
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
