"""A whole-slide picture without a screen: DAPI in grey with every cell filled in its label's colour.

The DAPI comes from the coarsest pyramid level at least ``target_px`` wide and the cells are burnt at
that level's resolution (PolygonRaster.burn_all), so a 10^6-cell slide costs one small read and one
rasterisation, never a full-resolution image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.patches import Patch

from xenium_assets.bundle.image import open_plane
from xenium_assets.bundle.manifest import Manifest
from xenium_assets.plots import add_scale_bar, label_colors, png_bytes
from xenium_assets.slide import SlideGeometry

EXCLUDED = "excluded"
ALPHA = 0.5


def class_codes(labels: pd.DataFrame) -> tuple[list[str], pd.Series]:
    """Classes (sorted usable labels, then 'excluded' if any cell is) and each cell's 1-based class code."""
    usable = labels["excluded_reason"] == ""
    names = sorted(labels.loc[usable, "label"].unique())
    if (~usable).any():
        names.append(EXCLUDED)
    code = {name: i + 1 for i, name in enumerate(names)}
    shown = labels["label"].where(usable, EXCLUDED)
    return names, pd.Series(shown.map(code).to_numpy(), index=labels["cell_id"].to_numpy())


def class_palette(names: list[str]) -> dict[str, tuple]:
    """The colour of each class: the project's label colours, grey for excluded cells."""
    colors = label_colors([n for n in names if n != EXCLUDED])
    colors[EXCLUDED] = colors["Unassigned"]
    return {n: colors[n] for n in names}


def overview_level(levels: list[tuple[int, int]], target_px: int) -> int:
    """The coarsest pyramid level whose longer side still has ``target_px`` pixels (else the finest)."""
    fits = [i for i, shape in enumerate(levels) if max(shape) >= target_px]
    return fits[-1] if fits else 0


@dataclass(frozen=True)
class Overview:
    """The composited picture, the class code burnt at each of its pixels, and its zoom-out factor."""

    rgb: np.ndarray
    codes: np.ndarray
    factor: int
    names: list[str]
    palette: dict[str, tuple]
    counts: list[int]
    """Cells of each class in the labels table, in ``names`` order."""


def overview(manifest: Manifest, geometry: SlideGeometry, labels: pd.DataFrame, target_px: int = 1200) -> Overview:
    """DAPI (1st-99.5th percentile, grey) blended with each labelled cell's class colour, at a pyramid level."""
    names, codes = class_codes(labels)
    palette = class_palette(names)
    level = overview_level([tuple(s) for s in manifest.dapi.levels], target_px)
    with open_plane(manifest.dapi_path, manifest.dapi.ifd, level) as plane:
        dapi = np.asarray(plane[...], dtype=np.float32)
    factor = round(manifest.dapi.levels[0][1] / dapi.shape[1])
    burnt = geometry.lookup(codes.index, codes.to_numpy())[geometry.cells.burn_all(factor, dapi.shape)]
    lo, hi = np.percentile(dapi, [1, 99.5])
    grey = np.clip((dapi - lo) / max(hi - lo, 1.0), 0, 1)[..., None].repeat(3, axis=2)
    table = np.zeros((len(names) + 1, 3), dtype=np.float32)
    table[1:] = [palette[n][:3] for n in names]
    rgb = np.where((burnt > 0)[..., None], (1 - ALPHA) * grey + ALPHA * table[burnt], grey)
    counts = codes.value_counts()
    return Overview(
        rgb=rgb,
        codes=burnt,
        factor=factor,
        names=names,
        palette=palette,
        counts=[int(counts.get(i + 1, 0)) for i in range(len(names))],
    )


NOT_LABELLED = "no label (DAPI only)"
NOT_LABELLED_COLOUR = (0.45, 0.45, 0.45, 1.0)


def legend_entries(view: Overview, n_cells: int) -> list[tuple[str, tuple]]:
    """Every colour the overview shows, with its meaning and cell count: each class, grey for excluded cells,
    and the bare DAPI grey of cells with no row in the labels table (QC failed, or not in the matrix)."""
    entries = [(f"{name} ({count:,})", view.palette[name]) for name, count in zip(view.names, view.counts, strict=True)]
    unlabelled = n_cells - sum(view.counts)
    if unlabelled > 0:
        entries.append((f"{NOT_LABELLED} ({unlabelled:,})", NOT_LABELLED_COLOUR))
    return entries


def overview_png(
    manifest: Manifest, geometry: SlideGeometry, labels: pd.DataFrame, target_px: int = 1200, title: str = ""
) -> bytes:
    """The overview as a captioned PNG with a µm axis, a scale bar and a legend of every colour with its count."""
    import matplotlib.pyplot as plt

    view = overview(manifest, geometry, labels, target_px)
    height, width = view.rgb.shape[:2]
    um = view.factor * manifest.pixel_size_um
    fig, ax = plt.subplots(figsize=(8, 8 * height / width + 0.6))
    ax.imshow(view.rgb, extent=(0, width * um, height * um, 0))
    ax.set_xlabel("µm")
    ax.set_title(title or manifest.sample, fontsize=10, loc="left")
    add_scale_bar(ax, width * um)
    ax.legend(
        handles=[Patch(color=colour, label=text) for text, colour in legend_entries(view, len(geometry.ids))],
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
        fontsize=7,
        frameon=False,
    )
    return png_bytes(fig, dpi=100)
