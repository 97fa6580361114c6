"""``patch_shards``: WebDataset shards of labelled DAPI patches with masks, one set per (sample, tile)."""

import time
from collections import Counter, defaultdict

import pandas as pd
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
from xenium_assets.defs.cell_labels import cell_labels
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
    examples_per_class: int = 6
    """Patches per class kept for the gallery picture."""


def _tasks(
    project: ProjectResource,
    patches: PatchGeometry,
    sample: str,
    tiles: list[str],
    labels: pd.DataFrame,
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
            labels[labels["sample"] == sample],
            tiles,
            paths.asset_dir(sample, "patch_shards"),
            patches.spec,
            max_per_shard=config.max_samples_per_shard,
            examples_per_class=config.examples_per_class,
        )
    except ValueError as error:  # the polygons and the store were made on different pixel grids
        raise Failure(str(error), allow_retries=False) from error


@asset(
    automation_condition=settled_eager(),
    partitions_def=sample_tile_partitions,
    deps=[dapi_zarr, tile_geometry, cell_labels],
    backfill_policy=BackfillPolicy.single_run(),
    group_name="patches",
    kinds={"webdataset"},
    description="For each labelled cell a DAPI patch centred on its nucleus with a nucleus / perinuclear mask, "
    "written with label and provenance as WebDataset shards per tile, plus an index. Tiles run on dask; a backfill "
    "of many tiles is one run.",
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
    labels_path = project.paths.labels_table
    if not labels_path.exists():
        raise Failure("no cell labels yet: materialize cell_labels first", allow_retries=False)
    labels = pq.read_table(labels_path).to_pandas()
    tasks = [
        t for sample, tiles in tiles_by_sample.items() for t in _tasks(project, patches, sample, tiles, labels, config)
    ]
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
    classes: Counter = Counter()
    examples: dict[str, list] = defaultdict(list)
    for r in results:
        skipped.update(r["skipped"])
        classes.update(r["class_counts"])
        for label, ex in r["examples"].items():
            examples[label].extend(ex[: max(0, config.examples_per_class - len(examples[label]))])
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
        "class_balance": counts_table(dict(classes), "label", "patches"),
        "seconds": round(seconds, 1),
        "patches_per_second": round(n_patches / max(seconds, 1e-9), 1),
    }
    if examples:
        from xenium_assets.patches.gallery import gallery  # matplotlib: kept out of the code location's import

        metadata["gallery"] = image(gallery(examples, config.examples_per_class), "patches per class")
    return MaterializeResult(metadata=metadata)
