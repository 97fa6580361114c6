"""Nuclei from DAPI alone with a small U-Net: three classes per pixel (background, nucleus interior, nucleus
boundary), then instances by watershed from the interiors, the classic recipe for splitting touching nuclei.

Scale: the network sees every image with its nuclei about ``SegmenterConfig.diameter_px`` pixels across. An image
is resampled by (that size / its nucleus diameter in pixels), from a diameter given in pixels or from its pixel
size and a nucleus diameter in µm; the class probabilities are resampled back to the image and the instances are
assembled at the image's own resolution, so the labels have the input's shape.

Large images are segmented tile by tile, each tile read with a halo of a few nucleus diameters: a tile keeps the
objects whose centroid lies in it, so memory is bounded by the tile and no nucleus is cut by a tile edge.

Training (``train_segmenter``) takes (image, instance labels, nucleus diameter in pixels) triples: random crops at
the network's scale with a little zoom, flips, 90° turns, gamma, contrast, blur and noise, so that a network
trained on synthetic DAPI transfers to real stains. Weights are never downloaded (``encoder_weights=None``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from scipy import ndimage as ndi
from torch import nn
from torch.utils.data import DataLoader, Dataset

from xenium_assets.layout import SegmenterFiles
from xenium_assets.progress import Progress, no_progress
from xenium_assets.raster import Window, tile_windows
from xenium_assets.segmentation.pixels import normalise, resize_image, resize_labels

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
CLASSES = ("background", "interior", "boundary")
Pair = tuple[np.ndarray, np.ndarray, float]
"""(2-D image, int instance labels of the same shape, median nucleus diameter in pixels)."""


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


# ---------------------------------------------------------------------------------------------- targets


def targets(labels: np.ndarray, boundary_px: int = 2) -> np.ndarray:
    """Per pixel: 0 background, 1 nucleus interior, 2 nucleus boundary (uint8). The boundary is each object's
    inner boundary (against the background or another nucleus), ``boundary_px`` pixels wide."""
    from skimage.segmentation import find_boundaries

    labels = np.asarray(labels)
    inside = labels > 0
    boundary = find_boundaries(labels, mode="inner") & inside
    if boundary_px > 1:
        boundary = ndi.binary_dilation(boundary, iterations=boundary_px - 1) & inside
    out = np.zeros(labels.shape, dtype=np.uint8)
    out[inside] = INTERIOR
    out[boundary] = BOUNDARY
    return out


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


# ---------------------------------------------------------------------------------------------- model


class NucleusUnet(L.LightningModule):
    """smp.Unet (timm encoder, no pretrained weights) on one channel, three classes; weighted cross-entropy,
    AdamW, linear warm-up then cosine decay per step."""

    def __init__(
        self,
        config: dict | None = None,
        total_steps: int = 1,
    ) -> None:
        import segmentation_models_pytorch as smp

        super().__init__()
        self.save_hyperparameters()
        self.config = SegmenterConfig(**_config_fields(config or {}))
        c = self.config
        self.net = smp.Unet(
            c.encoder,
            encoder_weights=None,
            encoder_depth=c.encoder_depth,
            decoder_channels=tuple(c.decoder_channels),
            in_channels=1,
            classes=len(CLASSES),
        )
        self.loss = nn.CrossEntropyLoss(weight=torch.tensor(c.class_weights, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        loss = self.loss(self(x), y)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self):
        c = self.config
        optimizer = torch.optim.AdamW(self.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        total = max(1, self.hparams.total_steps)
        warmup = max(1, int(c.warmup_fraction * total))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def _config_fields(d: dict) -> dict:
    """A config dict (as saved in a checkpoint) with tuples restored."""
    out = dict(d)
    for k in ("decoder_channels", "class_weights"):
        if k in out:
            out[k] = tuple(out[k])
    return out


# ---------------------------------------------------------------------------------------------- training data


@dataclass(frozen=True)
class Prepared:
    """An image normalised to [0, 1] and resampled to the network's scale, with its labels."""

    image: np.ndarray
    labels: np.ndarray


def prepare(pair: Pair, config: SegmenterConfig) -> Prepared:
    image, labels, diameter = pair
    if image.shape != labels.shape or image.ndim != 2:
        raise ValueError(f"an image and its labels must be 2-D and alike, not {image.shape} and {labels.shape}")
    shape = network_shape(image.shape, diameter_in_px(diameter), config)
    scaled = resize_image(normalise(image, config.low_percentile, config.high_percentile), shape)
    return Prepared(scaled, resize_labels(np.asarray(labels), shape).astype(np.int32))


