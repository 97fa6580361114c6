"""The honest answer on the test split, from predictions: scores with block-bootstrap intervals, paired model
differences, the toroidal-shift null, and the scores on contrarian cells.

Two questions are answered separately. Does DAPI carry signal at all? The CNN's macro-F1 against the null of
shifted label maps (``spatial_stats``): p = (1 + #{null >= observed}) / (n + 1). Does the CNN see more than simple
morphology? The block-bootstrap interval of the paired difference CNN minus morphology baseline: "more" only when
it lies above 0, "not distinguishable" when it straddles 0. Where does the signal lie? The same paired differences
between a model that sees the cell alone and one that sees its surroundings, and scores on cells whose label
differs from most of their neighbours', where context cannot help.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from xenium_assets.training.spatial_stats import (
    LabelField,
    StatsConfig,
    block_bootstrap,
    block_ids,
    confusion,
    interval,
    scores,
    shift_test,
)

CONTRARIAN_NEIGHBOURS = 8
"""Nearest labelled cells whose majority a contrarian cell's label differs from."""
METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
MODEL_NAMES = {
    "cnn": "CNN (DAPI patch)",
    "cnn_cell": "CNN on the cell alone (masked DAPI)",
    "cnn_boundary": "CNN with the Xenium cell boundary (dapi_masks)",
    "morphology": "morphology features",
    "morphology_neighbours": "morphology features + neighbours'",
}


@dataclass(frozen=True)
class Scored:
    """A model's point scores and block-bootstrap 95 % intervals."""

    point: dict[str, float]
    ci: dict[str, tuple[float, float]]


@dataclass(frozen=True)
class Difference:
    """Macro-F1 of model ``a`` minus model ``b`` on the same resampled blocks."""

    a: str
    b: str
    point: float
    ci: tuple[float, float]

    @property
    def verdict(self) -> str:
        if self.ci[0] > 0:
            return "higher"
        return "lower" if self.ci[1] < 0 else "not distinguishable"


@dataclass
class Evaluation:
    """Everything the report states about the test split."""

    classes: list[str]
    cells: pd.DataFrame
    """Test cells: key, sample, tile, x_um, y_um, y (true class index), one prediction column per model."""
    models: dict[str, Scored]
    differences: dict[str, Difference]
    p_value: float
    null: np.ndarray
    contrarian: dict[str, Scored]
    n_contrarian: int
    majority: dict[str, float]
    config: StatsConfig
    n_blocks: int
    per_class: pd.DataFrame
    confusion: np.ndarray
    extra: dict = field(default_factory=dict)
    """Counts the report shows beside the scores (buffer cells, cells of untrained classes)."""

    @property
    def y(self) -> np.ndarray:
        return self.cells["y"].to_numpy()

    @property
    def signal_detected(self) -> bool:
        """The CNN's macro-F1 lies beyond the shifted-label null at the configured alpha."""
        return self.p_value < self.config.alpha

    @property
    def chance_p99(self) -> float:
        return float(np.percentile(self.null, 99))

    @property
    def beats_morphology(self) -> bool:
        """The paired interval of CNN minus morphology lies above 0."""
        return self.differences["cnn-morphology"].verdict == "higher"


def contrarian_cells(test: pd.DataFrame, labelled: pd.DataFrame, k: int = CONTRARIAN_NEIGHBOURS) -> np.ndarray:
    """Test cells whose label differs from the most common label of their ``k`` nearest labelled cells (every
    split, same sample): where the neighbourhood points the wrong way, so context cannot help."""
    from scipy.spatial import cKDTree

    out = np.zeros(len(test), dtype=bool)
    for sample, rows in test.groupby("sample", sort=False).indices.items():
        pool = labelled[labelled["sample"] == sample]
        if len(pool) < 2:
            continue
        codes, names = pd.factorize(pool["label"])
        xy = test[["x_um", "y_um"]].to_numpy()[rows]
        _, near = cKDTree(pool[["x_um", "y_um"]].to_numpy()).query(xy, k=min(k + 1, len(pool)))
        near_codes = codes[near[:, 1:]]  # the nearest is the cell itself
        counts = np.zeros((len(rows), len(names)), dtype=np.int64)
        np.add.at(counts, (np.repeat(np.arange(len(rows)), near_codes.shape[1]), near_codes.ravel()), 1)
        majority = names[counts.argmax(axis=1)]
        out[rows] = test["label"].to_numpy()[rows] != np.asarray(majority)
    return out


def _scored(dist: dict[str, np.ndarray], cm: np.ndarray) -> Scored:
    point = {m: float(v) for m, v in scores(cm).items()}
    return Scored(point, {m: interval(dist[m]) for m in METRICS})


def assess(
    classes: list[str],
    cells: pd.DataFrame,
    predictions: dict[str, np.ndarray],
    fields: dict[str, LabelField],
    contrarian: np.ndarray,
    majority_class: int,
    config: StatsConfig,
    comparisons: tuple[tuple[str, str], ...] = (("cnn", "morphology"),),
) -> Evaluation:
    """Scores, intervals, differences and the null for ``predictions`` (model -> class index per test cell;
    ``cnn`` first). ``cells``: key, sample, tile, x_um, y_um, label, y of the test cells."""
    from sklearn.metrics import precision_recall_fscore_support

    k = len(classes)
    y = cells["y"].to_numpy()
    blocks = block_ids(cells, config.block_um)
    dist = block_bootstrap(y, predictions, blocks, k, config.n_bootstrap, config.seed)
    models = {name: _scored(dist[name], confusion(y, p, k)) for name, p in predictions.items()}
    differences = {}
    for a, b in comparisons:
        if a in predictions and b in predictions:
            diff = dist[a]["macro_f1"] - dist[b]["macro_f1"]
            point = models[a].point["macro_f1"] - models[b].point["macro_f1"]
            differences[f"{a}-{b}"] = Difference(a, b, point, interval(diff))
    p_value, null = shift_test(fields, cells, y, predictions["cnn"], k, config)
    few = contrarian.sum()
    sub = {name: p[contrarian] for name, p in predictions.items()}
    sub_dist = (
        block_bootstrap(y[contrarian], sub, blocks[contrarian], k, config.n_bootstrap, config.seed) if few else {}
    )
    contrarian_scores = {name: _scored(sub_dist[name], confusion(y[contrarian], p, k)) for name, p in sub.items()}
    pred = predictions["cnn"]
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=np.arange(k), zero_division=0)
    per_class = pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "support": support}, index=pd.Index(classes, name="class")
    )
    frame = cells.assign(**{f"pred_{name}": p for name, p in predictions.items()})
    return Evaluation(
        classes=classes,
        cells=frame,
        models=models,
        differences=differences,
        p_value=p_value,
        null=null,
        contrarian=contrarian_scores if few else {},
        n_contrarian=int(few),
        majority={m: float(v) for m, v in scores(confusion(y, np.full_like(y, majority_class), k)).items()},
        config=config,
        n_blocks=int(blocks.max()) + 1 if len(blocks) else 0,
        per_class=per_class,
        confusion=confusion(y, pred, k),
    )
