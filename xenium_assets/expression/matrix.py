"""Cell-by-feature counts of a bundle as AnnData, joined to the cell table.

Reads the matrix with the field's readers (scanpy's 10x HDF5 and MTX readers; the Explorer Zarr when
that is all a bundle has), or rebuilds it from transcripts.parquet at another quality threshold than
the instrument's Q20, streaming the table in record batches (it can hold 10^8 rows).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp

from xenium_assets.bundle.errors import BundleError
from xenium_assets.bundle.ids import normalise_ids
from xenium_assets.bundle.manifest import Manifest
from xenium_assets.bundle.tables import read_table
from xenium_assets.formats import UNASSIGNED_INT, Col

CELL_COLUMNS = (
    "transcript_counts",
    "control_probe_counts",
    "control_codeword_counts",
    "unassigned_codeword_counts",
    "deprecated_codeword_counts",
    "genomic_control_counts",
    "total_counts",
    Col.CELL_AREA,
    Col.NUCLEUS_AREA,
    Col.NUCLEUS_COUNT,
)
MIN_SHARED_IDS = 0.5
TRANSCRIPT_BATCH_ROWS = 2_000_000


def _read_zarr_matrix(path: Path) -> ad.AnnData:
    """Xenium Explorer's cell_feature_matrix.zarr.zip: features x cells CSR, ids as uint32 pairs."""
    import zarr
    from zarr.storage import ZipStore

    from xenium_assets.bundle.ids import ids_from_prefix

    group = zarr.open(ZipStore(path, read_only=True), mode="r")["cell_features"]
    attrs = group.attrs.asdict()
    cell_id = group["cell_id"][:]
    ids = ids_from_prefix(cell_id[:, 0], cell_id[:, 1]) if cell_id.ndim == 2 else cell_id.astype(str)
    shape = (len(attrs["feature_keys"]), len(ids))
    by_feature = sp.csr_matrix((group["data"][:], group["indices"][:], group["indptr"][:]), shape=shape)
    var = pd.DataFrame(
        {"gene_ids": attrs["feature_ids"], "feature_types": attrs["feature_types"]}, index=attrs["feature_keys"]
    )
    return ad.AnnData(X=by_feature.T.tocsr(), obs=pd.DataFrame(index=ids), var=var)


def read_matrix(path: str | Path, fmt: str = "h5") -> ad.AnnData:
    """All features (genes and controls) of a 10x HDF5 file, MTX folder or Explorer Zarr.

    ``var`` has `feature_types`; ``X`` is float32 CSR.
    """
    import scanpy as sc

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Variable names are not unique" for duplicated symbols
            if fmt == "h5":
                adata = sc.read_10x_h5(path, gex_only=False)
            elif fmt == "mtx":
                adata = sc.read_10x_mtx(path, var_names="gene_symbols", gex_only=False)
            else:
                adata = _read_zarr_matrix(path)
    except Exception as exc:
        raise BundleError(
            path, f"cannot read the cell-feature matrix ({type(exc).__name__}: {exc})", "re-copy the matrix"
        ) from exc
    adata.var_names_make_unique()
    adata.obs_names = adata.obs_names.astype(str)
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    return adata


