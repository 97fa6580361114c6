"""``trained_model``: the DAPI classifier, trained on all shards with spatial splits, tracked in MLflow.

Labels come from one label reference version (the latest by default), joined to the shards by key."""

import time
from typing import Literal

import numpy as np
from dagster import AssetExecutionContext, Config, Failure, MaterializeResult, MetadataValue, asset

from xenium_assets.atomic import write_json
from xenium_assets.defs.cell_labels import cell_labels
from xenium_assets.defs.metadata import bullet_list, counts_table, frame_table, image
from xenium_assets.defs.partitions import SAMPLES
from xenium_assets.defs.patch_shards import patch_shards
from xenium_assets.defs.tracking import REGISTERED_MODEL, end_mlflow_on_run_finished, pip_requirements
from xenium_assets.labels.table import MIN_CLASS_CELLS
from xenium_assets.patches.masks import DEFAULT_REPRESENTATION, Representation
from xenium_assets.training.inputs import training_inputs

MLFLOW_UI = "http://127.0.0.1:5000"


class TrainModelConfig(Config):
    """Small and fast by default (CPU, a few minutes on the demo); full-size training is a config change."""

    backbone: str = "resnet10t"
    """Any timm model name; weights are never downloaded."""
    checkpoint: str | None = None
    """A local timm checkpoint to start from."""
    representation: Representation = DEFAULT_REPRESENTATION
    """dapi_nucleus_ring (DAPI, nucleus, the ring grown from it) is what `predict` can apply to a DAPI-only image;
    dapi_masks reads the Xenium cell boundary instead."""
    input_px: int = 64
    batch_size: int = 64
    max_epochs: int = 8
    patience: int = 3
    lr: float = 2e-3
    balance: Literal["weighted_loss", "undersample", "none"] = "weighted_loss"
    augment: bool = True
    blur: bool = False
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    holdout_sample: str | None = None
    """Hold this whole sample out as the test set."""
    split_block_um: float | None = None
    """Side of the square groups of tiles that go to one split; None: eight buffer widths (a quadrant of the demo's
    small slides, one tile of a real one)."""
    buffer_margin_um: float | None = None
    """Validation and test cells whose patch window plus this margin reaches another split are left out; None: one
    patch width."""
    label_version: str | None = None
    """The label reference version whose labels to train on (default: the latest)."""
    min_class_cells: int = MIN_CLASS_CELLS
    num_workers: int | None = None
    """Data-loader processes; by default the CPUs beyond two (none on a 2-CPU machine), at most 4."""
    seed: int = 0


def sample_shard_dirs(context: AssetExecutionContext, project) -> dict:
    """Samples whose patch shards exist, by key."""
    keys = context.instance.get_dynamic_partitions(SAMPLES)
    shards = {k: project.paths.patch_shards(k) for k in keys}
    return {k: s.folder for k, s in shards.items() if s.done_tiles()}


