"""Pixels for segmentation, shared by both segmenters: intensities scaled per image between percentiles, images
and label images resampled (numpy and scikit-image only: the classical segmenter loads no torch)."""

from __future__ import annotations

import math

import numpy as np


def normalise(
    image: np.ndarray,
    low: float = 1.0,
    high: float = 99.8,
    max_samples: int = 4_000_000,
    intensity_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """float32 in [0, 1] between the image's ``low`` and ``high`` percentiles (of a strided sample of a large
    image), or between the given ``intensity_range``: a tile of a large image is scaled by the whole image's
    percentiles, so that a tile of background stays dark; an image without contrast is all zeros."""
    pixels = np.asarray(image, dtype=np.float32)
    if intensity_range is None:
        step = max(1, int(math.ceil(math.sqrt(pixels.size / max_samples))))
        lo, hi = np.percentile(pixels[::step, ::step], [low, high])
    else:
        lo, hi = intensity_range
    if hi - lo <= 0:
        return np.zeros(pixels.shape, dtype=np.float32)
    return np.clip((pixels - lo) / (hi - lo), 0, 1).astype(np.float32)


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resampling to ``shape`` (anti-aliased when shrinking), float32."""
    from skimage.transform import resize

    if tuple(image.shape) == tuple(shape):
        return image.astype(np.float32, copy=False)
    shrink = shape[0] < image.shape[0] or shape[1] < image.shape[1]
    return resize(image, shape, order=1, anti_aliasing=shrink, preserve_range=True).astype(np.float32)


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of a label image to ``shape`` (pixel centres mapped onto pixel centres)."""
    if tuple(labels.shape) == tuple(shape):
        return labels
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]).astype(np.int64), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]).astype(np.int64), labels.shape[1] - 1)
    return labels[np.ix_(rows, cols)]
