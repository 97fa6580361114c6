"""One training run: seeds, the Lightning Trainer, early stopping and the best checkpoint on
validation macro-F1, and per-epoch history for the report and the tracking server."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from xenium_assets.layout import ModelFiles
from xenium_assets.training.data import PatchDataModule
from xenium_assets.training.model import CellClassifier

MONITOR = "val_macro_f1"


def _quiet_lightning() -> None:
    """Lightning announces GPUs, TPUs and product tips at INFO on every Trainer: keep warnings only."""
    for name in ("lightning.pytorch", "pytorch_lightning", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


@dataclass(frozen=True)
class TrainConfig:
    backbone: str = "resnet10t"
    checkpoint: str | None = None
    """A local timm checkpoint to start from (nothing is downloaded)."""
    max_epochs: int = 8
    patience: int = 3
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    seed: int = 0


class _History(Callback):
    """Collects the logged metrics at the end of each epoch (and reports them)."""

    def __init__(self, report: Callable[[str], None]) -> None:
        self.rows: list[dict] = []
        self.report = report

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Runs after the epoch's validation and after the module logged its epoch metrics.
        row = {"epoch": trainer.current_epoch}
        row.update({k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1})
        self.rows.append(row)
        shown = ", ".join(f"{k} {row[k]:.3f}" for k in ("train_loss", "val_loss", MONITOR) if k in row)
        self.report(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {shown}")


@dataclass
class FitResult:
    checkpoint: Path
    history: pd.DataFrame
    best_val_macro_f1: float
    epochs: int
    accelerator: str
    notes: list[str] = field(default_factory=list)


def fit(
    datamodule: PatchDataModule,
    config: TrainConfig,
    out_dir: Path,
    *,
    loggers: list | None = None,
    report: Callable[[str], None] = print,
    progress_bar: bool = False,
) -> FitResult:
    """Train on the datamodule's train split, select on its validation split; best weights in ``out_dir``."""
    _quiet_lightning()
    L.seed_everything(config.seed, workers=True, verbose=False)
    steps = datamodule.steps_per_epoch()
    weights = datamodule.class_weights()
    module = CellClassifier(
        backbone=config.backbone,
        in_chans=datamodule.in_chans,
        classes=tuple(datamodule.classes),
        lr=config.lr,
        weight_decay=config.weight_decay,
        warmup_epochs=config.warmup_epochs,
        max_epochs=config.max_epochs,
        steps_per_epoch=steps,
        class_weights=weights.tolist() if weights is not None else None,
        checkpoint=config.checkpoint,
    )
    best = ModelCheckpoint(
        dirpath=out_dir,
        filename=ModelFiles(out_dir).checkpoint.stem,
        monitor=MONITOR,
        mode="max",
        save_top_k=1,
        enable_version_counter=False,
    )
    history = _History(report)
    gpu = torch.cuda.is_available()
    trainer = L.Trainer(
        max_epochs=config.max_epochs,
        accelerator="auto",
        devices=1,
        precision="16-mixed" if gpu else "32-true",
        callbacks=[best, EarlyStopping(monitor=MONITOR, mode="max", patience=config.patience), history],
        logger=loggers or False,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        default_root_dir=out_dir,
        log_every_n_steps=max(1, steps // 4),
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=datamodule)
    frame = pd.DataFrame(history.rows)
    return FitResult(
        checkpoint=Path(best.best_model_path),
        history=frame,
        best_val_macro_f1=float(best.best_model_score) if best.best_model_score is not None else float("nan"),
        epochs=len(frame),
        accelerator=trainer.accelerator.__class__.__name__.replace("Accelerator", "").lower(),
    )


def predict(checkpoint: Path, datamodule: PatchDataModule, split: str = "test") -> pd.DataFrame:
    """Logits of every sample of a split, with its key and true class index."""
    _quiet_lightning()
    module = CellClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    module.eval()
    trainer = L.Trainer(
        accelerator="auto", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    batches = trainer.predict(module, dataloaders=loader)
    logits = torch.cat([b["logits"] for b in batches]).numpy()
    frame = pd.DataFrame(logits, columns=[f"logit_{c}" for c in module.classes])
    frame.insert(0, "y", torch.cat([b["y"] for b in batches]).numpy())
    frame.insert(0, "key", [k for b in batches for k in b["keys"]])
    frame["pred"] = logits.argmax(axis=1)
    return frame
