"""Visual quality control: lazily burnt label levels, the static overview, and the napari viewer (headless).

The napari tests run on a private Xvfb (viewer.display) and skip, saying what to install, where Qt
cannot open a window or napari (the ``viewer`` extra) is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xenium_assets.bundle.manifest import write_manifest
from xenium_assets.bundle.validate import inspect_bundle
from xenium_assets.labels.overview import EXCLUDED, NOT_LABELLED, legend_entries, overview, overview_png
from xenium_assets.labels.store import mark_latest, write_labels
from xenium_assets.layout import ProjectPaths
from xenium_assets.plots import scale_bar_length
from xenium_assets.raster import Window
from xenium_assets.slide import LabelLevel
from xenium_assets.synth import truth_labels
from xenium_assets.viewer.data import ViewerError, load_view_data, read_transcripts
from xenium_assets_tests.conftest import assert_leaves_unloaded, build_shards

SAMPLE = "slide_a"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def viewed(bundles, tmp_path_factory) -> ProjectPaths:
    """A project whose sample has every input the viewer shows: manifest, labels, shards, test predictions."""
    bundle = bundles("3")
    paths = ProjectPaths(tmp_path_factory.mktemp("viewer") / "data")
    write_manifest(inspect_bundle(bundle), SAMPLE, paths.asset_dir(SAMPLE, "raw_bundle"))
    labels = truth_labels(bundle, SAMPLE)
    labels.loc[labels.index[::10], "excluded_reason"] = "low_confidence"
    write_labels(paths, labels)
    mark_latest(paths, labels["label_version"].iloc[0])
    shards = build_shards(bundle, paths.data_dir / "work", SAMPLE)
    shutil.move(shards, paths.asset_dir(SAMPLE, "patch_shards"))
    # Predictions of half the cells, every third one wrong, as the evaluation report writes them.
    usable = labels[labels["excluded_reason"] == ""].iloc[::2]
    classes = sorted(usable["label"].unique())
    wrong = np.arange(len(usable)) % 3 == 0
    shifted = usable["label"].map(lambda c: classes[(classes.index(c) + 1) % len(classes)])
    model = paths.models_dir / "run-1"
    model.mkdir(parents=True)
    paths.latest_model.write_text(json.dumps({"folder": str(model)}))
    paths.report_dir(model.name).mkdir(parents=True)
    pd.DataFrame(
        {
            "key": SAMPLE + "/" + usable["cell_id"],
            "sample": SAMPLE,
            "label": usable["label"],
            "predicted": np.where(wrong, shifted, usable["label"]),
        }
    ).to_parquet(paths.report_dir(model.name) / "predictions.parquet")
    return paths


def _centre_cells(geometry, n: int = 40) -> pd.DataFrame:
    """Cells whose centroid lies inside their own polygon, away from the slide's edges."""
    import shapely

    polys = dict(zip(geometry.cells.labels.tolist(), geometry.cells.polygons, strict=True))
    rows = []
    for ordinal in range(1, len(geometry.ids) + 1, max(1, len(geometry.ids) // (3 * n))):
        r, c = geometry.centroid_px[ordinal - 1]
        poly = polys.get(ordinal)
        if poly is not None and shapely.contains_xy(poly.buffer(-3), c, r):
            rows.append((geometry.ids[ordinal - 1], ordinal, r, c))
    return pd.DataFrame(rows[:n], columns=["cell_id", "ordinal", "row", "col"])


def test_label_levels_match_the_polygons_at_every_zoom(viewed):
    data = load_view_data(viewed, SAMPLE)
    geometry, full = data.geometry, tuple(data.manifest.dapi.levels[0])
    level0 = LabelLevel(geometry.cells, full, 1)
    assert level0.shape == full
    win = Window(200, 300, 128, 96)
    np.testing.assert_array_equal(level0[200:328, 300:396], geometry.cells.window(win))
    cells = _centre_cells(geometry)
    assert len(cells) >= 20
    for _, cell in cells.iterrows():
        assert level0[int(cell.row), int(cell.col)] == cell.ordinal
    coarse = LabelLevel(geometry.cells, full, 4)
    assert coarse.shape == (-(-full[0] // 4), -(-full[1] // 4))
    whole = np.asarray(coarse)
    hits = [whole[int(r / 4), int(c / 4)] == o for o, r, c in zip(cells.ordinal, cells.row, cells.col, strict=True)]
    assert np.mean(hits) > 0.9
    assert whole.max() <= len(geometry.ids)
    # Every zoom (window burns below 1/4, strided views of one whole-slide burn above) labels a pixel by the
    # polygon under its centre at full resolution.
    reference = geometry.cells.window(Window(0, 0, *full))
    for factor in (2, 4, 8, 16):
        level = np.asarray(LabelLevel(geometry.cells, full, factor))
        rows = np.minimum(((np.arange(level.shape[0]) + 0.5) * factor).astype(int), full[0] - 1)
        cols = np.minimum(((np.arange(level.shape[1]) + 0.5) * factor).astype(int), full[1] - 1)
        assert (level == reference[np.ix_(rows, cols)]).mean() > 0.9, factor
    # A lookup table turns ordinals into class codes without another rasterisation.
    codes = LabelLevel(geometry.cells, full, 4, data.label_values())[:, :]
    np.testing.assert_array_equal(codes, data.label_values()[whole])


def test_overview_colours_each_cell_by_its_label(viewed):
    data = load_view_data(viewed, SAMPLE)
    view = overview(data.manifest, data.geometry, data.labels, target_px=700)
    assert view.factor == 2 and view.rgb.shape[:2] == view.codes.shape
    assert view.names[-1] == EXCLUDED
    truth = data.labels.set_index("cell_id")
    cells = _centre_cells(data.geometry)
    right = 0
    for _, cell in cells.iterrows():
        row = truth.loc[cell.cell_id]
        name = row["label"] if row["excluded_reason"] == "" else EXCLUDED
        code = view.codes[int(cell.row / view.factor), int(cell.col / view.factor)]
        right += view.names[code - 1] == name
    assert right / len(cells) > 0.9
    # Unlabelled background stays grey; labelled pixels carry colour.
    rgb = view.rgb
    assert np.allclose(rgb[view.codes == 0].std(axis=1), 0)
    assert rgb[view.codes > 0].std(axis=1).mean() > 0.05
    assert overview_png(data.manifest, data.geometry, data.labels)[:8] == PNG
    # The legend names every colour shown: each class, excluded cells, and cells without a label (bare DAPI).
    entries = legend_entries(view, len(data.geometry.ids))
    assert [text.split(" (")[0] for text, _ in entries[: len(view.names)]] == view.names
    unlabelled = len(data.geometry.ids) - len(data.labels)
    assert (entries[-1][0] == f"{NOT_LABELLED} ({unlabelled:,})") == (unlabelled > 0)
    assert sum(int(text.rsplit("(", 1)[1].rstrip(")").replace(",", "")) for text, _ in entries) == len(
        data.geometry.ids
    )


def test_scale_bars_have_round_lengths():
    assert [scale_bar_length(e) for e in (435.2, 1000, 9.9, 12_000)] == [50.0, 200.0, 1.0, 2000.0]


def test_missing_inputs_give_clear_errors(viewed, tmp_path):
    with pytest.raises(ViewerError, match="no raw_bundle.*materialize it first.*slide_a"):
        load_view_data(viewed, "nope")
    data = load_view_data(viewed, SAMPLE)
    with pytest.raises(ViewerError, match="NotAGene not in the panel"):
        load_view_data(viewed, SAMPLE, ["NotAGene"])
    gene = read_transcripts_names(data)[0]
    assert len(read_transcripts(data.manifest, [gene, gene])) == (read_transcripts_names(data) == gene).sum()
    # Without labels, shards or a model, the slide and its segmentation still show.
    bare = ProjectPaths(tmp_path / "data")
    shutil.copytree(viewed.asset_dir(SAMPLE, "raw_bundle"), bare.asset_dir(SAMPLE, "raw_bundle"))
    only = load_view_data(bare, SAMPLE)
    assert only.labels is None and only.predictions is None and only.patches is None


def test_transcripts_of_chosen_genes_are_streamed_in_pixels(viewed):
    data = load_view_data(viewed, SAMPLE)
    import pyarrow.parquet as pq

    table = pq.read_table(data.manifest.path("transcripts")).to_pandas()
    genes = list(pd.unique(table["feature_name"].astype(str)))[:2]
    spots = read_transcripts(data.manifest, genes)
    assert len(spots) == table["feature_name"].astype(str).isin(genes).sum()
    ps, ox = data.manifest.pixel_size_um, data.manifest.image_origin_um[0]
    xs = table.loc[table["feature_name"].astype(str).isin(genes), "x_location"]
    assert np.isclose(spots["col_px"].min(), (xs.min() - ox) / ps)


def test_core_never_imports_napari():
    assert_leaves_unloaded(
        ("xenium_assets.definitions", "xenium_assets.cli", "xenium_assets.viewer.data"),
        ("napari", "qtpy", "PyQt6", "vispy"),
    )


# ---- napari, headless ----


@pytest.fixture
def viewer(screen, viewed):
    from xenium_assets.viewer.app import build_viewer

    genes = [g for g in pd.unique(read_transcripts_names(load_view_data(viewed, SAMPLE)))[:2]]
    data = load_view_data(viewed, SAMPLE, genes)
    v = build_viewer(data)
    yield v, data, genes
    v.close()


def read_transcripts_names(data) -> np.ndarray:
    import pyarrow.parquet as pq

    return pq.read_table(data.manifest.path("transcripts"), columns=["feature_name"]).column(0).to_numpy().astype(str)


def test_viewer_layers_show_the_slide_cells_labels_and_predictions(viewer):
    from xenium_assets.viewer import app

    v, data, genes = viewer
    assert v.scale_bar.visible and v.layers[app.DAPI].units[0] == "micrometer"  # the bar reads the layers' µm
    names = [layer.name for layer in v.layers]
    assert names == [
        app.DAPI,
        app.NUCLEI,
        app.CELLS,
        app.LABEL,
        app.PREDICTED,
        app.CORRECT,
        app.TRANSCRIPTS,
        app.SELECTED,
    ]
    dapi = v.layers[app.DAPI]
    assert dapi.multiscale and len(dapi.data) == len(data.manifest.dapi.levels)
    assert [tuple(level.shape) for level in dapi.data] == [tuple(s) for s in data.manifest.dapi.levels]
    for name in (app.NUCLEI, app.CELLS, app.LABEL, app.PREDICTED, app.CORRECT):
        assert [level.shape for level in v.layers[name].data] == [tuple(s) for s in data.manifest.dapi.levels]
    ps = data.manifest.pixel_size_um
    cells = _centre_cells(data.geometry)
    truth = data.labels.set_index("cell_id")
    predicted = data.predictions.set_index("cell_id")
    label_layer, correct_layer = v.layers[app.LABEL], v.layers[app.CORRECT]
    correct_layer.visible = True  # hidden at first; napari slices (and reads values of) visible layers only
    checked = 0
    for _, cell in cells.iterrows():
        world = (cell.row * ps, cell.col * ps)
        value = label_layer.get_value(world, world=True)
        code = value[1] if isinstance(value, tuple) else value
        row = truth.loc[cell.cell_id]
        name = row["label"] if row["excluded_reason"] == "" else EXCLUDED
        assert label_layer.metadata["classes"][int(code)] == name
        np.testing.assert_allclose(label_layer.colormap.map(int(code))[:3], data.palette[name][:3], atol=1e-6)
        if cell.cell_id in predicted.index:
            ok = predicted.loc[cell.cell_id, "predicted"] == predicted.loc[cell.cell_id, "label"]
            value = correct_layer.get_value(world, world=True)
            assert (value[1] if isinstance(value, tuple) else value) == (1 if ok else 2)
            checked += 1
    assert checked >= 5
    spots = v.layers[app.TRANSCRIPTS]
    assert len(spots.data) == int(np.isin(read_transcripts_names(data), genes).sum())
    assert set(spots.features["gene"]) == set(genes)


def test_class_widget_shows_patches_and_jumps_to_the_clicked_cell(viewer):
    from xenium_assets.viewer import app

    v, data, _ = viewer
    widget = v.window.dock_widgets[app.WIDGET]
    assert widget.classes.count() == len(data.classes)
    name = data.patches["label"].value_counts().index[0]
    widget.show_class(name)
    assert len(widget.buttons) == widget.per_class == len(widget.shown)
    assert set(widget.shown["label"]) == {name}
    widget.buttons[0].click()
    row = widget.shown.iloc[0]
    ox, oy = data.manifest.image_origin_um
    np.testing.assert_allclose(v.scene.camera.center[-2:], (row["y_um"] - oy, row["x_um"] - ox), atol=1e-6)
    assert v.scene.camera.zoom == app.JUMP_ZOOM and v.layers[app.SELECTED].visible


def _swatch(picture: np.ndarray, colour) -> int:
    """Pixels of ``picture`` showing ``colour`` (RGBA in 0..1) unblended."""
    rgb = np.round(np.asarray(colour[:3]) * 255)
    return int((np.abs(picture[..., :3].astype(int) - rgb).max(axis=-1) <= 1).sum())


def test_screenshot_carries_a_legend_of_every_colour_shown(viewer, tmp_path):
    from PIL import Image

    from xenium_assets.labels.overview import NOT_LABELLED_COLOUR
    from xenium_assets.viewer import app

    v, data, genes = viewer
    shot = app.save_screenshot(v, tmp_path / "shot.png")
    canvas = v.screenshot(canvas_only=True, flash=False)[..., :3]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "shot.png").convert("RGB")), shot)
    # The canvas unchanged at the left (with napari's scale bar), the legend to its right.
    assert shot.shape[1] > canvas.shape[1] + 100 and shot.shape[0] >= canvas.shape[0]
    assert np.abs(shot[: canvas.shape[0], : canvas.shape[1]].astype(int) - canvas).mean() < 1
    legend = shot[:, canvas.shape[1] :]
    unlabelled = int((data.label_values()[1 : len(data.geometry.ids) + 1] == 0).sum())
    shown = [data.palette[name] for name in data.classes]
    shown += [app.OUTLINE_COLORS[app.NUCLEI], app.OUTLINE_COLORS[app.CELLS]]
    spots = v.layers[app.TRANSCRIPTS]
    shown += [spots.face_color[np.flatnonzero(spots.features["gene"] == gene)[0]] for gene in genes]
    shown += [NOT_LABELLED_COLOUR] if unlabelled else []
    assert all(_swatch(legend, colour) >= 64 for colour in shown)
    groups = {
        title.split(" (")[0]: [text.split(" (")[0] for text, _ in entries] for title, entries in app.legend_groups(v)
    }
    assert groups[app.LABEL] == data.classes + ([app.NOT_LABELLED] if unlabelled else [])
    # Hidden layers add nothing; shown, their colours join the legend.
    assert app.CORRECT not in groups and _swatch(legend, app.CORRECT_COLORS[2]) == 0
    v.layers[app.CORRECT].visible = True
    legend = app.save_screenshot(v, tmp_path / "shot.png")[:, canvas.shape[1] :]
    assert all(_swatch(legend, colour) >= 64 for colour in app.CORRECT_COLORS.values())
    titles = [title.split(" (")[0] for title, _ in app.legend_groups(v)]
    assert titles == [app.SEGMENTATION, app.LABEL, app.CORRECT, app.TRANSCRIPTS]


def test_view_command_saves_a_screenshot_and_exits(screen, viewed, tmp_path):
    from PIL import Image

    out = tmp_path / "shot.png"
    env = {**os.environ, "XENIUM_ASSETS_DATA": str(viewed.data_dir), "DISPLAY": screen}
    cli = Path(sys.executable).parent / "xenium-assets"
    done = subprocess.run(
        [str(cli), "view", SAMPLE, "--screenshot", str(out)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "first view in" in done.stdout
    shot = np.asarray(Image.open(out).convert("RGB"))
    assert min(shot.shape[:2]) > 200
    # The slide is drawn, not a black canvas: grey DAPI and coloured cells.
    assert shot.std() > 10
    assert (shot.std(axis=2) > 30).mean() > 0.01
    # With a legend of each class's colour.
    data = load_view_data(viewed, SAMPLE)
    assert all(_swatch(shot, data.palette[name]) >= 64 for name in data.classes)


def test_view_command_refuses_clearly(viewed, tmp_path):
    pytest.importorskip("napari", reason="napari is not installed: pip install -e '.[viewer]'")
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"} | {"XENIUM_ASSETS_DATA": str(viewed.data_dir)}
    cli = Path(sys.executable).parent / "xenium-assets"
    missing = subprocess.run(
        [str(cli), "view", "nope", "--screenshot", str(tmp_path / "x.png")], capture_output=True, text=True, env=env
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith("error: sample 'nope' has no raw_bundle")
    if sys.platform.startswith("linux"):
        headless = subprocess.run([str(cli), "view", SAMPLE], capture_output=True, text=True, env=env)
        assert headless.returncode == 2 and "--screenshot PNG" in headless.stderr
