"""Reading the bundle's DAPI image (bundle/image.py): decoding a window's tiles directly."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("tile", [(64, 48), None], ids=["tiled", "strips"])
def test_decode_window_equals_the_zarr_store(tmp_path, tile):
    """The transcode's reader decodes the tiles under a window itself: windows across tile edges, at the image's
    far edges (partial tiles) and in one tile read what tifffile's zarr store reads; an untiled page goes through
    the store."""
    import tifffile

    from xenium_assets.bundle.image import decode_window, open_plane

    image = np.random.default_rng(5).integers(0, 65535, (300, 250), dtype=np.uint16)
    path = tmp_path / "plane.tif"
    with tifffile.TiffWriter(path) as tif:  # two series: the plane read is the second page, IFD 1
        for plane in (image // 2, image):
            tif.write(plane, tile=tile, compression="zlib")
    for rows, cols in (
        (slice(0, 300), slice(0, 250)),
        (slice(60, 200), slice(40, 101)),
        (slice(290, 300), slice(3, 5)),
    ):
        with open_plane(path, 1) as plane:
            expected = np.asarray(plane[rows, cols])
        np.testing.assert_array_equal(decode_window(path, 1, (rows, cols)), expected)
        np.testing.assert_array_equal(expected, image[rows, cols])
