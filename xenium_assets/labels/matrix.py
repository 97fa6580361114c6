"""One sample's counts as the label reference reads them, and the one normalisation every cell gets.

qc_adata writes a whole AnnData per sample; labelling needs only its raw counts, cell ids, genes and
(for the sketch) its PCA. These are read element by element from the .h5ad (``anndata.io.read_elem``),
not as a whole AnnData. Reference cells and the cells later placed in it are normalised the same way:
counts on the reference's genes (a gene a sample lacks counts zero), scaled to the reference's
``target_sum`` per cell, then log1p.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from xenium_assets.labels.table import LabelError


@dataclass
class SampleCounts:
    """Raw counts (cells x genes, CSR) of one sample, with its cell ids, genes and optionally its PCA."""

    sample: str
    cell_ids: np.ndarray
    genes: pd.Index
    counts: sp.csr_matrix
    pca: np.ndarray | None = None


def _index(group: h5py.Group) -> pd.Index:
    """The index of an AnnData dataframe (obs or var), without reading its other columns."""
    from anndata.io import read_elem

    return pd.Index(np.asarray(read_elem(group[group.attrs.get("_index", "_index")])).astype(str))


def read_genes(path: Path) -> tuple[pd.Index, int]:
    """A QC'd sample's genes and number of cells, without reading its matrix."""
    with h5py.File(path, "r") as f:
        obs = f["obs"]
        return _index(f["var"]), int(obs[obs.attrs.get("_index", "_index")].shape[0])


def read_counts(sample: str, path: Path, *, pca: bool = False) -> SampleCounts:
    """The raw counts of a QC'd sample (``layers['counts']``; X if the file has no counts layer)."""
    from anndata.io import read_elem

    try:
        with h5py.File(path, "r") as f:
            counts = read_elem(f["layers/counts"] if "layers/counts" in f else f["X"])
            obs = _index(f["obs"])
            genes = _index(f["var"])
            embedding = np.asarray(read_elem(f["obsm/X_pca"])) if pca and "obsm/X_pca" in f else None
    except OSError as exc:
        raise LabelError(f"{path}: cannot read the QC'd matrix ({exc}); re-materialize qc_adata") from exc
    return SampleCounts(sample, obs.to_numpy(), genes, sp.csr_matrix(counts, dtype=np.float32), embedding)


def on_genes(counts: SampleCounts, genes: pd.Index) -> sp.csr_matrix:
    """The counts in the order of ``genes``; a gene the sample lacks is a column of zeros (one sparse product
    with a selection matrix)."""
    position = counts.genes.get_indexer(genes)
    found = np.flatnonzero(position >= 0)
    select = sp.csr_matrix(
        (np.ones(len(found), dtype=np.float32), (position[found], found)), shape=(len(counts.genes), len(genes))
    )
    return sp.csr_matrix(counts.counts @ select)


def log_normalise(counts: sp.csr_matrix, target_sum: float) -> sp.csr_matrix:
    """Counts scaled to ``target_sum`` per cell, then log1p (scanpy's normalize_total and log1p, with a fixed
    target so that every sample and the reference agree). A cell without counts stays zero."""
    total = np.asarray(counts.sum(axis=1)).ravel()
    scale = np.where(total > 0, target_sum / np.maximum(total, 1e-12), 0.0).astype(np.float32)
    out = sp.diags(scale) @ counts
    out = sp.csr_matrix(out, dtype=np.float32)
    np.log1p(out.data, out=out.data)
    return out
