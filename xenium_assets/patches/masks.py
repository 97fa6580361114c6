"""What a patch's mask byte holds, and the perinuclear ring that a DAPI-only image can reproduce.

A mask byte is three bits: the cell's own nucleus, the rest of its Xenium cell (its perinuclear part), and the ring
grown from its nucleus. The first two need the Xenium cell boundary; the ring needs only nuclei, so a model that
reads DAPI, the nucleus and the ring can be applied to any DAPI image once its nuclei are segmented.

The ring is Xenium's own nucleus expansion: every pixel within ``ring_px`` of a nucleus goes to the nearest
nucleus (scikit-image's ``expand_labels``, which stops each nucleus halfway to its neighbours), and a cell's ring is
the part of its nuclei's territory outside every nucleus. It is computed once per block of a tile from the nucleus
polygons burnt into a label raster, by the same code at training (Xenium's nuclei) and at inference (segmented
nuclei). Per block, not per patch: one expansion of a 1,400² px block costs what about 300 patch-sized ones would,
and a block holds a few thousand cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from xenium_assets.raster import PolygonRaster, Window

MASK_NUCLEUS, MASK_PERINUCLEAR, MASK_RING = 1, 2, 4

Representation = Literal["dapi_nucleus_ring", "dapi", "dapi_masks", "masked_dapi"]
"""What a classifier reads of a patch: DAPI, the nucleus and the ring (the default: a DAPI-only image gives it);
DAPI alone; DAPI, the nucleus and the Xenium cell; or the Xenium cell's DAPI alone."""
DEFAULT_REPRESENTATION: Representation = "dapi_nucleus_ring"
CHANNELS = {"dapi_nucleus_ring": 3, "dapi": 1, "dapi_masks": 3, "masked_dapi": 1}
NEEDS_CELL_BOUNDARY = frozenset({"dapi_masks", "masked_dapi"})
"""Representations that read the Xenium cell boundary, which a DAPI-only image does not have."""
NEEDS_RING = frozenset({"dapi_nucleus_ring"})


def nucleus(mask: np.ndarray) -> np.ndarray:
    """The cell's own nucleus (and no other cell's)."""
    return (mask & MASK_NUCLEUS) > 0


def perinuclear(mask: np.ndarray) -> np.ndarray:
    """Inside the cell's Xenium boundary and in no nucleus."""
    return (mask & MASK_PERINUCLEAR) > 0


def ring(mask: np.ndarray) -> np.ndarray:
    """The ring grown from the cell's nuclei, in no nucleus."""
    return (mask & MASK_RING) > 0


def cell(mask: np.ndarray) -> np.ndarray:
    """The Xenium cell: its nucleus and its perinuclear part."""
    return (mask & (MASK_NUCLEUS | MASK_PERINUCLEAR)) > 0


def _crop(array: np.ndarray, top: np.ndarray, left: np.ndarray, size: int) -> np.ndarray:
    return np.lib.stride_tricks.sliding_window_view(array, (size, size))[top, left]


@dataclass(frozen=True)
class BlockRings:
    """One block's nuclei and their territories, as owner codes + 1 (0: none)."""

    region: Window
    nuclei: np.ndarray
    territory: np.ndarray

    def add_rings(self, masks: np.ndarray, owners: np.ndarray, top: np.ndarray, left: np.ndarray) -> None:
        """Set ``MASK_RING`` in ``masks`` (n, P, P; windows at image rows ``top``, columns ``left``, inside the
        region) where the pixel is in its cell's territory and in no nucleus; a cell whose owner code is -1 (no
        polygon) gets none."""
        size = masks.shape[1]
        rows, cols = np.asarray(top) - self.region.y0, np.asarray(left) - self.region.x0
        own = (np.asarray(owners, dtype=np.int64) + 1).astype(self.territory.dtype)[:, None, None]
        inside = (_crop(self.territory, rows, cols, size) == own) & (_crop(self.nuclei, rows, cols, size) == 0)
        inside &= own > 0
        masks |= inside.view(np.uint8) * np.uint8(MASK_RING)


class NucleusRings:
    """Territories of nucleus polygons (pixel coordinates), each labelled by its owner's code (a cell's nuclei share
    one), for any block."""

    def __init__(self, polygons: np.ndarray, owners: np.ndarray, ring_px: float) -> None:
        if not ring_px >= 0:
            raise ValueError(f"the ring must be a distance of 0 or more pixels, not {ring_px}")
        self.ring_px = float(ring_px)
        self.raster = PolygonRaster(polygons, np.asarray(owners, dtype=np.int64) + 1)

    def block(self, region: Window) -> BlockRings:
        """The region's nuclei and territories, computed on the region widened by the ring, so that a nucleus just
        outside it still stops its neighbours' rings inside it."""
        from skimage.segmentation import expand_labels

        margin = math.ceil(self.ring_px) + 1
        nuclei = self.raster.window(region.pad(margin))
        territory = expand_labels(nuclei, distance=self.ring_px) if self.ring_px > 0 else nuclei
        inner = (slice(margin, margin + region.h), slice(margin, margin + region.w))
        return BlockRings(region, nuclei[inner], territory[inner])
