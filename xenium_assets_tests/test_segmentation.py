"""Nucleus segmentation from DAPI alone: object matching, the classical baseline, the learned segmenter's targets,
training, instance assembly and tiled inference, and the evaluation on real hand-annotated images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xenium_assets.raster import Window
from xenium_assets.segmentation.bundle_nuclei import read_bundle_nuclei
from xenium_assets.segmentation.classical import segment_nuclei
from xenium_assets.segmentation.learned import (
    BOUNDARY,
    INTERIOR,
    AssemblyParams,
    LearnedSegmenter,
    SegmenterConfig,
    assemble,
)
from xenium_assets.segmentation.metrics import match, pool
from xenium_assets.segmentation.touching import touching_ids, touching_recall
from xenium_assets.segmentation.training import CropDataset, NucleusUnet, prepare, targets, train_segmenter
from xenium_assets_tests.conftest import SHARED, assert_leaves_unloaded

REAL_NUCLEI = SHARED / "real_nuclei" / "dsb2018_stage1_test_fluo"
TINY = SegmenterConfig(crop=64, batch_size=4, steps=24, val_every=12, val_crops=4, seed=3)


def _square(out: np.ndarray, label: int, y: int, x: int, side: int) -> None:
    out[y : y + side, x : x + side] = label


def test_match_counts_objects_and_their_iou_exactly():
    truth = np.zeros((40, 40), dtype=np.int32)
    _square(truth, 1, 0, 0, 10)  # found exactly
    _square(truth, 2, 20, 0, 10)  # found shifted by 2 rows: IoU 80 / 120
    _square(truth, 3, 20, 20, 10)  # found a quarter: IoU 25 / 100, not a match
    pred = np.zeros_like(truth)
    _square(pred, 7, 0, 0, 10)
    _square(pred, 5, 22, 0, 10)
    _square(pred, 9, 20, 20, 5)
    _square(pred, 4, 0, 30, 5)  # nothing there
    m = match(truth, pred)
    assert (m.n_true, m.n_pred, m.tp) == (3, 4, 2)
    assert m.precision == pytest.approx(2 / 4)
    assert m.recall == pytest.approx(2 / 3)
    assert m.f1 == pytest.approx(2 * 2 / 7)
    assert sorted(m.ious) == pytest.approx([80 / 120, 1.0])
    assert m.mean_iou == pytest.approx((1 + 80 / 120) / 2)
    summary = pool([m, match(truth, truth)])
    assert (summary.n_true, summary.n_pred, summary.tp) == (6, 7, 5)
    assert summary.f1 == pytest.approx(10 / 13)


def test_touching_nuclei_are_those_sharing_an_edge_or_a_corner():
    labels = np.zeros((12, 12), dtype=np.int32)
    _square(labels, 1, 1, 1, 3)
    _square(labels, 2, 1, 4, 3)  # shares an edge with 1
    _square(labels, 3, 8, 8, 3)
    _square(labels, 4, 5, 5, 3)  # meets 3 at a corner
    _square(labels, 5, 8, 1, 2)  # alone
    assert touching_ids(labels).tolist() == [1, 2, 3, 4]
    assert touching_recall(labels, labels) == (4, 4)
    assert touching_recall(labels, np.where(labels == 1, 1, 0)) == (4, 1)


def test_targets_mark_background_interior_and_a_boundary_between_touching_nuclei():
    labels = np.zeros((20, 30), dtype=np.int32)
    labels[5:15, 5:15] = 1
    labels[5:15, 15:25] = 2
    t = targets(labels, boundary_px=1)
    assert t.dtype == np.uint8 and t.shape == labels.shape
    assert set(np.unique(t)) == {0, INTERIOR, BOUNDARY}
    assert (t[labels == 0] == 0).all()
    assert t[10, 14] == BOUNDARY and t[10, 15] == BOUNDARY  # the two sides of the contact
    assert t[10, 10] == INTERIOR and t[5, 10] == BOUNDARY
    thick = targets(labels, boundary_px=2)
    assert thick[10, 13] == BOUNDARY and thick[10, 10] == INTERIOR
    assert ((thick == BOUNDARY) >= (t == BOUNDARY)).all()


def test_assembly_splits_touching_nuclei_at_their_boundary():
    probs = np.zeros((3, 30, 50), dtype=np.float32)
    probs[0] = 1
    for x0 in (5, 22):  # two 17-px nuclei, side by side with no background between
        probs[:, 5:21, x0 : x0 + 17] = 0
        probs[2, 5:21, x0 : x0 + 17] = 1
        probs[1, 7:19, x0 + 2 : x0 + 15] = 1
        probs[2, 7:19, x0 + 2 : x0 + 15] = 0
    labels = assemble(probs, diameter_px=16)
    assert labels.dtype == np.int32 and labels.shape == (30, 50)
    assert labels.max() == 2
    assert set(np.unique(labels[5:21, 5:39])) == {1, 2} and labels[10, 10] != labels[10, 30]
    assert (labels[:5] == 0).all() and (labels[:, 39:] == 0).all()


@pytest.fixture(scope="module")
def nuclei(bundles):
    """The session's small synthetic bundle as DAPI and nucleus instances."""
    return read_bundle_nuclei(bundles("3"))


