"""``patch_shards``: WebDataset shards of every valid cell's DAPI patch with masks, one set per (sample, tile).

Shards hold no labels: training joins them by key, so a new label reference never re-cuts a shard."""

import time
from collections import Counter, defaultdict

import pyarrow.parquet as pq
from dagster import (
    AssetExecutionContext,
    BackfillPolicy,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from xenium_assets.defs.automation import settled_eager
from xenium_assets.defs.compute import DaskResource, PatchGeometry
from xenium_assets.defs.dapi_zarr import dapi_zarr
from xenium_assets.defs.metadata import counts_table, image
from xenium_assets.defs.partitions import sample_tile_partitions
from xenium_assets.defs.resources import ProjectResource
from xenium_assets.defs.tile_geometry import tile_geometry
from xenium_assets.parallel import dask_runner
from xenium_assets.patches.dapi_store import read_summary
from xenium_assets.patches.extract import TileTask, extract_tile, largest_first, tile_tasks, warm_up
from xenium_assets.patches.geometry import CELLS
from xenium_assets.patches.shards import MAX_SAMPLES_PER_SHARD
from xenium_assets.progress import LogProgress


class ShardConfig(Config):
    max_samples_per_shard: int = MAX_SAMPLES_PER_SHARD
    examples_per_tile: int = 6
    """Patches per tile kept for the gallery picture."""
    gallery_tiles: int = 4
    """Tiles shown in the gallery picture, at most."""


def _tasks(
    project: ProjectResource,
    patches: PatchGeometry,
    sample: str,
    tiles: list[str],
    config: ShardConfig,
) -> list[TileTask]:
    """The sample's tile tasks, from the files its per-sample assets wrote."""
    paths = project.paths
    for needed, asset_name in (("dapi.json", "dapi_zarr"), (CELLS, "tile_geometry")):
        if not (paths.asset_dir(sample, asset_name) / needed).exists():
            raise Failure(f"sample {sample!r} has no {asset_name}: materialize it first", allow_retries=False)
    manifest = project.manifest(sample)
    problems = pq.read_table(manifest.cell_problems, filters=[("kind", "==", "invalid")]).to_pandas()
    try:
        return tile_tasks(
            sample,
            read_summary(paths.asset_dir(sample, "dapi_zarr")),
            paths.asset_dir(sample, "tile_geometry"),
            problems,
            tiles,
            paths.asset_dir(sample, "patch_shards"),
            patches.spec,
            max_per_shard=config.max_samples_per_shard,
            examples=config.examples_per_tile,
        )
    except ValueError as error:  # the polygons and the store were made on different pixel grids
        raise Failure(str(error), allow_retries=False) from error


@asset(
    automation_condition=settled_eager(),
    partitions_def=sample_tile_partitions,
    deps=[dapi_zarr, tile_geometry],
    backfill_policy=BackfillPolicy.single_run(),
    group_name="patches",
    kinds={"webdataset"},
    description="For every valid cell, labelled or not, a DAPI patch centred on its nucleus with a nucleus / "
    "perinuclear mask, written with provenance as WebDataset shards per tile, plus an index keyed sample/cell_id. "
    "No labels: training joins them by key. Tiles run on dask; a backfill of many tiles is one run.",
)
def patch_shards(
    context: AssetExecutionContext,
    config: ShardConfig,
    project: ProjectResource,
    dask: DaskResource,
    patches: PatchGeometry,
) -> MaterializeResult:
    tiles_by_sample: dict[str, list[str]] = defaultdict(list)
    for key in context.partition_keys:
        dims = key.keys_by_dimension
        tiles_by_sample[dims["sample"]].append(dims["tile"])
    tasks = [t for sample, tiles in tiles_by_sample.items() for t in _tasks(project, patches, sample, tiles, config)]
    context.log.info(f"{len(tasks)} tile(s) of {len(tiles_by_sample)} sample(s) on dask")
    start = time.perf_counter()
    results = []
    with dask.client() as client:
        # Each worker loads the tile code (numba's compiled mask kernel too) before the first tile, not in it.
        ready = client.run(warm_up)
        context.log.info(f"{len(ready)} dask worker(s) ready in {max(ready.values(), default=0):.1f} s")
        run = dask_runner(client, LogProgress(context.log.info))
        results = list(run(extract_tile, [{"task": t} for t in largest_first(tasks)], "patch shards"))
    seconds = time.perf_counter() - start
    skipped: Counter = Counter()
    for r in results:
        skipped.update(r["skipped"])
    examples = {f"{r['sample']} {r['tile']}": r["examples"] for r in results if r["examples"]}
    shown = dict(sorted(examples.items())[: config.gallery_tiles])
    n_patches = sum(r["n_patches"] for r in results)
    samples = sorted(tiles_by_sample)
    path = project.paths.asset_dir(samples[0], "patch_shards") if len(samples) == 1 else project.paths.samples_dir
    metadata = {
        "path": MetadataValue.path(str(path)),
        "samples": ", ".join(samples),
        "n_tiles": len(results),
        "n_patches": n_patches,
        "n_skipped": sum(skipped.values()),
        "n_shards": sum(len(r["shards"]) for r in results),
        "shard_mb": round(sum(r["bytes"] for r in results) / 1e6, 1),
        "patch_px": patches.spec.size_px,
        "pixel_size_um": patches.pixel_size_um,
        "skipped_by_reason": counts_table(dict(skipped)),
        "seconds": round(seconds, 1),
        "patches_per_second": round(n_patches / max(seconds, 1e-9), 1),
    }
    if shown:
        from xenium_assets.patches.gallery import gallery  # matplotlib: kept out of the code location's import

        metadata["gallery"] = image(gallery(shown, config.examples_per_tile), "patches per tile")
    return MaterializeResult(metadata=metadata)
