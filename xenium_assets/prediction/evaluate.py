"""What a user can expect end to end: a Xenium sample the model never saw, predicted from its DAPI image alone, scored
against its own nuclei and its expression labels.

Segmentation: predicted and Xenium nuclei matched one to one at IoU > 0.5 (two polygons can share IoU > 0.5 with at
most one partner each), object precision, recall, F1 and mean matched IoU. Classification: the predicted class of
each matched nucleus against its cell's expression label, macro-F1 with a 95 % interval from resampling whole tiles
of the sample's 8 x 8 grid (the evaluation report's blocks: neighbouring cells are not independent).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from xenium_assets.bundle.polygons import iter_polygons, usable_polygons
from xenium_assets.bundle.validate import BundleReport
from xenium_assets.layout import PredictionFiles, ProjectPaths
from xenium_assets.patches.geometry import gather, polygons_from_offsets
from xenium_assets.patches.grid import tiles_of
from xenium_assets.training.spatial_stats import block_bootstrap, confusion, interval, scores

MATCH_IOU = 0.5


@dataclass(frozen=True)
class EndToEnd:
    n_xenium_nuclei: int
    n_predicted_nuclei: int
    n_matched: int
    segmentation_precision: float
    segmentation_recall: float
    segmentation_f1: float
    mean_matched_iou: float
    n_labelled_matched: int
    macro_f1: float
    macro_f1_ci_low: float
    macro_f1_ci_high: float
    accuracy: float
    n_blocks: int

    def as_dict(self) -> dict:
        return asdict(self)


def xenium_nuclei(report: BundleReport) -> tuple[np.ndarray, np.ndarray]:
    """(cell ids, nucleus polygons in µm from the image's top-left corner) of a validated bundle."""
    ox, oy = report.image_origin_um
    ids, polygons = [], []
    for batch in iter_polygons(report.files.nucleus_boundaries):
        pick = usable_polygons(batch, np.zeros(len(batch), dtype=np.int64))
        vidx, offsets = gather(batch.starts, batch.rows, pick)
        polygons.append(polygons_from_offsets(np.column_stack([batch.x[vidx] - ox, batch.y[vidx] - oy]), offsets))
        ids.append(np.asarray(batch.ids)[pick])
    if not polygons:
        return np.zeros(0, dtype=object), np.zeros(0, dtype=object)
    return np.concatenate(ids).astype(object), np.concatenate(polygons)


def match_nuclei(truth: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(truth index, predicted index, IoU) of the pairs with IoU > 0.5: one STR-tree query and vectorised areas."""
    tree = shapely.STRtree(predicted)
    t, p = tree.query(truth, predicate="intersects")
    inter = shapely.area(shapely.intersection(truth[t], predicted[p]))
    union = shapely.area(truth[t]) + shapely.area(predicted[p]) - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
    keep = iou > MATCH_IOU
    return t[keep], p[keep], iou[keep]


def end_to_end(
    nuclei: pd.DataFrame,
    truth_ids: np.ndarray,
    truth_polygons: np.ndarray,
    labels: pd.Series,
    classes: list[str],
    image_px: tuple[int, int],
    pixel_size_um: float,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> EndToEnd:
    """``nuclei``: the prediction's table (geometry in µm, predicted_class); ``labels``: cell id -> expression label
    (usable labels only); ``image_px``, ``pixel_size_um``: the image's grid, whose 8 x 8 tiles are the blocks."""
    predicted = np.asarray(nuclei.geometry.values, dtype=object)
    t, p, iou = (
        match_nuclei(truth_polygons, predicted)
        if len(predicted) and len(truth_polygons)
        else (
            np.zeros(0, dtype=np.int64),
            np.zeros(0, dtype=np.int64),
            np.zeros(0),
        )
    )
    precision = len(t) / max(len(predicted), 1)
    recall = len(t) / max(len(truth_polygons), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    truth_codes = pd.Categorical(labels.reindex(truth_ids[t]).to_numpy(), categories=classes).codes
    known = truth_codes >= 0  # a usable label of a class the model knows
    y = truth_codes[known].astype(np.int64)
    guess = np.asarray(nuclei["predicted_class"].astype(str).to_numpy(), dtype=object)[p[known]]
    pred = pd.Categorical(guess, categories=classes).codes.astype(np.int64)
    k = len(classes)
    centre = shapely.get_coordinates(shapely.centroid(predicted[p[known]])) / pixel_size_um
    blocks = pd.factorize(tiles_of(centre[:, 1], centre[:, 0], *image_px))[0] if len(centre) else np.zeros(0, int)
    point = scores(confusion(y, pred, k)) if len(y) else {"macro_f1": np.nan, "accuracy": np.nan}
    low = high = float("nan")
    if len(y):
        dist = block_bootstrap(y, {"cnn": pred}, blocks, k, n_bootstrap, seed)["cnn"]
        low, high = interval(dist["macro_f1"])
    return EndToEnd(
        n_xenium_nuclei=len(truth_polygons),
        n_predicted_nuclei=len(predicted),
        n_matched=len(t),
        segmentation_precision=float(precision),
        segmentation_recall=float(recall),
        segmentation_f1=float(f1),
        mean_matched_iou=float(iou.mean()) if len(iou) else float("nan"),
        n_labelled_matched=int(len(y)),
        macro_f1=float(point["macro_f1"]),
        macro_f1_ci_low=low,
        macro_f1_ci_high=high,
        accuracy=float(point["accuracy"]),
        n_blocks=int(blocks.max()) + 1 if len(blocks) else 0,
    )


def against_sample(
    paths: ProjectPaths, image_path: str | Path, prediction: PredictionFiles, model_card: dict
) -> tuple[EndToEnd | None, str]:
    """The end-to-end figures when the predicted image is the morphology image of a registered sample that the model
    was not trained on and that has labels in the model's label version; otherwise None and why not."""
    from xenium_assets.bundle.validate import inspect_bundle
    from xenium_assets.labels.store import read_labels
    from xenium_assets.registry import SampleRegistry

    if not Path(image_path).is_dir():
        return None, "the image is not a Xenium bundle: there is nothing to compare with"
    entry = SampleRegistry(paths.samples_dir).find_bundle(image_path)
    if entry is None:
        return None, "the bundle is not a registered sample: add it and label it to compare"
    held_out = model_card.get("split", {}).get("holdout_sample") == entry.key  # its cells were only tested on
    if entry.key in model_card["samples"] and not held_out:
        return None, f"sample {entry.key!r} was in the model's training data: no end-to-end figures from it"
    version = model_card["label_version"]
    table, unlabelled = read_labels(paths, [entry.key], version)
    if unlabelled:
        return None, f"sample {entry.key!r} has no labels in {version}: materialize cell_labels for it to compare"
    usable = table[table["excluded_reason"] == ""].set_index("cell_id")["label"]
    report = inspect_bundle(
        entry.bundle_dir, pixel_size_um=entry.pixel_size_um, image_origin_um=entry.image_origin_um or (0.0, 0.0)
    )
    ids, polygons = xenium_nuclei(report)
    summary = prediction.read_summary()
    nuclei = gpd.read_parquet(prediction.nuclei)
    grid = summary["image_px"]
    scale = summary["pixel_size_um"]
    result = end_to_end(nuclei, ids, polygons, usable, model_card["classes"], (grid[0], grid[1]), scale)
    return result, f"sample {entry.key!r}, held out from training, labels {version}"
