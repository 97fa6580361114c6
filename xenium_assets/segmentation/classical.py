"""Nuclei from a DAPI image with no training: smooth, threshold, split touching nuclei by the distance transform's
peaks, watershed (scikit-image). The baseline the learned segmenter is compared with, and the fallback.

Every length is a fraction of the expected nucleus diameter in pixels, so one setting serves any magnification:
an image's scale comes from its pixel size (µm per pixel and a nucleus diameter in µm), or is given directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from xenium_assets.segmentation.pixels import normalise


@dataclass(frozen=True)
class ClassicalParams:
    smooth: float = 0.04
    """Gaussian sigma, in nucleus diameters: enough to merge chromatin texture, not neighbouring nuclei."""
    peak_distance: float = 0.25
    """Least distance between two nuclei's centres, in diameters: closer maxima of the distance map are one nucleus."""
    peak_footprint_smooth: float = 0.05
    """Sigma of the smoothing of the distance map before its peaks are found, in diameters."""
    min_area: float = 0.1
    """Smallest object kept, as a fraction of the expected nucleus area."""
    low_percentile: float = 1.0
    high_percentile: float = 99.8
    """Intensities are scaled between these percentiles of the image before thresholding."""


def foreground_threshold(values: np.ndarray) -> float:
    """Li's minimum cross-entropy threshold: where nuclei differ in brightness several-fold, Otsu's splits the bright
    from the dim nuclei instead of the nuclei from the background."""
    from skimage.filters import threshold_li

    return float(threshold_li(values))


def segment_nuclei(
    image: np.ndarray,
    diameter_px: float,
    params: ClassicalParams = ClassicalParams(),
    *,
    intensity_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Instance labels (int32, 0 = background) of the nuclei in a 2-D DAPI image whose nuclei are about
    ``diameter_px`` pixels across; intensities scaled by the image's percentiles, or by ``intensity_range`` (a
    whole image's, for a tile of it). A blank image (no contrast) has no nuclei."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    if image.ndim != 2:
        raise ValueError(f"a 2-D DAPI image is needed, not shape {image.shape}")
    if not diameter_px > 0:
        raise ValueError(f"the nucleus diameter must be positive pixels, not {diameter_px}")
    scaled = normalise(image, params.low_percentile, params.high_percentile, intensity_range=intensity_range)
    if not scaled.any():  # no contrast
        return np.zeros(image.shape, dtype=np.int32)
    smooth = ndi.gaussian_filter(scaled, max(params.smooth * diameter_px, 0.5))
    foreground = smooth > foreground_threshold(smooth)
    foreground = ndi.binary_fill_holes(ndi.binary_opening(foreground, iterations=1))
    min_pixels = params.min_area * np.pi * (diameter_px / 2) ** 2
    components, n = ndi.label(foreground)
    if n == 0:
        return np.zeros(image.shape, dtype=np.int32)
    sizes = np.bincount(components.ravel())
    small = sizes < min_pixels
    small[0] = False
    foreground &= ~small[components]
    distance = ndi.distance_transform_edt(foreground)
    distance = ndi.gaussian_filter(distance, max(params.peak_footprint_smooth * diameter_px, 0.5))
    peaks = peak_local_max(
        distance,
        min_distance=max(1, int(round(params.peak_distance * diameter_px))),
        labels=ndi.label(foreground)[0],
        exclude_border=False,
    )
    markers = np.zeros(image.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    labels = watershed(-distance, markers, mask=foreground).astype(np.int32)
    sizes = np.bincount(labels.ravel())
    tiny = sizes < min_pixels
    tiny[0] = False
    labels[tiny[labels]] = 0
    return labels
