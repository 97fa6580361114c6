"""The nucleus_segmenter asset on a real Dagster instance and MLflow store; its tile windows; and resolving
registered models by name and version."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, materialize

from xenium_assets.defs.compute import DaskResource, PatchGeometry
from xenium_assets.defs.dapi_zarr import dapi_zarr
from xenium_assets.defs.nucleus_segmenter import nucleus_segmenter
from xenium_assets.defs.partitions import SAMPLES
from xenium_assets.defs.raw_bundle import raw_bundle
from xenium_assets.defs.resources import ProjectResource
from xenium_assets.defs.tracking import EXPERIMENT, SEGMENTER_MODEL, TRAINED_BY, mlflow_tracking, tracking_uri
from xenium_assets.layout import ProjectPaths
from xenium_assets.model_store import ModelNotFound, parse_model, resolve
from xenium_assets.patches.grid import TILE_KEYS, tile_index
from xenium_assets.raster import Window
from xenium_assets.registry import SampleRegistry
from xenium_assets.segmentation.tile_pairs import TileGrid, pick, tile_windows

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
TINY = {"steps": 12, "batch_size": 4, "crop": 64, "val_every": 6, "max_windows": 8, "seed": 1}
"""A dozen steps: the test is of the wiring, not of the network (the benchmark measures that)."""
FIX = f"materialize {TRAINED_BY[SEGMENTER_MODEL]}"


def _resources(data) -> dict:
    return {
        "project": ProjectResource(data_dir=str(data)),
        "dask": DaskResource(),
        "patches": PatchGeometry(),
        "mlflow": mlflow_tracking.configured(
            {"experiment_name": EXPERIMENT, "mlflow_tracking_uri": tracking_uri(data)}
        ),
    }


def _stand_in_split(paths: ProjectPaths, sample: str) -> pd.DataFrame:
    """What trained_model leaves for the segmenter (split.parquet and latest.json), without training a classifier:
    tile rows 0-3 train, row 4 validates, rows 5-7 test."""
    from xenium_assets.atomic import write_json

    rows = [tile_index(t)[0] for t in TILE_KEYS]
    split = ["train" if r < 4 else "val" if r == 4 else "test" for r in rows]
    tiles = pd.DataFrame({"sample": sample, "tile": list(TILE_KEYS), "split": split})
    files = paths.model("standin")
    files.folder.mkdir(parents=True)
    tiles.to_parquet(files.split)
    write_json(paths.latest_model, {"folder": str(files.folder), "mlflow_run_id": "standin"})
    return tiles


def _failure(result) -> str:
    return next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE").step_failure_data.error.message


def test_nucleus_segmenter_trains_on_the_training_tiles_registers_and_reports(project, bundles):
    import mlflow

    from xenium_assets.segmentation.learned import LearnedSegmenter
    from xenium_assets.segmentation.metrics import match

    paths = ProjectPaths(project)
    SampleRegistry(paths.samples_dir).register(bundles("3"), "s")
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions(SAMPLES, ["s"])
    resources = _resources(project)

    missing = materialize(
        [nucleus_segmenter], instance=instance, resources=resources, run_config=QUIET, raise_on_error=False
    )
    assert "no trained model: materialize trained_model first" in _failure(missing)

    images = materialize([raw_bundle, dapi_zarr], partition_key="s", instance=instance, resources=resources)
    assert images.success
    tiles = _stand_in_split(paths, "s")
    config = {**QUIET, "ops": {"nucleus_segmenter": {"config": TINY}}}
    result = materialize([nucleus_segmenter], instance=instance, resources=resources, run_config=config)
    assert result.success
    meta = instance.get_latest_materialization_event(AssetKey("nucleus_segmenter")).asset_materialization.metadata
    for key in ("path", "mlflow_run", "mlflow_run_id", "registered_model", "seconds", "accelerator", "steps"):
        assert key in meta, key
    for split in ("training", "validation", "test"):
        assert meta[f"{split}_tiles"].value > 0 and 0 < meta[f"{split}_windows"].value <= TINY["max_windows"]
    for name in ("learned", "classical"):
        for measure in ("f1", "precision", "recall", "mean_iou"):
            assert isinstance(meta[f"test_{measure}_{name}"].value, float), (measure, name)
    assert meta["test_f1_classical"].value > 0.5  # the classical segmenter, untrained, on clean synthetic DAPI
    assert meta["steps"].value == TINY["steps"]

    # Registered in the project's MLflow store, and found again by name (the latest) and by version.
    run_id = meta["mlflow_run_id"].value
    uri = tracking_uri(project)
    version, found_run = resolve(uri, SEGMENTER_MODEL, fix=FIX)
    assert meta["registered_model"].value == f"{SEGMENTER_MODEL} v{version}" and found_run == run_id
    assert resolve(uri, *parse_model(f"{SEGMENTER_MODEL}/{version}")) == (version, run_id)
    with pytest.raises(ModelNotFound) as unknown:
        resolve(uri, SEGMENTER_MODEL, "99", fix=FIX)
    message = str(unknown.value)
    assert "\n" not in message and SEGMENTER_MODEL in message and "no version 99" in message
    assert f"it has {version}" in message and FIX in message
    client = mlflow.tracking.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"  # ended with the Dagster run by dagster-mlflow's hook
    assert (
        run.data.params["segmenter_steps"] == str(TINY["steps"]) and "segmenter_test_f1_classical" in run.data.metrics
    )
    assert {a.path for a in client.list_artifacts(run_id, "segmenter")} >= {
        f"segmenter/{p.name}" for p in (paths.segmenter(run_id).card, paths.segmenter(run_id).checkpoint)
    }

    # Its files: the card names the tiles of each split (the trained model's), and the test figures.
    files = paths.segmenter(run_id)
    assert str(files.folder) == meta["path"].value and paths.read_latest_segmenter()["mlflow_run_id"] == run_id
    card = files.read_card()
    for split, name in (("train", "training"), ("val", "validation"), ("test", "test")):
        used = set(card["tiles"][name]["s"])
        assert used and used <= set(tiles.loc[tiles["split"] == split, "tile"])
    assert not set(card["tiles"]["training"]["s"]) & set(card["tiles"]["test"]["s"])
    assert 15 < card["diameter_px"]["s"] < 40 and card["nucleus_diameter_um"] > 3
    assert card["test"]["classical"]["f1"] == pytest.approx(meta["test_f1_classical"].value)
    per_window = pd.read_csv(files.per_image)
    assert len(per_window) == meta["test_windows"].value and set(per_window["tile"]) == set(card["tiles"]["test"]["s"])

    # The checkpoint loads and segments a window of the slide.
    from xenium_assets.segmentation.bundle_nuclei import read_bundle_nuclei

    segmenter = LearnedSegmenter.load(files.checkpoint)
    window = read_bundle_nuclei(bundles("3")).window(Window(1024, 1024, 256, 256))
    found = segmenter.segment(window.image, window.diameter_px)
    assert found.shape == window.image.shape and found.dtype == np.int32
    assert 0 <= match(window.labels, found).f1 <= 1

    logs = [e.message for e in instance.all_logs(result.run_id) if e.message]
    assert any(m.startswith("train segmenter: ") for m in logs)  # progress in the run log
    assert any(m.startswith("evaluate segmenters: ") for m in logs)
    instance.dispose()


def test_tile_windows_cover_a_resampled_bundle_in_bounded_windows():
    """A bundle at twice the target pixel size: its tiles are the target grid's, halved, and cover it once."""
    grid = TileGrid(shape=(3000, 2000), pixel_size_um=0.2125, source_shape=(1500, 1000), source_pixel_size_um=0.425)
    assert grid.window("r0c0") == Window(0, 0, 128, 128)  # 256 x 256 target px
    tiles = pd.DataFrame({"sample": "s", "tile": list(TILE_KEYS)})
    windows = tile_windows({"s": grid}, tiles, max_px=100)
    covered = np.zeros((1500, 1000), dtype=np.int32)
    for w in windows:
        assert w.window.h <= 100 and w.window.w <= 100
        covered[w.window.slices] += 1
    assert (covered == 1).all()
    chosen = pick(windows, 10, seed=0)
    assert len(chosen) == 10 and chosen == pick(windows, 10, seed=0) and set(chosen) <= set(windows)
    assert [windows.index(w) for w in chosen] == sorted(windows.index(w) for w in chosen)
    assert pick(windows, None, seed=0) == windows


