"""Spatial splits with buffers: square blocks of tiles go to train, validation or test, never single cells, and
validation and test cells whose patch reaches another split are left out.

Neighbouring cells share appearance and context, and a patch shows its neighbours: a test patch that holds
pixels of a training cell, or a training patch that holds a test cell, lets the model meet the test set in
training. So a validation or test cell is kept only when its patch window, widened by a margin (one patch width
by default), lies wholly inside tiles of its own split: its patch then holds no pixel of a training cell's nucleus,
and no training patch reaches it. Blocks are drawn at random (never preferring class-pure tiles, which are region
cores), retried until every class is in every split where the data allows; they are wide enough that the buffer
leaves most of a block's cells (on the demo's small slides a block is a quadrant, on a real slide one tile).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from xenium_assets.patches.grid import tile_index

SPLITS = ("train", "val", "test")
BUFFER = "buffer"
BLOCK_BUFFERS = 8
"""A split block is at least this many buffer widths wide by default: a block bordered by other splits on all
sides keeps (1 - 2/8)^2, about 56 %, of its cells."""
BLOCK_TILES = (1, 2, 4)
"""Block sides in tiles: divisors of the 8 x 8 grid, so blocks are equal; at most a quadrant, so a sample has
at least four blocks to share out."""
DRAWS = 200
"""Random block assignments tried until one has every class in every split."""


@dataclass(frozen=True)
class SplitConfig:
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    holdout_sample: str | None = None
    """Put every tile of this sample in the test set (and only those)."""
    block_um: float | None = None
    """Side of the square groups of tiles assigned together (rounded up to 1, 2 or 4 tiles); None: BLOCK_BUFFERS
    buffer widths."""
    margin_um: float | None = None
    """How far beyond a validation or test cell's patch window other splits must stay; None: one patch width."""
    seed: int = 0

    def margin(self, patch_um: float) -> float:
        return patch_um if self.margin_um is None else self.margin_um

    def describe(self) -> str:
        margin = "one patch width" if self.margin_um is None else f"{self.margin_um:g} µm"
        buffer = f"validation and test cells whose patch window plus {margin} reaches another split are left out"
        if self.holdout_sample:
            return (
                f"spatial: sample {self.holdout_sample!r} held out for test; the other samples' tile blocks split "
                f"{1 - self.val_fraction:.0%} train / {self.val_fraction:.0%} validation; {buffer}"
            )
        return (
            f"spatial: blocks of whole tiles, about {1 - self.val_fraction - self.test_fraction:.0%} train / "
            f"{self.val_fraction:.0%} validation / {self.test_fraction:.0%} test of cells; {buffer}"
        )


def buffer_width(index: pd.DataFrame, config: SplitConfig) -> float:
    """Half a patch plus the margin, in µm: how far a kept cell's centre stays from another split's tiles."""
    patch_um = float(index["patch_um"].max())
    return patch_um / 2 + config.margin(patch_um)


def tile_blocks(tiles: pd.DataFrame, width_um: float, config: SplitConfig) -> pd.Series:
    """Block of each (sample, tile) row: squares of n x n tiles of the fixed grid."""
    side = (tiles["tile_x1"] - tiles["tile_x0"]).median()
    wanted = config.block_um if config.block_um else BLOCK_BUFFERS * width_um
    tiles_wide = math.ceil(wanted / max(side, 1e-9) - 1e-9)
    n = min((d for d in BLOCK_TILES if d >= tiles_wide), default=BLOCK_TILES[-1])
    rc = np.array([tile_index(t) for t in tiles["tile"]]).reshape(-1, 2)
    return tiles["sample"].astype(str) + "/" + [f"{r // n}-{c // n}" for r, c in rc]


def _fill(order: list, cells: pd.Series, target: float) -> list:
    """Blocks from ``order`` while adding one brings their cell total closer to ``target`` (at least one)."""
    chosen, total = [], 0.0
    for block in order:
        if chosen and abs(total + cells[block] - target) >= abs(total - target):
            break
        chosen.append(block)
        total += cells[block]
    return chosen


