"""The README's main command: synthetic demo bundles, registered and materialized end to end."""

from __future__ import annotations

from collections.abc import Callable

from dagster import DagsterInstance, materialize

from xenium_assets.defs.partitions import SAMPLES, sample_partitions
from xenium_assets.defs.resources import ProjectResource
from xenium_assets.paths import ProjectPaths
from xenium_assets.progress import TqdmProgress
from xenium_assets.registry import SampleRegistry
from xenium_assets.synth import SynthParams, generate_bundle

# Two samples from different XOA releases, so the demo exercises cross-version reading.
DEMO_BUNDLES = (("demo_a", "3", 11), ("demo_b", "4", 12))
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def run_demo(
    paths: ProjectPaths, instance: DagsterInstance, *, n_cells: int, size: int, echo: Callable[[str], None]
) -> list[str]:
    """Make the demo bundles if absent, register them, materialize every asset; return a summary."""
    from xenium_assets.definitions import defs

    registry = SampleRegistry(paths.samples_dir)
    keys = []
    for name, version, seed in DEMO_BUNDLES:
        bundle = paths.demo_dir / name
        if not (bundle / "experiment.xenium").exists():
            echo(f"generating {bundle} (XOA {version}, {n_cells} cells, {size}x{size} px)")
            generate_bundle(
                bundle,
                SynthParams(n_cells=n_cells, width=size, height=size, version=version, seed=seed),
                overwrite=True,
                progress=TqdmProgress(),
            )
        entry, _ = registry.register(bundle, name)
        if not instance.has_dynamic_partition(SAMPLES, entry.key):
            instance.add_dynamic_partitions(SAMPLES, [entry.key])
        keys.append(entry.key)

    resources = {"project": ProjectResource(data_dir=str(paths.data_dir))}
    assets = list(defs.assets or [])
    per_sample = [a for a in assets if getattr(a, "partitions_def", None) == sample_partitions]
    unpartitioned = [a for a in assets if getattr(a, "partitions_def", None) is None]
    summary = []

    def run(selection: list, partition_key: str | None, label: str) -> None:
        echo(f"materializing {', '.join(a.key.to_user_string() for a in selection)} for {label}")
        result = materialize(
            assets,
            selection=selection,
            partition_key=partition_key,
            instance=instance,
            resources=resources,
            run_config=QUIET,
        )
        for event in result.get_asset_materialization_events():
            mat = event.materialization
            path = mat.metadata["path"].value if "path" in mat.metadata else ""
            summary.append(f"{label} {mat.asset_key.to_user_string()}: {path}")

    for key in keys:
        run(per_sample, key, key)
    if unpartitioned:
        run(unpartitioned, None, "all samples")
    summary.append(f"Dagster runs are in {instance.root_directory}; browse them with `make dev`.")
    return summary
