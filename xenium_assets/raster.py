"""Pixel windows and label rasters of polygons for any window, one vectorised call per window.

Neither the generator nor the patch extraction holds a whole-slide raster: each window (a tile
plus a halo) is rasterised from the polygons that an STR-tree says touch it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning
from rasterio.features import rasterize


@dataclass(frozen=True)
class Window:
    """A pixel window: rows y0..y0+h, columns x0..x0+w (may reach outside the image when padded)."""

    y0: int
    x0: int
    h: int
    w: int

    def pad(self, halo: int) -> Window:
        return Window(self.y0 - halo, self.x0 - halo, self.h + 2 * halo, self.w + 2 * halo)

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y0 + self.h), slice(self.x0, self.x0 + self.w)

    def inside(self, height: int, width: int) -> bool:
        return self.y0 >= 0 and self.x0 >= 0 and self.y0 + self.h <= height and self.x0 + self.w <= width


def tile_windows(height: int, width: int, tile: int, y0: int = 0, x0: int = 0) -> list[Window]:
    """Row-major tiles of side ``tile`` covering the region (edge tiles are clipped to it)."""
    return [
        Window(y, x, min(tile, y0 + height - y), min(tile, x0 + width - x))
        for y in range(y0, y0 + height, tile)
        for x in range(x0, x0 + width, tile)
    ]


def read_window(array, win: Window, fill: int = 0) -> np.ndarray:
    """``array[win]`` for a 2D array-like (numpy, zarr), padded with ``fill`` where the window leaves it."""
    height, width = array.shape[-2:]
    out = np.full((win.h, win.w), fill, dtype=array.dtype)
    y0, x0 = max(win.y0, 0), max(win.x0, 0)
    y1, x1 = min(win.y0 + win.h, height), min(win.x0 + win.w, width)
    if y1 > y0 and x1 > x0:
        out[y0 - win.y0 : y1 - win.y0, x0 - win.x0 : x1 - win.x0] = array[y0:y1, x0:x1]
    return out


def _geojson(polygons: np.ndarray) -> list[dict]:
    """GeoJSON-like dicts over numpy rings, from one ``to_ragged_array`` call.

    rasterio reads shapely geometries through ``__geo_interface__``, a Python loop over every vertex:
    0.54 s of a 3 s, 4,900-cell tile. Built once per tile instead, burning is also 25 % faster.
    """
    if not len(polygons):
        return []
    _, coords, (ring_offsets, poly_offsets) = shapely.to_ragged_array(polygons)
    rings = np.split(coords, ring_offsets[1:-1])
    return [
        {"type": "Polygon", "coordinates": rings[a:b]} for a, b in zip(poly_offsets[:-1], poly_offsets[1:], strict=True)
    ]


class PolygonRaster:
    """Burns polygons (pixel coordinates) with their integer labels into windows of a label image."""

    def __init__(self, polygons_px: np.ndarray, labels: np.ndarray) -> None:
        self.polygons = polygons_px
        self.labels = labels.astype(np.uint32)
        self.tree = shapely.STRtree(polygons_px)
        self.shapes = _geojson(polygons_px)

    def window(self, win: Window) -> np.ndarray:
        """uint32 labels of the window; 0 is background; a pixel belongs to a polygon if its centre does."""
        out = np.zeros((win.h, win.w), dtype=np.uint32)
        hits = self.tree.query(shapely.box(win.x0, win.y0, win.x0 + win.w, win.y0 + win.h))
        if len(hits):
            with warnings.catch_warnings():
                # rasterio warns that a pixel-space transform is "not georeferenced": that is the point.
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                rasterize(
                    zip([self.shapes[i] for i in hits], self.labels[hits].tolist(), strict=True),
                    out=out,
                    transform=Affine.translation(win.x0, win.y0),
                )
        return out
