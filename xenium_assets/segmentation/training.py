"""Training the nucleus U-Net of ``segmentation.learned`` with Lightning.

``train_segmenter`` takes (image, instance labels, nucleus diameter in pixels) triples: random crops at the network's
scale with a little zoom, flips, 90° turns, gamma, contrast, blur and noise, so that a network trained on synthetic
DAPI transfers to real stains. Weights are never downloaded (``encoder_weights=None``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
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
from xenium_assets.segmentation.learned import (
    BOUNDARY,
    INTERIOR,
    SegmenterConfig,
    build_unet,
    diameter_in_px,
    network_shape,
)
from xenium_assets.segmentation.pixels import normalise, resize_image, resize_labels

Pair = tuple[np.ndarray, np.ndarray, float]
"""(2-D image, int instance labels of the same shape, median nucleus diameter in pixels)."""


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


# ---------------------------------------------------------------------------------------------- model


class NucleusUnet(L.LightningModule):
    """``learned.build_unet``'s network (``net``: what ``learned.load_unet`` reads back); weighted cross-entropy,
    AdamW, linear warm-up then cosine decay per step."""

    def __init__(
        self,
        config: dict | None = None,
        total_steps: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.config = SegmenterConfig.from_dict(config or {})
        self.net = build_unet(self.config)
        self.loss = nn.CrossEntropyLoss(weight=torch.tensor(self.config.class_weights, dtype=torch.float32))

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
