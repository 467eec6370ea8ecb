"""The header of ``.npy`` data (format versions 1.0 and 2.0): the one reader of it.

Callers check the shape, dtype and order they accept and raise their own errors.
"""

from __future__ import annotations

from typing import IO, NamedTuple

import numpy as np
from numpy.lib import format as npy_format


class NpyHeader(NamedTuple):
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int  # the position of the data's first byte in the handle


def read_npy_header(handle: IO[bytes]) -> NpyHeader:
    """The header of the ``.npy`` data at ``handle``'s position, which it leaves at the data's
    first byte (a damaged header raises numpy's ValueError)."""
    version = npy_format.read_magic(handle)
    read_header = (
        npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    )
    shape, fortran_order, dtype = read_header(handle)
    return NpyHeader(tuple(shape), dtype, fortran_order, handle.tell())
