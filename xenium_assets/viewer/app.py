"""The napari viewer of one sample: DAPI pyramid, segmentation, labels, predictions, transcripts, patches.

Cells are labels layers burnt from the polygons per window and per pyramid level (slide.LabelLevel):
a shapes layer of 10^5 polygons hangs napari, and a full-resolution label image of a slide is
gigabytes. Every layer lives in full-resolution pixel coordinates scaled to µm, so napari's scale bar
and cursor read in µm.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import napari
import numpy as np
import pandas as pd
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtCore import QSize
from qtpy.QtGui import QColor, QIcon, QImage, QPixmap
from qtpy.QtWidgets import QGridLayout, QLabel, QListWidget, QListWidgetItem, QToolButton, QVBoxLayout, QWidget

from xenium_assets.labels.overview import NOT_LABELLED, NOT_LABELLED_COLOUR
from xenium_assets.patches.gallery import patch_rgb
from xenium_assets.patches.shards import read_patches
from xenium_assets.plots import LegendGroup, with_legend
from xenium_assets.slide import BurnCache, DapiPyramid, label_pyramid
from xenium_assets.viewer.data import ViewData

DAPI, NUCLEI, CELLS = "DAPI", "nuclei", "cells"
LABEL, PREDICTED, CORRECT = "expression label", "predicted label", "correct"
TRANSCRIPTS, SELECTED = "transcripts", "selected cell"
WIDGET = "classes and patches"
CORRECT_COLORS = {1: (0.2, 0.8, 0.2, 1.0), 2: (0.9, 0.1, 0.1, 1.0)}
OUTLINE_COLORS = {NUCLEI: (0.0, 1.0, 1.0, 1.0), CELLS: (1.0, 1.0, 0.0, 1.0)}
"""One colour per outline layer (as in the patch pictures: nucleus cyan, cell yellow), so a legend can name it."""
SEGMENTATION = "segmentation"
JUMP_ZOOM = 4.0
"""Screen pixels per µm after jumping to a cell: a 10 µm nucleus fills about 40 pixels."""
TRANSPARENT = (0.0, 0.0, 0.0, 0.0)


def _colormap(colors: dict[int, tuple], default: tuple = TRANSPARENT) -> DirectLabelColormap:
    return DirectLabelColormap(color_dict={None: default, 0: TRANSPARENT, **colors})


def _class_layer(
    viewer: napari.Viewer,
    data: ViewData,
    cache: BurnCache,
    name: str,
    values: np.ndarray,
    colors: dict[int, tuple],
    names: list[str],
    blank: str | None = None,
    **layer_options,
) -> napari.layers.Labels:
    """A labels layer showing each cell's class code (``values``: ordinal -> code) in its class colour; the
    metadata keeps each class's cell count, and ``blank`` names the bare-DAPI cells without a code."""
    layer = viewer.add_labels(
        label_pyramid(data.geometry.cells, data.manifest.dapi.levels, values, cache),
        multiscale=True,
        name=name,
        colormap=_colormap(colors),
        features=pd.DataFrame({"index": np.arange(1, len(names) + 1), "class": names}),
        **layer_options,
    )
    layer.metadata["classes"] = dict(enumerate(names, start=1))
    counts = np.bincount(np.asarray(values)[1 : len(data.geometry.ids) + 1], minlength=len(names) + 1)
    layer.metadata["counts"] = {code: int(counts[code]) for code in range(1, len(names) + 1)}
    if blank:
        layer.metadata["blank"] = (blank, int(counts[0]))
    return layer


