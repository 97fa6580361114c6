"""``nucleus_segmenter``: the learned nucleus segmenter, trained on the Xenium nuclei of the classifier's training
tiles, tracked in MLflow and registered, and measured against the classical one on the classifier's test tiles.

The split is the latest trained model's (``split.parquet``): the segmenter trains on its training tiles, validates on
its validation tiles and is tested on its test tiles, so neither model has seen the test tiles when the two are
evaluated end to end."""

import time

from dagster import AssetExecutionContext, Config, Failure, MaterializeResult, MetadataValue, asset

from xenium_assets.atomic import atomic_file, write_json
from xenium_assets.defs.metadata import frame_table
from xenium_assets.defs.tracking import (
    SEGMENTER_MODEL,
    SEGMENTER_PACKAGES,
    end_mlflow_on_run_finished,
    pip_requirements,
)
from xenium_assets.defs.trained_model import MLFLOW_UI, trained_model
from xenium_assets.progress import LogProgress

SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}


class NucleusSegmenterConfig(Config):
    """About three minutes on two CPU cores on the demo (600 steps, as the benchmark); more steps or a GPU for
    real slides."""

    steps: int = 600
    batch_size: int = 8
    crop: int = 128
    """Side of the training crops at the network's scale (nuclei 16 px across)."""
    val_every: int = 100
    """Validation, and the choice of the best checkpoint, every this many steps."""
    max_windows: int | None = 64
    """Windows (at most ``window_px`` a side) read per split, drawn at random from its tiles: bounds memory and the
    test's time on large slides; None: every window."""
    window_px: int = 1024
    seed: int = 0


def _split_tiles(project) -> tuple[dict, object]:
    """The latest trained model's record and its (sample, tile, split) table; a Failure that says what to do."""
    import pandas as pd

    latest = project.paths.read_latest_model()
    if latest is None:
        raise Failure("no trained model: materialize trained_model first", allow_retries=False)
    split = project.paths.model(latest["mlflow_run_id"]).split
    if not split.exists():
        raise Failure(
            f"{split} is missing: the latest trained model has no tile split; materialize trained_model again",
            allow_retries=False,
        )
    return latest, pd.read_parquet(split)


def _read_samples(project, samples: list[str]) -> tuple[dict, dict]:
    """Each sample's bundle nuclei and tile grid (from its dapi_zarr description: the grid its tiles were cut on)."""
    from xenium_assets.bundle.validate import BundleError
    from xenium_assets.layout import DapiFiles
    from xenium_assets.patches.dapi_store import read_description
    from xenium_assets.segmentation.bundle_nuclei import read_bundle_nuclei
    from xenium_assets.segmentation.tile_pairs import TileGrid

    nuclei, grids = {}, {}
    for key in samples:
        manifest = project.manifest(key)
        dapi = project.paths.dapi_zarr(key).folder
        if not DapiFiles(dapi).description.exists():
            raise Failure(f"sample {key!r} has no dapi_zarr: materialize dapi_zarr for it", allow_retries=False)
        grids[key] = TileGrid.of(read_description(dapi))
        try:
            nuclei[key] = read_bundle_nuclei(
                manifest.bundle_dir,
                pixel_size_um=manifest.pixel_size_um,
                image_origin_um=tuple(manifest.image_origin_um),
            )
        except (BundleError, ValueError) as exc:
            raise Failure(f"sample {key!r}: {exc}", allow_retries=False) from exc
    return nuclei, grids


def _tiles_by_sample(windows) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for w in windows:
        if w.tile not in out.setdefault(w.sample, []):
            out[w.sample].append(w.tile)
    return out


