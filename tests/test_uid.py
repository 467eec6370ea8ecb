import numpy as np
import pytest

from curate.uid import load_subset, make_uid, pairs_to_uids, save_subset, to_subset_array


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
