"""Scheduled retraining: weekly by default, and only when shards or labels changed since the last model."""

import os

from dagster import DefaultScheduleStatus, RunRequest, ScheduleEvaluationContext, SkipReason, schedule

from xenium_assets.defs.jobs import training_job
from xenium_assets.defs.resources import ProjectResource
from xenium_assets.training.inputs import training_inputs

CRON_ENV = "XENIUM_ASSETS_RETRAIN_CRON"
DEFAULT_CRON = "0 3 * * 1"  # Mondays, 03:00
TRAINING_TAG = "xenium-assets/training"


def last_trained_on(project: ProjectResource) -> str | None:
    latest = project.paths.read_latest_model()
    return latest.get("inputs") if latest else None


@schedule(
    name="retrain_schedule",
    cron_schedule=os.environ.get(CRON_ENV, DEFAULT_CRON),
    job=training_job,
    tags={TRAINING_TAG: "true"},
    default_status=DefaultScheduleStatus.RUNNING,
    description=f"Retrains the model and its report on all samples (cron from ${CRON_ENV}, default weekly), "
    "skipping when no shards or labels changed since the last model.",
)
def retrain_schedule(context: ScheduleEvaluationContext, project: ProjectResource) -> RunRequest | SkipReason:
    current = training_inputs(project.paths)
    if not project.paths.all_shard_indexes():
        return SkipReason("no patch shards yet: nothing to train on")
    if last_trained_on(project) == current:
        return SkipReason("shards and labels unchanged since the last model: no retraining")
    return RunRequest(run_key=f"retrain-{current[:16]}")
