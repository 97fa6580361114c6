"""A new label reference from the command line, and every sample relabelled in it."""

from __future__ import annotations

from collections.abc import Callable

from dagster import DagsterInstance

from xenium_assets.defs.partitions import SAMPLES
from xenium_assets.layout import ProjectPaths
from xenium_assets.runs.summary import QUIET, summarise


def rebuild_reference(
    paths: ProjectPaths, instance: DagsterInstance, config: dict, *, relabel: bool, echo: Callable[[str], None]
) -> list[str]:
    """Materialize label_reference with ``config`` (its run config), then, with ``relabel``, cell_labels of every
    sample with a qc_adata, one run each."""
    from xenium_assets.definitions import build_definitions
    from xenium_assets.defs.jobs import cell_labels_job, label_reference_job

    defs = build_definitions(paths.data_dir)
    options = {k: v for k, v in config.items() if v is not None}
    echo(f"running {label_reference_job.name}")
    result = defs.resolve_job_def(label_reference_job.name).execute_in_process(
        instance=instance,
        run_config={**QUIET, "ops": {"label_reference": {"config": options}}},
        raise_on_error=False,
    )
    lines = summarise(result, "reference")
    samples = [s for s in instance.get_dynamic_partitions(SAMPLES) if paths.qc_adata(s).adata.exists()]
    for sample in samples if relabel else ():
        echo(f"running {cell_labels_job.name} for {sample}")
        result = defs.resolve_job_def(cell_labels_job.name).execute_in_process(
            instance=instance, run_config=QUIET, partition_key=sample, raise_on_error=False
        )
        lines += summarise(result, sample)
    return lines
