"""``leiden``: clusters of the reference's cells in their integrated embedding, named by top marker genes.

The neighbour graph is built on the embedding in which sample-level shifts were integrated away
(``obsm['X_integrated']``, Harmony across samples), so a class shared by two slides is one cluster
rather than one per slide. Confidence is the share of a cell's graph neighbourhood (by connectivity
weight) in its own cluster.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import scipy.sparse as sp

from xenium_assets.labels.table import Labelling, name_groups, rank_markers

EMBEDDING = "X_integrated"


def neighbour_agreement(connectivities: sp.spmatrix, groups: np.ndarray) -> np.ndarray:
    """Per cell, the connectivity-weighted fraction of its neighbours in its own group."""
    codes = np.unique(groups, return_inverse=True)[1]
    n = len(codes)
    onehot = sp.csr_matrix((np.ones(n), (np.arange(n), codes)), shape=(n, codes.max() + 1))
    weights = sp.csr_matrix(connectivities) @ onehot
    total = np.asarray(weights.sum(axis=1)).ravel()
    own = np.asarray(weights[np.arange(n), codes]).ravel()
    return np.where(total > 0, own / np.maximum(total, 1e-12), 0.0)


def label_leiden(cells: ad.AnnData, *, resolution: float = 0.5, n_neighbors: int = 15, seed: int = 0) -> Labelling:
    """Leiden on the neighbour graph of ``obsm['X_integrated']``."""
    import scanpy as sc

    sc.pp.neighbors(cells, n_neighbors=n_neighbors, use_rep=EMBEDDING, random_state=seed)
    sc.tl.leiden(cells, resolution=resolution, flavor="igraph", n_iterations=2, random_state=seed, key_added="leiden")
    clusters = cells.obs["leiden"].astype(str).to_numpy()
    markers = rank_markers(cells, clusters, seed=seed)
    labels, markers = name_groups(clusters, markers)
    confidence = neighbour_agreement(cells.obsp["connectivities"], clusters)
    note = f"{len(set(clusters))} clusters at resolution {resolution}"
    return Labelling(label=labels, confidence=confidence, markers=markers, notes=[note])
