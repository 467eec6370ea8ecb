"""Embeddings of a pool's rows: float16, L2-normalised, row-aligned with its samples table.

A set stored in the pool is ``embeddings/<name>/``: ``image.npy`` and ``text.npy`` are plain
``.npy`` files (shape rows x dim) so that numpy can memory-map them and any tool can read
them; ``meta.json`` records the model that made them; ``clip_score.parquet`` holds
(uid, clip_score).

A DataComp pool used in place (``curate ingest --format datacomp`` without ``--copy``) stores
nothing: its sets ``datacomp-b32`` and ``datacomp-l14`` are the ``.npz`` members beside its
parquet files (``sample_files.json``), read where they are. Each member is one
:class:`ArrayPart` (a file and the byte offset of its data: zip local header + npy header;
members must be stored uncompressed, as ``np.savez`` and DataComp write them), and a set's
array is its parts concatenated in pool order (:class:`EmbeddingParts`). Every block read
from them goes through :func:`unit_rows` and float16, as ``--copy`` stores them, so both give
the same bytes. :class:`PartsArray` is the array-like view :func:`load_embeddings` returns
for them; the out-of-core stages read the parts with :class:`curate.dedup.blocks.NpyFile`.
"""

from __future__ import annotations

import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import polars as pl

from curate.core.atomic import write_parquet
from curate.core.errors import InputNotFoundError, UserInputError
from curate.core.layout import EmbeddingLayout, PoolLayout
from curate.core.npy_header import NpyHeader, read_npy_header

# set name -> (npz key of image vectors, npz key of text vectors, model identity): DataComp's
# precomputed OpenAI CLIP embeddings, one .npz per metadata parquet, row-aligned with it
DATACOMP_NPZ_SETS: dict[str, tuple[str, str, dict[str, str]]] = {
    "datacomp-b32": ("b32_img", "b32_txt", {"arch": "ViT-B-32", "pretrained": "openai"}),
    "datacomp-l14": ("l14_img", "l14_txt", {"arch": "ViT-L-14", "pretrained": "openai"}),
}


class MissingEmbeddingsError(InputNotFoundError):
    """A pool has no embedding set of that name (or not exactly one, when none is named)."""


def unit_rows(block: np.ndarray) -> np.ndarray:
    """Rows L2-normalised in float32 (a zero row stays zero): what a pool stores, cast to
    float16, of vectors it did not compute itself (DataComp's .npz)."""
    vectors = np.asarray(block, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1)


def clip_score_rows(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Float32 cosine of row-aligned float16 unit vectors: the pool's clip_score."""
    return np.einsum("ij,ij->i", image.astype(np.float32), text.astype(np.float32))


@dataclass(frozen=True)
class ArrayPart:
    """``rows`` rows of a C-order 2-d array whose data starts ``offset`` bytes into ``path``
    (a ``.npy`` file, or an uncompressed ``.npz`` member: ``where`` names it in messages)."""

    path: Path
    offset: int
    rows: int
    where: str


@dataclass(frozen=True)
class EmbeddingParts:
    """One embedding array as its parts, concatenated in row order. ``normalize``: the parts
    hold the source's vectors, and each block read becomes :func:`unit_rows` in float16."""

    parts: tuple[ArrayPart, ...]
    dim: int
    stored_dtype: str  # the parts' dtype on disk
    normalize: bool

    @property
    def rows(self) -> int:
        return sum(part.rows for part in self.parts)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.dim)

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the rows a reader returns."""
        return np.dtype(np.float16) if self.normalize else np.dtype(self.stored_dtype)

    @property
    def first_rows(self) -> np.ndarray:
        """The row of each part's first row, and the total: ``len(parts) + 1`` edges."""
        return np.cumsum([0, *(part.rows for part in self.parts)], dtype=np.int64)

    def values(self, raw: np.ndarray) -> np.ndarray:
        """The rows a reader returns for ``raw`` rows read from the parts."""
        return unit_rows(raw).astype(np.float16) if self.normalize else raw

    @classmethod
    def npy(cls, path: Path | str) -> EmbeddingParts:
        """A whole ``.npy`` file, returned as stored."""
        path = Path(path)
        with open(path, "rb") as handle:
            shape, dtype, _, offset = c_order_header(handle, str(path))
        if len(shape) != 2:
            raise UserInputError(f"{path}: expected a 2-D array, found shape {shape}")
        return cls((ArrayPart(path, offset, shape[0], str(path)),), shape[1], dtype.str, False)


