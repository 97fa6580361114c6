"""A picture of example patches, a row per group (a tile, or a class): DAPI with the outlines of the nucleus
(cyan), the Xenium cell (yellow) and the ring grown from the nucleus (magenta)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from xenium_assets.patches.masks import cell, nucleus, ring
from xenium_assets.plots import png_bytes


def gallery(examples: dict[str, list[tuple[np.ndarray, np.ndarray]]], per_row: int = 6) -> bytes:
    classes = sorted(examples)
    cols = max(1, min(per_row, max((len(v) for v in examples.values()), default=1)))
    fig, axes = plt.subplots(
        max(1, len(classes)), cols, figsize=(1.6 * cols, 1.7 * max(1, len(classes))), squeeze=False
    )
    for ax in axes.ravel():
        ax.axis("off")
    for r, label in enumerate(classes):
        for c, (dapi, mask) in enumerate(examples[label][:cols]):
            ax = axes[r, c]
            lo, hi = np.percentile(dapi, [1, 99.5])
            ax.imshow(np.clip((dapi - lo) / max(hi - lo, 1), 0, 1), cmap="gray")
            for region, colour in _outlines(mask):
                ax.contour(region, levels=[0.5], colors=colour, linewidths=0.6)
            if c == 0:
                ax.set_title(label, fontsize=8, loc="left")
    fig.tight_layout()
    return png_bytes(fig)


def _outlines(mask: np.ndarray) -> list[tuple[np.ndarray, str]]:
    """The regions whose outlines are drawn, with their colours; the ring's only where the patch has one."""
    grown = nucleus(mask) | ring(mask)
    regions = [(cell(mask), "yellow"), (grown, "magenta"), (nucleus(mask), "cyan")]
    return [(region, colour) for region, colour in regions if region.any()]


def patch_rgb(dapi: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(P, P, 3) uint8 of one patch as the gallery draws it, without matplotlib (for widgets and icons)."""
    from scipy.ndimage import binary_erosion

    lo, hi = np.percentile(dapi, [1, 99.5])
    grey = (np.clip((dapi.astype(np.float32) - lo) / max(hi - lo, 1.0), 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    colours = {"yellow": (255, 255, 0), "magenta": (255, 0, 255), "cyan": (0, 255, 255)}
    for region, colour in _outlines(mask):
        rgb[region & ~binary_erosion(region)] = colours[colour]
    return rgb
