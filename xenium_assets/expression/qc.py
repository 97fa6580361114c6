"""Quality control and normalisation of one sample's counts, with scanpy.

Control features (negative control probes and codewords, unassigned, deprecated, genomic controls)
are removed after their counts are kept per cell, because a high control fraction is itself a QC
signal. Every removed cell is counted under each threshold it fails.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import anndata as ad
import numpy as np
import pandas as pd

from xenium_assets.formats import CONTROL_FEATURE_TYPES, Col, FeatureType
from xenium_assets.plots import png_bytes


class QcError(ValueError):
    """QC cannot produce a usable matrix (e.g. no cell passes)."""


@dataclass(frozen=True)
class QcParams:
    """Thresholds and normalisation choices (defaults suit Xenium panels of 300-5,000 genes)."""

    min_transcripts: int = 10
    min_genes: int = 3
    max_control_fraction: float = 0.05
    min_nucleus_area: float = 0.0
    """µm²; above 0, cells without a nucleus fail too."""
    min_cells_per_gene: int = 5
    hvg_min_panel: int = 500
    """Select highly variable genes only when the panel has more genes than this."""
    n_top_genes: int = 2000
    n_pcs: int = 30


@dataclass
class QcResult:
    adata: ad.AnnData
    n_cells_in: int
    removed_by_reason: dict[str, int]
    controls_by_type: dict[str, int]
    genes_removed: int
    metrics: pd.DataFrame = field(repr=False)
    """Per-cell metrics before filtering (for the QC plot)."""
    params: QcParams = field(default_factory=QcParams)

    @property
    def n_cells_out(self) -> int:
        return self.adata.n_obs

    def summary(self) -> dict:
        return {
            "n_cells_in": self.n_cells_in,
            "n_cells_out": self.n_cells_out,
            "n_genes": int(self.adata.n_vars),
            "removed_by_reason": self.removed_by_reason,
            "controls_by_type": self.controls_by_type,
            "genes_removed": self.genes_removed,
            "params": asdict(self.params),
        }


def run_qc(adata: ad.AnnData, params: QcParams = QcParams()) -> QcResult:
    """Remove controls, filter cells and genes, normalise, log1p, select HVGs (large panels), PCA.

    ``adata`` holds raw counts of all features with ``var['feature_types']``; it is not modified.
    The result keeps raw counts in ``layers['counts']``.
    """
    import scanpy as sc

    n_in = adata.n_obs
    types = adata.var.get("feature_types", pd.Series(FeatureType.GENE.value, index=adata.var_names)).astype(str)
    control = types.isin([t.value for t in CONTROL_FEATURE_TYPES]).to_numpy()
    gene = (types == FeatureType.GENE.value).to_numpy()
    controls_by_type = types[control].value_counts().to_dict()
    control_counts = np.asarray(adata.X[:, control].sum(axis=1)).ravel()
    genes = adata[:, gene].copy()
    sc.pp.calculate_qc_metrics(genes, percent_top=None, log1p=False, inplace=True)
    total = genes.obs["total_counts"].to_numpy()
    nucleus = (
        genes.obs[Col.NUCLEUS_AREA].to_numpy(dtype=float)
        if Col.NUCLEUS_AREA in genes.obs
        else np.full(genes.n_obs, np.nan)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        control_fraction = np.nan_to_num(control_counts / (control_counts + total))
    metrics = pd.DataFrame(
        {
            "total_counts": total,
            "n_genes": genes.obs["n_genes_by_counts"].to_numpy(),
            "control_fraction": control_fraction,
            "nucleus_area": nucleus,
        },
        index=genes.obs_names,
    )
    fails = {
        "min_transcripts": total < params.min_transcripts,
        "min_genes": metrics["n_genes"].to_numpy() < params.min_genes,
        "max_control_fraction": control_fraction > params.max_control_fraction,
    }
    if params.min_nucleus_area > 0:
        with np.errstate(invalid="ignore"):
            fails["min_nucleus_area"] = ~(nucleus >= params.min_nucleus_area)
    keep = ~np.logical_or.reduce(list(fails.values()))
    removed = {reason: int(mask.sum()) for reason, mask in fails.items()}
    genes.obs["control_fraction"] = control_fraction
    genes = genes[keep].copy()
    if genes.n_obs == 0:
        raise QcError(
            f"no cell passes QC ({n_in} cells in; failing {', '.join(f'{k}: {v}' for k, v in removed.items())}); "
            "lower the thresholds"
        )
    n_genes_before = genes.n_vars
    sc.pp.filter_genes(genes, min_cells=params.min_cells_per_gene)
    if genes.n_vars < 2:
        raise QcError(
            f"fewer than 2 genes are detected in {params.min_cells_per_gene}+ cells; lower min_cells_per_gene"
        )
    genes.layers["counts"] = genes.X.copy()
    sc.pp.normalize_total(genes)
    sc.pp.log1p(genes)
    if genes.n_vars > params.hvg_min_panel:
        sc.pp.highly_variable_genes(
            genes, flavor="seurat_v3", layer="counts", n_top_genes=min(params.n_top_genes, genes.n_vars)
        )
    hvg = "highly_variable" in genes.var
    n_features = int(genes.var["highly_variable"].sum()) if hvg else genes.n_vars
    n_comps = min(params.n_pcs, n_features - 1, genes.n_obs - 1)
    if n_comps >= 2:
        sc.pp.pca(genes, n_comps=n_comps, mask_var="highly_variable" if hvg else None)
    return QcResult(
        adata=genes,
        n_cells_in=n_in,
        removed_by_reason=removed,
        controls_by_type=controls_by_type,
        genes_removed=n_genes_before - genes.n_vars,
        metrics=metrics,
        params=params,
    )


def qc_figure(result: QcResult) -> bytes:
    """Histograms of the per-cell QC metrics with the thresholds drawn (PNG)."""
    import matplotlib.pyplot as plt

    m, p = result.metrics, result.params
    panels = [
        ("total_counts", "transcripts per cell", p.min_transcripts, True),
        ("n_genes", "genes per cell", p.min_genes, False),
        ("control_fraction", "control fraction", p.max_control_fraction, False),
        ("nucleus_area", "nucleus area (µm²)", p.min_nucleus_area or None, False),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3))
    for ax, (col, title, threshold, log) in zip(axes, panels, strict=True):
        values = m[col].dropna().to_numpy()
        if log:
            values = np.log10(values + 1)
            threshold = np.log10(threshold + 1) if threshold is not None else None
            title = f"log10(1 + {title})"
        ax.hist(values, bins=50, color="#4c72b0")
        if threshold is not None:
            ax.axvline(threshold, color="#c44e52", linestyle="--")
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"QC: {result.n_cells_out:,} of {result.n_cells_in:,} cells kept", fontsize=11, y=1.06)
    return png_bytes(fig)
