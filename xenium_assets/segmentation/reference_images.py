"""Segmentation quality on real nuclear-stain images with hand-drawn nuclei (e.g. ../shared/real_nuclei/
dsb2018_stage1_test_fluo): ``index.csv`` (image_id, median_diameter_px, ...), ``images/<id>.tif`` and
``masks/<id>.tif`` (instance labels).

The images carry no pixel size: each one's median annotated nucleus diameter gives its scale, as a pixel size would.
Images whose position in image-id order is a multiple of ``TUNING_EVERY`` may be used to choose settings; the rest
are held out, and only they are reported as the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from xenium_assets.formats import ReferenceImagesFile as Files
from xenium_assets.segmentation.metrics import Matching, Summary, match, pool

TUNING_EVERY = 4
Segmenter = Callable[[np.ndarray, float], np.ndarray]
"""(2-D image, nucleus diameter in pixels) -> instance labels."""


@dataclass(frozen=True)
class ReferenceImage:
    image_id: str
    diameter_px: float
    image: Path
    mask: Path


def reference_images(folder: Path, subset: str = "held_out") -> list[ReferenceImage]:
    """The folder's images in image-id order: ``held_out``, ``tuning`` or ``all``."""
    folder = Path(folder)
    index_path = folder / Files.INDEX
    if not index_path.exists():
        raise FileNotFoundError(
            f"{index_path}: no index of reference images; point at a folder laid out as its SOURCE.md says"
        )
    index = pd.read_csv(index_path).sort_values("image_id", ignore_index=True)
    position = np.arange(len(index))
    keep = {"all": position >= 0, "tuning": position % TUNING_EVERY == 0, "held_out": position % TUNING_EVERY != 0}
    if subset not in keep:
        raise ValueError(f"subset must be one of {', '.join(keep)}, not {subset!r}")
    return [
        ReferenceImage(
            r.image_id,
            float(r.median_diameter_px),
            folder / Files.IMAGES_DIR / f"{r.image_id}{Files.SUFFIX}",
            folder / Files.MASKS_DIR / f"{r.image_id}{Files.SUFFIX}",
        )
        for r in index[keep[subset]].itertuples()
    ]


def evaluate(images: list[ReferenceImage], segment: Segmenter) -> tuple[pd.DataFrame, Summary]:
    """Per image (id, diameter, nuclei, precision, recall, F1, mean matched IoU) and pooled over images."""
    import tifffile

    matchings: list[Matching] = []
    rows = []
    for ref in images:
        truth = tifffile.imread(ref.mask)
        found = segment(tifffile.imread(ref.image), ref.diameter_px)
        m = match(truth, found)
        matchings.append(m)
        rows.append(
            {
                "image_id": ref.image_id,
                "diameter_px": ref.diameter_px,
                "true_nuclei": m.n_true,
                "predicted_nuclei": m.n_pred,
                "precision": m.precision,
                "recall": m.recall,
                "f1": m.f1,
                "mean_matched_iou": m.mean_iou,
            }
        )
    return pd.DataFrame(rows), pool(matchings)