def augment_intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gamma, contrast and offset, sometimes blur, sometimes noise: stains, microscopes and cameras differ."""
    out = np.clip(image, 0, 1) ** np.exp(rng.uniform(-0.5, 0.5))
    out = out * rng.uniform(0.6, 1.3) + rng.uniform(-0.1, 0.1)
    if rng.random() < 0.4:
        out = ndi.gaussian_filter(out, rng.uniform(0.3, 1.5))
    if rng.random() < 0.5:
        out = out + rng.normal(0, rng.uniform(0.0, 0.08), out.shape)
    return out.astype(np.float32)


class CropDataset(Dataset):
    """``length`` random crops (side ``config.crop``) of prepared images, drawn by ``weights`` (default: their
    area at the network's scale); each index is
    its own random stream, so the crops are the same whatever the loader's order or workers."""

    def __init__(
        self,
        items: Sequence[Prepared],
        config: SegmenterConfig,
        length: int,
        seed: int,
        augment: bool,
        weights: Sequence[float] | None = None,
    ) -> None:
        self.items, self.config, self.length, self.seed, self.augment = list(items), config, length, seed, augment
        w = np.array([it.image.size for it in self.items] if weights is None else weights, dtype=np.float64)
        if len(w) != len(self.items) or not (w >= 0).all() or not w.sum() > 0:
            raise ValueError("one non-negative sampling weight per image is needed, not all zero")
        self.p = w / w.sum()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        rng = np.random.default_rng([self.seed, index])
        item = self.items[rng.choice(len(self.items), p=self.p)]
        zoom = math.exp(rng.uniform(-math.log(c.zoom_jitter), math.log(c.zoom_jitter))) if self.augment else 1.0
        side = max(8, round(c.crop / zoom))
        image, labels = item.image, item.labels
        if image.shape[0] < side or image.shape[1] < side:
            ph, pw = max(0, side - image.shape[0]), max(0, side - image.shape[1])
            image = np.pad(image, ((0, ph), (0, pw)))
            labels = np.pad(labels, ((0, ph), (0, pw)))
        y = int(rng.integers(0, image.shape[0] - side + 1))
        x = int(rng.integers(0, image.shape[1] - side + 1))
        img = resize_image(image[y : y + side, x : x + side], (c.crop, c.crop))
        lab = resize_labels(labels[y : y + side, x : x + side], (c.crop, c.crop))
        target = targets(lab, c.boundary_px)
        if self.augment:
            k = int(rng.integers(4))
            img, target = np.rot90(img, k), np.rot90(target, k)
            if rng.random() < 0.5:
                img, target = img[:, ::-1], target[:, ::-1]
            img = augment_intensity(img, rng)
        return (
            torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None],
            torch.from_numpy(np.ascontiguousarray(target).astype(np.int64)),
        )


# ---------------------------------------------------------------------------------------------- training


class _Progress(Callback):
    def __init__(self, progress: Progress, total: int) -> None:
        self.progress, self.total = progress, total
        self.rows: list[dict] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.progress("train segmenter", min(trainer.global_step, self.total), self.total)

    def on_validation_epoch_end(self, trainer, module) -> None:
        row = {"step": trainer.global_step}
        row.update({k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1})
        self.rows.append(row)


@dataclass
class SegmenterFit:
    checkpoint: Path
    history: pd.DataFrame
    best_val_loss: float
    steps: int
    seconds: float
    accelerator: str
    notes: list[str] = field(default_factory=list)


