"""Statistics that hold on spatially clumped tissue: block bootstrap intervals, paired model differences, and a
toroidal-shift null for "is there any signal at all".

Neighbouring cells share class and appearance, so test cells are not independent: resampling or shuffling single
cells makes intervals too narrow and p-values too small (docs/evaluation.md shows by how much). Here the unit of
resampling is a spatial block (a test tile, or a square of a chosen size), and the null keeps both maps whole: the
label map of each sample is shifted on a torus against the fixed predictions, re-pairing every test cell's
prediction with the label found at its shifted position. Labels are known for every cell of a sample (train
cells included), so the shifted label map is complete wherever there is tissue; under independence it is a draw
of the same clumped field, unrelated to the predictions (Lotwick & Silverman's toroidal shift, the "spin test" of
brain maps on a plane).

Everything works on confusion matrices, never on a resamples x cells matrix of labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

N_BOOTSTRAP = 1000
N_NULL = 999
NULL_RASTER_MAX_SIDE = 4096
"""The label raster's longest side at most, in pixels (32 MB of int16 per 4096 x 4096 sample)."""


@dataclass(frozen=True)
class StatsConfig:
    n_bootstrap: int = N_BOOTSTRAP
    n_null: int = N_NULL
    block_um: float | None = None
    """Side of the square resampling blocks in µm; None: the test tiles."""
    alpha: float = 0.01
    min_shift_um: float = 20.0
    """Shifts shorter than this (on the torus) are not drawn: they would re-pair a cell with its own patch."""
    seed: int = 0

    def resampling_unit(self) -> str:
        return f"square blocks of {self.block_um:g} µm" if self.block_um else "test tiles"


def confusion(y: np.ndarray, p: np.ndarray, k: int) -> np.ndarray:
    """Confusion matrices for one (n,) or many (b, n) label/prediction rows: shape (..., k, k)."""
    y2, p2 = np.atleast_2d(y), np.atleast_2d(p)
    b = y2.shape[0]
    codes = (np.arange(b)[:, None] * k * k + y2 * k + p2).ravel()
    out = np.bincount(codes, minlength=b * k * k).reshape(b, k, k)
    return out if y.ndim == 2 else out[0]


def scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and macro-F1 of (..., k, k) confusion matrices (rows: truth).

    Macro-F1 averages over every class present in the truth or the predictions of each matrix, as scikit-learn
    does: a model that invents a class pays for it. Balanced accuracy averages recall over the classes in the
    truth (a class never true has no recall)."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(float)
    support = cm.sum(axis=-1).astype(float)
    predicted = cm.sum(axis=-2).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, tp / support, 0.0)
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    in_truth = support > 0
    in_either = in_truth | (predicted > 0)
    return {
        "accuracy": tp.sum(axis=-1) / np.maximum(cm.sum(axis=(-2, -1)), 1),
        "balanced_accuracy": (recall * in_truth).sum(axis=-1) / np.maximum(in_truth.sum(axis=-1), 1),
        "macro_f1": (f1 * in_either).sum(axis=-1) / np.maximum(in_either.sum(axis=-1), 1),
    }


