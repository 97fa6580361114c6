"""The classifier's network: a timm backbone built without downloads, and its weights read back from a training
checkpoint without Lightning, so that a prediction worker does not load it (about 90 MB per worker)."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn


def create_backbone(name: str, in_chans: int, num_classes: int, checkpoint: str | None = None) -> nn.Module:
    """``timm.create_model`` without downloads; a local checkpoint, if given, is adapted to the channels
    and classes (timm re-initialises the classifier and folds the first convolution)."""
    if checkpoint:
        return timm.create_model(
            name,
            pretrained=True,
            pretrained_cfg_overlay={"file": checkpoint},
            in_chans=in_chans,
            num_classes=num_classes,
        )
    return timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=num_classes)


def load_backbone(checkpoint: str | Path) -> nn.Module:
    """The network of a ``training.model.CellClassifier`` checkpoint, in eval mode: the same logits as the
    LightningModule's."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    hp = saved["hyper_parameters"]
    net = create_backbone(hp["backbone"], hp["in_chans"], len(hp["classes"]))
    prefix = "model."
    net.load_state_dict({k[len(prefix) :]: v for k, v in saved["state_dict"].items() if k.startswith(prefix)})
    return net.eval()
