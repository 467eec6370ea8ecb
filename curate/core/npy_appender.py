"""A ``.npy`` file that grows by appending rows, for embeddings written part by part.

numpy pads every ``.npy`` header so that the first dimension can be rewritten in place
(``numpy.lib.format.GROWTH_AXIS_MAX_DIGITS``): rows are appended with plain writes and the
header gets the final row count on :meth:`NpyAppender.close`. The result is an ordinary
``.npy`` that ``np.load(..., mmap_mode="r")`` opens, written without knowing the row count
in advance and without holding the array in memory.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npy_format

from curate.core.npy_header import NpyHeader, read_npy_header


def _header(dtype: np.dtype, rows: int, dim: int) -> bytes:
    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(
        buffer,
        {"descr": npy_format.dtype_to_descr(dtype), "fortran_order": False, "shape": (rows, dim)},
    )
    return buffer.getvalue()


def _read_header(handle: IO[bytes]) -> NpyHeader:
    header = read_npy_header(handle)
    if header.fortran_order or len(header.shape) != 2:
        raise ValueError(f"{handle.name}: expected a C-order 2-d array, got shape {header.shape}")
    return header


class NpyAppender:
    """Append float rows of a fixed width to ``path``; ``rows`` existing rows are kept.

    Reopening with ``rows=n`` truncates anything after the first ``n`` rows (what a crashed
    run may have left), which is how a resumed writer continues a file.
    """

    def __init__(self, path: Path, dim: int, rows: int = 0, dtype: str = "<f2") -> None:
        self.path = Path(path)
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.rows = rows
        if self.path.exists():
            with open(self.path, "rb") as handle:
                shape, file_dtype, _, offset = _read_header(handle)
            if shape[1] != dim or file_dtype != self.dtype:
                raise ValueError(
                    f"{self.path}: staged array is {file_dtype}[{shape[1]}], expected "
                    f"{self.dtype}[{dim}]; delete the staging directory and rerun"
                )
            self._offset = offset
            self._handle = open(self.path, "r+b")
            self._handle.truncate(offset + rows * dim * self.dtype.itemsize)
            self._handle.seek(0, 2)
        else:
            if rows:
                raise ValueError(f"{self.path}: cannot resume {rows} rows of a missing file")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            header = _header(self.dtype, 0, dim)
            self._offset = len(header)
            self._handle = open(self.path, "w+b")
            self._handle.write(header)

    def append(self, block: np.ndarray) -> None:
        if block.ndim != 2 or block.shape[1] != self.dim:
            raise ValueError(f"{self.path}: expected rows of width {self.dim}, got {block.shape}")
        self._handle.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.rows += block.shape[0]

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> int:
        """Write the final row count into the header; returns the number of rows."""
        header = _header(self.dtype, self.rows, self.dim)
        if len(header) != self._offset:
            raise AssertionError(f"{self.path}: .npy header size changed")  # numpy guarantees
        self._handle.seek(0)
        self._handle.write(header)
        self._handle.close()
        return self.rows


def compact_rows(path: Path, keep: np.ndarray, rows_per_chunk: int = 65_536) -> int:
    """Drop the rows of a 2-d ``.npy`` where ``keep`` is False, in place, in bounded memory.

    Rows only move towards the start of the file, so each chunk is read before anything
    overwrites it.
    """
    array = np.load(path, mmap_mode="r+")
    if keep.shape != (array.shape[0],):
        raise ValueError(f"{path}: keep mask has {keep.shape[0]} rows, array has {array.shape[0]}")
    write = 0
    for start in range(0, array.shape[0], rows_per_chunk):
        block = np.array(array[start : start + rows_per_chunk])[
            keep[start : start + rows_per_chunk]
        ]
        array[write : write + len(block)] = block
        write += len(block)
    array.flush()
    dim, dtype = array.shape[1], array.dtype
    del array
    with open(path, "r+b") as handle:
        offset = _read_header(handle).offset
        header = _header(dtype, write, dim)
        if len(header) != offset:
            raise AssertionError(f"{path}: .npy header size changed")
        handle.seek(0)
        handle.write(header)
        handle.truncate(offset + write * dim * dtype.itemsize)
    return write
