"""Patches as the network's input tensors: the one conversion training and prediction share, so a deployed model
reads exactly what it was trained on. It imports torch and nothing of Lightning or WebDataset."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from xenium_assets.patches.masks import NEEDS_CELL_BOUNDARY, cell, nucleus, perinuclear, ring


def mask_channels(mask: np.ndarray, representation: str) -> tuple[np.ndarray, np.ndarray]:
    """The nucleus and the region around it that a representation reads: the ring grown from the nucleus, or the
    rest of the Xenium cell (for the representations that read the cell boundary)."""
    around = perinuclear(mask) if representation in NEEDS_CELL_BOUNDARY else ring(mask)
    return nucleus(mask), around


def to_input(dapi: np.ndarray, mask: np.ndarray, low: float, high: float, representation: str) -> torch.Tensor:
    """(C, P, P) float tensor, or (n, C, P, P) for n patches: DAPI scaled so the sample's 1st..99.9th percentiles
    map to 0..1."""
    x = (torch.from_numpy(dapi.astype(np.float32)) - low) / max(high - low, 1.0)
    if representation == "dapi":
        return x.unsqueeze(-3)
    if representation == "masked_dapi":
        return (x * torch.from_numpy(cell(mask))).unsqueeze(-3)
    inner, around = mask_channels(mask, representation)
    return torch.stack([x, torch.from_numpy(inner).float(), torch.from_numpy(around).float()], dim=-3)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (C, H, W) or (B, C, H, W) inputs to ``size`` (bilinear; mask channels stay binary)."""
    if x.shape[-1] == size:
        return x
    batched = x if x.ndim == 4 else x[None]
    out = F.interpolate(batched, size=(size, size), mode="bilinear", align_corners=False)
    if out.shape[1] == 3:
        out[:, 1:] = (out[:, 1:] > 0.5).float()
    return out if x.ndim == 4 else out[0]
