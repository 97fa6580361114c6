"""``evaluation_report``: the honest answer (spatially calibrated) on the test split and on held-out samples, and
the check that the model beats chance."""

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

from xenium_assets.defs.metadata import frame_table, image
from xenium_assets.defs.resources import ProjectResource
from xenium_assets.defs.tracking import end_mlflow_on_run_finished
from xenium_assets.defs.trained_model import sample_shard_dirs, trained_model
from xenium_assets.layout import ModelFiles
from xenium_assets.training.spatial_stats import N_BOOTSTRAP, N_NULL


class ReportConfig(Config):
    seed: int = 0
    """Seed of the block bootstrap and the shifted-label null."""
    n_bootstrap: int = N_BOOTSTRAP
    n_null: int = N_NULL
    """Shifts of the label maps in the null (p = (k + 1) / (n + 1): at least 999 for p = 0.001)."""
    block_um: float | None = None
    """Side of the square resampling blocks in µm; None: the test tiles (set it where tiles are large)."""
    loso_max_folds: int = 4
    """Leave-one-sample-out models to train, at most (the largest samples); 0: none."""
    cell_only_model: bool = True
    """Also train the CNN on the cell alone, to tell the cell's signal from its surroundings'."""
    boundary_model: bool = True
    """For a model that does not read the Xenium cell boundary, also train one that does (dapi_masks), to show what
    the boundary adds over the input a DAPI-only image reproduces."""
    extra_max_epochs: int | None = None
    """Epochs of those extra models; None: as trained_model's."""


def _latest(project: ProjectResource) -> dict:
    latest = project.paths.read_latest_model()
    if latest is None:
        raise Failure("no trained model: materialize trained_model first", allow_retries=False)
    return latest


@asset(
    deps=[trained_model],
    group_name="model",
    kinds={"html", "mlflow"},
    required_resource_keys={"project", "mlflow"},
    hooks={end_mlflow_on_run_finished},
    description="Leave-one-sample-out macro-F1 per held-out sample; test-split metrics with block-bootstrap 95% "
    "intervals; a shifted-label-map null for 'any signal'; paired differences against morphology baselines and a "
    "cell-only CNN; contrarian cells; per-class scores, saliency and slide maps, as Markdown and self-contained HTML; "
    "logged to the model's MLflow run.",
)
def evaluation_report(context: AssetExecutionContext, config: ReportConfig) -> MaterializeResult:
    from mlflow.tracking import MlflowClient

    from xenium_assets.labels.store import read_labels, usable_labels

    # Imported here, not at module level, for the reason given in trained_model.
    from xenium_assets.training.report import confusion_figure, null_figure
    from xenium_assets.training.run import ReportOptions, TrainingError, evaluate_model, summary
    from xenium_assets.training.spatial_stats import StatsConfig

    project = context.resources.project
    latest = _latest(project)
    model_dir = Path(latest["folder"])
    report_files = project.paths.report(model_dir.name)
    out = report_files.folder
    card = ModelFiles(model_dir).read_card()
    if "label_version" not in card or "n_buffer_cells" not in card:
        raise Failure(
            f"{model_dir} was trained before buffered splits and label references: materialize trained_model again",
            allow_retries=False,
        )
    dirs = sample_shard_dirs(context, project)
    version = card["label_version"]
    labels, unlabelled = read_labels(project.paths, sorted(dirs), version)
    missing = sorted(set(unlabelled) & set(card["samples"]))
    if missing:
        raise Failure(
            f"the model was trained on labels {version}, which {', '.join(missing)} no longer has: materialize "
            "cell_labels for it, or trained_model again on the latest labels",
            allow_retries=False,
        )
    options = ReportOptions(
        stats=StatsConfig(
            n_bootstrap=config.n_bootstrap, n_null=config.n_null, block_um=config.block_um, seed=config.seed
        ),
        loso_max_folds=config.loso_max_folds,
        cell_only_model=config.cell_only_model,
        boundary_model=config.boundary_model,
        extra_max_epochs=config.extra_max_epochs,
    )
    trained = {k: d for k, d in dirs.items() if k in card["samples"]}
    try:
        ev, _ = evaluate_model(
            model_dir, trained, usable_labels(labels), version, out, options=options, report=context.log.info
        )
    except TrainingError as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
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
            "report_html": MetadataValue.path(str(report_files.html)),
            "model": MetadataValue.path(str(model_dir)),
            "confusion_matrix": image(confusion_figure(ev), "confusion matrix"),
            "signal_test": image(null_figure(ev), "the CNN against its spatial null"),
            **(
                {"loso": frame_table(ev.extra["loso"].set_index("sample").round(3), "sample")}
                if ev.extra["loso"] is not None
                else {}
            ),
        }
    )


@asset_check(
    asset=evaluation_report,
    blocking=True,
    required_resource_keys={"project"},
    description="The CNN's test macro-F1 lies beyond chance: p < 0.01 against label maps shifted against its "
    "predictions (a null that keeps the tissue's spatial clumps).",
)
def beats_chance(context) -> AssetCheckResult:
    latest = _latest(context.resources.project)
    metrics = context.resources.project.paths.report(Path(latest["folder"]).name).read_metrics()
    return AssetCheckResult(
        passed=bool(metrics["signal_detected"]),
        severity=AssetCheckSeverity.ERROR,
        metadata={
            k: metrics[k] for k in ("test_macro_f1", "chance_macro_f1_p99", "permutation_p_value", "resampling_unit")
        },
    )
