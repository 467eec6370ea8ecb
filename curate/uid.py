"""128-bit sample ids as DataComp uses them: 32 lowercase hex characters.

DataComp's subset files store each uid as two unsigned 64-bit integers (the high and low
halves of the hex string) in a sorted numpy structured array of dtype ``u8,u8``.
This module is the one place that converts between the two forms.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

SUBSET_DTYPE = np.dtype("u8,u8")
UID_HEX_CHARS = 32


def make_uid(*parts: str) -> str:
    """A deterministic uid from the parts that identify a sample at its source."""
    digest = hashlib.blake2b("\x1f".join(parts).encode("utf-8"), digest_size=16)
    return digest.hexdigest()


def is_valid_uid(uid: str) -> bool:
    if len(uid) != UID_HEX_CHARS:
        return False
    try:
        int(uid, 16)
    except ValueError:
        return False
    return uid == uid.lower()


def uids_to_pairs(uids: Sequence[str] | Iterable[str]) -> np.ndarray:
    """Hex uids -> unsorted ``u8,u8`` array (high half, low half)."""
    uid_list = list(uids)
    bad = next((u for u in uid_list if not is_valid_uid(u)), None)
    if bad is not None:
        raise ValueError(f"not a 32-hex-character uid: {bad!r}")
    raw = bytes.fromhex("".join(uid_list))
    halves = np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(-1, 2)
    pairs = np.empty(len(uid_list), dtype=SUBSET_DTYPE)
    pairs["f0"] = halves[:, 0]
    pairs["f1"] = halves[:, 1]
    return pairs


def pairs_to_uids(pairs: np.ndarray) -> list[str]:
    """``u8,u8`` array -> hex uids, in the array's order."""
    halves = np.empty((len(pairs), 2), dtype=">u8")
    halves[:, 0] = pairs["f0"]
    halves[:, 1] = pairs["f1"]
    hexed = halves.tobytes().hex()
    return [hexed[i : i + UID_HEX_CHARS] for i in range(0, len(hexed), UID_HEX_CHARS)]


def to_subset_array(uids: Iterable[str]) -> np.ndarray:
    """DataComp's subset array: uid pairs, sorted (as ``np.sort`` on the structured dtype)."""
    return np.sort(uids_to_pairs(uids))


def save_subset(uids: Iterable[str], path: Path) -> None:
    """Write a DataComp subset ``.npy`` atomically."""
    from curate.atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, to_subset_array(uids))


def load_subset(path: Path) -> list[str]:
    """Read a DataComp subset ``.npy`` back into hex uids (sorted order)."""
    array = np.load(path, allow_pickle=False)
    if array.dtype != SUBSET_DTYPE:
        raise ValueError(f"{path}: expected a subset array of dtype u8,u8, got {array.dtype}")
    return pairs_to_uids(array)