def build_viewer(
    data: ViewData,
    viewer: napari.Viewer | None = None,
    show: bool = True,
    report: Callable[[str], None] = lambda _: None,
) -> napari.Viewer:
    """A viewer holding every layer the sample's assets allow, and the class patch widget."""
    viewer = viewer or napari.Viewer(title=f"xenium-assets: {data.sample}", show=show)
    manifest, geometry = data.manifest, data.geometry
    ps = manifest.pixel_size_um
    scale = {"scale": (ps, ps), "units": ("um", "um")}
    full = tuple(manifest.dapi.levels[0])
    n_levels = len(manifest.dapi.levels)

    pyramid = DapiPyramid(manifest)
    lo, hi = np.percentile(np.asarray(pyramid.levels[-1][...]), [1, 99.8])
    dapi = viewer.add_image(
        pyramid.levels, multiscale=True, name=DAPI, colormap="gray", contrast_limits=(float(lo), float(hi)), **scale
    )
    viewer.layers.events.removed.connect(lambda event: event.value is dapi and pyramid.close())
    report(f"DAPI pyramid: {n_levels} levels, {full[1]} x {full[0]} px at {ps:.4f} µm/px")

    cache = BurnCache()  # one burn per window serves the cell layer and every class layer
    cell_features = pd.DataFrame({"index": np.arange(1, len(geometry.ids) + 1), "cell_id": geometry.ids.to_numpy()})
    for name, raster in ((NUCLEI, geometry.nuclei), (CELLS, geometry.cells)):
        layer = viewer.add_labels(
            label_pyramid(raster, manifest.dapi.levels, cache=cache),
            multiscale=True,
            name=name,
            features=cell_features,
            colormap=_colormap({}, OUTLINE_COLORS[name]),
            **scale,
        )
        layer.contour = 1
    report(f"segmentation: {len(geometry.ids):,} cells, {len(geometry.nuclei.polygons):,} nucleus polygons")

    if data.labels is not None:
        names = data.classes
        colors = {i + 1: data.palette[n] for i, n in enumerate(names)}
        label_options = {"blank": NOT_LABELLED, "opacity": 0.5, **scale}
        _class_layer(viewer, data, cache, LABEL, data.label_values(), colors, names, **label_options)
        if data.predictions is not None:
            hidden = {"visible": False, **scale}
            _class_layer(viewer, data, cache, PREDICTED, data.predicted_values(), colors, names, opacity=0.5, **hidden)
            outcomes = ["correct", "incorrect"]
            _class_layer(viewer, data, cache, CORRECT, data.correct_values(), CORRECT_COLORS, outcomes, **hidden)
        predicted = ", predictions of the test tiles" if data.predictions is not None else ""
        report(f"labels: {len(names)} classes{predicted}")

    if data.transcripts is not None:
        spots = data.transcripts
        viewer.add_points(
            spots[["row_px", "col_px"]].to_numpy(),
            name=TRANSCRIPTS,
            features=spots[["gene"]],
            face_color="gene",
            border_width=0,
            size=6,
            canvas_size_limits=(2, 12),
            **scale,
        )
        report(f"transcripts: {len(spots):,} of {', '.join(spots['gene'].cat.categories)}")

    selected = viewer.add_points(
        np.empty((0, 2)), name=SELECTED, symbol="ring", size=60, face_color="magenta", border_width=0, **scale
    )
    selected.visible = False
    if data.patches is not None and data.labels is not None:
        widget = ClassPatches(viewer, data)
        viewer.window.add_dock_widget(widget, name=WIDGET, area="right")
    viewer.layers.selection.active = viewer.layers[DAPI]
    viewer.scale_bar.visible = True  # in the layers' units, µm (in screenshots too)
    viewer.reset_view()
    return viewer


def jump_to(viewer: napari.Viewer, data: ViewData, x_um: float, y_um: float) -> None:
    """Centre the view on a point of the slide (bundle µm), zoom in and ring it."""
    ox, oy = data.manifest.image_origin_um
    ps = data.manifest.pixel_size_um
    row, col = (y_um - oy) / ps, (x_um - ox) / ps
    viewer.scene.camera.center = (row * ps, col * ps)
    viewer.scene.camera.zoom = JUMP_ZOOM
    ring = viewer.layers[SELECTED]
    ring.data = np.array([[row, col]])
    ring.visible = True


def _icon(rgb: np.ndarray, size: int) -> QIcon:
    rgb = np.ascontiguousarray(rgb)
    image = QImage(rgb.data, rgb.shape[1], rgb.shape[0], 3 * rgb.shape[1], QImage.Format.Format_RGB888).copy()
    return QIcon(QPixmap.fromImage(image).scaled(size, size))