def test_registered_models_resolve_by_name_and_version(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    with pytest.raises(ModelNotFound, match="no MLflow store at .*: materialize nucleus_segmenter"):
        resolve(uri, SEGMENTER_MODEL, fix=FIX)
    assert not (tmp_path / "store").exists()  # looking did not create a store
    (tmp_path / "store").mkdir()
    client = MlflowClient(uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    runs = [client.create_run(experiment).info.run_id for _ in range(2)]
    with pytest.raises(ModelNotFound) as none:
        resolve(uri, SEGMENTER_MODEL, fix=FIX)
    assert str(none.value) == f"registered model {SEGMENTER_MODEL!r} has no version in {uri}: {FIX}"
    client.create_registered_model(SEGMENTER_MODEL)
    with pytest.raises(ModelNotFound, match="has no version in"):
        resolve(uri, SEGMENTER_MODEL, fix=FIX)  # registered, but never a version
    for run_id in runs:
        client.create_model_version(SEGMENTER_MODEL, f"runs:/{run_id}/segmenter", run_id=run_id)
    assert resolve(uri, SEGMENTER_MODEL) == ("2", runs[1])  # the latest
    assert resolve(uri, SEGMENTER_MODEL, 1) == resolve(uri, SEGMENTER_MODEL, "v1") == ("1", runs[0])
    version, run_id = resolve(uri, *parse_model(f"models:/{SEGMENTER_MODEL}/1"))
    assert (version, run_id) == ("1", runs[0])
    with pytest.raises(ModelNotFound) as missing:
        resolve(uri, SEGMENTER_MODEL, "3", fix=FIX)
    message = str(missing.value)
    assert "\n" not in message and isinstance(missing.value, ValueError)
    assert f"{SEGMENTER_MODEL!r} has no version 3 (it has 1, 2)" in message and message.endswith(FIX)
    with pytest.raises(ModelNotFound, match="'xenium-dapi-classifier' has no version in"):
        resolve(uri, "xenium-dapi-classifier", fix="materialize trained_model")


def test_model_names_parse_with_and_without_a_version():
    assert parse_model("xenium-nucleus-segmenter") == ("xenium-nucleus-segmenter", None)
    assert parse_model("xenium-nucleus-segmenter/latest") == ("xenium-nucleus-segmenter", None)
    assert parse_model("xenium-nucleus-segmenter/3") == ("xenium-nucleus-segmenter", "3")
    assert parse_model(" xenium-dapi-classifier/v12 ") == ("xenium-dapi-classifier", "12")
    assert parse_model("models:/xenium-dapi-classifier/2") == ("xenium-dapi-classifier", "2")
    for bad in ("", "/3", "xenium-dapi-classifier/three"):
        with pytest.raises(ModelNotFound):
            parse_model(bad)
