"""Runs a user starts from the command line on the project's instance: a new label reference and relabelling."""

from __future__ import annotations

from collections.abc import Callable

from dagster import DagsterInstance

from xenium_assets.defs.partitions import SAMPLES
from xenium_assets.defs.qc_adata import ADATA
from xenium_assets.paths import ProjectPaths

QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def summarise(result, label: str) -> list[str]:
    """What a run wrote and its checks, a line each. A failed asset raises RuntimeError; a failed check (e.g. a
    model no better than chance) is reported, not raised."""
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    checks = result.get_asset_check_evaluations()
    check_steps = {f"{c.asset_key.to_python_identifier()}_{c.check_name}" for c in checks}
    broken = [e for e in failures if e.step_key not in check_steps]
    if broken:
        raise RuntimeError(f"{label}: {broken[0].step_key} failed: {broken[0].step_failure_data.error.message}")
    lines, seen = [], set()
    for event in result.get_asset_materialization_events():
        mat = event.materialization
        name = mat.asset_key.to_user_string()
        if name not in seen:
            seen.add(name)
            path = mat.metadata["path"].value if "path" in mat.metadata else ""
            lines.append(f"{label} {name}: {path}")
    for check in checks:
        lines.append(f"{label} check {check.check_name}: {'passed' if check.passed else 'FAILED'}")
    return lines


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
    samples = [s for s in instance.get_dynamic_partitions(SAMPLES) if (paths.asset_dir(s, "qc_adata") / ADATA).exists()]
    for sample in samples if relabel else ():
        echo(f"running {cell_labels_job.name} for {sample}")
        result = defs.resolve_job_def(cell_labels_job.name).execute_in_process(
            instance=instance, run_config=QUIET, partition_key=sample, raise_on_error=False
        )
        lines += summarise(result, sample)
    return lines
