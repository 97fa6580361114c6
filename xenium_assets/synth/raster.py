"""Label rasters of nuclei and cells for any window of the slide, one vectorised call per window.

The generator never holds a whole-slide raster: each 1024² tile (plus a halo) is rasterised from
the polygons that an STR-tree says touch it.
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


def tile_windows(height: int, width: int, tile: int) -> list[Window]:
    """Row-major tiles covering the image (edge tiles are clipped to it)."""
    return [
        Window(y0, x0, min(tile, height - y0), min(tile, width - x0))
        for y0 in range(0, height, tile)
        for x0 in range(0, width, tile)
    ]


class PolygonRaster:
    """Burns polygons (pixel coordinates) with their integer labels into windows of a label image."""

    def __init__(self, polygons_px: np.ndarray, labels: np.ndarray) -> None:
        self.polygons = polygons_px
        self.labels = labels.astype(np.uint32)
        self.tree = shapely.STRtree(polygons_px)

    def window(self, win: Window) -> np.ndarray:
        """uint32 labels of the window; 0 is background; a pixel belongs to a polygon if its centre does."""
        out = np.zeros((win.h, win.w), dtype=np.uint32)
        hits = self.tree.query(shapely.box(win.x0, win.y0, win.x0 + win.w, win.y0 + win.h))
        if len(hits):
            with warnings.catch_warnings():
                # rasterio warns that a pixel-space transform is "not georeferenced": that is the point.
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                rasterize(
                    zip(self.polygons[hits], self.labels[hits].tolist(), strict=True),
                    out=out,
                    transform=Affine.translation(win.x0, win.y0),
                )
        return out