def block_ids(cells: pd.DataFrame, block_um: float | None = None) -> np.ndarray:
    """Resampling block of each cell (columns sample, tile, x_um, y_um): its tile, or its square of ``block_um``."""
    if block_um:
        parts = [cells["sample"].astype(str), (cells["x_um"] // block_um).astype(int), (cells["y_um"] // block_um)]
        keys = pd.MultiIndex.from_arrays([parts[0], parts[1], parts[2].astype(int)])
    else:
        keys = pd.MultiIndex.from_arrays([cells["sample"].astype(str), cells["tile"].astype(str)])
    return pd.factorize(keys)[0]


def block_bootstrap(
    y: np.ndarray, predictions: dict[str, np.ndarray], blocks: np.ndarray, k: int, n: int, seed: int
) -> dict[str, dict[str, np.ndarray]]:
    """Score distributions of each model over ``n`` resamples of whole blocks, the same draws for every model.

    A resample draws as many blocks as there are, with replacement, and pools their cells: its confusion matrix is
    the draw counts times the blocks' own matrices. Same draws for every model, so differences are paired."""
    n_blocks = int(blocks.max()) + 1 if len(blocks) else 0
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n_blocks, np.full(n_blocks, 1 / max(n_blocks, 1)), size=n).astype(float)
    out = {}
    for name, p in predictions.items():
        codes = (blocks * k + y) * k + p
        per_block = np.bincount(codes, minlength=n_blocks * k * k).reshape(n_blocks, k, k)
        out[name] = scores(np.einsum("nb,bij->nij", weights, per_block))
    return out


def interval(values: np.ndarray) -> tuple[float, float]:
    """The 95 % percentile interval."""
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


@dataclass(frozen=True)
class LabelField:
    """One sample's labels on a raster: each pixel holds the class of the nearest labelled cell, or -1 where no
    cell is within ``max_gap_um`` (outside the tissue)."""

    raster: np.ndarray
    origin: tuple[float, float]
    """(x, y) of the raster's top-left corner in µm."""
    pixel_um: float

    def pixel(self, x_um: np.ndarray, y_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.raster.shape
        col = np.clip(((x_um - self.origin[0]) / self.pixel_um).astype(np.int64), 0, w - 1)
        row = np.clip(((y_um - self.origin[1]) / self.pixel_um).astype(np.int64), 0, h - 1)
        return row, col


def label_field(x_um: np.ndarray, y_um: np.ndarray, labels: np.ndarray) -> LabelField:
    """The label map of one sample's labelled cells (every split), at half their typical spacing."""
    from scipy import ndimage
    from scipy.spatial import cKDTree

    xy = np.column_stack([x_um, y_um])
    spacing = float(np.median(cKDTree(xy).query(xy, k=2)[0][:, 1])) if len(xy) > 1 else 1.0
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    extent = float(max(hi - lo)) + spacing
    pixel = max(spacing / 2, extent / NULL_RASTER_MAX_SIDE, 1e-3)
    w, h = (np.ceil((hi - lo + spacing) / pixel).astype(int) + 1).tolist()
    origin = (float(lo[0] - spacing / 2), float(lo[1] - spacing / 2))
    field = LabelField(np.full((h, w), -1, dtype=np.int16), origin, pixel)
    row, col = field.pixel(x_um, y_um)
    field.raster[row, col] = labels
    distance, (near_r, near_c) = ndimage.distance_transform_edt(field.raster < 0, return_indices=True)
    filled = field.raster[near_r, near_c]
    filled[distance * pixel > 3 * spacing] = -1
    return LabelField(filled, origin, pixel)


def shifted_confusions(
    fields: dict[str, LabelField],
    cells: pd.DataFrame,
    pred: np.ndarray,
    k: int,
    n: int,
    min_shift_um: float,
    rng: np.random.Generator,
    chunk_cells: int = 2_000_000,
) -> np.ndarray:
    """(n, k, k) confusion matrices of the predictions against each sample's label map shifted on its torus.

    ``cells``: the test cells (sample, x_um, y_um), ``pred`` their predictions. One random shift per sample and
    replicate; a cell whose shifted position lies outside the tissue is left out of that replicate."""
    out = np.zeros((n, k, k), dtype=np.int64)
    for sample, rows in cells.groupby("sample", sort=False).indices.items():
        field = fields[sample]
        h, w = field.raster.shape
        r0, c0 = field.pixel(cells["x_um"].to_numpy()[rows], cells["y_um"].to_numpy()[rows])
        p = pred[rows]
        min_px = min_shift_um / field.pixel_um
        shifts = np.empty((0, 2), dtype=np.int64)
        while len(shifts) < n:  # uniform on the torus, without the shortest shifts
            draw = rng.integers(0, [2 * h, 2 * w], size=(2 * n, 2))
            wrapped = np.minimum(draw, [2 * h, 2 * w] - draw)
            far = np.hypot(wrapped[:, 0], wrapped[:, 1]) >= min_px
            shifts = np.concatenate([shifts, draw[far]])
        shifts = shifts[:n]
        step = max(1, chunk_cells // max(len(rows), 1))
        for start in range(0, n, step):
            s = shifts[start : start + step]
            lab = field.raster[_fold(r0[None] + s[:, :1], h), _fold(c0[None] + s[:, 1:], w)]
            keep = lab >= 0
            replicate = np.broadcast_to(np.arange(len(s))[:, None], lab.shape)
            codes = (replicate * k * k + lab * k + p[None])[keep]
            out[start : start + len(s)] += np.bincount(codes, minlength=len(s) * k * k).reshape(len(s), k, k)
    return out


def _fold(index: np.ndarray, length: int) -> np.ndarray:
    """Positions on a torus of twice the map's length, folded back onto the map: the map and its mirror image
    side by side, so a shifted map is continuous everywhere (a plain wrap would join unrelated edges)."""
    index = index % (2 * length)
    return np.where(index < length, index, 2 * length - 1 - index)


def shift_test(
    fields: dict[str, LabelField],
    cells: pd.DataFrame,
    y: np.ndarray,
    pred: np.ndarray,
    k: int,
    config: StatsConfig,
) -> tuple[float, np.ndarray]:
    """p = (1 + #{null >= observed}) / (n + 1) for macro-F1, and the null distribution."""
    observed = scores(confusion(y, pred, k))["macro_f1"]
    rng = np.random.default_rng(config.seed)
    null = scores(shifted_confusions(fields, cells, pred, k, config.n_null, config.min_shift_um, rng))["macro_f1"]
    return float((1 + np.sum(null >= observed - 1e-12)) / (len(null) + 1)), null


def label_fields(labelled: pd.DataFrame, class_index: dict[str, int]) -> dict[str, LabelField]:
    """Each sample's label map from its labelled cells (sample, x_um, y_um, label; every split)."""
    known = labelled[labelled["label"].isin(class_index)]
    return {
        sample: label_field(
            group["x_um"].to_numpy(), group["y_um"].to_numpy(), group["label"].map(class_index).to_numpy()
        )
        for sample, group in known.groupby("sample", sort=False)
    }


def cell_permutation_p(y: np.ndarray, pred: np.ndarray, k: int, n: int, seed: int) -> float:
    """The cell-level label shuffle this project used before: kept only to show, on simulated clumped data, how
    far below its nominal level it falls (``training.calibration``); never a claim in a report."""
    rng = np.random.default_rng(seed)
    cm = confusion(y, pred, k)
    observed = scores(cm)["macro_f1"]
    null = scores(shuffled_confusions(cm, n, rng))["macro_f1"]
    return float((1 + np.sum(null >= observed - 1e-12)) / (n + 1))


def shuffled_confusions(cm: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, k, k) confusion matrices of the labels shuffled cell by cell against the predictions.

    A shuffle keeps both margins, and given them the matrix is multivariate hypergeometric: row by row, each
    entry takes from the predictions that earlier rows left, all resamples at once."""
    k = cm.shape[0]
    out = np.zeros((n, k, k), dtype=np.int64)
    left = np.tile(cm.sum(axis=0), (n, 1))
    for i, row_total in enumerate(cm.sum(axis=1)):
        need = np.full(n, row_total)
        for j in range(k - 1):
            out[:, i, j] = rng.hypergeometric(left[:, j], left[:, j + 1 :].sum(axis=1), need)
            need -= out[:, i, j]
        out[:, i, k - 1] = need
        left -= out[:, i]
    return out
