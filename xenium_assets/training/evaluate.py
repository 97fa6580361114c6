"""Honest evaluation on the test split: metrics with bootstrap intervals, baselines, a permutation test.

Two questions are answered separately. Does DAPI carry signal at all? A permutation test (the test
labels shuffled 1,000 times against the model's predictions) and the macro-F1 interval against the
majority baseline. Does the CNN see more than simple morphology? The interval against a logistic
regression on the features a biologist would try first (nucleus area, eccentricity, solidity,
intensity, texture). Resampling draws confusion matrices, never cells: memory does not grow with the test split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import shapely

N_RESAMPLES = 1000


def confusion(y: np.ndarray, p: np.ndarray, k: int) -> np.ndarray:
    """Confusion matrices for one (n,) or many (b, n) label/prediction rows: shape (..., k, k)."""
    y2, p2 = np.atleast_2d(y), np.atleast_2d(p)
    b = y2.shape[0]
    codes = (np.arange(b)[:, None] * k * k + y2 * k + p2).ravel()
    out = np.bincount(codes, minlength=b * k * k).reshape(b, k, k)
    return out if y.ndim == 2 else out[0]


def scores(cm: np.ndarray, present: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and macro-F1 of (..., k, k) confusion matrices.

    ``present``: classes that count in the macro averages (those in the test set), as scikit-learn does.
    """
    k = cm.shape[-1]
    present = np.ones(k, dtype=bool) if present is None else present
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(float)
    support = cm.sum(axis=-1).astype(float)
    predicted = cm.sum(axis=-2).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, tp / support, 0.0)
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {
        "accuracy": tp.sum(axis=-1) / np.maximum(cm.sum(axis=(-2, -1)), 1),
        "balanced_accuracy": recall[..., present].mean(axis=-1),
        "macro_f1": f1[..., present].mean(axis=-1),
    }


def bootstrap(y: np.ndarray, p: np.ndarray, k: int, n: int = N_RESAMPLES, seed: int = 0) -> dict[str, tuple]:
    """95 % percentile intervals of each score over ``n`` resamples of the test cells.

    A score sees the cells only through their confusion matrix, and resampling cells with replacement draws
    that matrix from a multinomial over its k x k entries: drawn directly, memory does not grow with the cells
    (a resamples x cells index matrix took 8 kB a test cell, 1.6 GB for 200,000).
    """
    rng = np.random.default_rng(seed)
    cm = confusion(y, p, k)
    draws = rng.multinomial(len(y), cm.ravel() / max(len(y), 1), size=n).reshape(n, k, k)
    dist = scores(draws, cm.sum(axis=1) > 0)
    return {name: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) for name, v in dist.items()}


