"""The one place curate loads a CLIP model: architecture, weights, preprocessing, tokenizer.

Weights come from exactly one of:

- ``pretrained=TAG``: one of open_clip's pretrained tags for ``arch`` (``laion2b_s34b_b79k``,
  ``openai``, ...), passed through to ``open_clip.create_model_and_transforms`` so the tag's
  preprocessing (mean, std, interpolation) is used, exactly as open_clip users expect.
- ``pretrained=PATH`` or ``checkpoint=FILE``: a local weights file. ``.safetensors`` is
  read with safetensors; anything else (``.pt``, ``.pth``, ``.bin``) with
  ``torch.load(weights_only=True)``, so no pickled code runs. Both raw state_dicts and
  open_clip training checkpoints (``{"state_dict": ...}`` with ``module.`` prefixes) load.
- ``checkpoint=DIR`` (or ``pretrained=DIR``): a curate checkpoint directory
  (``model.safetensors`` + ``model_config.json`` with ``{"arch": ...}``), as written by
  ``curate train-filter``; ``arch`` may then be omitted.
- nothing: random initialisation (for training from scratch).

Local weights are checked key by key against the architecture before loading, so a
checkpoint made for another architecture fails with the file and the first mismatching key
instead of a wall of PyTorch text.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import open_clip
import torch
from safetensors.torch import load_file

from curate.core.errors import InputNotFoundError, UserInputError
from curate.core.hashing import file_sha256
from curate.models.configs import register_curate_models

CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_CONFIG = "model_config.json"
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


class ArchitectureMismatchError(UserInputError):
    """A weights file whose keys or shapes do not fit the requested architecture."""


class LoadedClip(NamedTuple):
    """A model ready for inference (eval mode, on its device) and what identifies it.

    ``preprocess`` is open_clip's validation transform (PIL image -> tensor) and
    ``tokenizer`` maps a list of captions to a token tensor. ``identity`` is JSON-ready:
    arch, pretrained tag, checkpoint path and its sha256, embedding dim, context length and
    the preprocessing configuration; embeddings and results record it to name their model.
    """

    model: Any
    preprocess: Callable[[Any], Any]
    tokenizer: Callable[[list[str]], Any]
    identity: dict[str, Any]


def load_clip(
    arch: str | None,
    pretrained: str | None = None,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
) -> LoadedClip:
    """Build ``arch`` with open_clip and load its weights (see the module docstring)."""
    register_curate_models()
    if pretrained and checkpoint:
        raise UserInputError(
            "give either --pretrained or --checkpoint, not both "
            f"(got --pretrained {pretrained} and --checkpoint {checkpoint})"
        )
    if device != "cpu" and not device.startswith("cuda"):
        raise UserInputError(f"unknown device {device!r}: use cpu or cuda (or cuda:N)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(f"device {device!r} requested but CUDA is not available; use cpu")
    if pretrained is not None and _looks_like_path(pretrained):
        checkpoint, pretrained = pretrained, None  # a local file (or curate checkpoint dir)
    tag = pretrained
    weights_file: Path | None = None
    if checkpoint is not None:
        arch, weights_file = _resolve_checkpoint(arch, Path(checkpoint))
    if not arch:
        raise UserInputError("no architecture given: pass --model ARCH (e.g. curate-tiny-vit-p4)")
    _check_arch(arch)
    if tag is not None:
        model, preprocess = _create_with_tag(arch, tag)
    else:
        model, preprocess = _create(arch)
        if weights_file is not None:
            load_weights(model, weights_file, arch)
    model = model.to(device).eval()
    tokenizer = open_clip.get_tokenizer(arch)
    identity = {
        "arch": arch,
        "pretrained": tag,
        "checkpoint": str(weights_file.resolve()) if weights_file else None,
        "checkpoint_sha256": file_sha256(weights_file) if weights_file else None,
        "dim": _embedding_dim(model, tokenizer, device),
        "context_length": int(getattr(tokenizer, "context_length", 0)) or None,
        "preprocess": _jsonable(getattr(model.visual, "preprocess_cfg", {})),
    }
    return LoadedClip(model, preprocess, tokenizer, identity)


def load_weights(model: Any, path: Path, arch: str) -> None:
    """Load a local weights file into ``model``, refusing any key or shape mismatch."""
    state_dict = read_state_dict(path)
    check_fits(model, state_dict, path, arch)
    model.load_state_dict(state_dict, strict=True)


def read_state_dict(path: Path) -> dict[str, Any]:
    """A state_dict from ``.safetensors`` or a ``torch.save`` file (weights only)."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"weights file {path} does not exist or is not a file")
    try:
        if path.suffix == ".safetensors":
            loaded: Any = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch and safetensors raise many types for a bad file
        raise UserInputError(
            f"{path}: cannot read weights ({type(error).__name__}: {_first_line(error)}); "
            "expected a .safetensors file or a torch.save'd state_dict (.pt/.pth/.bin); "
            "files holding pickled Python objects are refused (weights_only=True)"
        ) from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]  # open_clip training checkpoint
    if not isinstance(loaded, dict) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise UserInputError(
            f"{path}: not a state_dict (expected a mapping of parameter names to tensors, "
            "or {'state_dict': ...} as open_clip training saves)"
        )
    if loaded and all(key.startswith("module.") for key in loaded):
        loaded = {key.removeprefix("module."): value for key, value in loaded.items()}
    return loaded


