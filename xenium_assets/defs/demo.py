"""The README's main command: synthetic demo bundles, registered and materialized end to end."""

from __future__ import annotations

from collections.abc import Callable

from dagster import DagsterInstance, materialize

from xenium_assets.defs.operations import QUIET, summarise
from xenium_assets.defs.partitions import SAMPLES, sample_partitions, sample_tile_partitions, tile_partitions
from xenium_assets.paths import ProjectPaths
from xenium_assets.progress import TqdmProgress
from xenium_assets.registry import SampleRegistry
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
    """Register the demo samples, then materialize every asset in dependency order; return a summary.

    Per-sample assets run per sample (those that read a cross-sample asset, such as cell_labels, after it),
    cross-sample ones once, and sample x tile ones as one run per sample covering all its tiles (a partition
    range, like a single-run backfill).
    """
    from xenium_assets.definitions import PATCH_SHARDS_JOB, build_definitions

    keys = register_demo_bundles(paths, instance, n_cells=n_cells, size=size, echo=echo)
    defs = build_definitions(paths.data_dir)
    assets = list(defs.assets or [])
    resources = defs.resources
    summary: list[str] = []

    def report(result, label: str) -> None:
        summary.extend(summarise(result, label))

    graph = defs.resolve_asset_graph()
    per_tile_keys = {a.key for a in assets if a.partitions_def == sample_tile_partitions}
    unpartitioned = [a for a in assets if a.partitions_def is None]
    # Per-sample assets before and after the cross-sample ones they read (cell_labels reads label_reference).
    per_sample = [a for a in assets if a.partitions_def == sample_partitions]
    reads_shared = {a.key for a in per_sample if graph.get_ancestor_asset_keys(a.key) & {u.key for u in unpartitioned}}
    first_per_sample = [a for a in per_sample if a.key not in reads_shared]
    then_per_sample = [a for a in per_sample if a.key in reads_shared]
    later = per_tile_keys | reads_shared
    after_tiles = [a for a in unpartitioned if graph.get_ancestor_asset_keys(a.key) & later]
    before_tiles = [a for a in unpartitioned if a not in after_tiles]
    everything = [*assets, *(defs.asset_checks or [])]

    def run_selection(selection: list, label: str) -> None:
        echo(f"materializing {', '.join(a.key.to_user_string() for a in selection)} for {label}")
        report(
            materialize(
                everything,
                selection=selection,
                instance=instance,
                resources=resources,
                run_config=QUIET,
                partition_key=label if label in keys else None,
                raise_on_error=False,
            ),
            label,
        )

    for key in keys:
        run_selection(first_per_sample, key)
    if before_tiles:
        run_selection(before_tiles, "all samples")
    for key in keys if then_per_sample else ():
        run_selection(then_per_sample, key)
    if per_tile_keys:
        job = defs.resolve_job_def(PATCH_SHARDS_JOB)
        tiles = tile_partitions.get_partition_keys()
        for key in keys:
            echo(f"materializing patch_shards for all {len(tiles)} tiles of {key} (one run)")
            tags = {RANGE_START: f"{key}|{tiles[0]}", RANGE_END: f"{key}|{tiles[-1]}"}
            report(job.execute_in_process(instance=instance, tags=tags, run_config=QUIET), key)
    if after_tiles:
        run_selection(after_tiles, "all samples")
    summary.append(f"Dagster runs are in {instance.root_directory}; browse them with `make dev`.")
    return summary
