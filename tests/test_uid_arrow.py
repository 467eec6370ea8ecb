"""The vectorised uid <-> (u64, u64) conversions (curate.core.uid.arrow_uid_halves,
halves_to_arrow_uids) against DataComp's own ``int(uid[:16], 16)`` and Python's checks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from curate.core.uid import arrow_uid_halves, halves_to_arrow_uids, is_valid_uid, make_uid


@pytest.mark.parametrize("kind", [pa.string(), pa.large_string()])
def test_halves_equal_datacomp_conversion_and_round_trip(kind):
    uids = [make_uid("u", str(i)) for i in range(70_000)]  # more than one decoding chunk
    uids[3] = "0" * 32
    uids[4] = "f" * 32
    halves, first_bad = arrow_uid_halves(pa.array(uids, kind).slice(1))
    reference = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids[1:]], np.uint64)
    assert first_bad == -1 and np.array_equal(halves, reference)
    assert halves_to_arrow_uids(halves).to_pylist() == uids[1:]


def test_every_invalid_character_and_length_is_found():
    good = make_uid("x")
    for code in [*range(0, 128), 0xE9, 0x4E2D]:
        for position in (0, 15, 16, 31):
            uid = good[:position] + chr(code) + good[position + 1 :]
            if is_valid_uid(uid) and uid == uid.lower():
                continue
            _, first_bad = arrow_uid_halves(pa.array([good, good, uid, good]))
            assert first_bad == 2, (code, position)
    for bad in (good[:31], good + "0", "", None):
        _, first_bad = arrow_uid_halves(pa.array([good, bad, good]))
        assert first_bad == 1, bad
