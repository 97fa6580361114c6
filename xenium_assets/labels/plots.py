"""Pictures of a labelling: a UMAP coloured by label and a spatial map per sample."""

from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np

from xenium_assets.plots import label_colors, png_bytes

UMAP_MAX_CELLS = 20_000


def umap_figure(joint: ad.AnnData, labels: np.ndarray, *, seed: int = 0) -> bytes:
    """UMAP of at most 20,000 cells (a random subset: the layout of 10^6 cells takes too long)."""
    import scanpy as sc

    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(joint.n_obs, size=min(joint.n_obs, UMAP_MAX_CELLS), replace=False))
    sub = joint[take].copy()
    if "X_pca" not in sub.obsm:
        sc.pp.pca(sub, n_comps=min(30, sub.n_vars - 1, sub.n_obs - 1), random_state=seed)
    sc.pp.neighbors(sub, n_neighbors=15, random_state=seed)
    sc.tl.umap(sub, random_state=seed)
    xy = sub.obsm["X_umap"]
    sub_labels = labels[take]
    colors = label_colors(list(sub_labels))
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for name in sorted(set(sub_labels), key=lambda n: (n == "Unassigned", n)):
        mask = sub_labels == name
        ax.scatter(xy[mask, 0], xy[mask, 1], s=3, color=colors[name], label=f"{name} ({mask.sum()})", linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"UMAP of {len(take):,} cells by label")
    ax.legend(fontsize=7, markerscale=3, loc="center left", bbox_to_anchor=(1, 0.5), frameon=False)
    return png_bytes(fig)