def check_fits(model: Any, state_dict: dict[str, Any], path: Path, arch: str) -> None:
    """Raise :class:`ArchitectureMismatchError` naming the first key that does not fit."""
    expected = model.state_dict()
    problems: list[str] = []
    for key, tensor in expected.items():
        if key not in state_dict:
            problems.append(f"key {key!r} is missing from the file")
        elif tuple(state_dict[key].shape) != tuple(tensor.shape):
            problems.append(
                f"key {key!r} has shape {tuple(state_dict[key].shape)}, "
                f"{arch} expects {tuple(tensor.shape)}"
            )
    problems += [f"key {key!r} is not part of {arch}" for key in state_dict if key not in expected]
    if problems:
        more = f" ({len(problems) - 1} more keys differ)" if len(problems) > 1 else ""
        raise ArchitectureMismatchError(
            f"{path}: weights do not fit architecture {arch}: {problems[0]}{more}; "
            "pass the --model the checkpoint was trained with"
        )


def _resolve_checkpoint(arch: str | None, path: Path) -> tuple[str | None, Path]:
    """(arch, weights file) of a curate checkpoint directory or a plain weights file."""
    if not path.exists():
        raise InputNotFoundError(f"weights file or checkpoint directory {path} does not exist")
    if path.is_file():
        return arch, path
    config_path, weights = path / CHECKPOINT_CONFIG, path / CHECKPOINT_WEIGHTS
    for needed in (config_path, weights):
        if not needed.is_file():
            raise InputNotFoundError(
                f"{path} is not a curate checkpoint directory: {needed.name} is missing "
                f"(expected {CHECKPOINT_WEIGHTS} and {CHECKPOINT_CONFIG})"
            )
    try:
        saved_arch = json.loads(config_path.read_text("utf-8"))["arch"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise UserInputError(
            f"{config_path}: unreadable ({type(error).__name__}: {error}); "
            'expected JSON with an "arch" field'
        ) from None
    if arch and arch != saved_arch:
        raise ArchitectureMismatchError(
            f"{path} holds a {saved_arch} model but --model {arch} was given; "
            "drop --model or pass the matching one"
        )
    return saved_arch, weights


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.endswith(_WEIGHT_SUFFIXES) or Path(value).exists()


def _check_arch(arch: str) -> None:
    if ":" in arch:  # hf-hub:/local-dir: schemas are resolved by open_clip itself
        return
    if open_clip.get_model_config(arch) is None:
        known = open_clip.list_models()
        close = difflib.get_close_matches(arch, known, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "see open_clip.list_models()"
        raise UserInputError(f"unknown model architecture {arch!r}: {hint}")


def _create(arch: str) -> tuple[Any, Any]:
    with _without_open_clip_log("initialized randomly"):  # curate loads the weights next
        model, _, preprocess = open_clip.create_model_and_transforms(arch)
    return model, preprocess


def _create_with_tag(arch: str, tag: str) -> tuple[Any, Any]:
    if not open_clip.get_pretrained_cfg(arch, tag):
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise UserInputError(
            f"{tag!r} is neither a file nor one of open_clip's pretrained tags for {arch} "
            f"(known tags: {', '.join(tags) or 'none'}); pass a local weights file instead"
        )
    try:
        with _without_open_clip_log("Failed to download"):  # re-raised below, with advice
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=tag)
    except RuntimeError as error:
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise UserInputError(
            f"cannot get open_clip weights {arch}/{tag}{offline}: {_first_line(error)}; "
            "download them on a connected machine (they are cached by huggingface_hub) "
            "or pass the weights file with --pretrained PATH"
        ) from None
    return model, preprocess


@contextlib.contextmanager
def _without_open_clip_log(fragment: str) -> Iterator[None]:
    """Drop open_clip's (root logger) messages containing ``fragment`` within the block."""

    def keep(record: logging.LogRecord) -> bool:
        return fragment not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _embedding_dim(model: Any, tokenizer: Any, device: str) -> int:
    with torch.inference_mode():
        return int(model.encode_text(tokenizer(["a photo"]).to(device)).shape[-1])


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
