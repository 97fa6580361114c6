"""Is the signal test calibrated on clumped tissue? Simulated test sets, no CNN needed.

Each replicate lays cells out as the synthetic generator does (a jittered lattice on demo-sized slides cut into the
8 x 8 tile grid), draws clumped labels (Voronoi class regions, 80 % purity) and, independently, a clumped
prediction map of the same kind, splits the tiles with the project's own buffered spatial split, and tests the
test cells' predictions against their labels twice: with the shifted-label null the report uses, and with the
cell-by-cell label shuffle it used before. Under independence the share of p < alpha must be about alpha; with
``dependence`` > 0 (that share of the cells predicted right, the rest from the independent map) it is the power.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from xenium_assets.formats import XENIUM_PIXEL_SIZE_UM
from xenium_assets.patches.grid import GRID, edges, tiles_of
from xenium_assets.synth.biology import assign_regions, place_cells
from xenium_assets.training.spatial_stats import StatsConfig, cell_permutation_p, label_fields, shift_test
from xenium_assets.training.splits import SplitConfig, cell_splits, spatial_split


@dataclass(frozen=True)
class Scenario:
    """Demo-like geometry: two slides of 1,500 cells, 2,048 px at 0.2125 µm, four classes."""

    n_samples: int = 2
    n_cells: int = 1500
    side_px: int = 2048
    n_classes: int = 4
    purity: float = 0.8
    patch_px: int = 96
    dependence: float = 0.0


def simulate(rng: np.random.Generator, scenario: Scenario) -> pd.DataFrame:
    """Cells of every slide: sample, tile, key, x_um, y_um, tile bounds, patch_um, label and predicted (names)."""
    side_um = scenario.side_px * XENIUM_PIXEL_SIZE_UM
    tile_edges = edges(scenario.side_px) * XENIUM_PIXEL_SIZE_UM
    frames = []
    for s in range(scenario.n_samples):
        xy = place_cells(scenario.n_cells, side_um, side_um, 5.0, rng)
        label = assign_regions(xy, scenario.n_classes, side_um, side_um, scenario.purity, rng)
        other = assign_regions(xy, scenario.n_classes, side_um, side_um, scenario.purity, rng)
        predicted = np.where(rng.random(len(xy)) < scenario.dependence, label, other)
        px = xy / XENIUM_PIXEL_SIZE_UM
        tile = tiles_of(px[:, 1], px[:, 0], scenario.side_px, scenario.side_px)
        px_edges = edges(scenario.side_px)
        row = np.clip(np.searchsorted(px_edges, px[:, 1], side="right") - 1, 0, GRID - 1)  # as tiles_of finds them
        col = np.clip(np.searchsorted(px_edges, px[:, 0], side="right") - 1, 0, GRID - 1)
        frames.append(
            pd.DataFrame(
                {
                    "sample": f"s{s}",
                    "tile": tile,
                    "key": np.char.add(f"s{s}/", np.arange(len(xy)).astype(str)),
                    "x_um": xy[:, 0],
                    "y_um": xy[:, 1],
                    "tile_x0": tile_edges[col],
                    "tile_y0": tile_edges[row],
                    "tile_x1": tile_edges[col + 1],
                    "tile_y1": tile_edges[row + 1],
                    "patch_um": scenario.patch_px * XENIUM_PIXEL_SIZE_UM,
                    "label": np.char.add("c", label.astype(str)),
                    "predicted": np.char.add("c", predicted.astype(str)),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def replicate(seed: int, scenario: Scenario, stats: StatsConfig) -> dict:
    """One simulated test set: the shifted-label p-value and the cell-shuffle p-value, and its size."""
    rng = np.random.default_rng(seed)
    cells = simulate(rng, scenario)
    classes = sorted(cells["label"].unique())
    split = SplitConfig(seed=seed)
    splits = cell_splits(cells, spatial_split(cells, classes, split), split)
    test = cells[splits == "test"].reset_index(drop=True)
    class_index = {c: i for i, c in enumerate(classes)}
    y = test["label"].map(class_index).to_numpy()
    pred = test["predicted"].map(class_index).to_numpy()
    fields = label_fields(cells, class_index)
    shift_p, _ = shift_test(fields, test, y, pred, len(classes), replace(stats, seed=seed))
    return {
        "seed": seed,
        "n_test": len(test),
        "shift_p": shift_p,
        "cell_p": cell_permutation_p(y, pred, len(classes), stats.n_null, seed),
    }


def calibrate(n: int, scenario: Scenario = Scenario(), stats: StatsConfig = StatsConfig(), first_seed: int = 0):
    """``n`` replicates: one row each (seed, n_test, shift_p, cell_p)."""
    return pd.DataFrame([replicate(first_seed + i, scenario, stats) for i in range(n)])


def rejection_rates(frame: pd.DataFrame, alpha: float) -> dict[str, float]:
    """Share of replicates with p < alpha, for the spatial and the cell-level test."""
    return {"shift": float((frame["shift_p"] < alpha).mean()), "cell": float((frame["cell_p"] < alpha).mean())}
