"""A slide as lazily read multiscale layers: the DAPI pyramid, and label images burnt from polygons.

Nothing here holds a full-resolution slide. A DAPI level is a zarr view on the OME-TIFF pyramid
(tifffile decodes only the tiles a slice touches); a label level has the DAPI level's shape and is
burnt at that level's resolution: zoomed in, only the polygons inside the window asked for; zoomed out,
the whole slide once at a small size (BurnCache). Both speak the array protocol napari reads (shape,
dtype, slicing), so the label pixels sit on the DAPI pixels.

Label images hold a cell's ordinal (1..n, 0 is background); a lookup table turns ordinals into class
codes, so the cell, class, prediction and correctness layers all share one rasterisation per window.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import zarr

from xenium_assets.bundle.ids import normalise_ids
from xenium_assets.bundle.image import series_of
from xenium_assets.bundle.manifest import Manifest
from xenium_assets.bundle.polygons import iter_polygons, usable_polygons
from xenium_assets.bundle.tables import read_table
from xenium_assets.formats import Col
from xenium_assets.patches.geometry import gather, polygons_from_offsets
from xenium_assets.raster import PolygonRaster, Window, read_window

# Below this zoom, cells are a few pixels wide: burn every pixel a polygon touches so none vanish.
ALL_TOUCHED_FROM = 4
BASE_PX = 2048
"""Zoomed out to a level no larger than this, the whole slide is burnt once (see BurnCache)..."""
BASE_MIN_FACTOR = 4
"""...but never at less than 1/4 zoom, where cells cover too many pixels for PolygonRaster.burn_all."""


class DapiPyramid:
    """Every level of the DAPI plane's pyramid (full resolution first), lazily decoded; close it (or use it
    as a context manager) to release the file."""

    def __init__(self, manifest: Manifest) -> None:
        self._tif = tifffile.TiffFile(manifest.dapi_path, is_ome=False)
        series = series_of(self._tif, manifest.dapi.ifd)
        self._stores = [series.aszarr(level=i) for i in range(len(series.levels))]
        self.levels: list[zarr.Array] = [zarr.open(s, mode="r") for s in self._stores]

    def close(self) -> None:
        for store in self._stores:
            store.close()
        self._tif.close()

    def __enter__(self) -> DapiPyramid:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class SlideGeometry:
    """A sample's cells: ids (ordinal i + 1 is cell ``ids[i]``) and rasterisers of their polygons (full-res px;
    ``nuclei`` is None when not read)."""

    ids: pd.Index
    centroid_px: np.ndarray
    cells: PolygonRaster
    nuclei: PolygonRaster | None

    def ordinals(self, cell_ids) -> np.ndarray:
        """1-based ordinals of ``cell_ids``; 0 where a cell is not on this slide."""
        return self.ids.get_indexer(np.asarray(cell_ids, dtype=object)) + 1

    def lookup(self, cell_ids, values, fill: int = 0) -> np.ndarray:
        """A table from ordinal to value (index 0, the background, and unlisted cells get ``fill``)."""
        table = np.full(len(self.ids) + 1, fill, dtype=np.uint32)
        ordinals = self.ordinals(cell_ids)
        found = ordinals > 0
        table[ordinals[found]] = np.asarray(values)[found]
        table[0] = 0
        return table


def _polygons_px(path: Path, ids: pd.Index, origin: tuple[float, float], pixel_um: float) -> PolygonRaster:
    """All usable polygons of a boundary table, in full-resolution pixels, labelled with their cell's ordinal."""
    polys, owners = [], []
    for batch in iter_polygons(path):
        owner = ids.get_indexer(batch.ids)
        pick = usable_polygons(batch, owner)
        vidx, offsets = gather(batch.starts, batch.rows, pick)
        coords = np.column_stack([(batch.x[vidx] - origin[0]) / pixel_um, (batch.y[vidx] - origin[1]) / pixel_um])
        polys.append(polygons_from_offsets(coords, offsets))
        owners.append(owner[pick] + 1)
    if not polys:
        return PolygonRaster(np.array([], dtype=object), np.array([], dtype=np.uint32))
    return PolygonRaster(np.concatenate(polys), np.concatenate(owners))


def read_geometry(manifest: Manifest, nuclei: bool = True) -> SlideGeometry:
    """The sample's cell (and nucleus) polygons from the bundle (invalid polygons left out, as in tile_geometry)."""
    cells = read_table(manifest.path("cells"), [Col.CELL_ID, Col.X_CENTROID, Col.Y_CENTROID])
    ids = pd.Index(pd.unique(normalise_ids(cells[Col.CELL_ID])))
    ox, oy = manifest.image_origin_um
    ps = manifest.pixel_size_um
    xy = pd.DataFrame(
        {"row": (cells[Col.Y_CENTROID].to_numpy() - oy) / ps, "col": (cells[Col.X_CENTROID].to_numpy() - ox) / ps},
        index=normalise_ids(cells[Col.CELL_ID]),
    )
    centroid = xy[~xy.index.duplicated()].loc[ids].to_numpy()
    return SlideGeometry(
        ids=ids,
        centroid_px=centroid,
        cells=_polygons_px(manifest.path("cell_boundaries"), ids, (ox, oy), ps),
        nuclei=_polygons_px(manifest.path("nucleus_boundaries"), ids, (ox, oy), ps) if nuclei else None,
    )


