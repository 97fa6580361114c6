"""``qc_adata``: one sample's counts with controls removed, QC-filtered, normalised (AnnData)."""

import hashlib
import json
from dataclasses import asdict
from typing import TYPE_CHECKING

from dagster import (
    AssetExecutionContext,
    Config,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from xenium_assets.atomic import atomic_file, write_json
from xenium_assets.bundle.errors import BundleError
from xenium_assets.defs.automation import settled_eager
from xenium_assets.defs.metadata import counts_table, image
from xenium_assets.defs.partitions import sample_partitions
from xenium_assets.defs.raw_bundle import raw_bundle
from xenium_assets.defs.resources import ProjectResource

if TYPE_CHECKING:
    import anndata as ad


class QcConfig(Config):
    """QC thresholds (cells failing any are removed and counted by reason) and the matrix source."""

    min_transcripts: int = 10
    min_genes: int = 3
    max_control_fraction: float = 0.05
    min_nucleus_area: float = 0.0
    """µm²; above 0, cells without a nucleus are removed too."""
    min_cells_per_gene: int = 5
    min_qv: float | None = None
    """Rebuild counts from transcripts.parquet at this quality threshold instead of the instrument's Q20."""


@asset(
    automation_condition=settled_eager(),
    partitions_def=sample_partitions,
    deps=[raw_bundle],
    group_name="expression",
    kinds={"anndata"},
    description="Counts of one sample as AnnData: controls removed (and counted), cells filtered by scanpy QC "
    "metrics, raw counts in layers['counts'], normalised and log1p in X, HVGs for large panels, PCA.",
)
def qc_adata(context: AssetExecutionContext, config: QcConfig, project: ProjectResource) -> MaterializeResult:
    # scanpy, anndata and matplotlib are imported here, not at module level, so that loading the code location
    # (every run's every step process does) stays fast.
    from xenium_assets.expression.matrix import read_expression
    from xenium_assets.expression.qc import QcError, QcParams, qc_figure, run_qc

    sample = context.partition_key
    manifest = project.manifest(sample)
    params = QcParams(
        min_transcripts=config.min_transcripts,
        min_genes=config.min_genes,
        max_control_fraction=config.max_control_fraction,
        min_nucleus_area=config.min_nucleus_area,
        min_cells_per_gene=config.min_cells_per_gene,
    )
    try:
        context.log.info(f"reading the matrix of {sample} ({manifest.matrix_format})")
        adata = read_expression(manifest, min_qv=config.min_qv)
        context.log.info(f"QC of {adata.n_obs:,} cells x {adata.n_vars:,} features")
        result = run_qc(adata, params)
    except (BundleError, QcError) as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    files = project.paths.qc_adata(sample)
    fingerprint = hashlib.sha1(
        json.dumps({"raw": manifest.fingerprint, "qc": asdict(params), "min_qv": config.min_qv}).encode()
    ).hexdigest()
    result.adata.uns["qc"] = {"sample": sample, "fingerprint": fingerprint, "matrix_source": adata.uns["matrix_source"]}
    with atomic_file(files.adata) as tmp:
        result.adata.write_h5ad(tmp, compression="gzip")
    write_json(files.summary, {"sample": sample, "fingerprint": fingerprint, **result.summary()})
    n_out = result.n_cells_out
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(files.adata)),
            "n_cells_in": result.n_cells_in,
            "n_cells_out": n_out,
            "n_cells_removed": result.n_cells_in - n_out,
            "n_genes": int(result.adata.n_vars),
            "n_genes_removed": result.genes_removed,
            "n_control_features_removed": sum(result.controls_by_type.values()),
            "control_features": counts_table(result.controls_by_type, "feature type", "features"),
            "removed_by_reason": counts_table(result.removed_by_reason, "failed threshold"),
            "highly_variable_genes": int(result.adata.var["highly_variable"].sum())
            if "highly_variable" in result.adata.var
            else "not selected (small panel): all genes used",
            "matrix_source": adata.uns["matrix_source"],
            "qc_plot": image(qc_figure(result), "QC histograms"),
        },
        data_version=DataVersion(fingerprint),
    )


def load_qc_adata(project: ProjectResource, sample: str) -> "ad.AnnData":
    import anndata as ad

    return ad.read_h5ad(project.paths.qc_adata(sample).adata)
