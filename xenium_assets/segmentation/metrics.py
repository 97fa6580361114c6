"""Object-level quality of an instance segmentation against reference instances, as the field reports it:
precision, recall and F1 of objects matched at IoU >= 0.5, and the mean IoU of the matched pairs.

At IoU >= 0.5 an object overlaps at most one other that well (two such partners would each hold more than half of
its area), so the matching is read off the overlap table without an assignment solver; a pair at exactly 0.5 on
both sides is resolved by keeping the higher IoU first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MATCH_IOU = 0.5


@dataclass(frozen=True)
class Matching:
    """Matched pairs of one image: reference objects, predicted objects and the IoU of each matched pair."""

    n_true: int
    n_pred: int
    ious: np.ndarray

    @property
    def tp(self) -> int:
        return len(self.ious)

    @property
    def precision(self) -> float:
        return self.tp / self.n_pred if self.n_pred else float("nan")

    @property
    def recall(self) -> float:
        return self.tp / self.n_true if self.n_true else float("nan")

    @property
    def f1(self) -> float:
        total = self.n_true + self.n_pred
        return 2 * self.tp / total if total else float("nan")

    @property
    def mean_iou(self) -> float:
        return float(self.ious.mean()) if len(self.ious) else float("nan")


@dataclass(frozen=True)
class Overlaps:
    """Every pair of overlapping objects of two label images: their labels (the images' own) and IoU."""

    truth: np.ndarray
    pred: np.ndarray
    iou: np.ndarray
    n_true: int
    n_pred: int


def overlaps(truth: np.ndarray, pred: np.ndarray) -> Overlaps:
    """The overlapping object pairs of two label images of the same shape (0: background), from one table of
    overlap counts."""
    from skimage.segmentation import relabel_sequential

    if np.shape(truth) != np.shape(pred):
        raise ValueError(f"label images differ in shape: {np.shape(truth)} and {np.shape(pred)}")
    t, _, t_labels = relabel_sequential(np.asarray(truth))
    p, _, p_labels = relabel_sequential(np.asarray(pred))
    n_t, n_p = int(t.max(initial=0)), int(p.max(initial=0))
    area_t = np.bincount(t.ravel(), minlength=n_t + 1)
    area_p = np.bincount(p.ravel(), minlength=n_p + 1)
    both = (t > 0) & (p > 0)
    pairs, inter = np.unique(t[both].astype(np.int64) * (n_p + 1) + p[both], return_counts=True)
    ti, pi = pairs // (n_p + 1), pairs % (n_p + 1)
    iou = inter / (area_t[ti] + area_p[pi] - inter)
    return Overlaps(np.asarray(t_labels[ti]), np.asarray(p_labels[pi]), iou, n_t, n_p)


def match(truth: np.ndarray, pred: np.ndarray, threshold: float = MATCH_IOU) -> Matching:
    """Match the objects of two label images of the same shape (0: background) at IoU >= ``threshold``."""
    found = overlaps(truth, pred)
    keep = found.iou >= threshold
    ti, pi, iou = found.truth[keep], found.pred[keep], found.iou[keep]
    order = np.argsort(-iou, kind="stable")
    ti, pi, iou = ti[order], pi[order], iou[order]
    first_t = np.unique(ti, return_index=True)[1]
    first_p = np.unique(pi, return_index=True)[1]
    chosen = np.intersect1d(first_t, first_p)
    return Matching(n_true=found.n_true, n_pred=found.n_pred, ious=iou[chosen])


@dataclass(frozen=True)
class Summary(Matching):
    """Pooled over images: every image's objects count once."""

    n_images: int = 0

    def as_dict(self) -> dict:
        return {
            "images": self.n_images,
            "true_nuclei": self.n_true,
            "predicted_nuclei": self.n_pred,
            "matched": self.tp,
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "f1": round(self.f1, 4),
            "mean_matched_iou": round(self.mean_iou, 4),
        }


def pool(matchings: list[Matching]) -> Summary:
    return Summary(
        n_true=sum(m.n_true for m in matchings),
        n_pred=sum(m.n_pred for m in matchings),
        ious=np.concatenate([m.ious for m in matchings]) if matchings else np.zeros(0),
        n_images=len(matchings),
    )
