"""128-bit sample ids as DataComp uses them: 32 lowercase hex characters.

DataComp's subset files store each uid as two unsigned 64-bit integers (the high and low
halves of the hex string) in a sorted numpy structured array of dtype ``u8,u8``.
This module is the one place that converts between the two forms.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import polars as pl

SUBSET_DTYPE = np.dtype("u8,u8")
UID_HEX_CHARS = 32
_MAX_TIED_RUNS = 10_000  # sort_pairs falls back to lexsort beyond this many tied runs


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


def uid_halves(uid: pl.Expr) -> list[pl.Expr]:
    """Polars expressions for hex uids: ``f0``/``f1``, the high and low halves as UInt64
    (DataComp's ``int(uid[:16], 16)``, ``int(uid[16:32], 16)``), and ``uid_bytes``, the
    length that :func:`halves_to_pairs` checks. Non-hex characters fail the query."""
    import polars as pl

    return [
        uid.str.slice(0, 16).str.to_integer(base=16, dtype=pl.UInt64).alias("f0"),
        uid.str.slice(16, 16).str.to_integer(base=16, dtype=pl.UInt64).alias("f1"),
        uid.str.len_bytes().alias("uid_bytes"),
    ]


def halves_to_pairs(halves: pl.DataFrame) -> np.ndarray:
    """The ``u8,u8`` array (same order, unsorted) of a frame selected with :func:`uid_halves`."""
    wrong_length = (halves["uid_bytes"] != UID_HEX_CHARS).fill_null(True)
    if wrong_length.any():
        raise ValueError(
            f"{wrong_length.sum()} uid(s) are not {UID_HEX_CHARS} hex characters "
            f"(the first at position {wrong_length.arg_true()[0]})"
        )
    pairs = np.empty(halves.height, dtype=SUBSET_DTYPE)
    pairs["f0"] = halves["f0"].to_numpy()
    pairs["f1"] = halves["f1"].to_numpy()
    return pairs


def sort_pairs(pairs: np.ndarray) -> np.ndarray:
    """``np.sort(pairs)`` for a ``u8,u8`` array, several times faster.

    numpy sorts structured records with a slow generic comparison; here the high halves,
    with each record's position packed into their lowest bits, go through numpy's fast
    integer sort, and the rare runs whose high halves agree above those bits are re-sorted
    on both halves.
    """
    count = len(pairs)
    if count < 2:
        return pairs.copy()
    index_bits = (count - 1).bit_length()
    index_mask = np.uint64((1 << index_bits) - 1)
    keys = (pairs["f0"] & ~index_mask) | np.arange(count, dtype=np.uint64)
    keys.sort()
    result = pairs[(keys & index_mask).astype(np.intp)]
    prefix = keys >> np.uint64(index_bits)
    tied = np.concatenate(([False], prefix[1:] == prefix[:-1], [False]))
    edges = np.flatnonzero(np.diff(tied.astype(np.int8)))
    if len(edges) // 2 > _MAX_TIED_RUNS:
        return pairs[np.lexsort((pairs["f1"], pairs["f0"]))]
    for start, stop in zip(edges[0::2], edges[1::2] + 1, strict=True):
        run = result[start:stop]
        result[start:stop] = run[np.lexsort((run["f1"], run["f0"]))]
    return result


def to_subset_array(uids: Iterable[str]) -> np.ndarray:
    """DataComp's subset array: uid pairs, sorted (as ``np.sort`` on the structured dtype)."""
    return sort_pairs(uids_to_pairs(uids))


def save_subset(uids: Iterable[str], path: Path) -> None:
    """Write a DataComp subset ``.npy`` atomically."""
    from curate.core.atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, to_subset_array(uids))


def load_subset(path: Path) -> list[str]:
    """Read a DataComp subset ``.npy`` back into hex uids (sorted order)."""
    array = np.load(path, allow_pickle=False)
    if array.dtype != SUBSET_DTYPE:
        raise ValueError(f"{path}: expected a subset array of dtype u8,u8, got {array.dtype}")
    return pairs_to_uids(array)


_CHUNK_ROWS = 1 << 16  # uids decoded at a time (their words stay in the CPU's cache)
_LOW_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)
_ONES = np.uint64(0x0101010101010101)


