"""Tile geometry (patches/geometry.py): nucleus moments and the tiles' polygon files."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from xenium_assets.patches.geometry import ring_moments


def test_ring_moments_are_shapely_area_and_centroid():
    """The nucleus centres and areas come from shoelace sums, not shapely polygons: they must agree with shapely
    for rings in either orientation, closed or open, far from the origin, and give zero moments (not NaN) for
    a ring of no area."""
    rng = np.random.default_rng(5)
    rings = []
    for k in range(40):
        n = int(rng.integers(4, 14))
        angle = np.sort(rng.uniform(0, 2 * np.pi, n))
        xy = rng.uniform(1000, 4000, 2) + rng.uniform(2, 8, (n, 1)) * np.column_stack([np.cos(angle), np.sin(angle)])
        rings.append(xy[::-1] if k % 2 else np.vstack([xy, xy[:1]]))
    rings.append(np.array([[5.0, 5.0], [6.0, 6.0], [7.0, 7.0], [5.0, 5.0]]))  # no area
    offsets = np.cumsum([0] + [len(r) for r in rings])
    xy = np.vstack(rings)
    area, moment_x, moment_y = ring_moments(xy[:, 0], xy[:, 1], offsets)
    polygons = shapely.polygons([shapely.linearrings(r) for r in rings])
    np.testing.assert_allclose(area, shapely.area(polygons), rtol=1e-12)
    centre = shapely.get_coordinates(shapely.centroid(polygons[:-1]))
    np.testing.assert_allclose(moment_x[:-1] / area[:-1], centre[:, 0], rtol=1e-12)
    np.testing.assert_allclose(moment_y[:-1] / area[:-1], centre[:, 1], rtol=1e-12)
    assert area[-1] == moment_x[-1] == moment_y[-1] == 0


def test_tile_polygon_files_of_an_older_tile_geometry_or_cut_short_get_a_clear_error(tmp_path):
    """Tiles' polygons are Arrow IPC files now: an older tile_geometry's Parquet file, or a file cut short, names
    itself and the fix instead of reading as a tile without polygons."""
    from xenium_assets.layout import GeometryFiles
    from xenium_assets.patches.geometry import read_tile_rings

    tiles = GeometryFiles(tmp_path).tiles
    tiles.mkdir()
    (tiles / "r0c0.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match=r"r0c0\.parquet: an older tile_geometry's file; re-materialize tile_geometry"):
        read_tile_rings(tmp_path, "r0c0")
    (tiles / "r0c1.arrow").write_bytes(b"ARROW1\0\0cut")
    with pytest.raises(ValueError, match=r"r0c1\.arrow: not readable .*re-materialize tile_geometry"):
        read_tile_rings(tmp_path, "r0c1")
    assert len(read_tile_rings(tmp_path, "r0c2").ids) == 0  # no file: a tile without polygons
