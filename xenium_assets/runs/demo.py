"""The README's main command: synthetic demo bundles, registered and materialized end to end."""

from __future__ import annotations

from collections.abc import Callable

from dagster import DagsterInstance

from xenium_assets.defs.jobs import (
    cell_labels_job,
    ingest_sample_job,
    label_reference_job,
    patch_shards_job,
    training_job,
)
from xenium_assets.defs.partitions import SAMPLES, tile_partitions
from xenium_assets.layout import ProjectPaths
from xenium_assets.progress import TqdmProgress
from xenium_assets.registry import SampleRegistry
from xenium_assets.runs.summary import QUIET, summarise
from xenium_assets.synth import SynthParams, generate_bundle

# Two samples from different XOA releases, so the demo exercises cross-version reading, each with a batch effect of
# its own (its non-marker genes' baseline and its depth), so the label reference has something to integrate.
DEMO_BUNDLES = (("demo_a", "3", 11), ("demo_b", "4", 12))
DEMO_EXPRESSION_SHIFT = 1.0
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def register_demo_bundles(
    paths: ProjectPaths, instance: DagsterInstance, *, n_cells: int, size: int, echo: Callable[[str], None]
) -> list[str]:
    """Make the demo bundles if absent and register them as samples; returns their keys."""
    registry = SampleRegistry(paths.samples_dir)
    keys = []
    for name, version, seed in DEMO_BUNDLES:
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
        keys.append(entry.key)
    return keys


def run_demo(
    paths: ProjectPaths, instance: DagsterInstance, *, n_cells: int, size: int, echo: Callable[[str], None]
) -> list[str]:
    """Register the demo samples, then run the named jobs in dependency order; return a summary.

    Per sample its ingest; the label reference once; per sample its labels; per sample all its tiles' shards in
    one run (a partition range, like a single-run backfill); then training and the report.
    """
    from xenium_assets.definitions import build_definitions

    keys = register_demo_bundles(paths, instance, n_cells=n_cells, size=size, echo=echo)
    defs = build_definitions(paths.data_dir)
    summary: list[str] = []

    def run(job, label: str, partition_key: str | None = None, tags: dict | None = None) -> None:
        echo(f"running {job.name} for {label}")
        result = defs.resolve_job_def(job.name).execute_in_process(
            instance=instance, partition_key=partition_key, tags=tags, run_config=QUIET, raise_on_error=False
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
    summary.append(f"Dagster runs are in {instance.root_directory}; browse them with `make dev`.")
    return summary
