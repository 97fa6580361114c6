"""Sample-level shifts integrated away in the reference (Harmony), and new samples mapped into it (Symphony).

A run or tissue shifts a sample's expression as a whole (a gene's baseline, the depth). Clustered
as they are, the samples' cells split by sample, and one cell type gets one name per slide. Harmony
(harmonypy, Korsunsky et al. 2019) corrects the reference's PCA embedding so that samples mix within
its soft clusters. harmonypy is called directly, not through ``scanpy.external.pp.harmony_integrate``:
mapping needs Harmony's soft clusters, which that wrapper drops (and scanpy 1.11 expects harmonypy's
old orientation of ``Z_corr``).

A sample added later must not change the reference, so it is mapped into it the way Symphony does
(Kang et al. 2021): the reference keeps, per soft cluster k, its centroid, its cells' weight N_k and the
weighted sum C_k of their corrected embedding. A new sample's cells are softly assigned to the centroids
and, in each cluster, the sample's own offset from the reference is estimated by a ridge regression
(intercept shared with the reference, one term for the sample) and removed. Only the reference's
summaries and the sample's own cells enter, so each sample maps the same whatever else is in the project.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

SIGMA = 0.1
"""Soft-clustering bandwidth (Harmony's default), for the reference and every mapped sample alike."""
RIDGE = 1.0
"""Ridge penalty on a mapped sample's per-cluster offset (Symphony's default)."""


@dataclass(frozen=True)
class SoftClusters:
    """What mapping needs of the reference's soft clusters: unit centroids (K, d), each cluster's weight of
    reference cells N (K) and weighted sum of their corrected embedding C (K, d)."""

    centroids: np.ndarray
    weights: np.ndarray
    sums: np.ndarray
    sigma: float = SIGMA

    def assign(self, embedding: np.ndarray) -> np.ndarray:
        """(cells, K) soft assignments: a softmax over clusters of -2 (1 - cosine similarity) / sigma."""
        unit = embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
        logits = -2.0 * (1.0 - unit @ self.centroids.T) / self.sigma
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)

    def correct(self, embedding: np.ndarray, ridge: float = RIDGE) -> np.ndarray:
        """One sample's embedding with its offset from the reference removed, cluster by cluster.

        Per cluster k, with the sample's weight s_k and weighted sum m_k, the ridge regression of the
        embedding on [intercept, sample] (the intercept also fitted to the reference's N_k, C_k) gives the
        sample's term W_k = (N_k m_k - s_k C_k) / (N_k s_k + ridge (N_k + s_k)); each cell moves by
        sum_k R_ik W_k. With no ridge that is the sample's mean minus the reference's, in each cluster.
        """
        assignment = self.assign(embedding)
        s = assignment.sum(axis=0)
        m = assignment.T @ embedding
        n = self.weights
        term = (n[:, None] * m - s[:, None] * self.sums) / (n * s + ridge * (n + s))[:, None]
        return embedding - assignment @ term


def _cells_first(array: np.ndarray, n_cells: int) -> np.ndarray:
    """harmonypy's arrays with cells as rows (2.x returns them so; 0.0.x transposed)."""
    array = np.asarray(array)
    return array if array.shape[0] == n_cells else array.T


def harmonize(embedding: np.ndarray, samples: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, SoftClusters]:
    """The corrected embedding of the reference's cells and its soft clusters (one sample: clusters only)."""
    import harmonypy

    n = len(embedding)
    result = harmonypy.run_harmony(
        np.ascontiguousarray(embedding, dtype=np.float32),
        pd.DataFrame({"sample": pd.Categorical(samples)}),
        "sample",
        sigma=SIGMA,
        random_state=seed,
        verbose=False,
    )
    corrected = _cells_first(result.Z_corr, n).astype(np.float32)
    assignment = _cells_first(result.R, n).astype(np.float64)
    sums = assignment.T @ corrected
    centroids = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return corrected, SoftClusters(centroids=centroids, weights=assignment.sum(axis=0), sums=sums)


def same_sample_share(
    embedding: np.ndarray,
    samples: np.ndarray,
    classes: np.ndarray,
    *,
    k: int = 15,
    max_cells: int = 20_000,
    seed: int = 0,
) -> tuple[float, float]:
    """How much samples stay apart within a class: the mean share of a cell's k nearest neighbours (among cells of
    its class) that come from its own sample, and that share if samples were mixed (each sample's share of its
    class). Near the second: integrated; near 1: each sample apart. On at most ``max_cells`` cells."""
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(seed)
    take = rng.choice(len(embedding), min(len(embedding), max_cells), replace=False)
    embedding, samples, classes = embedding[take], np.asarray(samples)[take], np.asarray(classes)[take]
    observed, mixed, weights = [], [], []
    for cls in np.unique(classes):
        rows = np.flatnonzero(classes == cls)
        if len(rows) <= k:
            continue
        neighbours = NearestNeighbors(n_neighbors=k + 1).fit(embedding[rows]).kneighbors(embedding[rows])[1][:, 1:]
        own = samples[rows]
        observed.append((own[neighbours] == own[:, None]).mean())
        share = pd.Series(own).value_counts(normalize=True)
        mixed.append(float((share**2).sum()))
        weights.append(len(rows))
    if not weights:
        return float("nan"), float("nan")
    return float(np.average(observed, weights=weights)), float(np.average(mixed, weights=weights))
