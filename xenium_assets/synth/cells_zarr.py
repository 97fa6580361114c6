"""``cells.zarr.zip``: Zarr v2 inside a zip with label masks, cell summary and polygons, per XOA layout.

Masks are written chunk by chunk while the image is rendered (one chunk = one image tile), so the
slide-sized uint32 rasters never exist in memory.
"""

from __future__ import annotations

from pathlib import Path

import numcodecs
import numpy as np
import zarr
from zarr.storage import ZipStore

from xenium_assets.bundle.ids import prefix_from_ids
from xenium_assets.raster import Window
from xenium_assets.synth.profiles import XoaProfile

SUMMARY_COLUMNS = [
    "cell_centroid_x",
    "cell_centroid_y",
    "cell_area",
    "nucleus_centroid_x",
    "nucleus_centroid_y",
    "nucleus_area",
    "z_level",
]


class CellsZarrWriter:
    """Open for the image pass (mask chunks), then :meth:`finish` writes the per-cell arrays."""

    def __init__(self, path: Path, profile: XoaProfile, n_cells: int, height: int, width: int, tile: int) -> None:
        self.profile = profile
        self.store = ZipStore(path, mode="w")
        attrs = {
            "major_version": 5,
            "minor_version": 0,
            "name": "CellSegmentationDataset",
            "number_cells": n_cells,
            "polygon_set_names": ["nucleus", "cell"],
            "polygon_set_display_names": ["Nucleus boundaries", "Cell boundaries"],
            "spatial_units": "microns",
        }
        self.root = zarr.open_group(self.store, mode="w", zarr_format=2, attributes=attrs)
        codec = numcodecs.Zstd(level=3)
        self.masks = [
            self.root.create_array(
                f"masks/{i}",
                shape=(height, width),
                chunks=(tile, tile),
                dtype="uint32",
                compressors=codec,
                fill_value=0,
            )
            for i in (0, 1)
        ]

    def write_masks(self, win: Window, nucleus: np.ndarray, cell: np.ndarray) -> None:
        """Nucleus (masks/0) and cell (masks/1) labels of one tile-aligned window."""
        region = (slice(win.y0, win.y0 + win.h), slice(win.x0, win.x0 + win.w))
        if nucleus.any():
            self.masks[0][region] = nucleus
        if cell.any():
            self.masks[1][region] = cell

    def finish(
        self,
        ids: np.ndarray,
        summary: np.ndarray,
        nucleus_count: np.ndarray,
        cell_xy: np.ndarray,
        nucleus_xy: np.ndarray,
        nucleus_cell: np.ndarray,
        pixel_size: float,
    ) -> None:
        p, g = self.profile, self.root
        if p.zarr_layout == "v1.0":
            g.create_array("cell_id", data=ids.astype(np.uint32))
        else:
            prefix, suffix = prefix_from_ids(ids)
            g.create_array("cell_id", data=np.column_stack([prefix, suffix]).astype(np.uint32))
        columns = SUMMARY_COLUMNS + (["nucleus_count"] if p.zarr_layout == "v2" else [])
        data = np.column_stack([summary, nucleus_count]) if p.zarr_layout == "v2" else summary
        g.create_array("cell_summary", data=data.astype(np.float64), attributes={"column_names": columns})
        if p.zarr_layout == "v1.3":
            g.create_array("seg_mask_value", data=np.arange(1, len(ids) + 1, dtype=np.uint32))
        if p.zarr_layout == "v2":
            g.create_array("masks/homogeneous_transform", data=np.diag([1 / pixel_size, 1 / pixel_size, 1.0]))
            for set_index, (rings, owner) in enumerate([(nucleus_xy, nucleus_cell), (cell_xy, np.arange(len(ids)))]):
                k, v, _ = rings.shape
                g.create_array(f"polygon_sets/{set_index}/cell_index", data=owner.astype(np.uint32))
                g.create_array(f"polygon_sets/{set_index}/method", data=np.zeros(k, dtype=np.uint32))
                g.create_array(f"polygon_sets/{set_index}/num_vertices", data=np.full(k, v, dtype=np.int32))
                g.create_array(f"polygon_sets/{set_index}/vertices", data=rings.reshape(k, 2 * v).astype(np.float32))
        else:
            # 1.x: one nucleus per cell, both sets stacked as (2, N, 2V) with nucleus first.
            n, v, _ = cell_xy.shape
            vertices = np.stack([nucleus_xy.reshape(n, 2 * v), cell_xy.reshape(n, 2 * v)]).astype(np.float32)
            g.create_array("polygon_vertices", data=vertices)
            g.create_array("polygon_num_vertices", data=np.full((2, n), v, dtype=np.int32))
        self.store.close()

    def abort(self) -> None:
        self.store.close()