class PartsArray:
    """A read-only array-like over :class:`EmbeddingParts`, for the code that indexes
    ``Embeddings.image`` as an array: ``shape``, ``dtype``, ``len``, ``view[i]``,
    ``view[a:b]``, ``view[rows]``, ``view[mask]``, ``np.asarray(view)``. Reads go through a
    memory map of each part and only the rows asked for."""

    def __init__(self, source: EmbeddingParts) -> None:
        self.source = source
        self._edges = source.first_rows
        self._maps: dict[int, np.ndarray] = {}

    @property
    def shape(self) -> tuple[int, int]:
        return self.source.shape

    @property
    def dtype(self) -> np.dtype:
        return self.source.dtype

    @property
    def ndim(self) -> int:
        return 2

    def __len__(self) -> int:
        return self.source.rows

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def astype(self, dtype: Any) -> np.ndarray:
        return self[:].astype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            first, rest = (key[0] if key else slice(None)), key[1:]
            picked = self[first]
            return picked[rest] if picked.ndim == 1 else picked[(slice(None), *rest)]
        if isinstance(key, (int, np.integer)):
            row = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= row < len(self):
                raise IndexError(f"row {key} out of range for {len(self)} rows")
            return self._read(np.array([row], dtype=np.int64))[0]
        if isinstance(key, slice):
            return self._read(np.arange(*key.indices(len(self)), dtype=np.int64))
        index = np.asarray(key)
        if index.dtype == bool:
            if index.shape != (len(self),):
                raise IndexError(f"boolean index of shape {index.shape} for {len(self)} rows")
            return self._read(np.flatnonzero(index))
        rows = index.astype(np.int64, copy=False).reshape(-1)
        rows = np.where(rows < 0, rows + len(self), rows)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row index out of range 0..{len(self) - 1}")
        return self._read(rows).reshape(*index.shape, self.source.dim)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        raw = np.empty((len(rows), self.source.dim), dtype=self.source.stored_dtype)
        which = np.searchsorted(self._edges, rows, side="right") - 1
        for part in np.unique(which).tolist():
            chosen = which == part
            raw[chosen] = self._map(part)[rows[chosen] - self._edges[part]]
        return self.source.values(raw)

    def _map(self, part: int) -> np.ndarray:
        if part not in self._maps:
            where = self.source.parts[part]
            self._maps[part] = np.memmap(
                where.path,
                dtype=self.source.stored_dtype,
                mode="r",
                offset=where.offset,
                shape=(where.rows, self.source.dim),
            )
        return self._maps[part]


@dataclass(frozen=True)
class Embeddings:
    name: str
    image: np.ndarray | PartsArray  # float16 (rows, dim): a memory map, or the .npz in place
    text: np.ndarray | PartsArray | None
    meta: dict[str, Any]


def c_order_header(handle: IO[bytes], where: str) -> NpyHeader:
    """The header of the ``.npy`` data at ``handle``'s position (:func:`read_npy_header`); a
    Fortran-ordered array is a :class:`UserInputError` naming ``where``."""
    header = read_npy_header(handle)
    if header.fortran_order:
        raise UserInputError(f"{where}: Fortran-ordered arrays are not supported")
    return header