def read_expression(manifest: Manifest, min_qv: float | None = None) -> ad.AnnData:
    """Counts of every matrix cell with its cell-table row in ``obs`` and centroid (µm) in ``obsm['spatial']``.

    With ``min_qv`` the counts are rebuilt from transcripts.parquet, keeping transcripts with
    qv >= min_qv (the instrument's matrix counts qv >= 20).
    """
    matrix_path = manifest.path("matrix")
    adata = read_matrix(matrix_path, manifest.matrix_format)
    cells_path = manifest.path("cells")
    cells = read_table(cells_path, [Col.CELL_ID, Col.X_CENTROID, Col.Y_CENTROID], tuple(CELL_COLUMNS))
    ids = normalise_ids(cells[Col.CELL_ID])
    table = cells.drop_columns([Col.CELL_ID]).to_pandas()
    table.index = pd.Index(ids, name="cell_id")
    table = table[~table.index.duplicated()]
    shared = adata.obs_names.isin(table.index)
    if shared.sum() < MIN_SHARED_IDS * min(adata.n_obs, len(table)):
        raise BundleError(
            matrix_path,
            f"barcodes do not match {cells_path.name}: {int(shared.sum())} of {adata.n_obs} barcodes are cells "
            f"(e.g. {adata.obs_names[0]!r} vs {table.index[0]!r})",
            "the matrix comes from another run; re-copy the bundle and re-materialize raw_bundle",
        )
    adata = adata[shared].copy()
    obs = table.loc[adata.obs_names]
    adata.obsm["spatial"] = obs[[Col.X_CENTROID, Col.Y_CENTROID]].to_numpy(dtype=np.float64)
    adata.obs = obs.drop(columns=[Col.X_CENTROID, Col.Y_CENTROID])
    adata.obs.index.name = None
    adata.obs["cell_id"] = adata.obs_names.to_numpy()
    adata.obs["sample"] = manifest.sample
    if min_qv is not None:
        transcripts = manifest.path("transcripts")
        if transcripts is None or not transcripts.name.endswith(".parquet"):
            raise BundleError(
                manifest.bundle_dir,
                "min_qv needs transcripts.parquet, which this bundle lacks",
                "unset min_qv to use the instrument's matrix",
            )
        adata.X = count_transcripts(transcripts, adata.obs_names.to_numpy(), adata.var_names.to_numpy(), min_qv)
    adata.uns["matrix_source"] = f"transcripts.parquet (qv >= {min_qv})" if min_qv is not None else matrix_path.name
    return adata


def _codes(column: pa.ChunkedArray | pa.Array, index: pd.Index) -> np.ndarray:
    """Position of each value in ``index`` (-1 if absent), looking up each distinct value once."""
    encoded = pc.dictionary_encode(column)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    lookup = index.get_indexer(normalise_ids(encoded.dictionary))
    indices = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
    if not len(lookup):
        return np.full(len(indices), -1)
    return np.where(indices >= 0, lookup[np.maximum(indices, 0)], -1)


def count_transcripts(
    path: Path, cell_ids: np.ndarray, features: np.ndarray, min_qv: float, batch_rows: int = TRANSCRIPT_BATCH_ROWS
) -> sp.csr_matrix:
    """Cells x features counts of transcripts with qv >= ``min_qv``, streamed in record batches.

    Each batch is dictionary-encoded, so cell ids and feature names are looked up once per distinct
    value rather than once per row. Each batch's counts are added to a running sparse matrix, so memory
    follows the matrix (non-zero cell x gene pairs), not the 10^8 rows of a large section's table.
    """
    cells, feats = pd.Index(cell_ids), pd.Index(features)
    counts = sp.csr_matrix((len(cells), len(feats)), dtype=np.float32)
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:
        raise BundleError(
            path, f"corrupt Parquet ({type(exc).__name__}: {exc})", "re-copy it, or unset min_qv"
        ) from exc
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=[Col.CELL_ID, Col.FEATURE_NAME, Col.QV]):
        keep = pc.greater_equal(batch.column(Col.QV), pa.scalar(min_qv, batch.schema.field(Col.QV).type))
        batch = batch.filter(keep)
        id_col = batch.column(Col.CELL_ID)
        if pa.types.is_integer(id_col.type):
            id_col = pc.if_else(pc.equal(id_col, UNASSIGNED_INT), None, id_col)
        cell = _codes(id_col, cells)  # "UNASSIGNED" (XOA >= 1.3) is no cell id, so it maps to -1
        feature = _codes(batch.column(Col.FEATURE_NAME), feats)
        ok = (cell >= 0) & (feature >= 0)
        ones = np.ones(int(ok.sum()), dtype=np.float32)  # duplicates are summed: one per transcript
        counts += sp.csr_matrix((ones, (cell[ok], feature[ok])), shape=counts.shape)
    return counts
