"""Prediction on DAPI-only images (prediction/): nuclei segmented, patches cut as training cut them, classes
predicted, written as GeoParquet, a label pyramid and SpatialData; models that cannot run on DAPI alone refused."""

from __future__ import annotations

import json
import shutil

import geopandas as gpd
import numpy as np
import pytest
import shapely
import tifffile
import webdataset as wds
import zarr
from click.testing import CliRunner

from xenium_assets.images.source import open_image
from xenium_assets.layout import PredictionFiles
from xenium_assets.parallel import thread_runner
from xenium_assets.patches.dapi_store import ChunkFiles
from xenium_assets.patches.geometry import read_tile_polygons
from xenium_assets.patches.grid import PatchSpec
from xenium_assets.patches.masks import nucleus, ring
from xenium_assets.prediction.classifier import DeployedClassifier, ModelInputError
from xenium_assets.prediction.options import PredictOptions
from xenium_assets.prediction.run import predict_image
from xenium_assets.prediction.tiles import SegmenterChoice, cut_patches
from xenium_assets.raster import Window
from xenium_assets.segmentation.bundle_nuclei import read_bundle_nuclei
from xenium_assets.segmentation.metrics import match
from xenium_assets.training.run import train_model
from xenium_assets.training.train import TrainConfig
from xenium_assets_tests.conftest import assert_leaves_unloaded, build_shards, truth_keys

SLIDE = dict(n_cells=1500, width=2048, height=2048)
CLASSICAL = SegmenterChoice("classical", "classical", 7.0)
TRAINING_SLIDES = (("a", 41), ("b", 44))


@pytest.fixture(scope="module")
def model(bundles, tmp_path_factory):
    """A small classifier on the deployable input (the default), trained on one synthetic slide."""
    root = tmp_path_factory.mktemp("prediction")
    slides = {name: bundles("3", seed=seed, **SLIDE) for name, seed in TRAINING_SLIDES}
    shards = {name: build_shards(bundle, root / name, name) for name, bundle in slides.items()}
    fast = TrainConfig(max_epochs=4, patience=4)
    return train_model(shards, truth_keys(slides), "truth-1", root / "model", train=fast).folder


@pytest.fixture(scope="module")
def predicted(model, bundles, tmp_path_factory):
    """Another slide's DAPI alone, as a plain TIFF with its pixel size given, predicted in four tiles."""
    root = tmp_path_factory.mktemp("predicted")
    bundle = bundles("3", seed=42, **SLIDE)
    nuclei = read_bundle_nuclei(bundle)
    whole = nuclei.window(Window(0, 0, *nuclei.shape))
    tiff = root / "dapi.tif"
    tifffile.imwrite(tiff, whole.image)
    source = open_image(tiff, pixel_size_um=0.2125)
    result = predict_image(
        source, root / "out", model, "test/1", CLASSICAL, thread_runner(2), PredictOptions(tile_px=1024)
    )
    return result, PredictionFiles(root / "out"), whole


