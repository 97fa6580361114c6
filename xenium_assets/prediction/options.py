"""How a prediction runs: its defaults live here once, for the command line, the asset and the benchmark (this
module imports nothing heavy, so the CLI can show them)."""

from __future__ import annotations

from dataclasses import dataclass

LABEL_CHUNK = 1024
"""Chunk side of the label image and of the SpatialData image pyramid."""


@dataclass(frozen=True)
class PredictOptions:
    tile_px: int = 2048
    """Side of the tiles that run in parallel (a multiple of the label image's 1024 px chunks)."""

    def __post_init__(self) -> None:
        if self.tile_px <= 0 or self.tile_px % LABEL_CHUNK:
            raise ValueError(f"the tile side must be a positive multiple of {LABEL_CHUNK} px, not {self.tile_px}")
