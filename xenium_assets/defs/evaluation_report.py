"""``evaluation_report``: the honest answer on the test split, and the check that the model beats chance."""

import json
from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from xenium_assets.defs.metadata import image
from xenium_assets.defs.resources import ProjectResource
from xenium_assets.defs.tracking import end_mlflow_on_run_finished
from xenium_assets.defs.trained_model import sample_shard_dirs, trained_model


class ReportConfig(Config):
    seed: int = 0
    """Seed of the bootstrap and permutation resampling."""


def _latest(project: ProjectResource) -> dict:
    path = project.paths.latest_model
    if not path.exists():
        raise Failure("no trained model: materialize trained_model first", allow_retries=False)
    return json.loads(path.read_text())


@asset(
    deps=[trained_model],
    group_name="model",
    kinds={"html", "mlflow"},
    required_resource_keys={"project", "mlflow"},
    hooks={end_mlflow_on_run_finished},
    description="Test-split metrics with bootstrap 95% intervals, per-class scores, confusion matrix, majority and "
    "morphology-feature baselines, a 1,000-shuffle permutation test, saliency maps and slide maps, as Markdown and "
    "self-contained HTML; logged to the model's MLflow run.",
)
def evaluation_report(context: AssetExecutionContext, config: ReportConfig) -> MaterializeResult:
    from mlflow.tracking import MlflowClient

    from xenium_assets.labels.store import read_labels, usable_labels

    # Imported here, not at module level, for the reason given in trained_model.
    from xenium_assets.training.report import confusion_figure
    from xenium_assets.training.run import evaluate_model, summary

    project = context.resources.project
    latest = _latest(project)
    model_dir = Path(latest["folder"])
    out = project.paths.report_dir(model_dir.name)
    card = json.loads((model_dir / "model.json").read_text())
    if "label_version" not in card:
        raise Failure(
            f"{model_dir} was trained before label references existed: materialize trained_model again",
            allow_retries=False,
        )
    dirs = sample_shard_dirs(context, project)
    labels, _ = read_labels(project.paths, sorted(dirs), card["label_version"])
    ev, _, _ = evaluate_model(model_dir, dirs, usable_labels(labels), out, seed=config.seed, report=context.log.info)
    headline = summary(ev, card)
    client = MlflowClient(context.resources.mlflow.get_tracking_uri())
    run_id = latest["mlflow_run_id"]
    for key, value in headline.items():
        if isinstance(value, bool | int | float):
            client.log_metric(run_id, f"report_{key}", float(value))
    client.log_artifacts(run_id, str(out), artifact_path="report")
    context.log.info(
        f"signal detected: {headline['signal_detected']}; beats morphology: {headline['beats_morphology']}"
    )
    return MaterializeResult(
        metadata={
            **{k: (bool(v) if isinstance(v, bool) else v) for k, v in headline.items()},
            "path": MetadataValue.path(str(out)),
            "report_html": MetadataValue.path(str(out / "report.html")),
            "model": MetadataValue.path(str(model_dir)),
            "confusion_matrix": image(confusion_figure(ev), "confusion matrix"),
        }
    )


@asset_check(
    asset=evaluation_report,
    blocking=True,
    required_resource_keys={"project"},
    description="The model's test macro-F1 interval lies above the majority-class baseline.",
)
def beats_majority_baseline(context) -> AssetCheckResult:
    latest = _latest(context.resources.project)
    folder = context.resources.project.paths.report_dir(Path(latest["folder"]).name)
    metrics = json.loads((folder / "metrics.json").read_text())
    passed = metrics["test_macro_f1_ci_low"] > metrics["majority_macro_f1"]
    return AssetCheckResult(
        passed=passed,
        severity=AssetCheckSeverity.ERROR,
        metadata={k: metrics[k] for k in ("test_macro_f1", "test_macro_f1_ci_low", "majority_macro_f1")},
    )
