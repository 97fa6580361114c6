"""Training and evaluation: spatial splits, streaming data, and the honest answer on synthetic slides."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from xenium_assets.training.data import DataConfig, PatchDataModule, augment, load_index, shard_splits
from xenium_assets.training.morphology import nucleus_hull_area
from xenium_assets.training.report import where_the_signal_lies
from xenium_assets.training.run import (
    ReportOptions,
    TrainingError,
    evaluate_model,
    labelled_index,
    select_classes,
    train_model,
)
from xenium_assets.training.splits import BUFFER, SplitConfig, cell_splits, spatial_split, split_summary
from xenium_assets.training.tensors import to_input
from xenium_assets.training.train import TrainConfig, predict
from xenium_assets_tests.conftest import build_shards, truth_keys

LARGE = dict(n_cells=1500, width=2048, height=2048)
FAST = TrainConfig(max_epochs=8, patience=8)
QUICK_EXTRAS = ReportOptions(extra_max_epochs=3, boundary_model=False)
"""The report's extra models (two leave-one-sample-out folds, the cell-only CNN) with fewer epochs: the suite's time.
The boundary comparison is tested on a smaller model in test_prediction."""
BARE = ReportOptions(loso_max_folds=0, cell_only_model=False)


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
    ev, _ = evaluate_model(model.folder, two_slides, labels, "truth-1", out / "report", options=QUICK_EXTRAS)
    return model, ev, ev.cells, out


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


def _split(index, config=SplitConfig()):
    classes = sorted(index["label"].unique())
    assignment = spatial_split(index, classes, config)
    return classes, assignment, cell_splits(index, assignment, config)


def test_spatial_split_keeps_blocks_whole_and_classes_present(two_slides, labels):
    index, _ = labelled_index(two_slides, labels)
    classes, assignment, splits = _split(index)
    assert not assignment.duplicated(["sample", "tile"]).any()
    table = split_summary(index, splits)
    assert (table[["train", "val", "test"]] > 0).all().all(), table  # every class in every split
    fractions = table.sum() / table.to_numpy().sum()
    assert 0.05 < fractions["test"] < 0.35 and 0.03 < fractions["val"] < 0.3 and fractions["buffer"] > 0
    # The demo's 54 µm tiles go in quadrants (eight buffer widths of 30.6 µm round up to four tiles).
    quadrant = assignment["sample"] + assignment["tile"].str[1].astype(int).floordiv(4).astype(str)
    quadrant += assignment["tile"].str[3].astype(int).floordiv(4).astype(str)
    assert (assignment.groupby(quadrant)["split"].nunique() == 1).all()
    # Another seed draws other blocks: the test set is drawn at random, not picked for class-pure tiles.
    other = spatial_split(index, classes, SplitConfig(seed=1))
    assert not assignment["split"].equals(other["split"])
    held = spatial_split(index, classes, SplitConfig(holdout_sample="b"))
    assert set(held.loc[held["split"] == "test", "sample"]) == {"b"}
    assert set(held.loc[held["sample"] == "b", "split"]) == {"test"}
    with pytest.raises(ValueError, match="holdout sample 'zz' has no shards"):
        spatial_split(index, classes, SplitConfig(holdout_sample="zz"))


def test_no_validation_or_test_patch_holds_a_training_nucleus(two_slides, labels, bundles):
    """The buffer: every kept validation and test cell's patch window misses every training cell's nucleus, and
    no training cell's patch window reaches a kept test cell's nucleus."""
    import shapely

    index, _ = labelled_index(two_slides, labels)
    _, _, splits = _split(index)
    half = index["patch_um"].max() / 2
    nuclei = {}
    for name, version, seed in SLIDES:
        table = pd.read_parquet(bundles(version, seed=seed, **LARGE) / "nucleus_boundaries.parquet")
        keys = name + "/" + table["cell_id"].astype(str)
        nuclei.update(
            {k: shapely.Polygon(g[["vertex_x", "vertex_y"]].to_numpy()) for k, g in table.groupby(keys, sort=False)}
        )

    def windows(rows):
        return shapely.box(rows["x_um"] - half, rows["y_um"] - half, rows["x_um"] + half, rows["y_um"] + half)

    for sample in ("a", "b"):
        rows = index["sample"] == sample
        train = index[rows & (splits == "train")]
        held = index[rows & splits.isin(["val", "test"])]
        assert len(held) > 50 and (rows & (splits == BUFFER)).sum() > 0
        train_nuclei = shapely.STRtree([nuclei[k] for k in train["key"]])
        hits = train_nuclei.query(windows(held), predicate="intersects")
        assert hits.size == 0, f"{hits.shape[1]} held-out windows reach a training nucleus"
        held_nuclei = shapely.STRtree([nuclei[k] for k in held["key"]])
        assert held_nuclei.query(windows(train), predicate="intersects").size == 0


def test_datamodule_streams_every_test_cell_once(two_slides, labels):
    index, percentiles = labelled_index(two_slides, labels)
    classes, _, splits = _split(index)
    kept = splits != BUFFER
    targets = _targets(index[kept])
    for representation, channels in (("dapi", 1), ("dapi_masks", 3), ("masked_dapi", 1)):
        config = DataConfig(representation=representation, batch_size=32)
        dm = PatchDataModule(shard_splits(index[kept], splits[kept]), classes, percentiles, targets, config)
        x, y, keys = next(iter(dm.train_dataloader()))
        assert x.shape == (32, channels, 64, 64) and x.dtype == torch.float32 and y.shape == (32,)
    keys = [k for _, _, batch in dm.test_dataloader() for k in batch]
    assert sorted(keys) == sorted(index.loc[splits == "test", "key"])  # buffer cells of test tiles are not drawn
    assert dm.class_weights() is not None or dm.config.balance != "weighted_loss"


def test_undersampling_balances_the_training_stream(two_slides, labels):
    index, percentiles = labelled_index(two_slides, labels)
    classes, _, split_of = _split(index)
    splits = shard_splits(index, split_of)
    config = DataConfig(balance="undersample", batch_size=128)
    dm = PatchDataModule(splits, classes, percentiles, _targets(index), config)
    seen = np.bincount(np.concatenate([y.numpy() for _, y, _ in dm.train_dataloader()]), minlength=len(classes))
    available = np.array([splits.class_counts["train"][c] for c in classes])
    assert available.max() / available.min() > 1.3  # the source is unbalanced ...
    assert seen.max() / seen.min() < 1.3  # ... the stream is not
    assert dm.class_weights() is None


def test_missing_tile_metadata_is_an_error_naming_the_fix(two_slides, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    copy = tmp_path / "a"
    shutil.copytree(two_slides["a"], copy)
    path = copy / "r3c3" / "index.parquet"
    table = pq.read_table(path)
    meta = {k: v for k, v in table.schema.metadata.items() if k != b"dapi_percentiles"}
    pq.write_table(table.replace_schema_metadata(meta), path)
    with pytest.raises(ValueError, match=r"r3c3/index.parquet lacks dapi_percentiles: re-materialize patch_shards"):
        load_index({"a": copy})


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
    assert ev.signal_detected and ev.p_value <= 0.002, (ev.models["cnn"], ev.p_value, ev.chance_p99)
    assert ev.models["cnn"].ci["macro_f1"][0] > ev.chance_p99 + 0.2  # far beyond chance, not on a thin margin
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["signal_detected"] is True and metrics["n_test_cells"] == len(test)
    for score in ("accuracy", "balanced_accuracy", "macro_f1"):  # every headline score has its interval
        assert metrics[f"test_{score}_ci_low"] <= metrics[f"test_{score}"] <= metrics[f"test_{score}_ci_high"]
    # beats_morphology is the paired interval's decision, whichever way it goes.
    low, high = metrics["cnn_minus_morphology_ci_low"], metrics["cnn_minus_morphology_ci_high"]
    assert low <= metrics["cnn_minus_morphology"] <= high and metrics["beats_morphology"] is (low > 0)
    assert metrics["split"].startswith("spatial: blocks of whole tiles")
    assert metrics["n_buffer_cells"] > 0 and metrics["resampling_unit"].startswith("test tiles (")
    assert 0 < metrics["chance_macro_f1_p99"] < metrics["test_macro_f1"]
    # Two samples: a leave-one-sample-out model for each, scored on every cell of the held-out one.
    loso = ev.extra["loso"]
    assert sorted(loso["sample"]) == ["a", "b"] and (loso["n_cells"] > 1000).all()
    assert metrics["loso_macro_f1_mean"] == pytest.approx(loso["macro_f1"].mean()) and loso["macro_f1"].min() > 0.5
    assert {"cnn", "cnn_cell", "morphology", "morphology_neighbours"} == set(ev.models)
    # The model reads the deployable input (DAPI, nucleus, ring), and its card says what prediction must cut.
    card = json.loads((model.folder / "model.json").read_text())
    assert card["data"]["representation"] == "dapi_nucleus_ring" and card["needs_cell_boundary"] is False
    assert card["patch"] == {"size_um": pytest.approx(20.4), "pixel_size_um": 0.2125, "ring_um": 5.0}
    assert 0 < ev.n_contrarian < len(test) / 2 and "contrarian_macro_f1" in metrics
    text = (out / "report" / "report.md").read_text()
    assert "not distinguishable" in text or "higher" in text
    assert f"**{where_the_signal_lies(ev)}**" in text.splitlines()
    html = (out / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6 and "shifted" in html and "<strong>yes</strong>" in html


def test_morphology_baseline_is_fitted_on_at_most_the_cap(trained, two_slides, labels):
    model, _, _, out = trained
    full = json.loads((out / "report" / "metrics.json").read_text())
    options = ReportOptions(loso_max_folds=0, cell_only_model=False, morphology_train_cells=300)
    evaluate_model(model.folder, two_slides, labels, "truth-1", out / "capped", options=options)
    capped = json.loads((out / "capped" / "metrics.json").read_text())
    # The CNN, its null and the majority class (taken from the index, not the pixels) are untouched by the cap.
    for key in ("test_macro_f1", "test_macro_f1_ci_low", "majority_macro_f1", "permutation_p_value"):
        assert capped[key] == full[key], key
    assert capped["morphology_macro_f1"] > capped["chance_macro_f1_p99"]
    text = (out / "capped" / "report.md").read_text()
    fitted = [line for line in text.splitlines() if "fitted on" in line]
    assert fitted and "fitted on 300 of the " in fitted[0], fitted
    total = fitted[0].split("fitted on 300 of the ")[1].split(" train cells")[0]
    assert f"fitted on {total} of the {total} train cells" in (out / "report" / "report.md").read_text()


def test_checkpoint_reproduces_the_reports_predictions(trained, two_slides, labels):
    model, _, test, _ = trained
    card = json.loads((model.folder / "model.json").read_text())
    assert card["label_version"] == "truth-1" and card["n_buffer_cells"] > 0
    index, percentiles = labelled_index(two_slides, labels)
    index = index[index["label"].isin(card["classes"])]
    split = SplitConfig(**card["split"])
    splits = cell_splits(index, pd.read_parquet(model.folder / "split.parquet"), split)
    kept = splits != BUFFER
    dm = PatchDataModule(
        shard_splits(index[kept], splits[kept]),
        card["classes"],
        percentiles,
        _targets(index[kept]),
        DataConfig(**card["data"]),
    )
    again = predict(model.folder / card["checkpoint"], dm).set_index("key").loc[test["key"]]
    np.testing.assert_array_equal(again["pred"].to_numpy(), test["pred"].to_numpy())


def test_evaluation_refuses_other_labels_and_skips_untrained_classes(trained, two_slides, labels, tmp_path):
    model, _, _, _ = trained
    with pytest.raises(TrainingError, match="trained on labels truth-1, not truth-2: evaluate it with labels truth-1"):
        evaluate_model(model.folder, two_slides, labels, "truth-2", tmp_path / "other", options=BARE)
    # Labels with a class the model never saw (a finer split of one class): its cells are skipped and counted.
    renamed = labels.reset_index(drop=True)
    first = renamed.index[renamed["label"] == "fibroblast"][::2]
    renamed.loc[first, "label"] = "fibroblast_new"
    ev, _ = evaluate_model(model.folder, two_slides, renamed, "truth-1", tmp_path / "skipped", options=BARE)
    with_patches = int((labelled_index(two_slides, renamed)[0]["label"] == "fibroblast_new").sum())
    assert with_patches > 300 and ev.extra["untrained_class_cells"] == {"fibroblast_new": with_patches}
    metrics = json.loads((tmp_path / "skipped" / "metrics.json").read_text())
    assert metrics["n_untrained_class_cells"] == with_patches
    assert "fibroblast_new (" in (tmp_path / "skipped" / "report.md").read_text()


@pytest.mark.parametrize(
    ("control", "seeds"),
    [({"null": True}, (41, 42)), ({"null_regions": True}, (43, 44))],
    ids=["null", "null_regions"],
)
def test_no_signal_is_claimed_on_a_negative_control(bundles, tmp_path, control, seeds):
    """Morphology drawn independently of the class, cell by cell (``null``) or in its own clumped regions
    (``null_regions``, which fooled the cell-level statistics): no signal is claimed."""
    made = {
        name: bundles(version, seed=seed, **control, **LARGE)
        for (name, version), seed in zip((("a", "3"), ("b", "4")), seeds, strict=True)
    }
    slides = {name: build_shards(bundle, tmp_path / name, name) for name, bundle in made.items()}
    labels = truth_keys(made)
    model = train_model(slides, labels, "truth-1", tmp_path / "model", train=TrainConfig(max_epochs=4, patience=4))
    ev, _ = evaluate_model(model.folder, slides, labels, "truth-1", tmp_path / "report", options=BARE)
    assert not ev.signal_detected, (ev.models["cnn"], ev.p_value, ev.chance_p99)
    assert ev.p_value > 0.01
