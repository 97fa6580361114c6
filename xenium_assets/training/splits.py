"""Spatial splits: whole tiles go to train, validation or test, never single cells.

Neighbouring cells share appearance and context, so a per-cell split lets the model meet a test cell's
neighbours in training and overstates accuracy. Tiles are assigned greedily so that every class is
present in every split where the data allows it; a whole sample can be held out as the test set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitConfig:
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    holdout_sample: str | None = None
    """Put every tile of this sample in the test set (and only those)."""
    seed: int = 0

    def describe(self) -> str:
        if self.holdout_sample:
            return (
                f"spatial: sample {self.holdout_sample!r} held out for test; the other samples' tiles split "
                f"{1 - self.val_fraction:.0%} train / {self.val_fraction:.0%} validation"
            )
        return (
            f"spatial: whole tiles, {1 - self.val_fraction - self.test_fraction:.0%} train / "
            f"{self.val_fraction:.0%} validation / {self.test_fraction:.0%} test of cells, stratified by class"
        )


def tile_counts(index: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Cells per class for every (sample, tile)."""
    counts = pd.crosstab([index["sample"], index["tile"]], index["label"]).reindex(columns=classes, fill_value=0)
    return counts


def _take(counts: pd.DataFrame, pool: list, fraction: float, rng: np.random.Generator) -> list:
    """Tiles from ``pool`` holding about ``fraction`` of the pool's cells, every class present if possible."""
    chosen: list = []
    totals = counts.loc[pool].sum()
    target = fraction * totals.sum()
    order = list(rng.permutation(len(pool)))
    shuffled = [pool[i] for i in order]
    # First one tile for each class, rarest class first, preferring tiles rich in that class.
    for cls in totals.sort_values().index:
        if totals[cls] == 0 or counts.loc[chosen, cls].sum() > 0:
            continue
        candidates = [t for t in shuffled if t not in chosen and counts.loc[t, cls] > 0]
        if candidates:
            chosen.append(max(candidates, key=lambda t: counts.loc[t, cls] / max(counts.loc[t].sum(), 1)))
    for t in shuffled:
        if counts.loc[chosen].to_numpy().sum() >= target:
            break
        if t not in chosen:
            chosen.append(t)
    return chosen


def spatial_split(index: pd.DataFrame, classes: list[str], config: SplitConfig) -> pd.DataFrame:
    """(sample, tile) -> split. ``index``: the shard indexes (sample, tile, label per cell)."""
    counts = tile_counts(index, classes)
    tiles = list(counts.index)
    rng = np.random.default_rng(config.seed)
    split = dict.fromkeys(tiles, "train")
    if config.holdout_sample:
        test = [t for t in tiles if t[0] == config.holdout_sample]
        if not test:
            raise ValueError(f"holdout sample {config.holdout_sample!r} has no shards")
    else:
        test = _take(counts, tiles, config.test_fraction, rng)
    rest = [t for t in tiles if t not in set(test)]
    val = _take(
        counts, rest, config.val_fraction / max(1 - (0 if config.holdout_sample else config.test_fraction), 1e-9), rng
    )
    for t in test:
        split[t] = "test"
    for t in val:
        split[t] = "val"
    # A class must stay trainable: if every tile with it left train, bring back the smallest one.
    for cls in classes:
        train_tiles = [t for t in tiles if split[t] == "train"]
        if counts.loc[train_tiles, cls].sum() == 0 and counts[cls].sum() > 0:
            donors = sorted((t for t in tiles if counts.loc[t, cls] > 0), key=lambda t: counts.loc[t].sum())
            split[donors[0]] = "train"
    return pd.DataFrame([(s, t, split[(s, t)]) for s, t in tiles], columns=["sample", "tile", "split"])


def split_summary(index: pd.DataFrame, assignment: pd.DataFrame) -> pd.DataFrame:
    """Cells per class (rows) and split (columns)."""
    merged = index.merge(assignment, on=["sample", "tile"])
    return pd.crosstab(merged["label"], merged["split"]).reindex(columns=list(SPLITS), fill_value=0)
