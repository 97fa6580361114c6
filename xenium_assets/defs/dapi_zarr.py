"""``dapi_zarr``: a sample's DAPI level 0 decoded once into a chunked blosc-lz4 Zarr store at the target pixel size."""

import time

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from xenium_assets.defs.automation import settled_eager
from xenium_assets.defs.compute import DaskResource, PatchGeometry
from xenium_assets.defs.partitions import sample_partitions
from xenium_assets.defs.raw_bundle import raw_bundle
from xenium_assets.defs.resources import ProjectResource
from xenium_assets.parallel import dask_runner
from xenium_assets.patches.dapi_store import CHUNK, transcode_dapi
from xenium_assets.progress import LogProgress


@asset(
    automation_condition=settled_eager(),
    partitions_def=sample_partitions,
    deps=[raw_bundle],
    group_name="patches",
    kinds={"zarr"},
    description="The DAPI plane decoded once (JPEG-2000 tiles are slow to decode and halos would decode them "
    "repeatedly) into 512² blosc-lz4 chunks, resampled to the target pixel size if needed, with intensity percentiles.",
)
def dapi_zarr(
    context: AssetExecutionContext, project: ProjectResource, dask: DaskResource, patches: PatchGeometry
) -> MaterializeResult:
    sample = context.partition_key
    manifest = project.manifest(sample)
    files = project.paths.dapi_zarr(sample)
    start = time.perf_counter()
    with dask.client() as client:
        store = transcode_dapi(
            manifest, files.folder, patches.pixel_size_um, dask_runner(client, LogProgress(context.log.info))
        )
    seconds = time.perf_counter() - start
    height, width = store.shape
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(files.store)),
            "image_size": f"{width} x {height} px",
            "pixel_size_um": store.pixel_size_um,
            "source_pixel_size_um": store.source_pixel_size_um,
            "resampled": store.resampled,
            "chunks": f"{CHUNK} x {CHUNK}, blosc lz4 bit-shuffled",
            "dapi_p1": store.percentiles["p1"],
            "dapi_p99": store.percentiles["p99"],
            "dapi_p99_9": store.percentiles["p99.9"],
            "seconds": round(seconds, 1),
            "megapixels_per_second": round(height * width / 1e6 / max(seconds, 1e-9), 1),
        }
    )
