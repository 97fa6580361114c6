"""Train a model on the shards and evaluate it: the two functions the Dagster assets call.

Both take the shards and the labels of one reference version (key, label, confidence), joined by key.
A trained model is a folder: ``best.ckpt``, ``model.json`` (classes, label version, input
representation, normalisation, split), ``split.parquet`` (tile -> split) and ``history.csv``.
Evaluation rebuilds the same test split from it, so a report can always be re-made from a model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xenium_assets.atomic import atomic_file, write_json
from xenium_assets.labels.table import MIN_CLASS_CELLS
from xenium_assets.training import report as figures
from xenium_assets.training.data import DataConfig, PatchDataModule, iter_patches, join_labels, load_index, shard_splits
from xenium_assets.training.evaluate import (
    FEATURE_NAMES,
    Evaluation,
    evaluate,
    morphology_baseline,
    morphology_features,
)
from xenium_assets.training.splits import SplitConfig, spatial_split, split_summary
from xenium_assets.training.train import FitResult, TrainConfig, fit, predict

MODEL_CARD = "model.json"
SPLIT = "split.parquet"
HISTORY = "history.csv"
SALIENCY_PER_GROUP = 3
MORPHOLOGY_TRAIN_CELLS = 50_000
"""Train cells the morphology baseline is fitted on, at most (whole shards, drawn at random): a logistic regression
on 8 features needs no more, and every cell costs a patch decode and its features, about 2 ms: all 650,000 train
cells of a 10^6-cell project would take over 20 minutes."""


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


def _datamodule(
    index: pd.DataFrame, assignment: pd.DataFrame, classes: list[str], percentiles: dict, data: DataConfig, seed: int
) -> PatchDataModule:
    labels = dict(zip(index["key"], index["label"], strict=True))
    return PatchDataModule(shard_splits(index, assignment), classes, percentiles, labels, data, seed=seed)


def labelled_index(
    sample_dirs: dict[str, Path], labels: pd.DataFrame
) -> tuple[pd.DataFrame, dict[str, tuple[float, float]]]:
    """The shard index of the cells with a usable label, the label joined on by key; the DAPI percentiles."""
    index, percentiles = load_index(sample_dirs)
    if index.empty:
        raise TrainingError("no patch shards: materialize patch_shards first")
    joined = join_labels(index, labels)
    if joined.empty:
        raise TrainingError(
            f"none of the {len(index):,} patches has a usable label: materialize cell_labels for the shards' samples"
        )
    return joined, percentiles


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
    """Spatial split of the shards' labelled cells (``labels``: key, label, confidence of one reference version),
    then fit; classes with fewer than ``min_class_cells`` patches are left out."""
    index, percentiles = labelled_index(sample_dirs, labels)
    classes, dropped = select_classes(index, min_class_cells)
    index = index[index["label"].isin(classes)]
    assignment = spatial_split(index, classes, split)
    datamodule = _datamodule(index, assignment, classes, percentiles, data, train.seed)
    for name in ("train", "val", "test"):
        if not datamodule.splits.counts[name]:
            raise TrainingError(f"the {name} split is empty: too few tiles with labelled cells")
    out_dir.mkdir(parents=True, exist_ok=True)
    result = fit(datamodule, train, out_dir, loggers=loggers, report=report)
    with atomic_file(out_dir / SPLIT) as tmp:
        assignment.to_parquet(tmp)
    with atomic_file(out_dir / HISTORY) as tmp:
        result.history.to_csv(tmp, index=False)
    write_json(
        out_dir / MODEL_CARD,
        {
            "classes": classes,
            "dropped_classes": dropped,
            "label_version": label_version,
            "samples": sorted(sample_dirs),
            "percentiles": {k: list(v) for k, v in percentiles.items()},
            "data": asdict(data),
            "train": asdict(train),
            "split": asdict(split),
            "split_description": split.describe(),
            "checkpoint": result.checkpoint.name,
            "best_val_macro_f1": result.best_val_macro_f1,
            "epochs": result.epochs,
        },
    )
    shards = sorted(index["path"].unique())
    return TrainedModel(out_dir, result, classes, dropped, split_summary(index, assignment), label_version, shards)


def _features(
    urls: list[str], percentiles: dict, labelled: dict[str, str], limit: int | None = None
) -> tuple[np.ndarray, list[str], list[str]]:
    """Morphology features, labels and keys of the shards' ``labelled`` cells (key -> label), in shard order (the
    first ``limit`` if given)."""
    feats, labels, keys = [], [], []
    for dapi, mask, batch_labels, batch_keys, _ in iter_patches(urls, percentiles, labelled):
        feats.append(morphology_features(dapi, mask))
        labels += batch_labels
        keys += batch_keys
        if limit is not None and len(keys) >= limit:
            break
    x = np.concatenate(feats) if feats else np.zeros((0, 8))
    return x[:limit], labels[:limit], keys[:limit]


def evaluate_model(
    model_dir: Path,
    sample_dirs: dict[str, Path],
    labels: pd.DataFrame,
    out_dir: Path,
    *,
    seed: int = 0,
    morphology_train_cells: int = MORPHOLOGY_TRAIN_CELLS,
    report: Callable[[str], None] = print,
) -> tuple[Evaluation, figures.Report, pd.DataFrame]:
    """Test-split metrics, baselines, permutation test and pictures; writes the report into ``out_dir``.

    ``labels``: key, label, confidence in the reference version the model was trained on (its card says which)."""
    card = json.loads((model_dir / MODEL_CARD).read_text())
    classes = card["classes"]
    index, _ = labelled_index(sample_dirs, labels)
    index = index[index["label"].isin(classes)]
    percentiles = {k: tuple(v) for k, v in card["percentiles"].items()}
    assignment = pd.read_parquet(model_dir / SPLIT)
    data = DataConfig(**card["data"])
    datamodule = _datamodule(index, assignment, classes, percentiles, data, seed)
    report("predicting the test split")
    predictions = predict(model_dir / card["checkpoint"], datamodule)
    test = predictions.merge(index[["key", "sample", "tile", "label", "x_um", "y_um"]], on="key")
    test["predicted"] = np.asarray(classes)[test["pred"]]
    class_index = {c: i for i, c in enumerate(classes)}
    # Every train cell's class, from the index (the majority baseline needs no pixels).
    train_counts = datamodule.splits.class_counts["train"]
    train_y = np.repeat([class_index[c] for c in train_counts], list(train_counts.values()))
    train_urls = datamodule.splits.urls["train"]
    if len(train_y) > morphology_train_cells:
        train_urls = list(np.random.default_rng(seed).permutation(train_urls))
    report("morphology features of the train and test splits")
    labelled = dict(zip(index["key"], index["label"], strict=True))
    train_x, train_labels, _ = _features(train_urls, percentiles, labelled, limit=morphology_train_cells)
    test_x, _, test_keys = _features(datamodule.splits.urls["test"], percentiles, labelled)
    morph_y = np.array([class_index[c] for c in train_labels])
    morph = pd.Series(morphology_baseline(train_x, morph_y, test_x, seed=seed), index=test_keys).loc[test["key"]]
    y = test["y"].to_numpy()
    ev = evaluate(classes, y, test["pred"].to_numpy(), train_y, morph.to_numpy(), seed=seed)
    rep = _build_report(ev, card, model_dir, test, datamodule, classes, percentiles, (len(morph_y), len(train_y)))
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(out_dir / "predictions.parquet") as tmp:
        test.to_parquet(tmp)
    write_json(out_dir / "metrics.json", summary(ev, card))
    rep.write(out_dir)
    return ev, rep, test


def summary(ev: Evaluation, card: dict) -> dict:
    """The headline numbers (the asset's metadata keys)."""
    return {
        "test_macro_f1": ev.cnn["macro_f1"],
        "test_macro_f1_ci_low": ev.cnn_ci["macro_f1"][0],
        "test_macro_f1_ci_high": ev.cnn_ci["macro_f1"][1],
        "test_accuracy": ev.cnn["accuracy"],
        "test_accuracy_ci_low": ev.cnn_ci["accuracy"][0],
        "test_accuracy_ci_high": ev.cnn_ci["accuracy"][1],
        "test_balanced_accuracy": ev.cnn["balanced_accuracy"],
        "test_balanced_accuracy_ci_low": ev.cnn_ci["balanced_accuracy"][0],
        "test_balanced_accuracy_ci_high": ev.cnn_ci["balanced_accuracy"][1],
        "majority_macro_f1": ev.majority["macro_f1"],
        "morphology_macro_f1": ev.morphology["macro_f1"],
        "permutation_p_value": ev.permutation_p,
        "n_test_cells": int(len(ev.y)),
        "signal_detected": ev.signal_detected,
        "beats_morphology": ev.beats_morphology,
        "split": card["split_description"],
    }


def _fmt(ci: tuple[float, float]) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _build_report(
    ev: Evaluation,
    card: dict,
    model_dir: Path,
    test: pd.DataFrame,
    datamodule: PatchDataModule,
    classes: list[str],
    percentiles: dict,
    morphology_cells: tuple[int, int],
) -> figures.Report:
    """``morphology_cells``: the train cells the morphology baseline was fitted on, and all train cells."""
    rep = figures.Report("How well does DAPI predict the expression-defined cell class?")
    signal = "yes" if ev.signal_detected else "no"
    more = "yes" if ev.beats_morphology else "no"
    rep.add(
        "Answer",
        "\n".join(
            [
                f"- Does DAPI carry signal at all? **{signal}**: permutation p = {ev.permutation_p:.4f} "
                f"({len(ev.y)} test cells, labels shuffled 1,000 times); macro-F1 {ev.cnn['macro_f1']:.3f}, "
                f"95 % CI {_fmt(ev.cnn_ci['macro_f1'])}, against {ev.majority['macro_f1']:.3f} for always "
                "predicting the majority class.",
                f"- Does the CNN see more than simple morphology? **{more}**: the CNN's interval against "
                f"{ev.morphology['macro_f1']:.3f} (interval {_fmt(ev.morphology_ci['macro_f1'])}) for a "
                f"logistic regression on {', '.join(n.replace('_', ' ') for n in FEATURE_NAMES)}, fitted on "
                f"{morphology_cells[0]:,} of the {morphology_cells[1]:,} train cells.",
                f"- Split: {card['split_description']}. Whole tiles go to one split, so neighbours of a test "
                "cell are never trained on; a per-cell random split would overstate accuracy.",
                f"- Labels: reference {card['label_version']}; input: {card['data']['representation']} at "
                f"{card['data']['input_px']} px; backbone {card['train']['backbone']} (no pretrained weights).",
            ]
        ),
    )
    rows = [
        ("CNN (DAPI)", ev.cnn, ev.cnn_ci),
        ("morphology features", ev.morphology, ev.morphology_ci),
        ("majority class", ev.majority, None),
    ]
    metrics = ("accuracy", "balanced_accuracy", "macro_f1")
    table = ["| model | accuracy | balanced accuracy | macro-F1 |", "|---|---|---|---|"]
    for name, s, ci in rows:
        cells = [f"{s[m]:.3f}" + (f" {_fmt(ci[m])}" if ci else "") for m in metrics]
        table.append(f"| {name} | {' | '.join(cells)} |")
    note = "Bootstrap 95 % intervals in brackets (1,000 resamples of the test cells)."
    if card["dropped_classes"]:
        left_out = ", ".join(f"{c} ({n} patches)" for c, n in card["dropped_classes"].items())
        note += f" Classes with too few patches to train on were left out: {left_out}."
    rep.add("Test metrics", "\n".join(table) + "\n\n" + note)
    per = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    per += [
        f"| {c} | {r.precision:.3f} | {r.recall:.3f} | {r.f1:.3f} | {int(r.support)} |"
        for c, r in ev.per_class.iterrows()
    ]
    rep.add(
        "Per class",
        "\n".join(per) + "\n\n" + rep.image("confusion.png", figures.confusion_figure(ev), "confusion matrix"),
    )
    history = pd.read_csv(model_dir / HISTORY)
    rep.add(
        "Training",
        f"Best validation macro-F1 {card['best_val_macro_f1']:.3f} after {card['epochs']} epochs.\n\n"
        + rep.image("learning_curves.png", figures.learning_curves_figure(history), "learning curves"),
    )
    rep.add("What the model looks at", _saliency(rep, model_dir, card, test, datamodule, classes, percentiles))
    maps = [
        rep.image(f"slide_{s}.png", figures.slide_map_figure(test, s), f"slide map {s}")
        for s in sorted(test["sample"].unique())
    ]
    rep.add("Predictions in place (test tiles)", "\n\n".join(maps))
    return rep


def _saliency(
    rep: figures.Report,
    model_dir: Path,
    card: dict,
    test: pd.DataFrame,
    datamodule: PatchDataModule,
    classes: list[str],
    percentiles: dict,
) -> str:
    """Integrated gradients for up to 3 correctly and 3 wrongly classified test cells per class."""
    from xenium_assets.training.data import resize, to_input
    from xenium_assets.training.model import CellClassifier

    test = test.assign(correct=test["label"] == test["predicted"])
    chosen = test.groupby(["label", "correct"], group_keys=False).head(SALIENCY_PER_GROUP)
    wanted = set(chosen["key"])
    patches: dict[str, tuple] = {}
    labelled = dict(zip(test["key"], test["label"], strict=True))
    for dapi, mask, _, keys, metas in iter_patches(datamodule.splits.urls["test"], percentiles, labelled):
        for i, key in enumerate(keys):
            if key in wanted:
                patches[key] = (dapi[i], mask[i], metas[i])
    module = CellClassifier.load_from_checkpoint(model_dir / card["checkpoint"], map_location="cpu")
    size = card["data"]["input_px"]
    parts = []
    for correct in (True, False):
        rows = chosen[chosen["correct"] == correct]
        rows = rows[rows["key"].isin(patches)]
        if rows.empty:
            continue
        x = torch.stack(
            [
                to_input(np.asarray(patches[k][0] * 1.0), patches[k][1], 0.0, 1.0, card["data"]["representation"])
                for k in rows["key"]
            ]
        )
        x = resize(x, size)
        cam = figures.integrated_gradients(module.model, x, torch.as_tensor(rows["pred"].to_numpy()))
        titles = [f"{r.label} -> {r.predicted}" for r in rows.itertuples()]
        name = "saliency_correct.png" if correct else "saliency_wrong.png"
        parts.append(
            ("Correct" if correct else "Wrong")
            + " (label -> prediction; integrated gradients of the predicted class on DAPI):\n\n"
            + rep.image(name, figures.saliency_figure(x[:, 0].numpy(), cam, titles), name)
        )
    return "\n\n".join(parts) or "no test cells"
