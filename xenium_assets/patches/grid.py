"""The fixed tile grid (stable partition keys) and patch geometry in physical units.

Every sample is cut into the same 8 x 8 grid of tiles, named r<row>c<col>, with edges rounded to
multiples of 256 px so tiles line up with the DAPI store's chunks; small images leave some tiles
empty. A tile owns the cells whose nucleus centroid falls in it. Patch sizes are set in µm and
converted at a common target pixel size, so patches from instruments with other pixel sizes are
comparable (their images are resampled to it): ``target_grid`` is that pixel grid, known from the
manifest alone, so the DAPI transcode and the polygon split need not wait for each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xenium_assets.bundle.manifest import Manifest
from xenium_assets.formats import XENIUM_PIXEL_SIZE_UM
from xenium_assets.raster import Window

GRID = 8
ALIGN_PX = 256
TILE_KEYS = tuple(f"r{r}c{c}" for r in range(GRID) for c in range(GRID))
RESAMPLE_TOLERANCE = 0.005
"""Pixel sizes within 0.5 % of the target are taken as they are (no resampling)."""


@dataclass(frozen=True)
class PatchSpec:
    """Patch size in µm at a target pixel size (the side in pixels rounded up to a multiple of 8), and how far the
    perinuclear ring reaches out from a nucleus."""

    size_um: float = 20.0
    pixel_size_um: float = XENIUM_PIXEL_SIZE_UM
    ring_um: float = 5.0
    """The ring grown from each nucleus, stopped halfway to its neighbours (as Xenium's nucleus expansion): what a
    DAPI-only image can reproduce in place of the Xenium cell boundary."""

    @property
    def size_px(self) -> int:
        return int(math.ceil(self.size_um / self.pixel_size_um / 8) * 8)

    @property
    def halo_px(self) -> int:
        """Half a patch: a tile read with this margin holds every patch of the cells it owns."""
        return self.size_px // 2

    @property
    def ring_px(self) -> float:
        return self.ring_um / self.pixel_size_um

    @property
    def context_px(self) -> int:
        """The halo plus a ring: every nucleus whose ring could reach a patch of the tile's cells lies within it of
        the tile, so a tile read (or split) with it draws every ring of its patches as on the whole slide."""
        return self.halo_px + math.ceil(self.ring_px) + 1


@dataclass(frozen=True)
class TargetGrid:
    """The pixel grid patches are cut on: the DAPI level 0 at the target pixel size."""

    shape: tuple[int, int]
    pixel_size_um: float
    resampled: bool


@dataclass(frozen=True)
class DapiPlane:
    """What the target grid and the DAPI transcode read of a source: the plane (a file and its IFD), its level-0
    shape, pixel size and origin. A bundle's manifest gives one (``of``); so does any DAPI image (images.source)."""

    file: Path
    ifd: int
    shape: tuple[int, int]
    pixel_size_um: float
    image_origin_um: tuple[float, float] = (0.0, 0.0)

    @classmethod
    def of(cls, source: Manifest | DapiPlane) -> DapiPlane:
        if isinstance(source, DapiPlane):
            return source
        height, width = source.dapi.levels[0]
        origin = tuple(float(v) for v in source.image_origin_um)
        return cls(source.dapi_path, source.dapi.ifd, (height, width), source.pixel_size_um, origin)  # type: ignore[arg-type]


def target_grid(manifest: Manifest | DapiPlane, pixel_size_um: float) -> TargetGrid:
    """The sample's grid at ``pixel_size_um``; the source's own grid if its pixel size is within tolerance."""
    plane = DapiPlane.of(manifest)
    height, width = plane.shape
    scale = plane.pixel_size_um / pixel_size_um
    if abs(scale - 1) <= RESAMPLE_TOLERANCE:
        return TargetGrid((height, width), plane.pixel_size_um, False)
    return TargetGrid((int(round(height * scale)), int(round(width * scale))), pixel_size_um, True)


def edges(length: int, grid: int = GRID, align: int = ALIGN_PX) -> np.ndarray:
    """grid + 1 tile edges over [0, length], rounded to multiples of ``align`` (the last is ``length``)."""
    raw = np.round(np.arange(grid + 1) * length / grid / align).astype(np.int64) * align
    raw[-1] = length
    return np.minimum(np.maximum.accumulate(raw), length)


def tile_key(row: int, col: int) -> str:
    return f"r{row}c{col}"


def tile_index(key: str) -> tuple[int, int]:
    row, col = key[1:].split("c")
    return int(row), int(col)


def tile_window(key: str, height: int, width: int) -> Window:
    """The pixel window of a tile (empty, h or w = 0, when the image is too small to reach it)."""
    r, c = tile_index(key)
    ey, ex = edges(height), edges(width)
    return Window(int(ey[r]), int(ex[c]), int(ey[r + 1] - ey[r]), int(ex[c + 1] - ex[c]))


def tiles_of(rows: np.ndarray, cols: np.ndarray, height: int, width: int) -> np.ndarray:
    """Tile key of each pixel position (positions off the image go to the nearest edge tile)."""
    r = np.clip(np.searchsorted(edges(height), rows, side="right") - 1, 0, GRID - 1)
    c = np.clip(np.searchsorted(edges(width), cols, side="right") - 1, 0, GRID - 1)
    keys = np.array(TILE_KEYS, dtype=object).reshape(GRID, GRID)
    return keys[r, c]


def tile_ranges(lo: np.ndarray, hi: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last tile index along one axis overlapped by [lo, hi) (vectorised)."""
    e = edges(length)
    first = np.clip(np.searchsorted(e, lo, side="right") - 1, 0, GRID - 1)
    last = np.clip(np.searchsorted(e, hi, side="left") - 1, 0, GRID - 1)
    return first, np.maximum(first, last)
