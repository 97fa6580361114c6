"""Statistics for clumped tissue: scores, block bootstrap, the shifted-label null, and its calibration."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xenium_assets.training.calibration import Scenario, calibrate, rejection_rates
from xenium_assets.training.spatial_stats import (
    StatsConfig,
    block_bootstrap,
    block_ids,
    confusion,
    label_field,
    scores,
    shift_test,
    shuffled_confusions,
)


def test_scores_match_scikit_learn_with_every_class_of_truth_or_prediction():
    from sklearn.metrics import balanced_accuracy_score, f1_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 300)  # class 4 is never true, only predicted: macro-F1 counts it (as 0)
    p = rng.integers(0, 5, 300)
    s = scores(confusion(y, p, 5))
    assert s["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    assert s["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p))
    assert s["macro_f1"] < scores(confusion(y, np.minimum(p, 3), 5))["macro_f1"] or (p < 4).all()


def _cells(n_blocks: int, per_block: int) -> pd.DataFrame:
    return pd.DataFrame(
        {"sample": "s", "tile": np.repeat([f"t{i}" for i in range(n_blocks)], per_block), "x_um": 0.0, "y_um": 0.0}
    )


def test_block_bootstrap_resamples_whole_blocks_and_pairs_the_models():
    rng = np.random.default_rng(2)
    cells = _cells(12, 30)
    blocks = block_ids(cells)
    y = rng.integers(0, 3, len(cells))
    good = np.where(rng.random(len(y)) < 0.7, y, rng.integers(0, 3, len(y)))
    dist = block_bootstrap(y, {"good": good, "same": good.copy()}, blocks, 3, 4000, seed=0)
    # The same draws for every model: identical predictions differ by exactly 0 in every resample.
    np.testing.assert_array_equal(dist["good"]["macro_f1"], dist["same"]["macro_f1"])
    # The same distribution as drawing 12 blocks with replacement and pooling their cells.
    members = [np.flatnonzero(blocks == b) for b in range(12)]
    explicit = []
    for _ in range(4000):
        cells_drawn = np.concatenate([members[b] for b in rng.integers(0, 12, 12)])
        explicit.append(scores(confusion(y[cells_drawn], good[cells_drawn], 3))["macro_f1"])
    np.testing.assert_allclose(
        np.percentile(dist["good"]["macro_f1"], [2.5, 50, 97.5]), np.percentile(explicit, [2.5, 50, 97.5]), atol=0.01
    )
    squares = block_ids(cells.assign(x_um=np.arange(len(cells)) % 100.0), block_um=50.0)
    assert len(np.unique(squares)) == 2


def test_cell_shuffle_keeps_both_margins():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 400)
    p = np.where(rng.random(400) < 0.5, y, rng.integers(0, 4, 400))
    cm = confusion(y, p, 4)
    shuffled = shuffled_confusions(cm, 4000, np.random.default_rng(0))
    assert (shuffled.sum(axis=2) == cm.sum(axis=1)).all() and (shuffled.sum(axis=1) == cm.sum(axis=0)).all()
    by_cell = confusion(np.array([rng.permutation(y) for _ in range(4000)]), np.broadcast_to(p, (4000, 400)), 4)
    null, explicit = scores(shuffled)["macro_f1"], scores(by_cell)["macro_f1"]
    assert abs(null.mean() - explicit.mean()) < 0.003 and abs(null.std() - explicit.std()) < 0.003


def _grid_sample(rng, n_side=40, spacing=10.0):
    xy = np.stack(np.meshgrid(np.arange(n_side), np.arange(n_side)), -1).reshape(-1, 2) * spacing
    return xy + rng.uniform(-2, 2, xy.shape)


def test_label_field_fills_the_tissue_and_nothing_outside():
    rng = np.random.default_rng(3)
    xy = _grid_sample(rng)
    labels = (xy[:, 0] > 200).astype(int)  # two halves
    field = label_field(xy[:, 0], xy[:, 1], labels)
    row, col = field.pixel(xy[:, 0], xy[:, 1])
    assert (field.raster[row, col] == labels).mean() > 0.99
    assert (field.raster >= 0).mean() > 0.95  # the tissue's extent is covered
    gap = label_field(np.r_[xy[:, 0], 2000.0], np.r_[xy[:, 1], 2000.0], np.r_[labels, 1])
    assert (gap.raster < 0).mean() > 0.5  # far from every cell: no label


def test_shift_null_detects_a_perfect_map_and_not_an_independent_one():
    rng = np.random.default_rng(4)
    xy = _grid_sample(rng)
    labels = ((xy[:, 0] // 100 + xy[:, 1] // 100) % 3).astype(int)  # clumped: 100 µm squares
    cells = pd.DataFrame({"sample": "s", "tile": "t", "x_um": xy[:, 0], "y_um": xy[:, 1]})
    fields = {"s": label_field(xy[:, 0], xy[:, 1], labels)}
    test = np.flatnonzero(xy[:, 0] < 200)
    config = StatsConfig(n_null=999, seed=0)
    p, null = shift_test(fields, cells.iloc[test], labels[test], labels[test], 3, config)
    assert p == pytest.approx(1 / 1000) and len(null) == 999
    independent = ((xy[:, 0] // 130 + 2 * (xy[:, 1] // 70)) % 3).astype(int)[test]
    p_independent, _ = shift_test(fields, cells.iloc[test], labels[test], independent, 3, config)
    assert p_independent > 0.05


def test_resampling_memory_does_not_grow_with_the_test_split():
    import tracemalloc

    rng = np.random.default_rng(3)
    n = 1_000_000
    xy = rng.uniform(0, 5000, (n, 2))
    y = ((xy[:, 0] // 300 + xy[:, 1] // 300) % 5).astype(int)
    p = np.where(rng.random(n) < 0.5, y, rng.integers(0, 5, n))
    cells = pd.DataFrame({"sample": "s", "tile": (xy[:, 0] // 600).astype(int).astype(str), "x_um": xy[:, 0]})
    cells["y_um"] = xy[:, 1]
    fields = {"s": label_field(xy[::20, 0], xy[::20, 1], y[::20])}
    blocks = block_ids(cells)
    tracemalloc.start()
    try:
        block_bootstrap(y, {"a": p, "b": y}, blocks, 5, 1000, seed=0)
        shift_test(fields, cells, y, p, 5, StatsConfig(n_null=999))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # A resamples x cells matrix would be 8 GB per array here; the shift null works in chunks of 2 M cell draws.
    assert peak < 160 * 2**20, f"{peak / 2**20:.0f} MiB"


def test_the_spatial_null_is_calibrated_where_the_cell_shuffle_is_not():
    """200 simulated demo-like test sets with clumped labels and an independent clumped prediction map: the
    shifted-label test rejects at most 2 % at alpha = 0.01; the cell-level shuffle on the same data far more (so
    this test would fail it). With 30 % of cells predicted right it finds the dependence at least 80 % of times."""
    null = calibrate(200, first_seed=0)
    rates = rejection_rates(null, 0.01)
    assert rates["shift"] <= 0.02, rates
    assert rates["cell"] >= 0.1, rates
    assert null["n_test"].median() > 200
    power = rejection_rates(calibrate(200, Scenario(dependence=0.3), first_seed=10_000), 0.01)
    assert power["shift"] >= 0.8, power