def npz_member(path: Path, key: str) -> tuple[ArrayPart, tuple[int, ...], np.dtype]:
    """Where the data of ``.npz`` member ``key`` starts, read in place: the member's zip local
    header (its own name and extra-field lengths), then the npy header. A deflated member
    (``np.savez_compressed``) cannot be read in place: a one-line error says so."""
    member = f"{key}.npy"
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(member)
    except KeyError:
        raise UserInputError(
            f"{path}: has no member {member}, which the pool's first .npz has; every .npz of "
            "a pool used in place needs the same members (or ingest with --copy)"
        ) from None
    except (OSError, zipfile.BadZipFile) as error:
        raise UserInputError(f"{path}: not a readable .npz ({error})") from None
    if info.compress_type != zipfile.ZIP_STORED:
        raise UserInputError(
            f"{path}: member {member} is compressed (np.savez_compressed), so the pool cannot "
            "read it in place; ingest the folder with --copy, which stores the embeddings"
        )
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise UserInputError(f"{path}: member {member} has no zip header; the .npz is damaged")
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + name_length + extra_length
        handle.seek(start)
        shape, dtype, _, offset = c_order_header(handle, f"{path}:{member}")
    if len(shape) != 2 or dtype.kind != "f":
        raise UserInputError(f"{path}:{member}: expected a 2-d float array, got {dtype} {shape}")
    if offset - start + shape[0] * shape[1] * dtype.itemsize > info.file_size:
        raise UserInputError(f"{path}: member {member} ends before its last row; it is damaged")
    return ArrayPart(path, offset, shape[0], f"{path}:{member}"), shape, dtype


def _in_place_npz(pool_root: Path) -> list[tuple[Path, int]]:
    """(npz, rows) of each file of a pool that uses DataComp's files in place; [] otherwise."""
    from curate.core.pool import sample_files

    layout = PoolLayout(Path(pool_root))
    if layout.samples.is_file() or not layout.sample_files.is_file():
        return []
    files = sample_files(pool_root)
    if not files or any(file.npz is None for file in files):
        return []
    return [(file.npz, file.rows) for file in files if file.npz is not None]


