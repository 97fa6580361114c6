"""``reference``: label the reference's cells by transfer from an annotated AnnData (.h5ad) with
``scanpy.tl.ingest``, or from a local CellTypist model.

Only genes shared with the panel are used. Ingest confidence is the share of the cell's nearest
reference cells (in the reference's PCA space) that carry the transferred label; CellTypist
confidence is its own probability for the predicted label.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from xenium_assets.labels.table import LabelError, Labelling, rank_markers

MIN_SHARED_FRACTION = 0.5


def _log_normalised(adata: ad.AnnData, target_sum: float | None = None) -> ad.AnnData:
    """Log-normalise in place when X still looks like raw counts (integers above 30)."""
    import scanpy as sc

    x = adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X)
    if x.size and x.max() > 30 and np.allclose(x[:1000], np.round(x[:1000])):
        sc.pp.normalize_total(adata, target_sum=target_sum)
        sc.pp.log1p(adata)
    return adata


def label_annotated(
    cells: ad.AnnData, reference: str | Path, label_key: str, *, n_neighbors: int = 15, seed: int = 0
) -> Labelling:
    import scanpy as sc
    from sklearn.neighbors import NearestNeighbors

    reference = Path(reference)
    try:
        ref = ad.read_h5ad(reference)
    except Exception as exc:
        raise LabelError(f"{reference}: cannot read the reference AnnData ({exc})") from exc
    if label_key not in ref.obs:
        raise LabelError(f"{reference}: no obs column {label_key!r} (has: {', '.join(ref.obs.columns)})")
    shared = cells.var_names.intersection(ref.var_names)
    if len(shared) == 0:
        raise LabelError(f"{reference}: the reference shares no genes with the panel; use a reference with these genes")
    notes = [f"{len(shared)} of {cells.n_vars} panel genes are in the reference"]
    if len(shared) < MIN_SHARED_FRACTION * cells.n_vars:
        notes.append("fewer than half of the panel genes are in the reference: transfer may be weak")
    ref = _log_normalised(ref[:, shared].copy())
    query = cells[:, shared].copy()
    sc.pp.pca(ref, n_comps=min(30, len(shared) - 1, ref.n_obs - 1), random_state=seed)
    sc.pp.neighbors(ref, n_neighbors=n_neighbors, random_state=seed)
    ref.obs[label_key] = ref.obs[label_key].astype(str).astype("category")
    sc.tl.ingest(query, ref, obs=label_key, embedding_method="pca")
    labels = query.obs[label_key].astype(str).to_numpy(dtype=object)
    _, idx = NearestNeighbors(n_neighbors=n_neighbors).fit(ref.obsm["X_pca"]).kneighbors(query.obsm["X_pca"])
    ref_labels = ref.obs[label_key].astype(str).to_numpy()
    confidence = (ref_labels[idx] == labels[:, None]).mean(axis=1)
    return Labelling(label=labels, confidence=confidence, markers=rank_markers(cells, labels, seed=seed), notes=notes)


def label_celltypist(cells: ad.AnnData, model: str | Path, *, seed: int = 0) -> Labelling:
    """Predict with a CellTypist model from a local file (no download): log1p counts per 10,000."""
    import celltypist
    import scanpy as sc

    model = Path(model)
    if not model.exists():
        raise LabelError(f"{model}: CellTypist model file not found (models cannot be downloaded here)")
    query = ad.AnnData(X=cells.layers["counts"].copy(), obs=cells.obs[[]].copy(), var=cells.var[[]].copy())
    sc.pp.normalize_total(query, target_sum=1e4)
    sc.pp.log1p(query)
    loaded = celltypist.models.Model.load(str(model))
    shared = np.intersect1d(loaded.features, query.var_names)
    if len(shared) == 0:
        raise LabelError(f"{model}: the CellTypist model shares no genes with the panel")
    predictions = celltypist.annotate(query, model=loaded, majority_voting=False)
    labels = predictions.predicted_labels["predicted_labels"].astype(str).to_numpy(dtype=object)
    confidence = predictions.probability_matrix.max(axis=1).to_numpy()
    notes = [f"CellTypist model {model.name}: {len(shared)} of {cells.n_vars} panel genes used"]
    return Labelling(label=labels, confidence=confidence, markers=rank_markers(cells, labels, seed=seed), notes=notes)