@asset(
    deps=[trained_model],
    group_name="model",
    kinds={"pytorch", "mlflow"},
    required_resource_keys={"project", "mlflow"},
    hooks={end_mlflow_on_run_finished},
    pool="train",
    description="A U-Net that finds nuclei in DAPI alone, trained on the Xenium nuclei of the latest trained model's "
    "training tiles (validated on its validation tiles); object precision, recall, F1 at IoU 0.5 and mean matched IoU "
    "against the Xenium nuclei of its test tiles, beside the classical segmenter's; tracked in MLflow and registered.",
)
def nucleus_segmenter(context: AssetExecutionContext, config: NucleusSegmenterConfig) -> MaterializeResult:
    # torch, lightning and mlflow are imported here, for the reason given in trained_model.
    import mlflow
    import numpy as np

    from xenium_assets.segmentation.classical import segment_nuclei
    from xenium_assets.segmentation.learned import LearnedSegmenter, SegmenterConfig
    from xenium_assets.segmentation.tile_pairs import evaluate_tiles, pick, tile_windows, training_pairs
    from xenium_assets.segmentation.training import train_segmenter

    project = context.resources.project
    tracking = context.resources.mlflow
    latest, tiles = _split_tiles(project)
    samples = sorted(tiles["sample"].unique())
    nuclei, grids = _read_samples(project, samples)
    windows = {
        name: pick(tile_windows(grids, tiles[tiles["split"] == name], config.window_px), config.max_windows, seed)
        for seed, name in enumerate(SPLIT_NAMES, start=config.seed)
    }
    progress = LogProgress(context.log.info)
    pairs, windows["train"] = training_pairs(nuclei, windows["train"], progress)
    val_pairs, windows["val"] = training_pairs(nuclei, windows["val"], progress)
    if not pairs:
        raise Failure(
            "no Xenium nucleus in the trained model's training tiles: nothing to train on", allow_retries=False
        )
    if not val_pairs:
        context.log.warning("no Xenium nucleus in the validation tiles: validated on the training tiles")
    if not windows["test"]:
        context.log.warning("the trained model's split has no test tiles: no test figures")
    run = mlflow.active_run()
    files = project.paths.segmenter(run.info.run_id)
    segmenter_config = SegmenterConfig(
        steps=config.steps, batch_size=config.batch_size, crop=config.crop, val_every=config.val_every, seed=config.seed
    )
    diameters = {k: n.diameter_px for k, n in nuclei.items()}
    pixel_sizes = {k: n.report.pixel_size_um for k, n in nuclei.items()}
    description = {
        "trained_model_run_id": latest["mlflow_run_id"],
        "samples": samples,
        "tiles": {SPLIT_NAMES[s]: _tiles_by_sample(w) for s, w in windows.items()},
        "windows": {SPLIT_NAMES[s]: len(w) for s, w in windows.items()},
        "window_px": config.window_px,
        "diameter_px": diameters,
        "pixel_size_um": pixel_sizes,
        "nucleus_diameter_um": float(np.median([diameters[k] * pixel_sizes[k] for k in samples])),
    }
    tracking.log_params({f"segmenter_{k}": v for k, v in config.model_dump().items()})
    tracking.log_params({"segmenter_samples": ",".join(samples), "segmenter_split_from": latest["mlflow_run_id"]})
    start = time.perf_counter()
    fit = train_segmenter(
        pairs,
        segmenter_config,
        files.folder,
        val_pairs=val_pairs or None,
        progress=progress,
        description=description,
    )
    del pairs, val_pairs
    learned = LearnedSegmenter.load(fit.checkpoint)
    evaluation = evaluate_tiles({"learned": learned, "classical": segment_nuclei}, nuclei, windows["test"], progress)
    seconds = time.perf_counter() - start
    with atomic_file(files.per_image) as tmp:
        evaluation.per_window.to_csv(tmp, index=False)
    card = files.read_card()
    card["test"] = {name: s.as_dict() for name, s in evaluation.pooled.items()}
    card["test_per_sample"] = {k: {n: s.as_dict() for n, s in v.items()} for k, v in evaluation.per_sample.items()}
    write_json(files.card, card)

    figures = {
        f"test_{measure}_{name}": round(float(getattr(summary, attr)), 4)
        for name, summary in evaluation.pooled.items()
        for measure, attr in (("f1", "f1"), ("precision", "precision"), ("recall", "recall"), ("mean_iou", "mean_iou"))
    }
    if "label_version" not in mlflow.get_run(run.info.run_id).data.tags:  # trained_model did not name this run
        tracking.set_tags({"mlflow.runName": f"nucleus segmenter {time.strftime('%Y-%m-%d %H:%M')}"})
    tracking.log_metrics({f"segmenter_{k}": v for k, v in figures.items() if np.isfinite(v)})
    tracking.log_metric("segmenter_best_val_loss", fit.best_val_loss)
    for row in fit.history.itertuples():
        if np.isfinite(getattr(row, "val_loss", np.nan)):
            tracking.log_metric("segmenter_val_loss", float(row.val_loss), step=int(row.step))
    for path in (files.card, files.history, files.per_image, fit.checkpoint):
        tracking.log_artifact(str(path), artifact_path="segmenter")
    side = 4 * 2**segmenter_config.encoder_depth
    logged = mlflow.pytorch.log_model(
        learned.module,
        name="segmenter",
        input_example=np.zeros((1, 1, side, side), dtype=np.float32),
        registered_model_name=SEGMENTER_MODEL,
        pip_requirements=pip_requirements(SEGMENTER_PACKAGES),
    )
    version = getattr(logged, "registered_model_version", None)
    write_json(
        project.paths.latest_segmenter,
        {
            "folder": str(files.folder),
            "mlflow_run_id": run.info.run_id,
            "registered_model_version": version,
            "dagster_run_id": context.run_id,
            "trained_model_run_id": latest["mlflow_run_id"],
        },
    )
    counts = {f"{SPLIT_NAMES[s]}_tiles": sum(map(len, _tiles_by_sample(w).values())) for s, w in windows.items()}
    run_url = f"{MLFLOW_UI}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(files.folder)),
            "mlflow_run": MetadataValue.url(run_url),
            "mlflow_run_id": run.info.run_id,
            "registered_model": f"{SEGMENTER_MODEL} v{version}",
            "trained_model_run_id": latest["mlflow_run_id"],
            "samples": ", ".join(samples),
            **counts,
            **{f"{SPLIT_NAMES[s]}_windows": len(w) for s, w in windows.items()},
            "test_true_nuclei": evaluation.pooled["learned"].n_true,
            **figures,
            "test_per_sample": frame_table(evaluation.table().set_index("sample"), "sample"),
            "nucleus_diameter_um": round(description["nucleus_diameter_um"], 2),
            "best_val_loss": round(fit.best_val_loss, 4),
            "steps": fit.steps,
            "seconds": round(seconds, 1),
            "accelerator": fit.accelerator,
        }
    )
