"""The napari viewer of a DAPI-only image's predictions: its DAPI pyramid, the segmented nuclei as outlines, and
each nucleus filled in its predicted class's colour.

Everything is read lazily from what the prediction wrote: the image pyramid of its SpatialData zarr and the label
pyramid, whose nucleus ids are mapped to class codes block by block (a lookup per chunk), so a 10^5-nucleus image
opens without burning or holding anything whole.
"""

from __future__ import annotations

from collections.abc import Callable

import dask.array as da
import napari
import numpy as np
import pandas as pd
import zarr

from xenium_assets.labels.overview import class_palette
from xenium_assets.layout import PredictionFiles
from xenium_assets.viewer.app import DAPI, NUCLEI, OUTLINE_COLORS, PREDICTED, _colormap

DAPI_IMAGE = "dapi"
"""The image element of a prediction's SpatialData zarr."""


def _levels(group_path: str) -> list[zarr.Array]:
    group = zarr.open_group(group_path, mode="r")
    attrs = dict(group.attrs)
    multiscales = attrs["multiscales"] if "multiscales" in attrs else attrs["ome"]["multiscales"]  # NGFF 0.4 or 0.5
    paths = [d["path"] for d in multiscales[0]["datasets"]]
    return [group[p] for p in paths]


def build_prediction_viewer(
    files: PredictionFiles, key: str, show: bool = True, report: Callable[[str], None] = lambda _: None
) -> napari.Viewer:
    """A viewer of the image ``key``'s prediction in ``files``."""
    summary = files.read_summary()
    nuclei = pd.read_parquet(files.nuclei, columns=["nucleus_id", "predicted_class"])
    classes = list(nuclei["predicted_class"].cat.categories) if len(nuclei) else list(summary["per_class"])
    viewer = napari.Viewer(title=f"xenium-assets: {key} (predicted)", show=show)
    dapi_levels = _levels(str(files.spatialdata / "images" / DAPI_IMAGE))
    label_levels = _levels(str(files.labels))
    ps = _pixel_size(files)
    scale = {"scale": (ps, ps), "units": ("um", "um")}
    images = [da.from_zarr(level)[0] if level.ndim == 3 else da.from_zarr(level) for level in dapi_levels]
    lo, hi = np.percentile(np.asarray(images[-1]), [1, 99.8])
    viewer.add_image(
        images, multiscale=True, name=DAPI, colormap="gray", contrast_limits=(float(lo), float(hi)), **scale
    )
    labels = [da.from_zarr(level) for level in label_levels]
    outlines = viewer.add_labels(
        labels, multiscale=True, name=NUCLEI, colormap=_colormap({}, OUTLINE_COLORS[NUCLEI]), **scale
    )
    outlines.contour = 1
    lookup = np.zeros(int(nuclei["nucleus_id"].max()) + 1 if len(nuclei) else 1, dtype=np.uint8)
    if len(nuclei):
        lookup[nuclei["nucleus_id"].to_numpy()] = nuclei["predicted_class"].cat.codes.to_numpy() + 1

    def to_class(block: np.ndarray) -> np.ndarray:
        return lookup[np.minimum(block, len(lookup) - 1)]

    palette = class_palette(classes)
    layer = viewer.add_labels(
        [level.map_blocks(to_class, dtype=np.uint8) for level in labels],
        multiscale=True,
        name=PREDICTED,
        colormap=_colormap({i + 1: palette[c] for i, c in enumerate(classes)}),
        opacity=0.5,
        features=pd.DataFrame({"index": np.arange(1, len(classes) + 1), "class": classes}),
        **scale,
    )
    counts = nuclei["predicted_class"].value_counts() if len(nuclei) else pd.Series(dtype=int)
    layer.metadata["classes"] = dict(enumerate(classes, start=1))
    layer.metadata["counts"] = {i + 1: int(counts.get(c, 0)) for i, c in enumerate(classes)}
    models = f"classifier {summary['model_version']}, segmenter {summary['segmenter_version']}"
    report(f"{key}: {len(nuclei):,} nuclei, {models}")
    viewer.layers.selection.active = viewer.layers[DAPI]
    viewer.scale_bar.visible = True
    viewer.reset_view()
    return viewer


def _pixel_size(files: PredictionFiles) -> float:
    """µm per pixel of the prediction's image pyramid (its DAPI store's grid)."""
    from xenium_assets.patches.dapi_store import read_description

    return float(read_description(files.dapi).pixel_size_um)