def spatial_split(index: pd.DataFrame, classes: list[str], config: SplitConfig) -> pd.DataFrame:
    """(sample, tile) -> split, for the tiles of ``index`` (sample, tile, label, tile bounds, patch_um per cell)."""
    tiles = index.drop_duplicates(["sample", "tile"])[["sample", "tile", "tile_x0", "tile_x1"]].reset_index(drop=True)
    tiles["block"] = tile_blocks(tiles, buffer_width(index, config), config).to_numpy()
    cell_block = index[["sample", "tile"]].merge(tiles[["sample", "tile", "block"]], on=["sample", "tile"])["block"]
    cell_block.index = index.index
    counts = pd.crosstab(cell_block, index["label"]).reindex(columns=classes, fill_value=0)
    cells = counts.sum(axis=1)
    total = float(cells.sum())
    if config.holdout_sample:
        test = [b for b in counts.index if b.split("/")[0] == config.holdout_sample]
        if not test:
            raise ValueError(f"holdout sample {config.holdout_sample!r} has no shards")
    rng = np.random.default_rng(config.seed)
    best, best_present = None, -1
    for _ in range(DRAWS):
        order = list(rng.permutation(counts.index))
        if not config.holdout_sample:
            test = _fill(order, cells, config.test_fraction * total)
        rest = [b for b in order if b not in set(test)]
        val = _fill(rest, cells, config.val_fraction * total)
        train = [b for b in rest if b not in set(val)]
        present = sum(int((counts.loc[part] > 0).any(axis=0).sum()) for part in (train, val, test))
        if present > best_present:
            best, best_present = (train, val, test), present
        if present == 3 * len(classes):
            break
    split = {b: name for name, part in zip(SPLITS, best, strict=True) for b in part}
    # A class must stay trainable: if every block with it left train, bring back the smallest one.
    for cls in classes:
        if counts.loc[[b for b in counts.index if split[b] == "train"], cls].sum() == 0 and counts[cls].sum() > 0:
            donors = sorted((b for b in counts.index if counts.loc[b, cls] > 0), key=lambda b: cells[b])
            split[donors[0]] = "train"
    return pd.DataFrame({"sample": tiles["sample"], "tile": tiles["tile"], "split": [split[b] for b in tiles["block"]]})


def cell_splits(index: pd.DataFrame, assignment: pd.DataFrame, config: SplitConfig) -> pd.Series:
    """Each cell's split, ``BUFFER`` for a validation or test cell whose window plus margin reaches another split's
    tile (tile bounds and patch side from ``index``, as ``load_index`` gives them)."""
    merged = index[["sample", "tile", "x_um", "y_um"]].merge(assignment, on=["sample", "tile"], how="left")
    split = merged["split"].to_numpy(dtype=object)
    reach = buffer_width(index, config)
    tiles = index.drop_duplicates(["sample", "tile"]).merge(assignment, on=["sample", "tile"])
    for sample, rows in merged.groupby("sample", sort=False).indices.items():
        own = tiles[tiles["sample"] == sample]
        x0, y0, x1, y1 = (own[c].to_numpy()[None] for c in ("tile_x0", "tile_y0", "tile_x1", "tile_y1"))
        tile_split = own["split"].to_numpy()[None]
        held = rows[np.isin(split[rows], ("val", "test"))]
        for start in range(0, len(held), 100_000):
            part = held[start : start + 100_000]
            x, y = merged["x_um"].to_numpy()[part, None], merged["y_um"].to_numpy()[part, None]
            touches = (x - reach < x1) & (x + reach > x0) & (y - reach < y1) & (y + reach > y0)
            other = touches & (tile_split != split[part, None])
            split[part[other.any(axis=1)]] = BUFFER
    return pd.Series(split, index=index.index, name="split")


def split_summary(index: pd.DataFrame, splits: pd.Series) -> pd.DataFrame:
    """Cells per class (rows) and split (columns), the buffer's left-out cells included."""
    return pd.crosstab(index["label"], splits).reindex(columns=[*SPLITS, BUFFER], fill_value=0)
