"""Polygon rasterization (raster.py): overlaps are resolved by layer and place, never by table order."""

from __future__ import annotations

import numpy as np
import shapely


def test_overlaps_are_drawn_by_layer_and_place_never_by_table_order():
    """Overlaps are resolved by layer (nuclei over cells) and by place, not by the table's order (cell ids):
    with shared edges given by id, the null-slide test of the training claimed signal (see PolygonRaster)."""
    from xenium_assets.raster import PolygonRaster, Window

    polys = np.array([shapely.box(0, 0, 10, 10), shapely.box(5, 0, 15, 10), shapely.box(6, 2, 9, 8)])
    labels, layers = np.array([1, 2, 3]), np.array([0, 0, 1])
    win = Window(0, 0, 10, 15)
    drawn = PolygonRaster(polys, labels, layers).window(win)
    for order in ([2, 1, 0], [1, 2, 0], [0, 2, 1]):
        np.testing.assert_array_equal(PolygonRaster(polys[order], labels[order], layers[order]).window(win), drawn)
    assert (drawn[2:8, 6:9] == 3).all()  # the upper layer (a nucleus) wins wherever it is in the table
    assert set(np.unique(drawn[:, 5:10])) == {2, 3}  # the overlap of the two cells went to one, whatever the order