class ClassPatches(QWidget):
    """The classes with their patch counts; a grid of the chosen class's training patches (nucleus cyan, cell
    yellow); clicking a patch jumps to its cell on the slide."""

    def __init__(self, viewer: napari.Viewer, data: ViewData, per_class: int = 12, columns: int = 4) -> None:
        super().__init__()
        self.viewer, self.data, self.per_class, self.columns = viewer, data, per_class, columns
        self.shown = pd.DataFrame()
        self.buttons: list[QToolButton] = []
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Classes (training patches of this sample)"))
        self.classes = QListWidget()
        counts = data.patches["label"].value_counts()
        for name in data.classes:
            item = QListWidgetItem(f"{name} ({counts.get(name, 0):,})")
            item.setData(256, name)  # Qt.UserRole
            pix = QPixmap(12, 12)
            pix.fill(QColor.fromRgbF(*data.palette[name][:3]))
            item.setIcon(QIcon(pix))
            self.classes.addItem(item)
        self.classes.currentItemChanged.connect(lambda item, _: item and self.show_class(item.data(256)))
        layout.addWidget(self.classes)
        self.grid = QGridLayout()
        layout.addLayout(self.grid)
        layout.addStretch(1)

    def show_class(self, name: str) -> None:
        """Fill the grid with up to ``per_class`` patches of ``name`` (a fixed random pick across tiles)."""
        for button in self.buttons:
            self.grid.removeWidget(button)
            button.deleteLater()
        rows = self.data.patches[self.data.patches["label"] == name]
        self.shown = rows.sample(min(len(rows), self.per_class), random_state=0) if len(rows) else rows
        self.buttons = []
        for i, ((_, row), (dapi, mask)) in enumerate(zip(self.shown.iterrows(), read_patches(self.shown), strict=True)):
            button = QToolButton()
            button.setIcon(_icon(patch_rgb(dapi, mask), 72))
            button.setIconSize(QSize(72, 72))
            button.setToolTip(f"{row['cell_id']} (tile {Path(row['path']).parent.name})")
            button.clicked.connect(partial(jump_to, self.viewer, self.data, float(row["x_um"]), float(row["y_um"])))
            self.grid.addWidget(button, i // self.columns, i % self.columns)
            self.buttons.append(button)


def _rgba(colour) -> tuple:
    return tuple(float(c) for c in np.asarray(colour, dtype=float).ravel()[:4])


def legend_groups(viewer: napari.Viewer) -> list[LegendGroup]:
    """Every colour the visible layers draw, read from the layers themselves: each class layer's classes (with
    cell counts) and its bare-DAPI cells, the outline colour of each segmentation layer, and each points
    layer's colours by its first feature (a gene)."""
    groups: list[LegendGroup] = []
    outlines: list[tuple[str, tuple]] = []
    for layer in viewer.layers:
        if not layer.visible:
            continue
        if isinstance(layer, napari.layers.Labels) and "classes" in layer.metadata:
            counts = layer.metadata["counts"]
            entries = [
                (f"{name} ({counts[code]:,})", _rgba(layer.colormap.map(code)))
                for code, name in layer.metadata["classes"].items()
            ]
            text, count = layer.metadata.get("blank", ("", 0))
            if count:
                entries.append((f"{text} ({count:,})", NOT_LABELLED_COLOUR))
            title = layer.name if layer.opacity == 1 else f"{layer.name} ({layer.opacity:.0%} opacity)"
            groups.append((title, entries))
        elif isinstance(layer, napari.layers.Labels):
            kind = "outlines" if layer.contour else "filled"
            outlines.append((f"{layer.name} ({kind})", _rgba(layer.colormap.map(1))))
        elif isinstance(layer, napari.layers.Points) and len(layer.data):
            if len(layer.features.columns):
                key = layer.features.iloc[:, 0].astype(str).to_numpy()
                values, first, counts = np.unique(key, return_index=True, return_counts=True)
                colours = [_rgba(layer.face_color[i]) for i in first]
                entries = [(f"{v} ({n:,})", c) for v, n, c in zip(values, counts, colours, strict=True)]
                groups.append((layer.name, entries))
            else:
                groups.append((layer.name, [(f"{len(layer.data):,} marked", _rgba(layer.face_color[0]))]))
    return ([(SEGMENTATION, outlines)] if outlines else []) + groups


def save_screenshot(viewer: napari.Viewer, path, size: tuple[int, int] = (1400, 900)) -> np.ndarray:
    """Lay the window out at ``size``, fit the slide to the canvas and save the canvas (with napari's scale bar)
    as a PNG, with a legend of every colour it shows on its right; returns the saved pixels."""
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    viewer.window.resize(*size)
    QApplication.processEvents()
    viewer.reset_view()
    QApplication.processEvents()
    canvas = viewer.screenshot(canvas_only=True, flash=False)
    picture = with_legend(canvas, legend_groups(viewer))
    Image.fromarray(picture).save(path)
    return picture
