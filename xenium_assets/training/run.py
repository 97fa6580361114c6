"""Train a model on the shards and evaluate it: the two functions the Dagster assets call.

Both take the shards and the labels of one reference version (key, label, confidence), joined by key.
A trained model is a folder: ``best.ckpt``, ``model.json`` (classes, label version, input
representation, normalisation, split), ``split.parquet`` (tile -> split) and ``history.csv``.
Evaluation rebuilds the same test split (and its buffer) from it, so a report can always be re-made from a model.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xenium_assets.atomic import atomic_file, write_json
from xenium_assets.labels.table import MIN_CLASS_CELLS
from xenium_assets.layout import ModelFiles, ReportFiles
from xenium_assets.patches.masks import DEFAULT_REPRESENTATION, NEEDS_CELL_BOUNDARY
from xenium_assets.training import report as figures
from xenium_assets.training.data import (
    DataConfig,
    PatchDataModule,
    ShardFormatError,
    iter_patches,
    join_labels,
    load_index,
    require_rings,
    shard_splits,
)
from xenium_assets.training.evaluate import Evaluation, assess, contrarian_cells
from xenium_assets.training.morphology import (
    FEATURE_NAMES,
    morphology_baseline,
    morphology_features,
    neighbour_features,
)
from xenium_assets.training.spatial_stats import (
    StatsConfig,
    block_bootstrap,
    block_ids,
    confusion,
    interval,
    label_fields,
    scores,
)
from xenium_assets.training.splits import BUFFER, SplitConfig, cell_splits, spatial_split, split_summary
from xenium_assets.training.tensors import mask_channels, resize
from xenium_assets.training.train import FitResult, TrainConfig, fit, predict

MORPHOLOGY_TRAIN_CELLS = 50_000
"""Train cells the morphology baseline is fitted on, at most (whole shards, drawn at random): a logistic regression
on 16 features needs no more, and every cell costs a patch decode and its features, about 2 ms: all 650,000 train
cells of a 10^6-cell project would take over 20 minutes."""
COMPARISONS = (
    ("cnn", "morphology"),
    ("cnn", "cnn_cell"),
    ("cnn_boundary", "cnn"),
    ("morphology_neighbours", "morphology"),
    ("cnn", "morphology_neighbours"),
)


@dataclass(frozen=True)
class ReportOptions:
    """What the report computes beside the model's own test scores."""

    stats: StatsConfig = StatsConfig()
    loso_max_folds: int = 4
    """Leave-one-sample-out models to train, at most (the largest samples first); 0: none."""
    cell_only_model: bool = True
    """Also train the CNN on the cell alone (masked DAPI), to tell the cell's signal from its surroundings'."""
    boundary_model: bool = True
    """For a model that does not read the Xenium cell boundary, also train one that does (dapi_masks): what the
    boundary adds over an input that a DAPI-only image reproduces."""
    extra_max_epochs: int | None = None
    """Epochs of those extra models; None: as the model's."""
    morphology_train_cells: int = MORPHOLOGY_TRAIN_CELLS


class TrainingError(ValueError):
    """Training cannot start (no shards, too few classes...)."""


@dataclass
class TrainedModel:
    folder: Path
    fit: FitResult
    classes: list[str]
    dropped_classes: dict[str, int]
    split_counts: pd.DataFrame
    label_version: str
    shards: list[str]


def select_classes(index: pd.DataFrame, min_cells: int) -> tuple[list[str], dict[str, int]]:
    """Classes with at least ``min_cells`` patches, and the left-out ones with their counts."""
    counts = index["label"].value_counts()
    dropped = {c: int(n) for c, n in counts.items() if n < min_cells}
    classes = sorted(c for c in counts.index if c not in dropped)
    if len(classes) < 2:
        raise TrainingError(f"fewer than 2 classes with >= {min_cells} patches ({counts.to_dict()})")
    return classes, dropped


