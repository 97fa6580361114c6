"""The morphology baselines a biologist would try first: a class-balanced logistic regression on a nucleus's own
shape and staining features, and on those plus its neighbours' (how much does context add?).

Features are measured on the same pixels the CNN reads: the patch resized to the model's input side."""

from __future__ import annotations

import numpy as np
import pandas as pd
import shapely

NEIGHBOURS = 5
"""Nearest cells whose mean features join a cell's own in the neighbourhood baseline."""


def nucleus_hull_area(nucleus: np.ndarray) -> np.ndarray:
    """Per (n, h, w) boolean patch, the area of the convex hull of its pixels' squares (0 where it has none).

    Only a row's outermost pixels can hold a vertex of the hull, so each row's run gives four corners: the
    same hull as from every pixel's corners, from about 100 points a nucleus instead of 3,000 (the morphology
    features of the test slides' train and test splits took 15.6 s from every corner, most of it in shapely.points).
    """
    n, _, w = nucleus.shape
    area = np.zeros(n)
    patch, row = np.nonzero(nucleus.any(axis=2))
    if not len(patch):
        return area
    x0 = nucleus.argmax(axis=2)[patch, row]
    x1 = w - nucleus[:, :, ::-1].argmax(axis=2)[patch, row]
    corners = np.column_stack(
        [np.stack([x0, x0, x1, x1], 1).ravel(), np.stack([row, row + 1, row, row + 1], 1).ravel()]
    )
    owners, dense = np.unique(patch, return_inverse=True)
    hulls = shapely.convex_hull(shapely.multipoints(corners, indices=np.repeat(dense, 4)))
    area[owners] = shapely.area(hulls)
    return area


def morphology_features(dapi: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per patch: nucleus area, cell area, eccentricity, solidity, mean/std DAPI in the nucleus, mean DAPI
    around it, and texture (std of the Laplacian in the nucleus). ``dapi`` normalised, (n, P, P)."""
    n, h, w = dapi.shape
    nucleus = mask == 1
    area = nucleus.sum(axis=(1, 2)).astype(float)
    safe = np.maximum(area, 1)
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    cy = (nucleus * yy).sum(axis=(1, 2)) / safe
    cx = (nucleus * xx).sum(axis=(1, 2)) / safe
    dy, dx = yy[None] - cy[:, None, None], xx[None] - cx[:, None, None]
    mu20 = (nucleus * dx * dx).sum(axis=(1, 2)) / safe
    mu02 = (nucleus * dy * dy).sum(axis=(1, 2)) / safe
    mu11 = (nucleus * dx * dy).sum(axis=(1, 2)) / safe
    spread = np.sqrt(np.maximum((mu20 - mu02) ** 2 + 4 * mu11**2, 0))
    major, minor = (mu20 + mu02 + spread) / 2, (mu20 + mu02 - spread) / 2
    eccentricity = np.sqrt(np.clip(1 - minor / np.maximum(major, 1e-9), 0, 1))
    solidity = area / np.maximum(nucleus_hull_area(nucleus), 1)
    values = np.where(nucleus, dapi, 0.0)
    mean = values.sum(axis=(1, 2)) / safe
    std = np.sqrt(np.maximum(np.where(nucleus, dapi**2, 0.0).sum(axis=(1, 2)) / safe - mean**2, 0))
    ring = mask == 2
    around = np.where(ring, dapi, 0.0).sum(axis=(1, 2)) / np.maximum(ring.sum(axis=(1, 2)), 1)
    lap = 4 * dapi[:, 1:-1, 1:-1] - dapi[:, :-2, 1:-1] - dapi[:, 2:, 1:-1] - dapi[:, 1:-1, :-2] - dapi[:, 1:-1, 2:]
    inner = nucleus[:, 1:-1, 1:-1]
    inner_n = np.maximum(inner.sum(axis=(1, 2)), 1)
    lap_mean = np.where(inner, lap, 0).sum(axis=(1, 2)) / inner_n
    texture = np.sqrt(np.maximum(np.where(inner, lap**2, 0).sum(axis=(1, 2)) / inner_n - lap_mean**2, 0))
    cell_area = (mask > 0).sum(axis=(1, 2)).astype(float)
    return np.column_stack([area, cell_area, eccentricity, solidity, mean, std, around, texture])


FEATURE_NAMES = (
    "nucleus_area",
    "cell_area",
    "eccentricity",
    "solidity",
    "dapi_mean",
    "dapi_std",
    "dapi_around",
    "texture",
)


def morphology_baseline(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, seed: int = 0) -> np.ndarray:
    """A class-balanced logistic regression on standardised morphology features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed)
    )
    model.fit(train_x, train_y)
    return model.predict(test_x)


def neighbour_features(cells: pd.DataFrame, features: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """Each cell's features beside the mean features of its ``k`` nearest other cells of the same sample among
    ``cells`` (columns sample, x_um, y_um; one row per row of ``features``)."""
    from scipy.spatial import cKDTree

    around = np.zeros_like(features)
    for _, rows in cells.groupby("sample", sort=False).indices.items():
        xy = cells[["x_um", "y_um"]].to_numpy()[rows]
        n = min(k + 1, len(rows))
        if n < 2:
            around[rows] = features[rows]
            continue
        _, near = cKDTree(xy).query(xy, k=n)
        around[rows] = features[rows][near[:, 1:]].mean(axis=1)
    return np.hstack([features, around])