def _npz_members(path: Path) -> set[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return {name.removesuffix(".npy") for name in archive.namelist()}
    except (OSError, zipfile.BadZipFile) as error:
        raise UserInputError(f"{path}: not a readable .npz ({error})") from None


def _in_place_sets(pool_root: Path) -> dict[str, tuple[str, str | None]]:
    """Set name -> (image key, text key or None) of the .npz an in-place pool uses (the
    members of its first .npz; :func:`embedding_parts` checks the others)."""
    npz = _in_place_npz(pool_root)
    if not npz:
        return {}
    members = _npz_members(npz[0][0])
    return {
        name: (image_key, text_key if text_key in members else None)
        for name, (image_key, text_key, _) in DATACOMP_NPZ_SETS.items()
        if image_key in members
    }


def _npz_parts(npz: list[tuple[Path, int]], key: str) -> EmbeddingParts:
    parts: list[ArrayPart] = []
    first: tuple[int, np.dtype] | None = None
    for path, rows in npz:
        part, shape, dtype = npz_member(path, key)
        if shape[0] != rows:
            raise UserInputError(
                f"{path}: {key} has {shape[0]} rows but its parquet has {rows}; the embeddings "
                "must be row-aligned with the parquet"
            )
        if first is None:
            first = (shape[1], dtype)
        elif (shape[1], dtype) != first:
            raise UserInputError(
                f"{path}: {key} is {dtype}[{shape[1]}] but {npz[0][0].name}'s is "
                f"{first[1]}[{first[0]}]; every .npz of the pool needs the same"
            )
        parts.append(part)
    assert first is not None
    return EmbeddingParts(tuple(parts), first[0], first[1].str, normalize=True)


def list_embeddings(pool_root: Path) -> list[str]:
    """The pool's embedding sets: those stored in it and, for DataComp's files used in place,
    ``datacomp-b32`` / ``datacomp-l14`` where the .npz hold their members."""
    directory = PoolLayout(Path(pool_root)).embeddings_dir
    stored = (
        {p.name for p in directory.iterdir() if (p / "meta.json").is_file()}
        if directory.is_dir()
        else set()
    )
    return sorted(stored | set(_in_place_sets(pool_root)))


def _resolve_name(pool_root: Path, name: str | None) -> str:
    available = list_embeddings(pool_root)
    if name is None:
        if len(available) != 1:
            raise MissingEmbeddingsError(
                f"{pool_root}: expected exactly one embedding set, found {available or 'none'}; "
                "run `curate embed` first or name the set to use"
            )
        name = available[0]
    if name not in available:
        raise MissingEmbeddingsError(
            f"{pool_root}: no embeddings named {name!r} (have: {available or 'none'}); "
            "run `curate embed` first"
        )
    return name


def embedding_parts(
    pool_root: Path, name: str | None = None
) -> tuple[str, EmbeddingParts, EmbeddingParts | None]:
    """Set name, and where its image and text rows are: the stored ``.npy`` files, or the
    ``.npz`` members of a pool used in place (every member checked: present, uncompressed,
    as many rows as its parquet, one dtype and width)."""
    name = _resolve_name(pool_root, name)
    layout = embedding_layout(pool_root, name)
    if layout.meta.is_file():
        text = EmbeddingParts.npy(layout.text) if layout.text.is_file() else None
        return name, EmbeddingParts.npy(layout.image), text
    image_key, text_key = _in_place_sets(pool_root)[name]
    npz = _in_place_npz(pool_root)
    return name, _npz_parts(npz, image_key), None if text_key is None else _npz_parts(npz, text_key)


def load_embeddings(pool_root: Path, name: str | None = None) -> Embeddings:
    """Memory-map a pool's embeddings; ``name=None`` picks the only set (or errors). A set
    used in place is a :class:`PartsArray` over its .npz members, with the meta ``--copy``
    would have written (the pool's name, root and creation; the ingest that made it)."""
    name = _resolve_name(pool_root, name)
    layout = embedding_layout(pool_root, name)
    if layout.meta.is_file():
        meta = json.loads(layout.meta.read_text("utf-8"))
        image = np.load(layout.image, mmap_mode="r")
        text = np.load(layout.text, mmap_mode="r") if layout.text.is_file() else None
        return Embeddings(name=name, image=image, text=text, meta=meta)
    from curate.core.manifest import read_manifest

    _, image_parts, text_parts = embedding_parts(pool_root, name)
    manifest = read_manifest(Path(pool_root))
    image_key, _, identity = DATACOMP_NPZ_SETS[name]
    meta = {
        **identity,
        "dim": image_parts.dim,
        "source": f"DataComp metadata .npz ({image_key})",
        "name": name,
        "rows": image_parts.rows,
        "dtype": "float16",
        "normalized": True,
        "pool": {
            "name": manifest.name,
            "root": str(Path(pool_root).resolve()),
            "created": manifest.created,
        },
        "produced_by": manifest.produced_by,
    }
    text = None if text_parts is None else PartsArray(text_parts)
    return Embeddings(name=name, image=PartsArray(image_parts), text=text, meta=meta)


def embedding_layout(pool_root: Path, name: str) -> EmbeddingLayout:
    return PoolLayout(Path(pool_root)).embeddings(name)


CLIP_SCORE_CHUNK_ROWS = 65_536


def write_clip_score(layout: EmbeddingLayout, samples: Path) -> None:
    """Write ``clip_score.parquet`` (uid, clip_score) of an embedding set.

    clip_score is the dot product of the stored float16 unit vectors, computed in float32
    (the cosine of image and caption), so anyone can recompute it from image.npy and text.npy;
    uids come from ``samples`` (the samples.parquet the arrays are row-aligned with).
    """
    image = np.load(layout.image, mmap_mode="r")
    text = np.load(layout.text, mmap_mode="r")
    scores = np.empty(image.shape[0], dtype=np.float32)
    for start in range(0, image.shape[0], CLIP_SCORE_CHUNK_ROWS):
        stop = start + CLIP_SCORE_CHUNK_ROWS
        scores[start:stop] = clip_score_rows(image[start:stop], text[start:stop])
    uids = pl.read_parquet(samples, columns=["uid"])
    write_parquet(layout.clip_score, uids.with_columns(clip_score=pl.Series(scores)))
