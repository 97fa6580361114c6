"""Recall where segmentation is hard: reference nuclei that touch another nucleus (share an edge or a corner).
Precision has no meaning for a subset of the reference, so only recall at IoU >= 0.5 is reported."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from xenium_assets.segmentation.metrics import MATCH_IOU, overlaps


def touching_ids(labels: np.ndarray) -> np.ndarray:
    """Labels (ascending) of the objects with a pixel 8-adjacent to a pixel of another object."""
    labels = np.asarray(labels).astype(np.int64)
    none = labels.max() + 1  # stands for the background when looking for the smallest label around
    largest = ndi.maximum_filter(labels, size=3, mode="nearest")
    smallest = ndi.minimum_filter(np.where(labels > 0, labels, none), size=3, mode="nearest")
    # A pixel of object a touches another object if the largest or the smallest label around it is not a.
    other = (labels > 0) & ((largest != labels) | ((smallest != labels) & (smallest != none)))
    return np.unique(labels[other])


def touching_recall(truth: np.ndarray, pred: np.ndarray, threshold: float = MATCH_IOU) -> tuple[int, int]:
    """(touching reference nuclei, how many of them a predicted object matches at IoU >= ``threshold``)."""
    ids = touching_ids(truth)
    if not len(ids):
        return 0, 0
    found = overlaps(truth, pred)
    return len(ids), int(np.isin(ids, found.truth[found.iou >= threshold]).sum())
