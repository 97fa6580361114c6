"""The scan-conversion kernels behind the masks (patches/kernels.py), checked against shapely."""

from __future__ import annotations

import numpy as np
import shapely


def test_winding_counts_are_shapely_containment_at_pixel_centres():
    """The scan conversion behind the masks: for valid polygons in either orientation, closed or open rings,
    windows partly off the polygons and polygons partly off the windows, a pixel counts exactly where
    shapely says its centre is inside; overlapping rings add their weights."""
    from xenium_assets.patches.kernels import winding_counts

    rng = np.random.default_rng(3)
    rings, items, weights = [], [], []
    while len(rings) < 60:
        n = int(rng.integers(4, 16))
        angle = np.sort(rng.uniform(0, 2 * np.pi, n))
        radius = rng.uniform(3, 30, n)
        centre = rng.uniform(-20, 70, 2)
        xy = centre + np.column_stack([radius * np.cos(angle), radius * np.sin(angle)])
        if not shapely.Polygon(xy).is_valid:
            continue
        xy = xy[::-1] if len(rings) % 2 else np.vstack([xy, xy[:1]])  # clockwise open, anticlockwise closed
        rings.append(xy)
        items.append(len(rings) % 4)
        weights.append(int(rng.choice([1, 16, 256])))
    top, left = np.array([0, -7, 20, 33]), np.array([0, 11, -5, 40])
    offsets = np.cumsum([0] + [len(r) for r in rings])
    xy = np.vstack(rings)
    size = 48
    order = np.argsort(items, kind="stable")  # the kernel takes the (window, ring) pairs grouped by window
    window, weight = np.array(items)[order], np.array(weights)[order]
    counts = winding_counts(xy[:, 0], xy[:, 1], offsets[:-1], np.diff(offsets), window, order, weight, top, left, size)
    assert counts.shape == (4, size, size)
    rows, cols = np.mgrid[0:size, 0:size]
    for i in range(4):
        expected = np.zeros((size, size), dtype=np.int64)
        for ring, item, weight in zip(rings, items, weights, strict=True):
            if item == i:
                inside = shapely.contains_xy(shapely.Polygon(ring), left[i] + cols + 0.5, top[i] + rows + 0.5)
                expected += weight * inside
        np.testing.assert_array_equal(counts[i], expected)
    assert counts.any()
