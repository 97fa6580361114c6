"""A picture of example patches, a row per group (a tile, or a class): DAPI with the nucleus (cyan) and the
cell (yellow) outlines; the perinuclear mask is the ring between them."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from xenium_assets.patches.extract import MASK_NUCLEUS
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
            ax.contour(mask == MASK_NUCLEUS, levels=[0.5], colors="cyan", linewidths=0.6)
            ax.contour(mask > 0, levels=[0.5], colors="yellow", linewidths=0.6)
            if c == 0:
                ax.set_title(label, fontsize=8, loc="left")
    fig.tight_layout()
    return png_bytes(fig)


def patch_rgb(dapi: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(P, P, 3) uint8 of one patch as the gallery draws it, without matplotlib (for widgets and icons)."""
    from scipy.ndimage import binary_erosion

    lo, hi = np.percentile(dapi, [1, 99.5])
    grey = (np.clip((dapi.astype(np.float32) - lo) / max(hi - lo, 1.0), 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for region, colour in ((mask > 0, (255, 255, 0)), (mask == MASK_NUCLEUS, (0, 255, 255))):
        rgb[region & ~binary_erosion(region)] = colour
    return rgb
