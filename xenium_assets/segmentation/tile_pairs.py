"""The nucleus segmenter's data from Xenium samples, by tile: training pairs (DAPI, the instrument's nuclei as
instance labels, nucleus diameter) and test figures, both read from the tiles a split assigns.

Tiles are the keys of the fixed grid patches are cut on (``patches.grid``), on the target grid at the patch pixel
size; a bundle at another pixel size is read at its own resolution, its windows scaled by target / own pixel size, so
the segmenter sees the instrument's pixels. A tile is read in windows of at most ``max_px`` a side, so memory is
bounded by the window, whatever the slide's size.

The test figures are object precision, recall and F1 at IoU 0.5 and the mean matched IoU, pooled over a sample's test
windows (every nucleus counts once). A nucleus cut by a window's edge is cut in the reference and in the image
alike, as in the benchmark; the diameter given to a segmenter is the bundle's median nucleus diameter.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from xenium_assets.patches.dapi_store import DapiStore
from xenium_assets.patches.grid import tile_window
from xenium_assets.progress import Progress, no_progress
from xenium_assets.raster import Window
from xenium_assets.segmentation.bundle_nuclei import BundleNuclei, NucleusImage
from xenium_assets.segmentation.metrics import Matching, Summary, match, pool
from xenium_assets.segmentation.reference_images import Segmenter

if TYPE_CHECKING:  # the learned segmenter's module imports torch; evaluating the classical one needs none of it
    from xenium_assets.segmentation.training import Pair

WINDOW_PX = 1024
"""Largest window side read at once: about 6 MB of DAPI and labels."""


@dataclass(frozen=True)
class TileGrid:
    """A sample's tile grid (the target grid the patches were cut on) and its bundle's own level-0 pixels."""

    shape: tuple[int, int]
    pixel_size_um: float
    source_shape: tuple[int, int]
    source_pixel_size_um: float

    @classmethod
    def of(cls, store: DapiStore) -> TileGrid:
        """The grid the sample's DAPI store (dapi_zarr) was written on: the one its tiles were cut on."""
        return cls(tuple(store.shape), store.pixel_size_um, tuple(store.source_shape), store.source_pixel_size_um)

    def window(self, tile: str) -> Window:
        """The tile's window in the bundle's own pixels (empty when the image does not reach the tile)."""
        target = tile_window(tile, *self.shape)
        scale = self.pixel_size_um / self.source_pixel_size_um
        height, width = self.source_shape
        y0, x0 = min(round(target.y0 * scale), height), min(round(target.x0 * scale), width)
        y1 = min(round((target.y0 + target.h) * scale), height)
        x1 = min(round((target.x0 + target.w) * scale), width)
        return Window(y0, x0, max(0, y1 - y0), max(0, x1 - x0))


@dataclass(frozen=True)
class TileWindow:
    """A window of one tile of one sample, in the bundle's own pixels."""

    sample: str
    tile: str
    window: Window


def tile_windows(grids: Mapping[str, TileGrid], tiles: pd.DataFrame, max_px: int = WINDOW_PX) -> list[TileWindow]:
    """The windows (at most ``max_px`` a side) of the (sample, tile) rows of ``tiles``, in row order; tiles the
    image does not reach give none."""
    out = []
    for sample, tile in zip(tiles["sample"], tiles["tile"], strict=True):
        win = grids[sample].window(tile)
        if win.h and win.w:
            out.extend(TileWindow(sample, tile, part) for part in win.split(max_px))
    return out


def pick(windows: Sequence[TileWindow], limit: int | None, seed: int) -> list[TileWindow]:
    """At most ``limit`` of the windows, drawn at random (seeded), in their original order."""
    if limit is None or len(windows) <= limit:
        return list(windows)
    keep = np.sort(np.random.default_rng(seed).choice(len(windows), size=limit, replace=False))
    return [windows[i] for i in keep]


def read_windows(nuclei: Mapping[str, BundleNuclei], windows: Sequence[TileWindow]) -> Iterator[NucleusImage]:
    """Each window's DAPI and reference nuclei, one window at a time."""
    for w in windows:
        yield nuclei[w.sample].window(w.window)


def training_pairs(
    nuclei: Mapping[str, BundleNuclei], windows: Sequence[TileWindow], progress: Progress = no_progress
) -> tuple[list[Pair], list[TileWindow]]:
    """``train_segmenter``'s (image, labels, diameter) triples of the windows that hold a reference nucleus (a
    window without one teaches nothing the others do not), and those windows."""
    pairs, used = [], []
    for i, (w, found) in enumerate(zip(windows, read_windows(nuclei, windows), strict=True)):
        progress("read windows", i, len(windows))
        if found.labels.any():
            pairs.append((found.image, found.labels, found.diameter_px))
            used.append(w)
    progress("read windows", len(windows), len(windows))
    return pairs, used


@dataclass(frozen=True)
class TileEvaluation:
    """Each segmenter's figures on the test windows: per window, per sample (pooled) and over all samples."""

    per_window: pd.DataFrame
    per_sample: dict[str, dict[str, Summary]]
    """sample -> segmenter name -> its windows pooled."""
    pooled: dict[str, Summary]
    """segmenter name -> every window pooled."""

    def table(self) -> pd.DataFrame:
        """One row per sample and segmenter, and the pooled rows (sample 'all')."""
        rows = [
            {"sample": sample, "segmenter": name, **summary.as_dict()}
            for sample, by_name in {**self.per_sample, "all": self.pooled}.items()
            for name, summary in by_name.items()
        ]
        return pd.DataFrame(rows)


def evaluate_tiles(
    segmenters: Mapping[str, Segmenter],
    nuclei: Mapping[str, BundleNuclei],
    windows: Sequence[TileWindow],
    progress: Progress = no_progress,
) -> TileEvaluation:
    """Segment every window with every segmenter and match the result with the window's Xenium nuclei."""
    matchings: dict[str, list[tuple[str, Matching]]] = {name: [] for name in segmenters}
    rows = []
    for i, (w, found) in enumerate(zip(windows, read_windows(nuclei, windows), strict=True)):
        progress("evaluate segmenters", i, len(windows))
        row = {
            "sample": w.sample,
            "tile": w.tile,
            "y0": w.window.y0,
            "x0": w.window.x0,
            "h": w.window.h,
            "w": w.window.w,
            "true_nuclei": int(found.labels.max(initial=0)),
        }
        for name, segment in segmenters.items():
            m = match(found.labels, segment(found.image, found.diameter_px))
            matchings[name].append((w.sample, m))
            row.update(
                {
                    f"{name}_predicted": m.n_pred,
                    f"{name}_precision": m.precision,
                    f"{name}_recall": m.recall,
                    f"{name}_f1": m.f1,
                    f"{name}_mean_iou": m.mean_iou,
                }
            )
        rows.append(row)
    progress("evaluate segmenters", len(windows), len(windows))
    samples = sorted({w.sample for w in windows})
    per_sample = {
        s: {name: pool([m for sample, m in found if sample == s]) for name, found in matchings.items()} for s in samples
    }
    pooled = {name: pool([m for _, m in found]) for name, found in matchings.items()}
    return TileEvaluation(pd.DataFrame(rows), per_sample, pooled)
