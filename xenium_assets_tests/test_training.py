"""Training and evaluation: spatial splits, streaming data, and the honest answer on synthetic slides."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from xenium_assets.training.data import DataConfig, PatchDataModule, augment, load_index, shard_splits, to_input
from xenium_assets.training.evaluate import (
    bootstrap,
    confusion,
    nucleus_hull_area,
    permutation_p_value,
    scores,
    shuffled_confusions,
)
from xenium_assets.training.run import TrainingError, evaluate_model, labelled_index, select_classes, train_model
from xenium_assets.training.splits import SplitConfig, spatial_split, split_summary
from xenium_assets.training.train import TrainConfig, predict
from xenium_assets_tests.conftest import build_shards, truth_keys

LARGE = dict(n_cells=1500, width=2048, height=2048)
FAST = TrainConfig(max_epochs=8, patience=8)


SLIDES = (("a", "3", 31), ("b", "4", 32))


@pytest.fixture(scope="module")
def two_slides(bundles, tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    return {
        name: build_shards(bundles(version, seed=seed, **LARGE), root / name, name) for name, version, seed in SLIDES
    }


@pytest.fixture(scope="module")
def labels(bundles):
    """The true classes, joined to the label-free shards by key."""
    return truth_keys({name: bundles(version, seed=seed, **LARGE) for name, version, seed in SLIDES})


@pytest.fixture(scope="module")
def trained(two_slides, labels, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    model = train_model(two_slides, labels, "truth-1", out / "model", train=FAST)
    ev, report, test = evaluate_model(model.folder, two_slides, labels, out / "report")
    return model, ev, test, out


def _targets(index):
    return dict(zip(index["key"], index["label"], strict=True))


def test_shards_hold_no_labels_and_training_joins_them_by_key(two_slides, labels):
    index, _ = load_index(two_slides)
    assert not {"label", "confidence", "label_version"} & set(index.columns)
    joined, _ = labelled_index(two_slides, labels.iloc[::2])  # half the cells labelled: the rest are not drawn
    assert len(joined) == len(index.merge(labels.iloc[::2], on="key"))
    assert set(joined["key"]) <= set(index["key"]) and joined["label"].notna().all()
    with pytest.raises(TrainingError, match="none of the .* patches has a usable label"):
        labelled_index(two_slides, labels.iloc[0:0])


def test_spatial_split_keeps_tiles_whole_and_classes_present(two_slides, labels):
    index, _ = labelled_index(two_slides, labels)
    classes = sorted(index["label"].unique())
    assignment = spatial_split(index, classes, SplitConfig())
    assert not assignment.duplicated(["sample", "tile"]).any()
    table = split_summary(index, assignment)
    assert (table > 0).all().all(), table  # every class in every split
    fractions = table.sum() / table.to_numpy().sum()
    assert 0.1 < fractions["test"] < 0.35 and 0.05 < fractions["val"] < 0.3
    held = spatial_split(index, classes, SplitConfig(holdout_sample="b"))
    assert set(held.loc[held["split"] == "test", "sample"]) == {"b"}
    assert set(held.loc[held["sample"] == "b", "split"]) == {"test"}
    with pytest.raises(ValueError, match="holdout sample 'zz' has no shards"):
        spatial_split(index, classes, SplitConfig(holdout_sample="zz"))


def test_datamodule_streams_every_test_cell_once(two_slides, labels):
    index, percentiles = labelled_index(two_slides, labels)
    classes = sorted(index["label"].unique())
    assignment = spatial_split(index, classes, SplitConfig())
    splits = shard_splits(index, assignment)
    for representation, channels in (("dapi", 1), ("dapi_masks", 3), ("masked_dapi", 1)):
        config = DataConfig(representation=representation, batch_size=32)
        dm = PatchDataModule(splits, classes, percentiles, _targets(index), config)
        x, y, keys = next(iter(dm.train_dataloader()))
        assert x.shape == (32, channels, 64, 64) and x.dtype == torch.float32 and y.shape == (32,)
    keys = [k for _, _, batch in dm.test_dataloader() for k in batch]
    assert sorted(keys) == sorted(index.merge(assignment).query("split == 'test'")["key"])
    assert dm.class_weights() is not None or dm.config.balance != "weighted_loss"


def test_undersampling_balances_the_training_stream(two_slides, labels):
    index, percentiles = labelled_index(two_slides, labels)
    classes = sorted(index["label"].unique())
    splits = shard_splits(index, spatial_split(index, classes, SplitConfig()))
    config = DataConfig(balance="undersample", batch_size=128)
    dm = PatchDataModule(splits, classes, percentiles, _targets(index), config)
    seen = np.bincount(np.concatenate([y.numpy() for _, y, _ in dm.train_dataloader()]), minlength=len(classes))
    available = np.array([splits.class_counts["train"][c] for c in classes])
    assert available.max() / available.min() > 1.3  # the source is unbalanced ...
    assert seen.max() / seen.min() < 1.3  # ... the stream is not
    assert dm.class_weights() is None


def test_rare_classes_are_left_out():
    index = pd.DataFrame({"label": ["a"] * 30 + ["b"] * 25 + ["c"] * 5})
    classes, dropped = select_classes(index, 20)
    assert classes == ["a", "b"] and dropped == {"c": 5}
    with pytest.raises(TrainingError, match="fewer than 2 classes with >= 28 patches"):
        select_classes(index, 28)


def test_augmentation_moves_masks_with_the_image():
    rng = np.random.default_rng(0)
    mask = np.zeros((96, 96), dtype=np.uint8)
    mask[10:40, 20:70] = 1
    mask[40:60, 20:70] = 2
    dapi = (mask == 1).astype(np.uint16) * 1000
    x = to_input(dapi, mask, 0.0, 1000.0, "dapi_masks")
    for seed in range(8):
        out = augment(x, torch.Generator().manual_seed(seed + int(rng.integers(100))), blur=False)
        bright = out[0] > 0.5
        assert (bright == (out[1] > 0.5)).float().mean() > 0.99  # nucleus mask still over the bright nucleus
        assert not ((out[1] > 0) & (out[2] > 0)).any()


def test_intensity_jitter_is_small_and_never_touches_the_masks():
    """On a flat patch only the intensity augmentations show: gain within 10 %, gamma within exp(±0.15),
    noise of sd 0.02, and a 3x3 blur that cuts the noise to about a third; mask channels pass unchanged."""
    mask = np.ones((96, 96), dtype=np.uint8)
    x = to_input(np.full((96, 96), 500, dtype=np.uint16), mask, 0.0, 1000.0, "dapi_masks")
    lo, hi = 0.9 * 0.5 ** np.exp(0.15), 1.1 * 0.5 ** np.exp(-0.15)
    means, sds = [], []
    for seed in range(40):
        out = augment(x, torch.Generator().manual_seed(seed), blur=True)
        torch.testing.assert_close(out[1:], x[1:], rtol=0, atol=0)
        means.append(float(out[0].mean()))
        sds.append(float(out[0][2:-2, 2:-2].std()))
    assert all(lo - 0.01 < m < hi + 0.01 for m in means) and np.std(means) > 0.01  # jittered, within bounds
    sharp = [sd for sd in sds if sd > 0.015]
    blurred = [sd for sd in sds if sd < 0.012]
    assert sharp and blurred and len(sharp) + len(blurred) == len(sds)
    assert np.mean(sharp) == pytest.approx(0.02, rel=0.1) and np.mean(blurred) == pytest.approx(0.0075, rel=0.2)


def test_scores_match_scikit_learn():
    from sklearn.metrics import balanced_accuracy_score, f1_score

    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    s = scores(confusion(y, p, 4))
    assert s["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    assert s["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p))
    low, high = bootstrap(y, p, 4)["macro_f1"]
    assert low < s["macro_f1"] < high
    assert permutation_p_value(y, p, 4) > 0.05  # random predictions carry no signal
    assert permutation_p_value(y, y, 4) == pytest.approx(1 / 1001)


def test_resampled_confusions_match_resampling_the_cells():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 400)
    p = np.where(rng.random(400) < 0.5, y, rng.integers(0, 4, 400))
    cm = confusion(y, p, 4)
    shuffled = shuffled_confusions(cm, 4000, np.random.default_rng(0))
    assert (shuffled.sum(axis=2) == cm.sum(axis=1)).all() and (shuffled.sum(axis=1) == cm.sum(axis=0)).all()
    # The same null distribution as shuffling the cells' labels one by one ...
    by_cell = confusion(np.array([rng.permutation(y) for _ in range(4000)]), np.broadcast_to(p, (4000, 400)), 4)
    null, explicit = scores(shuffled)["macro_f1"], scores(by_cell)["macro_f1"]
    assert abs(null.mean() - explicit.mean()) < 0.003 and abs(null.std() - explicit.std()) < 0.003
    # ... and the same bootstrap interval as resampling the cells with replacement.
    idx = rng.integers(0, 400, (4000, 400))
    explicit = np.percentile(scores(confusion(y[idx], p[idx], 4))["macro_f1"], [2.5, 97.5])
    np.testing.assert_allclose(bootstrap(y, p, 4, n=4000)["macro_f1"], explicit, atol=0.01)


def test_resampling_memory_does_not_grow_with_the_test_split():
    import tracemalloc

    rng = np.random.default_rng(3)
    y = rng.integers(0, 5, 1_000_000)
    p = np.where(rng.random(len(y)) < 0.5, y, rng.integers(0, 5, len(y)))
    tracemalloc.start()
    try:
        bootstrap(y, p, 5)
        permutation_p_value(y, p, 5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB"  # a resamples x cells matrix: 8 GB per array here


def test_nucleus_hull_is_the_hull_of_its_pixel_squares():
    import shapely

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:40, 0:40]
    blobs = []
    for _ in range(30):  # random ellipses with bites taken out: concave, some touching the patch edge
        cy, cx, a, b = rng.uniform(0, 40), rng.uniform(0, 40), rng.uniform(2, 15), rng.uniform(2, 15)
        blob = ((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2 < 1
        blob &= ~(((yy - cy - a / 2) / 3) ** 2 + ((xx - cx) / 3) ** 2 < 1)
        blobs.append(blob)
    blobs.insert(7, np.zeros((40, 40), dtype=bool))  # no nucleus pixel: area 0, and no gap in the others
    nucleus = np.stack(blobs)
    expected = [
        shapely.union_all(
            [shapely.box(x, y, x + 1, y + 1) for y, x in zip(*np.nonzero(b), strict=True)]
        ).convex_hull.area
        if b.any()
        else 0.0
        for b in nucleus
    ]
    np.testing.assert_allclose(nucleus_hull_area(nucleus), expected, rtol=1e-12)
    assert nucleus_hull_area(nucleus[7:8]).tolist() == [0.0]


def test_dapi_signal_is_detected_on_class_dependent_morphology(trained):
    model, ev, test, out = trained
    assert ev.signal_detected, (ev.cnn, ev.cnn_ci, ev.majority, ev.permutation_p)
    # At least as good as the morphology features: the morphology score is not above the CNN's interval.
    assert ev.cnn_ci["macro_f1"][1] >= ev.morphology["macro_f1"], (ev.cnn, ev.cnn_ci, ev.morphology)
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["signal_detected"] is True and metrics["n_test_cells"] == len(test)
    for score in ("accuracy", "balanced_accuracy", "macro_f1"):  # every headline score has its interval
        assert metrics[f"test_{score}_ci_low"] <= metrics[f"test_{score}"] <= metrics[f"test_{score}_ci_high"]
    assert metrics["split"].startswith("spatial: whole tiles")
    html = (out / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5 and "permutation p" in html
    assert (out / "report" / "report.md").exists()


def test_morphology_baseline_is_fitted_on_at_most_the_cap(trained, two_slides, labels):
    model, _, _, out = trained
    full = json.loads((out / "report" / "metrics.json").read_text())
    evaluate_model(model.folder, two_slides, labels, out / "capped", morphology_train_cells=300)
    capped = json.loads((out / "capped" / "metrics.json").read_text())
    # The CNN and the majority class (taken from the index, not the pixels) are untouched by the cap.
    for key in ("test_macro_f1", "test_macro_f1_ci_low", "majority_macro_f1", "permutation_p_value"):
        assert capped[key] == full[key], key
    assert capped["morphology_macro_f1"] > capped["majority_macro_f1"]
    text = (out / "capped" / "report.md").read_text()
    fitted = [line for line in text.splitlines() if "fitted on" in line]
    assert fitted and "fitted on 300 of the " in fitted[0], fitted
    total = fitted[0].split("fitted on 300 of the ")[1].split(" train cells")[0]
    assert f"fitted on {total} of the {total} train cells" in (out / "report" / "report.md").read_text()


def test_checkpoint_reproduces_the_reports_predictions(trained, two_slides, labels):
    model, _, test, _ = trained
    card = json.loads((model.folder / "model.json").read_text())
    assert card["label_version"] == "truth-1"
    index, percentiles = labelled_index(two_slides, labels)
    index = index[index["label"].isin(card["classes"])]
    assignment = pd.read_parquet(model.folder / "split.parquet")
    dm = PatchDataModule(
        shard_splits(index, assignment), card["classes"], percentiles, _targets(index), DataConfig(**card["data"])
    )
    again = predict(model.folder / card["checkpoint"], dm).set_index("key").loc[test["key"]]
    np.testing.assert_array_equal(again["pred"].to_numpy(), test["pred"].to_numpy())


def test_no_signal_is_claimed_on_a_null_slide(bundles, tmp_path):
    made = {
        name: bundles(version, seed=seed, null=True, **LARGE)
        for name, version, seed in (("a", "3", 41), ("b", "4", 42))
    }
    slides = {name: build_shards(bundle, tmp_path / name, name) for name, bundle in made.items()}
    labels = truth_keys(made)
    model = train_model(slides, labels, "truth-1", tmp_path / "model", train=TrainConfig(max_epochs=4, patience=4))
    ev, _, _ = evaluate_model(model.folder, slides, labels, tmp_path / "report")
    assert not ev.signal_detected, (ev.cnn, ev.cnn_ci, ev.majority, ev.permutation_p)
