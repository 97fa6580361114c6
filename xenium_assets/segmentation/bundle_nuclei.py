"""A Xenium bundle's DAPI and its nucleus boundaries as an image and instance labels: the instrument's nuclei are
the reference (and the training targets) for segmenting nuclei from DAPI alone.

Every nucleus polygon is its own instance, even where a cell has two nuclei (its ``label_id`` tells them apart);
a pixel belongs to a polygon if its centre does (``PolygonRaster``), as everywhere else in the project.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely

from xenium_assets.bundle.image import decode_window
from xenium_assets.bundle.polygons import iter_polygons, usable_polygons
from xenium_assets.bundle.validate import BundleReport, inspect_bundle
from xenium_assets.patches.geometry import gather, polygons_from_offsets
from xenium_assets.raster import PolygonRaster, Window


@dataclass(frozen=True)
class NucleusImage:
    """One DAPI window and its reference nuclei (int32 instance labels, 0: background)."""

    image: np.ndarray
    labels: np.ndarray
    diameter_px: float
    """The median equivalent diameter of the bundle's nuclei, in this image's pixels."""
    pixel_size_um: float
    window: Window


@dataclass(frozen=True)
class BundleNuclei:
    """A bundle's DAPI plane and its nucleus polygons in full-resolution pixels, read once; windows on demand."""

    report: BundleReport
    raster: PolygonRaster
    diameter_px: float

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the full-resolution DAPI plane."""
        height, width = self.report.dapi.levels[0][:2]
        return int(height), int(width)

    def window(self, win: Window) -> NucleusImage:
        """The DAPI pixels and reference nuclei of a window inside the image; labels are renumbered 1..n."""
        height, width = self.shape
        if not win.inside(height, width):
            raise ValueError(f"window {win} leaves the {height} x {width} image")
        image = decode_window(self.report.dapi.file, self.report.dapi.ifd, win.slices)
        from skimage.segmentation import relabel_sequential

        labels = relabel_sequential(self.raster.window(win, dtype=np.uint32))[0].astype(np.int32)
        return NucleusImage(image, labels, self.diameter_px, self.report.pixel_size_um, win)


def read_bundle_nuclei(
    bundle: str | Path, *, pixel_size_um: float | None = None, image_origin_um: tuple[float, float] = (0.0, 0.0)
) -> BundleNuclei:
    """Locate and validate the bundle, and read every drawable nucleus polygon (one label each). ``pixel_size_um``
    and ``image_origin_um``: a registered sample's overrides (its manifest's), for a bundle that lacks or misstates
    them."""
    report = inspect_bundle(bundle, pixel_size_um=pixel_size_um, image_origin_um=image_origin_um)
    ox, oy = report.image_origin_um
    ps = report.pixel_size_um
    polys = []
    for batch in iter_polygons(report.files.nucleus_boundaries):
        pick = usable_polygons(batch, np.zeros(len(batch), dtype=np.int64))
        vidx, offsets = gather(batch.starts, batch.rows, pick)
        coords = np.column_stack([(batch.x[vidx] - ox) / ps, (batch.y[vidx] - oy) / ps])
        polys.append(polygons_from_offsets(coords, offsets))
    polygons = np.concatenate(polys) if polys else np.array([], dtype=object)
    if not len(polygons):
        raise ValueError(f"{bundle}: no drawable nucleus polygons")
    diameter = float(np.median(2 * np.sqrt(shapely.area(polygons) / np.pi)))
    return BundleNuclei(report, PolygonRaster(polygons, np.arange(1, len(polygons) + 1)), diameter)
