"""Cell id encodings: the zarr (prefix, suffix) pair, arrow binary and integer ids."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from xenium_assets.bundle.ids import ids_from_prefix, normalise_ids, prefix_from_ids


def test_prefix_encoding_matches_spatialdata_io():
    from spatialdata_io.readers.xenium import cell_id_str_from_prefix_suffix_uint32

    prefix = np.array([0, 1, 1437536272, 2**32 - 1], dtype=np.uint32)
    ours = ids_from_prefix(prefix)
    assert list(ours) == ["aaaaaaaa-1", "aaaaaaab-1", "ffkpbaba-1", "pppppppp-1"]
    assert list(ours) == list(cell_id_str_from_prefix_suffix_uint32(prefix, np.ones(4, dtype=np.uint32)))
    back, suffix = prefix_from_ids(ours)
    np.testing.assert_array_equal(back, prefix)
    np.testing.assert_array_equal(suffix, 1)


def test_normalise_every_column_type():
    expected = ["abc-1", "abd-1"]
    assert list(normalise_ids(pa.array([b"abc-1", b"abd-1"], pa.binary()))) == expected
    assert list(normalise_ids(pa.chunked_array([pa.array(expected, pa.large_string())]))) == expected
    assert list(normalise_ids(pa.array(expected).dictionary_encode())) == expected
    assert list(normalise_ids(pa.array([1, 22], pa.int32()))) == ["1", "22"]
