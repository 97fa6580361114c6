"""``tile_geometry``: a sample's polygons split by tile (streamed), and each cell's owning tile and patch centre."""

import time

from dagster import AssetExecutionContext, AutomationCondition, Failure, MaterializeResult, MetadataValue, asset

from xenium_assets.bundle.manifest import read_manifest
from xenium_assets.defs.compute import PatchGeometry
from xenium_assets.defs.dapi_zarr import dapi_zarr
from xenium_assets.defs.partitions import sample_partitions
from xenium_assets.defs.resources import ProjectResource
from xenium_assets.patches.dapi_store import read_summary
from xenium_assets.patches.geometry import CELLS, split_by_tile
from xenium_assets.progress import LogProgress


@asset(
    automation_condition=AutomationCondition.eager(),
    partitions_def=sample_partitions,
    deps=[dapi_zarr],
    group_name="patches",
    kinds={"parquet"},
    description="Cell and nucleus polygons in pixel coordinates, one Parquet file per tile (each polygon in every "
    "tile its halo-grown box touches), plus cells.parquet: owning tile, nucleus centroid, areas.",
)
def tile_geometry(
    context: AssetExecutionContext, project: ProjectResource, patches: PatchGeometry
) -> MaterializeResult:
    sample = context.partition_key
    store_dir = project.paths.asset_dir(sample, "dapi_zarr")
    if not (store_dir / "dapi.json").exists():
        raise Failure(f"sample {sample!r} has no dapi_zarr: materialize it first", allow_retries=False)
    manifest = read_manifest(project.paths.asset_dir(sample, "raw_bundle"))
    out = project.paths.asset_dir(sample, "tile_geometry")
    start = time.perf_counter()
    summary = split_by_tile(manifest, read_summary(store_dir), patches.spec, out, LogProgress(context.log.info))
    per_tile = sorted(summary.cells_per_tile.values())
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(out / CELLS)),
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