def arrow_uid_halves(uids: object) -> tuple[np.ndarray, int]:
    """An Arrow string array of uids -> ``(halves, first_bad)``: an ``(n, 2)`` uint64 array
    of each uid's high and low halves (DataComp's ``int(uid[:16], 16)``,
    ``int(uid[16:32], 16)``) and the position of the first uid that is not 32 lowercase hex
    characters (or null), ``-1`` when all are. Works on the string buffer with numpy, eight
    characters per 64-bit word: several times faster than parsing the strings."""
    import pyarrow as pa

    array = uids.combine_chunks() if isinstance(uids, pa.ChunkedArray) else uids
    assert isinstance(array, pa.Array)
    if pa.types.is_large_string(array.type):
        offset_type = np.int64
    elif pa.types.is_string(array.type):
        offset_type = np.int32
    else:
        raise ValueError(f"uids must be strings, not {array.type}")
    count = len(array)
    halves = np.zeros((count, 2), dtype=np.uint64)
    if count == 0:
        return halves, -1
    validity, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=offset_type)[
        array.offset : array.offset + count + 1
    ]
    bad = np.diff(offsets) != UID_HEX_CHARS
    if validity is not None:
        bad |= ~np.asarray(array.is_valid())
    if data_buffer is None or bad.all():
        return halves, int(np.argmax(bad)) if bad.any() else -1
    data = np.frombuffer(data_buffer, dtype=np.uint8)
    sized = np.flatnonzero(~bad)
    if len(sized) == count:  # the usual case: the characters lie back to back
        chars = data[offsets[0] : offsets[0] + count * UID_HEX_CHARS].reshape(count, -1)
    else:
        chars = data[offsets[:-1][sized].astype(np.int64)[:, None] + np.arange(UID_HEX_CHARS)]
    values = np.empty((len(sized), 2), dtype=np.uint64)
    valid = np.empty(len(sized), dtype=bool)
    for start in range(0, len(sized), _CHUNK_ROWS):
        block = slice(start, start + _CHUNK_ROWS)
        values[block], valid[block] = _decode_hex(chars[block])
    halves[sized] = values
    bad[sized[~valid]] = True
    return halves, int(np.argmax(bad)) if bad.any() else -1


def _decode_hex(chars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 32)`` ASCII bytes -> (``(n, 2)`` uint64 halves, per row: all lowercase hex).

    Per byte, a digit's value is ``(c & 15) + 9 * (c >> 6 & 1)`` ('0'-'9': 0-9, 'a'-'f':
    10-15); a byte is valid when that value is below 16 and re-encoding it gives the byte back."""
    words = np.ascontiguousarray(chars).view("<u8")
    nibbles = (words & _LOW_NIBBLES) + ((words >> np.uint64(6)) & _ONES) * np.uint64(9)
    above_nine = ((nibbles + _ONES * np.uint64(6)) >> np.uint64(4)) & _ONES
    encoded = nibbles + _ONES * np.uint64(0x30) + above_nine * np.uint64(0x27)
    in_range = (nibbles & ~_LOW_NIBBLES) == 0  # 'g'..'o' would give 16..24
    valid = ((encoded == words) & in_range).all(axis=1)
    return _pack_nibbles(nibbles), valid


def _pack_nibbles(words: np.ndarray) -> np.ndarray:
    """``(n, 4)`` uint64 words of hex digit values (one per byte, 0-15, the first digit in
    the lowest byte) -> ``(n, 2)`` uint64 halves, by shifts and masks."""
    words = ((words << np.uint64(4)) | (words >> np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
    words = (words | (words >> np.uint64(8))) & np.uint64(0x0000FFFF0000FFFF)
    words = (words | (words >> np.uint64(16))) & np.uint64(0xFFFFFFFF)
    quarters = words.astype(np.uint32).byteswap().astype(np.uint64)  # big-endian 32-bit values
    return (quarters[:, 0::2] << np.uint64(32)) | quarters[:, 1::2]


# every byte's two hex digits, as the little-endian uint16 whose bytes are those characters
_HEX_PAIRS = np.frombuffer(
    "".join(f"{byte:02x}" for byte in range(256)).encode("ascii"), dtype="<u2"
).copy()


def halves_to_arrow_uids(halves: np.ndarray) -> object:
    """``(n, 2)`` uint64 halves (or a ``u8,u8`` array) -> an Arrow ``large_string`` array of
    32-character lowercase hex uids, built with numpy (the inverse of
    :func:`arrow_uid_halves`)."""
    return hex_chars_to_arrow(hex_chars(halves))


def hex_chars(halves: np.ndarray) -> np.ndarray:
    """``(n, 2)`` uint64 halves (or a ``u8,u8`` array) -> their uids' characters, ``(n, 32)``
    uint8: one table lookup per byte."""
    if halves.dtype == SUBSET_DTYPE:
        halves = np.ascontiguousarray(halves).view(np.uint64).reshape(-1, 2)
    count = len(halves)
    chars = np.empty((count, UID_HEX_CHARS // 2), dtype="<u2")  # two characters per byte
    for start in range(0, count, _CHUNK_ROWS):
        block = np.ascontiguousarray(halves[start : start + _CHUNK_ROWS], dtype=">u8")
        chars[start : start + _CHUNK_ROWS] = _HEX_PAIRS[
            block.view(np.uint8).reshape(len(block), -1)
        ]
    return chars.view(np.uint8)


def hex_chars_to_arrow(chars: np.ndarray) -> object:
    """``(n, 32)`` uint8 uid characters -> an Arrow ``large_string`` array (no copy)."""
    import pyarrow as pa

    count = len(chars)
    offsets = np.arange(count + 1, dtype=np.int64) * UID_HEX_CHARS
    return pa.LargeStringArray.from_buffers(
        count, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(chars))
    )
