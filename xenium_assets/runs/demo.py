"""The README's main command: synthetic demo bundles, registered and materialized end to end."""

from __future__ import annotations

from collections.abc import Callable

from dagster import DagsterInstance

from xenium_assets.defs.jobs import (
    cell_labels_job,
    ingest_sample_job,
    label_reference_job,
    patch_shards_job,
    predict_image_job,
    segmenter_job,
    training_job,
)
from xenium_assets.defs.partitions import IMAGES, SAMPLES, tile_partitions
from xenium_assets.images.entries import ImageRegistry
from xenium_assets.layout import ProjectPaths
from xenium_assets.progress import TqdmProgress
from xenium_assets.registry import SampleRegistry
from xenium_assets.runs.summary import QUIET, summarise
from xenium_assets.synth import SynthParams, generate_bundle

# Two samples from different XOA releases, so the demo exercises cross-version reading, each with a batch effect of
# its own (its non-marker genes' baseline and its depth), so the label reference has something to integrate.
DEMO_BUNDLES = (("demo_a", "3", 11), ("demo_b", "4", 12))
HELD_OUT = ("demo_new", "3", 13)
"""A third slide registered after training: labelled, then predicted from its DAPI image alone (``cell_predictions``
scores it against its own nuclei and labels: what to expect end to end)."""
DEMO_EXPRESSION_SHIFT = 1.0
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def register_demo_bundles(
    paths: ProjectPaths, instance: DagsterInstance, *, n_cells: int, size: int, echo: Callable[[str], None]
) -> list[str]:
    """Make the demo bundles if absent and register them as samples; returns their keys."""
    return [
        _demo_bundle(paths, instance, name, version, seed, n_cells, size, echo) for name, version, seed in DEMO_BUNDLES
    ]


def _demo_bundle(
    paths: ProjectPaths,
    instance: DagsterInstance,
    name: str,
    version: str,
    seed: int,
    n_cells: int,
    size: int,
    echo: Callable[[str], None],
) -> str:
    """Make one demo bundle if absent and register it as a sample; returns its key."""
    registry = SampleRegistry(paths.samples_dir)
    bundle = paths.demo_dir / name
    if not (bundle / "experiment.xenium").exists():
        echo(f"generating {bundle} (XOA {version}, {n_cells} cells, {size}x{size} px)")
        params = SynthParams(
            n_cells=n_cells,
            width=size,
            height=size,
            version=version,
            seed=seed,
            expression_shift=DEMO_EXPRESSION_SHIFT,
        )
        generate_bundle(
            bundle,
            params,
            overwrite=True,
            progress=TqdmProgress(),
        )
    entry, _ = registry.register(bundle, name)
    if not instance.has_dynamic_partition(SAMPLES, entry.key):
        instance.add_dynamic_partitions(SAMPLES, [entry.key])
    return entry.key


def run_demo(
    paths: ProjectPaths,
    instance: DagsterInstance,
    *,
    n_cells: int,
    size: int,
    segmenter_steps: int | None = None,
    echo: Callable[[str], None],
) -> list[str]:
    """Register the demo samples, then run the named jobs in dependency order; return a summary.

    Per sample its ingest; the label reference once; per sample its labels; per sample all its tiles' shards in
    one run (a partition range, like a single-run backfill); then training and the report.
    """
    from xenium_assets.definitions import build_definitions

    keys = register_demo_bundles(paths, instance, n_cells=n_cells, size=size, echo=echo)
    defs = build_definitions(paths.data_dir)
    summary: list[str] = []

    def run(job, label: str, partition_key: str | None = None, tags: dict | None = None, ops: dict | None = None):
        echo(f"running {job.name} for {label}")
        config = {**QUIET, "ops": ops} if ops else QUIET
        result = defs.resolve_job_def(job.name).execute_in_process(
            instance=instance, partition_key=partition_key, tags=tags, run_config=config, raise_on_error=False
        )
        summary.extend(summarise(result, label))

    for key in keys:
        run(ingest_sample_job, key, partition_key=key)
    run(label_reference_job, "all samples")
    for key in keys:
        run(cell_labels_job, key, partition_key=key)
    tiles = tile_partitions.get_partition_keys()
    for key in keys:
        run(patch_shards_job, key, tags={RANGE_START: f"{key}|{tiles[0]}", RANGE_END: f"{key}|{tiles[-1]}"})
    run(training_job, "all samples")
    steps = {"nucleus_segmenter": {"config": {"steps": segmenter_steps}}} if segmenter_steps else None
    run(segmenter_job, "the nucleus segmenter", ops=steps)
    name, version, seed = HELD_OUT
    new = _demo_bundle(paths, instance, name, version, seed, n_cells, size, echo)
    run(ingest_sample_job, new, partition_key=new)
    run(cell_labels_job, new, partition_key=new)
    image, _ = ImageRegistry(paths).add(paths.demo_dir / name, f"{new}_dapi")
    if not instance.has_dynamic_partition(IMAGES, image.key):
        instance.add_dynamic_partitions(IMAGES, [image.key])
    run(predict_image_job, f"{new} (its DAPI image alone)", partition_key=image.key)
    summary.append(f"Dagster runs are in {instance.root_directory}; browse them with `make dev`.")
    return summary
