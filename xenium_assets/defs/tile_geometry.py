"""``tile_geometry``: a sample's polygons split by tile (streamed), and each cell's owning tile and patch centre."""

import time

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from xenium_assets.defs.automation import settled_eager
from xenium_assets.defs.compute import PatchGeometry
from xenium_assets.defs.partitions import sample_partitions
from xenium_assets.defs.raw_bundle import raw_bundle
from xenium_assets.defs.resources import ProjectResource
from xenium_assets.patches.geometry import split_by_tile
from xenium_assets.progress import LogProgress


@asset(
    automation_condition=settled_eager(),
    partitions_def=sample_partitions,
    deps=[raw_bundle],
    group_name="patches",
    kinds={"parquet"},
    description="Cell and nucleus polygons in pixel coordinates, one Parquet file per tile (each polygon in every "
    "tile its halo-grown box touches), plus cells.parquet: owning tile, nucleus centroid, areas. Needs only the "
    "bundle, so it runs beside dapi_zarr.",
)
def tile_geometry(
    context: AssetExecutionContext, project: ProjectResource, patches: PatchGeometry
) -> MaterializeResult:
    sample = context.partition_key
    manifest = project.manifest(sample)
    files = project.paths.tile_geometry(sample)
    start = time.perf_counter()
    summary = split_by_tile(manifest, patches.spec, files.folder, LogProgress(context.log.info))
    per_tile = sorted(summary.cells_per_tile.values())
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(files.cells)),
            "n_cells": summary.n_cells,
            "n_cell_polygons": summary.n_polygons["cell"],
            "n_nucleus_polygons": summary.n_polygons["nucleus"],
            "polygons_of_unknown_cells": summary.unknown_polygons,
            "tiles_with_cells": len(per_tile),
            "cells_per_tile_max": per_tile[-1] if per_tile else 0,
            "cells_per_tile_median": per_tile[len(per_tile) // 2] if per_tile else 0,
            "seconds": round(time.perf_counter() - start, 1),
        }
    )
