"""``xenium_graphclust``: the instrument's own graph-based clusters, as a baseline.

XOA clusters each run separately, so cluster 3 of one slide has nothing to do with cluster 3 of
another. Clusters are therefore named by their top marker genes within their sample: the same cell
type gets the same name in every sample where its markers lead. The instrument gives no per-cell
confidence; it is reported as 1.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from xenium_assets.labels.table import UNASSIGNED, LabelError, Labelling, name_groups, rank_markers


def label_graphclust(cells: ad.AnnData, clusters: dict[str, Path | None], *, seed: int = 0) -> Labelling:
    labels = np.full(cells.n_obs, UNASSIGNED, dtype=object)
    tables, notes = [], ["confidence is 1: the instrument's clustering gives none"]
    samples = cells.obs["sample"].astype(str).to_numpy()
    cell_ids = cells.obs["cell_id"].astype(str).to_numpy()
    for sample, path in clusters.items():
        if path is None:
            raise LabelError(f"sample {sample!r} has no analysis/ clustering (graphclust): choose another method")
        found = pd.read_csv(path, dtype={"Barcode": str}).set_index("Barcode")["Cluster"]
        rows = np.flatnonzero(samples == sample)
        cluster = found.reindex(cell_ids[rows])
        has = cluster.notna().to_numpy()
        groups = np.where(has, cluster.fillna(-1).astype(int).astype(str).to_numpy(), UNASSIGNED).astype(object)
        markers = rank_markers(cells[rows], groups, seed=seed)
        named, markers = name_groups(groups, markers)
        labels[rows] = np.where(has, named, UNASSIGNED)
        tables.append(markers.assign(sample=sample))
        if (~has).any():
            notes.append(f"{sample}: {int((~has).sum())} cells have no instrument cluster")
    markers = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return Labelling(label=labels, confidence=np.ones(cells.n_obs), markers=markers, notes=notes)