@asset(
    deps=[patch_shards, cell_labels],
    group_name="model",
    kinds={"pytorch", "mlflow"},
    required_resource_keys={"project", "mlflow"},
    hooks={end_mlflow_on_run_finished},
    pool="train",
    description="A timm backbone in a Lightning module, trained on every sample's shards, labelled by key from one "
    "label reference version, with whole tiles as the unit of the train / validation / test split; parameters, "
    "curves, checkpoint, label version and shard list in MLflow, and a registered model version.",
)
def trained_model(context: AssetExecutionContext, config: TrainModelConfig) -> MaterializeResult:
    # The training stack is imported here, not at module level: torch, lightning and timm take about 8 s to
    # import, which every step process of every run would otherwise pay when it loads the code location.
    import mlflow
    from lightning.pytorch.loggers import MLFlowLogger

    from xenium_assets.labels.store import read_labels, resolve_version, usable_labels
    from xenium_assets.labels.table import LabelError, class_counts
    from xenium_assets.training.data import DataConfig
    from xenium_assets.training.model import CellClassifier
    from xenium_assets.training.report import learning_curves_figure
    from xenium_assets.training.run import TrainingError, train_model
    from xenium_assets.training.splits import SplitConfig
    from xenium_assets.training.train import TrainConfig

    project = context.resources.project
    tracking = context.resources.mlflow
    dirs = sample_shard_dirs(context, project)
    if not dirs:
        raise Failure("no patch shards: materialize patch_shards first", allow_retries=False)
    try:
        version = resolve_version(project.paths, config.label_version)
    except LabelError as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    table, unlabelled = read_labels(project.paths, sorted(dirs), version)
    if unlabelled:
        context.log.warning(f"no labels in {version} for {', '.join(unlabelled)}: trained without them")
    if table.empty:
        raise Failure(
            f"no sample with shards has labels in {version}: materialize cell_labels for them", allow_retries=False
        )
    dirs = {k: d for k, d in dirs.items() if k not in unlabelled}
    inputs = training_inputs(project.paths)  # what the retrain schedule compares against
    run = mlflow.active_run()
    files = project.paths.model(run.info.run_id)
    out = files.folder
    data = DataConfig(
        input_px=config.input_px,
        representation=config.representation,
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        augment=config.augment,
        blur=config.blur,
        balance=config.balance,
    )
    train = TrainConfig(
        backbone=config.backbone,
        checkpoint=config.checkpoint,
        max_epochs=config.max_epochs,
        patience=config.patience,
        lr=config.lr,
        seed=config.seed,
    )
    split = SplitConfig(
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        holdout_sample=config.holdout_sample,
        block_um=config.split_block_um,
        margin_um=config.buffer_margin_um,
        seed=config.seed,
    )
    tracking.log_params({**config.model_dump(), "samples": ",".join(sorted(dirs))})
    logger = MLFlowLogger(run_id=run.info.run_id, tracking_uri=mlflow.get_tracking_uri())
    start = time.perf_counter()
    try:
        model = train_model(
            dirs,
            usable_labels(table),
            version,
            out,
            data=data,
            train=train,
            split=split,
            min_class_cells=config.min_class_cells,
            loggers=[logger],
            report=context.log.info,
        )
    except TrainingError as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    seconds = time.perf_counter() - start
    # A readable MLflow run name (dagster-mlflow names runs after the job).
    tracking.set_tags(
        {
            "label_version": model.label_version,
            "mlflow.runName": f"{model.label_version} {time.strftime('%Y-%m-%d %H:%M')}",
        }
    )
    tracking.log_metric("best_val_macro_f1", model.fit.best_val_macro_f1)
    files.shard_list.write_text("\n".join(model.shards) + "\n")
    for path in (files.card, files.split, files.history, model.fit.checkpoint, files.shard_list):
        tracking.log_artifact(str(path), artifact_path="model")
    module = CellClassifier.load_from_checkpoint(model.fit.checkpoint, map_location="cpu").eval()
    example = np.zeros((1, module.hparams.in_chans, config.input_px, config.input_px), dtype=np.float32)
    logged = mlflow.pytorch.log_model(
        module.model,
        name="classifier",
        input_example=example,
        registered_model_name=REGISTERED_MODEL,
        pip_requirements=pip_requirements(),
    )
    version = getattr(logged, "registered_model_version", None)
    write_json(
        project.paths.latest_model,
        {
            "folder": str(out),
            "mlflow_run_id": run.info.run_id,
            "registered_model_version": version,
            "dagster_run_id": context.run_id,
            "inputs": inputs,
        },
    )
    run_url = f"{MLFLOW_UI}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(out)),
            "mlflow_run": MetadataValue.url(run_url),
            "mlflow_run_id": run.info.run_id,
            "registered_model": f"{REGISTERED_MODEL} v{version}",
            "label_version": model.label_version,
            "samples": ", ".join(sorted(dirs)),
            "samples_without_labels": bullet_list(unlabelled),
            "class_counts_per_sample": frame_table(class_counts(table), "label"),
            "classes": ", ".join(model.classes),
            "dropped_classes": counts_table(model.dropped_classes, "class", "patches"),
            "split": split.describe(),
            "patches_per_split": frame_table(model.split_counts, "label"),
            "n_buffer_cells": int(model.split_counts["buffer"].sum()),
            "best_val_macro_f1": model.fit.best_val_macro_f1,
            "epochs": model.fit.epochs,
            "accelerator": model.fit.accelerator,
            "seconds": round(seconds, 1),
            "learning_curves": image(learning_curves_figure(model.fit.history), "learning curves"),
        }
    )
