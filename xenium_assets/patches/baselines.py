"""The approaches `xenium-assets bench patches` compares against, kept runnable so the ratios are real.

- ``seed_patches``: the approach this project replaced: per cell, filter the boundary table with
  pandas, build shapely polygons, rasterise them with skimage.draw, crop an in-memory image.
- ``imagetiles_patches``: spatialdata's ImageTilesDataset, one bounding-box query per cell on the
  lazily read (dask) image.
Both are timed on a sample of cells and projected to all of them.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import shapely
from skimage.draw import polygon as draw_polygon


def seed_patches(
    image: np.ndarray, nuclei: pd.DataFrame, cells: pd.DataFrame, centres: pd.DataFrame, size: int, pixel_size: float
) -> float:
    """Seconds per cell. ``nuclei``/``cells``: whole boundary tables (cell_id, vertex_x, vertex_y in µm);
    ``centres``: cell_id, row_px, col_px of the sampled cells."""
    half = size // 2
    start = time.perf_counter()
    for cell in centres.itertuples():
        top, left = int(round(cell.row_px)) - half, int(round(cell.col_px)) - half
        patch = image[max(top, 0) : top + size, max(left, 0) : left + size]
        mask = np.zeros((size, size), dtype=np.uint8)
        for table, value in ((cells, 2), (nuclei, 1)):
            rows = table[table["cell_id"] == cell.cell_id]
            poly = shapely.Polygon(rows[["vertex_x", "vertex_y"]].to_numpy() / pixel_size)
            xs, ys = np.asarray(poly.exterior.xy)
            rr, cc = draw_polygon(ys - top, xs - left, shape=mask.shape)
            mask[rr, cc] = value
        del patch
    return (time.perf_counter() - start) / max(len(centres), 1)


def imagetiles_patches(image, centres: pd.DataFrame, size: int) -> float:
    """Seconds per cell for spatialdata's ImageTilesDataset on a dask image (pixel coordinates)."""
    import warnings

    import anndata as ad
    import geopandas as gpd
    from spatialdata import SpatialData
    from spatialdata.dataloader import ImageTilesDataset
    from spatialdata.models import Image2DModel, ShapesModel, TableModel

    points = gpd.GeoDataFrame(
        {"radius": np.full(len(centres), size / 2)},
        geometry=gpd.points_from_xy(centres["col_px"], centres["row_px"]),
        index=pd.RangeIndex(len(centres)),
    )
    table = ad.AnnData(obs=pd.DataFrame({"region": "cells", "instance": np.arange(len(centres))}))
    table.obs["region"] = table.obs["region"].astype("category")
    table.obs.index = table.obs.index.astype(str)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = SpatialData(
            images={"dapi": Image2DModel.parse(image[None], dims=("c", "y", "x"))},
            shapes={"cells": ShapesModel.parse(points)},
            tables={"table": TableModel.parse(table, region="cells", region_key="region", instance_key="instance")},
        )
        dataset = ImageTilesDataset(
            sdata,
            {"cells": "dapi"},
            {"cells": "global"},
            tile_dim_in_units=size,
            table_name="table",
            return_annotations="instance",
        )
        start = time.perf_counter()
        for i in range(len(dataset)):
            tile, _ = dataset[i]
            np.asarray(tile)
    return (time.perf_counter() - start) / max(len(centres), 1)
