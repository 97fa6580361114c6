"""Fluorescence images of the synthetic tissue, rendered one window at a time.

DAPI carries the class morphology: per-nucleus brightness and a chromatin texture (fine and coarse
noise at class-specific amplitudes), blurred by a point-spread function, over background, with
shot and read noise. Texture noise comes from fixed 256² blocks seeded by their grid position, so
any window, whatever its halo, sees the same texture: tiles join without seams.
The segmentation-kit channels (boundary, interior RNA, interior protein) are simpler: they only need
to exist and look plausible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from xenium_assets.raster import PolygonRaster, Window

NOISE_BLOCK = 256
HALO = 16  # > 4 sigma of the widest filter below, so cropped tiles are exact
BACKGROUND = 220.0
CYTOPLASM = 70.0
NUCLEUS_LEVEL = 3200.0


@dataclass(frozen=True)
class Staining:
    """Per-label staining parameters; index 0 is background (label 0)."""

    brightness: np.ndarray
    texture_fine: np.ndarray
    texture_coarse: np.ndarray
    protein: np.ndarray  # per cell label: 1 where the AlphaSMA/Vimentin stain is expressed


def white_noise(win: Window, seed: int, channel: int) -> np.ndarray:
    """Standard normal noise of a window, identical wherever windows overlap."""
    by0, bx0 = win.y0 // NOISE_BLOCK, win.x0 // NOISE_BLOCK
    by1, bx1 = (win.y0 + win.h - 1) // NOISE_BLOCK, (win.x0 + win.w - 1) // NOISE_BLOCK
    rows = []
    for by in range(by0, by1 + 1):
        row = [
            np.random.default_rng([seed, channel, by + 2**20, bx + 2**20]).standard_normal(
                (NOISE_BLOCK, NOISE_BLOCK), dtype=np.float32
            )
            for bx in range(bx0, bx1 + 1)
        ]
        rows.append(np.hstack(row))
    big = np.vstack(rows)
    oy, ox = win.y0 - by0 * NOISE_BLOCK, win.x0 - bx0 * NOISE_BLOCK
    return big[oy : oy + win.h, ox : ox + win.w]


def _smooth_noise(noise: np.ndarray, sigma: float) -> np.ndarray:
    smooth = ndimage.gaussian_filter(noise, sigma)
    return smooth / np.float32(1 / (2 * np.sqrt(np.pi) * sigma))  # unit variance for 2D white noise


def _finish(signal: np.ndarray, win: Window, seed: int, channel: int) -> np.ndarray:
    """Crop the halo, add shot and read noise (deterministic per tile) and convert to uint16."""
    core = signal[HALO:-HALO, HALO:-HALO]
    rng = np.random.default_rng([seed, channel, 7, win.y0 + 2**20, win.x0 + 2**20])
    noisy = core + rng.standard_normal(core.shape, dtype=np.float32) * np.sqrt(np.maximum(core, 0) * 1.5 + 64)
    return np.clip(noisy, 0, 65535).astype(np.uint16)


def render_dapi(
    win: Window, nuclei: PolygonRaster, cells: PolygonRaster, staining: Staining, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DAPI tile and its nucleus and cell label tiles (labels without halo)."""
    pad = win.pad(HALO)
    nuc = nuclei.window(pad)
    cell = cells.window(pad)
    noise = white_noise(pad, seed, 0)
    fine = _smooth_noise(noise, 0.9)
    coarse = _smooth_noise(np.roll(noise, (5, 3), axis=(0, 1)), 2.5)
    chromatin = (
        NUCLEUS_LEVEL
        * staining.brightness[nuc]
        * (1 + staining.texture_fine[nuc] * fine + staining.texture_coarse[nuc] * coarse)
    )
    signal = np.where(nuc > 0, np.maximum(chromatin, 0), 0).astype(np.float32)
    signal = ndimage.gaussian_filter(signal, 1.1) + BACKGROUND + CYTOPLASM * (cell > 0)
    core = (slice(HALO, -HALO), slice(HALO, -HALO))
    return _finish(signal, win, seed, 0), nuc[core], cell[core]


def render_kit_channel(
    win: Window, channel: int, cells: PolygonRaster, nuclei: PolygonRaster, staining: Staining, seed: int
) -> np.ndarray:
    """Segmentation-kit channel 1 (boundary), 2 (interior RNA) or 3 (interior protein)."""
    pad = win.pad(HALO)
    cell = cells.window(pad)
    if channel == 1:
        edge = np.zeros(cell.shape, dtype=np.float32)
        edge[:-1] += cell[:-1] != cell[1:]
        edge[:, :-1] += cell[:, :-1] != cell[:, 1:]
        signal = 1800.0 * ndimage.uniform_filter(np.minimum(edge, 1), 3)
    else:
        cytoplasm = (cell > 0) & (nuclei.window(pad) == 0)
        level = 900.0 if channel == 2 else 1400.0 * staining.protein[cell]
        signal = level * cytoplasm * (1 + 0.3 * _smooth_noise(white_noise(pad, seed, channel), 1.5))
        signal = ndimage.uniform_filter(signal.astype(np.float32), 3)
    return _finish(signal + BACKGROUND, win, seed, channel)
