"""Arrow arrays built from numpy buffers equal the ones ``pa.array`` builds."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from curate.core.arrow_numpy import binary_array, numpy_array, numpy_values, string_array


@pytest.mark.parametrize("dtype", [np.int32, np.uint64, np.uint16, np.float32, np.bool_])
def test_numpy_array_equals_pa_array(dtype):
    rng = np.random.default_rng(0)
    values = (rng.random(1001) * 100).astype(dtype)
    null = rng.random(1001) < 0.2
    assert numpy_array(values).equals(pa.array(values))
    with_nulls = numpy_array(values, null)
    assert with_nulls.equals(pa.array(values, mask=null))
    assert with_nulls.null_count == null.sum()
    assert numpy_array(values[3:900:3]).equals(pa.array(values[3:900:3]))  # a strided view


def test_string_array_and_numpy_values():
    assert string_array(["a", "", "ünï"]).equals(pa.array(["a", "", "ünï"], pa.string()))
    assert string_array([]).equals(pa.array([], pa.string()))
    assert binary_array([b"\x00\xff", b""]).equals(pa.array([b"\x00\xff", b""], pa.binary()))
    chunked = pa.chunked_array([pa.array([1, 2], pa.int32()), pa.array([3], pa.int32())])
    assert numpy_values(chunked).tolist() == [1, 2, 3]
    assert numpy_values(pa.array([True, False])).tolist() == [True, False]
    with_null = pa.array([5, None, 7], pa.int32())
    assert numpy_values(with_null, null_as=0).tolist() == [5, 0, 7]
    with pytest.raises(ValueError, match="nulls"):
        numpy_values(with_null)
    with pytest.raises(ValueError, match="1-d"):
        numpy_array(np.zeros((2, 2)))