def shuffled_confusions(cm: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, k, k) confusion matrices of the labels shuffled against the predictions, for confusion matrix ``cm``.

    A shuffle keeps both margins (true and predicted class counts), and given them the matrix is multivariate
    hypergeometric: entry by entry, each row takes from the predictions that earlier rows left, all resamples
    at once. Same distribution as shuffling a resamples x cells matrix, which took 24 kB a test cell.
    """
    k = cm.shape[0]
    out = np.zeros((n, k, k), dtype=np.int64)
    left = np.tile(cm.sum(axis=0), (n, 1))  # predictions of each class not yet dealt to a row
    for i, row_total in enumerate(cm.sum(axis=1)):
        need = np.full(n, row_total)
        for j in range(k - 1):
            out[:, i, j] = rng.hypergeometric(left[:, j], left[:, j + 1 :].sum(axis=1), need)
            need -= out[:, i, j]
        out[:, i, k - 1] = need
        left -= out[:, i]
    return out


def permutation_p_value(y: np.ndarray, p: np.ndarray, k: int, n: int = N_RESAMPLES, seed: int = 0) -> float:
    """P(macro-F1 >= observed) when the test labels are shuffled: is there any signal at all?"""
    rng = np.random.default_rng(seed)
    cm = confusion(y, p, k)
    present = cm.sum(axis=1) > 0
    observed = scores(cm, present)["macro_f1"]
    null = scores(shuffled_confusions(cm, n, rng), present)["macro_f1"]
    return float((1 + np.sum(null >= observed - 1e-12)) / (n + 1))


def majority_predictions(train_labels: np.ndarray, n: int) -> np.ndarray:
    return np.full(n, np.bincount(train_labels).argmax())


def nucleus_hull_area(nucleus: np.ndarray) -> np.ndarray:
    """Per (n, h, w) boolean patch, the area of the convex hull of its pixels' squares (0 where it has none).

    Only a row's outermost pixels can hold a vertex of the hull, so each row's run gives four corners: the
    same hull as from every pixel's corners, from about 100 points a nucleus instead of 3,000 (the morphology
    features of the test slides' train and test splits took 15.6 s from every corner, most of it in shapely.points).
    """
    n, _, w = nucleus.shape
    area = np.zeros(n)
    patch, row = np.nonzero(nucleus.any(axis=2))
    if not len(patch):
        return area
    x0 = nucleus.argmax(axis=2)[patch, row]
    x1 = w - nucleus[:, :, ::-1].argmax(axis=2)[patch, row]
    corners = np.column_stack(
        [np.stack([x0, x0, x1, x1], 1).ravel(), np.stack([row, row + 1, row, row + 1], 1).ravel()]
    )
    owners, dense = np.unique(patch, return_inverse=True)
    hulls = shapely.convex_hull(shapely.multipoints(corners, indices=np.repeat(dense, 4)))
    area[owners] = shapely.area(hulls)
    return area


def morphology_features(dapi: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per patch: nucleus area, cell area, eccentricity, solidity, mean/std DAPI in the nucleus, mean DAPI
    around it, and texture (std of the Laplacian in the nucleus). ``dapi`` normalised, (n, P, P)."""
    n, h, w = dapi.shape
    nucleus = mask == 1
    area = nucleus.sum(axis=(1, 2)).astype(float)
    safe = np.maximum(area, 1)
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    cy = (nucleus * yy).sum(axis=(1, 2)) / safe
    cx = (nucleus * xx).sum(axis=(1, 2)) / safe
    dy, dx = yy[None] - cy[:, None, None], xx[None] - cx[:, None, None]
    mu20 = (nucleus * dx * dx).sum(axis=(1, 2)) / safe
    mu02 = (nucleus * dy * dy).sum(axis=(1, 2)) / safe
    mu11 = (nucleus * dx * dy).sum(axis=(1, 2)) / safe
    spread = np.sqrt(np.maximum((mu20 - mu02) ** 2 + 4 * mu11**2, 0))
    major, minor = (mu20 + mu02 + spread) / 2, (mu20 + mu02 - spread) / 2
    eccentricity = np.sqrt(np.clip(1 - minor / np.maximum(major, 1e-9), 0, 1))
    solidity = area / np.maximum(nucleus_hull_area(nucleus), 1)
    values = np.where(nucleus, dapi, 0.0)
    mean = values.sum(axis=(1, 2)) / safe
    std = np.sqrt(np.maximum(np.where(nucleus, dapi**2, 0.0).sum(axis=(1, 2)) / safe - mean**2, 0))
    ring = mask == 2
    around = np.where(ring, dapi, 0.0).sum(axis=(1, 2)) / np.maximum(ring.sum(axis=(1, 2)), 1)
    lap = 4 * dapi[:, 1:-1, 1:-1] - dapi[:, :-2, 1:-1] - dapi[:, 2:, 1:-1] - dapi[:, 1:-1, :-2] - dapi[:, 1:-1, 2:]
    inner = nucleus[:, 1:-1, 1:-1]
    inner_n = np.maximum(inner.sum(axis=(1, 2)), 1)
    lap_mean = np.where(inner, lap, 0).sum(axis=(1, 2)) / inner_n
    texture = np.sqrt(np.maximum(np.where(inner, lap**2, 0).sum(axis=(1, 2)) / inner_n - lap_mean**2, 0))
    cell_area = (mask > 0).sum(axis=(1, 2)).astype(float)
    return np.column_stack([area, cell_area, eccentricity, solidity, mean, std, around, texture])


FEATURE_NAMES = (
    "nucleus_area",
    "cell_area",
    "eccentricity",
    "solidity",
    "dapi_mean",
    "dapi_std",
    "dapi_around",
    "texture",
)


def morphology_baseline(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, seed: int = 0) -> np.ndarray:
    """A class-balanced logistic regression on standardised morphology features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed)
    )
    model.fit(train_x, train_y)
    return model.predict(test_x)


@dataclass
class Evaluation:
    """Everything the report shows, computed on the test split."""

    classes: list[str]
    y: np.ndarray
    pred: np.ndarray
    cnn: dict[str, float]
    cnn_ci: dict[str, tuple[float, float]]
    majority: dict[str, float]
    morphology: dict[str, float]
    morphology_ci: dict[str, tuple[float, float]]
    permutation_p: float
    per_class: pd.DataFrame
    confusion: np.ndarray

    @property
    def signal_detected(self) -> bool:
        """Permutation p < 0.01 and the CNN's macro-F1 interval lies above the majority baseline."""
        return self.permutation_p < 0.01 and self.cnn_ci["macro_f1"][0] > self.majority["macro_f1"]

    @property
    def beats_morphology(self) -> bool:
        """The CNN's macro-F1 interval lies above the morphology baseline's macro-F1."""
        return self.cnn_ci["macro_f1"][0] > self.morphology["macro_f1"]


def evaluate(
    classes: list[str], y: np.ndarray, pred: np.ndarray, train_y: np.ndarray, morph_pred: np.ndarray, seed: int = 0
) -> Evaluation:
    from sklearn.metrics import precision_recall_fscore_support

    k = len(classes)
    present = np.bincount(y, minlength=k) > 0

    def point(p: np.ndarray) -> dict[str, float]:
        return {name: float(v) for name, v in scores(confusion(y, p, k), present).items()}

    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=np.arange(k), zero_division=0)
    per_class = pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "support": support}, index=pd.Index(classes, name="class")
    )
    return Evaluation(
        classes=classes,
        y=y,
        pred=pred,
        cnn=point(pred),
        cnn_ci=bootstrap(y, pred, k, seed=seed),
        majority=point(majority_predictions(train_y, len(y))),
        morphology=point(morph_pred),
        morphology_ci=bootstrap(y, morph_pred, k, seed=seed + 1),
        permutation_p=permutation_p_value(y, pred, k, seed=seed),
        per_class=per_class,
        confusion=confusion(y, pred, k),
    )