def train_segmenter(
    pairs: Sequence[Pair],
    config: SegmenterConfig = SegmenterConfig(),
    out_dir: str | Path = ".",
    *,
    val_pairs: Sequence[Pair] | None = None,
    weights: Sequence[float] | None = None,
    progress: Progress = no_progress,
    description: dict | None = None,
) -> SegmenterFit:
    """Train on random augmented crops of ``pairs`` for ``config.steps`` steps; validate every
    ``config.val_every`` steps on fixed, unaugmented crops of ``val_pairs`` (default: of ``pairs``) and keep the
    best weights. ``weights``: how often each pair is drawn, relative to the others (default: by its area
    at the network's scale). Writes the checkpoint, the card (config, ``description``, figures) and the history into
    ``out_dir`` (``SegmenterFiles``)."""
    from xenium_assets.training.train import _quiet_lightning

    if not pairs:
        raise ValueError("no training images")
    _quiet_lightning()
    files = SegmenterFiles(Path(out_dir))
    files.folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    L.seed_everything(config.seed, workers=True, verbose=False)
    train_items = [prepare(p, config) for p in pairs]
    val_items = [prepare(p, config) for p in val_pairs] if val_pairs else train_items
    train = CropDataset(
        train_items, config, config.steps * config.batch_size, config.seed, augment=True, weights=weights
    )
    val = CropDataset(val_items, config, config.val_crops, config.seed + 1_000_003, augment=False)
    module = NucleusUnet(config.as_dict(), total_steps=config.steps)
    best = ModelCheckpoint(
        dirpath=files.folder,
        filename=files.checkpoint.stem,
        monitor="val_loss",
        mode="min",
        save_top_k=1,
        enable_version_counter=False,
    )
    tracker = _Progress(progress, config.steps)
    trainer = L.Trainer(
        max_epochs=1,
        max_steps=config.steps,
        val_check_interval=min(config.val_every, config.steps),
        accelerator="auto",
        devices=1,
        callbacks=[best, tracker],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=files.folder,
        num_sanity_val_steps=0,
    )
    trainer.fit(
        module,
        train_dataloaders=DataLoader(train, batch_size=config.batch_size, shuffle=False),
        val_dataloaders=DataLoader(val, batch_size=config.batch_size),
    )
    progress("train segmenter", config.steps, config.steps)
    seconds = time.perf_counter() - start
    history = pd.DataFrame(tracker.rows)
    history.to_csv(files.history, index=False)
    fit = SegmenterFit(
        checkpoint=Path(best.best_model_path),
        history=history,
        best_val_loss=float(best.best_model_score) if best.best_model_score is not None else float("nan"),
        steps=int(trainer.global_step),
        seconds=seconds,
        accelerator=trainer.accelerator.__class__.__name__.replace("Accelerator", "").lower(),
    )
    card = {
        "config": config.as_dict(),
        "training_images": len(pairs),
        "validation_images": len(val_pairs) if val_pairs else 0,
        "best_val_loss": fit.best_val_loss,
        "steps": fit.steps,
        "seconds": round(seconds, 1),
        "accelerator": fit.accelerator,
        **(description or {}),
    }
    files.card.write_text(json.dumps(card, indent=2, default=str))
    return fit


# ---------------------------------------------------------------------------------------------- inference


class LearnedSegmenter:
    """A trained network and the instance assembly: ``segmenter(image, diameter_px)`` -> int32 labels of the
    image's shape (the ``Segmenter`` signature of ``reference_images.evaluate``).

    ``tile``: side of the tiles at the network's scale (pixels); an image up to this size (plus its halo) is
    segmented in one piece. ``halo``: context read around each tile, in nucleus diameters."""

    def __init__(
        self,
        module: NucleusUnet,
        tile: int = 1024,
        halo: float = 3.0,
        assembly: AssemblyParams = AssemblyParams(),
    ) -> None:
        self.module = module.eval()
        self.config = module.config
        self.tile, self.halo, self.assembly = tile, halo, assembly

    @classmethod
    def load(cls, checkpoint: str | Path, **kwargs) -> LearnedSegmenter:
        return cls(NucleusUnet.load_from_checkpoint(checkpoint, map_location="cpu"), **kwargs)

    def __call__(self, image: np.ndarray, diameter_px: float) -> np.ndarray:
        return self.segment(image, diameter_px)

    def probabilities(self, image: np.ndarray, diameter_px: float) -> np.ndarray:
        """(3, H, W) class probabilities of an image already normalised to [0, 1], at the image's own scale."""
        shape = network_shape(image.shape, diameter_px, self.config)
        scaled = resize_image(image, shape)
        multiple = 2**self.config.encoder_depth
        ph, pw = -shape[0] % multiple, -shape[1] % multiple
        padded = np.pad(scaled, ((0, ph), (0, pw)), mode="reflect" if min(shape) > max(ph, pw) else "constant")
        device = self.module.device
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
