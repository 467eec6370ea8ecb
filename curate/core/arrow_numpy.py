"""numpy arrays and lists of strings as Arrow arrays, built from their buffers.

``pa.array`` imports pandas on its first call (about a quarter of a second on a 2-core
machine) to ask whether its argument is a pandas object. Commands that never touch pandas,
such as ``curate build-pool`` on a metadata pool, build their arrays here instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import pyarrow as pa


def numpy_array(values: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    """A 1-d numpy array of numbers or booleans as an Arrow array (numbers without a copy);
    null where ``null`` is true."""
    values = np.ascontiguousarray(values)
    if values.ndim != 1:
        raise ValueError(f"expected a 1-d array, got shape {values.shape}")
    nulls = 0 if null is None else int(np.count_nonzero(null))
    validity = pa.py_buffer(np.packbits(~null, bitorder="little")) if nulls else None
    if values.dtype == np.bool_:
        data = pa.py_buffer(np.packbits(values, bitorder="little"))
        kind = pa.bool_()
    else:
        data = pa.py_buffer(values)
        kind = pa.from_numpy_dtype(values.dtype)
    return pa.Array.from_buffers(kind, len(values), [validity, data], null_count=nulls)


def string_array(values: Sequence[str]) -> pa.Array:
    """Python strings as an Arrow ``string`` array."""
    return _variable_width([value.encode("utf-8") for value in values], pa.string())


def binary_array(values: Sequence[bytes]) -> pa.Array:
    """Python bytes as an Arrow ``binary`` array."""
    return _variable_width(list(values), pa.binary())


def _variable_width(encoded: list[bytes], kind: pa.DataType) -> pa.Array:
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(value) for value in encoded], out=offsets[1:])
    buffers = [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    return pa.Array.from_buffers(kind, len(encoded), buffers)


def numpy_values(array: pa.Array | pa.ChunkedArray, null_as: int | None = None) -> np.ndarray:
    """An Arrow array of numbers or booleans as a numpy array, through polars (numbers without
    nulls without a copy): ``pa.Array.to_numpy`` imports pandas too. Nulls become
    ``null_as``; without it, an array with nulls is an error."""
    series = pl.Series(array)
    if series.null_count():
        if null_as is None:
            raise ValueError(f"expected no nulls, got {series.null_count()}")
        series = series.fill_null(null_as)
    return series.to_numpy()
