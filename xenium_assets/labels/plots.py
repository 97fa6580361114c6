"""Pictures of a label reference: its cells' UMAP coloured by label and by sample."""

from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np

from xenium_assets.plots import label_colors, png_bytes

UMAP_MAX_CELLS = 20_000


def _scatter(ax, xy: np.ndarray, groups: np.ndarray, colors: dict, title: str) -> None:
    for name in sorted(set(groups), key=lambda n: (n == "Unassigned", n)):
        mask = groups == name
        ax.scatter(xy[mask, 0], xy[mask, 1], s=3, color=colors[name], label=f"{name} ({mask.sum()})", linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, markerscale=3, loc="upper left", bbox_to_anchor=(0, -0.02), ncol=2, frameon=False)


def umap_figure(cells: ad.AnnData, labels: np.ndarray, *, use_rep: str = "X_integrated", seed: int = 0) -> bytes:
    """UMAP of at most 20,000 cells (a random subset: the layout of 10^6 cells takes too long) of the embedding
    ``use_rep``, by label and, beside it, by sample: where samples stay apart, integration did not mix them."""
    import scanpy as sc

    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(cells.n_obs, size=min(cells.n_obs, UMAP_MAX_CELLS), replace=False))
    sub = ad.AnnData(obs=cells.obs.iloc[take][["sample"]].copy(), obsm={use_rep: np.asarray(cells.obsm[use_rep])[take]})
    sc.pp.neighbors(sub, n_neighbors=15, use_rep=use_rep, random_state=seed)
    sc.tl.umap(sub, random_state=seed)
    xy = sub.obsm["X_umap"]
    sub_labels = np.asarray(labels)[take]
    samples = sub.obs["sample"].astype(str).to_numpy()
    fig, (by_label, by_sample) = plt.subplots(1, 2, figsize=(11, 6.5))
    _scatter(by_label, xy, sub_labels, label_colors(list(sub_labels)), f"UMAP of {len(take):,} cells by label")
    _scatter(by_sample, xy, samples, label_colors(list(samples)), "by sample")
    return png_bytes(fig)
