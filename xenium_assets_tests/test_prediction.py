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
from xenium_assets.prediction.run import PredictOptions, predict_image
from xenium_assets.prediction.tiles import SegmenterChoice, cut_patches
from xenium_assets.raster import Window
from xenium_assets.segmentation.bundle_nuclei import read_bundle_nuclei
from xenium_assets.segmentation.metrics import match
from xenium_assets.training.run import train_model
from xenium_assets.training.train import TrainConfig
from xenium_assets_tests.conftest import build_shards, truth_keys

SLIDE = dict(n_cells=1500, width=2048, height=2048)
CLASSICAL = SegmenterChoice("classical", "classical", 7.0)


@pytest.fixture(scope="module")
def model(bundles, tmp_path_factory):
    """A small classifier on the deployable input (the default), trained on one synthetic slide."""
    root = tmp_path_factory.mktemp("prediction")
    bundle = bundles("3", seed=41, **SLIDE)
    shards = build_shards(bundle, root / "a", "a")
    trained = train_model(
        {"a": shards}, truth_keys({"a": bundle}), "truth-1", root / "model", train=TrainConfig(max_epochs=2, patience=2)
    )
    return trained.folder


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