def test_nuclei_table_is_geoparquet_with_the_contracts_columns(predicted, model):
    result, files, whole = predicted
    nuclei = gpd.read_parquet(files.nuclei)
    classes = DeployedClassifier.load(model).classes
    assert set(nuclei.columns) == {
        "nucleus_id",
        "centroid_x_um",
        "centroid_y_um",
        "area_um2",
        "predicted_class",
        *[f"prob_{c}" for c in classes],
        "confidence",
        "pixel_size_um",
        "geometry",
        "model_version",
        "segmenter_version",
    }
    assert len(nuclei) == result.nuclei > 1000 and nuclei["nucleus_id"].is_unique
    probs = nuclei[[f"prob_{c}" for c in classes]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert (nuclei["confidence"] == probs.max(axis=1)).all()
    assert (nuclei["model_version"] == "test/1").all() and (nuclei["segmenter_version"] == "classical").all()
    assert (nuclei["pixel_size_um"] == 0.2125).all()
    # µm from the image's top-left corner: every nucleus inside the 2048 px image, centroids inside their polygons.
    side = 2048 * 0.2125
    assert nuclei["centroid_x_um"].between(0, side).all() and nuclei["centroid_y_um"].between(0, side).all()
    np.testing.assert_allclose(nuclei["area_um2"], nuclei.geometry.area, rtol=1e-6)
    assert sum(result.per_class.values()) == len(nuclei)
    summary = files.read_summary()
    assert summary["nuclei"] == len(nuclei) and summary["nuclei_per_second"] > 0


def test_nuclei_match_the_slides_own_nuclei_across_tile_borders(predicted):
    """Segmented in four tiles, each nucleus once: against the Xenium nuclei of the slide, object F1 at IoU 0.5
    (the classical segmenter scores 0.99 on a synthetic window; tiles must not cost much of it)."""
    _, files, whole = predicted
    labels = np.asarray(zarr.open_array(str(files.labels / "0"), mode="r")[...])
    matching = match(whole.labels, labels.astype(np.int32))
    assert matching.f1 > 0.9, matching


def test_label_pyramid_is_the_nuclei_burnt_with_their_ids(predicted):
    _, files, _ = predicted
    nuclei = gpd.read_parquet(files.nuclei)
    group = zarr.open_group(str(files.labels), mode="r")
    datasets = group.attrs["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["0", "1"]
    level0 = np.asarray(group["0"][...])
    assert group["1"].shape == (1024, 1024)
    inside = shapely.contains_xy(
        nuclei.geometry.values, nuclei["centroid_x_um"].to_numpy(), nuclei["centroid_y_um"].to_numpy()
    )
    rows = (nuclei["centroid_y_um"].to_numpy() / 0.2125).astype(int)
    cols = (nuclei["centroid_x_um"].to_numpy() / 0.2125).astype(int)
    hit = level0[rows, cols] == nuclei["nucleus_id"].to_numpy()
    assert hit[inside].mean() > 0.97
    assert set(np.unique(level0)) - {0} <= set(nuclei["nucleus_id"])


def test_spatialdata_opens_with_image_labels_shapes_and_table(predicted):
    import spatialdata

    result, files, _ = predicted
    sdata = spatialdata.read_zarr(files.spatialdata)
    assert set(sdata.images) == {"dapi"} and set(sdata.labels) == {"nucleus_labels"}
    assert len(sdata.shapes["nuclei"]) == result.nuclei == sdata.tables["table"].n_obs
    assert "predicted_class" in sdata.tables["table"].obs
    assert files.overview.read_bytes()[:4] == b"\x89PNG"


def test_deployed_classifier_is_the_trained_network_without_lightning(model):
    """Prediction loads the bare backbone from the checkpoint: the trained module's logits, and no Lightning (nor
    WebDataset) in a prediction worker."""
    import torch

    from xenium_assets.layout import ModelFiles
    from xenium_assets.training.model import CellClassifier

    deployed = DeployedClassifier.load(model)
    trained = CellClassifier.load_from_checkpoint(ModelFiles(model).checkpoint, map_location="cpu").eval()
    x = torch.rand(8, 3, deployed.input_px, deployed.input_px, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(deployed.module(x), trained(x))
    assert_leaves_unloaded(
        ("numpy as np", "xenium_assets.prediction.run", "xenium_assets.prediction.tiles as tiles"),
        ("lightning", "pytorch_lightning", "torchmetrics", "webdataset"),
        then=f"c = tiles._classifier({str(model)!r}); "
        "p = c.probabilities(np.zeros((4, 94, 94), np.uint16), np.ones((4, 94, 94), np.uint8), 0.0, 1.0); "
        "assert p.shape == (4, len(c.classes))",
    )


def test_inference_cuts_the_patches_training_cut(extracted):
    """The same nuclei give the same patches: with a slide's Xenium nuclei as the 'segmentation', the nucleus and
    ring bits cut at inference equal the training shards' for every single-nucleus cell."""
    _, root, _, store, tasks, _ = extracted
    region = Window(0, 0, *store.shape).pad(200)
    pixels = ChunkFiles.open(store.path).read(region)
    compared = 0
    for task in [t for t in tasks if len(t.cells)]:
        compared += _compare_tile(root, task.tile, pixels, region)
    assert compared > 100


def _compare_tile(root, tile, pixels, region) -> int:
    ids, kinds, polys = read_tile_polygons(root / "geometry", tile)
    nuclei = kinds == "nucleus"
    ids, polys = ids[nuclei], polys[nuclei]
    names, counts = np.unique(ids, return_counts=True)
    single = names[counts == 1]  # every nucleus stops its neighbours' rings; single-nucleus cells are compared
    shards = {
        s["json"]["cell_id"]: s["mask.npy"]
        for s in wds.WebDataset(
            sorted(str(p) for p in (root / "shards" / tile).glob("shard-*.tar")), shardshuffle=False
        ).decode()
    }
    owned = np.isin(ids, list(shards)) & np.isin(ids, single)
    compared = 0
    for at, _, masks in cut_patches(pixels, region, polys, ids.astype(object), owned, PatchSpec()):
        for cell, mask in zip(ids[owned][at], masks, strict=True):
            expected = shards[cell]
            np.testing.assert_array_equal(nucleus(mask), nucleus(expected))
            np.testing.assert_array_equal(ring(mask), ring(expected))
            compared += 1
    return compared


def test_a_model_that_reads_cell_boundaries_is_refused(model, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    card = json.loads((copy / "model.json").read_text())
    card["data"]["representation"] = "dapi_masks"
    (copy / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelInputError) as error:
        DeployedClassifier.load(copy)
    message = str(error.value)
    assert "\n" not in message and "dapi_masks" in message and "dapi_nucleus_ring" in message


def test_a_blank_image_gives_an_empty_result_with_a_note(model, tmp_path):
    tiff = tmp_path / "blank.tif"
    tifffile.imwrite(tiff, np.full((1024, 1024), 300, dtype=np.uint16))
    result = predict_image(
        open_image(tiff, pixel_size_um=0.2125), tmp_path / "out", model, "test/1", CLASSICAL, thread_runner(1)
    )
    assert result.nuclei == 0 and any("blank" in n for n in result.notes)
    assert len(gpd.read_parquet(PredictionFiles(tmp_path / "out").nuclei)) == 0


def test_predict_command_names_a_missing_model_version_in_one_line(model, tmp_path, monkeypatch):
    from xenium_assets.cli import main

    monkeypatch.setenv("XENIUM_ASSETS_DATA", str(tmp_path / "data"))
    tiff = tmp_path / "dapi.tif"
    tifffile.imwrite(tiff, np.zeros((64, 64), dtype=np.uint16))
    result = CliRunner().invoke(main, ["predict", str(tiff), str(tmp_path / "out"), "--pixel-size", "0.2125"])
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line and "xenium-dapi-classifier" in line and "trained_model" in line
    assert not (tmp_path / "out").exists()


def test_added_image_is_predicted_by_the_asset_with_its_metadata(project, model, bundles, tmp_path):
    """add-image opens and records the image and adds its partition; cell_predictions predicts it on a real instance
    (dask, the project's folders) and reports counts, classes, the picture and timings; a refused image says why."""
    from dagster import AssetKey, DagsterInstance, materialize

    from xenium_assets.cli import main
    from xenium_assets.defs.cell_predictions import cell_predictions
    from xenium_assets.defs.compute import DaskResource
    from xenium_assets.defs.partitions import IMAGES
    from xenium_assets.defs.resources import ProjectResource

    tiff = tmp_path / "Slide 7.tif"
    tifffile.imwrite(tiff, read_bundle_nuclei(bundles("3", seed=43, **SLIDE)).window(Window(0, 0, 1024, 1024)).image)
    refused = CliRunner().invoke(main, ["add-image", str(tiff)])
    assert refused.exit_code == 2 and "pixel size" in refused.output and "\n" not in refused.output.strip()
    added = CliRunner().invoke(main, ["add-image", str(tiff), "--pixel-size", "0.2125"])
    assert added.exit_code == 0 and "added image 'Slide_7'" in added.output, added.output
    again = CliRunner().invoke(main, ["add-image", str(tiff), "--pixel-size", "0.2125"])
    assert "nothing to do" in again.output
    instance = DagsterInstance.get()
    assert instance.get_dynamic_partitions(IMAGES) == ["Slide_7"]
    config = {"ops": {"cell_predictions": {"config": {"model": str(model), "segmenter": "classical", "tile_px": 1024}}}}
    resources = {"project": ProjectResource(data_dir=str(project)), "dask": DaskResource(n_workers=1)}
    result = materialize(
        [cell_predictions], partition_key="Slide_7", instance=instance, resources=resources, run_config=config
    )
    assert result.success
    meta = instance.get_latest_materialization_event(AssetKey("cell_predictions")).asset_materialization.metadata
    nuclei = gpd.read_parquet(PredictionFiles(project / "predictions" / "Slide_7").nuclei)
    assert meta["nuclei"].value == len(nuclei) > 200
    assert meta["path"].value == str(project / "predictions" / "Slide_7")
    assert meta["segmenter_version"].value == "classical" and meta["model_version"].value == model.name
    assert "data:image/png;base64," in meta["overview"].value and meta["nuclei_per_second"].value > 0
    for name in ("seconds", "segmentation_seconds", "classification_seconds"):
        assert meta[name].value >= 0
    logs = [e.message for e in instance.all_logs(result.run_id) if e.message]
    assert any("segment and classify" in m for m in logs)


def test_image_landing_sensor_adds_complete_images_once(project, tmp_path):
    from dagster import DagsterInstance, build_sensor_context

    from xenium_assets.defs.resources import ProjectResource
    from xenium_assets.defs.sensors import image_landing_sensor

    landing = project / "landing" / "images"
    landing.mkdir(parents=True)
    tifffile.imwrite(landing / "unsized.tif", np.zeros((256, 256), dtype=np.uint16))
    instance = DagsterInstance.get()
    resource = ProjectResource(data_dir=str(project))

    def looks(cursor, n=2):  # a file is complete when its size is unchanged between two looks
        requests, skips = [], []
        for _ in range(n):
            context = build_sensor_context(instance=instance, cursor=cursor, resources={"project": resource})
            result = image_landing_sensor(context)
            cursor = result.cursor
            requests += result.run_requests or []
            skips.append(result.skip_reason.skip_message if result.skip_reason else "")
        return cursor, requests, skips

    cursor, requests, skips = looks(None)
    assert not requests and any("unsized.tif" in s and "pixel size" in s for s in skips), skips
    tifffile.imwrite(
        landing / "new.tif",
        np.zeros((256, 256), dtype=np.uint16),
        resolution=(1 / 0.2125, 1 / 0.2125),
        metadata={"unit": "um"},
        imagej=True,
    )
    cursor, requests, _ = looks(cursor)
    assert [r.partition_key for r in requests] == ["new"]
    _, again, _ = looks(cursor)
    assert not again  # each file's content once


def test_view_shows_an_images_nuclei_in_their_predicted_classes(screen, predicted):
    """The viewer of a prediction: the DAPI pyramid, nucleus outlines, and each nucleus in its predicted class's
    colour, lazily from the label pyramid; the legend's counts are the table's."""
    from xenium_assets.viewer.app import DAPI, NUCLEI, PREDICTED
    from xenium_assets.viewer.predictions import build_prediction_viewer

    result, files, _ = predicted
    viewer = build_prediction_viewer(files, "slide", show=False)
    try:
        assert [layer.name for layer in viewer.layers] == [DAPI, NUCLEI, PREDICTED]
        layer = viewer.layers[PREDICTED]
        counts = {layer.metadata["classes"][code]: n for code, n in layer.metadata["counts"].items()}
        assert counts == result.per_class
        nuclei = gpd.read_parquet(files.nuclei)
        level0 = np.asarray(layer.data[0][:512, :512])
        ids = np.asarray(zarr.open_array(str(files.labels / "0"), mode="r")[:512, :512])
        codes = dict(zip(nuclei["nucleus_id"], nuclei["predicted_class"].cat.codes + 1, strict=True))
        some = np.flatnonzero(ids.ravel())[::97]
        assert len(some) > 10
        assert all(level0.ravel()[i] == codes[ids.ravel()[i]] for i in some)
    finally:
        viewer.close()


def test_view_command_opens_the_output_folder_of_predict(screen, predicted, tmp_path):
    """`xenium-assets view OUT` shows a prediction made from a shell, without a Dagster project."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    _, files, _ = predicted
    shot = tmp_path / "shot.png"
    env = {**os.environ, "XENIUM_ASSETS_DATA": str(tmp_path / "no_project"), "DISPLAY": screen}
    cli = Path(sys.executable).parent / "xenium-assets"
    done = subprocess.run(
        [str(cli), "view", str(files.folder), "--screenshot", str(shot)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert (pixels.std(axis=2) > 30).mean() > 0.01  # nuclei drawn in their classes' colours


def test_end_to_end_scores_a_held_out_slide_against_its_own_nuclei_and_labels(predicted, model, bundles):
    """The slide predicted from its DAPI alone, against its Xenium nuclei and true classes: segmentation F1 from
    one-to-one IoU > 0.5 matches, macro-F1 on matched nuclei with an interval from resampled tiles; and a shuffle of
    the predicted classes over the nuclei scores lower (the figure measures the classes, not the matching)."""
    from xenium_assets.bundle.validate import inspect_bundle
    from xenium_assets.prediction.evaluate import end_to_end, xenium_nuclei
    from xenium_assets.synth.generate import truth_labels

    result, files, _ = predicted
    bundle = bundles("3", seed=42, **SLIDE)
    ids, polygons = xenium_nuclei(inspect_bundle(bundle))
    truth = truth_labels(bundle, "held_out").set_index("cell_id")["label"]
    nuclei = gpd.read_parquet(files.nuclei)
    classes = DeployedClassifier.load(model).classes
    scored = end_to_end(nuclei, ids, polygons, truth, classes, (2048, 2048), 0.2125)
    assert scored.segmentation_f1 > 0.9 and scored.n_matched > 1000 and 0.5 < scored.mean_matched_iou <= 1
    assert scored.n_labelled_matched == scored.n_matched and scored.n_blocks > 30
    assert scored.macro_f1_ci_low <= scored.macro_f1 <= scored.macro_f1_ci_high
    shuffled = nuclei.assign(predicted_class=nuclei["predicted_class"].sample(frac=1, random_state=0).to_numpy())
    chance = end_to_end(shuffled, ids, polygons, truth, classes, (2048, 2048), 0.2125)
    assert chance.macro_f1 < scored.macro_f1 - 0.1, (chance.macro_f1, scored.macro_f1)


def test_report_shows_what_the_xenium_boundary_adds_over_the_deployable_input(model, bundles, tmp_path):
    """A model on the deployable input gets a comparison model trained on dapi_masks, on the same cells, and the
    paired difference with its block-bootstrap interval."""
    from xenium_assets.training.run import ReportOptions, evaluate_model

    slides = {name: bundles("3", seed=seed, **SLIDE) for name, seed in TRAINING_SLIDES}
    shards = {name: model.parent / name / "shards" for name in slides}
    options = ReportOptions(loso_max_folds=0, cell_only_model=False, extra_max_epochs=1, morphology_train_cells=300)
    ev, _ = evaluate_model(model, shards, truth_keys(slides), "truth-1", tmp_path, options=options)
    assert {"cnn", "cnn_boundary"} <= set(ev.models)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (
        metrics["boundary_minus_cnn_ci_low"] <= metrics["boundary_minus_cnn"] <= metrics["boundary_minus_cnn_ci_high"]
    )
    assert "CNN with the Xenium cell boundary" in (tmp_path / "report.md").read_text()
