"""Sensors: new Xenium folders in the landing directory, and declarative automation downstream."""

import json
import os

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from xenium_assets.bundle.errors import BundleError
from xenium_assets.bundle.validate import inspect_bundle
from xenium_assets.defs.jobs import PER_SAMPLE, ingest_sample_job, predict_image_job
from xenium_assets.defs.partitions import image_partitions, sample_partitions
from xenium_assets.defs.resources import ProjectResource
from xenium_assets.landing import LandingState, image_candidates, look

PER_SAMPLE_KEYS = [a.key for a in PER_SAMPLE]
INTERVAL_ENV = "XENIUM_ASSETS_SENSOR_INTERVAL"
"""Seconds between sensor evaluations (default 30; tests use less)."""


def _interval() -> int:
    return int(os.environ.get(INTERVAL_ENV, "30"))


@sensor(
    name="landing_sensor",
    minimum_interval_seconds=_interval(),
    default_status=DefaultSensorStatus.RUNNING,
    job=ingest_sample_job,
    description="Registers each completely copied Xenium folder in data/landing (or the project's landing_dir) as a "
    "sample and materializes its per-sample assets; the cursor makes each folder's content run once, and a copy of "
    "a registered run (same experiment, region and files) is skipped with the reason.",
)
def landing_sensor(context: SensorEvaluationContext, project: ProjectResource) -> SensorResult | SkipReason:
    state = LandingState.from_json(json.loads(context.cursor) if context.cursor else None)
    ready, state = look(project.landing, state)
    cursor = json.dumps(state.to_json())
    if not ready:
        waiting = len(state.waiting)
        reason = f"{waiting} folder(s) still being copied" if waiting else "no new bundle"
        return SensorResult(skip_reason=SkipReason(reason), cursor=cursor)
    registry = project.registry
    keys, requests, skipped = [], [], []
    for folder in ready:
        twin = registry.copy_of(folder)
        if twin is not None:
            skipped.append(f"{folder} is already registered as {twin.key}")
            context.log.info(f"skipped {folder}: a copy of the run registered as {twin.key} ({twin.bundle_dir})")
            continue
        try:
            inspect_bundle(folder)
        except BundleError as exc:
            skipped.append(f"broken bundle: {exc}")
            context.log.warning(f"skipped a broken bundle: {exc}")
            continue
        entry, _ = registry.register(folder)
        keys.append(entry.key)
        fingerprint = state.done[str(folder.resolve())]
        requests.append(
            RunRequest(
                partition_key=entry.key,
                run_key=f"{entry.key}:{fingerprint[:12]}",
                # Named, so the run records which assets it made: automation then knows that the assets
                # downstream of raw_bundle were made in the same run, and does not make them again.
                asset_selection=PER_SAMPLE_KEYS,
                tags={"xenium-assets/bundle": str(folder)},
            )
        )
        context.log.info(f"new bundle {folder} -> sample {entry.key}")
    return SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[sample_partitions.build_add_request(keys)] if keys else [],
        cursor=cursor,
        skip_reason=SkipReason(" | ".join(skipped)) if skipped and not requests else None,
    )


@sensor(
    name="image_landing_sensor",
    minimum_interval_seconds=_interval(),
    default_status=DefaultSensorStatus.RUNNING,
    job=predict_image_job,
    description="Adds each completely copied TIFF in data/landing/images (the project's landing_dir/images) as an "
    "image partition and runs cell_predictions for it; the cursor makes each file's content run once, and an image "
    "that cannot be read (no pixel size, no DAPI channel) is skipped with the reason.",
)
def image_landing_sensor(context: SensorEvaluationContext, project: ProjectResource) -> SensorResult | SkipReason:
    state = LandingState.from_json(json.loads(context.cursor) if context.cursor else None)
    ready, state = look(project.image_landing, state, find=image_candidates)
    cursor = json.dumps(state.to_json())
    if not ready:
        return SensorResult(skip_reason=SkipReason("no new image"), cursor=cursor)
    images = project.images
    keys, requests, skipped = [], [], []
    for path in ready:
        try:
            entry, _ = images.add(path)
        except ValueError as exc:  # ImageError: one line naming the file and the fix
            skipped.append(str(exc))
            context.log.warning(f"skipped an image: {exc}")
            continue
        keys.append(entry.key)
        fingerprint = state.done[str(path.resolve())]
        requests.append(RunRequest(partition_key=entry.key, run_key=f"{entry.key}:{fingerprint[:12]}"))
        context.log.info(f"new image {path} -> {entry.key}")
    return SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[image_partitions.build_add_request(keys)] if keys else [],
        cursor=cursor,
        skip_reason=SkipReason(" | ".join(skipped)) if skipped and not requests else None,
    )


automation_sensor = AutomationConditionSensorDefinition(
    "automation",
    target=AssetSelection.all(),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=_interval(),
    description="Evaluates the assets' automation conditions: labels and shards follow new samples by themselves.",
)
