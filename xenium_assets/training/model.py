"""The classifier: a timm backbone in a LightningModule. It knows tensors, not files."""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from xenium_assets.training.backbone import create_backbone


def metric_set(num_classes: int, prefix: str) -> MetricCollection:
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "bal_acc": MulticlassAccuracy(num_classes, average="macro"),
            "macro_f1": MulticlassF1Score(num_classes, average="macro"),
        },
        prefix=prefix,
    )


class CellClassifier(L.LightningModule):
    """Cross-entropy (optionally class-weighted), AdamW, linear warm-up then cosine decay per step."""

    def __init__(
        self,
        backbone: str = "resnet10t",
        in_chans: int = 3,
        classes: tuple[str, ...] = (),
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        warmup_epochs: float = 1.0,
        max_epochs: int = 10,
        steps_per_epoch: int = 1,
        class_weights: list[float] | None = None,
        checkpoint: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.classes = list(classes)
        self.model = create_backbone(backbone, in_chans, len(classes), checkpoint)
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.loss = nn.CrossEntropyLoss(weight=weights)
        self.train_metrics = metric_set(len(classes), "train_")
        self.val_metrics = metric_set(len(classes), "val_")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _step(self, batch, metrics: MetricCollection, stage: str) -> torch.Tensor:
        x, y = batch[0], torch.as_tensor(batch[1], device=self.device)
        logits = self(x)
        loss = self.loss(logits, y)
        metrics.update(logits, y)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, batch_size=len(y), prog_bar=stage == "val")
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, self.train_metrics, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, self.val_metrics, "val")

    def on_train_epoch_end(self) -> None:
        self.log_dict(self.train_metrics.compute())
        self.train_metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True)
        self.val_metrics.reset()

    def predict_step(self, batch, batch_idx: int) -> dict:
        return {"logits": self(batch[0]).float().cpu(), "y": torch.as_tensor(batch[1]), "keys": list(batch[2])}

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        total = max(1, hp.max_epochs * hp.steps_per_epoch)
        warmup = max(1, int(hp.warmup_epochs * hp.steps_per_epoch))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1 + math.cos(math.pi * progress))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
