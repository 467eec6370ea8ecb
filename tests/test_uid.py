import numpy as np
import pytest

from curate.core.uid import (
    SUBSET_DTYPE,
    load_subset,
    make_uid,
    pairs_to_uids,
    save_subset,
    sort_pairs,
    to_subset_array,
)


def test_subset_round_trip_matches_datacomp_reference(tmp_path):
    uids = [make_uid("s", str(i)) for i in range(100)] + ["ffffffffffffffff0000000000000001"]
    # DataComp's own conversion (baselines.py): int(uid[:16], 16), int(uid[16:32], 16)
    reference = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids], np.dtype("u8,u8"))
    reference.sort()
    assert np.array_equal(to_subset_array(uids), reference)
    save_subset(uids, tmp_path / "s.npy")
    loaded = np.load(tmp_path / "s.npy")
    assert loaded.dtype == np.dtype("u8,u8") and np.array_equal(loaded, reference)
    assert load_subset(tmp_path / "s.npy") == sorted(uids)
    assert pairs_to_uids(reference[:1]) == [sorted(uids)[0]]


def test_bad_uid_is_named():
    with pytest.raises(ValueError, match="'xyz'"):
        to_subset_array(["xyz"])


@pytest.mark.parametrize("high_values", [2**64, 8000, 3, 1])
def test_sort_pairs_equals_numpy_sort(high_values):
    rng = np.random.default_rng(high_values % 97)
    pairs = np.empty(20_000, dtype=SUBSET_DTYPE)
    pairs["f0"] = rng.integers(
        0, high_values, len(pairs), dtype=np.uint64, endpoint=False
    ) << np.uint64(0 if high_values == 2**64 else 40)
    pairs["f1"] = rng.integers(0, 50, len(pairs), dtype=np.uint64)  # duplicates too
    assert np.array_equal(sort_pairs(pairs), np.sort(pairs))
    assert np.array_equal(sort_pairs(pairs[:1]), pairs[:1]) and len(sort_pairs(pairs[:0])) == 0
