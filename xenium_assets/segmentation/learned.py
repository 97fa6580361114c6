"""The learned nucleus segmenter at work: a small U-Net's three classes per pixel (background, nucleus interior,
nucleus boundary), then instances by watershed from the interiors, the classic recipe for splitting touching nuclei.

Scale: the network sees every image with its nuclei about ``SegmenterConfig.diameter_px`` pixels across. An image
is resampled by (that size / its nucleus diameter in pixels), from a diameter given in pixels or from its pixel
size and a nucleus diameter in µm; the class probabilities are resampled back to the image and the instances are
assembled at the image's own resolution, so the labels have the input's shape.

Large images are segmented tile by tile, each tile read with a halo of a few nucleus diameters: a tile keeps the
objects whose centroid lies in it, so memory is bounded by the tile and no nucleus is cut by a tile edge.

Nothing here imports Lightning (training does, in ``segmentation.training``): a prediction worker loads the weights
from the checkpoint into the bare network, about 90 MB less per worker.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import nn

from xenium_assets.raster import Window, tile_windows
from xenium_assets.segmentation.pixels import normalise, resize_image

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
CLASSES = ("background", "interior", "boundary")


@dataclass(frozen=True)
class SegmenterConfig:
    encoder: str = "tu-regnetx_002"
    """A timm encoder (smp's ``tu-`` prefix); small, so that training takes minutes on two CPU cores."""
    encoder_depth: int = 4
    decoder_channels: tuple[int, ...] = (64, 32, 16, 16)
    diameter_px: float = 16.0
    """Nucleus diameter at which the network works: every image is resampled to it."""
    boundary_px: int = 2
    """Width of the boundary class, at the network's scale (inner boundary, thickened inwards)."""
    crop: int = 128
    batch_size: int = 8
    steps: int = 600
    val_every: int = 100
    """Validation (and checkpoint selection) every this many steps."""
    val_crops: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    class_weights: tuple[float, float, float] = (1.0, 1.0, 2.0)
    zoom_jitter: float = 1.25
    """Crops are zoomed by a factor drawn log-uniformly in [1 / jitter, jitter]: real nuclei vary in size."""
    low_percentile: float = 1.0
    high_percentile: float = 99.8
    seed: int = 0

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> SegmenterConfig:
        """A config as saved in a checkpoint (lists for tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass(frozen=True)
class AssemblyParams:
    """Instances from class probabilities; areas are fractions of the expected nucleus area."""

    threshold: float = 0.5
    """Foreground: interior + boundary probability above this."""
    marker_threshold: float = 0.85
    """Markers: interior probability above this. Stricter than the foreground, because the network draws too
    little boundary where real nuclei touch: on the 14 tuning images of dsb2018 (trained on them too) F1 rose
    from 0.64 at 0.5 to 0.69 at 0.7 and 0.75 at 0.85."""
    min_marker_area: float = 0.03
    min_area: float = 0.1


# ---------------------------------------------------------------------------------------------- pixels and scale


def network_shape(shape: tuple[int, int], diameter_px: float, config: SegmenterConfig) -> tuple[int, int]:
    """The image's shape at the network's scale."""
    factor = config.diameter_px / diameter_px
    return max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))


def diameter_in_px(
    diameter_px: float | None = None, pixel_size_um: float | None = None, nucleus_diameter_um: float | None = None
) -> float:
    """An image's nucleus diameter in pixels: given, or from its pixel size and a nucleus diameter in µm."""
    if diameter_px is None:
        if pixel_size_um is None or nucleus_diameter_um is None:
            raise ValueError("give the nucleus diameter in pixels, or the pixel size and the nucleus diameter in µm")
        diameter_px = nucleus_diameter_um / pixel_size_um
    if not diameter_px > 0:
        raise ValueError(f"the nucleus diameter must be positive pixels, not {diameter_px}")
    return float(diameter_px)


# ---------------------------------------------------------------------------------------------- the network


def build_unet(config: SegmenterConfig) -> nn.Module:
    """smp.Unet (timm encoder, no pretrained weights) on one channel, one output per class."""
    import segmentation_models_pytorch as smp

    return smp.Unet(
        config.encoder,
        encoder_weights=None,
        encoder_depth=config.encoder_depth,
        decoder_channels=tuple(config.decoder_channels),
        in_channels=1,
        classes=len(CLASSES),
    )


def load_unet(checkpoint: str | Path) -> tuple[nn.Module, SegmenterConfig]:
    """The network of a training checkpoint (``segmentation.training.NucleusUnet``), in eval mode, and its config."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    config = SegmenterConfig.from_dict(saved["hyper_parameters"]["config"])
    net = build_unet(config)
    prefix = "net."
    net.load_state_dict({k[len(prefix) :]: v for k, v in saved["state_dict"].items() if k.startswith(prefix)})
    return net.eval(), config


# ---------------------------------------------------------------------------------------------- instances


def assemble(probabilities: np.ndarray, diameter_px: float, params: AssemblyParams = AssemblyParams()) -> np.ndarray:
    """Instance labels (int32) from (3, H, W) class probabilities at an image's own scale: connected interiors are
    the markers, interior + boundary the foreground, and a watershed on the interior probability splits it."""
    from skimage.segmentation import relabel_sequential, watershed

    area = math.pi * (diameter_px / 2) ** 2
    interior = probabilities[INTERIOR] > params.marker_threshold
    foreground = probabilities[INTERIOR] + probabilities[BOUNDARY] > params.threshold
    markers, n = ndi.label(interior)
    if n == 0:
        return np.zeros(interior.shape, dtype=np.int32)
    small = np.bincount(markers.ravel()) < params.min_marker_area * area
    small[0] = False
    markers[small[markers]] = 0
    labels = watershed(-probabilities[INTERIOR], markers, mask=foreground).astype(np.int32)
    tiny = np.bincount(labels.ravel()) < params.min_area * area
    tiny[0] = False
    labels[tiny[labels]] = 0
    return relabel_sequential(labels)[0].astype(np.int32)


def _centroids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean row and column of every label 1..max (NaN for an absent one)."""
    n = int(labels.max()) + 1
    rows, cols = np.indices(labels.shape)
    count = np.bincount(labels.ravel(), minlength=n).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.bincount(labels.ravel(), weights=rows.ravel(), minlength=n) / count
        c = np.bincount(labels.ravel(), weights=cols.ravel(), minlength=n) / count
    return r, c


# ---------------------------------------------------------------------------------------------- inference


class LearnedSegmenter:
    """A trained network (``build_unet``) and the instance assembly: ``segmenter(image, diameter_px)`` -> int32
    labels of the image's shape (the ``Segmenter`` signature of ``reference_images.evaluate``).

    ``tile``: side of the tiles at the network's scale (pixels); an image up to this size (plus its halo) is
    segmented in one piece. ``halo``: context read around each tile, in nucleus diameters."""

    def __init__(
        self,
        module: nn.Module,
        config: SegmenterConfig,
        tile: int = 1024,
        halo: float = 3.0,
        assembly: AssemblyParams = AssemblyParams(),
    ) -> None:
        self.module = module.eval()
        self.config = config
        self.tile, self.halo, self.assembly = tile, halo, assembly

    @classmethod
    def load(cls, checkpoint: str | Path, **kwargs) -> LearnedSegmenter:
        return cls(*load_unet(checkpoint), **kwargs)

    def __call__(self, image: np.ndarray, diameter_px: float) -> np.ndarray:
        return self.segment(image, diameter_px)

    def probabilities(self, image: np.ndarray, diameter_px: float) -> np.ndarray:
        """(3, H, W) class probabilities of an image already normalised to [0, 1], at the image's own scale."""
        shape = network_shape(image.shape, diameter_px, self.config)
        scaled = resize_image(image, shape)
        multiple = 2**self.config.encoder_depth
        ph, pw = -shape[0] % multiple, -shape[1] % multiple
        padded = np.pad(scaled, ((0, ph), (0, pw)), mode="reflect" if min(shape) > max(ph, pw) else "constant")
        device = next(self.module.parameters()).device
        with torch.inference_mode():
            logits = self.module(torch.from_numpy(padded)[None, None].to(device))
            probs = torch.softmax(logits.float(), dim=1)[0, :, : shape[0], : shape[1]].cpu().numpy()
        return np.stack([resize_image(p, image.shape) for p in probs])

    def segment(
        self,
        image: np.ndarray,
        diameter_px: float | None = None,
        *,
        pixel_size_um: float | None = None,
        nucleus_diameter_um: float | None = None,
        tile: int | None = None,
        intensity_range: tuple[float, float] | None = None,
    ) -> np.ndarray:
        """Instance labels (int32, 0: background) of a 2-D image; its nuclei are ``diameter_px`` across, or
        ``nucleus_diameter_um`` at ``pixel_size_um``. ``tile`` overrides the segmenter's tile side;
        ``intensity_range`` the image's own percentiles (a whole image's, for a tile of it)."""
        if image.ndim != 2:
            raise ValueError(f"a 2-D image is needed, not shape {image.shape}")
        diameter = diameter_in_px(diameter_px, pixel_size_um, nucleus_diameter_um)
        c = self.config
        pixels = normalise(image, c.low_percentile, c.high_percentile, intensity_range=intensity_range)
        scale = diameter / c.diameter_px  # image pixels per network pixel
        side = max(16, round((tile or self.tile) * scale))
        halo = max(1, math.ceil(self.halo * diameter))
        height, width = image.shape
        if height <= side + 2 * halo and width <= side + 2 * halo:
            return assemble(self.probabilities(pixels, diameter), diameter, self.assembly)
        out = np.zeros(image.shape, dtype=np.int32)
        next_label = 1
        for core in tile_windows(height, width, side):
            y0, x0 = max(core.y0 - halo, 0), max(core.x0 - halo, 0)
            y1, x1 = min(core.y0 + core.h + halo, height), min(core.x0 + core.w + halo, width)
            padded = Window(y0, x0, y1 - y0, x1 - x0)
            labels = assemble(self.probabilities(pixels[padded.slices], diameter), diameter, self.assembly)
            if not labels.max():
                continue
            r, c_ = _centroids(labels)
            r, c_ = r + y0, c_ + x0
            owned = (r >= core.y0) & (r < core.y0 + core.h) & (c_ >= core.x0) & (c_ < core.x0 + core.w)
            owned[0] = False
            keep = np.flatnonzero(owned)
            lut = np.zeros(len(owned), dtype=np.int32)
            lut[keep] = np.arange(next_label, next_label + len(keep), dtype=np.int32)
            next_label += len(keep)
            mapped = lut[labels]
            region = out[padded.slices]
            free = (mapped > 0) & (region == 0)
            region[free] = mapped[free]
        return out
