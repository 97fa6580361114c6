"""Reading counts (HDF5, MTX, Zarr, transcripts at another QV) and QC."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from xenium_assets.bundle.errors import BundleError
from xenium_assets.bundle.manifest import write_manifest
from xenium_assets.bundle.validate import inspect_bundle
from xenium_assets.expression.matrix import count_transcripts, read_expression, read_matrix
from xenium_assets.expression.qc import QcError, QcParams, qc_figure, run_qc
from xenium_assets.synth import truth_paths
from xenium_assets_tests.conftest import BONE_MARROW_H5, SMALL, needs_shared


def _manifest(bundle, tmp_path, name="s"):
    return write_manifest(inspect_bundle(bundle), name, tmp_path / f"m_{name}")


def test_h5_mtx_and_zarr_give_the_same_counts(bundle_copy, tmp_path):
    bundle = bundle_copy("3")
    h5 = read_expression(_manifest(bundle, tmp_path, "h5"))
    (bundle / "cell_feature_matrix.h5").unlink()
    mtx = read_expression(_manifest(bundle, tmp_path, "mtx"))
    shutil.rmtree(bundle / "cell_feature_matrix")
    zarr_manifest = _manifest(bundle, tmp_path, "zarr")
    assert zarr_manifest.matrix_format == "zarr"
    zarr = read_expression(zarr_manifest)
    for other in (mtx, zarr):
        assert list(other.obs_names) == list(h5.obs_names)
        assert list(other.var_names) == list(h5.var_names)
        assert (other.X != h5.X).nnz == 0
        assert (other.var["feature_types"] == h5.var["feature_types"]).all()


def test_cells_table_is_joined(bundles, tmp_path):
    bundle = bundles("3")
    adata = read_expression(_manifest(bundle, tmp_path))
    cells = pq.read_table(bundle / "cells.parquet").to_pandas().set_index("cell_id").loc[adata.obs_names]
    np.testing.assert_allclose(adata.obsm["spatial"], cells[["x_centroid", "y_centroid"]].to_numpy())
    np.testing.assert_allclose(adata.obs["cell_area"], cells["cell_area"])
    assert (adata.obs["sample"] == "s").all()
    # cells.parquet's transcript_counts is the tally of the gene features
    genes = (adata.var["feature_types"] == "Gene Expression").to_numpy()
    np.testing.assert_array_equal(np.asarray(adata.X[:, genes].sum(axis=1)).ravel(), cells["transcript_counts"])


def test_mismatched_barcodes_are_refused(bundles, bundle_copy, tmp_path):
    bundle = bundle_copy("3")
    manifest = _manifest(bundle, tmp_path)
    shutil.copy(bundles("3", seed=99) / "cell_feature_matrix.h5", bundle / "cell_feature_matrix.h5")
    with pytest.raises(BundleError, match=r"cell_feature_matrix.h5: barcodes do not match cells.parquet: 0 of 600"):
        read_expression(manifest)


@pytest.mark.parametrize("version", ["1", "3"])
def test_counts_rebuilt_from_transcripts(bundles, tmp_path, version):
    """At the instrument's threshold (Q20) the rebuilt matrix is the instrument's; higher keeps fewer."""
    manifest = _manifest(bundles(version), tmp_path)
    instrument = read_expression(manifest)
    q20 = read_expression(manifest, min_qv=20)
    assert (q20.X != instrument.X).nnz == 0
    q30 = read_expression(manifest, min_qv=30)
    assert 0 < q30.X.sum() < 0.9 * instrument.X.sum()
    assert q30.uns["matrix_source"] == "transcripts.parquet (qv >= 30)"
    # Streamed in many small batches (a real table has 10^8 rows), the counts are the same.
    small = count_transcripts(manifest.path("transcripts"), q30.obs_names.to_numpy(), q30.var_names.to_numpy(), 30, 997)
    assert (small != q30.X).nnz == 0


def test_qc_removes_controls_and_the_cells_it_should(bundles, tmp_path):
    bundle = bundles("3")
    adata = read_expression(_manifest(bundle, tmp_path))
    result = run_qc(adata)
    assert result.controls_by_type == {
        t: 4
        for t in (
            "Negative Control Probe",
            "Negative Control Codeword",
            "Unassigned Codeword",
            "Deprecated Codeword",
            "Genomic Control",
        )
    }
    out = result.adata
    assert (out.var_names.isin(adata.var_names[adata.var["feature_types"] == "Gene Expression"])).all()
    truth = pq.read_table(truth_paths(bundle)[0]).to_pandas().set_index("cell_id")
    removed = adata.obs_names.difference(out.obs_names)
    flagged = truth.index[truth["qc_flag"] != ""]
    # Most planted low-quality cells are caught, and most removed cells were planted ones.
    assert len(removed.intersection(flagged)) > 0.7 * len(flagged)
    assert len(removed.intersection(flagged)) > 0.6 * len(removed)
    assert result.n_cells_in == SMALL["n_cells"] and sum(result.removed_by_reason.values()) >= len(removed)
    counts = out.layers["counts"]
    assert np.allclose(counts.data, np.round(counts.data))
    np.testing.assert_allclose(
        np.expm1(out.X[:3].toarray()).sum(axis=1), np.median(np.asarray(counts.sum(axis=1))), rtol=1e-3
    )
    assert out.obsm["X_pca"].shape[0] == out.n_obs
    assert qc_figure(result)[:8] == b"\x89PNG\r\n\x1a\n"


def test_hvg_selection_for_large_panels(bundles, tmp_path):
    adata = read_expression(_manifest(bundles("3"), tmp_path))
    result = run_qc(adata, QcParams(hvg_min_panel=10, n_top_genes=12))
    assert result.adata.var["highly_variable"].sum() == 12


def test_nucleus_area_threshold_removes_anucleate_cells(bundles, tmp_path):
    adata = read_expression(_manifest(bundles("3"), tmp_path))
    result = run_qc(adata, QcParams(min_nucleus_area=1.0))
    assert result.removed_by_reason["min_nucleus_area"] == int((~(adata.obs["nucleus_area"] >= 1.0)).sum()) > 0


def test_empty_after_qc_is_a_clear_error(bundles, tmp_path):
    adata = read_expression(_manifest(bundles("3"), tmp_path))
    with pytest.raises(QcError, match=r"no cell passes QC \(600 cells in; failing min_transcripts: 600"):
        run_qc(adata, QcParams(min_transcripts=10**6))


@needs_shared
def test_bone_marrow_matrix_through_qc():
    adata = read_matrix(BONE_MARROW_H5)
    assert adata.shape == (84_518, 541)
    result = run_qc(adata)
    assert result.controls_by_type == {
        "Negative Control Codeword": 41,
        "Negative Control Probe": 20,
        "Unassigned Codeword": 3,
    }
    assert result.adata.n_vars <= 477
    # Bone marrow sections are sparse (about 10 transcripts per cell): many cells fail min_transcripts=10.
    assert 20_000 < result.n_cells_out < 50_000