def labelled_index(
    sample_dirs: dict[str, Path], labels: pd.DataFrame, representation: str = DEFAULT_REPRESENTATION
) -> tuple[pd.DataFrame, dict[str, tuple[float, float]]]:
    """The shard index of the cells with a usable label, the label joined on by key; the DAPI percentiles. Shards
    without the masks ``representation`` reads are refused."""
    try:
        index, percentiles = load_index(sample_dirs)
        require_rings(index, sample_dirs, representation)
    except ShardFormatError as exc:
        raise TrainingError(str(exc)) from exc
    if index.empty:
        raise TrainingError("no patch shards: materialize patch_shards first")
    joined = join_labels(index, labels)
    if joined.empty:
        raise TrainingError(
            f"none of the {len(index):,} patches has a usable label: materialize cell_labels for the shards' samples"
        )
    return joined, percentiles


def _fit(
    index: pd.DataFrame,
    splits: pd.Series,
    classes: list[str],
    percentiles: dict,
    data: DataConfig,
    train: TrainConfig,
    out_dir: Path,
    loggers: list | None,
    report: Callable[[str], None],
) -> tuple[FitResult, PatchDataModule]:
    """Fit on the train cells, select on the validation cells; buffer cells are never drawn."""
    kept = splits != BUFFER
    labels = dict(zip(index.loc[kept, "key"], index.loc[kept, "label"], strict=True))
    datamodule = PatchDataModule(
        shard_splits(index[kept], splits[kept]), classes, percentiles, labels, data, train.seed
    )
    for name in ("train", "val", "test"):
        if not datamodule.splits.counts[name]:
            raise TrainingError(
                f"the {name} split is empty after the buffer: too few tiles with labelled cells "
                "(smaller SplitConfig.block_um or margin_um, or more data)"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    return fit(datamodule, train, out_dir, loggers=loggers, report=report), datamodule


def patch_geometry(index: pd.DataFrame) -> dict[str, float | None]:
    """The patches the model was trained on, which prediction cuts again: side and pixel size, and the ring (None:
    masks without one)."""
    ring = index["ring_um"].dropna()
    return {
        "size_um": float(index["patch_um"].max()),
        "pixel_size_um": float(index["pixel_size_um"].max()),
        "ring_um": float(ring.max()) if len(ring) else None,
    }


def train_model(
    sample_dirs: dict[str, Path],
    labels: pd.DataFrame,
    label_version: str,
    out_dir: Path,
    *,
    data: DataConfig = DataConfig(),
    train: TrainConfig = TrainConfig(),
    split: SplitConfig = SplitConfig(),
    min_class_cells: int = MIN_CLASS_CELLS,
    loggers: list | None = None,
    report: Callable[[str], None] = print,
) -> TrainedModel:
    """Buffered spatial split of the shards' labelled cells (``labels``: key, label, confidence of one reference
    version), then fit; classes with fewer than ``min_class_cells`` patches are left out."""
    index, percentiles = labelled_index(sample_dirs, labels, data.representation)
    classes, dropped = select_classes(index, min_class_cells)
    index = index[index["label"].isin(classes)]
    assignment = spatial_split(index, classes, split)
    splits = cell_splits(index, assignment, split)
    result, _ = _fit(index, splits, classes, percentiles, data, train, out_dir, loggers, report)
    files = ModelFiles(out_dir)
    with atomic_file(files.split) as tmp:
        assignment.to_parquet(tmp)
    with atomic_file(files.history) as tmp:
        result.history.to_csv(tmp, index=False)
    write_json(
        files.card,
        {
            "classes": classes,
            "dropped_classes": dropped,
            "label_version": label_version,
            "samples": sorted(sample_dirs),
            "percentiles": {k: list(v) for k, v in percentiles.items()},
            "data": asdict(data),
            "patch": patch_geometry(index),
            "needs_cell_boundary": data.representation in NEEDS_CELL_BOUNDARY,
            "train": asdict(train),
            "split": asdict(split),
            "split_description": split.describe(),
            "n_buffer_cells": int((splits == BUFFER).sum()),
            "checkpoint": result.checkpoint.name,
            "best_val_macro_f1": result.best_val_macro_f1,
            "epochs": result.epochs,
        },
    )
    shards = sorted(index["path"].unique())
    return TrainedModel(out_dir, result, classes, dropped, split_summary(index, splits), label_version, shards)


def _features(
    urls: list[str], percentiles: dict, wanted: dict[str, str], data: DataConfig, limit: int | None = None
) -> tuple[np.ndarray, list[str]]:
    """Morphology features and keys of the shards' ``wanted`` cells (key -> label), in shard order (the first
    ``limit`` if given), measured on the pixels the CNN reads: the patch resized to its input side, with the
    nucleus and the region around it that its representation reads."""
    feats, keys = [], []
    for dapi, mask, _, batch_keys, _ in iter_patches(urls, percentiles, wanted):
        inner, around = mask_channels(mask, data.representation)
        x = torch.stack([torch.from_numpy(dapi), torch.from_numpy(inner), torch.from_numpy(around)], dim=1)
        x = resize(x.float(), data.input_px).numpy()
        feats.append(morphology_features(x[:, 0], (x[:, 1] + 2 * x[:, 2]).astype(np.uint8)))
        keys += batch_keys
        if limit is not None and len(keys) >= limit:
            break
    return (np.concatenate(feats) if feats else np.zeros((0, len(FEATURE_NAMES))))[:limit], keys[:limit]


def _morphology_predictions(
    index: pd.DataFrame,
    splits: pd.Series,
    in_test_tiles: pd.Series,
    dm: PatchDataModule,
    percentiles: dict,
    data: DataConfig,
    test_keys: pd.Series,
    limit: int,
    seed: int,
) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
    """Predictions of the two morphology baselines for ``test_keys``, and (train cells fitted on, train cells).

    Neighbours are looked up among cells of the same split's tiles: a train cell's among the train cells drawn, a
    test cell's among every cell of the test tiles (``in_test_tiles``; buffer cells included: they are never
    trained on)."""
    by_key = index.set_index("key")
    class_index = {c: i for i, c in enumerate(dm.classes)}
    train_urls = dm.splits.urls["train"]
    if splits.eq("train").sum() > limit:
        train_urls = list(np.random.default_rng(seed).permutation(train_urls))
    train_keys = index.loc[splits == "train", "key"]
    train_x, fitted = _features(train_urls, percentiles, dict.fromkeys(train_keys, ""), data, limit=limit)
    test_urls = sorted(index.loc[in_test_tiles, "path"].unique())
    test_x, test_all = _features(test_urls, percentiles, dict.fromkeys(index.loc[in_test_tiles, "key"], ""), data)
    train_y = by_key.loc[fitted, "label"].map(class_index).to_numpy()
    out = {}
    for name, transform in (("morphology", None), ("morphology_neighbours", neighbour_features)):
        a = transform(by_key.loc[fitted].reset_index(), train_x) if transform else train_x
        b = transform(by_key.loc[test_all].reset_index(), test_x) if transform else test_x
        pred = pd.Series(morphology_baseline(a, train_y, b, seed=seed), index=test_all)
        out[name] = pred.loc[test_keys].to_numpy()
    return out, (len(fitted), int(splits.eq("train").sum()))


def _extra_train(card: dict, options: ReportOptions) -> TrainConfig:
    train = TrainConfig(**card["train"])
    return replace(train, max_epochs=options.extra_max_epochs) if options.extra_max_epochs else train


def _comparison_cnn(
    representation: str,
    index: pd.DataFrame,
    splits: pd.Series,
    card: dict,
    percentiles: dict,
    options: ReportOptions,
    out_dir: Path,
    test_keys: pd.Series,
    report: Callable[[str], None],
) -> np.ndarray:
    """Test predictions of a CNN trained on the same cells and splits as the model, reading ``representation``: the
    cell alone (what the surroundings add), or the Xenium cell boundary (what it adds over the deployable input)."""
    report(f"training the comparison CNN on {representation}")
    data = replace(DataConfig(**card["data"]), representation=representation)
    result, dm = _fit(
        index, splits, card["classes"], percentiles, data, _extra_train(card, options), out_dir, None, report
    )
    return predict(result.checkpoint, dm).set_index("key").loc[test_keys, "pred"].to_numpy()


def leave_one_sample_out(
    index: pd.DataFrame,
    card: dict,
    percentiles: dict,
    options: ReportOptions,
    out_dir: Path,
    report: Callable[[str], None],
) -> pd.DataFrame:
    """Per held-out sample (the largest ``loso_max_folds``): a model trained on the others, scored on all its cells
    with block-bootstrap intervals. What a user should expect on a new slide."""
    sizes = index["sample"].value_counts()
    folds = list(sizes.index[: options.loso_max_folds])
    classes = card["classes"]
    class_index = {c: i for i, c in enumerate(classes)}
    rows = []
    for i, sample in enumerate(folds):
        report(f"leave-one-sample-out {i + 1}/{len(folds)}: training without {sample}")
        split = SplitConfig(**{**card["split"], "holdout_sample": sample})
        splits = cell_splits(index, spatial_split(index, classes, split), split)
        try:
            result, dm = _fit(
                index,
                splits,
                classes,
                percentiles,
                DataConfig(**card["data"]),
                _extra_train(card, options),
                out_dir / sample,
                None,
                report,
            )
        except TrainingError as exc:
            report(f"leave-one-sample-out without {sample} skipped: {exc}")
            continue
        pred = predict(result.checkpoint, dm).merge(index[["key", "sample", "tile", "x_um", "y_um"]], on="key")
        y, p = pred["y"].to_numpy(), pred["pred"].to_numpy()
        stats = options.stats
        dist = block_bootstrap(
            y, {"cnn": p}, block_ids(pred, stats.block_um), len(classes), stats.n_bootstrap, stats.seed
        )
        low, high = interval(dist["cnn"]["macro_f1"])
        rows.append(
            {
                "sample": sample,
                "n_cells": len(pred),
                "macro_f1": float(scores(confusion(y, p, len(class_index)))["macro_f1"]),
                "ci_low": low,
                "ci_high": high,
            }
        )
    return pd.DataFrame(rows, columns=["sample", "n_cells", "macro_f1", "ci_low", "ci_high"])


def evaluate_model(
    model_dir: Path,
    sample_dirs: dict[str, Path],
    labels: pd.DataFrame,
    label_version: str,
    out_dir: Path,
    *,
    options: ReportOptions = ReportOptions(),
    report: Callable[[str], None] = print,
) -> tuple[Evaluation, figures.Report]:
    """Test-split metrics, baselines, the spatial null, where the signal lies, leave-one-sample-out, pictures;
    writes the report into ``out_dir``.

    ``labels``: key, label, confidence of reference ``label_version``, which must be the one the model was trained
    on (its card says which)."""
    model_files = ModelFiles(model_dir)
    card = model_files.read_card()
    if card["label_version"] != label_version:
        raise TrainingError(
            f"{model_dir.name} was trained on labels {card['label_version']}, not {label_version}: evaluate it with "
            f"labels {card['label_version']}, or re-materialize trained_model on {label_version}"
        )
    classes = card["classes"]
    full, _ = labelled_index(sample_dirs, labels, card["data"]["representation"])
    untrained = full.loc[~full["label"].isin(classes), "label"].value_counts().to_dict()
    index = full[full["label"].isin(classes)].reset_index(drop=True)
    percentiles = {k: tuple(v) for k, v in card["percentiles"].items()}
    missing = sorted(set(index["sample"]) - set(percentiles))
    if missing:
        raise TrainingError(
            f"{model_dir.name} was not trained with samples {', '.join(missing)}: re-materialize trained_model"
        )
    split = SplitConfig(**card["split"])
    assignment = pd.read_parquet(model_files.split)
    splits = cell_splits(index, assignment, split)
    tile_split = index[["sample", "tile"]].merge(assignment, on=["sample", "tile"], how="left")["split"]
    kept = splits != BUFFER
    data = DataConfig(**card["data"])
    labelled = dict(zip(index.loc[kept, "key"], index.loc[kept, "label"], strict=True))
    dm = PatchDataModule(
        shard_splits(index[kept], splits[kept]), classes, percentiles, labelled, data, options.stats.seed
    )
    report("predicting the test split")
    test = predict(model_dir / card["checkpoint"], dm).merge(
        index[["key", "sample", "tile", "label", "x_um", "y_um"]], on="key"
    )
    test["predicted"] = np.asarray(classes)[test["pred"]]
    report("morphology features of the train and test splits")
    predictions = {"cnn": test["pred"].to_numpy()}
    morph, morph_cells = _morphology_predictions(
        index,
        splits,
        pd.Series(tile_split.to_numpy() == "test", index=index.index),
        dm,
        percentiles,
        data,
        test["key"],
        options.morphology_train_cells,
        options.stats.seed,
    )
    predictions.update(morph)
    cell_repr = None
    # The extra models only answer questions in the report: their checkpoints are not kept (nor logged to MLflow).
    scratch = Path(tempfile.mkdtemp(prefix="extra-models-"))
    try:
        shared = (index, splits, card, percentiles, options)
        if options.cell_only_model:
            # The cell alone is masked DAPI; with the full patch when the model itself reads masked DAPI.
            cell_repr = "dapi_masks" if card["data"]["representation"] == "masked_dapi" else "masked_dapi"
            predictions["cnn_cell"] = _comparison_cnn(cell_repr, *shared, scratch / "cell_only", test["key"], report)
        if options.boundary_model and card["data"]["representation"] not in NEEDS_CELL_BOUNDARY:
            predictions["cnn_boundary"] = _comparison_cnn(
                "dapi_masks", *shared, scratch / "boundary", test["key"], report
            )
        loso = None
        if options.loso_max_folds and index["sample"].nunique() >= 2:
            loso = leave_one_sample_out(index, card, percentiles, options, scratch / "loso", report)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    class_index = {c: i for i, c in enumerate(classes)}
    train_counts = dm.splits.class_counts["train"]
    ev = assess(
        classes,
        test,
        predictions,
        label_fields(index, class_index),
        contrarian_cells(test, index),
        class_index[max(train_counts, key=train_counts.get)],
        options.stats,
        COMPARISONS,
    )
    ev.extra.update(
        n_buffer_cells=int((~kept).sum()),
        patch_um=float(index["patch_um"].max()),
        untrained_class_cells=untrained,
        morphology_cells=morph_cells,
        cell_only_representation=cell_repr,
    )
    ev.extra["loso"] = loso
    history = pd.read_csv(model_files.history)
    rep = figures.build_report(ev, card, history, model_dir, test, dm, classes, percentiles)
    out_dir.mkdir(parents=True, exist_ok=True)
    report_files = ReportFiles(out_dir)
    with atomic_file(report_files.predictions) as tmp:
        ev.cells.to_parquet(tmp)
    write_json(report_files.metrics, summary(ev, card))
    rep.write(out_dir)
    return ev, rep


def summary(ev: Evaluation, card: dict) -> dict:
    """The headline numbers (the asset's metadata keys)."""
    cnn = ev.models["cnn"]
    diff = ev.differences["cnn-morphology"]
    out = {}
    for metric in ("macro_f1", "accuracy", "balanced_accuracy"):
        out[f"test_{metric}"] = cnn.point[metric]
        out[f"test_{metric}_ci_low"], out[f"test_{metric}_ci_high"] = cnn.ci[metric]
    out.update(
        {
            "majority_macro_f1": ev.majority["macro_f1"],
            "morphology_macro_f1": ev.models["morphology"].point["macro_f1"],
            "permutation_p_value": ev.p_value,
            "chance_macro_f1_p99": ev.chance_p99,
            "cnn_minus_morphology": diff.point,
            "cnn_minus_morphology_ci_low": diff.ci[0],
            "cnn_minus_morphology_ci_high": diff.ci[1],
            "n_test_cells": int(len(ev.cells)),
            "n_buffer_cells": int(ev.extra["n_buffer_cells"]),
            "n_untrained_class_cells": int(sum(ev.extra["untrained_class_cells"].values())),
            "resampling_unit": f"{ev.config.resampling_unit()} ({ev.n_blocks} blocks)",
            "signal_detected": ev.signal_detected,
            "beats_morphology": ev.beats_morphology,
            "split": card["split_description"],
        }
    )
    if "cnn_boundary-cnn" in ev.differences:
        gain = ev.differences["cnn_boundary-cnn"]
        out["boundary_macro_f1"] = ev.models["cnn_boundary"].point["macro_f1"]
        out["boundary_minus_cnn"] = gain.point
        out["boundary_minus_cnn_ci_low"], out["boundary_minus_cnn_ci_high"] = gain.ci
    if "cnn" in ev.contrarian:
        out["contrarian_macro_f1"] = ev.contrarian["cnn"].point["macro_f1"]
    loso = ev.extra.get("loso")
    if loso is not None and len(loso):
        out["loso_macro_f1_mean"] = float(loso["macro_f1"].mean())
    return out
