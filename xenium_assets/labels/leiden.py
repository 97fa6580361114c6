"""``leiden``: joint clustering of all samples, named by the clusters' top marker genes.

With several samples the neighbour graph is batch-aware (BBKNN: each cell's neighbours are drawn
from every sample), so a class shared by two slides becomes one cluster rather than one per slide.
Confidence is the share of a cell's graph neighbourhood (by connectivity weight) in its own cluster.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import scipy.sparse as sp

from xenium_assets.labels.joint import Labelling, name_groups, rank_markers


def neighbour_agreement(connectivities: sp.spmatrix, groups: np.ndarray) -> np.ndarray:
    """Per cell, the connectivity-weighted fraction of its neighbours in its own group."""
    codes = np.unique(groups, return_inverse=True)[1]
    n = len(codes)
    onehot = sp.csr_matrix((np.ones(n), (np.arange(n), codes)), shape=(n, codes.max() + 1))
    weights = sp.csr_matrix(connectivities) @ onehot
    total = np.asarray(weights.sum(axis=1)).ravel()
    own = np.asarray(weights[np.arange(n), codes]).ravel()
    return np.where(total > 0, own / np.maximum(total, 1e-12), 0.0)


def label_leiden(
    joint: ad.AnnData, *, resolution: float = 0.5, n_neighbors: int = 15, n_pcs: int = 30, seed: int = 0
) -> Labelling:
    import scanpy as sc

    n_comps = min(n_pcs, joint.n_vars - 1, joint.n_obs - 1)
    sc.pp.pca(joint, n_comps=n_comps, random_state=seed)
    n_samples = joint.obs["sample"].nunique()
    if n_samples > 1:
        import bbknn

        per_batch = max(3, n_neighbors // n_samples)
        bbknn.bbknn(joint, batch_key="sample", neighbors_within_batch=per_batch, n_pcs=n_comps)
    else:
        sc.pp.neighbors(joint, n_neighbors=n_neighbors, n_pcs=n_comps, random_state=seed)
    sc.tl.leiden(joint, resolution=resolution, flavor="igraph", n_iterations=2, random_state=seed, key_added="leiden")
    clusters = joint.obs["leiden"].astype(str).to_numpy()
    markers = rank_markers(joint, clusters, seed=seed)
    labels, markers = name_groups(clusters, markers)
    confidence = neighbour_agreement(joint.obsp["connectivities"], clusters)
    note = f"{len(set(clusters))} clusters at resolution {resolution}" + (" (BBKNN graph)" if n_samples > 1 else "")
    return Labelling(label=labels, confidence=confidence, markers=markers, notes=[note])