def test_classical_segmenter_finds_most_synthetic_nuclei(nuclei):
    tile = nuclei.window(Window(256, 256, 512, 512))
    assert tile.labels.max() > 20 and 15 < tile.diameter_px < 40
    found = segment_nuclei(tile.image, tile.diameter_px)
    assert found.dtype == np.int32 and found.shape == tile.image.shape
    assert match(tile.labels, found).f1 >= 0.6


@pytest.fixture(scope="module")
def trained(nuclei, tmp_path_factory):
    train = nuclei.window(Window(0, 0, 768, 768))
    val = nuclei.window(Window(768, 0, 256, 768))
    out = tmp_path_factory.mktemp("segmenter")
    fit = train_segmenter(
        [(train.image, train.labels, train.diameter_px)],
        TINY,
        out,
        val_pairs=[(val.image, val.labels, val.diameter_px)],
    )
    # A few dozen steps leave the interior probability below the tuned marker threshold: mark at 0.5.
    return fit, LearnedSegmenter.load(fit.checkpoint, assembly=AssemblyParams(marker_threshold=0.5))


def test_learned_segmenter_trains_and_beats_finding_nothing(nuclei, trained):
    fit, segmenter = trained
    assert fit.checkpoint.exists() and fit.steps == TINY.steps and len(fit.history) == 2
    # The loss of the untrained network on the same validation crops is higher than the best after training.
    val = nuclei.window(Window(768, 0, 256, 768))
    crops = CropDataset([prepare((val.image, val.labels, val.diameter_px), TINY)], TINY, TINY.val_crops, 0, False)
    torch.manual_seed(TINY.seed)
    fresh = NucleusUnet(TINY.as_dict()).eval()
    with torch.inference_mode():
        x, y = (torch.stack(v) for v in zip(*(crops[i] for i in range(len(crops))), strict=True))
        untrained = float(fresh.loss(fresh(x), y))
    assert fit.best_val_loss < untrained
    tile = nuclei.window(Window(1024, 1024, 384, 448))
    found = segmenter(tile.image, tile.diameter_px)
    assert found.dtype == np.int32 and found.shape == tile.image.shape
    assert match(tile.labels, found).f1 > match(tile.labels, np.zeros_like(found)).f1


def test_tiled_inference_equals_untiled_away_from_tile_borders(nuclei, trained):
    _, segmenter = trained
    tile = nuclei.window(Window(768, 768, 384, 384))
    diameter = TINY.diameter_px  # one image pixel per network pixel: tiles sit on the network's grid
    whole = segmenter.segment(tile.image, diameter, tile=4096)
    tiled = segmenter.segment(tile.image, diameter, tile=128)  # tiles of 128 px, halos of 48 px
    assert tiled.dtype == np.int32 and tiled.shape == whole.shape
    ids = np.unique(whole)[1:]
    assert len(ids) > 10
    rows, cols = np.nonzero(whole)
    objects = [(rows[whole[rows, cols] == i], cols[whole[rows, cols] == i]) for i in ids]
    borders = np.array([128, 256])
    far = [(r, c) for r, c in objects if np.abs(borders[:, None] - np.concatenate([r, c])[None]).min() > diameter]
    assert far
    for r, c in far:
        values = np.unique(tiled[r, c])
        assert len(values) == 1 and values[0] > 0
        assert (tiled == values[0]).sum() == len(r)


def test_learned_segmenter_loads_the_trained_network_without_lightning(trained):
    """The segmenter reads its weights from the checkpoint into the bare U-Net: the trained module's outputs, and
    no Lightning in a prediction worker."""
    fit, segmenter = trained
    module = NucleusUnet.load_from_checkpoint(fit.checkpoint, map_location="cpu").eval()
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(segmenter.module(x), module(x))
    assert segmenter.config == module.config
    assert_leaves_unloaded(
        ("numpy as np", "xenium_assets.prediction.tiles as tiles"),
        ("lightning", "pytorch_lightning", "torchmetrics"),
        then=f"s = tiles._learned({str(fit.checkpoint)!r}); "
        "assert s.segment(np.zeros((96, 96), np.float32), 8.0).shape == (96, 96)",
    )


@pytest.mark.skipif(
    not REAL_NUCLEI.is_dir(), reason=f"real nuclear-stain images not found at {REAL_NUCLEI} (../shared is absent)"
)
def test_both_segmenters_evaluate_on_held_out_real_images(trained):
    from xenium_assets.segmentation.reference_images import evaluate, reference_images

    held_out = reference_images(REAL_NUCLEI, "held_out")
    tuning = {r.image_id for r in reference_images(REAL_NUCLEI, "tuning")}
    assert len(held_out) == 39 and len(tuning) == 14 and not tuning & {r.image_id for r in held_out}
    three = held_out[:3]
    for segment in (segment_nuclei, trained[1]):
        per_image, summary = evaluate(three, segment)
        assert len(per_image) == 3 and summary.n_images == 3
        assert summary.n_true == per_image["true_nuclei"].sum() > 0
        assert 0 <= summary.f1 <= 1
    assert evaluate(three, segment_nuclei)[1].f1 > 0.5
