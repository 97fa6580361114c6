"""``patch_shards``: WebDataset shards of every valid cell's DAPI patch with masks, one set per (sample, tile).

Shards hold no labels: training joins them by key, so a new label reference never re-cuts a shard."""

import time
from collections import Counter, defaultdict
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    BackfillPolicy,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from xenium_assets.bundle.polygons import ProblemKind, read_cell_problems
from xenium_assets.defs.automation import settled_eager
from xenium_assets.defs.compute import DaskResource, PatchGeometry
from xenium_assets.defs.dapi_zarr import dapi_zarr
from xenium_assets.defs.metadata import counts_table, image
from xenium_assets.defs.partitions import sample_tile_partitions
from xenium_assets.defs.resources import ProjectResource
from xenium_assets.defs.tile_geometry import tile_geometry
from xenium_assets.layout import ShardFiles
from xenium_assets.parallel import dask_runner
from xenium_assets.patches.dapi_store import read_description
from xenium_assets.patches.extract import TileTask, extract_tile, largest_first, tile_tasks, warm_up
from xenium_assets.patches.grid import TILE_KEYS
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
    dapi, geometry = paths.dapi_zarr(sample), paths.tile_geometry(sample)
    for needed, asset_name in ((dapi.description, "dapi_zarr"), (geometry.cells, "tile_geometry")):
        if not needed.exists():
            raise Failure(f"sample {sample!r} has no {asset_name}: materialize it first", allow_retries=False)
    manifest = project.manifest(sample)
    try:
        problems = read_cell_problems(manifest.cell_problems, ProblemKind.INVALID)
        return tile_tasks(
            sample,
            read_description(dapi.folder),
            geometry.folder,
            problems,
            tiles,
            paths.patch_shards(sample).folder,
            patches.spec,
            max_per_shard=config.max_samples_per_shard,
            examples=config.examples_per_tile,
        )
    except ValueError as error:  # polygons and store on different pixel grids, or a reason this version lacks
        raise Failure(str(error), allow_retries=False) from error


@asset(
    automation_condition=settled_eager(),
    partitions_def=sample_tile_partitions,
    deps=[dapi_zarr, tile_geometry],
    backfill_policy=BackfillPolicy.single_run(),
    group_name="patches",
    kinds={"webdataset"},
    description="For every valid cell, labelled or not, a DAPI patch centred on its nucleus with a mask of its "
    "nucleus, its Xenium cell and the ring grown from its nucleus, written with provenance as WebDataset shards "
    "per tile, plus an index keyed sample/cell_id. "
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
    # Dagster repeats a run's output metadata on every partition it materializes, so each tile's numbers are added
    # to its own partition, and the sample's totals and gallery to one partition of each sample: its first tile here.
    partition_of = {(k.keys_by_dimension["sample"], k.keys_by_dimension["tile"]): k for k in context.partition_keys}
    for r in results:
        shards = project.paths.patch_shards(r["sample"])
        context.add_asset_metadata(
            _tile_metadata(r, shards.tile(r["tile"]).folder), partition_key=partition_of[(r["sample"], r["tile"])]
        )
    for sample, tiles in sorted(tiles_by_sample.items()):
        examples = {r["tile"]: r["examples"] for r in results if r["sample"] == sample and r["examples"]}
        totals = _sample_metadata(project.paths.patch_shards(sample), examples, config)
        context.add_asset_metadata(totals, partition_key=partition_of[(sample, min(tiles, key=TILE_KEYS.index))])
        context.log.info(
            f"{sample}: {totals['sample_n_patches']:,} patches in {totals['sample_n_tiles']} tile(s) on disk, "
            f"{totals['sample_n_skipped']:,} cells skipped"
        )
    n_patches = sum(r["n_patches"] for r in results)
    context.log.info(
        f"{len(results)} tile(s), {n_patches:,} patches in {seconds:.1f} s ({n_patches / max(seconds, 1e-9):.0f}/s)"
    )
    return MaterializeResult(metadata={"patch_px": patches.spec.size_px, "pixel_size_um": patches.pixel_size_um})


def _tile_metadata(result: dict, folder: Path) -> dict:
    """One tile's numbers, for its own partition."""
    return {
        "path": MetadataValue.path(str(folder)),
        "n_patches": result["n_patches"],
        "n_skipped": sum(result["skipped"].values()),
        "skipped_by_reason": counts_table(result["skipped"]),
        "n_shards": len(result["shards"]),
        "shard_mb": round(result["bytes"] / 1e6, 2),
        "seconds": round(result["seconds"], 2),
    }


def _sample_metadata(shards: ShardFiles, examples: dict[str, list], config: ShardConfig) -> dict:
    """The sample's totals over every tile on disk (this run's and earlier ones'), and a gallery of this run's
    tiles, for one partition of the sample."""
    skipped: Counter = Counter()
    n_patches = n_bytes = 0
    done = shards.done_tiles()
    for tile in done:
        totals = tile.read_totals()
        n_patches += totals["n_patches"]
        skipped.update(totals["skipped"])
        n_bytes += sum((tile.folder / s).stat().st_size for s in totals["shards"])
    metadata = {
        "sample_path": MetadataValue.path(str(shards.folder)),
        "sample_n_tiles": len(done),
        "sample_n_patches": n_patches,
        "sample_n_skipped": sum(skipped.values()),
        "sample_skipped_by_reason": counts_table(dict(skipped)),
        "sample_shard_mb": round(n_bytes / 1e6, 1),
    }
    shown = dict(sorted(examples.items())[: config.gallery_tiles])
    if shown:
        from xenium_assets.patches.gallery import gallery  # matplotlib: kept out of the code location's import

        metadata["sample_gallery"] = image(gallery(shown, config.examples_per_tile), "patches per tile")
    return metadata