class BurnCache:
    """Burnt windows shared by the layers of one viewer, so each window is burnt once.

    Zoomed out, one burn serves every level: the whole slide is burnt once (PolygonRaster.burn_all) at the
    finest zoom (1/4 or less) no larger than ``BASE_PX``, and coarser levels are strided views of it
    (napari slices a new layer at its coarsest level, then at the one that fits the canvas). Finer levels
    burn only the window asked for, and the last few windows are kept.
    """

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self.items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self.bases: dict[PolygonRaster, np.ndarray] = {}

    def _base(self, raster: PolygonRaster, full_shape: tuple[int, int]) -> tuple[int, np.ndarray | None]:
        """(zoom-out factor of the whole-slide burn, the burn if already made)."""
        factor = BASE_MIN_FACTOR
        while max(full_shape) > BASE_PX * factor:
            factor *= 2
        return factor, self.bases.get(raster)

    def get(self, raster: PolygonRaster, full_shape: tuple[int, int], win: Window, factor: int) -> np.ndarray:
        base_factor, base = self._base(raster, full_shape)
        if factor >= base_factor and factor % base_factor == 0:
            if base is None:
                shape = (math.ceil(full_shape[0] / base_factor), math.ceil(full_shape[1] / base_factor))
                base = raster.burn_all(base_factor, shape)
                self.bases[raster] = base
            step = factor // base_factor
            # The base pixel nearest each level pixel's centre ((j + 0.5) * step base pixels in).
            return read_window(base[step // 2 :: step, step // 2 :: step], win)
        key = (raster, win, factor)
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        burnt = raster.window(win, factor=factor, all_touched=factor >= ALL_TOUCHED_FROM)
        self.items[key] = burnt
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return burnt


def _window(key, shape: tuple[int, int]) -> tuple[Window, tuple]:
    """The pixel window a numpy-style key covers, and the steps and squeezes to apply to it afterwards."""
    key = key if isinstance(key, tuple) else (key,)
    key = key + (slice(None),) * (2 - len(key))
    bounds, post = [], []
    for k, n in zip(key, shape, strict=True):
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            if step < 0:
                raise IndexError("label levels do not support negative steps")
            bounds.append((start, max(stop, start)))
            post.append(slice(None, None, step))
        else:
            i = int(k) + (n if int(k) < 0 else 0)
            bounds.append((i, i + 1))
            post.append(0)
    (y0, y1), (x0, x1) = bounds
    return Window(y0, x0, y1 - y0, x1 - x0), tuple(post)


class LabelLevel:
    """One level of a multiscale label image, burnt on demand from polygons.

    ``values`` maps cell ordinals to what the layer shows (a class code, say); without it the layer
    shows the ordinals themselves.
    """

    def __init__(
        self,
        raster: PolygonRaster,
        full_shape: tuple[int, int],
        factor: int,
        values: np.ndarray | None = None,
        cache: BurnCache | None = None,
        shape: tuple[int, int] | None = None,
    ) -> None:
        self.raster, self.full_shape, self.factor, self.values = raster, full_shape, factor, values
        self.cache = cache or BurnCache()
        self.shape = shape or (math.ceil(full_shape[0] / factor), math.ceil(full_shape[1] / factor))
        self.dtype = np.dtype(np.uint32)
        self.ndim = 2
        self.size = self.shape[0] * self.shape[1]

    def __getitem__(self, key) -> np.ndarray:
        win, post = _window(key, self.shape)
        burnt = self.cache.get(self.raster, self.full_shape, win, self.factor)
        out = burnt if self.values is None else self.values[burnt]
        return out[post]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:, :]
        return out if dtype is None else out.astype(dtype)

    def __len__(self) -> int:
        return self.shape[0]


def label_pyramid(
    raster: PolygonRaster,
    levels: list[tuple[int, int]],
    values: np.ndarray | None = None,
    cache: BurnCache | None = None,
) -> list[LabelLevel]:
    """One label level per DAPI pyramid level (``levels``: their shapes, full resolution first), with the
    same shape and the zoom-out factor the shapes imply."""
    cache = cache or BurnCache()
    full = tuple(levels[0])
    return [
        LabelLevel(raster, full, max(1, round(full[1] / shape[1])), values, cache, shape=tuple(shape))
        for shape in levels
    ]
