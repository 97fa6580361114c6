"""A trained classifier as prediction uses it: its card says what patches it reads, and whether a DAPI-only image
can give them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xenium_assets.layout import ModelFiles
from xenium_assets.patches.grid import PatchSpec
from xenium_assets.patches.masks import NEEDS_CELL_BOUNDARY

BATCH = 256
"""Patches classified at once: about 13 MB of 3 x 64 x 64 float inputs."""


class ModelInputError(ValueError):
    """The model cannot be applied to a DAPI-only image (or its card is from an older version)."""


@dataclass
class DeployedClassifier:
    """The network (the bare timm backbone: prediction loads no Lightning), its classes and the patches it was
    trained on."""

    module: object
    classes: list[str]
    representation: str
    input_px: int
    spec: PatchSpec
    folder: Path
    training_percentiles: dict[str, tuple[float, float]]

    @classmethod
    def load(cls, folder: str | Path) -> DeployedClassifier:
        """The model in ``folder`` (``ModelFiles``); a ModelInputError naming the fix when its input needs the Xenium
        cell boundary or its card predates what prediction needs."""
        from xenium_assets.training.backbone import load_backbone

        files = ModelFiles(Path(folder))
        if not files.card.exists():
            raise ModelInputError(f"{files.card}: no model card; materialize trained_model")
        card = files.read_card()
        representation = card["data"]["representation"]
        if representation in NEEDS_CELL_BOUNDARY:
            raise ModelInputError(
                f"{files.card}: the model reads {representation}, which needs the Xenium cell boundary that a "
                "DAPI-only image does not have; materialize trained_model with representation dapi_nucleus_ring "
                "(the default)"
            )
        patch = card.get("patch")
        if patch is None or (representation == "dapi_nucleus_ring" and patch.get("ring_um") is None):
            raise ModelInputError(
                f"{files.card}: trained before model cards recorded their patches; re-materialize trained_model"
            )
        module = load_backbone(files.folder / card["checkpoint"])
        spec = PatchSpec(
            size_um=patch["size_um"], pixel_size_um=patch["pixel_size_um"], ring_um=patch.get("ring_um") or 0.0
        )
        return cls(
            module=module,
            classes=list(card["classes"]),
            representation=representation,
            input_px=int(card["data"]["input_px"]),
            spec=spec,
            folder=files.folder,
            training_percentiles={k: tuple(v) for k, v in card["percentiles"].items()},
        )

    def probabilities(self, dapi: np.ndarray, masks: np.ndarray, low: float, high: float) -> np.ndarray:
        """(n, classes) softmax of patches ``dapi`` (n, P, P raw intensities) with ``masks`` (n, P, P mask bytes),
        normalised between the image's ``low`` and ``high`` percentiles as training normalised each sample."""
        import torch

        from xenium_assets.training.tensors import resize, to_input

        out = np.zeros((len(dapi), len(self.classes)), dtype=np.float32)
        device = next(self.module.parameters()).device
        with torch.inference_mode():
            for start in range(0, len(dapi), BATCH):
                x = to_input(dapi[start : start + BATCH], masks[start : start + BATCH], low, high, self.representation)
                logits = self.module(resize(x, self.input_px).to(device))
                out[start : start + BATCH] = torch.softmax(logits.float(), dim=1).cpu().numpy()
        return out
